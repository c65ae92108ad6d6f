//! `repair`: rebuilds the index from the packs (`repair index`) and rewrites snapshots that
//! reference data the repository no longer has (`repair snapshots`).
//!
//! **Index.** Under the maintenance lease (format §11.2), every pack in `data/` is described
//! again: from a readable index file when that file's entries account for the pack's listed size
//! exactly (unless `read_all_packs`), else from the pack's own header (the encrypted tail, one or
//! two ranged reads). New index files are written in chunks of [`MAX_BLOBS_PER_FILE`] blobs as
//! the packs stream by, the last one superseding every index file that was listed at the start
//! (§11.1), so the old files stay valid until the whole new index is stored; then the superseded
//! files are deleted, the lease checked before each deletion. A pack whose header does not open
//! or decode is reported and left out. Memory: one old index file at a time, the set of pack ids,
//! and one new index file.
//!
//! **Snapshots.** A snapshot whose trees reference a data blob that is not indexed (or whose pack
//! is gone), or a tree that is missing or does not decode, gets a new snapshot with those
//! references removed, never silently: a file with missing content is dropped, a directory whose
//! tree is unreadable becomes a directory holding only a marker file that says what was lost,
//! and every change is returned (and recorded in the new snapshot's `summary.skipped`, with
//! `incomplete` set). The new snapshot keeps the original's time, host and paths, gets the tag
//! `repaired` and names the original in `original` (format §9); a repair an earlier run already
//! stored (same original, same root tree) is reported, not stored again. New tree and marker blobs are
//! sealed and packed as a backup does (`archiver::seal_blob`, `archiver::store_pack`), and
//! written in the format's order: packs, then index, then snapshots (each after a backup's check
//! against prune's deletion plans, format §11.4); only then, on request, are the originals
//! deleted.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures::StreamExt;
use serde::{Serialize, Serializer};

use crate::archiver::{seal_blob, store_pack};
use crate::backend::{Backend, FileType, Handle};
use crate::crypto::{Keys, SEAL_OVERHEAD};
use crate::error::{Error, Result};
use crate::id::Id;
use crate::index::{IndexFile, IndexPack, MAX_BLOBS_PER_FILE};
use crate::lease::Lease;
use crate::pack::{BlobEntry, BlobType, HEADER_ENTRY_LEN, PackBuilder};
use crate::progress::Progress;
use crate::repo::Repository;
use crate::snapshot::{Skipped, Snapshot, SnapshotEntry};
use crate::tree::{Extent, Node, NodeKind, Tree};

/// The tag every repaired snapshot carries.
pub const REPAIRED_TAG: &str = "repaired";
/// The name of the marker file left in a directory whose tree could not be read.
pub const LOST_MARKER: &str = "S3BK-REPAIR-LOST-CONTENTS.txt";
/// Tail bytes read first when reading a pack header (enough for ~390 blobs).
const TAIL_GUESS: u64 = 16 << 10;
/// Largest sealed pack header accepted (1.6 million entries).
const MAX_HEADER: u64 = 64 << 20;
/// Plaintext header bytes before the entries: magic (8), version (1), count (4).
const HEADER_FIXED: u64 = 8 + 1 + 4;

fn hex<S: Serializer>(id: &Id, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&id.to_hex())
}

fn hex_list<S: Serializer>(ids: &[Id], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(ids.iter().map(Id::to_hex))
}

fn hex_opt<S: Serializer>(id: &Option<Id>, s: S) -> Result<S::Ok, S::Error> {
    match id {
        Some(id) => s.serialize_str(&id.to_hex()),
        None => s.serialize_none(),
    }
}

/// Whether an error means the object is damaged or gone (as opposed to the storage failing now).
fn is_damage(e: &Error) -> bool {
    match e {
        Error::Corrupt { .. } | Error::MissingBlob(_) => true,
        Error::Backend(b) => b.is_not_found(),
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------------
// repair index

/// What `repair index` does.
#[derive(Clone, Debug, Default)]
pub struct IndexOptions {
    /// Read every pack's header, trusting no index file.
    pub read_all_packs: bool,
    /// Work out and report the changes, write and delete nothing.
    pub dry_run: bool,
}

/// A pack left out of the new index.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SkippedPack {
    /// The pack.
    #[serde(serialize_with = "hex")]
    pub pack: Id,
    /// Its size in the listing.
    pub size: u64,
    /// Why it was left out.
    pub error: String,
}

/// An old index file that did not load (it is superseded and deleted all the same).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct UnreadableIndex {
    /// The index file.
    #[serde(serialize_with = "hex")]
    pub index: Id,
    /// Why.
    pub error: String,
}

