//! Trees: one encoded blob per directory, listing its entries with their metadata.
//!
//! A [`Tree`] is a list of [`Node`]s sorted by name bytes, names unique. Decoding treats the input
//! as hostile: names are checked (no `/`, no NUL, not `.` or `..`, not empty) and every length is
//! bounded by the blob it came from.

use serde::{Deserialize, Serialize};

use crate::id::Id;

/// What kind of filesystem object a node records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeKind {
    /// A regular file; its content is in `content`.
    File,
    /// A directory; its entries are the tree `subtree`.
    Dir,
    /// A symbolic link; its target bytes are in `link_target`.
    Symlink,
    /// A named pipe (recorded, never read).
    Fifo,
    /// A Unix socket (recorded, never read).
    Socket,
    /// A character device; its number is in `rdev`.
    CharDevice,
    /// A block device; its number is in `rdev`.
    BlockDevice,
}

/// One piece of a file's content, in file order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Extent {
    /// The data blob with this id (its length is in the index).
    Data(Id),
    /// A hole of this many zero bytes, not stored (sparse files).
    Hole(u64),
}

/// An extended attribute: name and value, both raw bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Xattr {
    /// Attribute name, e.g. `user.comment`.
    #[serde(with = "serde_bytes")]
    pub name: Vec<u8>,
    /// Attribute value.
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
}

/// One directory entry with its metadata.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// The entry's name: raw bytes, exactly as on disk (not necessarily UTF-8).
    #[serde(with = "serde_bytes")]
    pub name: Vec<u8>,
    /// What it is.
    pub kind: NodeKind,
    /// Permission bits and set-id/sticky bits (`st_mode & 0o7777`).
    pub mode: u32,
    /// Owner id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Owner name, when it resolves (restore prefers ids; names are for display).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Group name, when it resolves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    /// Status-change time, nanoseconds since the Unix epoch (change detection only).
    pub ctime_ns: i64,
    /// Size in bytes (files: the logical length, holes included).
    pub size: u64,
    /// Inode number (change detection and hard-link groups).
    pub inode: u64,
    /// Device the entry lives on (hard-link groups, `--one-file-system`).
    pub device: u64,
    /// Link count; above 1 for a file, restore links entries that share (device, inode).
    pub links: u64,
    /// Device number of a character or block device.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rdev: u64,
    /// File content in order (files only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub content: Vec<Extent>,
    /// The directory's tree (directories only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subtree: Option<Id>,
    /// The link's target, raw bytes (symlinks only).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_bytes")]
    pub link_target: Option<Vec<u8>>,
    /// Extended attributes that could be read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub xattrs: Vec<Xattr>,
    /// Set when the file changed while it was read: its content may be inconsistent.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub changed_while_read: bool,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

mod opt_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => s.serialize_bytes(b),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        Ok(Option::<serde_bytes::ByteBuf>::deserialize(d)?.map(|b| b.into_vec()))
    }
}

impl Node {
    /// A node of `kind` named `name` with every other field zero or empty.
    pub fn new(name: Vec<u8>, kind: NodeKind) -> Self {
        Self {
            name,
            kind,
            mode: 0,
            uid: 0,
            gid: 0,
            user: None,
            group: None,
            mtime_ns: 0,
            ctime_ns: 0,
            size: 0,
            inode: 0,
            device: 0,
            links: 1,
            rdev: 0,
            content: Vec::new(),
            subtree: None,
            link_target: None,
            xattrs: Vec::new(),
            changed_while_read: false,
        }
    }

    /// The name, lossily as text, for messages and listings.
    pub fn display_name(&self) -> String {
        String::from_utf8_lossy(&self.name).into_owned()
    }
}

/// Why a name cannot be used as a directory entry.
pub fn check_name(name: &[u8]) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty name");
    }
    if name == b"." || name == b".." {
        return Err("name is . or ..");
    }
    if name.contains(&b'/') {
        return Err("name contains /");
    }
    if name.contains(&0) {
        return Err("name contains NUL");
    }
    Ok(())
}

/// The entries of one directory, sorted by name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tree {
    /// Entries sorted by name bytes, names unique.
    pub nodes: Vec<Node>,
}

