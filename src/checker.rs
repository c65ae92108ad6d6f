//! `verify`: checks that a repository holds everything its snapshots need, and, on request, that
//! the stored bytes are intact.
//!
//! The structure check reads every index file straight from the backend (the local cache is
//! never trusted here), lists the packs (sizes from the LIST, nothing downloaded), loads every
//! snapshot, walks every tree reachable from a snapshot root once, and checks that every data
//! blob a file uses is indexed. The data check (`ReadData::All` or a `Subset`) downloads packs
//! and checks each one end to end: its hash against its name, its header against the index, and
//! every blob in it (MAC, decompression, keyed id). Damage is collected as [`Problem`]s; only a
//! failure to run at all (a LIST that fails) is an error.
//!
//! Index files that another listed index file supersedes (format §11.1: prune's compaction)
//! are ignored, as every reader ignores them; packs a deletion plan condemns are reported apart
//! from other unindexed packs (`condemned_packs`), as neither is a problem.
//!
//! Listing order matters with concurrent backups (format §11): snapshots are listed before index
//! files, and index files before packs, so every snapshot seen has its index files seen, and
//! every indexed pack is in the pack listing. A backup finishing mid-run cannot cause a false
//! "missing" report; its packs may show up as unindexed, which is not a problem.
//!
//! Memory is bounded by id sets, not by the repository's bytes: about 40–75 bytes per indexed
//! data blob (a 32-byte id in a hash set, load factor 7/8 to 7/16), about 120–240 per indexed
//! tree blob (id and location, plus the visited set), about 150 per pack, plus one pack per
//! connection while reading data. A repository of 10 million blobs needs well under 1 GiB.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use serde::{Serialize, Serializer};

use crate::backend::{Backend, FileType, Handle};
use crate::cache::Location;
use crate::crypto::{Keys, SEAL_OVERHEAD};
use crate::error::{Error, Result};
use crate::id::Id;
use crate::index::IndexFile;
use crate::pack::{BlobEntry, BlobType, HEADER_ENTRY_LEN};
use crate::progress::Progress;
use crate::repo::{DecodeBuffers, Repository, decode_blob_into, decode_blob_with};
use crate::tree::{Extent, NodeKind, Tree};

/// Largest pack downloaded: 4 GiB of blobs (u32 offsets) and a header of up to 100k entries.
const MAX_PACK: u64 = (1 << 32) + (8 << 20);
/// Plaintext header bytes before the entries: magic (8), version (1), count (4).
const HEADER_FIXED: u64 = 8 + 1 + 4;

/// Which packs to download and check.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum ReadData {
    /// None: the structure check only.
    #[default]
    None,
    /// Every indexed pack.
    All,
    /// Part of the packs.
    Subset(Subset),
}

/// A part of the packs, chosen by the first 8 bytes of their ids read as a big-endian `u64`
/// (so id order is hex order).
#[derive(Clone, Debug, PartialEq)]
pub enum Subset {
    /// A random contiguous id range covering this percentage of the id space (0 < p ≤ 100);
    /// each run picks another range, so repeated runs cover different parts.
    Percent(f64),
    /// Slice `n` of `t` (1 ≤ n ≤ t): packs whose prefix mod `t` is `n - 1`. Running slices
    /// 1..=t (one a day, say) reads every pack exactly once.
    Slice {
        /// Which slice, from 1.
        n: u64,
        /// How many slices.
        t: u64,
    },
}

impl FromStr for Subset {
    type Err = Error;

    /// `10%`, `2.5%` or `n/t`.
    fn from_str(s: &str) -> Result<Self> {
        let bad = |why: &str| Error::Invalid(format!("read-data subset {s:?}: {why}"));
        if let Some(p) = s.strip_suffix('%') {
            let p: f64 = p.trim().parse().map_err(|_| bad("expected a percentage such as 10%"))?;
            if !(p > 0.0 && p <= 100.0) {
                return Err(bad("the percentage must be above 0 and at most 100"));
            }
            return Ok(Self::Percent(p));
        }
        let (n, t) = s.split_once('/').ok_or_else(|| bad("expected a percentage (10%) or a slice (n/t)"))?;
        let (n, t): (u64, u64) = match (n.trim().parse(), t.trim().parse()) {
            (Ok(n), Ok(t)) => (n, t),
            _ => return Err(bad("expected two whole numbers, n/t")),
        };
        if t == 0 || n == 0 || n > t {
            return Err(bad("a slice n/t needs 1 ≤ n ≤ t"));
        }
        Ok(Self::Slice { n, t })
    }
}

