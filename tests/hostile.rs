//! A hostile repository must never make restore write outside its target.

use std::path::Path;
use std::sync::Arc;

use s3bk::backend::{Backend, LocalBackend};
use s3bk::index::IndexPack;
use s3bk::keyfile::KdfParams;
use s3bk::pack::{BlobType, PackBuilder};
use s3bk::progress::NoProgress;
use s3bk::repo::{InitOptions, Repository, Secret};
use s3bk::restorer::{Overwrite, RestoreOptions, restore};
use s3bk::snapshot::{Snapshot, Summary};
use s3bk::tree::{Extent, Node, NodeKind, Tree};

async fn repo(dir: &Path) -> Repository {
    let be: Arc<dyn Backend> = Arc::new(LocalBackend::new(dir));
    let init = InitOptions { kdf: KdfParams { m_cost: 64, t_cost: 1, p_cost: 1 }, ..InitOptions::default() };
    let mut r = Repository::init(be, &Secret::passphrase("pw"), &init).await.unwrap();
    r.load_index(None).await.unwrap();
    r
}

/// Stores blobs the way a malicious writer holding the key could: no validation on the way in.
async fn store(repo: &Repository, tpe: BlobType, blobs: &[Vec<u8>]) -> Vec<s3bk::id::Id> {
    let keys = repo.keys();
    let mut b = PackBuilder::new(tpe, 0);
    let ids: Vec<_> = blobs.iter().map(|d| keys.blob_id(d)).collect();
    for (d, id) in blobs.iter().zip(&ids) {
        b.add(*id, d.len() as u32, false, &keys.seal(d));
    }
    let pack = b.finish(keys);
    repo.put_new(&s3bk::backend::Handle::new(s3bk::backend::FileType::Pack, pack.id.to_hex()), pack.data.clone())
        .await
        .unwrap();
    repo.save_index(vec![IndexPack { id: pack.id, blobs: pack.entries }]).await.unwrap();
    ids
}

fn snapshot(tree: s3bk::id::Id) -> Snapshot {
    Snapshot {
        time_ns: 0,
        tree,
        paths: vec!["/x".into()],
        hostname: "h".into(),
        username: "u".into(),
        tags: vec![],
        parent: None,
        program: "evil".into(),
        incomplete: false,
        summary: Summary::default(),
        original: None,
    }
}

fn file(name: &[u8], content: Vec<Extent>, size: u64) -> Node {
    let mut n = Node::new(name.to_vec(), NodeKind::File);
    n.mode = 0o644;
    n.content = content;
    n.size = size;
    n
}

async fn tree_with(repo: &Repository, nodes: Vec<Node>) -> s3bk::id::Id {
    store(repo, BlobType::Tree, &[Tree { nodes }.encode()]).await[0]
}

#[tokio::test(flavor = "multi_thread")]
async fn traversal_names_are_refused_and_nothing_escapes() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = repo(&tmp.path().join("repo")).await;
    let data = store(&repo, BlobType::Data, &[b"pwned".to_vec()]).await[0];
    let target = tmp.path().join("box/target");
    for bad in [&b".."[..], b"../escape", b"a/../../escape", b"/abs", b"nul\0byte", b"."] {
        let tree = tree_with(&repo, vec![file(bad, vec![Extent::Data(data)], 5)]).await;
        let ro = RestoreOptions { target: target.clone(), ..RestoreOptions::default() };
        let err = restore(&repo, &snapshot(tree), &ro, Arc::new(NoProgress)).await;
        assert!(err.is_err(), "{:?} accepted", String::from_utf8_lossy(bad));
    }
    assert!(!tmp.path().join("box/escape").exists());
    assert!(!tmp.path().join("escape").exists());
    assert_eq!(std::fs::read_dir(&target).map(|d| d.count()).unwrap_or(0), 0, "nothing written in the target either");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_old_symlink_is_never_followed() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = repo(&tmp.path().join("repo")).await;
    let outside = tmp.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let data = store(&repo, BlobType::Data, &[b"pwned".to_vec()]).await[0];
    let target = tmp.path().join("target");
    let ro = RestoreOptions { target: target.clone(), overwrite: Overwrite::Always, ..RestoreOptions::default() };

    // Snapshot 1 plants `evil -> outside` and `f -> outside/f`.
    let mut link = Node::new(b"evil".to_vec(), NodeKind::Symlink);
    link.link_target = Some(outside.as_os_str().as_encoded_bytes().to_vec());
    let mut flink = Node::new(b"f".to_vec(), NodeKind::Symlink);
    flink.link_target = Some(outside.join("f").as_os_str().as_encoded_bytes().to_vec());
    let t1 = tree_with(&repo, vec![link, flink]).await;
    restore(&repo, &snapshot(t1), &ro, Arc::new(NoProgress)).await.unwrap();
    assert!(target.join("evil").symlink_metadata().unwrap().file_type().is_symlink());

    // Snapshot 2 writes `evil/pwned` and a file `f` over those links.
    let inner = tree_with(&repo, vec![file(b"pwned", vec![Extent::Data(data)], 5)]).await;
    let mut dir = Node::new(b"evil".to_vec(), NodeKind::Dir);
    dir.mode = 0o755;
    dir.subtree = Some(inner);
    let t2 = tree_with(&repo, vec![dir, file(b"f", vec![Extent::Data(data)], 5)]).await;
    restore(&repo, &snapshot(t2), &ro, Arc::new(NoProgress)).await.unwrap();
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0, "wrote through a symlink");
    assert_eq!(std::fs::read(target.join("evil/pwned")).unwrap(), b"pwned");
    assert_eq!(std::fs::read(target.join("f")).unwrap(), b"pwned");
}

#[tokio::test(flavor = "multi_thread")]
async fn absurd_lengths_and_missing_blobs_fail_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = repo(&tmp.path().join("repo")).await;
    let target = tmp.path().join("target");
    let ro = RestoreOptions { target: target.clone(), ..RestoreOptions::default() };
    let missing = tree_with(&repo, vec![file(b"f", vec![Extent::Data(s3bk::id::Id([9; 32]))], 1)]).await;
    let err = restore(&repo, &snapshot(missing), &ro, Arc::new(NoProgress)).await.unwrap_err();
    assert!(matches!(err, s3bk::error::Error::MissingBlob(_)), "{err}");
    // A file claiming exabytes: refused by the filesystem, not allocated in memory.
    let huge = tree_with(&repo, vec![file(b"big", vec![Extent::Hole(u64::MAX / 2)], u64::MAX / 2)]).await;
    assert!(restore(&repo, &snapshot(huge), &ro, Arc::new(NoProgress)).await.is_err());
    // A tree blob that is garbage.
    let junk = store(&repo, BlobType::Tree, &[vec![0xff; 100]]).await[0];
    assert!(restore(&repo, &snapshot(junk), &ro, Arc::new(NoProgress)).await.is_err());
}
