//! The scripted race of format §11.4: a backup loads the index, a prune then marks a pack the
//! backup reuses, and the backup must not write a snapshot that relies on it once the plan is
//! (nearly) due. Plans far from due, and plans seen when the index was loaded, do not stop it.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use s3bk::archiver::{BackupOptions, backup};
use s3bk::backend::{Backend, FileType, LocalBackend};
use s3bk::error::Error;
use s3bk::id::Id;
use s3bk::progress::NoProgress;
use s3bk::repo::{Repository, Secret};
use serde::Serialize;

#[derive(Serialize)]
struct Plan {
    created: u64,
    not_before: u64,
    packs: Vec<PlanPack>,
    index_files: Vec<Id>,
}

#[derive(Serialize)]
struct PlanPack {
    id: Id,
    size: u64,
}

async fn open(dir: &Path) -> Repository {
    let be: Arc<dyn Backend> = Arc::new(LocalBackend::new(dir));
    let mut repo = Repository::open(be, &Secret::passphrase("pw")).await.unwrap();
    repo.load_index(None).await.unwrap();
    repo
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// Marks every data pack for deletion with a grace of `grace` seconds.
async fn mark_all_packs(repo: &Repository, grace: u64) {
    let packs = repo.backend().list(FileType::Pack).await.unwrap();
    let plan = Plan {
        created: now(),
        not_before: now() + grace,
        packs: packs.iter().map(|f| PlanPack { id: f.handle.name.parse().unwrap(), size: f.size }).collect(),
        index_files: vec![],
    };
    repo.save_file(FileType::Deletion, &s3bk::codec::to_cbor(&plan)).await.unwrap();
}

async fn snapshot_count(repo: &Repository) -> usize {
    repo.backend().list(FileType::Snapshot).await.unwrap().len()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backup_never_writes_a_snapshot_relying_on_a_pack_a_prune_marked_meanwhile() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("report.txt"), "quarterly figures ".repeat(5000)).unwrap();
    let dir = tmp.path().join("repo");
    let be: Arc<dyn Backend> = Arc::new(LocalBackend::new(&dir));
    let mut repo = Repository::init(be, &Secret::passphrase("pw"), &common::cheap_init()).await.unwrap();
    repo.load_index(None).await.unwrap();
    let opts = BackupOptions { paths: vec![src.clone()], ..BackupOptions::default() };
    backup(&repo, &opts, Arc::new(NoProgress)).await.unwrap();

    // A day's grace, marked after this backup loaded its index: harmless.
    let backup_view = open(&dir).await;
    mark_all_packs(&repo, 24 * 3600).await;
    backup(&backup_view, &opts, Arc::new(NoProgress)).await.expect("a plan due in a day cannot hurt this backup");
    assert_eq!(snapshot_count(&repo).await, 2);

    // No grace: the backup reuses the marked packs (unchanged file), so it must stop.
    let backup_view = open(&dir).await;
    mark_all_packs(&repo, 0).await;
    let err = backup(&backup_view, &opts, Arc::new(NoProgress)).await.unwrap_err();
    assert!(matches!(err, Error::PruneOverlap(_)), "{err}");
    assert!(err.to_string().contains("Run the backup again"), "{err}");
    assert_eq!(snapshot_count(&repo).await, 2, "no snapshot may be written");

    // New content in new packs only: nothing marked is relied on.
    let other = tmp.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("fresh.txt"), "nothing like the quarterly figures").unwrap();
    let backup_view = open(&dir).await;
    mark_all_packs(&repo, 0).await;
    let fresh = BackupOptions { paths: vec![other], ..BackupOptions::default() };
    backup(&backup_view, &fresh, Arc::new(NoProgress)).await.expect("relies on no marked pack");

    // Plans present when the index was loaded are trusted (prune wrote its index first).
    let backup_view = open(&dir).await;
    backup(&backup_view, &opts, Arc::new(NoProgress)).await.expect("plans seen at load are not re-checked");
}
