//! End-to-end tests of the library: backup, restore, change detection, browse, hostile input.

mod common;

use std::path::Path;
use std::sync::Arc;

use s3bk::archiver::{BackupOptions, ParentChoice, backup};
use s3bk::backend::{Backend, LocalBackend};
use s3bk::progress::NoProgress;
use s3bk::repo::{Repository, Secret};
use s3bk::restorer::{Overwrite, RestoreOptions, restore};
use s3bk::tree::NodeKind;

use common::cheap_init as test_init;

async fn new_repo(dir: &Path) -> Repository {
    let be: Arc<dyn Backend> = Arc::new(LocalBackend::new(dir));
    let mut repo = Repository::init(be, &Secret::passphrase("pw"), &test_init()).await.unwrap();
    repo.load_index(None).await.unwrap();
    repo
}

async fn reopen(dir: &Path, cache: &Path) -> Repository {
    let be: Arc<dyn Backend> = Arc::new(LocalBackend::new(dir));
    let mut repo = Repository::open(be, &Secret::passphrase("pw")).await.unwrap();
    repo.load_index(Some(cache)).await.unwrap();
    repo
}

fn opts(path: &Path) -> BackupOptions {
    BackupOptions { paths: vec![path.to_path_buf()], ..BackupOptions::default() }
}

#[tokio::test(flavor = "multi_thread")]
async fn round_trip_keeps_every_byte_and_attribute() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    common::make_fixture_tree(&src);
    let repo = new_repo(&tmp.path().join("repo")).await;
    let r = backup(&repo, &opts(&src), Arc::new(NoProgress)).await.unwrap();
    assert!(r.id.is_some());
    assert!(!r.snapshot.incomplete, "skipped: {:?}", r.snapshot.summary.skipped);
    assert!(r.snapshot.summary.bytes_read < 20 << 20, "holes were read as data: {}", r.snapshot.summary.bytes_read);

    let repo = reopen(&tmp.path().join("repo"), &tmp.path().join("cache")).await;
    let snap = repo.load_snapshot(&r.id.unwrap()).await.unwrap();
    let target = tmp.path().join("restore");
    let ro = RestoreOptions { target: target.clone(), owner: true, ..RestoreOptions::default() };
    let s = restore(&repo, &snap, &ro, Arc::new(NoProgress)).await.unwrap();
    assert!(s.warnings.is_empty(), "{:?}", s.warnings);
    common::assert_same_tree(&src, &target.join("src"));
}

#[tokio::test(flavor = "multi_thread")]
async fn unchanged_rebackup_reads_nothing_and_changes_are_found() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    common::make_fixture_tree(&src);
    let repo_dir = tmp.path().join("repo");
    new_repo(&repo_dir).await;
    let cache = tmp.path().join("cache");
    let repo = reopen(&repo_dir, &cache).await;
    let first = backup(&repo, &opts(&src), Arc::new(NoProgress)).await.unwrap();
    assert!(first.snapshot.summary.bytes_read > 0);

    let repo = reopen(&repo_dir, &cache).await;
    let second = backup(&repo, &opts(&src), Arc::new(NoProgress)).await.unwrap();
    let s = &second.snapshot.summary;
    assert_eq!(s.bytes_read, 0, "{s:?}");
    assert_eq!(s.files_new + s.files_changed, 0);
    assert_eq!(s.blobs_added, 0, "an unchanged tree adds nothing");
    assert_eq!(second.snapshot.tree, first.snapshot.tree);
    assert_eq!(second.snapshot.parent, first.id);

    std::fs::write(src.join("hello.txt"), b"changed!").unwrap();
    let third = backup(&repo, &opts(&src), Arc::new(NoProgress)).await.unwrap();
    // hello.txt has a hard link, so both names changed.
    assert_eq!(third.snapshot.summary.files_changed, 2);
    assert_eq!(third.snapshot.summary.bytes_read, 16);
    let d = s3bk::browse::diff(&repo, &second.snapshot.tree, &third.snapshot.tree).await.unwrap();
    assert!(d.iter().any(|(p, c)| p == b"src/hello.txt" && *c == s3bk::browse::Change::Modified), "{d:?}");

    let forced = BackupOptions { parent: ParentChoice::None, ..opts(&src) };
    let fourth = backup(&repo, &forced, Arc::new(NoProgress)).await.unwrap();
    assert!(fourth.snapshot.summary.bytes_read > 3 << 20);
    assert_eq!(fourth.snapshot.summary.blobs_added, 0, "rehash finds everything stored");
}