/// A tree blob that does not decode or breaks the tree rules.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    /// Not valid CBOR of the tree schema.
    #[error("tree does not decode: {0}")]
    Decode(String),
    /// An entry name breaks the rules.
    #[error("tree entry {name:?}: {why}")]
    BadName {
        /// The name, lossily.
        name: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// Names out of order or repeated.
    #[error("tree entries are not sorted and unique at {0:?}")]
    Unsorted(String),
    /// A field does not fit the entry's kind.
    #[error("tree entry {0:?}: {1}")]
    Inconsistent(String, &'static str),
}

impl Tree {
    /// Sorts the nodes by name; call before encoding.
    pub fn sort(&mut self) {
        self.nodes.sort_by(|a, b| a.name.cmp(&b.name));
    }

    /// The node called `name`, by binary search.
    pub fn find(&self, name: &[u8]) -> Option<&Node> {
        self.nodes.binary_search_by(|n| n.name.as_slice().cmp(name)).ok().map(|i| &self.nodes[i])
    }

    /// Encodes the tree (deterministic: equal trees give equal bytes, and so equal ids).
    pub fn encode(&self) -> Vec<u8> {
        crate::codec::to_cbor(self)
    }

    /// Decodes and validates a tree blob.
    pub fn decode(data: &[u8]) -> Result<Self, TreeError> {
        let tree: Tree = crate::codec::from_cbor(data).map_err(TreeError::Decode)?;
        tree.validate()?;
        Ok(tree)
    }

    fn validate(&self) -> Result<(), TreeError> {
        for (i, n) in self.nodes.iter().enumerate() {
            check_name(&n.name).map_err(|why| TreeError::BadName { name: n.display_name(), why })?;
            if i > 0 && self.nodes[i - 1].name >= n.name {
                return Err(TreeError::Unsorted(n.display_name()));
            }
            let ok = match n.kind {
                NodeKind::Dir => n.subtree.is_some() && n.content.is_empty() && n.link_target.is_none(),
                NodeKind::File => n.subtree.is_none() && n.link_target.is_none(),
                NodeKind::Symlink => n.link_target.is_some() && n.subtree.is_none() && n.content.is_empty(),
                _ => n.subtree.is_none() && n.content.is_empty() && n.link_target.is_none(),
            };
            if !ok {
                return Err(TreeError::Inconsistent(n.display_name(), "fields do not match its kind"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_node() -> impl Strategy<Value = Node> {
        (
            proptest::collection::vec(1u8..=255, 1..20).prop_filter("valid", |n| check_name(n).is_ok()),
            any::<u32>(),
            any::<i64>(),
            any::<u64>(),
            proptest::collection::vec(any::<[u8; 32]>(), 0..4),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
        )
            .prop_map(|(name, mode, mtime, size, ids, target)| {
                let mut n = Node::new(name, NodeKind::File);
                n.mode = mode;
                n.mtime_ns = mtime;
                n.size = size;
                n.content = ids.into_iter().map(|b| Extent::Data(Id(b))).collect();
                n.content.push(Extent::Hole(size));
                if let Some(t) = target {
                    n.kind = NodeKind::Symlink;
                    n.content.clear();
                    n.link_target = Some(t);
                }
                n
            })
    }

    proptest! {
        #[test]
        fn tree_round_trips(nodes in proptest::collection::vec(arb_node(), 0..20)) {
            let mut tree = Tree { nodes };
            tree.sort();
            tree.nodes.dedup_by(|a, b| a.name == b.name);
            let decoded = Tree::decode(&tree.encode()).unwrap();
            prop_assert_eq!(decoded, tree);
        }

        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Tree::decode(&data);
        }
    }

    #[test]
    fn hostile_names_are_rejected() {
        for bad in [&b".."[..], b".", b"a/b", b"", b"a\0b"] {
            let mut n = Node::new(bad.to_vec(), NodeKind::Fifo);
            n.mode = 0o644;
            let t = Tree { nodes: vec![n] };
            assert!(Tree::decode(&t.encode()).is_err(), "{bad:?} accepted");
        }
        let a = Node::new(b"a".to_vec(), NodeKind::Fifo);
        let t = Tree { nodes: vec![a.clone(), a] };
        assert!(matches!(Tree::decode(&t.encode()), Err(TreeError::Unsorted(_))));
    }
}
