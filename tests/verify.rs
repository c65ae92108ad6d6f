//! Tests of `verify` on local repositories made by real backups: a clean repository has no
//! problems; each kind of damage (flipped byte or truncation of a pack, a deleted pack, a
//! flipped byte in, truncation or deletion of an index file, a flipped byte in or truncation of
//! a snapshot file, a deleted tree pack, conflicting
//! index entries, a header that disagrees with the index) is reported, naming the damaged
//! object; read-data slices together read every pack exactly once.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use s3bk::archiver::{BackupOptions, backup};
use s3bk::backend::{Backend, BackendError, FileInfo, FileType, Handle, LocalBackend, PutMode};
use s3bk::checker::{Problem, ReadData, Report, Subset, VerifyOptions, verify};
use s3bk::id::Id;
use s3bk::index::{IndexFile, IndexPack};
use s3bk::pack::{BlobType, PackBuilder};
use s3bk::progress::NoProgress;
use s3bk::repo::{Repository, Secret};

use common::cheap_init as test_init;

/// A repository under `<tmp>/repo` holding one backup of the common fixture tree plus 2 MiB of
/// noise (so there are several data packs and a tree pack). Returns its folder.
async fn fixture_repo(tmp: &Path) -> PathBuf {
    let src = tmp.join("src");
    common::make_fixture_tree(&src);
    let mut noise = vec![0u8; 2 << 20];
    rand::fill(&mut noise[..]);
    std::fs::write(src.join("noise.bin"), &noise).unwrap();
    let dir = tmp.join("repo");
    let be: Arc<dyn Backend> = Arc::new(LocalBackend::new(&dir));
    let mut repo = Repository::init(be, &Secret::passphrase("pw"), &test_init()).await.unwrap();
    repo.load_index(None).await.unwrap();
    let opts = BackupOptions { paths: vec![src], ..BackupOptions::default() };
    let r = backup(&repo, &opts, Arc::new(NoProgress)).await.unwrap();
    assert!(r.id.is_some() && !r.snapshot.incomplete);
    dir
}

async fn open_with(backend: Arc<dyn Backend>) -> Repository {
    Repository::open(backend, &Secret::passphrase("pw")).await.unwrap()
}

async fn open(dir: &Path) -> Repository {
    open_with(Arc::new(LocalBackend::new(dir))).await
}

async fn check(dir: &Path, read_data: ReadData) -> Report {
    let repo = open(dir).await;
    verify(&repo, &VerifyOptions { read_data, ..VerifyOptions::default() }, Arc::new(NoProgress))
        .await
        .expect("verify runs")
}

/// Every object of `tpe` with its size, in name order.
async fn objects(dir: &Path, tpe: FileType) -> Vec<(Id, u64)> {
    let mut v: Vec<(Id, u64)> = LocalBackend::new(dir)
        .list(tpe)
        .await
        .unwrap()
        .into_iter()
        .map(|f| (f.handle.name.parse().unwrap(), f.size))
        .collect();
    v.sort();
    v
}

fn file(dir: &Path, tpe: FileType, id: &Id) -> PathBuf {
    dir.join(Handle::new(tpe, id.to_hex()).path())
}

fn flip_byte(path: &Path, at: usize) {
    let mut data = std::fs::read(path).unwrap();
    data[at] ^= 0x20;
    // Stored objects may be read-only: replace rather than write in place.
    std::fs::remove_file(path).unwrap();
    std::fs::write(path, data).unwrap();
}

/// Packs holding tree blobs, and packs holding data blobs.
async fn packs_by_type(dir: &Path) -> (Vec<Id>, Vec<Id>) {
    let mut repo = open(dir).await;
    repo.load_index(None).await.unwrap();
    let (mut trees, mut data) = (Vec::new(), Vec::new());
    repo.index()
        .for_each(|loc| {
            let v = if loc.entry.tpe == BlobType::Tree { &mut trees } else { &mut data };
            if !v.contains(&loc.pack) {
                v.push(loc.pack);
            }
            Ok(())
        })
        .unwrap();
    (trees, data)
}