/// What `repair index` did (or, with `dry_run`, would do).
#[derive(Clone, Debug, Default, Serialize)]
pub struct IndexReport {
    /// Nothing was written or deleted.
    pub dry_run: bool,
    /// Packs in the repository.
    pub packs: u64,
    /// Packs described from their own header.
    pub packs_read: u64,
    /// Packs described from an old index file that accounts for their size exactly.
    pub packs_from_index: u64,
    /// Blobs in the new index.
    pub blobs: u64,
    /// Packs left out: header unreadable, or gone since the listing.
    pub skipped: Vec<SkippedPack>,
    /// Packs the old index files listed that are not in the repository.
    #[serde(serialize_with = "hex_list")]
    pub dropped: Vec<Id>,
    /// Old index files that did not load.
    pub unreadable_index: Vec<UnreadableIndex>,
    /// New index files (with `dry_run`: how many would be written, ids of what would be).
    #[serde(serialize_with = "hex_list")]
    pub index_written: Vec<Id>,
    /// Old index files superseded (and deleted unless `dry_run`).
    #[serde(serialize_with = "hex_list")]
    pub index_superseded: Vec<Id>,
    /// Old index files deleted.
    pub index_deleted: u64,
    /// Whether the maintenance lease excluded other runs atomically (`None` for a dry run,
    /// which takes no lease; `false` on servers that ignore conditional writes, format §11.2).
    pub lease_exclusive: Option<bool>,
}

/// Writes new index files as packs arrive: full files go out at once, without supersessions;
/// the last file carries them (see the module comment).
struct IndexWriter<'a> {
    repo: &'a Repository,
    dry_run: bool,
    file: IndexFile,
    count: usize,
    written: Vec<Id>,
}

