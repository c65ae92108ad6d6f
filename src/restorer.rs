//! Restore: writes a snapshot's entries back to disk, never outside the target.
//!
//! Steps: plan (walk the trees, apply include/exclude and the overwrite policy), create the
//! directories, write file content pack by pack (each needed run of blobs fetched with one
//! ranged read, every blob checked against its id before a byte is written, all-zero chunks
//! left as holes), create links and special files, then apply metadata, directories last and
//! deepest first so their times stick.
//!
//! Safety against a hostile repository: entry names are validated when trees are decoded (no
//! `/`, `..`, NUL or duplicates), every path is the target joined with validated names, and
//! nothing on the way is followed if it is a symlink: an existing symlink or non-directory where
//! a directory must go is removed (or the entry skipped), and files are opened `O_NOFOLLOW`.
//! Symlinks are created last, so no entry is ever written "through" one.

use std::collections::{HashMap, HashSet};
use std::fs::OpenOptions;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use futures::{StreamExt, TryStreamExt};
use globset::{GlobSet, GlobSetBuilder};

use crate::backend::{FileType, Handle};
use crate::error::{Error, Result};
use crate::fsmeta::{self, ApplyOptions};
use crate::id::Id;
use crate::pack::BlobEntry;
use crate::progress::Progress;
use crate::repo::Repository;
use crate::snapshot::Snapshot;
use crate::tree::{Extent, Node, NodeKind};

/// What to do with a file that already exists at the target.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Overwrite {
    /// Always replace it.
    Always,
    /// Replace it unless size and mtime already match (cheap resume of an interrupted restore).
    #[default]
    IfChanged,
    /// Keep it.
    Never,
}

/// Where and what to restore.
#[derive(Clone, Debug, Default)]
pub struct RestoreOptions {
    /// The folder to restore into (created if missing).
    pub target: PathBuf,
    /// Only paths matching one of these globs (relative to the snapshot root, e.g. `reports/**`).
    pub includes: Vec<String>,
    /// Leave out paths matching these globs.
    pub excludes: Vec<String>,
    /// Only these exact paths (relative to the snapshot root, with everything below them), on top
    /// of `includes`; for picking entries by name whatever bytes it holds (`verify
    /// --restore-test`'s sample).
    pub paths: Option<Arc<HashSet<PathBuf>>>,
    /// Policy for existing files.
    pub overwrite: Overwrite,
    /// Restore ownership (uid/gid); only works as root.
    pub owner: bool,
}

/// What a restore did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct RestoreSummary {
    /// Files written.
    pub files_restored: u64,
    /// Files left as they were (overwrite policy).
    pub files_skipped: u64,
    /// Directories created or updated.
    pub dirs: u64,
    /// Other entries (links, devices, FIFOs, sockets).
    pub others: u64,
    /// Content bytes written.
    pub bytes_written: u64,
    /// Problems that did not stop the restore (metadata that could not be applied, ...).
    pub warnings: Vec<String>,
}