/// Whether some problem's message names `id` (full hex).
fn names(r: &Report, id: &Id) -> bool {
    r.problems.iter().any(|p| p.to_string().contains(&id.to_hex()))
}

#[tokio::test(flavor = "multi_thread")]
async fn clean_repository_has_no_problems() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = fixture_repo(tmp.path()).await;
    let packs = objects(&dir, FileType::Pack).await;
    let r = check(&dir, ReadData::None).await;
    assert!(r.is_clean(), "{:?}", r.problems);
    assert_eq!((r.snapshots, r.index_files, r.packs), (1, 1, packs.len() as u64));
    // Root, src, dir, dir/sub, dir/sub/deeper, empty-dir.
    assert_eq!(r.trees, 6, "{r:?}");
    assert!(r.unindexed_packs.is_empty());
    assert_eq!(r.packs_read, 0);

    // The library's future can run on any worker (tokio::spawn).
    fn assert_send<T: Send>(t: T) -> T {
        t
    }
    let repo = open(&dir).await;
    let r = assert_send(verify(
        &repo,
        &VerifyOptions { read_data: ReadData::All, ..VerifyOptions::default() },
        Arc::new(NoProgress),
    ))
    .await
    .unwrap();
    assert!(r.is_clean(), "{:?}", r.problems);
    assert_eq!(r.packs_read, packs.len() as u64);
    assert_eq!(r.bytes_read, packs.iter().map(|(_, s)| s).sum::<u64>());
    assert_eq!(r.blobs_read, r.blobs, "every indexed blob decoded once");
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["problems"], serde_json::json!([]));
}

