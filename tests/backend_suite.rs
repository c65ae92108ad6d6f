//! Runs the backend conformance suite against every backend that needs no network, plus the
//! local backend's own guarantees (temp files, stray files, error reporting).

use std::fs;
use std::path::Path;

use bytes::Bytes;
use s3bk::backend::suite::{CreateOnly, conformance};
use s3bk::backend::{Backend, BackendError, FileType, Handle, LocalBackend, MemoryBackend, PutMode};

fn pack(prefix: &str) -> Handle {
    Handle::new(FileType::Pack, format!("{prefix}{}", "0".repeat(62)))
}

fn tmp_entries(root: &Path) -> Vec<String> {
    fs::read_dir(root.join("tmp")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect()
}

async fn local() -> (tempfile::TempDir, LocalBackend) {
    let dir = tempfile::tempdir().unwrap();
    let be = LocalBackend::new(dir.path().join("repo"));
    be.create().await.unwrap();
    (dir, be)
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_conformance() {
    let be = MemoryBackend::new();
    conformance(&be, CreateOnly::Atomic).await.unwrap();
    assert_eq!(be.location(), "memory");
}

#[tokio::test(flavor = "multi_thread")]
async fn local_conformance() {
    let (dir, be) = local().await;
    conformance(&be, CreateOnly::Atomic).await.unwrap();
    assert_eq!(be.location(), dir.path().join("repo").display().to_string());
    assert!(tmp_entries(&dir.path().join("repo")).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn local_create_makes_the_layout() {
    let (dir, be) = local().await;
    let root = dir.path().join("repo");
    for sub in ["keys", "locks", "snapshots", "index", "data/00", "data/ff", "tmp"] {
        assert!(root.join(sub).is_dir(), "{sub} missing");
    }
    assert_eq!(fs::read_dir(root.join("data")).unwrap().count(), 256);
    let h = pack("ab");
    be.put(&h, Bytes::from_static(b"x"), PutMode::CreateOnly).await.unwrap();
    assert_eq!(fs::read(root.join("data/ab").join(&h.name)).unwrap(), b"x");
}

#[tokio::test(flavor = "multi_thread")]
async fn local_create_only_leaves_no_temp_files() {
    let (dir, be) = local().await;
    let root = dir.path().join("repo");
    let h = pack("cd");
    be.put(&h, Bytes::from_static(b"first"), PutMode::CreateOnly).await.unwrap();
    assert_eq!(tmp_entries(&root), Vec::<String>::new());

    let err = be.put(&h, Bytes::from_static(b"second"), PutMode::CreateOnly).await.unwrap_err();
    assert!(matches!(err, BackendError::AlreadyExists(_)), "{err}");
    assert_eq!(tmp_entries(&root), Vec::<String>::new());
    assert_eq!(&be.get(&h, None).await.unwrap()[..], b"first");

    be.put(&h, Bytes::from_static(b"third"), PutMode::Overwrite).await.unwrap();
    assert_eq!(tmp_entries(&root), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn local_recreates_a_missing_pack_folder() {
    let (dir, be) = local().await;
    let root = dir.path().join("repo");
    fs::remove_dir(root.join("data/ef")).unwrap();
    let h = pack("ef");
    be.put(&h, Bytes::from_static(b"pack"), PutMode::CreateOnly).await.unwrap();
    assert_eq!(&be.get(&h, None).await.unwrap()[..], b"pack");
}

#[tokio::test(flavor = "multi_thread")]
async fn local_list_skips_stray_files() {
    let (dir, be) = local().await;
    let root = dir.path().join("repo");
    let good = Handle::new(FileType::Index, "1".repeat(64));
    be.put(&good, Bytes::from_static(b"idx"), PutMode::CreateOnly).await.unwrap();
    fs::write(root.join("index/notes.txt"), b"stray").unwrap();
    fs::write(root.join("index").join("A".repeat(64)), b"upper case").unwrap();
    fs::write(root.join("index").join(format!("{}.tmp", "2".repeat(64))), b"temp").unwrap();
    fs::create_dir(root.join("index").join("3".repeat(64))).unwrap();
    // Packs: one in the wrong prefix folder, one in a folder that is not a prefix.
    fs::write(root.join("data/00").join("ab".repeat(32)), b"misplaced").unwrap();
    fs::create_dir(root.join("data/zz")).unwrap();
    fs::write(root.join("data/zz").join("ab".repeat(32)), b"stray").unwrap();
    fs::write(root.join("tmp").join("4".repeat(64)), b"in flight").unwrap();

    let listed = be.list(FileType::Index).await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].handle, good);
    assert_eq!(listed[0].size, 3);
    assert!(be.list(FileType::Pack).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn local_range_past_end_is_permanent() {
    let (_dir, be) = local().await;
    let h = Handle::new(FileType::Snapshot, "5".repeat(64));
    be.put(&h, Bytes::from_static(b"0123456789"), PutMode::CreateOnly).await.unwrap();
    assert_eq!(&be.get(&h, Some(2..5)).await.unwrap()[..], b"234");
    let err = be.get(&h, Some(8..11)).await.unwrap_err();
    assert!(matches!(err, BackendError::Permanent { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn local_unwritable_folder_is_permanent_and_named() {
    use std::os::unix::fs::PermissionsExt;

    let (dir, be) = local().await;
    let root = dir.path().join("repo");
    let data = root.join("data");
    let blocked = data.join("ab");
    let is_root = rustix::process::geteuid().is_root();
    if is_root {
        // Root ignores permissions; a file where the folder should be fails for everyone.
        fs::remove_dir(&blocked).unwrap();
        fs::write(&blocked, b"not a folder").unwrap();
    } else {
        // `data/ab` must be created, inside a folder we may not write to.
        fs::remove_dir(&blocked).unwrap();
        fs::set_permissions(&data, fs::Permissions::from_mode(0o500)).unwrap();
    }

    let h = pack("ab");
    let result = be.put(&h, Bytes::from_static(b"pack"), PutMode::CreateOnly).await;
    if !is_root {
        fs::set_permissions(&data, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let err = result.unwrap_err();
    assert!(matches!(err, BackendError::Permanent { .. }), "{err:?}");
    assert!(!err.is_retryable());
    let msg = err.to_string();
    assert!(msg.contains(&blocked.display().to_string()), "message does not name {}: {msg}", blocked.display());
    assert!(tmp_entries(&root).is_empty());
    assert!(be.stat(&h).await.is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_names_are_rejected() {
    let (_dir, local) = local().await;
    let memory = MemoryBackend::new();
    let bads = [
        Handle::new(FileType::Index, "../../etc/passwd"),
        Handle::new(FileType::Pack, "é".repeat(32)),
        Handle::new(FileType::Config, "other"),
    ];
    for be in [&local as &dyn Backend, &memory] {
        for h in &bads {
            let err = be.put(h, Bytes::new(), PutMode::Overwrite).await.unwrap_err();
            assert!(matches!(err, BackendError::Permanent { .. }), "{h:?}: {err}");
        }
    }
}
