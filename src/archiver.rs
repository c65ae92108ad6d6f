//! Backup: walks source paths and stores their content and metadata as a new snapshot.
//!
//! The pipeline runs on plain threads joined by bounded channels, so a slow stage stalls the
//! ones before it and memory stays bounded:
//!
//! ```text
//! walk ──files──▶ readers ×2 ──new chunks──▶ sealers ×ncpu ──sealed──▶ packer ──packs──▶ uploaders (async)
//!   │  (read, chunk, hash, dedup)             (zstd, encrypt)          (cut packs)      (put, then index)
//!   └──dirs (post-order)──▶ tree saver ──tree blobs──▶ sealers
//! ```
//!
//! The walker never waits for file content: it hands each directory to the tree saver with
//! pending results, and the tree saver assembles trees as the readers finish. Writes follow
//! the format's order: packs, then index files, then the snapshot. A file that cannot be read
//! is skipped and reported; only repository errors abort the backup.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::Metadata;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender, bounded};
use globset::{GlobSet, GlobSetBuilder};

use crate::backend::{FileType, Handle};
use crate::cache::BlobIndex;
use crate::chunker::{Chunker, ChunkerParams};
use crate::crypto::Keys;
use crate::error::{Error, Result};
use crate::fsmeta;
use crate::id::Id;
use crate::index::IndexPack;
use crate::pack::{BlobType, FinishedPack, PackBuilder};
use crate::progress::Progress;
use crate::repo::Repository;
use crate::snapshot::{Skipped, Snapshot, Summary};
use crate::tree::{Extent, Node, NodeKind, Tree};

/// Which earlier snapshot to compare against to skip reading unchanged files.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ParentChoice {
    /// The newest snapshot of the same host and paths.
    #[default]
    Auto,
    /// This one.
    Id(Id),
    /// None: read every file (`--force-rehash`).
    None,
}

/// What to back up and how.
#[derive(Clone, Debug, Default)]
pub struct BackupOptions {
    /// Paths to back up (files or directories).
    pub paths: Vec<PathBuf>,
    /// Glob patterns of paths to leave out: without a `/` a pattern matches an entry's name
    /// (`*.tmp`, `node_modules`); with one it matches the absolute path (`/home/*/cache`, `**/tmp/*`).
    pub excludes: Vec<String>,
    /// Leave out a directory (below the given paths) that contains an entry with one of these
    /// names (e.g. `.nobackup`), the directory itself included.
    pub exclude_if_present: Vec<String>,
    /// Do not cross filesystem boundaries.
    pub one_file_system: bool,
    /// Tags for the snapshot.
    pub tags: Vec<String>,
    /// Host name to record (default: this machine's).
    pub hostname: Option<String>,
    /// Parent snapshot for change detection.
    pub parent: ParentChoice,
    /// Walk and read, but write nothing to the repository.
    pub dry_run: bool,
    /// Count files and bytes ahead of the backup (a second, metadata-only walk) so progress
    /// can show totals and an ETA. Costs a stat of every entry; leave off when nobody watches.
    pub estimate_totals: bool,
}

/// The outcome of a backup.
#[derive(Clone, Debug)]
pub struct BackupResult {
    /// The new snapshot's id (`None` for a dry run).
    pub id: Option<Id>,
    /// The snapshot (with its summary; `incomplete` when paths were skipped).
    pub snapshot: Snapshot,
}

/// Which entries to leave out.
pub(crate) struct Excludes {
    names: GlobSet,
    paths: GlobSet,
    if_present: Vec<String>,
}

impl Excludes {
    pub(crate) fn new(patterns: &[String], if_present: &[String]) -> Result<Self> {
        let mut names = GlobSetBuilder::new();
        let mut paths = GlobSetBuilder::new();
        for p in patterns {
            let glob = globset::GlobBuilder::new(p)
                .literal_separator(true)
                .backslash_escape(true)
                .build()
                .map_err(|e| Error::Invalid(format!("exclude pattern {p:?}: {e}")))?;
            if p.contains('/') {
                paths.add(glob)
            } else {
                names.add(glob)
            };
        }
        let build = |b: GlobSetBuilder| b.build().map_err(|e| Error::Invalid(e.to_string()));
        Ok(Self { names: build(names)?, paths: build(paths)?, if_present: if_present.to_vec() })
    }

    fn excluded(&self, path: &Path, name: &[u8]) -> bool {
        self.names.is_match(OsStr::from_bytes(name)) || self.paths.is_match(path)
    }

    fn dir_opted_out(&self, dir: &Path) -> bool {
        self.if_present.iter().any(|f| dir.join(f).symlink_metadata().is_ok())
    }
}

/// A chunk or tree waiting to be compressed and encrypted.
struct BlobJob {
    tpe: BlobType,
    id: Id,
    data: Vec<u8>,
}

/// A blob ready for a pack.
struct SealedBlob {
    tpe: BlobType,
    id: Id,
    raw_len: u32,
    compressed: bool,
    sealed: Vec<u8>,
}

/// A file whose content must be read.
struct FileJob {
    path: PathBuf,
    node: Node,
    reply: Sender<std::result::Result<Node, String>>,
}

/// A directory entry whose final node may still be in the making.
enum Pending {
    Ready(Node),
    File { path: PathBuf, rx: Receiver<std::result::Result<Node, String>> },
    Dir { node: Node, rx: Receiver<Id> },
}