#[tokio::test(flavor = "multi_thread")]
async fn flipped_byte_in_a_pack_is_found_by_reading() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = fixture_repo(tmp.path()).await;
    let packs = objects(&dir, FileType::Pack).await;
    let (id, size) = packs[rand::random_range(0..packs.len())];
    flip_byte(&file(&dir, FileType::Pack, &id), rand::random_range(0..size as usize));
    let r = check(&dir, ReadData::All).await;
    assert!(r.problems.iter().any(|p| matches!(p, Problem::PackHashMismatch { pack, .. } if *pack == id)), "{r:?}");
    // The flip lies in a blob (named), in the header, or in its length field.
    assert!(
        r.problems.iter().any(|p| matches!(p,
            Problem::BlobCorrupt { pack, .. } | Problem::PackHeaderUnreadable { pack, .. } if *pack == id)),
        "{r:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn truncated_pack_is_found_from_the_listing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = fixture_repo(tmp.path()).await;
    let (_, data_packs) = packs_by_type(&dir).await;
    let id = data_packs[0];
    let path = file(&dir, FileType::Pack, &id);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();

    let r = check(&dir, ReadData::None).await;
    assert!(
        r.problems.iter().any(|p| matches!(p, Problem::PackTooSmall { pack, size, expected }
            if *pack == id && *size + 100 == *expected)),
        "{r:?}"
    );
    let r = check(&dir, ReadData::All).await;
    assert!(r.problems.iter().any(|p| matches!(p, Problem::PackHashMismatch { pack, .. } if *pack == id)), "{r:?}");
    assert!(r.problems.iter().any(|p| matches!(p, Problem::PackHeaderUnreadable { pack, .. } if *pack == id)), "{r:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn deleted_data_pack_is_missing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = fixture_repo(tmp.path()).await;
    let (_, data_packs) = packs_by_type(&dir).await;
    let id = data_packs[data_packs.len() / 2];
    std::fs::remove_file(file(&dir, FileType::Pack, &id)).unwrap();
    let r = check(&dir, ReadData::None).await;
    assert!(r.problems.iter().any(|p| matches!(p, Problem::PackMissing { pack, blobs } if *pack == id && *blobs > 0)));
    // Reading the others finds nothing more.
    let all = check(&dir, ReadData::All).await;
    assert_eq!(all.problems, r.problems);
    assert_eq!(all.packs_read, all.packs - 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn deleted_tree_pack_makes_trees_unreadable() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = fixture_repo(tmp.path()).await;
    let (tree_packs, _) = packs_by_type(&dir).await;
    assert_eq!(tree_packs.len(), 1);
    let id = tree_packs[0];
    std::fs::remove_file(file(&dir, FileType::Pack, &id)).unwrap();
    let r = check(&dir, ReadData::None).await;
    assert!(r.problems.iter().any(|p| matches!(p, Problem::PackMissing { pack, .. } if *pack == id)), "{r:?}");
    let root = open(&dir).await.snapshots().await.unwrap()[0].snapshot.tree;
    assert!(
        r.problems
            .iter()
            .any(|p| matches!(p, Problem::TreeUnreadable { tree, pack, .. } if *tree == root && *pack == id)),
        "{r:?}"
    );
    assert_eq!(r.trees, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn flipped_byte_in_an_index_file_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = fixture_repo(tmp.path()).await;
    let [(id, size)] = objects(&dir, FileType::Index).await[..] else { panic!("one index file") };
    flip_byte(&file(&dir, FileType::Index, &id), size as usize / 2);
    let r = check(&dir, ReadData::None).await;
    assert!(r.problems.iter().any(|p| matches!(p, Problem::IndexUnreadable { index, .. } if *index == id)), "{r:?}");
    // With its only index file unreadable, the snapshot's root tree is not indexed.
    assert!(r.problems.iter().any(|p| matches!(p, Problem::TreeMissing { .. })), "{r:?}");
    assert_eq!(r.unindexed_packs.len(), objects(&dir, FileType::Pack).await.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn deleted_index_file_leaves_blobs_missing_and_packs_unindexed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = fixture_repo(tmp.path()).await;
    // A second backup with a new file and its own index file; that one is deleted.
    let src = tmp.path().join("src");
    std::fs::write(src.join("dir/new.txt"), b"written after the first backup".repeat(1000)).unwrap();
    let mut repo = open(&dir).await;
    repo.load_index(None).await.unwrap();
    let before = objects(&dir, FileType::Index).await;
    backup(&repo, &BackupOptions { paths: vec![src], ..BackupOptions::default() }, Arc::new(NoProgress)).await.unwrap();
    let after = objects(&dir, FileType::Index).await;
    let [(second, _)] = after.iter().filter(|f| !before.contains(f)).copied().collect::<Vec<_>>()[..] else {
        panic!("the second backup wrote one index file")
    };
    let described = IndexFile::decode(&repo.load_file(FileType::Index, &second).await.unwrap()).unwrap();
    std::fs::remove_file(file(&dir, FileType::Index, &second)).unwrap();

    let r = check(&dir, ReadData::None).await;
    assert_eq!(r.snapshots, 2);
    assert!(!r.is_clean());
    // The second snapshot's new trees (root, src, dir) are no longer indexed, and the packs the
    // lost index file described are reported as unindexed, by name.
    assert!(r.problems.iter().any(|p| matches!(p, Problem::TreeMissing { .. })), "{r:?}");
    assert!(!described.packs.is_empty());
    for p in &described.packs {
        assert!(r.unindexed_packs.contains(&p.id), "{} not reported unindexed: {r:?}", p.id);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn deleted_index_file_reports_the_data_blobs_files_use() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = fixture_repo(tmp.path()).await;
    // An index file listing only the tree pack, then the original one removed: the trees load,
    // and every data blob a file uses is reported missing.
    let (tree_packs, _) = packs_by_type(&dir).await;
    let mut repo = open(&dir).await;
    repo.load_index(None).await.unwrap();
    let [(original, _)] = objects(&dir, FileType::Index).await[..] else { panic!("one index file") };
    let file_content = IndexFile::decode(&repo.load_file(FileType::Index, &original).await.unwrap()).unwrap();
    let trees_only: Vec<IndexPack> = file_content.packs.into_iter().filter(|p| tree_packs.contains(&p.id)).collect();
    repo.save_index(trees_only).await.unwrap();
    std::fs::remove_file(file(&dir, FileType::Index, &original)).unwrap();

    let r = check(&dir, ReadData::All).await;
    assert_eq!(r.trees, 6);
    let missing: Vec<&Problem> = r.problems.iter().filter(|p| matches!(p, Problem::BlobMissing { .. })).collect();
    assert!(!missing.is_empty(), "{r:?}");
    assert_eq!(missing.len(), r.problems.len(), "only blobs are missing: {r:?}");
    assert!(missing.iter().any(|p| p.to_string().contains(":/src/dir/big.bin")), "{missing:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn flipped_byte_in_a_snapshot_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = fixture_repo(tmp.path()).await;
    let [(id, size)] = objects(&dir, FileType::Snapshot).await[..] else { panic!("one snapshot") };
    flip_byte(&file(&dir, FileType::Snapshot, &id), size as usize - 1);
    let r = check(&dir, ReadData::None).await;
    assert!(
        r.problems.iter().any(|p| matches!(p, Problem::SnapshotUnreadable { snapshot, .. } if *snapshot == id)),
        "{r:?}"
    );
    assert!(names(&r, &id));
    assert_eq!((r.snapshots, r.trees), (0, 0));
}

/// Cuts the object at `path` to `len` bytes (replaced, as stored objects may be read-only).
fn truncate(path: &Path, len: usize) {
    let data = std::fs::read(path).unwrap();
    std::fs::remove_file(path).unwrap();
    std::fs::write(path, &data[..len]).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn truncated_index_file_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = fixture_repo(tmp.path()).await;
    let [(id, size)] = objects(&dir, FileType::Index).await[..] else { panic!("one index file") };
    truncate(&file(&dir, FileType::Index, &id), size as usize - 7);
    let r = check(&dir, ReadData::None).await;
    assert!(r.problems.iter().any(|p| matches!(p, Problem::IndexUnreadable { index, .. } if *index == id)), "{r:?}");
    assert!(r.problems.iter().any(|p| matches!(p, Problem::TreeMissing { .. })), "{r:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn truncated_snapshot_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = fixture_repo(tmp.path()).await;
    let [(id, size)] = objects(&dir, FileType::Snapshot).await[..] else { panic!("one snapshot") };
    truncate(&file(&dir, FileType::Snapshot, &id), size as usize / 2);
    let r = check(&dir, ReadData::None).await;
    assert!(
        r.problems.iter().any(|p| matches!(p, Problem::SnapshotUnreadable { snapshot, .. } if *snapshot == id)),
        "{r:?}"
    );
    assert_eq!((r.snapshots, r.trees), (0, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn copies_in_other_packs_are_fine_but_conflicts_and_wrong_headers_are_not() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = fixture_repo(tmp.path()).await;
    let mut repo = open(&dir).await;
    repo.load_index(None).await.unwrap();
    let mut data_blobs = Vec::new();
    repo.index()
        .for_each(|loc| {
            if loc.entry.tpe == BlobType::Data {
                data_blobs.push(loc);
            }
            Ok(())
        })
        .unwrap();
    let loc = data_blobs[0];
    let plain = repo.load_blob(&loc.entry.id).await.unwrap();
    let make_pack = || {
        let mut b = PackBuilder::new(BlobType::Data, 0);
        b.add(loc.entry.id, plain.len() as u32, false, &repo.keys().seal(&plain));
        b.finish(repo.keys())
    };

    // The same blob stored again in another pack (two concurrent writers): fine.
    let copy = make_pack();
    repo.put_new(&Handle::new(FileType::Pack, copy.id.to_hex()), copy.data.clone()).await.unwrap();
    repo.save_index(vec![IndexPack { id: copy.id, blobs: copy.entries.clone() }]).await.unwrap();
    let r = check(&dir, ReadData::All).await;
    assert!(r.is_clean(), "{:?}", r.problems);
    assert_eq!(r.index_files, 2);

    // The same pack listed again with other blob facts: a conflict.
    let mut wrong = copy.entries.clone();
    wrong[0].raw_len += 1;
    let conflicting = repo.save_index(vec![IndexPack { id: copy.id, blobs: wrong.clone() }]).await.unwrap()[0];
    let r = check(&dir, ReadData::None).await;
    assert!(
        r.problems.iter().any(|p| matches!(p, Problem::IndexConflict { pack, first, second }
            if *pack == copy.id && (*first == conflicting || *second == conflicting))),
        "{r:?}"
    );
    std::fs::remove_file(file(&dir, FileType::Index, &conflicting)).unwrap();

    // A pack whose only index entry disagrees with its header: found by reading.
    let other = make_pack();
    assert_ne!(other.id, copy.id, "fresh nonces");
    repo.put_new(&Handle::new(FileType::Pack, other.id.to_hex()), other.data.clone()).await.unwrap();
    let mut wrong = other.entries.clone();
    wrong[0].raw_len += 1;
    repo.save_index(vec![IndexPack { id: other.id, blobs: wrong }]).await.unwrap();
    assert!(check(&dir, ReadData::None).await.is_clean());
    let r = check(&dir, ReadData::All).await;
    assert!(r.problems.iter().any(|p| matches!(p, Problem::PackHeaderMismatch { pack, .. } if *pack == other.id)));
}

/// A local backend that counts whole-object reads of packs.
#[derive(Debug)]
struct Counting {
    inner: LocalBackend,
    pack_reads: Mutex<HashMap<String, u32>>,
}

#[async_trait]
impl Backend for Counting {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn connections(&self) -> usize {
        self.inner.connections()
    }
    async fn create(&self) -> Result<(), BackendError> {
        self.inner.create().await
    }
    async fn put(&self, h: &Handle, data: Bytes, mode: PutMode) -> Result<(), BackendError> {
        self.inner.put(h, data, mode).await
    }
    async fn get(&self, h: &Handle, range: Option<Range<u64>>) -> Result<Bytes, BackendError> {
        if h.tpe == FileType::Pack && range.is_none() {
            *self.pack_reads.lock().unwrap().entry(h.name.clone()).or_default() += 1;
        }
        self.inner.get(h, range).await
    }
    async fn stat(&self, h: &Handle) -> Result<FileInfo, BackendError> {
        self.inner.stat(h).await
    }
    async fn list(&self, tpe: FileType) -> Result<Vec<FileInfo>, BackendError> {
        self.inner.list(tpe).await
    }
    async fn delete(&self, h: &Handle) -> Result<(), BackendError> {
        self.inner.delete(h).await
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn slices_read_every_pack_exactly_once() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = fixture_repo(tmp.path()).await;
    let packs = objects(&dir, FileType::Pack).await;
    assert!(packs.len() >= 4, "the fixture should make at least 4 packs, made {}", packs.len());
    let counting = Arc::new(Counting { inner: LocalBackend::new(&dir), pack_reads: Mutex::default() });
    let repo = open_with(counting.clone()).await;
    let mut read = 0;
    for n in 1..=4 {
        let opts = VerifyOptions { read_data: ReadData::Subset(Subset::Slice { n, t: 4 }), ..VerifyOptions::default() };
        let r = verify(&repo, &opts, Arc::new(NoProgress)).await.unwrap();
        assert!(r.is_clean(), "{:?}", r.problems);
        read += r.packs_read;
    }
    let reads: BTreeMap<String, u32> = counting.pack_reads.lock().unwrap().clone().into_iter().collect();
    let expected: BTreeMap<String, u32> = packs.iter().map(|(id, _)| (id.to_hex(), 1)).collect();
    assert_eq!(reads, expected);
    assert_eq!(read, packs.len() as u64);

    // 100% reads everything; a small percentage reads a part.
    counting.pack_reads.lock().unwrap().clear();
    let all = VerifyOptions { read_data: ReadData::Subset("100%".parse().unwrap()), ..VerifyOptions::default() };
    assert_eq!(verify(&repo, &all, Arc::new(NoProgress)).await.unwrap().packs_read, packs.len() as u64);
    let some = VerifyOptions { read_data: ReadData::Subset("1%".parse().unwrap()), ..VerifyOptions::default() };
    assert!(verify(&repo, &some, Arc::new(NoProgress)).await.unwrap().packs_read < packs.len() as u64);
}
