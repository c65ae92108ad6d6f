//! Library tests of `prune` on local repositories made by real backups: two runs with no grace
//! delete the packs only forgotten snapshots used and every remaining snapshot restores
//! byte-identical; partly used packs are repacked; a dry run writes nothing; prune refuses when
//! a used blob is in no index file; a pack condemned by a plan but used by a snapshot written
//! after the marking is recovered; an old local cache is rebuilt; verify honours supersession and
//! does not count condemned packs as unindexed.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use s3bk::archiver::{BackupOptions, backup};
use s3bk::backend::{Backend, FileType, Handle, LocalBackend};
use s3bk::checker::{ReadData, VerifyOptions, verify};
use s3bk::id::Id;
use s3bk::index::IndexFile;
use s3bk::pack::BlobType;
use s3bk::progress::NoProgress;
use s3bk::prune::{PruneOptions, PruneReport, load_plans, prune};
use s3bk::repo::{Repository, Secret};
use s3bk::restorer::{RestoreOptions, restore};

fn backend(dir: &Path) -> Arc<dyn Backend> {
    Arc::new(LocalBackend::new(dir))
}

async fn open(dir: &Path) -> Repository {
    Repository::open(backend(dir), &Secret::passphrase("pw")).await.unwrap()
}

async fn open_loaded(dir: &Path, cache: Option<&Path>) -> Repository {
    let mut repo = open(dir).await;
    repo.load_index(cache).await.unwrap();
    repo
}

async fn new_repo(dir: &Path) -> Repository {
    let mut repo = Repository::init(backend(dir), &Secret::passphrase("pw"), &common::cheap_init()).await.unwrap();
    repo.load_index(None).await.unwrap();
    repo
}

async fn backup_of(repo: &Repository, src: &Path) -> Id {
    let opts = BackupOptions { paths: vec![src.to_path_buf()], ..BackupOptions::default() };
    let r = backup(repo, &opts, Arc::new(NoProgress)).await.unwrap();
    assert!(!r.snapshot.incomplete, "{:?}", r.snapshot.summary.skipped);
    r.id.unwrap()
}

fn noise(path: &Path, len: usize) {
    let mut data = vec![0u8; len];
    rand::fill(&mut data[..]);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, data).unwrap();
}

async fn run_prune(dir: &Path, opts: PruneOptions) -> PruneReport {
    prune(&open(dir).await, &opts, Arc::new(NoProgress)).await.expect("prune runs")
}

fn now_opts() -> PruneOptions {
    PruneOptions { grace: Duration::ZERO, ..PruneOptions::default() }
}

fn dry() -> PruneOptions {
    PruneOptions { dry_run: true, grace: Duration::ZERO, ..PruneOptions::default() }
}

/// Every object of `tpe`.
async fn ids(dir: &Path, tpe: FileType) -> HashSet<Id> {
    LocalBackend::new(dir).list(tpe).await.unwrap().into_iter().map(|f| f.handle.name.parse().unwrap()).collect()
}

/// Every file under the repository with its size and mtime (folders left out: the local
/// backend's `tmp/` changes with every write, the lease's included).
fn files(dir: &Path) -> BTreeMap<PathBuf, (u64, std::time::SystemTime)> {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .map(|e| e.unwrap())
        .filter(|e| !e.file_type().is_dir())
        .map(|e| {
            let m = e.metadata().unwrap();
            (e.path().to_path_buf(), (m.len(), m.modified().unwrap()))
        })
        .collect()
}

/// Like [`files`] without `locks/` (a prune that is not a dry run takes and releases the lease).
fn files_but_locks(dir: &Path) -> BTreeMap<PathBuf, (u64, std::time::SystemTime)> {
    let locks = dir.join("locks");
    files(dir).into_iter().filter(|(p, _)| !p.starts_with(&locks)).collect()
}

async fn forget(dir: &Path, snapshot: &Id) {
    LocalBackend::new(dir).delete(&Handle::new(FileType::Snapshot, snapshot.to_hex())).await.unwrap();
}