impl IndexWriter<'_> {
    async fn add(&mut self, pack: IndexPack) -> Result<()> {
        self.count += pack.blobs.len();
        self.file.packs.push(pack);
        if self.count >= MAX_BLOBS_PER_FILE {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<()> {
        let file = std::mem::take(&mut self.file);
        self.count = 0;
        let plain = file.encode();
        let id = if self.dry_run {
            Id::hash(&plain) // a stand-in: the stored name depends on the random nonce
        } else {
            self.repo.save_file(FileType::Index, &plain).await?
        };
        self.written.push(id);
        Ok(())
    }
}

/// Rebuilds the index from the packs (see the module comment). Damaged packs and index files
/// are reported in the result; an error means nothing was deleted (the new index files written
/// so far only add entries).
pub async fn repair_index(repo: &Repository, opts: &IndexOptions, progress: Arc<dyn Progress>) -> Result<IndexReport> {
    let lease = if opts.dry_run { None } else { Some(Lease::acquire(repo, "repair index").await?) };
    let outcome = rebuild_index(repo, opts, &*progress, lease.as_ref()).await;
    let Some(lease) = lease else { return outcome };
    let exclusive = lease.exclusive();
    let released = lease.release().await;
    let mut report = outcome?;
    released?;
    report.lease_exclusive = Some(exclusive);
    Ok(report)
}

async fn rebuild_index(
    repo: &Repository,
    opts: &IndexOptions,
    progress: &dyn Progress,
    lease: Option<&Lease>,
) -> Result<IndexReport> {
    let backend = repo.backend().clone();
    let conns = backend.connections().max(1);
    let mut report = IndexReport { dry_run: opts.dry_run, ..IndexReport::default() };
    // Index files first, then packs: a pack indexed by a file written in between is listed.
    let mut old: Vec<Id> = list(&*backend, FileType::Index).await?.into_iter().map(|(id, _)| id).collect();
    old.sort();
    let sizes: HashMap<Id, u64> = list(&*backend, FileType::Pack).await?.into_iter().collect();
    report.packs = sizes.len() as u64;
    let mut writer = IndexWriter { repo, dry_run: opts.dry_run, file: IndexFile::default(), count: 0, written: vec![] };
    let mut done: HashSet<Id> = HashSet::new();
    let mut dropped: HashSet<Id> = HashSet::new();

    if !opts.read_all_packs {
        progress.current("index files");
        progress.add_total(old.len() as u64, 0);
        let mut files = futures::stream::iter(old.clone())
            .map(|id| async move {
                (id, repo.load_file(FileType::Index, &id).await.and_then(|plain| IndexFile::decode(&plain)))
            })
            .buffer_unordered(conns);
        while let Some((index, loaded)) = files.next().await {
            progress.advance(1, 0);
            let file = match loaded {
                Ok(f) => f,
                Err(e) if is_damage(&e) => {
                    report.unreadable_index.push(UnreadableIndex { index, error: e.to_string() });
                    continue;
                }
                Err(e) => return Err(e),
            };
            for p in file.packs {
                match sizes.get(&p.id) {
                    None => {
                        dropped.insert(p.id);
                    }
                    Some(&size) if !done.contains(&p.id) && accounts_for(&p.blobs, size) => {
                        done.insert(p.id);
                        report.packs_from_index += 1;
                        report.blobs += p.blobs.len() as u64;
                        writer.add(p).await?;
                    }
                    Some(_) => {}
                }
            }
        }
    }

    let mut rest: Vec<(Id, u64)> = sizes.iter().filter(|(id, _)| !done.contains(id)).map(|(i, s)| (*i, *s)).collect();
    rest.sort();
    progress.current("packs");
    progress.add_total(rest.len() as u64, 0);
    let keys = repo.keys().clone();
    let mut headers = futures::stream::iter(rest)
        .map(|(id, size)| {
            let (backend, keys) = (backend.clone(), keys.clone());
            async move { (id, size, read_pack_header(&*backend, &keys, &id, size).await) }
        })
        .buffer_unordered(conns);
    while let Some((id, size, read)) = headers.next().await {
        progress.current(&id.short());
        progress.advance(1, 0);
        match read {
            Ok(blobs) => {
                report.packs_read += 1;
                report.blobs += blobs.len() as u64;
                writer.add(IndexPack { id, blobs }).await?;
            }
            Err(e) if is_damage(&e) => {
                tracing::warn!("pack {id} is left out of the index: {e}");
                report.skipped.push(SkippedPack { pack: id, size, error: e.to_string() });
            }
            Err(e) => return Err(e),
        }
    }
    drop(headers);
    report.skipped.sort_by_key(|s| s.pack);
    report.unreadable_index.sort_by_key(|u| u.index);
    report.dropped = dropped.into_iter().collect();
    report.dropped.sort();

    // The last file supersedes every listed one; written even when empty, so they can go.
    if !writer.file.packs.is_empty() || !old.is_empty() {
        writer.file.supersedes = old.clone();
        writer.flush().await?;
    }
    report.index_written = std::mem::take(&mut writer.written);
    report.index_superseded = old;
    if let Some(lease) = lease {
        progress.current("deleting superseded index files");
        for id in &report.index_superseded {
            lease.check()?;
            match backend.delete(&Handle::new(FileType::Index, id.to_hex())).await {
                Ok(()) => report.index_deleted += 1,
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(report)
}

/// Whether index entries `blobs` describe a pack of `size` bytes exactly: contiguous from
/// offset 0, followed by a header of exactly their count.
fn accounts_for(blobs: &[BlobEntry], size: u64) -> bool {
    let mut sorted: Vec<&BlobEntry> = blobs.iter().collect();
    sorted.sort_by_key(|b| b.offset);
    let mut end = 0u64;
    for b in sorted {
        if u64::from(b.offset) != end {
            return false;
        }
        end += u64::from(b.length);
    }
    let header = SEAL_OVERHEAD as u64 + HEADER_FIXED + (blobs.len() * HEADER_ENTRY_LEN) as u64;
    !blobs.is_empty() && end + header + 4 == size
}

/// Reads pack `id`'s blob list from its tail: one ranged read, two for a large header.
pub async fn read_pack_header(backend: &dyn Backend, keys: &Arc<Keys>, id: &Id, size: u64) -> Result<Vec<BlobEntry>> {
    let what = format!("pack {id}");
    let h = Handle::new(FileType::Pack, id.to_hex());
    if size < 4 + SEAL_OVERHEAD as u64 {
        return Err(Error::corrupt(what, format!("{size} bytes, too short for a pack")));
    }
    let first = TAIL_GUESS.min(size);
    let mut tail = backend.get(&h, Some(size - first..size)).await?;
    let hlen = crate::pack::header_len(&tail, size).map_err(|e| Error::corrupt(&what, e.to_string()))?;
    if hlen > MAX_HEADER {
        return Err(Error::corrupt(what, format!("header length {hlen} is larger than any valid header")));
    }
    if hlen + 4 > first {
        tail = backend.get(&h, Some(size - hlen - 4..size)).await?;
    }
    let keys = keys.clone();
    tokio::task::spawn_blocking(move || crate::pack::read_header(&keys, &tail, size))
        .await
        .map_err(|_| Error::Cancelled)?
        .map_err(|e| Error::corrupt(what, e.to_string()))
}

async fn list(backend: &dyn Backend, tpe: FileType) -> Result<Vec<(Id, u64)>> {
    Ok(backend.list(tpe).await?.into_iter().filter_map(|f| Some((f.handle.name.parse().ok()?, f.size))).collect())
}

// ---------------------------------------------------------------------------------------------
// repair snapshots

/// What `repair snapshots` does.
#[derive(Clone, Debug, Default)]
pub struct SnapshotsOptions {
    /// The snapshots to check; every snapshot when empty.
    pub snapshots: Vec<Id>,
    /// Delete each original after its repaired snapshot is stored.
    pub forget: bool,
    /// Work out and report the changes, write and delete nothing.
    pub dry_run: bool,
}

/// One change a repair made to a snapshot.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Change {
    /// A file was removed because some of its content is missing.
    FileDropped {
        /// Its path from the snapshot root.
        path: String,
        /// Data blobs missing.
        missing_blobs: u64,
        /// Data blobs it has.
        blobs: u64,
        /// Its size.
        size: u64,
    },
    /// A directory's tree was unreadable: it now holds only the marker file [`LOST_MARKER`].
    DirectoryEmptied {
        /// Its path from the snapshot root (`/` for the root).
        path: String,
        /// The unreadable tree.
        #[serde(serialize_with = "hex")]
        tree: Id,
        /// Why it was unreadable.
        error: String,
    },
}

impl Change {
    /// The path the change concerns.
    pub fn path(&self) -> &str {
        match self {
            Self::FileDropped { path, .. } | Self::DirectoryEmptied { path, .. } => path,
        }
    }

    fn why(&self) -> String {
        match self {
            Self::FileDropped { missing_blobs, blobs, .. } => {
                format!("removed by repair: {missing_blobs} of its {blobs} data blobs are missing")
            }
            Self::DirectoryEmptied { tree, error, .. } => {
                format!("emptied by repair: its tree {tree} is unreadable ({error})")
            }
        }
    }

    /// The same change seen from a parent directory named `name`.
    fn under(&self, name: &[u8]) -> Self {
        let join = |p: &str| {
            let name = String::from_utf8_lossy(name);
            if p == "/" { name.into_owned() } else { format!("{name}/{p}") }
        };
        let mut c = self.clone();
        match &mut c {
            Self::FileDropped { path, .. } | Self::DirectoryEmptied { path, .. } => *path = join(path),
        }
        c
    }
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::FileDropped { path, missing_blobs, blobs, .. } => {
                write!(f, "dropped file {path}: {missing_blobs} of its {blobs} data blobs are missing")
            }
            Self::DirectoryEmptied { path, tree, error } => {
                write!(f, "emptied directory {path} (marker {LOST_MARKER} added): tree {tree} is unreadable: {error}")
            }
        }
    }
}

/// One snapshot that needed repair.
#[derive(Clone, Debug, Serialize)]
pub struct RepairedSnapshot {
    /// The damaged snapshot.
    #[serde(serialize_with = "hex")]
    pub original: Id,
    /// The new snapshot (`None` with `dry_run`, unless `earlier`).
    #[serde(serialize_with = "hex_opt")]
    pub repaired: Option<Id>,
    /// Whether `repaired` was stored by an earlier run (the same repair is not stored twice).
    pub earlier: bool,
    /// What was removed.
    pub changes: Vec<Change>,
    /// Whether the original was deleted.
    pub forgotten: bool,
}

/// A snapshot file that could not be loaded (nothing to repair it from).
#[derive(Clone, Debug, Serialize)]
pub struct UnreadableSnapshot {
    /// The snapshot.
    #[serde(serialize_with = "hex")]
    pub snapshot: Id,
    /// Why.
    pub error: String,
}

/// What `repair snapshots` did (or, with `dry_run`, would do).
#[derive(Clone, Debug, Default, Serialize)]
pub struct SnapshotsReport {
    /// Nothing was written or deleted.
    pub dry_run: bool,
    /// Snapshots checked.
    pub checked: u64,
    /// Snapshots that needed repair.
    pub repaired: Vec<RepairedSnapshot>,
    /// Snapshot files that could not be loaded.
    pub unreadable: Vec<UnreadableSnapshot>,
    /// New blobs (trees and markers) stored.
    pub blobs_written: u64,
    /// Packs written.
    pub packs_written: u64,
}

/// Seals new blobs into packs as a backup does, skipping blobs the repository already has.
struct BlobWriter<'a> {
    repo: &'a Repository,
    packs: &'a HashSet<Id>,
    dry_run: bool,
    data: PackBuilder,
    trees: PackBuilder,
    seen: HashSet<Id>,
    stored: Vec<IndexPack>,
    blobs: u64,
}