#[tokio::test(flavor = "multi_thread")]
async fn excludes_and_opt_out_markers_leave_entries_out() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("keep/cache")).unwrap();
    std::fs::create_dir_all(src.join("private")).unwrap();
    std::fs::write(src.join("keep/a.txt"), b"a").unwrap();
    std::fs::write(src.join("keep/b.tmp"), b"b").unwrap();
    std::fs::write(src.join("keep/cache/c"), b"c").unwrap();
    std::fs::write(src.join("private/.nobackup"), b"").unwrap();
    std::fs::write(src.join("private/secret"), b"s").unwrap();
    let repo = new_repo(&tmp.path().join("repo")).await;
    let o = BackupOptions {
        excludes: vec!["*.tmp".into(), "**/keep/cache".into()],
        exclude_if_present: vec![".nobackup".into()],
        ..opts(&src)
    };
    let r = backup(&repo, &o, Arc::new(NoProgress)).await.unwrap();
    let names: Vec<String> = s3bk::browse::walk(&repo, &r.snapshot.tree, b"")
        .await
        .unwrap()
        .into_iter()
        .map(|e| String::from_utf8(e.path).unwrap())
        .collect();
    assert_eq!(names, ["src", "src/keep", "src/keep/a.txt"]);

    let missing = BackupOptions { paths: vec![src.join("does-not-exist")], ..BackupOptions::default() };
    assert!(backup(&repo, &missing, Arc::new(NoProgress)).await.is_err(), "a missing source path is an error");
}