impl Subset {
    /// The packs this subset picks for one run (a `Percent` draws its random range here).
    pub fn selection(&self) -> Selection {
        let mut start = [0u8; 8];
        rand::fill(&mut start);
        self.selection_from(u64::from_le_bytes(start))
    }

    /// Like [`Self::selection`] with a chosen start for `Percent` (tests).
    pub fn selection_from(&self, start: u64) -> Selection {
        match *self {
            Self::Percent(p) => {
                // Width in u128 so 100% (2^64 ids) is representable.
                let width = ((p.clamp(0.0, 100.0) / 100.0) * 18_446_744_073_709_551_616.0) as u128;
                Selection::Range { start, width: width.min(1 << 64) }
            }
            Self::Slice { n, t } => Selection::Slice { n, t },
        }
    }
}

/// The packs one run reads: see [`Subset`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Selection {
    /// Prefixes in `start..start + width`, wrapping around.
    Range {
        /// First prefix.
        start: u64,
        /// Number of prefixes.
        width: u128,
    },
    /// Prefixes `p` with `p % t == n - 1`.
    Slice {
        /// Which slice, from 1.
        n: u64,
        /// How many slices.
        t: u64,
    },
}

impl Selection {
    /// Whether pack `id` is read.
    pub fn contains(&self, id: &Id) -> bool {
        let prefix = u64::from_be_bytes(id.0[..8].try_into().expect("8 bytes"));
        match *self {
            Self::Range { start, width } => u128::from(prefix.wrapping_sub(start)) < width,
            Self::Slice { n, t } => t > 0 && prefix % t == n.wrapping_sub(1),
        }
    }
}

/// What to check beyond the structure.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct VerifyOptions {
    /// Which packs to download and check.
    pub read_data: ReadData,
    /// Walk only these snapshots' trees (every snapshot when empty). Index files and packs are
    /// checked all the same.
    pub snapshots: Vec<Id>,
}

fn hex<S: Serializer>(id: &Id, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&id.to_hex())
}

fn hex_list<S: Serializer>(ids: &[Id], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(ids.iter().map(Id::to_hex))
}