/// Restores `snapshot` (index loaded afresh) and compares it with `src`.
async fn assert_restores(dir: &Path, snapshot: &Id, src: &Path, target: &Path) {
    let repo = open_loaded(dir, None).await;
    let snap = repo.load_snapshot(snapshot).await.unwrap();
    let ro = RestoreOptions { target: target.to_path_buf(), ..RestoreOptions::default() };
    let s = restore(&repo, &snap, &ro, Arc::new(NoProgress)).await.unwrap();
    assert!(s.warnings.is_empty(), "{:?}", s.warnings);
    common::assert_same_tree(src, &target.join(src.file_name().unwrap()));
}

async fn assert_clean(dir: &Path) -> s3bk::checker::Report {
    let r = verify(
        &open(dir).await,
        &VerifyOptions { read_data: ReadData::All, ..VerifyOptions::default() },
        Arc::new(NoProgress),
    )
    .await
    .unwrap();
    assert!(r.is_clean(), "{:?}", r.problems);
    r
}

/// Two sources in one repository: `a` (the fixture tree) and `b` (noise), one snapshot each.
struct Two {
    tmp: tempfile::TempDir,
    a: Id,
    b: Id,
    /// Packs written by the backup of `b`.
    b_packs: HashSet<Id>,
}

impl Two {
    async fn new(cache: Option<&Path>) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let (src_a, src_b, dir) = (tmp.path().join("a"), tmp.path().join("b"), tmp.path().join("repo"));
        common::make_fixture_tree(&src_a);
        noise(&src_b.join("one.bin"), 1 << 20);
        noise(&src_b.join("sub/two.bin"), 700 << 10);
        let mut repo = new_repo(&dir).await;
        if let Some(c) = cache {
            repo.load_index(Some(c)).await.unwrap();
        }
        let a = backup_of(&repo, &src_a).await;
        let before = ids(&dir, FileType::Pack).await;
        let b = backup_of(&repo, &src_b).await;
        let b_packs: HashSet<Id> = ids(&dir, FileType::Pack).await.difference(&before).copied().collect();
        assert!(b_packs.len() >= 2, "b wrote data and tree packs");
        Self { tmp, a, b, b_packs }
    }

    fn dir(&self) -> PathBuf {
        self.tmp.path().join("repo")
    }

    fn src(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn forget_then_prune_twice_removes_unused_packs_and_keeps_the_rest() {
    let t = Two::new(None).await;
    let dir = t.dir();
    forget(&dir, &t.b).await;
    let packs_before = ids(&dir, FileType::Pack).await;
    let index_before = ids(&dir, FileType::Index).await;

    // Marking deletes nothing.
    let r1 = run_prune(&dir, now_opts()).await;
    assert_eq!(r1.snapshots, 1);
    assert_eq!(r1.marked.packs_unused, t.b_packs.len() as u64, "{r1:?}");
    assert_eq!((r1.marked.packs_repack, r1.marked.packs_unindexed), (0, 0), "{r1:?}");
    assert_eq!(r1.executed.plans_due, 0);
    let plan = r1.marked.plan.expect("a plan is written");
    assert!(ids(&dir, FileType::Pack).await.is_superset(&packs_before));
    assert!(ids(&dir, FileType::Index).await.is_superset(&index_before));
    let plans = load_plans(&open(&dir).await).await.unwrap();
    assert_eq!(plans.len(), 1);
    assert_eq!(plans[0].0, plan);
    let condemned: HashSet<Id> = plans[0].1.packs.iter().map(|p| p.id).collect();
    assert_eq!(condemned, t.b_packs);
    assert_eq!(plans[0].1.index_files.iter().copied().collect::<HashSet<_>>(), index_before);

    // Between the runs the repository is consistent: condemned packs are not "unindexed".
    let v = assert_clean(&dir).await;
    assert!(v.unindexed_packs.is_empty(), "{:?}", v.unindexed_packs);
    assert_eq!(v.condemned_packs.iter().copied().collect::<HashSet<_>>(), t.b_packs);
    assert_eq!(v.superseded_index_files, index_before.len() as u64);

    // The second run executes the plan.
    let r2 = run_prune(&dir, now_opts()).await;
    assert_eq!(r2.executed.plans_due, 1);
    assert_eq!(r2.executed.packs_deleted, t.b_packs.len() as u64, "{r2:?}");
    assert_eq!((r2.executed.packs_kept, r2.executed.packs_recovered), (0, 0));
    assert_eq!(r2.executed.index_files_deleted, index_before.len() as u64);
    assert_eq!(r2.marked.packs_condemned(), 0, "{r2:?}");
    assert!(r2.marked.plan.is_none());
    let packs_after = ids(&dir, FileType::Pack).await;
    assert!(packs_after.is_disjoint(&t.b_packs));
    assert_eq!(packs_after, packs_before.difference(&t.b_packs).copied().collect());
    assert!(ids(&dir, FileType::Index).await.is_disjoint(&index_before));

    assert_restores(&dir, &t.a, &t.src("a"), &t.tmp.path().join("restored")).await;
    let v = assert_clean(&dir).await;
    assert!(v.unindexed_packs.is_empty() && v.condemned_packs.is_empty());
    assert_eq!(v.superseded_index_files, 0);

    // A third run finds nothing and writes nothing (but the lease).
    let before = files_but_locks(&dir);
    let r3 = run_prune(&dir, now_opts()).await;
    assert_eq!((r3.executed.packs_deleted, r3.marked.packs_condemned()), (0, 0), "{r3:?}");
    assert_eq!(files_but_locks(&dir), before);
}

#[tokio::test(flavor = "multi_thread")]
async fn dry_run_writes_nothing_and_reports_the_plan() {
    let t = Two::new(None).await;
    let dir = t.dir();
    forget(&dir, &t.b).await;
    let before = files(&dir);
    let r = run_prune(&dir, dry()).await;
    assert!(r.dry_run);
    assert_eq!(r.marked.packs_unused, t.b_packs.len() as u64);
    assert!(r.marked.bytes_unused > 1 << 20);
    assert!(r.marked.plan.is_none());
    assert_eq!(files(&dir), before, "a dry run wrote something");

    // With a due plan: the dry run says what executing it would delete, and deletes nothing.
    run_prune(&dir, now_opts()).await;
    let before = files(&dir);
    let r = run_prune(&dir, dry()).await;
    assert_eq!((r.executed.plans_due, r.executed.packs_deleted), (1, t.b_packs.len() as u64), "{r:?}");
    assert_eq!(files(&dir), before, "a dry run deleted something");
}

#[tokio::test(flavor = "multi_thread")]
async fn partly_used_pack_is_repacked_and_its_used_blobs_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dir) = (tmp.path().join("src"), tmp.path().join("repo"));
    noise(&src.join("keep.bin"), 600 << 10);
    noise(&src.join("drop.bin"), 300 << 10);
    let repo = new_repo(&dir).await;
    let first = backup_of(&repo, &src).await;
    let data_packs = |repo: &Repository| {
        let mut v = HashSet::new();
        repo.index()
            .for_each(|l| {
                if l.entry.tpe == BlobType::Data {
                    v.insert(l.pack);
                }
                Ok(())
            })
            .unwrap();
        v
    };
    let old = data_packs(&repo);
    assert_eq!(old.len(), 1, "both files share one data pack");
    std::fs::remove_file(src.join("drop.bin")).unwrap();
    let second = backup_of(&repo, &src).await;
    forget(&dir, &first).await;

    // Above 100% nothing is repacked; at the default 5% the data pack is.
    let r = run_prune(&dir, PruneOptions { max_unused: 1.0, ..dry() }).await;
    assert_eq!(r.marked.packs_repack, 0, "{r:?}");
    let r = run_prune(&dir, now_opts()).await;
    assert_eq!(r.marked.packs_repack, 1, "{r:?}");
    assert!(r.marked.bytes_repacked >= 600 << 10 && r.marked.bytes_repacked < 700 << 10, "{r:?}");
    assert_eq!(r.marked.packs_written, 1);
    run_prune(&dir, now_opts()).await;

    let packs = ids(&dir, FileType::Pack).await;
    assert!(packs.is_disjoint(&old), "the repacked pack is gone");
    let repo = open_loaded(&dir, None).await;
    let new = data_packs(&repo);
    assert_eq!(new.len(), 1);
    assert!(packs.is_superset(&new));
    assert_restores(&dir, &second, &src, &tmp.path().join("restored")).await;
    assert_clean(&dir).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn refuses_when_a_used_blob_is_in_no_index_file() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dir) = (tmp.path().join("src"), tmp.path().join("repo"));
    noise(&src.join("f.bin"), 400 << 10);
    let repo = new_repo(&dir).await;
    backup_of(&repo, &src).await;

    // The index file replaced by one that lists only the tree packs: data blobs are missing.
    let index: Vec<Id> = ids(&dir, FileType::Index).await.into_iter().collect();
    assert_eq!(index.len(), 1);
    let mut file = IndexFile::decode(&repo.load_file(FileType::Index, &index[0]).await.unwrap()).unwrap();
    file.packs.retain(|p| p.blobs.iter().all(|b| b.tpe == BlobType::Tree));
    repo.save_file(FileType::Index, &file.encode()).await.unwrap();
    LocalBackend::new(&dir).delete(&Handle::new(FileType::Index, index[0].to_hex())).await.unwrap();
    let before = files_but_locks(&dir);
    let err = prune(&open(&dir).await, &now_opts(), Arc::new(NoProgress)).await.unwrap_err().to_string();
    assert!(err.contains("refused") && err.contains("in no index file"), "{err}");
    assert_eq!(files_but_locks(&dir), before, "a refused prune wrote something");

    // No index file at all: the root tree is missing.
    for id in ids(&dir, FileType::Index).await {
        LocalBackend::new(&dir).delete(&Handle::new(FileType::Index, id.to_hex())).await.unwrap();
    }
    let before = files_but_locks(&dir);
    let err = prune(&open(&dir).await, &now_opts(), Arc::new(NoProgress)).await.unwrap_err().to_string();
    assert!(err.contains("refused") && err.contains("tree"), "{err}");
    assert_eq!(files_but_locks(&dir), before);
}