/// Restores `snapshot` under `opts.target` (the repository's index must be loaded).
pub async fn restore(
    repo: &Repository,
    snapshot: &Snapshot,
    opts: &RestoreOptions,
    progress: Arc<dyn Progress>,
) -> Result<RestoreSummary> {
    let filter = PathFilter::new(&opts.includes, &opts.excludes, opts.paths.clone())?;
    let mut plan = Plan::default();
    collect(repo, &snapshot.tree, Vec::new(), &filter, &mut plan).await?;
    std::fs::create_dir_all(&opts.target).map_err(|e| Error::io(&opts.target, e))?;
    let target = opts.target.canonicalize().map_err(|e| Error::io(&opts.target, e))?;
    let mut summary = RestoreSummary::default();

    for (rel, _) in &plan.dirs {
        make_dir(&target.join(rel), opts.overwrite)?;
        summary.dirs += 1;
    }

    // Decide per file, then map every data extent to (pack, blob, file, offset).
    let mut files: Vec<(PathBuf, &Node)> = Vec::new();
    let mut links: Vec<(PathBuf, PathBuf)> = Vec::new();
    let mut first_of_inode: HashMap<(u64, u64), PathBuf> = HashMap::new();
    for (rel, node) in &plan.files {
        let path = target.join(rel);
        if node.links > 1 {
            if let Some(first) = first_of_inode.get(&(node.device, node.inode)) {
                links.push((first.clone(), path));
                continue;
            }
            first_of_inode.insert((node.device, node.inode), path.clone());
        }
        if keep_existing(&path, node, opts.overwrite)? {
            summary.files_skipped += 1;
            continue;
        }
        progress.add_total(1, node.size);
        files.push((path, node));
    }
    let mut by_pack: HashMap<Id, Vec<(BlobEntry, usize, u64)>> = HashMap::new();
    for (i, (path, node)) in files.iter().enumerate() {
        create_file(path, node.size)?;
        let mut offset = 0u64;
        for e in &node.content {
            match e {
                Extent::Hole(n) => offset += n,
                Extent::Data(id) => {
                    let loc = repo.locate(id)?;
                    by_pack.entry(loc.pack).or_default().push((loc.entry, i, offset));
                    offset += u64::from(loc.entry.raw_len);
                }
            }
        }
        if offset != node.size {
            summary.warnings.push(format!(
                "{}: content length {offset} differs from recorded size {}",
                path.display(),
                node.size
            ));
        }
    }

    let written = AtomicU64::new(0);
    let mut pending: HashMap<usize, OpenFile> = HashMap::new();
    for (_, i, _) in by_pack.values().flatten() {
        pending.entry(*i).or_insert((None, 0)).1 += 1;
    }
    let open = OpenFiles { paths: files.iter().map(|(p, _)| p.clone()).collect(), open: Mutex::new(pending) };
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let in_flight_mib = IN_FLIGHT_MIB_PER_CORE.saturating_mul(u32::try_from(cores).unwrap_or(u32::MAX));
    let ctx = WriteCtx {
        repo,
        files: Arc::new(open),
        budget: Arc::new(tokio::sync::Semaphore::new(in_flight_mib as usize)),
        in_flight_mib,
        writers: Arc::new(tokio::sync::Semaphore::new(cores)),
        buffers: Arc::default(),
        written: &written,
        progress: &*progress,
    };
    futures::stream::iter(by_pack)
        .map(|(pack, blobs)| ctx.restore_pack(pack, blobs))
        .buffer_unordered(repo.backend().connections().max(1))
        .try_collect::<()>()
        .await?;
    drop(ctx);
    summary.bytes_written = written.load(Relaxed);
    summary.files_restored = files.len() as u64;

    for (first, path) in &links {
        let same = |p: &Path| p.symlink_metadata().map(|m| (m.dev(), m.ino())).ok();
        if same(path).is_some() && same(path) == same(first) {
            summary.files_skipped += 1;
            continue;
        }
        replace_with(path, opts.overwrite, |p| std::fs::hard_link(first, p))?;
        summary.files_restored += 1;
    }
    for (rel, node) in &plan.others {
        let path = target.join(rel);
        let made = match node.kind {
            NodeKind::Symlink => {
                let t = std::ffi::OsStr::from_bytes(node.link_target.as_deref().unwrap_or_default()).to_owned();
                replace_with(&path, opts.overwrite, |p| std::os::unix::fs::symlink(&t, p))
            }
            _ => replace_with(&path, opts.overwrite, |p| fsmeta::create_special(p, node)),
        };
        match made {
            Ok(()) => summary.others += 1,
            Err(e) => summary.warnings.push(e.to_string()),
        }
    }

    let apply = ApplyOptions { owner: opts.owner, xattrs: true };
    for (path, node) in &files {
        summary.warnings.extend(fsmeta::apply_metadata(path, node, &apply));
    }
    for (rel, node) in &plan.others {
        summary.warnings.extend(fsmeta::apply_metadata(&target.join(rel), node, &apply));
    }
    for (rel, node) in plan.dirs.iter().rev() {
        summary.warnings.extend(fsmeta::apply_metadata(&target.join(rel), node, &apply));
    }
    Ok(summary)
}

/// Include/exclude globs over paths relative to the snapshot root.
struct PathFilter {
    includes: Option<GlobSet>,
    excludes: GlobSet,
    paths: Option<Arc<HashSet<PathBuf>>>,
}

impl PathFilter {
    fn new(includes: &[String], excludes: &[String], paths: Option<Arc<HashSet<PathBuf>>>) -> Result<Self> {
        let build = |pats: &[String]| -> Result<GlobSet> {
            let mut b = GlobSetBuilder::new();
            for p in pats {
                let p = p.trim_start_matches('/');
                b.add(
                    globset::GlobBuilder::new(p)
                        .literal_separator(true)
                        .build()
                        .map_err(|e| Error::Invalid(format!("pattern {p:?}: {e}")))?,
                );
            }
            b.build().map_err(|e| Error::Invalid(e.to_string()))
        };
        Ok(Self {
            includes: (!includes.is_empty()).then(|| build(includes)).transpose()?,
            excludes: build(excludes)?,
            paths,
        })
    }

    /// Whether `path` or one of its ancestors matches `set`.
    fn matches_or_below(set: &GlobSet, path: &Path) -> bool {
        path.ancestors().any(|a| !a.as_os_str().is_empty() && set.is_match(a))
    }

    fn excluded(&self, path: &Path) -> bool {
        Self::matches_or_below(&self.excludes, path)
    }