/// A directory for the tree saver: its entries, and where to send its tree id.
struct DirJob {
    entries: Vec<Pending>,
    reply: Sender<Id>,
}

/// Counters shared by the stages.
#[derive(Default)]
struct Stats {
    files_new: AtomicU64,
    files_changed: AtomicU64,
    files_unmodified: AtomicU64,
    dirs: AtomicU64,
    others: AtomicU64,
    bytes_read: AtomicU64,
    bytes_total: AtomicU64,
    blobs_added: AtomicU64,
    bytes_added: AtomicU64,
    bytes_added_stored: AtomicU64,
    packs_written: AtomicU64,
}

/// State every stage shares.
struct Shared {
    keys: Arc<Keys>,
    index: Arc<BlobIndex>,
    chunker: ChunkerParams,
    compression: i32,
    /// Blobs first seen in this run (queued or stored): dedup for what the index cannot know yet.
    inflight: Mutex<HashSet<Id>>,
    stats: Stats,
    skipped: Mutex<Vec<Skipped>>,
    failure: Mutex<Option<Error>>,
    cancelled: AtomicBool,
    progress: Arc<dyn Progress>,
}

impl Shared {
    /// Records the first fatal error and tells every stage to stop.
    fn fail(&self, e: Error) {
        let mut f = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        if f.is_none() {
            *f = Some(e);
        }
        self.cancelled.store(true, Relaxed);
    }

    fn cancelled(&self) -> bool {
        self.cancelled.load(Relaxed)
    }

    fn skip(&self, path: &Path, error: impl Into<String>) {
        let error = error.into();
        tracing::warn!("skipping {}: {error}", path.display());
        self.skipped
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Skipped { path: path.to_string_lossy().into_owned(), error });
    }

    /// Whether blob `id` must be stored: not indexed and not already queued in this run.
    fn is_new(&self, id: &Id) -> Result<bool> {
        if self.inflight.lock().unwrap_or_else(|p| p.into_inner()).contains(id) {
            return Ok(false);
        }
        if self.index.contains(id)? {
            return Ok(false);
        }
        Ok(self.inflight.lock().unwrap_or_else(|p| p.into_inner()).insert(*id))
    }
}

/// Backs up `opts.paths` into `repo` (whose index must be loaded).
pub async fn backup(repo: &Repository, opts: &BackupOptions, progress: Arc<dyn Progress>) -> Result<BackupResult> {
    let started = Instant::now();
    let time_ns = jiff::Timestamp::now().as_nanosecond() as i64;
    let roots = resolve_roots(&opts.paths)?;
    let paths: Vec<String> = roots.iter().map(|(p, _)| p.to_string_lossy().into_owned()).collect();
    let hostname = opts.hostname.clone().unwrap_or_else(crate::host::hostname);
    let excludes = Excludes::new(&opts.excludes, &opts.exclude_if_present)?;

    let parent = find_parent(repo, &opts.parent, &hostname, &paths).await?;
    let parent_root = match &parent {
        Some((_, s)) => Some((s.tree, repo.load_tree(&s.tree).await?)),
        None => None,
    };
    // Every blob this backup references is indexed in the cache as of this removal count.
    let removals = repo.index().removals()?;
    let parent_indexed = match &parent {
        Some((id, _)) => repo.index().fully_indexed(id)?,
        None => false,
    };

    let shared = Arc::new(Shared {
        keys: repo.keys().clone(),
        index: repo.index().clone(),
        chunker: repo.config().chunker,
        compression: repo.config().compression,
        inflight: Mutex::new(HashSet::new()),
        stats: Stats::default(),
        skipped: Mutex::new(Vec::new()),
        failure: Mutex::new(None),
        cancelled: AtomicBool::new(false),
        progress,
    });

    // Packs go to the uploader; it returns the index entries of every stored pack.
    let (pack_tx, pack_rx) = tokio::sync::mpsc::channel::<FinishedPack>(1);
    let uploader = tokio::spawn(upload_packs(repo.backend().clone(), pack_rx, shared.clone(), opts.dry_run));

    let pipeline = {
        let shared = shared.clone();
        let pack_size = repo.config().pack_size as usize;
        let one_fs = opts.one_file_system;
        let estimate = opts.estimate_totals;
        let loader = TreeLoader {
            backend: repo.backend().clone(),
            keys: repo.keys().clone(),
            index: repo.index().clone(),
            tree_packs: repo.tree_packs().clone(),
            rt: tokio::runtime::Handle::current(),
            limit: Arc::new(tokio::sync::Semaphore::new(repo.backend().connections().max(4))),
        };
        tokio::task::spawn_blocking(move || {
            let walk =
                WalkOptions { excludes: &excludes, one_file_system: one_fs, estimate_totals: estimate, parent_indexed };
            run_pipeline(&shared, roots, parent_root, &walk, pack_size, pack_tx, &loader)
        })
    };
    let root = pipeline.await.map_err(|_| Error::Cancelled)?;
    let packs = uploader.await.map_err(|_| Error::Cancelled)?;
    if let Some(e) = shared.failure.lock().unwrap_or_else(|p| p.into_inner()).take() {
        return Err(e);
    }
    let (root, packs) = (root?, packs?);

    if !opts.dry_run {
        // Format §11.4: a prune may have marked packs since the index was loaded.
        crate::plancheck::check_new_packs(&crate::plancheck::packs_in_reach(repo).await?, &packs)?;
        repo.save_index(packs).await?;
        crate::plancheck::check_snapshot(repo, &root, &crate::plancheck::packs_in_reach(repo).await?).await?;
    }
    let s = &shared.stats;
    let skipped = std::mem::take(&mut *shared.skipped.lock().unwrap_or_else(|p| p.into_inner()));
    let snapshot = Snapshot {
        time_ns,
        tree: root,
        paths,
        hostname,
        username: crate::host::username(),
        tags: opts.tags.clone(),
        parent: parent.map(|(id, _)| id),
        program: format!("s3bk {}", env!("CARGO_PKG_VERSION")),
        incomplete: !skipped.is_empty(),
        summary: Summary {
            files_new: s.files_new.load(Relaxed),
            files_changed: s.files_changed.load(Relaxed),
            files_unmodified: s.files_unmodified.load(Relaxed),
            dirs: s.dirs.load(Relaxed),
            others: s.others.load(Relaxed),
            bytes_read: s.bytes_read.load(Relaxed),
            bytes_total: s.bytes_total.load(Relaxed),
            blobs_added: s.blobs_added.load(Relaxed),
            bytes_added: s.bytes_added.load(Relaxed),
            bytes_added_stored: s.bytes_added_stored.load(Relaxed),
            packs_written: s.packs_written.load(Relaxed),
            duration_secs: started.elapsed().as_secs_f64(),
            skipped,
        },
        original: None,
    };
    let id = if opts.dry_run { None } else { Some(repo.save_snapshot(&snapshot).await?) };
    if let Some(id) = &id
        && let Err(e) = repo.index().set_fully_indexed(id, removals)
    {
        tracing::warn!("local cache: {e}");
    }
    Ok(BackupResult { id, snapshot })
}

