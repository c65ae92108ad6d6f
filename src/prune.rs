//! `prune`: removes the packs no snapshot needs, by the two-phase protocol of format §11.3.
//!
//! A run holds the maintenance lease, lists snapshots (before anything else), walks every tree of
//! every snapshot once into the set of used blobs, then reads every index file from the backend
//! (never the cache), honouring supersession (§11.1). It refuses to go on when a used blob is in
//! no index file and in no pack of a deletion plan (a damaged repository: nothing is written).
//! Then it **executes** the deletion plans that are due: a listed pack that a live index file
//! lists is kept, one holding a used blob no indexed pack holds is recovered (its header read
//! from the pack, a new index file written), the rest are deleted, then the plan's superseded
//! index files. And it **marks**: per pack, used and unused blobs and bytes (a blob stored in
//! several packs is used in the first that claims it only); packs with no used blob, packs no
//! index file lists (and no plan names), and the packs whose used blobs it copied into new packs
//! (repacking, when the unused share is above `max_unused`) are condemned; new index files for
//! every kept pack and the new packs are written, the last one superseding every index file read,
//! and then the deletion plan `deletions/<id>`, due after the grace period. Nothing is deleted in
//! the run that condemns it. A dry run computes the same plan and writes nothing.
//!
//! Memory: the used set is a sorted `Vec<u64>` of 8-byte id prefixes, a claimed bit and a 4-byte
//! claim tag per entry: **≈ 12 bytes per used blob** (at most 16 while the walk collects the
//! prefixes, before the tags exist), whatever the blob size. A prefix collision can only make an
//! unused blob look used (kept), never the reverse; the tag keeps two colliding ids from passing
//! for two copies of one blob. Add ≈ 90 bytes per tree blob (its location, for the walk; visited
//! trees are one bit each), ≈ 100 bytes per pack (its counts), ≈ 50 bytes per blob being
//! repacked, one index file being read per connection, and one pack being repacked: 10 million
//! blobs in 600,000 packs need about 250 MB. Index files are streamed: two passes over them, a
//! third only when a plan is written.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::stream::FuturesUnordered;
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize, Serializer};

use crate::backend::{FileType, Handle};
use crate::cache::Location;
use crate::error::{Error, Result};
use crate::id::Id;
use crate::index::{IndexFile, IndexPack, MAX_BLOBS_PER_FILE};
use crate::pack::{BlobEntry, BlobType, PackBuilder};
use crate::progress::Progress;
use crate::repo::{DecodeBuffers, Repository, decode_blob_into, decode_blob_with, list_ids};
use crate::tree::{Extent, NodeKind, Tree};

use crate::lease::Lease;

/// How long after `not_before` an executed plan is kept before prune deletes it.
pub const PLAN_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);
/// Most blobs in one repacked pack (as the backup's packer).
const MAX_BLOBS_PER_PACK: usize = 100_000;

/// What a prune run may do.
#[derive(Clone, Debug)]
pub struct PruneOptions {
    /// Repack a partly used pack when its unused share of blob bytes is above this (0.0–1.0).
    pub max_unused: f64,
    /// How long a plan waits before it may be executed (format §11.3: at least the longest
    /// backup plus clock skew).
    pub grace: Duration,
    /// Compute and report the plan, write nothing.
    pub dry_run: bool,
    /// Snapshots to treat as already removed (only with `dry_run`: `forget --dry-run --prune`).
    pub assume_removed: HashSet<Id>,
}

impl Default for PruneOptions {
    fn default() -> Self {
        Self { max_unused: 0.05, grace: Duration::from_secs(24 * 3600), dry_run: false, assume_removed: HashSet::new() }
    }
}

/// A pack a plan condemns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanPack {
    /// The pack.
    pub id: Id,
    /// Its size in the listing when condemned.
    pub size: u64,
}

/// A deletion plan (`deletions/<id>`, format §11.3).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// When it was written (unix seconds).
    pub created: u64,
    /// Not executed before this (unix seconds).
    pub not_before: u64,
    /// The packs to delete.
    pub packs: Vec<PlanPack>,
    /// The index files the marking run superseded.
    pub index_files: Vec<Id>,
}

/// Every deletion plan in the repository, in name order; a plan that does not load is an error.
pub async fn load_plans(repo: &Repository) -> Result<Vec<(Id, Plan)>> {
    let mut ids: Vec<Id> = list_ids(&**repo.backend(), FileType::Deletion).await?.into_iter().collect();
    ids.sort();
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        out.push((id, load_plan(repo, &id).await?));
    }
    Ok(out)
}

/// Loads and decodes deletion plan `id`.
pub async fn load_plan(repo: &Repository, id: &Id) -> Result<Plan> {
    let plain = repo.load_file(FileType::Deletion, id).await?;
    crate::codec::from_cbor(&plain).map_err(|e| Error::corrupt(format!("deletion plan {id}"), e))
}

fn hex_opt<S: Serializer>(id: &Option<Id>, s: S) -> std::result::Result<S::Ok, S::Error> {
    match id {
        Some(id) => s.serialize_str(&id.to_hex()),
        None => s.serialize_none(),
    }
}