fn secs<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// One thing wrong with the repository. Ids are full (64 hex digits) so a repair can name them.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Problem {
    /// An index file does not load: gone since it was listed, content not matching its name,
    /// failed MAC, bad framing or encoding.
    IndexUnreadable {
        /// The index file.
        #[serde(serialize_with = "hex")]
        index: Id,
        /// Why.
        error: String,
    },
    /// Two index files (or one, twice) list the same pack with different blobs.
    IndexConflict {
        /// The pack.
        #[serde(serialize_with = "hex")]
        pack: Id,
        /// The index file seen first.
        #[serde(serialize_with = "hex")]
        first: Id,
        /// The index file that disagrees with it.
        #[serde(serialize_with = "hex")]
        second: Id,
    },
    /// An indexed pack is not in the repository.
    PackMissing {
        /// The pack.
        #[serde(serialize_with = "hex")]
        pack: Id,
        /// How many blobs the index says it holds.
        blobs: u64,
    },
    /// A pack is smaller than its indexed blobs and its header need (truncated).
    PackTooSmall {
        /// The pack.
        #[serde(serialize_with = "hex")]
        pack: Id,
        /// Its size in the listing.
        size: u64,
        /// The least size the index implies.
        expected: u64,
    },
    /// A pack could not be downloaded.
    PackUnreadable {
        /// The pack.
        #[serde(serialize_with = "hex")]
        pack: Id,
        /// Why.
        error: String,
    },
    /// A pack's bytes do not hash to its name.
    PackHashMismatch {
        /// The pack.
        #[serde(serialize_with = "hex")]
        pack: Id,
        /// The hash of its bytes.
        #[serde(serialize_with = "hex")]
        actual: Id,
    },
    /// A pack's header does not open or decode.
    PackHeaderUnreadable {
        /// The pack.
        #[serde(serialize_with = "hex")]
        pack: Id,
        /// Why.
        error: String,
    },
    /// A pack's header lists other blobs than the index says.
    PackHeaderMismatch {
        /// The pack.
        #[serde(serialize_with = "hex")]
        pack: Id,
        /// How they differ.
        detail: String,
    },
    /// A blob in a pack fails its MAC, decompression or id check.
    BlobCorrupt {
        /// The pack.
        #[serde(serialize_with = "hex")]
        pack: Id,
        /// The blob.
        #[serde(serialize_with = "hex")]
        blob: Id,
        /// Why.
        error: String,
    },
    /// A deletion plan does not load or decode.
    PlanUnreadable {
        /// The plan.
        #[serde(serialize_with = "hex")]
        plan: Id,
        /// Why.
        error: String,
    },
    /// A snapshot file does not load or decode.
    SnapshotUnreadable {
        /// The snapshot.
        #[serde(serialize_with = "hex")]
        snapshot: Id,
        /// Why.
        error: String,
    },
    /// A tree a snapshot needs is not indexed (as a tree blob).
    TreeMissing {
        /// The tree.
        #[serde(serialize_with = "hex")]
        tree: Id,
        /// Where it is needed: snapshot and path.
        at: String,
    },
    /// A tree is indexed but does not load or decode.
    TreeUnreadable {
        /// The tree.
        #[serde(serialize_with = "hex")]
        tree: Id,
        /// The pack the index puts it in.
        #[serde(serialize_with = "hex")]
        pack: Id,
        /// Where it is needed: snapshot and path.
        at: String,
        /// Why.
        error: String,
    },
    /// A data blob a file uses is not indexed (reported once per blob).
    BlobMissing {
        /// The blob.
        #[serde(serialize_with = "hex")]
        blob: Id,
        /// The first file found using it: snapshot and path.
        at: String,
    },
    /// The restore test (`verify --restore-test`) could not restore its sample.
    RestoreFailed {
        /// The snapshot.
        #[serde(serialize_with = "hex")]
        snapshot: Id,
        /// Why.
        error: String,
    },
    /// A file the restore test restored differs from the snapshot.
    RestoredFileMismatch {
        /// The snapshot.
        #[serde(serialize_with = "hex")]
        snapshot: Id,
        /// The file, from the snapshot root.
        path: String,
        /// How it differs.
        detail: String,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::IndexUnreadable { index, error } => write!(f, "index file {index} is unreadable: {error}"),
            Self::IndexConflict { pack, first, second } => {
                write!(f, "pack {pack} is listed with different blobs by index files {first} and {second}")
            }
            Self::PackMissing { pack, blobs } => write!(f, "pack {pack} is missing ({blobs} indexed blobs)"),
            Self::PackTooSmall { pack, size, expected } => {
                write!(
                    f,
                    "pack {pack} is truncated: {size} bytes, its indexed blobs and header need at least {expected}"
                )
            }
            Self::PackUnreadable { pack, error } => write!(f, "pack {pack} could not be read: {error}"),
            Self::PackHashMismatch { pack, actual } => {
                write!(f, "pack {pack} is corrupt: its content hashes to {actual}")
            }
            Self::PackHeaderUnreadable { pack, error } => write!(f, "pack {pack} has an unreadable header: {error}"),
            Self::PackHeaderMismatch { pack, detail } => {
                write!(f, "pack {pack}: its header disagrees with the index: {detail}")
            }
            Self::BlobCorrupt { pack, blob, error } => write!(f, "blob {blob} in pack {pack} is corrupt: {error}"),
            Self::PlanUnreadable { plan, error } => write!(f, "deletion plan {plan} is unreadable: {error}"),
            Self::SnapshotUnreadable { snapshot, error } => write!(f, "snapshot {snapshot} is unreadable: {error}"),
            Self::TreeMissing { tree, at } => write!(f, "tree {tree} ({at}) is not in the index"),
            Self::TreeUnreadable { tree, pack, at, error } => {
                write!(f, "tree {tree} ({at}) in pack {pack} is unreadable: {error}")
            }
            Self::BlobMissing { blob, at } => write!(f, "blob {blob} (used by {at}) is not in the index"),
            Self::RestoreFailed { snapshot, error } => {
                write!(f, "restore test of snapshot {snapshot} failed: {error}")
            }
            Self::RestoredFileMismatch { snapshot, path, detail } => {
                write!(f, "restore test of snapshot {snapshot}: {path} differs from the snapshot: {detail}")
            }
        }
    }
}