/// The absolute source paths with the names their entries get in the root tree.
fn resolve_roots(paths: &[PathBuf]) -> Result<Vec<(PathBuf, Vec<u8>)>> {
    if paths.is_empty() {
        return Err(Error::Invalid("nothing to back up: give at least one path".into()));
    }
    let mut roots = Vec::new();
    let mut names = HashSet::new();
    for p in paths {
        let abs = std::path::absolute(p).map_err(|e| Error::io(p, e))?;
        // Lexically drop `.` and `..` so `./reports/..` names what the user meant.
        let mut clean = PathBuf::new();
        for c in abs.components() {
            match c {
                std::path::Component::ParentDir => {
                    clean.pop();
                }
                std::path::Component::CurDir => {}
                c => clean.push(c),
            }
        }
        clean.symlink_metadata().map_err(|e| Error::io(&clean, e))?;
        let name = clean.file_name().map_or_else(|| b"root".to_vec(), |n| n.as_bytes().to_vec());
        if !names.insert(name.clone()) {
            return Err(Error::Invalid(format!(
                "two paths end in the same name {:?}; back them up in separate snapshots or give their parent",
                String::from_utf8_lossy(&name)
            )));
        }
        roots.push((clean, name));
    }
    Ok(roots)
}

async fn find_parent(
    repo: &Repository,
    choice: &ParentChoice,
    hostname: &str,
    paths: &[String],
) -> Result<Option<(Id, Snapshot)>> {
    match choice {
        ParentChoice::None => Ok(None),
        ParentChoice::Id(id) => Ok(Some((*id, repo.load_snapshot(id).await?))),
        ParentChoice::Auto => {
            let mut want: Vec<&String> = paths.iter().collect();
            want.sort();
            Ok(repo
                .snapshots()
                .await?
                .into_iter()
                .filter(|e| {
                    let mut have: Vec<&String> = e.snapshot.paths.iter().collect();
                    have.sort();
                    e.snapshot.hostname == hostname && have == want
                })
                .max_by_key(|e| e.snapshot.time_ns)
                .map(|e| (e.id, e.snapshot)))
        }
    }
}

/// Loads parent trees for the (blocking) walker through the async backend.
///
/// When the walk enters a directory, the trees of all its parent-snapshot subdirectories are
/// fetched and decoded concurrently, so they are ready when the walk reaches them: one round
/// trip per directory in sequence would dominate an unchanged re-backup over S3.
struct TreeLoader {
    backend: Arc<dyn crate::backend::Backend>,
    keys: Arc<Keys>,
    index: Arc<BlobIndex>,
    tree_packs: Arc<crate::treecache::TreePacks>,
    rt: tokio::runtime::Handle,
    limit: Arc<tokio::sync::Semaphore>,
}

/// A directory's tree in the parent snapshot, with its subdirectories' trees on the way.
struct Parent {
    /// The tree's id: a directory whose entries all equal the tree's keeps it.
    id: Id,
    tree: Tree,
    subtrees: std::cell::RefCell<std::collections::HashMap<Vec<u8>, Subtree>>,
}

/// A subdirectory's parent-snapshot tree: its sealed bytes at hand (its tree pack is in memory,
/// so decoding it on the walker's thread is cheaper than a hand-off), or being fetched.
enum Subtree {
    AtHand { id: Id, loc: crate::cache::Location, sealed: bytes::Bytes },
    Loading(Id, tokio::task::JoinHandle<Result<Tree>>),
}

impl Drop for Parent {
    fn drop(&mut self) {
        // Subdirectories that are gone since: stop their fetches.
        for (_, sub) in self.subtrees.get_mut().drain() {
            if let Subtree::Loading(_, h) = sub {
                h.abort();
            }
        }
    }
}