    fn included(&self, path: &Path) -> bool {
        self.includes.as_ref().is_none_or(|s| Self::matches_or_below(s, path))
            && self.paths.as_ref().is_none_or(|set| path.ancestors().any(|a| set.contains(a)))
    }
}

/// Entries to restore, by kind, paths relative to the target; directories parents first.
#[derive(Default)]
struct Plan {
    dirs: Vec<(PathBuf, Node)>,
    files: Vec<(PathBuf, Node)>,
    others: Vec<(PathBuf, Node)>,
}

/// Walks tree `id` (at `rel`), adding what the filter lets through. Returns whether anything was added.
async fn collect(repo: &Repository, id: &Id, rel: Vec<u8>, filter: &PathFilter, plan: &mut Plan) -> Result<bool> {
    let tree = repo.load_tree(id).await?;
    let mut any = false;
    for node in tree.nodes {
        let mut child = rel.clone();
        if !child.is_empty() {
            child.push(b'/');
        }
        child.extend_from_slice(&node.name);
        let path = PathBuf::from(std::ffi::OsStr::from_bytes(&child));
        if filter.excluded(&path) {
            continue;
        }
        match node.kind {
            NodeKind::Dir => {
                let sub = node.subtree.ok_or_else(|| Error::corrupt("tree", "directory without subtree"))?;
                let at = plan.dirs.len();
                plan.dirs.push((path.clone(), node.clone()));
                let below = Box::pin(collect(repo, &sub, child, filter, plan)).await?;
                if below || filter.included(&path) {
                    any = true;
                } else {
                    plan.dirs.remove(at);
                }
            }
            _ if !filter.included(&path) => {}
            NodeKind::File => {
                plan.files.push((path, node));
                any = true;
            }
            _ => {
                plan.others.push((path, node));
                any = true;
            }
        }
    }
    Ok(any)
}

/// Makes sure `path` is a real directory (not a symlink to one).
fn make_dir(path: &Path, overwrite: Overwrite) -> Result<()> {
    match path.symlink_metadata() {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) if overwrite == Overwrite::Never => Err(Error::Invalid(format!(
            "{} exists and is not a directory; remove it or use --overwrite always",
            path.display()
        ))),
        Ok(_) => {
            std::fs::remove_file(path).map_err(|e| Error::io(path, e))?;
            std::fs::create_dir(path).map_err(|e| Error::io(path, e))
        }
        Err(_) => std::fs::create_dir(path).map_err(|e| Error::io(path, e)),
    }
}

/// Whether an existing file at `path` stays as it is under `policy`.
fn keep_existing(path: &Path, node: &Node, policy: Overwrite) -> Result<bool> {
    let Ok(m) = path.symlink_metadata() else { return Ok(false) };
    Ok(match policy {
        Overwrite::Never => true,
        Overwrite::Always => false,
        Overwrite::IfChanged => {
            m.is_file()
                && m.size() == node.size
                && i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()) == i128::from(node.mtime_ns)
        }
    })
}

/// Creates (or truncates) a regular file of `size` bytes, all holes, without following links.
fn create_file(path: &Path, size: u64) -> Result<()> {
    if let Ok(m) = path.symlink_metadata()
        && !m.is_file()
    {
        remove_any(path)?;
    }
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    fsmeta::punch_hole_or_extend(&f, size).map_err(|e| Error::io(path, e))
}

fn remove_any(path: &Path) -> Result<()> {
    let m = path.symlink_metadata().map_err(|e| Error::io(path, e))?;
    if m.is_dir() { std::fs::remove_dir_all(path) } else { std::fs::remove_file(path) }.map_err(|e| Error::io(path, e))
}

/// Creates an entry with `make`, first removing what is there when the policy allows.
fn replace_with(path: &Path, policy: Overwrite, make: impl FnOnce(&Path) -> std::io::Result<()>) -> Result<()> {
    if path.symlink_metadata().is_ok() {
        if policy == Overwrite::Never {
            return Ok(());
        }
        remove_any(path)?;
    }
    make(path).map_err(|e| Error::io(path, e))
}

/// An open restored file (once first written) and how many of its blobs are still to come.
type OpenFile = (Option<Arc<std::fs::File>>, usize);

/// The restored files' handles: a file is opened when its first blob is written and closed right
/// after its last, so open descriptors stay few however many small files a pack holds.
struct OpenFiles {
    paths: Vec<PathBuf>,
    open: Mutex<HashMap<usize, OpenFile>>,
}