/// What `verify` checked and found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    /// Everything wrong, in the order found.
    pub problems: Vec<Problem>,
    /// Packs no index file lists: left by an interrupted backup or one still running. Not a
    /// problem by itself (prune removes them); if blobs are missing, they may be in these.
    #[serde(serialize_with = "hex_list")]
    pub unindexed_packs: Vec<Id>,
    /// Packs no index file lists that a deletion plan condemns (prune deletes them when the plan
    /// is due). Not a problem.
    #[serde(serialize_with = "hex_list")]
    pub condemned_packs: Vec<Id>,
    /// Live index files read.
    pub index_files: u64,
    /// Index files ignored because a listed file supersedes them (format §11.1).
    pub superseded_index_files: u64,
    /// Snapshots read.
    pub snapshots: u64,
    /// Distinct trees walked.
    pub trees: u64,
    /// Distinct indexed blobs.
    pub blobs: u64,
    /// Indexed packs.
    pub packs: u64,
    /// Packs downloaded and checked.
    pub packs_read: u64,
    /// Blobs decoded while checking packs.
    pub blobs_read: u64,
    /// Bytes of packs downloaded.
    pub bytes_read: u64,
    /// Wall time.
    #[serde(serialize_with = "secs", rename = "duration_secs")]
    pub duration: Duration,
}

impl Report {
    /// Whether nothing is wrong.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

/// What the index files say about one pack.
#[derive(Clone, Copy)]
struct PackInfo {
    /// The index file that listed it first.
    index: Id,
    /// How many blobs.
    blobs: u32,
    /// End of its last blob.
    end: u64,
    /// Hash of its entries in offset order: two listings or a header agree iff these do.
    fingerprint: Id,
}

impl PackInfo {
    fn new(index: Id, blobs: &[BlobEntry]) -> Self {
        let end = blobs.iter().map(|b| b.range().end).max().unwrap_or(0);
        Self { index, blobs: blobs.len() as u32, end, fingerprint: fingerprint(blobs) }
    }