impl TreeLoader {
    /// Starts fetching the trees of `tree`'s subdirectories whose tree packs are not in memory.
    fn enter(&self, id: Id, tree: Tree) -> Parent {
        let subtrees = tree
            .nodes
            .iter()
            .filter(|n| n.kind == NodeKind::Dir)
            .filter_map(|n| Some((n.name.clone(), self.prepare(n.subtree?))))
            .collect();
        Parent { id, tree, subtrees: std::cell::RefCell::new(subtrees) }
    }

    fn prepare(&self, id: Id) -> Subtree {
        if let Ok(Some(loc)) = self.index.get(&id)
            && let Some(sealed) = self.tree_packs.cached(&loc)
        {
            return Subtree::AtHand { id, loc, sealed };
        }
        Subtree::Loading(id, self.spawn_load(id))
    }

    fn spawn_load(&self, id: Id) -> tokio::task::JoinHandle<Result<Tree>> {
        let (backend, keys, index, tree_packs, limit) =
            (self.backend.clone(), self.keys.clone(), self.index.clone(), self.tree_packs.clone(), self.limit.clone());
        self.rt.spawn(async move {
            let _permit = limit.acquire_owned().await.map_err(|_| Error::Cancelled)?;
            crate::repo::load_tree_with(&*backend, &keys, &index, &tree_packs, &id).await
        })
    }

    /// The parent-snapshot tree of subdirectory `name` of `parent`, once fetched. A tree that
    /// cannot be loaded only costs change detection (its files are read again), so it is a warning.
    fn subtree(&self, parent: &Parent, name: &[u8]) -> Option<Parent> {
        let (id, loaded) = match parent.subtrees.borrow_mut().remove(name)? {
            Subtree::AtHand { id, loc, sealed } => (id, crate::repo::decode_tree(&self.keys, &loc, &sealed, &id)),
            Subtree::Loading(id, h) => (id, self.rt.block_on(h).unwrap_or(Err(Error::Cancelled))),
        };
        match loaded {
            Ok(t) => Some(self.enter(id, t)),
            Err(e) => {
                tracing::warn!("parent tree of {:?}: {e}", String::from_utf8_lossy(name));
                None
            }
        }
    }
}

/// How to walk the sources.
struct WalkOptions<'a> {
    excludes: &'a Excludes,
    one_file_system: bool,
    estimate_totals: bool,
    /// The local cache vouches that every blob of the parent snapshot is still indexed.
    parent_indexed: bool,
}

fn run_pipeline(
    shared: &Arc<Shared>,
    roots: Vec<(PathBuf, Vec<u8>)>,
    parent_root: Option<(Id, Tree)>,
    walk: &WalkOptions<'_>,
    pack_size: usize,
    pack_tx: tokio::sync::mpsc::Sender<FinishedPack>,
    loader: &TreeLoader,
) -> Result<Id> {
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let (file_tx, file_rx) = bounded::<FileJob>(256);
    // Four blobs per sealer in each queue: a burst of small files (small blobs) then keeps the
    // readers going while the sealers work through a large file's chunks (5% faster than two
    // here, same peak memory; sixteen cost 6-16 MiB more for nothing).
    let (blob_tx, blob_rx) = bounded::<BlobJob>(4 * workers);
    let (sealed_tx, sealed_rx) = bounded::<SealedBlob>(4 * workers);
    let (dir_tx, dir_rx) = bounded::<DirJob>(1024);
    let walked = AtomicBool::new(false);

    std::thread::scope(|s| {
        for _ in 0..2 {
            let (rx, tx) = (file_rx.clone(), blob_tx.clone());
            spawn_stage(s, "reader", move || read_files(shared, rx, tx));
        }
        for _ in 0..workers {
            let (rx, tx) = (blob_rx.clone(), sealed_tx.clone());
            spawn_stage(s, "sealer", move || seal_blobs(shared, rx, tx));
        }
        let tx = blob_tx.clone();
        spawn_stage(s, "trees", move || save_trees(shared, dir_rx, tx));
        spawn_stage(s, "packer", move || pack_blobs(shared, sealed_rx, pack_tx, pack_size));
        let trees = blob_tx.clone();
        drop((file_rx, blob_rx, blob_tx, sealed_tx));
        if walk.estimate_totals {
            let (roots, walked) = (&roots, &walked);
            s.spawn(move || {
                for (path, _) in roots {
                    let device = path.symlink_metadata().map(|m| m.dev()).unwrap_or(0);
                    count_totals(shared, walk, path, device, walked);
                }
            });
        }

        let walker = Walker {
            shared,
            excludes: walk.excludes,
            one_file_system: walk.one_file_system,
            parent_indexed: walk.parent_indexed,
            files: file_tx,
            dirs: dir_tx,
            trees,
            loader,
        };
        let root = walker.walk_roots(roots.clone(), parent_root);
        walked.store(true, Relaxed);
        drop(walker);
        root
    })
}

/// Starts a pipeline stage on a thread named after it (profiles and debuggers show the stage).
fn spawn_stage<'scope>(s: &'scope std::thread::Scope<'scope, '_>, stage: &str, f: impl FnOnce() + Send + 'scope) {
    std::thread::Builder::new()
        .name(format!("s3bk-{stage}"))
        .spawn_scoped(s, f)
        .expect("the operating system refused a thread for the backup pipeline");
}