impl BlobWriter<'_> {
    /// Whether blob `id` can be read: indexed, in a pack that exists.
    fn present(&self, id: &Id) -> Result<bool> {
        Ok(self.repo.index().get(id)?.is_some_and(|loc| self.packs.contains(&loc.pack)))
    }

    async fn add(&mut self, tpe: BlobType, plain: &[u8]) -> Result<Id> {
        let id = self.repo.keys().blob_id(plain);
        if self.seen.contains(&id) || self.present(&id)? {
            return Ok(id);
        }
        self.seen.insert(id);
        self.blobs += 1;
        let (sealed, compressed) = seal_blob(self.repo.keys(), self.repo.config().compression, &id, plain)?;
        let pack_size = self.repo.config().pack_size as usize;
        let builder = if tpe == BlobType::Data { &mut self.data } else { &mut self.trees };
        builder.add(id, plain.len() as u32, compressed, &sealed);
        if builder.len() >= pack_size || builder.count() >= 100_000 {
            let full = std::mem::replace(builder, PackBuilder::new(tpe, 0));
            self.store(full).await?;
        }
        Ok(id)
    }

    async fn store(&mut self, b: PackBuilder) -> Result<()> {
        let pack = b.finish(self.repo.keys());
        let entry = if self.dry_run {
            IndexPack { id: pack.id, blobs: pack.entries }
        } else {
            store_pack(&**self.repo.backend(), pack).await?
        };
        self.stored.push(entry);
        Ok(())
    }

    /// Stores the open packs; returns the index entries of every pack written.
    async fn finish(mut self) -> Result<Vec<IndexPack>> {
        for tpe in [BlobType::Data, BlobType::Tree] {
            let b = std::mem::replace(
                if tpe == BlobType::Data { &mut self.data } else { &mut self.trees },
                PackBuilder::new(tpe, 0),
            );
            if !b.is_empty() {
                self.store(b).await?;
            }
        }
        Ok(self.stored)
    }
}