fn secs<S: Serializer>(d: &Duration, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// What executing the due plans did (or, in a dry run, would do).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Executed {
    /// Plans due (`not_before` passed).
    pub plans_due: u64,
    /// Plans not due yet.
    pub plans_pending: u64,
    /// Listed packs deleted.
    pub packs_deleted: u64,
    /// Their bytes.
    pub bytes_deleted: u64,
    /// Listed packs kept because a live index file lists them.
    pub packs_kept: u64,
    /// Listed packs recovered: a snapshot uses a blob only they hold; a new index file lists them.
    pub packs_recovered: u64,
    /// Listed packs already gone.
    pub packs_gone: u64,
    /// Superseded index files deleted.
    pub index_files_deleted: u64,
    /// Plans deleted (30 days after they were due).
    pub plans_deleted: u64,
}

/// What marking condemned (or, in a dry run, would condemn).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Marked {
    /// Packs with no used blob.
    pub packs_unused: u64,
    /// Their bytes.
    pub bytes_unused: u64,
    /// Packs no index file (and no plan) lists.
    pub packs_unindexed: u64,
    /// Their bytes.
    pub bytes_unindexed: u64,
    /// Partly used packs whose used blobs are copied into new packs.
    pub packs_repack: u64,
    /// Their bytes.
    pub bytes_repack: u64,
    /// Blobs copied out of them.
    pub blobs_repacked: u64,
    /// Bytes of those blobs.
    pub bytes_repacked: u64,
    /// Packs kept as they are.
    pub packs_kept: u64,
    /// Their bytes.
    pub bytes_kept: u64,
    /// New packs written by repacking.
    pub packs_written: u64,
    /// Index files written.
    pub index_files_written: u64,
    /// Index files the new ones supersede.
    pub index_files_superseded: u64,
    /// The plan written, if any.
    #[serde(serialize_with = "hex_opt")]
    pub plan: Option<Id>,
    /// When it becomes due (unix seconds).
    pub not_before: Option<u64>,
}

impl Marked {
    /// Packs condemned (unused, unindexed, repacked).
    pub fn packs_condemned(&self) -> u64 {
        self.packs_unused + self.packs_unindexed + self.packs_repack
    }

    /// Bytes condemned.
    pub fn bytes_condemned(&self) -> u64 {
        self.bytes_unused + self.bytes_unindexed + self.bytes_repack
    }
}

/// What a prune run found and did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PruneReport {
    /// Whether this was a dry run (nothing written).
    pub dry_run: bool,
    /// Snapshots whose trees were walked.
    pub snapshots: u64,
    /// Trees walked.
    pub trees: u64,
    /// Distinct blobs the snapshots use.
    pub blobs_used: u64,
    /// Live index files read.
    pub index_files: u64,
    /// Packs in the repository.
    pub packs: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Executing the due plans.
    pub executed: Executed,
    /// Marking.
    pub marked: Marked,
    /// Wall time.
    #[serde(serialize_with = "secs", rename = "duration_secs")]
    pub duration: Duration,
}

/// The first 8 bytes of an id, big-endian (id order is prefix order).
fn prefix(id: &Id) -> u64 {
    u64::from_be_bytes(id.0[..8].try_into().expect("8 bytes"))
}

/// The used blobs: sorted, distinct 8-byte id prefixes, and for each a claimed bit and the next
/// 4 bytes of the id that claimed it. Membership by prefix errs only towards "used" (two ids
/// sharing a prefix both count as used); the claim tag keeps such a pair from passing for two
/// copies of one blob, so a collision keeps a blob, never drops one.
#[derive(Debug, Default)]
pub struct UsedSet {
    ids: Vec<u64>,
    claimed: Vec<u64>,
    tags: Vec<u32>,
    compact_at: usize,
}

/// What [`UsedSet::claim`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// Not a used blob.
    Unused,
    /// The first copy of a used blob: this one counts as used.
    First,
    /// Another copy of a blob already claimed: unused here.
    Duplicate,
    /// A used prefix claimed by another id (a prefix collision): counted as used, to be safe.
    Collision,
}

/// The 4 bytes of an id after its prefix.
fn tag(id: &Id) -> u32 {
    u32::from_be_bytes(id.0[8..12].try_into().expect("4 bytes"))
}

impl UsedSet {
    /// An empty set.
    pub fn new() -> Self {
        Self { ids: Vec::new(), claimed: Vec::new(), tags: Vec::new(), compact_at: 1 << 20 }
    }

    /// Adds a blob (duplicates are removed now and then, so memory stays near 8 bytes a blob).
    pub fn insert(&mut self, id: &Id) {
        self.ids.push(prefix(id));
        if self.ids.len() >= self.compact_at {
            self.compact();
            self.compact_at = (2 * self.ids.len()).max(1 << 20);
        }
    }

    fn compact(&mut self) {
        self.ids.sort_unstable();
        self.ids.dedup();
    }

    /// Ends insertion: sorts, removes duplicates, trims, and clears every claim.
    pub fn finish(&mut self) {
        self.compact();
        self.ids.shrink_to_fit();
        self.claimed = vec![0; self.ids.len().div_ceil(64)];
        self.tags = vec![0; self.ids.len()];
    }