/// The estimate walk: reports every entry's count and size to progress, and stops early once
/// the real walk is done or cancelled. Errors are the real walk's to report.
fn count_totals(shared: &Shared, walk: &WalkOptions<'_>, path: &Path, device: u64, walked: &AtomicBool) {
    let Ok(meta) = path.symlink_metadata() else { return };
    shared.progress.add_total(1, if meta.is_file() { meta.size() } else { 0 });
    let descend = meta.is_dir() && !(walk.one_file_system && meta.dev() != device);
    if !descend {
        return;
    }
    let Ok(entries) = std::fs::read_dir(path) else { return };
    for e in entries.flatten() {
        if walked.load(Relaxed) || shared.cancelled() {
            return;
        }
        let child = e.path();
        let opted_out = e.file_type().is_ok_and(|t| t.is_dir()) && walk.excludes.dir_opted_out(&child);
        if !opted_out && !walk.excludes.excluded(&child, e.file_name().as_bytes()) {
            count_totals(shared, walk, &child, device, walked);
        }
    }
}

struct Walker<'a> {
    shared: &'a Shared,
    excludes: &'a Excludes,
    one_file_system: bool,
    /// See [`WalkOptions::parent_indexed`]: unchanged files need no index lookups then.
    parent_indexed: bool,
    files: Sender<FileJob>,
    dirs: Sender<DirJob>,
    /// Tree blobs the walker assembles itself (see `finish_dir`).
    trees: Sender<BlobJob>,
    loader: &'a TreeLoader,
}