impl OpenFiles {
    /// The handle of file `i`, opened on first use.
    fn file(&self, i: usize) -> Result<Arc<std::fs::File>> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let slot = open.entry(i).or_insert((None, 0));
        if let Some(f) = &slot.0 {
            return Ok(f.clone());
        }
        let f = OpenOptions::new()
            .write(true)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&self.paths[i])
            .map_err(|e| Error::io(&self.paths[i], e))?;
        let f = Arc::new(f);
        slot.0 = Some(f.clone());
        Ok(f)
    }

    /// Notes that one more blob of file `i` is written; closes the file after its last.
    fn blob_written(&self, i: usize) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = open.get_mut(&i) {
            slot.1 = slot.1.saturating_sub(1);
            if slot.1 == 0 {
                open.remove(&i);
            }
        }
    }

    /// Writes one blob's plaintext at `offset` of file `i`.
    fn write(&self, i: usize, plain: &[u8], offset: u64) -> Result<()> {
        // All-zero chunks stay holes: the file was created sparse at full length.
        if plain.iter().any(|&b| b != 0) {
            self.file(i)?.write_all_at(plain, offset).map_err(|e| Error::io(&self.paths[i], e))?;
        }
        self.blob_written(i);
        Ok(())
    }
}

/// Shared state of the content-writing phase.
struct WriteCtx<'a> {
    repo: &'a Repository,
    files: Arc<OpenFiles>,
    /// MiB of pack data in flight (fetched, not yet written): bounds memory whatever the
    /// connection count.
    budget: Arc<tokio::sync::Semaphore>,
    /// The budget's size: a run larger than it waits for all of it.
    in_flight_mib: u32,
    /// Runs being decoded and written at once: one per core. Downloads overlap up to the
    /// connection count, but more writers than cores only interleave writes to more files
    /// and add threads (and their allocator arenas).
    writers: Arc<tokio::sync::Semaphore>,
    /// Decode buffers of idle writers: a run reuses one instead of allocating per blob, so
    /// decoding holds one blob (opened and decompressed) per writer.
    buffers: Arc<Mutex<Vec<crate::repo::DecodeBuffers>>>,
    written: &'a AtomicU64,
    progress: &'a dyn Progress,
}

/// Blobs closer than this in a pack are fetched in one read (skipping the gap costs less than a request).
const MAX_GAP: u64 = 1 << 20;

/// MiB of fetched pack data a restore holds at once, per core: fetched data waits for a
/// decoding writer (one per core), so more in flight only adds memory, not speed.
const IN_FLIGHT_MIB_PER_CORE: u32 = 32;

impl WriteCtx<'_> {
    async fn restore_pack(&self, pack: Id, mut blobs: Vec<(BlobEntry, usize, u64)>) -> Result<()> {
        blobs.sort_by_key(|(e, _, off)| (e.offset, *off));
        let h = Handle::new(FileType::Pack, pack.to_hex());
        let mut i = 0;
        while i < blobs.len() {
            // Extend the run while the next blob starts close to the end of this one.
            let start = u64::from(blobs[i].0.offset);
            let mut end = blobs[i].0.range().end;
            let mut j = i + 1;
            while j < blobs.len() && u64::from(blobs[j].0.offset) <= end + MAX_GAP {
                end = end.max(blobs[j].0.range().end);
                j += 1;
            }
            let mib = u32::try_from((end - start).div_ceil(1 << 20)).unwrap_or(u32::MAX).clamp(1, self.in_flight_mib);
            let permit = self.budget.clone().acquire_many_owned(mib).await.map_err(|_| Error::Cancelled)?;
            let data = self.repo.backend().get(&h, Some(start..end)).await?;
            let writer = self.writers.clone().acquire_owned().await.map_err(|_| Error::Cancelled)?;
            let run: Vec<_> = blobs[i..j].to_vec();
            let keys = self.repo.keys().clone();
            let (files, spare) = (self.files.clone(), self.buffers.clone());
            let n = tokio::task::spawn_blocking(move || -> Result<u64> {
                let mut bufs = spare.lock().unwrap_or_else(|p| p.into_inner()).pop().unwrap_or_default();
                let mut n = 0u64;
                let mut k = 0;
                while k < run.len() {
                    let entry = &run[k].0;
                    let r = entry.range();
                    let sealed = &data[(r.start - start) as usize..(r.end - start) as usize];
                    let plain = crate::repo::decode_blob_into(&keys, entry, sealed, &mut bufs)?;
                    // A blob several files share (or one file holds twice) is decoded once.
                    while k < run.len() && run[k].0.id == entry.id {
                        let (file, offset) = (run[k].1, run[k].2);
                        files.write(file, plain, offset)?;
                        n += plain.len() as u64;
                        k += 1;
                    }
                }
                spare.lock().unwrap_or_else(|p| p.into_inner()).push(bufs);
                drop((permit, writer)); // held until the fetched data is written
                Ok(n)
            })
            .await
            .map_err(|_| Error::Cancelled)??;
            self.written.fetch_add(n, Relaxed);
            self.progress.advance(0, n);
            i = j;
        }
        Ok(())
    }
}