    /// Distinct entries.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether empty.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Bytes held (capacity of the vectors).
    pub fn heap_bytes(&self) -> usize {
        self.ids.capacity() * 8 + self.claimed.capacity() * 8 + self.tags.capacity() * 4
    }

    fn position(&self, id: &Id) -> Option<usize> {
        self.ids.binary_search(&prefix(id)).ok()
    }

    /// Whether `id` is used (or shares its prefix with a used blob).
    pub fn contains(&self, id: &Id) -> bool {
        self.position(id).is_some()
    }

    fn is_claimed(&self, pos: usize) -> bool {
        self.claimed[pos / 64] & (1u64 << (pos % 64)) != 0
    }

    /// Claims a copy of blob `id` (after [`Self::finish`]).
    pub fn claim(&mut self, id: &Id) -> Claim {
        let Some(pos) = self.position(id) else { return Claim::Unused };
        if !self.is_claimed(pos) {
            self.claimed[pos / 64] |= 1u64 << (pos % 64);
            self.tags[pos] = tag(id);
            Claim::First
        } else if self.tags[pos] == tag(id) {
            Claim::Duplicate
        } else {
            Claim::Collision
        }
    }

    /// How many entries no copy has claimed, and the first of them (as a prefix).
    pub fn unclaimed(&self) -> (usize, Option<u64>) {
        let mut first = None;
        let mut n = 0;
        for (i, p) in self.ids.iter().enumerate() {
            if !self.is_claimed(i) {
                n += 1;
                first.get_or_insert(*p);
            }
        }
        (n, first)
    }
}

/// A fixed-size bitset.
struct Bits(Vec<u64>);

impl Bits {
    fn new(n: usize) -> Self {
        Self(vec![0; n.div_ceil(64)])
    }

    /// Sets bit `i`; true if it was clear.
    fn set(&mut self, i: usize) -> bool {
        let (w, b) = (i / 64, 1u64 << (i % 64));
        let fresh = self.0[w] & b == 0;
        self.0[w] |= b;
        fresh
    }
}

/// What marking decided for an indexed pack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Decision {
    Keep,
    Unused,
    Repack,
}

/// One live-indexed pack.
struct PackStat {
    size: u64,
    decision: Decision,
}

/// The index files as listed, and which are live.
struct IndexFiles {
    /// Every listed file, sorted.
    listed: Vec<Id>,
    /// Listed files that a listed file supersedes.
    superseded: HashSet<Id>,
}

impl IndexFiles {
    fn live(&self) -> Vec<Id> {
        self.listed.iter().filter(|id| !self.superseded.contains(id)).copied().collect()
    }
}

/// The shared state of one run.
struct Run<'a> {
    repo: &'a Repository,
    opts: &'a PruneOptions,
    lease: Option<&'a Lease>,
    progress: &'a dyn Progress,
    conns: usize,
}

