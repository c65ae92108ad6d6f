//! The S3 backend against real local servers: moto (AWS semantics, honours `If-None-Match`) and a
//! single-node Garage (ignores conditional writes). Conformance, the capability probe, multipart
//! uploads, backup and restore through the library, and the binary's S3 paths and errors.
//!
//! Each test starts its own server (see `servers`); a missing server binary fails the test.

mod common;
mod servers;

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use predicates::prelude::*;
use s3bk::archiver::{BackupOptions, backup};
use s3bk::backend::suite::{CreateOnly, conformance};
use s3bk::backend::{Backend, BackendError, FileType, Handle, PutMode};
use s3bk::progress::NoProgress;
use s3bk::repo::{Repository, Secret};
use s3bk::restorer::{RestoreOptions, restore};
use servers::{Kind, Server};

fn random_handle(tpe: FileType) -> Handle {
    let mut id = [0u8; 32];
    rand::fill(&mut id);
    Handle::new(tpe, hex::encode(id))
}

fn random_bytes(n: usize) -> Bytes {
    let mut buf = vec![0u8; n];
    rand::fill(&mut buf[..]);
    buf.into()
}

// ---- conformance and the capability probe ----

// moto honours If-None-Match one request at a time only: its check and its write are separate
// steps without a lock (docs: ../shared/design/aws.md §1), so racing puts can both win there.
// The race is checked on the local and memory backends, which are atomic.
#[tokio::test(flavor = "multi_thread")]
async fn moto_conformance() {
    let server = Server::moto().await;
    conformance(&*server.backend("suite"), CreateOnly::Sequential).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn garage_conformance_without_create_only() {
    let server = Server::garage().await;
    conformance(&*server.backend("suite"), CreateOnly::Ignored).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn moto_honours_create_only() {
    let server = Server::moto().await;
    let be = server.backend("p");
    assert!(be.supports_create_only().await.unwrap(), "moto honours If-None-Match: the probe must say so");
    let h = random_handle(FileType::Index);
    be.put(&h, Bytes::from_static(b"first"), PutMode::CreateOnly).await.unwrap();
    let err = be.put(&h, Bytes::from_static(b"second"), PutMode::CreateOnly).await.unwrap_err();
    assert!(matches!(err, BackendError::AlreadyExists(ref got) if *got == h), "{err}");
    assert_eq!(&be.get(&h, None).await.unwrap()[..], b"first");
    // The probe object is hidden from listings (it is never deleted: clients cannot delete).
    assert!(be.list(FileType::Lock).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn garage_ignores_create_only_and_the_probe_says_so() {
    let server = Server::garage().await;
    let be = server.backend("p");
    assert!(!be.supports_create_only().await.unwrap(), "Garage 2.5 ignores If-None-Match: the probe must say so");
    // What the probe detects: the second create-only put silently replaces.
    let h = random_handle(FileType::Index);
    be.put(&h, Bytes::from_static(b"first"), PutMode::CreateOnly).await.unwrap();
    be.put(&h, Bytes::from_static(b"second"), PutMode::CreateOnly).await.unwrap();
    assert_eq!(&be.get(&h, None).await.unwrap()[..], b"second");
    assert!(be.list(FileType::Lock).await.unwrap().is_empty());

    // The repository records the answer at init and at open.
    let be: Arc<dyn Backend> = server.backend("repo");
    let repo = Repository::init(be.clone(), &Secret::passphrase("pw"), &test_init()).await.unwrap();
    assert!(!repo.create_only_supported());
    let repo = Repository::open(be, &Secret::passphrase("pw")).await.unwrap();
    assert!(!repo.create_only_supported());
}

#[tokio::test(flavor = "multi_thread")]
async fn garage_wrong_region_is_permanent_and_names_the_fix() {
    let server = Server::garage().await;
    let sdk = server.sdk().to_builder().region(aws_sdk_s3::config::Region::new("eu-west-3")).build();
    let be = s3bk::backend::S3Backend::new(&sdk, &server.bucket, "x", Default::default());
    // HEAD (no error body) and GET-with-body requests both say what to do.
    let head = be.create().await.unwrap_err();
    let list = be.list(FileType::Index).await.unwrap_err();
    for err in [head, list] {
        assert!(matches!(err, BackendError::Permanent { .. }), "{err:?}");
        let msg = format!("{err}");
        assert!(msg.contains("--region"), "{msg}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn moto_storage_class_and_sse_kms_headers() {
    use aws_sdk_s3::types::{ServerSideEncryption, StorageClass};
    let server = Server::moto().await;
    let opts = s3bk::backend::S3Options {
        storage_class: StorageClass::GlacierIr,
        sse_kms_key_id: Some("alias/s3bk-test".to_owned()),
        ..Default::default()
    };
    let be = s3bk::backend::S3Backend::new(&server.sdk(), &server.bucket, "classes", opts);
    let pack = random_handle(FileType::Pack);
    let index = random_handle(FileType::Index);
    for h in [&pack, &index] {
        be.put(h, random_bytes(100), PutMode::CreateOnly).await.unwrap();
    }
    let head = |h: &Handle| {
        let key = format!("classes/{}", h.path());
        server.client().head_object().bucket(&server.bucket).key(key).send()
    };
    let p = head(&pack).await.unwrap();
    let i = head(&index).await.unwrap();
    assert_eq!(p.storage_class(), Some(&StorageClass::GlacierIr), "packs get the configured class");
    // S3 omits the header for STANDARD.
    assert!(matches!(i.storage_class(), None | Some(StorageClass::Standard)), "{:?}", i.storage_class());
    for out in [&p, &i] {
        assert_eq!(out.server_side_encryption(), Some(&ServerSideEncryption::AwsKms));
        assert_eq!(out.ssekms_key_id(), Some("alias/s3bk-test"));
    }
}

// ---- multipart ----

async fn multipart(server: &Server) {
    let be = server.backend("mpu");
    let h = random_handle(FileType::Pack);
    let data = random_bytes(70 << 20);
    let t = Instant::now();
    be.put(&h, data.clone(), PutMode::CreateOnly).await.unwrap();
    eprintln!("{:?}: 70 MiB multipart put in {:?}", server.kind, t.elapsed());
    assert_eq!(be.stat(&h).await.unwrap().size, data.len() as u64);
    let part = s3bk::backend::PART_SIZE as u64;
    for r in [0..1000, part - 10..part + 10, 3 * part..4 * part + 1, data.len() as u64 - 5..data.len() as u64] {
        let got = be.get(&h, Some(r.clone())).await.unwrap();
        assert!(got[..] == data[r.start as usize..r.end as usize], "range {r:?} differs");
    }
    // Whole read: the SDK checks the full-object CRC64NVME.
    let whole = be.get(&h, None).await.unwrap();
    assert!(whole == data, "whole object differs");
    let listed = be.list(FileType::Pack).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].size, data.len() as u64);

    let again = be.put(&h, random_bytes(65 << 20), PutMode::CreateOnly).await;
    if server.kind == Kind::Moto {
        assert!(matches!(again, Err(BackendError::AlreadyExists(_))), "{again:?}");
        assert!(be.get(&h, Some(0..1000)).await.unwrap()[..] == data[..1000]);
    }
    // No unfinished upload is left behind (they are billed).
    let uploads = server.client().list_multipart_uploads().bucket(&server.bucket).send().await.unwrap();
    assert!(uploads.uploads().is_empty(), "{:?}", uploads.uploads());
}

#[tokio::test(flavor = "multi_thread")]
async fn moto_multipart_70mib() {
    multipart(&Server::moto().await).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn garage_multipart_70mib() {
    multipart(&Server::garage().await).await;
}

// ---- backup and restore through the library ----

use common::cheap_init as test_init;

async fn round_trip(server: &Server) {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    common::make_fixture_tree(&src);
    let be: Arc<dyn Backend> = server.backend("repos/one");
    let t = Instant::now();
    let mut repo = Repository::init(be.clone(), &Secret::passphrase("pw"), &test_init()).await.unwrap();
    assert_eq!(repo.create_only_supported(), server.kind == Kind::Moto);
    repo.load_index(None).await.unwrap();
    let opts = BackupOptions { paths: vec![src.clone()], ..BackupOptions::default() };
    let r = backup(&repo, &opts, Arc::new(NoProgress)).await.unwrap();
    assert!(!r.snapshot.incomplete, "{:?}", r.snapshot.summary.skipped);
    let backed_up = t.elapsed();

    let mut repo = Repository::open(be, &Secret::passphrase("pw")).await.unwrap();
    repo.load_index(Some(&tmp.path().join("cache"))).await.unwrap();
    let snaps = repo.snapshots().await.unwrap();
    assert_eq!(snaps.len(), 1);
    let target = tmp.path().join("restore");
    let ro = RestoreOptions { target: target.clone(), owner: true, ..RestoreOptions::default() };
    let s = restore(&repo, &snaps[0].snapshot, &ro, Arc::new(NoProgress)).await.unwrap();
    assert!(s.warnings.is_empty(), "{:?}", s.warnings);
    eprintln!("{:?}: backup {backed_up:?}, backup + restore {:?}", server.kind, t.elapsed());
    common::assert_same_tree(&src, &target.join("src"));
}

#[tokio::test(flavor = "multi_thread")]
async fn moto_backup_restore_round_trip() {
    round_trip(&Server::moto().await).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn garage_backup_restore_round_trip() {
    round_trip(&Server::garage().await).await;
}

// ---- the binary ----

/// `s3bk` isolated from the real home and from inherited S3BK_/AWS_ configuration.
fn s3bk(home: &Path) -> assert_cmd::Command {
    let mut c = common::isolated_s3bk(home);
    c.env("S3BK_PASSWORD", "cli-pw");
    c
}

fn with_server(mut c: assert_cmd::Command, server: &Server) -> assert_cmd::Command {
    for (k, v) in server.env() {
        c.env(k, v);
    }
    c.arg("--endpoint-url").arg(&server.endpoint);
    c
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_round_trip_on_moto() {
    let server = Server::moto().await;
    let home = tempfile::tempdir().unwrap();
    let src = home.path().join("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("a.txt"), b"alpha\n").unwrap();
    std::fs::write(src.join("sub/b.bin"), random_bytes(300_000)).unwrap();
    let repo = format!("s3://{}/cli/repo", server.bucket);
    let t = Instant::now();
    with_server(s3bk(home.path()), &server).args(["--repo", &repo, "init"]).assert().success();
    with_server(s3bk(home.path()), &server).args(["--repo", &repo, "backup"]).arg(&src).assert().success();
    with_server(s3bk(home.path()), &server)
        .args(["--repo", &repo, "snapshots"])
        .assert()
        .success()
        .stdout(predicate::str::contains("src"));
    let target = home.path().join("out");
    with_server(s3bk(home.path()), &server)
        .args(["--repo", &repo, "restore", "--snapshot", "latest", "--target"])
        .arg(&target)
        .assert()
        .success();
    eprintln!("moto: CLI init + backup + snapshots + restore in {:?}", t.elapsed());
    let restored = target.join(src.strip_prefix("/").unwrap());
    let restored = if restored.exists() { restored } else { target.join("src") };
    assert_eq!(std::fs::read(restored.join("a.txt")).unwrap(), b"alpha\n");
    assert_eq!(std::fs::read(restored.join("sub/b.bin")).unwrap(), std::fs::read(src.join("sub/b.bin")).unwrap());
    // The objects are where format §2 says, under the prefix.
    let listed = server.client().list_objects_v2().bucket(&server.bucket).prefix("cli/repo/").send().await.unwrap();
    let keys: Vec<&str> = listed.contents().iter().filter_map(|o| o.key()).collect();
    assert!(keys.contains(&"cli/repo/config"), "{keys:?}");
    assert!(keys.iter().any(|k| k.starts_with("cli/repo/data/")), "{keys:?}");
    assert!(keys.iter().any(|k| k.starts_with("cli/repo/snapshots/")), "{keys:?}");
    // A second init is refused.
    with_server(s3bk(home.path()), &server)
        .args(["--repo", &repo, "init"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("already exists"));
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_missing_bucket_is_a_clear_error() {
    let server = Server::moto().await;
    let home = tempfile::tempdir().unwrap();
    for cmd in ["init", "snapshots"] {
        with_server(s3bk(home.path()), &server)
            .args(["--repo", "s3://no-such-bucket/x", cmd])
            .assert()
            .code(1)
            .stderr(predicate::str::contains("bucket \"no-such-bucket\" does not exist"))
            .stderr(predicate::str::contains("aws s3 mb"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_wrong_credentials_on_garage_are_a_permanent_error() {
    let server = Server::garage().await;
    let home = tempfile::tempdir().unwrap();
    let t = Instant::now();
    with_server(s3bk(home.path()), &server)
        .env("AWS_SECRET_ACCESS_KEY", "0".repeat(64))
        .args(["--repo", &format!("s3://{}/x", server.bucket), "init"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("check credentials"))
        .stderr(predicate::str::contains("AWS_ACCESS_KEY_ID"));
    // Permanent: not retried ten times with backoff.
    assert!(t.elapsed().as_secs() < 20, "took {:?}", t.elapsed());
}

#[test]
fn cli_refuses_plain_http_to_another_host() {
    let home = tempfile::tempdir().unwrap();
    s3bk(home.path())
        .env("AWS_ACCESS_KEY_ID", "x")
        .env("AWS_SECRET_ACCESS_KEY", "y")
        .env("AWS_REGION", "us-east-1")
        .args(["--repo", "s3://bucket/x", "--endpoint-url", "http://192.0.2.1:9000", "snapshots"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("plain-http"))
        .stderr(predicate::str::contains("--insecure-http"));
    // The same through the SDK's environment variable.
    s3bk(home.path())
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ENDPOINT_URL", "http://minio.lan:9000")
        .args(["--repo", "s3://bucket/x", "snapshots"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("--insecure-http"));
}

#[test]
fn cli_archive_storage_needs_explicit_consent() {
    let home = tempfile::tempdir().unwrap();
    s3bk(home.path())
        .env("AWS_REGION", "us-east-1")
        .args(["--repo", "s3://bucket/x", "--storage-class", "DEEP_ARCHIVE", "snapshots"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("--allow-archive-storage"));
    s3bk(home.path())
        .args(["--repo", "s3://bucket/x", "--storage-class", "REDUCED_REDUNDANCY", "snapshots"])
        .assert()
        .code(2);
}
