//! Browsing snapshots without restoring: walk trees, and compare two of them.

use crate::error::Result;
use crate::id::Id;
use crate::repo::Repository;
use crate::tree::{Node, NodeKind, Tree};

/// One entry met while walking a tree: its path from the snapshot root and its node.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Path bytes relative to the snapshot root, `/`-separated (e.g. `reports/q1.pdf`).
    pub path: Vec<u8>,
    /// The node.
    pub node: Node,
}

/// How an entry differs between two snapshots.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    /// Only in the second snapshot.
    Added,
    /// Only in the first.
    Removed,
    /// Content differs.
    Modified,
    /// Only metadata differs (mode, owner, times, xattrs).
    Metadata,
    /// Kind differs (e.g. file became a directory).
    Type,
}

fn join(prefix: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = prefix.to_vec();
    if !p.is_empty() {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

/// Every entry under tree `root` (depth-first, names sorted), starting below `prefix`
/// (a `/`-separated path inside the snapshot; empty for all). A prefix naming a file yields it alone.
pub async fn walk(repo: &Repository, root: &Id, prefix: &[u8]) -> Result<Vec<Entry>> {
    let mut tree = repo.load_tree(root).await?;
    let mut at = Vec::new();
    for part in prefix.split(|&b| b == b'/').filter(|p| !p.is_empty()) {
        let node = tree.find(part).cloned().ok_or_else(|| {
            crate::error::Error::Invalid(format!("no {:?} in the snapshot", String::from_utf8_lossy(prefix)))
        })?;
        at = join(&at, part);
        match node.subtree {
            Some(sub) => tree = repo.load_tree(&sub).await?,
            None => return Ok(vec![Entry { path: at, node }]),
        }
    }
    let mut out = Vec::new();
    walk_into(repo, tree, at, &mut out).await?;
    Ok(out)
}

async fn walk_into(repo: &Repository, tree: Tree, at: Vec<u8>, out: &mut Vec<Entry>) -> Result<()> {
    for node in tree.nodes {
        let path = join(&at, &node.name);
        let sub = node.subtree;
        out.push(Entry { path: path.clone(), node });
        if let Some(sub) = sub {
            let t = repo.load_tree(&sub).await?;
            Box::pin(walk_into(repo, t, path, out)).await?;
        }
    }
    Ok(())
}

/// The differences between trees `a` and `b`, sorted by path. Identical subtrees (same id) are
/// skipped without loading them.
pub async fn diff(repo: &Repository, a: &Id, b: &Id) -> Result<Vec<(Vec<u8>, Change)>> {
    let mut out = Vec::new();
    diff_into(repo, Some(*a), Some(*b), Vec::new(), &mut out).await?;
    Ok(out)
}

async fn diff_into(
    repo: &Repository,
    a: Option<Id>,
    b: Option<Id>,
    at: Vec<u8>,
    out: &mut Vec<(Vec<u8>, Change)>,
) -> Result<()> {
    if a == b {
        return Ok(());
    }
    let load = |id: Option<Id>| async move {
        match id {
            Some(id) => repo.load_tree(&id).await,
            None => Ok(Tree::default()),
        }
    };
    let (ta, tb) = (load(a).await?, load(b).await?);
    let (mut i, mut j) = (0, 0);
    while i < ta.nodes.len() || j < tb.nodes.len() {
        let (na, nb) = (ta.nodes.get(i), tb.nodes.get(j));
        let order = match (na, nb) {
            (Some(x), Some(y)) => x.name.cmp(&y.name),
            (Some(_), None) => std::cmp::Ordering::Less,
            _ => std::cmp::Ordering::Greater,
        };
        match order {
            std::cmp::Ordering::Less => {
                let x = na.expect("present");
                out.push((join(&at, &x.name), Change::Removed));
                Box::pin(diff_into(repo, x.subtree, None, join(&at, &x.name), out)).await?;
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                let y = nb.expect("present");
                out.push((join(&at, &y.name), Change::Added));
                Box::pin(diff_into(repo, None, y.subtree, join(&at, &y.name), out)).await?;
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                let (x, y) = (na.expect("present"), nb.expect("present"));
                let path = join(&at, &x.name);
                if x.kind != y.kind {
                    out.push((path.clone(), Change::Type));
                } else if x.kind != NodeKind::Dir && (x.content != y.content || x.link_target != y.link_target) {
                    out.push((path.clone(), Change::Modified));
                } else if x.mode != y.mode
                    || x.uid != y.uid
                    || x.gid != y.gid
                    || x.mtime_ns != y.mtime_ns
                    || x.xattrs != y.xattrs
                {
                    out.push((path.clone(), Change::Metadata));
                }
                if x.kind == NodeKind::Dir || y.kind == NodeKind::Dir {
                    Box::pin(diff_into(repo, x.subtree, y.subtree, path, out)).await?;
                }
                i += 1;
                j += 1;
            }
        }
    }
    Ok(())
}