impl Walker<'_> {
    fn walk_roots(&self, roots: Vec<(PathBuf, Vec<u8>)>, parent: Option<(Id, Tree)>) -> Result<Id> {
        let parent = parent.map(|(id, t)| self.loader.enter(id, t));
        let parent = parent.as_ref();
        let mut entries = Vec::new();
        for (path, name) in roots {
            let meta = path.symlink_metadata().map_err(|e| Error::io(&path, e))?;
            let device = meta.dev();
            if let Some(p) = self.entry(&path, name, &meta, parent, device)? {
                entries.push(p);
            }
        }
        let rx = self.finish_dir(entries, parent)?;
        rx.recv().map_err(|_| Error::Cancelled)
    }

    /// Hands a directory's entries on to become its tree. When every entry is known already
    /// (an unchanged directory of a re-backup), the walker builds the tree itself: the tree
    /// saver would cost a thread wake-up per directory for a few microseconds of work. A tree
    /// equal to the parent snapshot's keeps its id (it was just loaded through the index).
    fn finish_dir(&self, entries: Vec<Pending>, old: Option<&Parent>) -> Result<Receiver<Id>> {
        let mut nodes = Vec::with_capacity(entries.len());
        let mut rest = entries.into_iter();
        while let Some(p) = rest.next() {
            let waiting = match p {
                Pending::Ready(node) => {
                    nodes.push(node);
                    continue;
                }
                Pending::Dir { mut node, rx } => match rx.try_recv() {
                    Ok(id) => {
                        node.subtree = Some(id);
                        nodes.push(node);
                        continue;
                    }
                    Err(_) => Pending::Dir { node, rx },
                },
                file @ Pending::File { .. } => file,
            };
            let entries = nodes.into_iter().map(Pending::Ready).chain([waiting]).chain(rest).collect();
            return self.send_dir(entries);
        }
        let mut tree = Tree { nodes };
        tree.sort();
        let id = match old {
            Some(p) if p.tree == tree => p.id,
            _ => store_sorted_tree(self.shared, tree, &self.trees)?,
        };
        let (reply, rx) = bounded(1);
        reply.send(id).map_err(|_| Error::Cancelled)?;
        Ok(rx)
    }

    fn send_dir(&self, entries: Vec<Pending>) -> Result<Receiver<Id>> {
        let (reply, rx) = bounded(1);
        self.dirs.send(DirJob { entries, reply }).map_err(|_| Error::Cancelled)?;
        Ok(rx)
    }

    /// One entry at `path`; `None` when it is excluded.
    fn entry(
        &self,
        path: &Path,
        name: Vec<u8>,
        meta: &Metadata,
        parent: Option<&Parent>,
        device: u64,
    ) -> Result<Option<Pending>> {
        if self.shared.cancelled() {
            return Err(Error::Cancelled);
        }
        let old = parent.and_then(|p| p.tree.find(&name));
        let (mut node, warnings) = fsmeta::node_from_metadata(name, path, meta, old);
        for w in warnings {
            tracing::warn!("{w}");
        }
        let stats = &self.shared.stats;
        match node.kind {
            NodeKind::Dir => {
                stats.dirs.fetch_add(1, Relaxed);
                self.shared.progress.advance(1, 0);
                let sub = if self.one_file_system && meta.dev() != device {
                    // A mount point: recorded, its content left out.
                    self.finish_dir(Vec::new(), None)?
                } else {
                    let old_tree = parent.filter(|_| old.is_some_and(|o| o.kind == NodeKind::Dir));
                    let old_tree = old_tree.and_then(|p| self.loader.subtree(p, &node.name));
                    self.walk_dir(path, old_tree.as_ref(), device)?
                };
                Ok(Some(Pending::Dir { node, rx: sub }))
            }
            NodeKind::File => {
                stats.bytes_total.fetch_add(node.size, Relaxed);
                if let Some(o) = old.filter(|o| unchanged(o, &node))
                    && (self.parent_indexed || self.all_indexed(&o.content)?)
                {
                    node.content = o.content.clone();
                    stats.files_unmodified.fetch_add(1, Relaxed);
                    self.shared.progress.advance(1, node.size);
                    return Ok(Some(Pending::Ready(node)));
                }
                if old.is_some() { &stats.files_changed } else { &stats.files_new }.fetch_add(1, Relaxed);
                let (reply, rx) = bounded(1);
                let path = path.to_path_buf();
                self.files.send(FileJob { path: path.clone(), node, reply }).map_err(|_| Error::Cancelled)?;
                Ok(Some(Pending::File { path, rx }))
            }
            _ => {
                stats.others.fetch_add(1, Relaxed);
                self.shared.progress.advance(1, 0);
                Ok(Some(Pending::Ready(node)))
            }
        }
    }

    fn all_indexed(&self, content: &[Extent]) -> Result<bool> {
        for e in content {
            if let Extent::Data(id) = e
                && !self.shared.index.contains(id)?
            {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn walk_dir(&self, dir: &Path, parent: Option<&Parent>, device: u64) -> Result<Receiver<Id>> {
        // Entries are kept (not just names): `DirEntry::metadata` is an `fstatat` relative to the
        // open directory, which spares the kernel resolving the full path of every entry.
        let mut names: Vec<(Vec<u8>, std::fs::DirEntry)> = match std::fs::read_dir(dir) {
            Ok(rd) => rd
                .filter_map(|e| match e {
                    Ok(e) => Some((e.file_name().as_bytes().to_vec(), e)),
                    Err(err) => {
                        self.shared.skip(dir, format!("reading directory: {err}"));
                        None
                    }
                })
                .collect(),
            Err(e) => {
                self.shared.skip(dir, format!("reading directory: {e}"));
                Vec::new()
            }
        };
        names.sort_by(|a, b| a.0.cmp(&b.0));
        let mut entries = Vec::with_capacity(names.len());
        for (name, dirent) in names {
            let path = dir.join(OsStr::from_bytes(&name));
            if self.excludes.excluded(&path, &name) {
                continue;
            }
            // Does not follow symlinks, like lstat.
            let meta = match dirent.metadata() {
                Ok(m) => m,
                Err(e) => {
                    self.shared.skip(&path, format!("vanished or unreadable: {e}"));
                    continue;
                }
            };
            if meta.is_dir() && self.excludes.dir_opted_out(&path) {
                continue;
            }
            if let Some(p) = self.entry(&path, name, &meta, parent, device)? {
                entries.push(p);
            }
        }
        self.finish_dir(entries, parent)
    }
}

/// Whether a file's metadata says its content cannot have changed since the parent snapshot.
fn unchanged(old: &Node, new: &Node) -> bool {
    old.kind == NodeKind::File
        && !old.changed_while_read
        && old.size == new.size
        && old.mtime_ns == new.mtime_ns
        && old.ctime_ns == new.ctime_ns
        && old.inode == new.inode
}

/// Reader stage: reads, chunks and hashes files; queues chunks the repository lacks.
fn read_files(shared: &Shared, jobs: Receiver<FileJob>, blobs: Sender<BlobJob>) {
    let chunker = Chunker::new(&shared.chunker);
    let mut buf = Vec::new();
    for job in jobs {
        if shared.cancelled() {
            return;
        }
        let result = match read_file(shared, &chunker, &mut buf, &job.path, job.node, &blobs) {
            Ok(node) => Ok(node),
            Err(ReadError::Skip(msg)) => Err(msg),
            Err(ReadError::Fatal(e)) => {
                shared.fail(e);
                return;
            }
        };
        // The tree saver may have stopped on a failure elsewhere; nothing more to do then.
        let _ = job.reply.send(result);
    }
}

enum ReadError {
    /// This file cannot be backed up; the backup goes on.
    Skip(String),
    /// The backup cannot go on.
    Fatal(Error),
}

impl From<std::io::Error> for ReadError {
    fn from(e: std::io::Error) -> Self {
        ReadError::Skip(format!("read: {e}"))
    }
}

fn read_file(
    shared: &Shared,
    chunker: &Chunker,
    buf: &mut Vec<u8>,
    path: &Path,
    mut node: Node,
    blobs: &Sender<BlobJob>,
) -> std::result::Result<Node, ReadError> {
    let skip = |what: &str, e: std::io::Error| ReadError::Skip(format!("{what}: {e}"));
    // O_NOFOLLOW and O_NONBLOCK: if the entry was swapped for a link or a FIFO since the walk,
    // fail or return at once instead of following it or blocking.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32 | rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path)
        .map_err(|e| skip("open", e))?;
    let before = file.metadata().map_err(|e| skip("stat", e))?;
    if !before.is_file() {
        return Err(ReadError::Skip("no longer a regular file".into()));
    }
    let sparse = fsmeta::is_sparse_candidate(&before);
    let extents = if sparse {
        fsmeta::data_extents(&file, before.size()).map_err(|e| skip("finding holes", e))?
    } else if before.size() > 0 {
        vec![(0, before.size())]
    } else {
        Vec::new()
    };
    let mut content = Vec::new();
    let mut pos = 0u64;
    let mut read_total = 0u64;
    for (start, len) in extents {
        if start > pos {
            content.push(Extent::Hole(start - pos));
        }
        // A freshly opened file is at 0 already (finding holes moves the offset).
        if sparse || start != 0 {
            (&file).seek(SeekFrom::Start(start)).map_err(|e| skip("seek", e))?;
        }
        chunker.chunk_reader((&file).take(len), buf, |data| {
            if shared.cancelled() {
                return Err(ReadError::Fatal(Error::Cancelled));
            }
            let n = data.len() as u64;
            read_total += n;
            let id = shared.keys.blob_id(data);
            content.push(Extent::Data(id));
            // Only chunks the repository lacks are copied out of the read buffer.
            if shared.is_new(&id).map_err(ReadError::Fatal)? {
                let job = BlobJob { tpe: BlobType::Data, id, data: data.to_vec() };
                blobs.send(job).map_err(|_| ReadError::Fatal(Error::Cancelled))?;
            }
            shared.stats.bytes_read.fetch_add(n, Relaxed);
            shared.progress.advance(0, n);
            Ok(())
        })?;
        pos = start + len;
    }
    if pos < before.size() {
        content.push(Extent::Hole(before.size() - pos));
    }
    let after = file.metadata().map_err(|e| skip("stat", e))?;
    // Growth past the size read, or any change of mtime/ctime, means a torn copy.
    if after.size() != before.size()
        || after.mtime_nsec() != before.mtime_nsec()
        || after.mtime() != before.mtime()
        || after.ctime() != before.ctime()
        || after.ctime_nsec() != before.ctime_nsec()
        || read_total > before.size()
    {
        node.changed_while_read = true;
    }
    node.size = before.size();
    node.content = content;
    shared.progress.advance(1, 0);
    Ok(node)
}

/// Tree saver: assembles directories (children arrive before parents) into tree blobs.
fn save_trees(shared: &Shared, dirs: Receiver<DirJob>, blobs: Sender<BlobJob>) {
    for job in dirs {
        let mut tree = Tree::default();
        for p in job.entries {
            let node = match p {
                Pending::Ready(n) => n,
                Pending::Dir { mut node, rx } => match rx.recv() {
                    Ok(id) => {
                        node.subtree = Some(id);
                        node
                    }
                    Err(_) => return,
                },
                Pending::File { path, rx } => match rx.recv() {
                    Ok(Ok(node)) => {
                        if node.changed_while_read {
                            shared.skip(&path, "changed while being read; stored as read, flagged");
                        }
                        node
                    }
                    Ok(Err(msg)) => {
                        shared.skip(&path, msg);
                        continue;
                    }
                    Err(_) => return,
                },
            };
            tree.nodes.push(node);
        }
        let id = match store_tree(shared, tree, &blobs) {
            Ok(id) => id,
            Err(Error::Cancelled) => return,
            Err(e) => {
                shared.fail(e);
                return;
            }
        };
        if job.reply.send(id).is_err() {
            return;
        }
    }
}

/// Encodes a directory's tree, names it, and queues it for sealing when the repository lacks it.
fn store_tree(shared: &Shared, mut tree: Tree, blobs: &Sender<BlobJob>) -> Result<Id> {
    tree.sort();
    store_sorted_tree(shared, tree, blobs)
}

fn store_sorted_tree(shared: &Shared, tree: Tree, blobs: &Sender<BlobJob>) -> Result<Id> {
    let data = tree.encode();
    let id = shared.keys.blob_id(&data);
    if shared.is_new(&id)? {
        blobs.send(BlobJob { tpe: BlobType::Tree, id, data }).map_err(|_| Error::Cancelled)?;
    }
    Ok(id)
}

/// Compresses `plain` at `level` when that makes it smaller, then seals it: the stored form of a
/// blob (format §7). Returns the sealed bytes and whether they hold zstd. Shared with
/// `repair snapshots`, which writes tree blobs the way a backup does.
///
/// The sealed form is opened, decompressed and hashed again before it is returned: a fault in
/// the compressor or in memory between hashing and sealing (restic #4523, #4529) must not reach
/// the repository under a valid name, where dedup would reuse it in every later snapshot.
pub(crate) fn seal_blob(keys: &Keys, level: i32, id: &Id, plain: &[u8]) -> Result<(Vec<u8>, bool)> {
    thread_local! {
        // Reused buffers: fresh megabyte buffers per blob cost page faults.
        static BUFFERS: std::cell::RefCell<[Vec<u8>; 3]> = const { std::cell::RefCell::new([Vec::new(), Vec::new(), Vec::new()]) };
    }
    BUFFERS.with(|cell| {
        let [compressed, opened, expanded] = &mut *cell.borrow_mut();
        seal_checked(keys, level, id, plain, compressed, opened, expanded)
    })
}

fn seal_checked(
    keys: &Keys,
    level: i32,
    id: &Id,
    plain: &[u8],
    compressed: &mut Vec<u8>,
    opened: &mut Vec<u8>,
    expanded: &mut Vec<u8>,
) -> Result<(Vec<u8>, bool)> {
    let is_compressed = crate::compress::compress_into(plain, level, compressed);
    let sealed = keys.seal(if is_compressed { compressed } else { plain });
    let fault = |why: String| Error::Corrupt { what: format!("blob {id} before upload"), why };
    keys.open_into(&sealed, opened).map_err(|e| fault(e.to_string()))?;
    let check = if is_compressed {
        crate::compress::decompress_into(opened, plain.len(), expanded).map_err(fault)?;
        &expanded[..]
    } else {
        &opened[..]
    };
    if keys.blob_id(check) != *id {
        return Err(fault("the sealed blob does not hash to its id (memory or compressor fault)".into()));
    }
    Ok((sealed, is_compressed))
}

/// Uploads one finished pack (create-only; "already exists" means stored) and returns its
/// index entry. Shared with `repair snapshots`.
pub(crate) async fn store_pack(backend: &dyn crate::backend::Backend, pack: FinishedPack) -> Result<IndexPack> {
    let h = Handle::new(FileType::Pack, pack.id.to_hex());
    match backend.put(&h, pack.data, crate::backend::PutMode::CreateOnly).await {
        Ok(()) | Err(crate::backend::BackendError::AlreadyExists(_)) => {}
        Err(e) => return Err(Error::from(e)),
    }
    Ok(IndexPack { id: pack.id, blobs: pack.entries })
}

/// Sealer stage: compresses (when it helps) and encrypts blobs.
fn seal_blobs(shared: &Shared, jobs: Receiver<BlobJob>, out: Sender<SealedBlob>) {
    for job in jobs {
        let raw_len = job.data.len() as u32;
        let (sealed, compressed) = match seal_blob(&shared.keys, shared.compression, &job.id, &job.data) {
            Ok(s) => s,
            Err(e) => {
                shared.fail(e);
                return;
            }
        };
        let s = &shared.stats;
        s.blobs_added.fetch_add(1, Relaxed);
        s.bytes_added.fetch_add(u64::from(raw_len), Relaxed);
        s.bytes_added_stored.fetch_add(sealed.len() as u64, Relaxed);
        let blob = SealedBlob { tpe: job.tpe, id: job.id, raw_len, compressed, sealed };
        if out.send(blob).is_err() {
            return;
        }
    }
}

/// Packer stage: appends sealed blobs to one pack per blob type and cuts full packs.
fn pack_blobs(
    shared: &Shared,
    blobs: Receiver<SealedBlob>,
    packs: tokio::sync::mpsc::Sender<FinishedPack>,
    pack_size: usize,
) {
    let mut data = PackBuilder::new(BlobType::Data, pack_size);
    let mut trees = PackBuilder::new(BlobType::Tree, 1 << 20);
    let send = |b: PackBuilder| packs.blocking_send(b.finish(&shared.keys)).is_ok();
    for blob in blobs {
        let builder = if blob.tpe == BlobType::Data { &mut data } else { &mut trees };
        builder.add(blob.id, blob.raw_len, blob.compressed, &blob.sealed);
        // The count cap keeps headers small for packs of tiny (tree) blobs.
        if builder.len() >= pack_size || builder.count() >= 100_000 {
            let full = std::mem::replace(builder, PackBuilder::new(blob.tpe, pack_size));
            if !send(full) {
                return;
            }
        }
    }
    if shared.cancelled() {
        return;
    }
    for b in [data, trees] {
        if !b.is_empty() && !send(b) {
            return;
        }
    }
}

/// Uploader: stores packs with bounded concurrency; returns the index entries of stored packs.
async fn upload_packs(
    backend: Arc<dyn crate::backend::Backend>,
    mut packs: tokio::sync::mpsc::Receiver<FinishedPack>,
    shared: Arc<Shared>,
    dry_run: bool,
) -> Result<Vec<IndexPack>> {
    let limit = Arc::new(tokio::sync::Semaphore::new(backend.connections().max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    let mut stored = Vec::new();
    let mut first_error = None;
    while let Some(pack) = packs.recv().await {
        let permit = limit.clone().acquire_owned().await.map_err(|_| Error::Cancelled)?;
        let backend = backend.clone();
        tasks.spawn(async move {
            let _permit = permit;
            if dry_run {
                return Ok(IndexPack { id: pack.id, blobs: pack.entries });
            }
            store_pack(&*backend, pack).await
        });
        while let Some(done) = tasks.try_join_next() {
            collect(done, &mut stored, &mut first_error, &shared);
        }
        if first_error.is_some() {
            break;
        }
    }
    drop(packs);
    while let Some(done) = tasks.join_next().await {
        collect(done, &mut stored, &mut first_error, &shared);
    }
    match first_error {
        Some(e) => {
            shared.fail(e);
            Err(Error::Cancelled)
        }
        None => Ok(stored),
    }
}

fn collect(
    done: std::result::Result<Result<IndexPack>, tokio::task::JoinError>,
    stored: &mut Vec<IndexPack>,
    first_error: &mut Option<Error>,
    shared: &Shared,
) {
    match done {
        Ok(Ok(p)) => {
            shared.stats.packs_written.fetch_add(1, Relaxed);
            stored.push(p);
        }
        Ok(Err(e)) => {
            first_error.get_or_insert(e);
        }
        Err(_) => {
            first_error.get_or_insert(Error::Cancelled);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_blob_checks_the_sealed_form_against_the_id() {
        let keys = crate::crypto::MasterKey::generate().keys();
        for plain in
            [vec![7u8; 100_000], (0..100_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect()]
        {
            let id = keys.blob_id(&plain);
            let (sealed, compressed) = seal_blob(&keys, 3, &id, &plain).unwrap();
            let opened = keys.open(&sealed).unwrap();
            let back = if compressed { crate::compress::decompress(&opened, plain.len()).unwrap() } else { opened };
            assert_eq!(back, plain);
            // Plaintext that no longer hashes to the id it was named by (a flipped bit after
            // hashing) is refused before it could be stored.
            let mut flipped = plain.clone();
            flipped[500] ^= 1;
            let err = seal_blob(&keys, 3, &id, &flipped).unwrap_err();
            assert!(matches!(err, Error::Corrupt { .. }), "{err}");
        }
    }
}