/// A tree as rewritten: its new id and what was removed below it (paths relative to it).
type Rewritten = (Id, Arc<Vec<Change>>);

/// Rewrites trees without references to missing data, each tree once.
struct Rewriter<'a> {
    writer: BlobWriter<'a>,
    memo: HashMap<Id, Rewritten>,
    progress: &'a dyn Progress,
}

impl Rewriter<'_> {
    async fn tree(&mut self, id: Id) -> Result<Rewritten> {
        if let Some(r) = self.memo.get(&id) {
            return Ok(r.clone());
        }
        self.progress.advance(1, 0);
        let repo = self.writer.repo;
        let loaded = match repo.index().get(&id)? {
            Some(loc) if loc.entry.tpe == BlobType::Tree && self.writer.packs.contains(&loc.pack) => {
                repo.load_tree(&id).await
            }
            Some(loc) if loc.entry.tpe == BlobType::Tree => {
                Err(Error::corrupt(format!("tree {id}"), format!("its pack {} is missing", loc.pack)))
            }
            _ => Err(Error::MissingBlob(id)),
        };
        let tree = match loaded {
            Ok(t) => t,
            Err(e) if is_damage(&e) => {
                let change = Change::DirectoryEmptied { path: "/".into(), tree: id, error: e.to_string() };
                let marker = self.marker(&change).await?;
                let new = self.writer.add(BlobType::Tree, &Tree { nodes: vec![marker] }.encode()).await?;
                let r = (new, Arc::new(vec![change]));
                self.memo.insert(id, r.clone());
                return Ok(r);
            }
            Err(e) => return Err(e),
        };
        let mut changes = Vec::new();
        let mut nodes = Vec::with_capacity(tree.nodes.len());
        let mut changed = false;
        for mut node in tree.nodes {
            match node.kind {
                NodeKind::File => {
                    let mut missing = 0u64;
                    let mut blobs = 0u64;
                    for e in &node.content {
                        if let Extent::Data(b) = e {
                            blobs += 1;
                            if !self.writer.present(b)? {
                                missing += 1;
                            }
                        }
                    }
                    if missing > 0 {
                        changes.push(Change::FileDropped {
                            path: node.display_name(),
                            missing_blobs: missing,
                            blobs,
                            size: node.size,
                        });
                        changed = true;
                        continue;
                    }
                }
                NodeKind::Dir => {
                    if let Some(sub) = node.subtree {
                        let (new, below) = Box::pin(self.tree(sub)).await?;
                        if new != sub {
                            changed = true;
                            node.subtree = Some(new);
                        }
                        changes.extend(below.iter().map(|c| c.under(&node.name)));
                    }
                }
                _ => {}
            }
            nodes.push(node);
        }
        let new = if changed { self.writer.add(BlobType::Tree, &Tree { nodes }.encode()).await? } else { id };
        let r = (new, Arc::new(changes));
        self.memo.insert(id, r.clone());
        Ok(r)
    }

    /// The marker file for an emptied directory: a small text saying what was lost.
    async fn marker(&mut self, change: &Change) -> Result<Node> {
        let Change::DirectoryEmptied { tree, error, .. } = change else { unreachable!("only for emptied dirs") };
        let text = format!(
            "s3bk repair snapshots: the contents of this directory (tree {tree}) could not be read and are not \
             in this snapshot.\nReason: {error}\n"
        );
        let blob = self.writer.add(BlobType::Data, text.as_bytes()).await?;
        let mut node = Node::new(LOST_MARKER.as_bytes().to_vec(), NodeKind::File);
        node.mode = 0o444;
        node.size = text.len() as u64;
        node.mtime_ns = jiff::Timestamp::now().as_nanosecond() as i64;
        node.ctime_ns = node.mtime_ns;
        node.content = vec![Extent::Data(blob)];
        Ok(node)
    }
}