    /// The least pack size these blobs and their header need.
    fn min_size(&self) -> u64 {
        self.end + SEAL_OVERHEAD as u64 + HEADER_FIXED + u64::from(self.blobs) * HEADER_ENTRY_LEN as u64 + 4
    }
}

/// A canonical hash of a blob list (sorted by offset, then id; every field included).
fn fingerprint(blobs: &[BlobEntry]) -> Id {
    let mut sorted: Vec<&BlobEntry> = blobs.iter().collect();
    sorted.sort_by_key(|b| (b.offset, b.id));
    let mut h = blake3::Hasher::new();
    for b in sorted {
        h.update(&[b.flags()]);
        h.update(&b.offset.to_le_bytes());
        h.update(&b.length.to_le_bytes());
        h.update(&b.raw_len.to_le_bytes());
        h.update(&b.id.0);
    }
    Id(*h.finalize().as_bytes())
}

/// The ids of every object of `tpe` with its listed size.
async fn list_ids(backend: &dyn Backend, tpe: FileType) -> Result<Vec<(Id, u64)>> {
    Ok(backend.list(tpe).await?.into_iter().filter_map(|f| Some((f.handle.name.parse().ok()?, f.size))).collect())
}

/// Checks the repository (see the module comment). Returns an error only when the check cannot
/// run (a listing fails); damage is reported in [`Report::problems`].
pub async fn verify(repo: &Repository, opts: &VerifyOptions, progress: Arc<dyn Progress>) -> Result<Report> {
    let started = Instant::now();
    let backend = repo.backend().clone();
    let conns = backend.connections().max(1);
    let mut report = Report::default();

    // Snapshots, then index files, then packs: see the module comment.
    let mut snapshot_ids = list_ids(&*backend, FileType::Snapshot).await?;
    if !opts.snapshots.is_empty() {
        snapshot_ids.retain(|(id, _)| opts.snapshots.contains(id));
    }
    let index_ids = list_ids(&*backend, FileType::Index).await?;
    let pack_sizes: HashMap<Id, u64> = list_ids(&*backend, FileType::Pack).await?.into_iter().collect();

    // Index files, loaded straight from the backend. Files that another listed file supersedes
    // (format §11.1) are ignored; they are known only once all are read, so when there are any
    // (between a prune's marking and its execution) the live files are read again.
    progress.current("index files");
    let listed: HashSet<Id> = index_ids.iter().map(|(id, _)| *id).collect();
    let mut read = read_index(repo, &index_ids, &HashSet::new(), &*progress, conns).await;
    let superseded: HashSet<Id> = read.supersedes.intersection(&listed).copied().collect();
    if !superseded.is_empty() {
        tracing::info!("{} index files are superseded; reading the live ones again", superseded.len());
        read = read_index(repo, &index_ids, &superseded, &*progress, conns).await;
    }
    let IndexRead { packs, data_blobs, tree_blobs, problems, files, .. } = read;
    report.problems.extend(problems);
    report.index_files = files;
    report.superseded_index_files = superseded.len() as u64;
    report.packs = packs.len() as u64;
    report.blobs = (data_blobs.len() + tree_blobs.len()) as u64;

    // Packs against the listing: presence and size, nothing downloaded.
    let mut sorted_packs: Vec<(&Id, &PackInfo)> = packs.iter().collect();
    sorted_packs.sort_by_key(|(id, _)| **id);
    for (id, info) in &sorted_packs {
        match pack_sizes.get(id) {
            None => report.problems.push(Problem::PackMissing { pack: **id, blobs: u64::from(info.blobs) }),
            Some(&size) if size < info.min_size() => {
                report.problems.push(Problem::PackTooSmall { pack: **id, size, expected: info.min_size() })
            }
            Some(_) => {}
        }
    }
    // Packs a deletion plan lists are expected to be unindexed (prune condemned them).
    let mut condemned: HashSet<Id> = HashSet::new();
    for (id, _) in list_ids(&*backend, FileType::Deletion).await? {
        match crate::prune::load_plan(repo, &id).await {
            Ok(plan) => condemned.extend(plan.packs.iter().map(|p| p.id)),
            // Deleted since the listing (a prune ended it): not damage.
            Err(Error::Backend(e)) if e.is_not_found() => {}
            Err(e) => report.problems.push(Problem::PlanUnreadable { plan: id, error: e.to_string() }),
        }
    }
    for id in pack_sizes.keys().filter(|id| !packs.contains_key(id)) {
        if condemned.contains(id) {
            report.condemned_packs.push(*id);
        } else {
            report.unindexed_packs.push(*id);
        }
    }
    report.unindexed_packs.sort();
    report.condemned_packs.sort();

    // Snapshots, each loaded and checked on its own so one bad file does not hide the others.
    progress.current("snapshots");
    progress.add_total(snapshot_ids.len() as u64, snapshot_ids.iter().map(|(_, s)| s).sum());
    let mut roots = Vec::new();
    let mut snaps = futures::stream::iter(snapshot_ids)
        .map(|(id, size)| async move { (id, size, repo.load_snapshot(&id).await) })
        .buffer_unordered(conns);
    while let Some((id, size, loaded)) = snaps.next().await {
        progress.advance(1, size);
        match loaded {
            Ok(s) => {
                report.snapshots += 1;
                roots.push((s.tree, format!("snapshot {}:/", id.short())));
            }
            // Removed since the listing (a concurrent `forget`): not damage.
            Err(Error::Backend(e)) if e.is_not_found() => tracing::info!("snapshot {id} was removed while verifying"),
            Err(e) => report.problems.push(Problem::SnapshotUnreadable { snapshot: id, error: e.to_string() }),
        }
    }
    drop(snaps);
    roots.sort();

    // Trees, each once, from every root.
    progress.current("trees");
    let walk = Walk { backend: &*backend, keys: repo.keys(), pack_sizes: &pack_sizes, tree_blobs: &tree_blobs };
    walk.run(roots, &data_blobs, &mut report, &*progress, conns).await;
    drop(data_blobs);
    drop(tree_blobs);

    // Pack contents.
    let selection = match &opts.read_data {
        ReadData::None => None,
        ReadData::All => Some(Selection::Range { start: 0, width: 1 << 64 }),
        ReadData::Subset(s) => Some(s.selection()),
    };
    if let Some(sel) = selection {
        let chosen: Vec<(Id, u64, PackInfo)> = sorted_packs
            .iter()
            .filter(|(id, _)| sel.contains(id))
            .filter_map(|(id, info)| {
                let size = *pack_sizes.get(id)?;
                Some((**id, size, **info))
            })
            .collect();
        progress.current("packs");
        progress.add_total(chosen.len() as u64, chosen.iter().map(|(_, s, _)| s).sum());
        let keys = repo.keys();
        let mut checked = futures::stream::iter(chosen)
            .map(|(id, size, info)| {
                let (backend, keys) = (backend.clone(), keys.clone());
                async move { (id, size, check_pack(backend, keys, id, size, info).await) }
            })
            .buffer_unordered(conns);
        while let Some((id, size, outcome)) = checked.next().await {
            progress.current(&id.short());
            progress.advance(1, size);
            if outcome.read {
                report.packs_read += 1;
                report.bytes_read += outcome.bytes;
                report.blobs_read += outcome.blobs;
            }
            report.problems.extend(outcome.problems);
        }
    }

    report.duration = started.elapsed();
    tracing::info!(
        "verify: {} problems, {} snapshots, {} trees, {} packs ({} read) in {:.1?}",
        report.problems.len(),
        report.snapshots,
        report.trees,
        report.packs,
        report.packs_read,
        report.duration
    );
    Ok(report)
}

/// What the index files say.
struct IndexRead {
    packs: HashMap<Id, PackInfo>,
    data_blobs: HashSet<Id>,
    tree_blobs: HashMap<Id, Location>,
    problems: Vec<Problem>,
    /// Files read.
    files: u64,
    /// Every id some file read supersedes.
    supersedes: HashSet<Id>,
}

/// Reads the index files `ids` except `skip`, straight from the backend.
async fn read_index(
    repo: &Repository,
    ids: &[(Id, u64)],
    skip: &HashSet<Id>,
    progress: &dyn Progress,
    conns: usize,
) -> IndexRead {
    let ids: Vec<(Id, u64)> = ids.iter().filter(|(id, _)| !skip.contains(id)).copied().collect();
    progress.add_total(ids.len() as u64, ids.iter().map(|(_, s)| s).sum());
    let mut out = IndexRead {
        packs: HashMap::new(),
        data_blobs: HashSet::new(),
        tree_blobs: HashMap::new(),
        problems: Vec::new(),
        files: 0,
        supersedes: HashSet::new(),
    };
    let mut files = futures::stream::iter(ids)
        .map(|(id, size)| async move {
            let loaded = repo.load_file(FileType::Index, &id).await.and_then(|plain| IndexFile::decode(&plain));
            (id, size, loaded)
        })
        .buffer_unordered(conns);
    while let Some((index, size, loaded)) = files.next().await {
        progress.advance(1, size);
        let file = match loaded {
            Ok(f) => f,
            Err(e) => {
                out.problems.push(Problem::IndexUnreadable { index, error: e.to_string() });
                continue;
            }
        };
        out.files += 1;
        out.supersedes.extend(file.supersedes.iter().filter(|s| **s != index).copied());
        for p in &file.packs {
            let info = PackInfo::new(index, &p.blobs);
            match out.packs.get(&p.id) {
                // The same listing twice (a compacted copy) is fine.
                Some(seen) if seen.fingerprint == info.fingerprint => {}
                Some(seen) => {
                    out.problems.push(Problem::IndexConflict { pack: p.id, first: seen.index, second: index })
                }
                None => {
                    out.packs.insert(p.id, info);
                }
            }
            for b in &p.blobs {
                match b.tpe {
                    BlobType::Data => {
                        out.data_blobs.insert(b.id);
                    }
                    // A blob in several packs (concurrent writers) is fine; any copy will do.
                    BlobType::Tree => {
                        out.tree_blobs.entry(b.id).or_insert(Location { pack: p.id, entry: *b });
                    }
                }
            }
        }
    }
    out
}

/// The tree walk's shared, read-only state.
struct Walk<'a> {
    backend: &'a dyn Backend,
    keys: &'a Arc<Keys>,
    pack_sizes: &'a HashMap<Id, u64>,
    tree_blobs: &'a HashMap<Id, Location>,
}