#[tokio::test(flavor = "multi_thread")]
async fn restore_filters_and_overwrite_policies() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    common::make_fixture_tree(&src);
    let repo = new_repo(&tmp.path().join("repo")).await;
    let r = backup(&repo, &opts(&src), Arc::new(NoProgress)).await.unwrap();
    let target = tmp.path().join("t");
    let only =
        RestoreOptions { target: target.clone(), includes: vec!["src/dir/sub/**".into()], ..RestoreOptions::default() };
    restore(&repo, &r.snapshot, &only, Arc::new(NoProgress)).await.unwrap();
    assert!(target.join("src/dir/sub/deeper/note.md").exists());
    assert!(!target.join("src/hello.txt").exists());
    assert!(!target.join("src/dir/big.bin").exists());

    let all = RestoreOptions { target: target.clone(), owner: true, ..RestoreOptions::default() };
    let first = restore(&repo, &r.snapshot, &all, Arc::new(NoProgress)).await.unwrap();
    // note.md was already there from the include-only restore.
    assert_eq!((first.files_restored, first.files_skipped), (6, 1), "{first:?}");
    // A second restore finds everything in place and rewrites nothing.
    let again = restore(&repo, &r.snapshot, &all, Arc::new(NoProgress)).await.unwrap();
    assert_eq!(again.bytes_written, 0, "{again:?}");
    assert_eq!((again.files_restored, again.files_skipped), (0, 7), "{again:?}");
    std::fs::write(target.join("src/hello.txt"), b"local edit").unwrap();
    let never = RestoreOptions { overwrite: Overwrite::Never, ..all.clone() };
    restore(&repo, &r.snapshot, &never, Arc::new(NoProgress)).await.unwrap();
    assert_eq!(std::fs::read(target.join("src/hello.txt")).unwrap(), b"local edit");
    restore(&repo, &r.snapshot, &all, Arc::new(NoProgress)).await.unwrap();
    common::assert_same_tree(&src, &target.join("src"));

    let entries = s3bk::browse::walk(&repo, &r.snapshot.tree, b"src/dir").await.unwrap();
    assert!(entries.iter().any(|e| e.path == b"src/dir/big.bin" && e.node.kind == NodeKind::File));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_blob_many_files_share_is_restored_into_each() {
    // a, b and c hold the same chunks: stored once, written into each of the three by the restore.
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let block: Vec<u8> = (0..200_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8).collect();
    let text = b"compressible line of a report\n".repeat(6000);
    for name in ["a", "b", "c"] {
        std::fs::write(src.join(name), &block).unwrap();
    }
    std::fs::write(src.join("text"), &text).unwrap();
    // Text and noise, twice over in one file: its second half repeats chunks of its first.
    std::fs::write(src.join("mixed"), [&text[..], &block[..], &text[..], &block[..]].concat()).unwrap();
    let repo = new_repo(&tmp.path().join("repo")).await;
    let r = backup(&repo, &opts(&src), Arc::new(NoProgress)).await.unwrap();
    let sum = &r.snapshot.summary;
    assert!(sum.bytes_added + block.len() as u64 <= sum.bytes_read, "a, b and c share their blobs: {sum:?}");

    let target = tmp.path().join("t");
    let ro = RestoreOptions { target: target.clone(), ..RestoreOptions::default() };
    let s = restore(&repo, &r.snapshot, &ro, Arc::new(NoProgress)).await.unwrap();
    assert_eq!(s.files_restored, 5, "{s:?}");
    common::assert_same_tree(&src, &target.join("src"));
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_password_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    new_repo(&tmp.path().join("repo")).await;
    let be: Arc<dyn Backend> = Arc::new(LocalBackend::new(tmp.path().join("repo")));
    let err = Repository::open(be, &Secret::passphrase("nope")).await.unwrap_err();
    assert!(matches!(err, s3bk::error::Error::WrongKey(1)), "{err}");
    let be: Arc<dyn Backend> = Arc::new(LocalBackend::new(tmp.path().join("nothing")));
    let err = Repository::open(be, &Secret::passphrase("pw")).await.unwrap_err();
    assert!(matches!(err, s3bk::error::Error::NoRepository(_)), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn restore_keeps_few_files_open() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..600 {
        std::fs::write(src.join(format!("f{i:03}")), format!("small file number {i}\n").repeat(20)).unwrap();
    }
    let repo = new_repo(&tmp.path().join("repo")).await;
    let r = backup(&repo, &opts(&src), Arc::new(NoProgress)).await.unwrap();
    // All 600 files share one pack: a restore that opened every target file of a pack at once
    // would run out of descriptors here (nextest runs each test in its own process).
    use rustix::process::{Resource, getrlimit, setrlimit};
    let saved = getrlimit(Resource::Nofile);
    setrlimit(Resource::Nofile, rustix::process::Rlimit { current: Some(128), maximum: saved.maximum }).unwrap();
    let target = tmp.path().join("t");
    let result = restore(
        &repo,
        &r.snapshot,
        &RestoreOptions { target: target.clone(), ..Default::default() },
        Arc::new(NoProgress),
    )
    .await;
    setrlimit(Resource::Nofile, saved).unwrap();
    result.unwrap();
    assert_eq!(std::fs::read_dir(target.join("src")).unwrap().count(), 600);
    assert_eq!(std::fs::read(target.join("src/f599")).unwrap(), "small file number 599\n".repeat(20).as_bytes());
}

/// Counts reads of pack objects, to see how many requests a command makes.
#[derive(Debug)]
struct CountingBackend {
    inner: LocalBackend,
    pack_gets: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl Backend for CountingBackend {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn connections(&self) -> usize {
        self.inner.connections()
    }
    async fn create(&self) -> Result<(), s3bk::backend::BackendError> {
        self.inner.create().await
    }
    async fn put(
        &self,
        h: &s3bk::backend::Handle,
        data: bytes::Bytes,
        mode: s3bk::backend::PutMode,
    ) -> Result<(), s3bk::backend::BackendError> {
        self.inner.put(h, data, mode).await
    }
    async fn get(
        &self,
        h: &s3bk::backend::Handle,
        range: Option<std::ops::Range<u64>>,
    ) -> Result<bytes::Bytes, s3bk::backend::BackendError> {
        if h.tpe == s3bk::backend::FileType::Pack {
            self.pack_gets.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        self.inner.get(h, range).await
    }
    async fn stat(&self, h: &s3bk::backend::Handle) -> Result<s3bk::backend::FileInfo, s3bk::backend::BackendError> {
        self.inner.stat(h).await
    }
    async fn list(
        &self,
        tpe: s3bk::backend::FileType,
    ) -> Result<Vec<s3bk::backend::FileInfo>, s3bk::backend::BackendError> {
        self.inner.list(tpe).await
    }
    async fn delete(&self, h: &s3bk::backend::Handle) -> Result<(), s3bk::backend::BackendError> {
        self.inner.delete(h).await
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn directories_are_read_with_one_request_per_tree_pack() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    for i in 0..40 {
        std::fs::create_dir_all(src.join(format!("d{i:02}/sub"))).unwrap();
        std::fs::write(src.join(format!("d{i:02}/sub/f")), format!("{i}")).unwrap();
    }
    let repo_dir = tmp.path().join("repo");
    let r = backup(&new_repo(&repo_dir).await, &opts(&src), Arc::new(NoProgress)).await.unwrap();

    let counting = Arc::new(CountingBackend { inner: LocalBackend::new(&repo_dir), pack_gets: Default::default() });
    let mut repo = Repository::open(counting.clone(), &Secret::passphrase("pw")).await.unwrap();
    repo.load_index(None).await.unwrap();
    let entries = s3bk::browse::walk(&repo, &r.snapshot.tree, b"").await.unwrap();
    assert_eq!(entries.len(), 1 + 40 * 3);
    // 81 directories, one tree pack: fetched once, not once per directory.
    assert_eq!(counting.pack_gets.load(std::sync::atomic::Ordering::Relaxed), 1);
}