/// Prunes the repository (see the module comment). The repository's index need not be loaded.
pub async fn prune(repo: &Repository, opts: &PruneOptions, progress: Arc<dyn Progress>) -> Result<PruneReport> {
    if !(0.0..=1.0).contains(&opts.max_unused) {
        return Err(Error::Invalid(format!("max-unused must be between 0% and 100%, not {}", opts.max_unused)));
    }
    if !opts.dry_run && !opts.assume_removed.is_empty() {
        return Err(Error::Invalid("snapshots can be assumed removed only in a dry run".into()));
    }
    let lease = if opts.dry_run { None } else { Some(Lease::acquire(repo, "prune").await?) };
    let run =
        Run { repo, opts, lease: lease.as_ref(), progress: &*progress, conns: repo.backend().connections().max(1) };
    let result = run.run().await;
    if let Some(lease) = lease {
        match (lease.release().await, &result) {
            (Err(e), Ok(_)) => return Err(e),
            (Err(e), Err(_)) => tracing::warn!("releasing the maintenance lease: {e}"),
            _ => {}
        }
    }
    result
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Run<'_> {
    async fn run(&self) -> Result<PruneReport> {
        let started = Instant::now();
        let backend = self.repo.backend().clone();
        let mut report = PruneReport { dry_run: self.opts.dry_run, ..Default::default() };

        // Snapshots first, then index files, then packs (format §11).
        self.progress.current("snapshots");
        let snapshots_listed = std::time::SystemTime::now();
        let mut snapshots = self.repo.snapshots().await?;
        snapshots.retain(|s| !self.opts.assume_removed.contains(&s.id));
        report.snapshots = snapshots.len() as u64;
        let index_listing = backend.list(FileType::Index).await?;
        // Index files written shortly before the snapshot listing may belong to a backup whose
        // snapshot comes just after it: their packs are kept and they are not superseded
        // (format §11.3), so that snapshot's data never leaves the index.
        let young_since = snapshots_listed - crate::plancheck::margin(self.opts.grace);
        let young: HashSet<Id> = index_listing
            .iter()
            .filter(|f| f.modified.is_some_and(|m| m >= young_since))
            .filter_map(|f| f.handle.name.parse().ok())
            .collect();
        let mut listed: Vec<Id> = index_listing.into_iter().filter_map(|f| f.handle.name.parse().ok()).collect();
        listed.sort();
        let pack_sizes: HashMap<Id, u64> = backend
            .list(FileType::Pack)
            .await?
            .into_iter()
            .filter_map(|f| Some((f.handle.name.parse().ok()?, f.size)))
            .collect();
        report.packs = pack_sizes.len() as u64;
        report.bytes = pack_sizes.values().sum();
        let plans = load_plans(self.repo).await?;

        // Pass 1: supersession and tree locations.
        let (files, trees) = self.read_trees(listed).await?;
        let live = files.live();
        report.index_files = live.len() as u64;

        // The used set.
        let mut plan_trees = PlanTrees::default();
        let mut used = UsedSet::new();
        report.trees = self.walk(&snapshots, &trees, &plans, &pack_sizes, &mut plan_trees, &mut used).await?;
        drop(trees);
        used.finish();
        report.blobs_used = used.len() as u64;
        tracing::info!("prune: {} used blobs in {} bytes", used.len(), used.heap_bytes());

        // Pass 2: per-pack counts.
        let (mut packs, repack) = self.count(&live, &young, &pack_sizes, &mut used).await?;

        // Blobs no live index file lists may be in packs of a plan: recover those packs.
        let recovered = self.find_recoverable(&plans, &pack_sizes, &packs, plan_trees, &mut used).await?;
        let (missing, first) = used.unclaimed();
        if missing > 0 {
            return Err(Error::Invalid(format!(
                "prune refused: {missing} blob(s) used by snapshots are in no index file (the first starts \
                 {:016x}); nothing was deleted or written. Run `s3bk verify` to see what is damaged",
                first.unwrap_or(0)
            )));
        }
        drop(used);
        let recovered_ids: HashSet<Id> = recovered.iter().map(|p| p.id).collect();
        if !recovered.is_empty() && !self.opts.dry_run {
            let ids = self.repo.save_index(recovered).await?;
            tracing::info!("recovered {} packs into index file(s) {:?}", recovered_ids.len(), ids);
            report.marked.index_files_written += ids.len() as u64;
        }

        // (a) Execute the due plans.
        let now = unix_now();
        let mut deleted_packs: HashSet<Id> = HashSet::new();
        let mut deleted_index: HashSet<Id> = HashSet::new();
        self.execute(
            &plans,
            now,
            &packs,
            &recovered_ids,
            &pack_sizes,
            &files,
            &mut deleted_packs,
            &mut deleted_index,
            &mut report.executed,
        )
        .await?;

        // (b) Mark.
        let in_plans: HashSet<Id> = plans.iter().flat_map(|(_, p)| p.packs.iter().map(|p| p.id)).collect();
        let mut condemned: Vec<PlanPack> = Vec::new();
        let m = &mut report.marked;
        let mut sorted: Vec<(&Id, &PackStat)> = packs.iter().collect();
        sorted.sort_by_key(|(id, _)| **id);
        for (id, stat) in sorted {
            match stat.decision {
                Decision::Keep => {
                    m.packs_kept += 1;
                    m.bytes_kept += stat.size;
                }
                Decision::Unused => {
                    m.packs_unused += 1;
                    m.bytes_unused += stat.size;
                    condemned.push(PlanPack { id: *id, size: stat.size });
                }
                Decision::Repack => {
                    m.packs_repack += 1;
                    m.bytes_repack += stat.size;
                    let blobs = &repack[id];
                    m.blobs_repacked += blobs.len() as u64;
                    m.bytes_repacked += blobs.iter().map(|b| u64::from(b.length)).sum::<u64>();
                    condemned.push(PlanPack { id: *id, size: stat.size });
                }
            }
        }
        let mut unindexed: Vec<(&Id, &u64)> = pack_sizes
            .iter()
            .filter(|(id, _)| {
                !packs.contains_key(id)
                    && !recovered_ids.contains(id)
                    && !in_plans.contains(id)
                    && !deleted_packs.contains(id)
            })
            .collect();
        unindexed.sort();
        for (id, size) in unindexed {
            m.packs_unindexed += 1;
            m.bytes_unindexed += size;
            condemned.push(PlanPack { id: *id, size: *size });
        }
        let supersede: Vec<Id> =
            files.listed.iter().filter(|id| !deleted_index.contains(id) && !young.contains(id)).copied().collect();
        if condemned.is_empty() {
            tracing::info!("prune: nothing to condemn");
        } else {
            m.index_files_superseded = supersede.len() as u64;
            if !self.opts.dry_run {
                let repacked = self.repack(&repack, &packs, m).await?;
                // Every kept pack, then the new ones; the last file supersedes all read.
                let written = self.write_index(&live, &mut packs, repacked, supersede.clone()).await?;
                m.index_files_written += written;
                if let Some(lease) = self.lease {
                    lease.check()?;
                }
                let plan = Plan {
                    created: now,
                    not_before: now.saturating_add(self.opts.grace.as_secs()),
                    packs: condemned,
                    index_files: supersede,
                };
                let id = self.repo.save_file(FileType::Deletion, &crate::codec::to_cbor(&plan)).await?;
                tracing::info!("wrote deletion plan {id} ({} packs), due at {}", plan.packs.len(), plan.not_before);
                m.plan = Some(id);
                m.not_before = Some(plan.not_before);
            } else {
                m.not_before = Some(now.saturating_add(self.opts.grace.as_secs()));
            }
        }
        report.duration = started.elapsed();
        Ok(report)
    }

    /// Pass 1: reads every listed index file; returns which are superseded and the locations of
    /// the tree blobs the live ones list (sorted by id, one per id).
    async fn read_trees(&self, listed: Vec<Id>) -> Result<(IndexFiles, Vec<Location>)> {
        self.progress.current("index files");
        self.progress.add_total(listed.len() as u64, 0);
        let listed_set: HashSet<Id> = listed.iter().copied().collect();
        let mut superseded = HashSet::new();
        let mut trees: Vec<(Location, u32)> = Vec::new();
        let mut stream = self.stream_index(listed.clone());
        while let Some((n, id, file)) = stream.try_next().await? {
            self.progress.advance(1, 0);
            for s in &file.supersedes {
                if *s != id && listed_set.contains(s) {
                    superseded.insert(*s);
                }
            }
            for p in &file.packs {
                for b in p.blobs.iter().filter(|b| b.tpe == BlobType::Tree) {
                    trees.push((Location { pack: p.id, entry: *b }, n));
                }
            }
        }
        drop(stream);
        let files = IndexFiles { listed, superseded };
        let mut out: Vec<Location> = trees
            .into_iter()
            .filter(|(_, n)| !files.superseded.contains(&files.listed[*n as usize]))
            .map(|(l, _)| l)
            .collect();
        out.sort_by_key(|l| l.entry.id);
        out.dedup_by_key(|l| l.entry.id);
        out.shrink_to_fit();
        Ok((files, out))
    }

    /// Index files `ids` loaded straight from the backend, each with its position in `ids`.
    fn stream_index(&self, ids: Vec<Id>) -> impl futures::Stream<Item = Result<(u32, Id, IndexFile)>> + Unpin + '_ {
        Box::pin(
            futures::stream::iter(ids.into_iter().enumerate())
                .map(move |(n, id)| async move {
                    let plain = self.repo.load_file(FileType::Index, &id).await?;
                    Ok::<_, Error>((n as u32, id, IndexFile::decode(&plain)?))
                })
                .buffer_unordered(self.conns),
        )
    }

    /// Walks every tree of every snapshot once; fills `used` with every tree and data blob.
    /// Returns the number of trees walked.
    async fn walk(
        &self,
        snapshots: &[crate::snapshot::SnapshotEntry],
        trees: &[Location],
        plans: &[(Id, Plan)],
        pack_sizes: &HashMap<Id, u64>,
        plan_trees: &mut PlanTrees,
        used: &mut UsedSet,
    ) -> Result<u64> {
        self.progress.current("trees");
        let mut visited = Bits::new(trees.len());
        let mut visited_plan: HashSet<Id> = HashSet::new();
        let mut queue: Vec<(Id, Id)> = Vec::new(); // (tree, snapshot)
        for s in snapshots {
            queue.push((s.snapshot.tree, s.id));
        }
        self.progress.add_total(queue.len() as u64, 0);
        let mut walked = 0u64;
        let mut loading = FuturesUnordered::new();
        loop {
            while loading.len() < self.conns
                && let Some((id, snap)) = queue.pop()
            {
                let loc = match trees.binary_search_by_key(&id, |l| l.entry.id) {
                    Ok(i) => {
                        if !visited.set(i) {
                            self.progress.advance(1, 0);
                            continue;
                        }
                        trees[i]
                    }
                    Err(_) => {
                        // Not in a live index file: perhaps in a pack a plan condemned, used
                        // by a snapshot written since (it is recovered below).
                        if !plan_trees.loaded {
                            plan_trees.load(self, plans, pack_sizes).await?;
                        }
                        let Some(loc) = plan_trees.trees.get(&id).copied() else {
                            return Err(Error::Invalid(format!(
                                "prune refused: snapshot {} needs tree {id}, which is in no index file; nothing \
                                 was deleted or written. Run `s3bk verify` to see what is damaged",
                                snap.short()
                            )));
                        };
                        if !visited_plan.insert(id) {
                            self.progress.advance(1, 0);
                            continue;
                        }
                        loc
                    }
                };
                used.insert(&id);
                loading.push(self.load_tree(loc, snap));
            }
            let Some(loaded) = loading.next().await else { break };
            let (snap, tree) = loaded?;
            self.progress.advance(1, 0);
            walked += 1;
            for node in &tree.nodes {
                match node.kind {
                    NodeKind::File => {
                        for e in &node.content {
                            if let Extent::Data(blob) = e {
                                used.insert(blob);
                            }
                        }
                    }
                    NodeKind::Dir => {
                        if let Some(sub) = node.subtree {
                            self.progress.add_total(1, 0);
                            queue.push((sub, snap));
                        }
                    }
                    _ => {}
                }
            }
        }
        Ok(walked)
    }

    async fn load_tree(&self, loc: Location, snap: Id) -> Result<(Id, Tree)> {
        let sealed = self.repo.tree_packs().sealed(&**self.repo.backend(), &loc).await?;
        let keys = self.repo.keys().clone();
        let tree = tokio::task::spawn_blocking(move || {
            let plain = decode_blob_with(&keys, &loc.entry, &sealed)?;
            Tree::decode(&plain).map_err(|e| Error::corrupt(format!("tree {}", loc.entry.id), e.to_string()))
        })
        .await
        .map_err(|_| Error::Cancelled)??;
        Ok((snap, tree))
    }

    /// Pass 2: claims used blobs pack by pack and decides each live-indexed pack's fate (packs of
    /// `young` index files are kept whatever they hold). Returns the packs, and the used blobs
    /// of those to repack.
    async fn count(
        &self,
        live: &[Id],
        young: &HashSet<Id>,
        pack_sizes: &HashMap<Id, u64>,
        used: &mut UsedSet,
    ) -> Result<(HashMap<Id, PackStat>, HashMap<Id, Vec<BlobEntry>>)> {
        self.progress.current("packs");
        self.progress.add_total(live.len() as u64, 0);
        let mut packs: HashMap<Id, PackStat> = HashMap::new();
        let mut repack: HashMap<Id, Vec<BlobEntry>> = HashMap::new();
        let mut missing: HashSet<Id> = HashSet::new();
        let mut stream = self.stream_index(live.to_vec());
        while let Some((_, file_id, file)) = stream.try_next().await? {
            self.progress.advance(1, 0);
            let protected = young.contains(&file_id);
            for p in file.packs {
                if packs.contains_key(&p.id) || missing.contains(&p.id) {
                    continue; // listed twice: counted once
                }
                let Some(&size) = pack_sizes.get(&p.id) else {
                    // Indexed but not stored: its blobs are not claimed, so a used one is
                    // reported missing below.
                    tracing::warn!("pack {} is indexed but not in the repository", p.id);
                    missing.insert(p.id);
                    continue;
                };
                let (mut used_bytes, mut unused_bytes) = (0u64, 0u64);
                let mut used_blobs = Vec::new();
                for b in &p.blobs {
                    match used.claim(&b.id) {
                        Claim::First | Claim::Collision => {
                            used_bytes += u64::from(b.length);
                            used_blobs.push(*b);
                        }
                        Claim::Unused | Claim::Duplicate => unused_bytes += u64::from(b.length),
                    }
                }
                let decision = if protected {
                    Decision::Keep
                } else if used_blobs.is_empty() {
                    Decision::Unused
                } else if unused_bytes as f64 > self.opts.max_unused * (used_bytes + unused_bytes) as f64 {
                    repack.insert(p.id, used_blobs);
                    Decision::Repack
                } else {
                    Decision::Keep
                };
                packs.insert(p.id, PackStat { size, decision });
            }
        }
        Ok((packs, repack))
    }

    /// The packs of plans (not live-indexed, still stored) that hold used blobs no live index
    /// file lists, with their headers; claims those blobs.
    async fn find_recoverable(
        &self,
        plans: &[(Id, Plan)],
        pack_sizes: &HashMap<Id, u64>,
        packs: &HashMap<Id, PackStat>,
        plan_trees: PlanTrees,
        used: &mut UsedSet,
    ) -> Result<Vec<IndexPack>> {
        if used.unclaimed().0 == 0 {
            return Ok(Vec::new());
        }
        let mut headers = plan_trees.headers;
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        for (_, plan) in plans {
            for pp in &plan.packs {
                if packs.contains_key(&pp.id) || !seen.insert(pp.id) {
                    continue;
                }
                let Some(&size) = pack_sizes.get(&pp.id) else { continue };
                let entries = match headers.remove(&pp.id) {
                    Some(e) => e,
                    None => read_pack_header(self.repo, &pp.id, size).await?,
                };
                let mut needed = false;
                for e in &entries {
                    // A collision is taken as needed too: keeping is the safe side.
                    if matches!(used.claim(&e.id), Claim::First | Claim::Collision) {
                        needed = true;
                    }
                }
                if needed {
                    tracing::info!("pack {} of a deletion plan holds blobs a snapshot uses: recovering it", pp.id);
                    out.push(IndexPack { id: pp.id, blobs: entries });
                    if used.unclaimed().0 == 0 {
                        return Ok(out);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Executes the plans whose `not_before` has passed (format §11.3).
    #[allow(clippy::too_many_arguments)]
    async fn execute(
        &self,
        plans: &[(Id, Plan)],
        now: u64,
        packs: &HashMap<Id, PackStat>,
        recovered: &HashSet<Id>,
        pack_sizes: &HashMap<Id, u64>,
        files: &IndexFiles,
        deleted_packs: &mut HashSet<Id>,
        deleted_index: &mut HashSet<Id>,
        ex: &mut Executed,
    ) -> Result<()> {
        let listed: HashSet<Id> = files.listed.iter().copied().collect();
        for (plan_id, plan) in plans {
            if plan.not_before > now {
                ex.plans_pending += 1;
                continue;
            }
            ex.plans_due += 1;
            self.progress.current(&format!("plan {}", plan_id.short()));
            for pp in &plan.packs {
                if deleted_packs.contains(&pp.id) {
                    continue; // listed by an earlier plan too
                }
                if packs.contains_key(&pp.id) {
                    ex.packs_kept += 1;
                } else if recovered.contains(&pp.id) {
                    ex.packs_recovered += 1;
                } else if let Some(&size) = pack_sizes.get(&pp.id) {
                    ex.packs_deleted += 1;
                    ex.bytes_deleted += size;
                    deleted_packs.insert(pp.id);
                    if !self.opts.dry_run {
                        self.delete(&Handle::new(FileType::Pack, pp.id.to_hex())).await?;
                    }
                } else {
                    ex.packs_gone += 1;
                }
            }
            for id in &plan.index_files {
                // Only a file that a listed file supersedes goes: the superseding file holds
                // what it says.
                if !listed.contains(id) || !files.superseded.contains(id) || deleted_index.contains(id) {
                    continue;
                }
                ex.index_files_deleted += 1;
                deleted_index.insert(*id);
                if !self.opts.dry_run {
                    self.delete(&Handle::new(FileType::Index, id.to_hex())).await?;
                }
            }
            if plan.not_before.saturating_add(PLAN_RETENTION.as_secs()) < now {
                ex.plans_deleted += 1;
                if !self.opts.dry_run {
                    self.delete(&Handle::new(FileType::Deletion, plan_id.to_hex())).await?;
                }
            }
        }
        Ok(())
    }

    /// Deletes one object under the lease; "not found" is success.
    async fn delete(&self, h: &Handle) -> Result<()> {
        if let Some(lease) = self.lease {
            lease.check()?;
        }
        match self.repo.backend().delete(h).await {
            Ok(()) => {
                tracing::info!("deleted {h}");
                Ok(())
            }
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Copies the used blobs of the packs to repack into new packs; returns their index entries.
    async fn repack(
        &self,
        repack: &HashMap<Id, Vec<BlobEntry>>,
        packs: &HashMap<Id, PackStat>,
        m: &mut Marked,
    ) -> Result<Vec<IndexPack>> {
        let mut ids: Vec<&Id> = repack.keys().collect();
        ids.sort();
        self.progress.current("repacking");
        self.progress.add_total(ids.len() as u64, ids.iter().map(|id| packs[*id].size).sum());
        let pack_size = self.repo.config().pack_size as usize;
        let keys = self.repo.keys();
        let mut builders: HashMap<BlobType, PackBuilder> = HashMap::new();
        let mut out = Vec::new();
        let mut downloads = futures::stream::iter(ids)
            .map(|id| async move {
                let data = self.repo.backend().get(&Handle::new(FileType::Pack, id.to_hex()), None).await?;
                Ok::<_, Error>((id, data))
            })
            .buffered(2.min(self.conns));
        while let Some((id, data)) = downloads.try_next().await? {
            self.progress.advance(1, data.len() as u64);
            let (keys2, entries, id2) = (keys.clone(), repack[id].clone(), *id);
            let data2 = data.clone();
            // Check every copied blob (and the pack's name) before it goes into a new pack.
            tokio::task::spawn_blocking(move || {
                if Id::hash(&data2) != id2 {
                    return Err(Error::corrupt(format!("pack {id2}"), "content does not match its name"));
                }
                let mut bufs = DecodeBuffers::default();
                for e in &entries {
                    let r = e.range();
                    let sealed = data2
                        .get(r.start as usize..r.end as usize)
                        .ok_or_else(|| Error::corrupt(format!("pack {id2}"), "shorter than its index entries"))?;
                    decode_blob_into(&keys2, e, sealed, &mut bufs)?;
                }
                Ok(())
            })
            .await
            .map_err(|_| Error::Cancelled)??;
            for e in &repack[id] {
                let r = e.range();
                let b = builders.entry(e.tpe).or_insert_with(|| PackBuilder::new(e.tpe, pack_size));
                b.add(e.id, e.raw_len, e.compressed, &data[r.start as usize..r.end as usize]);
                if b.len() >= pack_size || b.count() >= MAX_BLOBS_PER_PACK {
                    let full = std::mem::replace(b, PackBuilder::new(e.tpe, pack_size));
                    out.push(self.store_pack(full).await?);
                    m.packs_written += 1;
                }
            }
        }
        let mut rest: Vec<(BlobType, PackBuilder)> = builders.into_iter().collect();
        rest.sort_by_key(|(t, _)| *t);
        for (_, b) in rest {
            if !b.is_empty() {
                out.push(self.store_pack(b).await?);
                m.packs_written += 1;
            }
        }
        Ok(out)
    }

    async fn store_pack(&self, b: PackBuilder) -> Result<IndexPack> {
        let keys = self.repo.keys().clone();
        let pack = tokio::task::spawn_blocking(move || b.finish(&keys)).await.map_err(|_| Error::Cancelled)?;
        self.repo.put_new(&Handle::new(FileType::Pack, pack.id.to_hex()), pack.data).await?;
        tracing::info!("wrote repacked pack {} ({} blobs)", pack.id, pack.entries.len());
        Ok(IndexPack { id: pack.id, blobs: pack.entries })
    }

    /// Pass 3: index files for every kept pack (read again from the live files) and the new
    /// packs, then one file superseding `supersede`. Returns how many files were written.
    async fn write_index(
        &self,
        live: &[Id],
        packs: &mut HashMap<Id, PackStat>,
        repacked: Vec<IndexPack>,
        supersede: Vec<Id>,
    ) -> Result<u64> {
        self.progress.current("index files");
        self.progress.add_total(live.len() as u64, 0);
        let mut written = 0u64;
        let mut batch: Vec<IndexPack> = Vec::new();
        let mut count = 0usize;
        let mut emitted: HashSet<Id> = HashSet::new();
        let mut stream = self.stream_index(live.to_vec());
        while let Some((_, _, file)) = stream.try_next().await? {
            self.progress.advance(1, 0);
            for p in file.packs {
                if packs.get(&p.id).is_some_and(|s| s.decision == Decision::Keep) && emitted.insert(p.id) {
                    count += p.blobs.len();
                    batch.push(p);
                    if count >= MAX_BLOBS_PER_FILE {
                        written += self.repo.save_index(std::mem::take(&mut batch)).await?.len() as u64;
                        count = 0;
                    }
                }
            }
        }
        drop(stream);
        batch.extend(repacked);
        if !batch.is_empty() {
            written += self.repo.save_index(batch).await?.len() as u64;
        }
        // Last: only now may readers drop the old files.
        let last = IndexFile { supersedes: supersede, packs: Vec::new() };
        let id = self.repo.save_file(FileType::Index, &last.encode()).await?;
        tracing::info!("wrote index file {id} superseding {} files", last.supersedes.len());
        Ok(written + 1)
    }
}

/// Tree blobs in packs of plans, found lazily when a snapshot needs a tree no live index file
/// lists (a backup that loaded the index before the plan was written).
#[derive(Default)]
struct PlanTrees {
    loaded: bool,
    trees: HashMap<Id, Location>,
    headers: HashMap<Id, Vec<BlobEntry>>,
}

impl PlanTrees {
    async fn load(&mut self, run: &Run<'_>, plans: &[(Id, Plan)], pack_sizes: &HashMap<Id, u64>) -> Result<()> {
        self.loaded = true;
        for (_, plan) in plans {
            for pp in &plan.packs {
                if self.headers.contains_key(&pp.id) {
                    continue;
                }
                let Some(&size) = pack_sizes.get(&pp.id) else { continue };
                let entries = read_pack_header(run.repo, &pp.id, size).await?;
                for e in entries.iter().filter(|e| e.tpe == BlobType::Tree) {
                    self.trees.entry(e.id).or_insert(Location { pack: pp.id, entry: *e });
                }
                self.headers.insert(pp.id, entries);
            }
        }
        Ok(())
    }
}

/// Reads pack `id`'s header from the pack itself (two ranged reads of its tail).
pub async fn read_pack_header(repo: &Repository, id: &Id, size: u64) -> Result<Vec<BlobEntry>> {
    let h = Handle::new(FileType::Pack, id.to_hex());
    if size < 4 {
        return Err(Error::corrupt(h.to_string(), "shorter than its length field"));
    }
    let tail = repo.backend().get(&h, Some(size - 4..size)).await?;
    let hlen = crate::pack::header_len(&tail, size).map_err(|e| Error::corrupt(h.to_string(), e.to_string()))?;
    let tail = repo.backend().get(&h, Some(size - hlen - 4..size)).await?;
    crate::pack::read_header(repo.keys(), &tail, size).map_err(|e| Error::corrupt(h.to_string(), e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn used_set_is_about_twelve_bytes_a_blob() {
        let mut s = UsedSet::new();
        let ids: Vec<Id> = (0..300_000).map(|_| Id::random()).collect();
        for id in ids.iter().chain(&ids) {
            s.insert(id);
        }
        s.finish();
        assert_eq!(s.len(), ids.len());
        let per_blob = s.heap_bytes() as f64 / ids.len() as f64;
        assert!(per_blob < 12.3, "{per_blob} bytes per blob");
        assert_eq!(s.claim(&ids[7]), Claim::First);
        assert_eq!(s.claim(&ids[7]), Claim::Duplicate);
        assert!(s.contains(&ids[8]));
        assert_eq!(s.unclaimed().0, ids.len() - 1);
        // An id sharing a used prefix is used, and never passes for a copy of the claimed one.
        let mut twin = ids[7];
        twin.0[10] ^= 1;
        assert!(s.contains(&twin));
        assert_eq!(s.claim(&twin), Claim::Collision);
        let mut other = Id::random();
        other.0[..8].copy_from_slice(&[0xff; 8]);
        assert_eq!(s.claim(&other), Claim::Unused);
    }

    #[test]
    fn plan_round_trips_as_cbor() {
        let p = Plan {
            created: 5,
            not_before: 10,
            packs: vec![PlanPack { id: Id([1; 32]), size: 99 }],
            index_files: vec![Id([2; 32])],
        };
        let back: Plan = crate::codec::from_cbor(&crate::codec::to_cbor(&p)).unwrap();
        assert_eq!(back, p);
    }
}