/// Repairs the chosen snapshots (see the module comment). The repository's index must be
/// loaded. Snapshots that need nothing are left alone.
pub async fn repair_snapshots(
    repo: &Repository,
    opts: &SnapshotsOptions,
    progress: Arc<dyn Progress>,
) -> Result<SnapshotsReport> {
    let backend = repo.backend().clone();
    let mut report = SnapshotsReport { dry_run: opts.dry_run, ..SnapshotsReport::default() };
    let mut all: Vec<Id> = list(&*backend, FileType::Snapshot).await?.into_iter().map(|(id, _)| id).collect();
    all.sort();
    let packs: HashSet<Id> = list(&*backend, FileType::Pack).await?.into_iter().map(|(id, _)| id).collect();
    // Every snapshot is loaded: earlier repairs are found by their `original`.
    let mut entries = Vec::new();
    let mut earlier: HashMap<Id, Vec<(Id, Id)>> = HashMap::new();
    for id in all.iter().copied().chain(opts.snapshots.iter().copied().filter(|i| !all.contains(i))) {
        let wanted = opts.snapshots.is_empty() || opts.snapshots.contains(&id);
        match repo.load_snapshot(&id).await {
            Ok(snapshot) => {
                if let Some(o) = snapshot.original {
                    earlier.entry(o).or_default().push((id, snapshot.tree));
                }
                if wanted {
                    entries.push(SnapshotEntry { id, snapshot });
                }
            }
            Err(e) if is_damage(&e) && wanted => {
                report.unreadable.push(UnreadableSnapshot { snapshot: id, error: e.to_string() })
            }
            Err(e) if is_damage(&e) => {}
            Err(e) => return Err(e),
        }
    }
    entries.sort_by_key(|e| (e.snapshot.time_ns, e.id));

    let writer = BlobWriter {
        repo,
        packs: &packs,
        dry_run: opts.dry_run,
        data: PackBuilder::new(BlobType::Data, 0),
        trees: PackBuilder::new(BlobType::Tree, 0),
        seen: HashSet::new(),
        stored: Vec::new(),
        blobs: 0,
    };
    let mut rw = Rewriter { writer, memo: HashMap::new(), progress: &*progress };
    let mut new_snapshots: Vec<(usize, Snapshot)> = Vec::new();
    for e in &entries {
        progress.current(&format!("snapshot {}", e.id.short()));
        report.checked += 1;
        let (root, changes) = rw.tree(e.snapshot.tree).await?;
        if root == e.snapshot.tree {
            continue;
        }
        // An earlier run already stored this very repair: use it rather than write a copy.
        let done = earlier.get(&e.id).and_then(|v| v.iter().find(|(_, tree)| *tree == root)).map(|(id, _)| *id);
        if done.is_none() {
            new_snapshots.push((report.repaired.len(), repaired_snapshot(e, root, &changes)));
        }
        report.repaired.push(RepairedSnapshot {
            original: e.id,
            repaired: done,
            earlier: done.is_some(),
            changes: changes.to_vec(),
            forgotten: false,
        });
    }
    report.blobs_written = rw.writer.blobs;
    let stored = rw.writer.finish().await?;
    report.packs_written = stored.len() as u64;
    if opts.dry_run {
        return Ok(report);
    }
    // Packs are stored; now the index, then the snapshots, then (on request) the originals.
    // Like a backup (format §11.4): a prune that marked packs since the index was loaded may be
    // about to delete data the new packs or the repaired snapshots rely on.
    crate::plancheck::check_new_packs(&crate::plancheck::packs_in_reach(repo).await?, &stored)?;
    if !stored.is_empty() {
        repo.save_index(stored).await?;
    }
    let condemned = crate::plancheck::packs_in_reach(repo).await?;
    for (i, s) in &new_snapshots {
        crate::plancheck::check_snapshot(repo, &s.tree, &condemned).await?;
        report.repaired[*i].repaired = Some(repo.save_snapshot(s).await?);
    }
    if opts.forget {
        for r in &mut report.repaired {
            match backend.delete(&Handle::new(FileType::Snapshot, r.original.to_hex())).await {
                Ok(()) => r.forgotten = true,
                Err(e) if e.is_not_found() => r.forgotten = true,
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(report)
}

/// The repaired copy of `e` with root `root`: tagged, pointing at the original, incomplete,
/// with every change in `summary.skipped`.
fn repaired_snapshot(e: &SnapshotEntry, root: Id, changes: &[Change]) -> Snapshot {
    let mut s = e.snapshot.clone();
    s.tree = root;
    if !s.tags.iter().any(|t| t == REPAIRED_TAG) {
        s.tags.push(REPAIRED_TAG.into());
    }
    s.original = Some(e.id);
    s.incomplete = true;
    s.summary.skipped.extend(changes.iter().map(|c| Skipped { path: c.path().to_owned(), error: c.why() }));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(offset: u32, length: u32) -> BlobEntry {
        BlobEntry { id: Id::random(), tpe: BlobType::Data, offset, length, raw_len: 1, compressed: false }
    }

    #[test]
    fn index_entries_account_for_the_pack_size_exactly() {
        let blobs = [entry(100, 50), entry(0, 100)];
        let size = 150 + 44 + 13 + 2 * 41 + 4;
        assert!(accounts_for(&blobs, size));
        assert!(!accounts_for(&blobs, size + 1));
        assert!(!accounts_for(&[entry(0, 100), entry(101, 49)], size));
        assert!(!accounts_for(&[], 44 + 13 + 4));
    }

    #[test]
    fn change_paths_join_under_parents() {
        let c = Change::DirectoryEmptied { path: "/".into(), tree: Id([1; 32]), error: "x".into() };
        assert_eq!(c.under(b"sub").under(b"top").path(), "top/sub");
        let f = Change::FileDropped { path: "f".into(), missing_blobs: 1, blobs: 2, size: 3 };
        assert_eq!(f.under(b"d").path(), "d/f");
    }
}