#[tokio::test(flavor = "multi_thread")]
async fn condemned_pack_used_by_a_later_snapshot_is_recovered() {
    let t = Two::new(None).await;
    let dir = t.dir();
    // A backup that loaded the index before the plan was written.
    let stale = open_loaded(&dir, None).await;
    let b_snapshot = stale.load_snapshot(&t.b).await.unwrap();
    forget(&dir, &t.b).await;
    let r1 = run_prune(&dir, now_opts()).await;
    assert_eq!(r1.marked.packs_unused, t.b_packs.len() as u64);

    // It backs `b` up again: every blob is deduplicated against packs the plan condemns, and
    // the backup's own check (format §11.4) refuses to write the snapshot.
    let before = ids(&dir, FileType::Pack).await;
    let opts = BackupOptions { paths: vec![t.src("b")], ..BackupOptions::default() };
    let refused = backup(&stale, &opts, Arc::new(NoProgress)).await.unwrap_err();
    assert!(matches!(refused, s3bk::error::Error::PruneOverlap(_)), "{refused}");
    assert_eq!(ids(&dir, FileType::Pack).await, before, "the stale backup wrote no pack");
    // A snapshot written anyway (a backup without that check, or one whose clock let it pass)
    // references only blobs in condemned packs.
    let again = stale.save_snapshot(&b_snapshot).await.unwrap();

    let r2 = run_prune(&dir, now_opts()).await;
    assert_eq!(r2.executed.plans_due, 1);
    assert_eq!(r2.executed.packs_recovered, t.b_packs.len() as u64, "{r2:?}");
    assert_eq!(r2.executed.packs_deleted, 0, "{r2:?}");
    assert!(ids(&dir, FileType::Pack).await.is_superset(&t.b_packs));
    assert_restores(&dir, &again, &t.src("b"), &t.tmp.path().join("rb")).await;
    assert_restores(&dir, &t.a, &t.src("a"), &t.tmp.path().join("ra")).await;
    let v = assert_clean(&dir).await;
    assert!(v.unindexed_packs.is_empty(), "{:?}", v.unindexed_packs);

    // Later runs keep them (they are indexed and used).
    let r3 = run_prune(&dir, now_opts()).await;
    assert_eq!(r3.marked.packs_unused, 0, "{r3:?}");
    assert!(ids(&dir, FileType::Pack).await.is_superset(&t.b_packs));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_old_cache_is_rebuilt_after_prune() {
    let cache = tempfile::tempdir().unwrap();
    let t = Two::new(Some(cache.path())).await;
    let dir = t.dir();
    forget(&dir, &t.b).await;

    // After marking: the superseded files are dropped from the cache.
    run_prune(&dir, now_opts()).await;
    let repo = open_loaded(&dir, Some(cache.path())).await;
    let mut packs = HashSet::new();
    repo.index()
        .for_each(|l| {
            packs.insert(l.pack);
            Ok(())
        })
        .unwrap();
    assert!(packs.is_disjoint(&t.b_packs), "the cache still points at condemned packs");
    drop(repo);

    // After executing: every location is in a stored pack, and `a` restores through the cache.
    run_prune(&dir, now_opts()).await;
    let repo = open_loaded(&dir, Some(cache.path())).await;
    let stored = ids(&dir, FileType::Pack).await;
    let mut n = 0;
    repo.index()
        .for_each(|l| {
            assert!(stored.contains(&l.pack), "blob {} points at deleted pack {}", l.entry.id, l.pack);
            n += 1;
            Ok(())
        })
        .unwrap();
    assert!(n > 0);
    let snap = repo.load_snapshot(&t.a).await.unwrap();
    let target = t.tmp.path().join("restored");
    let ro = RestoreOptions { target: target.clone(), ..RestoreOptions::default() };
    restore(&repo, &snap, &ro, Arc::new(NoProgress)).await.unwrap();
    common::assert_same_tree(&t.src("a"), &target.join("a"));
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_ignores_superseded_index_files() {
    let t = Two::new(None).await;
    let dir = t.dir();
    forget(&dir, &t.b).await;
    // A grace long enough that the plan stays pending; its index files must be older than the
    // young-file margin (half the grace) to be superseded.
    let pending = PruneOptions { grace: Duration::from_secs(20), ..PruneOptions::default() };
    tokio::time::sleep(Duration::from_secs(11)).await;
    run_prune(&dir, pending.clone()).await;
    // A prune that stopped after deleting the packs, before the superseded index files: those
    // still list the deleted packs, but the live files do not.
    for p in &t.b_packs {
        LocalBackend::new(&dir).delete(&Handle::new(FileType::Pack, p.to_hex())).await.unwrap();
    }
    let v = assert_clean(&dir).await;
    assert!(v.superseded_index_files > 0);
    assert!(v.condemned_packs.is_empty() && v.unindexed_packs.is_empty());
    // The plan is not due: prune keeps it and condemns nothing new.
    let r = run_prune(&dir, pending).await;
    assert_eq!((r.executed.plans_due, r.executed.plans_pending), (0, 1));
    assert_eq!(r.marked.packs_condemned(), 0, "{r:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_held_lease_stops_prune_but_not_a_dry_run() {
    let t = Two::new(None).await;
    let dir = t.dir();
    forget(&dir, &t.b).await;
    let holder = open(&dir).await;
    let lease = s3bk::lease::Lease::acquire(&holder, "test").await.unwrap();
    let before = ids(&dir, FileType::Deletion).await;
    let err = prune(&open(&dir).await, &now_opts(), Arc::new(NoProgress)).await.unwrap_err();
    assert!(matches!(err, s3bk::error::Error::Locked(_)), "{err}");
    assert_eq!(ids(&dir, FileType::Deletion).await, before);
    let r = run_prune(&dir, dry()).await;
    assert_eq!(r.marked.packs_unused, t.b_packs.len() as u64);
    lease.release().await.unwrap();
    assert!(run_prune(&dir, now_opts()).await.marked.plan.is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn index_files_written_just_before_a_prune_are_left_alone() {
    // A backup's index files may precede its snapshot by a moment; a prune whose snapshot list
    // fell in between must keep their packs indexed (format §11.3, young index files).
    let t = Two::new(None).await;
    let dir = t.dir();
    forget(&dir, &t.b).await;
    let before = ids(&dir, FileType::Index).await;
    let r = run_prune(&dir, PruneOptions::default()).await;
    assert_eq!(r.marked.packs_condemned(), 0, "{r:?}");
    assert_eq!(r.marked.index_files_superseded, 0, "{r:?}");
    assert_eq!(ids(&dir, FileType::Index).await, before, "nothing written");
}