impl Walk<'_> {
    /// Walks every tree reachable from `roots` (tree id, where it is needed) once, with up to
    /// `conns` trees loading at a time, and checks every data blob a file uses is indexed.
    async fn run(
        &self,
        roots: Vec<(Id, String)>,
        data_blobs: &HashSet<Id>,
        report: &mut Report,
        progress: &dyn Progress,
        conns: usize,
    ) {
        let mut visited: HashSet<Id> = HashSet::new();
        let mut reported: HashSet<Id> = HashSet::new();
        let mut queue: Vec<(Id, String)> = Vec::new();
        for (id, at) in roots {
            if visited.insert(id) {
                progress.add_total(1, 0);
                queue.push((id, at));
            }
        }
        let mut loading = FuturesUnordered::new();
        loop {
            while loading.len() < conns
                && let Some((id, at)) = queue.pop()
            {
                match self.tree_blobs.get(&id) {
                    None => {
                        progress.advance(1, 0);
                        report.problems.push(Problem::TreeMissing { tree: id, at });
                    }
                    // Its pack is already reported missing; name the tree too, without a request.
                    Some(loc) if !self.pack_sizes.contains_key(&loc.pack) => {
                        progress.advance(1, 0);
                        report.problems.push(Problem::TreeUnreadable {
                            tree: id,
                            pack: loc.pack,
                            at,
                            error: "its pack is missing".into(),
                        });
                    }
                    Some(loc) => loading.push(self.load(*loc, at)),
                }
            }
            let Some((loc, at, loaded)) = loading.next().await else { break };
            progress.advance(1, u64::from(loc.entry.length));
            let tree = match loaded {
                Ok(t) => t,
                Err(e) => {
                    let error = why(e);
                    report.problems.push(Problem::TreeUnreadable { tree: loc.entry.id, pack: loc.pack, at, error });
                    continue;
                }
            };
            report.trees += 1;
            for node in &tree.nodes {
                let sep = if at.ends_with('/') { "" } else { "/" };
                let path = format!("{at}{sep}{}", node.display_name());
                match node.kind {
                    NodeKind::File => {
                        for e in &node.content {
                            if let Extent::Data(blob) = e
                                && !data_blobs.contains(blob)
                                && reported.insert(*blob)
                            {
                                report.problems.push(Problem::BlobMissing { blob: *blob, at: path.clone() });
                            }
                        }
                    }
                    NodeKind::Dir => {
                        // Tree decoding guarantees a dir has a subtree; be lenient anyway.
                        if let Some(sub) = node.subtree
                            && visited.insert(sub)
                        {
                            progress.add_total(1, 0);
                            queue.push((sub, path));
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// Loads and decodes one tree blob from where the index files (not the cache) put it.
    async fn load(&self, loc: Location, at: String) -> (Location, String, Result<Tree>) {
        let h = Handle::new(FileType::Pack, loc.pack.to_hex());
        let loaded = async {
            let sealed = self.backend.get(&h, Some(loc.entry.range())).await?;
            let keys = self.keys.clone();
            tokio::task::spawn_blocking(move || {
                let plain = decode_blob_with(&keys, &loc.entry, &sealed)?;
                Tree::decode(&plain).map_err(|e| Error::corrupt(format!("tree {}", loc.entry.id), e.to_string()))
            })
            .await
            .map_err(|_| Error::Cancelled)?
        }
        .await;
        (loc, at, loaded)
    }
}

/// The reason alone for a corrupt object (the problem names the object already).
fn why(e: Error) -> String {
    match e {
        Error::Corrupt { why, .. } => why,
        other => other.to_string(),
    }
}

/// What checking one pack found.
#[derive(Default)]
struct PackOutcome {
    read: bool,
    bytes: u64,
    blobs: u64,
    problems: Vec<Problem>,
}

/// Downloads pack `id` and checks it end to end (hash, header against the index, every blob).
async fn check_pack(backend: Arc<dyn Backend>, keys: Arc<Keys>, id: Id, size: u64, info: PackInfo) -> PackOutcome {
    // Offsets are u32, so no valid pack is much over 4 GiB; a bigger object is not downloaded
    // (it would be held in memory).
    if size > MAX_PACK {
        let error = format!("{size} bytes, larger than any valid pack; not downloaded");
        return PackOutcome { problems: vec![Problem::PackUnreadable { pack: id, error }], ..Default::default() };
    }
    let data = match backend.get(&Handle::new(FileType::Pack, id.to_hex()), None).await {
        Ok(d) => d,
        Err(e) => {
            return PackOutcome {
                problems: vec![Problem::PackUnreadable { pack: id, error: e.to_string() }],
                ..Default::default()
            };
        }
    };
    // Hashing and decrypting a whole pack is CPU work: off the async workers.
    tokio::task::spawn_blocking(move || check_pack_bytes(&keys, id, &info, &data)).await.unwrap_or_else(|_| {
        PackOutcome {
            problems: vec![Problem::PackUnreadable { pack: id, error: "the check was cancelled".into() }],
            ..Default::default()
        }
    })
}

fn check_pack_bytes(keys: &Keys, id: Id, info: &PackInfo, data: &[u8]) -> PackOutcome {
    let mut out = PackOutcome { read: true, bytes: data.len() as u64, ..Default::default() };
    let actual = Id::hash(data);
    if actual != id {
        out.problems.push(Problem::PackHashMismatch { pack: id, actual });
    }
    // The header is read even when the hash failed, to name the damaged blobs.
    let entries = match crate::pack::read_header(keys, data, data.len() as u64) {
        Ok(e) => e,
        Err(e) => {
            out.problems.push(Problem::PackHeaderUnreadable { pack: id, error: e.to_string() });
            return out;
        }
    };
    let header = PackInfo::new(info.index, &entries);
    if header.fingerprint != info.fingerprint {
        let detail = if header.blobs == info.blobs {
            format!("both list {} blobs, but their ids, types or places differ", info.blobs)
        } else {
            format!("the header lists {} blobs, the index {}", header.blobs, info.blobs)
        };
        out.problems.push(Problem::PackHeaderMismatch { pack: id, detail });
    }
    let mut bufs = DecodeBuffers::default();
    for e in &entries {
        // read_header checked every entry lies within the data.
        let sealed = &data[e.range().start as usize..e.range().end as usize];
        out.blobs += 1;
        if let Err(err) = decode_blob_into(keys, e, sealed, &mut bufs) {
            let error = why(err);
            out.problems.push(Problem::BlobCorrupt { pack: id, blob: e.id, error });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_subsets() {
        assert_eq!("10%".parse::<Subset>().unwrap(), Subset::Percent(10.0));
        assert_eq!("2.5%".parse::<Subset>().unwrap(), Subset::Percent(2.5));
        assert_eq!("1/30".parse::<Subset>().unwrap(), Subset::Slice { n: 1, t: 30 });
        assert_eq!("30/30".parse::<Subset>().unwrap(), Subset::Slice { n: 30, t: 30 });
        for bad in ["0%", "101%", "-1%", "nan%", "x%", "0/3", "4/3", "1/0", "1/", "/2", "3", "", "1/2/3"] {
            assert!(bad.parse::<Subset>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn slices_partition_the_packs() {
        let ids: Vec<Id> = (0..2000).map(|_| Id::random()).collect();
        for t in [1u64, 3, 7, 30] {
            for id in &ids {
                let hits = (1..=t).filter(|&n| Subset::Slice { n, t }.selection().contains(id)).count();
                assert_eq!(hits, 1, "slice count for {id:?} of {t}");
            }
        }
    }

    #[test]
    fn percent_covers_about_its_share_and_moves() {
        let ids: Vec<Id> = (0..20_000).map(|_| Id::random()).collect();
        let share = |sel: Selection| ids.iter().filter(|id| sel.contains(id)).count() as f64 / ids.len() as f64;
        assert_eq!(share(Subset::Percent(100.0).selection()), 1.0);
        let s = share(Subset::Percent(10.0).selection_from(u64::MAX - 5));
        assert!((0.08..0.12).contains(&s), "10% read {s}");
        // Two starts half the space apart pick disjoint ranges.
        let a = Subset::Percent(10.0).selection_from(0);
        let b = Subset::Percent(10.0).selection_from(1 << 63);
        assert!(ids.iter().all(|id| !(a.contains(id) && b.contains(id))));
    }

    #[test]
    fn fingerprint_ignores_order_but_not_fields() {
        let e = |n: u8, offset: u32| BlobEntry {
            id: Id([n; 32]),
            tpe: BlobType::Data,
            offset,
            length: 10,
            raw_len: 9,
            compressed: false,
        };
        let a = [e(1, 0), e(2, 10)];
        assert_eq!(fingerprint(&a), fingerprint(&[e(2, 10), e(1, 0)]));
        assert_ne!(fingerprint(&a), fingerprint(&[e(1, 0), e(2, 11)]));
        assert_ne!(fingerprint(&a), fingerprint(&[e(1, 0)]));
        let info = PackInfo::new(Id([0; 32]), &a);
        assert_eq!(info.min_size(), 20 + 44 + 13 + 2 * 41 + 4);
    }
}
