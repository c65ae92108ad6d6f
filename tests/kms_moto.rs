//! KMS envelope encryption against a real moto server that each test starts itself: init with a
//! KMS key, reopen, restore; the encryption context binding; unusable keys (exit 13, zero writes
//! to the repository); adding, removing and re-wrapping keys; epoch rotation.
//!
//! moto 5.2 does real AES-GCM with the encryption context as associated data, so context bugs
//! fail here as they would on AWS. It does not enforce key *state* on Decrypt (a disabled key
//! still decrypts: `moto/kms/models.py`, `decrypt`), so the disabled-key test talks to a stub
//! endpoint answering every call the way AWS answers for a disabled key.
//!
//! Repositories are local folders; only KMS is remote. If `moto_server` is missing the tests
//! fail and say how to install it.

mod common;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command as StdCommand, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use assert_cmd::Command;
use aws_sdk_kms::config::{BehaviorVersion, Credentials, Region};
use predicates::prelude::*;
use s3bk::archiver::{BackupOptions, backup};
use s3bk::backend::{Backend, LocalBackend};
use s3bk::error::Error;
use s3bk::keyfile::{KeyFile, Wrap};
use s3bk::kms::Kms;
use s3bk::progress::NoProgress;
use s3bk::repo::{Repository, Secret, key_files};
use s3bk::restorer::{RestoreOptions, restore};
use serde_json::Value;
use tempfile::TempDir;

const TIMEOUT: Duration = Duration::from_secs(120);

/// A `moto_server` on a free local port, killed on drop.
struct Moto {
    child: Child,
    url: String,
}

impl Moto {
    fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = StdCommand::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start moto_server ({e}); these tests need it: pip install 'moto[server]'")
            });
        let mut moto = Self { child, url: format!("http://127.0.0.1:{port}") };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = moto.child.try_wait().unwrap() {
                panic!("moto_server exited at start ({status}); check `moto_server -H 127.0.0.1 -p {port}` by hand");
            }
            if http_ok(port) {
                return moto;
            }
            assert!(Instant::now() < deadline, "moto_server did not answer on port {port} within 60 s");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// An SDK client for this server with dummy credentials.
    fn client(&self) -> aws_sdk_kms::Client {
        client_for(&self.url)
    }

    fn kms(&self) -> Kms {
        Kms::new(self.client())
    }

    /// A new symmetric key, with `alias` pointing at it; returns its ARN.
    async fn key(&self, alias: &str) -> String {
        let c = self.client();
        let arn = c.create_key().send().await.unwrap().key_metadata.unwrap().arn.unwrap();
        c.create_alias().alias_name(alias).target_key_id(&arn).send().await.unwrap();
        arn
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn client_for(url: &str) -> aws_sdk_kms::Client {
    let conf = aws_sdk_kms::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(url)
        .credentials_provider(Credentials::new("testing", "testing", None, None, "tests"))
        .build();
    aws_sdk_kms::Client::from_conf(conf)
}

/// Whether an HTTP server answers `GET /moto-api/` on `port` with 200.
fn http_ok(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else { return false };
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    if s.write_all(b"GET /moto-api/ HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").is_err() {
        return false;
    }
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).is_ok() && line.starts_with("HTTP/1.1 200")
}

/// An endpoint that answers every KMS call as AWS does for a disabled key.
fn disabled_kms_stub() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let mut reader = BufReader::new(stream);
            let mut len = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
                if line == "\r\n" {
                    break;
                }
            }
            let mut body = vec![0; len];
            let _ = reader.read_exact(&mut body);
            let msg =
                r#"{"__type":"DisabledException","message":"arn:aws:kms:us-east-1:123456789012:key/x is disabled."}"#;
            let resp = format!(
                "HTTP/1.1 400 Bad Request\r\nContent-Type: application/x-amz-json-1.1\r\n\
                 x-amzn-ErrorType: DisabledException\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{msg}",
                msg.len()
            );
            let _ = reader.get_mut().write_all(resp.as_bytes());
        }
    });
    url
}

use common::cheap_init as test_init;

fn local(dir: &Path) -> Arc<dyn Backend> {
    Arc::new(LocalBackend::new(dir))
}

fn opts(path: &Path) -> BackupOptions {
    BackupOptions { paths: vec![path.to_path_buf()], ..BackupOptions::default() }
}

/// Every entry under `root` with its kind, size, mtime and content hash.
fn fingerprint(root: &Path) -> BTreeMap<PathBuf, (bool, u64, i64, String)> {
    use std::os::unix::fs::MetadataExt;
    common::walk(root)
        .into_iter()
        .map(|p| {
            let m = p.symlink_metadata().unwrap();
            let hash = if m.is_file() {
                blake3::hash(&std::fs::read(&p).unwrap()).to_hex().to_string()
            } else {
                String::new()
            };
            (
                p.strip_prefix(root).unwrap().to_path_buf(),
                (m.is_dir(), m.len(), m.mtime_nsec() + m.mtime() * 1_000_000_000, hash),
            )
        })
        .collect()
}

/// The key files of the repository at `repo`, by name.
fn read_keys(repo: &Path) -> Vec<(PathBuf, KeyFile)> {
    let mut out: Vec<_> = std::fs::read_dir(repo.join("keys"))
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            let kf = KeyFile::decode(&std::fs::read(&p).unwrap()).unwrap();
            (p, kf)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Rewrites the single `kms` key file of `repo` with `edit` applied to its JSON.
fn edit_kms_key_file(repo: &Path, edit: impl FnOnce(&mut Value)) {
    let (path, _) = read_keys(repo).into_iter().find(|(_, k)| k.wrap.kind() == "kms").expect("a kms key file");
    let mut v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
}

/// Blob epochs of the pack files under `repo`: pack name → epoch prefix of its first blob.
fn pack_epochs(repo: &Path) -> BTreeMap<String, u32> {
    common::walk(&repo.join("data"))
        .into_iter()
        .filter(|p| p.is_file())
        .map(|p| {
            let data = std::fs::read(&p).unwrap();
            (p.file_name().unwrap().to_string_lossy().into_owned(), u32::from_le_bytes(data[..4].try_into().unwrap()))
        })
        .collect()
}

/// A small source tree.
fn small_source(dir: &Path) {
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("a.txt"), "alpha\n".repeat(1000)).unwrap();
    std::fs::write(dir.join("sub/b.bin"), (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect::<Vec<_>>()).unwrap();
}

// ---------------------------------------------------------------------------------------------
// The binary, isolated: temp HOME and XDG folders, no inherited S3BK_* or AWS_* configuration.

struct Env {
    dir: TempDir,
    endpoint: String,
    repo: PathBuf,
}

impl Env {
    fn new(endpoint: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("repo");
        Self { dir, endpoint: endpoint.to_owned(), repo }
    }

    /// Another home and KMS endpoint for the repository at `repo`.
    fn with_repo(endpoint: &str, repo: &Path) -> Self {
        Self { repo: repo.to_path_buf(), ..Self::new(endpoint) }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn repo(&self) -> PathBuf {
        self.repo.clone()
    }

    /// `s3bk --repo <repo>` pointed at the KMS endpoint, with no password and no KMS key id.
    fn cmd(&self) -> Command {
        let mut c = common::isolated_s3bk(self.dir.path());
        c.env("AWS_ENDPOINT_URL", &self.endpoint)
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .timeout(TIMEOUT)
            .arg("--repo")
            .arg(self.repo());
        c
    }

    /// Runs `args`, expects exit 0, returns stdout as JSON.
    fn json(&self, args: &[&OsStr]) -> Value {
        let out = self.cmd().arg("--json").args(args).assert().code(0).get_output().stdout.clone();
        serde_json::from_slice(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out)))
    }

    fn key_list(&self) -> Vec<Value> {
        self.json(&[OsStr::new("key"), OsStr::new("list")]).as_array().unwrap().clone()
    }
}

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

fn kinds(list: &[Value]) -> Vec<String> {
    let mut k: Vec<String> = list.iter().map(|v| v["kind"].as_str().unwrap().to_owned()).collect();
    k.sort();
    k
}

// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn library_init_with_kms_backup_reopen_restore() {
    let moto = Moto::start();
    let arn = moto.key("alias/s3bk").await;
    let tmp = tempfile::tempdir().unwrap();
    let (src, repo_dir) = (tmp.path().join("src"), tmp.path().join("repo"));
    common::make_fixture_tree(&src);

    let secret = Secret::kms(moto.kms(), Some("alias/s3bk".into()));
    let mut repo = Repository::init(local(&repo_dir), &secret, &test_init()).await.unwrap();
    repo.load_index(None).await.unwrap();
    let id = backup(&repo, &opts(&src), Arc::new(NoProgress)).await.unwrap().id.unwrap();

    // One key file, kind kms, with the alias as given and the repository in its context.
    let keys = read_keys(&repo_dir);
    assert_eq!(keys.len(), 1);
    let Wrap::Kms { key_id, context, ciphertext } = &keys[0].1.wrap else { panic!("{:?}", keys[0].1) };
    assert_eq!(key_id, "alias/s3bk");
    assert_eq!(context["app"], "s3bk");
    assert_eq!(context["purpose"], "master-key");
    assert_eq!(context["repo"], repo.config().id.to_hex());
    // The wrap is KMS's: moto says which key made it.
    use base64::Engine;
    let blob = base64::engine::general_purpose::STANDARD.decode(ciphertext).unwrap();
    let out = moto
        .client()
        .decrypt()
        .ciphertext_blob(aws_sdk_kms::primitives::Blob::new(blob))
        .set_encryption_context(Some(context.clone().into_iter().collect()))
        .send()
        .await
        .unwrap();
    assert_eq!(out.key_id.as_deref(), Some(arn.as_str()));

    // Reopen with no key id preference, restore everything.
    let mut repo = Repository::open(local(&repo_dir), &Secret::kms(moto.kms(), None)).await.unwrap();
    repo.load_index(Some(&tmp.path().join("cache"))).await.unwrap();
    let snap = repo.load_snapshot(&id).await.unwrap();
    let target = tmp.path().join("restore");
    let ro = RestoreOptions { target: target.clone(), owner: true, ..RestoreOptions::default() };
    let s = restore(&repo, &snap, &ro, Arc::new(NoProgress)).await.unwrap();
    assert!(s.warnings.is_empty(), "{:?}", s.warnings);
    common::assert_same_tree(&src, &target.join("src"));

    // A password does not open a KMS-only repository, and says why.
    let err = Repository::open(local(&repo_dir), &Secret::passphrase("pw")).await.unwrap_err();
    assert!(matches!(err, Error::NoPassphraseKeyFile), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_encryption_context_is_rejected_with_exit_13_and_no_writes() {
    let moto = Moto::start();
    moto.key("alias/s3bk").await;
    let e = Env::new(&moto.url);
    let src = e.path("src");
    small_source(&src);
    e.cmd().args(["--kms-key-id", "alias/s3bk", "init"]).assert().success();
    e.cmd().arg("backup").arg(&src).assert().success();

    // The context names another repository: KMS refuses to decrypt (AAD mismatch).
    edit_kms_key_file(&e.repo(), |v| v["context"]["repo"] = Value::from("00".repeat(32)));
    let err = Repository::open(local(&e.repo()), &Secret::kms(moto.kms(), None)).await.unwrap_err();
    let Error::Kms(msg) = &err else { panic!("not a KMS error: {err}") };
    assert!(msg.contains("wrong encryption context"), "{msg}");

    std::fs::write(src.join("new.txt"), "would need a new pack").unwrap();
    let before = fingerprint(&e.repo());
    for args in
        [vec!["snapshots"], vec!["backup", src.to_str().unwrap()], vec!["--kms-key-id", "alias/s3bk", "snapshots"]]
    {
        e.cmd().args(&args).assert().code(13).stderr(predicate::str::contains("wrong encryption context"));
        assert_eq!(fingerprint(&e.repo()), before, "{args:?} changed the repository");
    }

    // Another context key (purpose) is bound too.
    edit_kms_key_file(&e.repo(), |v| v["context"]["purpose"] = Value::from("something-else"));
    e.cmd().arg("snapshots").assert().code(13);
}

#[tokio::test(flavor = "multi_thread")]
async fn unusable_keys_exit_13_and_write_nothing() {
    let moto = Moto::start();
    moto.key("alias/s3bk").await;
    let other = moto.key("alias/other").await;
    let e = Env::new(&moto.url);
    let src = e.path("src");
    small_source(&src);

    // init with a key that does not exist creates nothing.
    e.cmd()
        .args(["--kms-key-id", "alias/missing", "init"])
        .assert()
        .code(13)
        .stderr(predicate::str::contains("alias/missing").and(predicate::str::contains("does not exist")));
    assert!(!e.repo().exists(), "init left a repository behind");

    e.cmd().args(["--kms-key-id", "alias/s3bk", "init"]).assert().success();
    e.cmd().arg("backup").arg(&src).assert().success();
    std::fs::write(src.join("new.txt"), "would need a new pack").unwrap();
    let before = fingerprint(&e.repo());
    let target = e.path("target");

    // A disabled key: AWS answers DisabledException (moto does not enforce key state, so a stub
    // answers as AWS does).
    let stub_url = disabled_kms_stub();
    let stub = Env::with_repo(&stub_url, &e.repo());
    for args in [
        vec!["snapshots"],
        vec!["backup", src.to_str().unwrap()],
        vec!["restore", "--target", target.to_str().unwrap()],
    ] {
        stub.cmd().args(&args).assert().code(13).stderr(predicate::str::contains("is disabled"));
        assert_eq!(fingerprint(&e.repo()), before, "{args:?} changed the repository");
    }
    assert!(!target.exists());
    let fresh = Env::new(&stub_url);
    fresh.cmd().args(["--kms-key-id", "alias/s3bk", "init"]).assert().code(13);
    assert!(!fresh.repo().exists(), "init with a disabled key left a repository behind");

    // Access denied (moto: the key file names another key than the one that wrapped it).
    edit_kms_key_file(&e.repo(), |v| v["key_id"] = Value::from(other.clone()));
    let before = fingerprint(&e.repo());
    e.cmd().arg("backup").arg(&src).assert().code(13).stderr(predicate::str::contains("kms:Decrypt"));
    assert_eq!(fingerprint(&e.repo()), before);

    // No credentials at all.
    e.cmd()
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .arg("snapshots")
        .assert()
        .code(13)
        .stderr(predicate::str::contains("credentials"));
    assert_eq!(fingerprint(&e.repo()), before);
}

#[tokio::test(flavor = "multi_thread")]
async fn second_kms_key_opens_alone_and_the_last_key_is_never_removed() {
    let moto = Moto::start();
    moto.key("alias/a").await;
    moto.key("alias/b").await;
    let e = Env::new(&moto.url);
    let src = e.path("src");
    small_source(&src);
    e.cmd().args(["--kms-key-id", "alias/a", "init"]).assert().success();
    e.cmd().arg("backup").arg(&src).assert().success();

    // Opened through its KMS key files (alias/a); --kms-key-id names the key added.
    e.cmd().args(["--kms-key-id", "alias/b", "key", "add"]).assert().success();
    let list = e.key_list();
    let mut ids: Vec<&str> = list.iter().map(|v| v["kms_key_id"].as_str().unwrap()).collect();
    ids.sort();
    assert_eq!(ids, ["alias/a", "alias/b"]);

    // Remove the alias/a wrap: alias/b alone opens the repository and restores.
    let a_id = list.iter().find(|v| v["kms_key_id"] == "alias/a").unwrap()["id"].as_str().unwrap().to_owned();
    e.cmd().args(["--kms-key-id", "alias/b", "key", "remove", &a_id[..10]]).assert().success();
    assert_eq!(e.key_list().len(), 1);
    let target = e.path("target");
    e.cmd().args(["--kms-key-id", "alias/b", "restore", "--target"]).arg(&target).assert().success();
    assert_eq!(std::fs::read(target.join("src/a.txt")).unwrap(), std::fs::read(src.join("a.txt")).unwrap());

    // The last wrap cannot be removed.
    let b_id = e.key_list()[0]["id"].as_str().unwrap().to_owned();
    let before = fingerprint(&e.repo());
    e.cmd().args(["key", "remove", &b_id]).assert().code(1).stderr(predicate::str::contains("last key"));
    assert_eq!(fingerprint(&e.repo()), before);

    // Epoch entries are not removable either (data under them would be lost).
    let rotated = e.json(&[os("key"), os("rotate")]);
    assert_eq!(rotated["epoch"], 1);
    let epoch_id = e.key_list().into_iter().find(|v| v["kind"] == "epoch").unwrap()["id"].as_str().unwrap().to_owned();
    e.cmd().args(["key", "remove", &epoch_id]).assert().code(1).stderr(predicate::str::contains("epoch"));
}

#[tokio::test(flavor = "multi_thread")]
async fn passphrase_and_kms_wraps_both_open_one_repository() {
    let moto = Moto::start();
    moto.key("alias/s3bk").await;
    let e = Env::new(&moto.url);
    let src = e.path("src");
    small_source(&src);
    e.cmd().env("S3BK_PASSWORD", "pw").arg("init").assert().success();
    e.cmd().env("S3BK_PASSWORD", "pw").arg("backup").arg(&src).assert().success();
    // Without a KMS wrap, KMS has nothing to open.
    e.cmd().args(["--kms-key-id", "alias/s3bk", "snapshots"]).assert().code(12);

    e.cmd().env("S3BK_PASSWORD", "pw").args(["--kms-key-id", "alias/s3bk", "key", "add"]).assert().success();
    assert_eq!(kinds(&e.key_list()), ["kms", "passphrase"]);

    let count = |c: &mut Command| -> usize {
        let out = c.args(["--json", "snapshots"]).assert().code(0).get_output().stdout.clone();
        serde_json::from_slice::<Value>(&out).unwrap().as_array().unwrap().len()
    };
    assert_eq!(count(e.cmd().env("S3BK_PASSWORD", "pw")), 1);
    assert_eq!(count(e.cmd().args(["--kms-key-id", "alias/s3bk"])), 1);
    // No password configured: the KMS key files are tried on their own.
    assert_eq!(count(&mut e.cmd()), 1);
    // A wrong password is still a wrong password (exit 12), not a KMS fallback.
    e.cmd().env("S3BK_PASSWORD", "nope").arg("snapshots").assert().code(12);

    // A second password, from S3BK_NEW_PASSWORD, opened through KMS.
    e.cmd().env("S3BK_NEW_PASSWORD", "second").arg("key").arg("add").assert().success();
    assert_eq!(count(e.cmd().env("S3BK_PASSWORD", "second")), 1);
    assert_eq!(kinds(&e.key_list()), ["kms", "passphrase", "passphrase"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn rewrap_moves_every_kms_wrap_to_the_new_key() {
    let moto = Moto::start();
    let old_arn = moto.key("alias/old").await;
    let new_arn = moto.key("alias/new").await;
    let e = Env::new(&moto.url);
    let src = e.path("src");
    small_source(&src);
    e.cmd().args(["--kms-key-id", "alias/old", "init"]).assert().success();
    e.cmd().arg("backup").arg(&src).assert().success();
    let before: Vec<String> = e.key_list().iter().map(|v| v["id"].as_str().unwrap().to_owned()).collect();

    let out = e.json(&[os("--kms-key-id"), os("alias/new"), os("key"), os("rewrap")]);
    assert_eq!(out["rewrapped"].as_array().unwrap().len(), 1);
    let list = e.key_list();
    assert_eq!(list.len(), 1, "the old wrap must be gone: {list:?}");
    assert_eq!(list[0]["kms_key_id"], "alias/new");
    assert!(!before.contains(&list[0]["id"].as_str().unwrap().to_owned()), "rewrap must write a new key file");

    // KMS says the stored ciphertext is now the new key's, and the old key cannot open it.
    let (_, kf) = read_keys(&e.repo()).pop().unwrap();
    let Wrap::Kms { ciphertext, context, .. } = &kf.wrap else { panic!() };
    use base64::Engine;
    let blob =
        aws_sdk_kms::primitives::Blob::new(base64::engine::general_purpose::STANDARD.decode(ciphertext).unwrap());
    let ctx: std::collections::HashMap<_, _> = context.clone().into_iter().collect();
    let c = moto.client();
    let out = c.decrypt().ciphertext_blob(blob.clone()).set_encryption_context(Some(ctx.clone())).send().await.unwrap();
    assert_eq!(out.key_id.as_deref(), Some(new_arn.as_str()));
    assert!(c.decrypt().key_id(&old_arn).ciphertext_blob(blob).set_encryption_context(Some(ctx)).send().await.is_err());

    // The old key can go away; the repository opens and restores with the new one.
    // (moto's DisableKey wants the bare key id, not the ARN.)
    let old_id = old_arn.rsplit_once(":key/").unwrap().1;
    c.disable_key().key_id(old_id).send().await.unwrap();
    let target = e.path("target");
    e.cmd().args(["restore", "--target"]).arg(&target).assert().success();
    assert_eq!(std::fs::read(target.join("src/sub/b.bin")).unwrap(), std::fs::read(src.join("sub/b.bin")).unwrap());

    // Re-wrapping under a key that does not exist changes nothing.
    let before = fingerprint(&e.repo());
    e.cmd().args(["--kms-key-id", "alias/missing", "key", "rewrap"]).assert().code(13);
    assert_eq!(fingerprint(&e.repo()), before);
}

#[tokio::test(flavor = "multi_thread")]
async fn rotation_seals_new_blobs_under_epoch_1_and_old_snapshots_stay_readable() {
    let moto = Moto::start();
    moto.key("alias/s3bk").await;
    let tmp = tempfile::tempdir().unwrap();
    let (src, repo_dir, cache) = (tmp.path().join("src"), tmp.path().join("repo"), tmp.path().join("cache"));
    small_source(&src);
    let secret = Secret::kms(moto.kms(), Some("alias/s3bk".into()));
    let mut repo = Repository::init(local(&repo_dir), &secret, &test_init()).await.unwrap();
    repo.load_index(Some(&cache)).await.unwrap();
    let first = backup(&repo, &opts(&src), Arc::new(NoProgress)).await.unwrap().id.unwrap();
    let old_packs = pack_epochs(&repo_dir);
    assert!(!old_packs.is_empty() && old_packs.values().all(|&e| e == 0), "{old_packs:?}");

    assert_eq!(repo.rotate().await.unwrap(), 1);
    assert_eq!(repo.keys().epoch(), 1);
    let entries = key_files(&*local(&repo_dir)).await.unwrap();
    assert_eq!(entries.iter().filter(|k| k.file.wrap.kind() == "epoch").count(), 1);

    // A fresh open finds epoch 1 and writes under it.
    let mut repo = Repository::open(local(&repo_dir), &secret).await.unwrap();
    assert_eq!(repo.keys().epochs(), [0, 1]);
    repo.load_index(Some(&cache)).await.unwrap();
    std::fs::write(src.join("after-rotation.txt"), "new data ".repeat(5000)).unwrap();
    let second = backup(&repo, &opts(&src), Arc::new(NoProgress)).await.unwrap().id.unwrap();
    let new_packs: Vec<u32> =
        pack_epochs(&repo_dir).into_iter().filter(|(n, _)| !old_packs.contains_key(n)).map(|(_, e)| e).collect();
    assert!(!new_packs.is_empty() && new_packs.iter().all(|&e| e == 1), "{new_packs:?}");
    let snap_file = std::fs::read(repo_dir.join("snapshots").join(second.to_hex())).unwrap();
    assert_eq!(&snap_file[..4], &1u32.to_le_bytes());

    // Both snapshots restore after another open; the old one from epoch-0 packs only.
    let mut repo = Repository::open(local(&repo_dir), &Secret::kms(moto.kms(), None)).await.unwrap();
    repo.load_index(Some(&cache)).await.unwrap();
    for (id, name) in [(first, "first"), (second, "second")] {
        let snap = repo.load_snapshot(&id).await.unwrap();
        let target = tmp.path().join(name);
        let ro = RestoreOptions { target: target.clone(), ..RestoreOptions::default() };
        restore(&repo, &snap, &ro, Arc::new(NoProgress)).await.unwrap();
        assert_eq!(std::fs::read(target.join("src/a.txt")).unwrap(), std::fs::read(src.join("a.txt")).unwrap());
        assert_eq!(target.join("src/after-rotation.txt").exists(), name == "second");
    }

    // A tampered key-ring entry is not used: its epoch is unknown, and new data goes back
    // under the newest epoch that does open (0 here).
    let epoch_file = entries.iter().find(|k| k.file.wrap.kind() == "epoch").unwrap();
    let path = repo_dir.join("keys").join(&epoch_file.name);
    let mut v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let sealed = v["sealed"].as_str().unwrap().to_owned();
    let flipped = format!("{}{}", &sealed[..sealed.len() - 1], if sealed.ends_with('0') { '1' } else { '0' });
    v["sealed"] = Value::from(flipped);
    std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
    let mut repo = Repository::open(local(&repo_dir), &secret).await.unwrap();
    assert_eq!(repo.keys().epochs(), [0]);
    let err = repo.load_index(None).await.unwrap_err();
    assert!(err.to_string().contains("epoch 1"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_init_with_kms_alias_backup_rotate_restore_and_key_list() {
    let moto = Moto::start();
    moto.key("alias/s3bk").await;
    let e = Env::new(&moto.url);
    let src = e.path("src");
    small_source(&src);
    let init = e.json(&[os("--kms-key-id"), os("alias/s3bk"), os("init")]);
    let repo_id = init["id"].as_str().unwrap().to_owned();

    let list = e.key_list();
    assert_eq!(kinds(&list), ["kms"]);
    assert_eq!(list[0]["kms_key_id"], "alias/s3bk");
    assert_eq!(list[0]["context"]["repo"], repo_id.as_str());
    let table = e.cmd().args(["key", "list"]).assert().success().get_output().stdout.clone();
    let table = String::from_utf8(table).unwrap();
    assert!(table.contains("alias/s3bk") && table.contains(&list[0]["short_id"].as_str().unwrap()[..8]), "{table}");

    // No password anywhere: the KMS key files open the repository.
    e.cmd().arg("backup").arg(&src).assert().success();
    let old_packs = pack_epochs(&e.repo());
    assert!(old_packs.values().all(|&x| x == 0), "{old_packs:?}");
    assert_eq!(e.json(&[os("key"), os("rotate")])["epoch"], 1);
    assert_eq!(kinds(&e.key_list()), ["epoch", "kms"]);
    std::fs::write(src.join("c.txt"), "after rotation").unwrap();
    e.cmd().arg("backup").arg(&src).assert().success();
    let new_packs: Vec<u32> =
        pack_epochs(&e.repo()).into_iter().filter(|(n, _)| !old_packs.contains_key(n)).map(|(_, x)| x).collect();
    assert!(!new_packs.is_empty() && new_packs.iter().all(|&x| x == 1), "{new_packs:?}");
    let snaps = e.json(&[os("snapshots")]);
    let snaps = snaps.as_array().unwrap();
    assert_eq!(snaps.len(), 2);
    for (i, s) in snaps.iter().enumerate() {
        let target = e.path(&format!("target{i}"));
        e.cmd().args(["restore", "--snapshot", s["id"].as_str().unwrap(), "--target"]).arg(&target).assert().success();
        assert_eq!(target.join("src/c.txt").exists(), i == 1);
    }

    // The help lists exit code 13.
    let help = e.cmd().arg("--help").assert().success().get_output().stdout.clone();
    assert!(String::from_utf8(help).unwrap().contains("13  KMS key unusable"));
}
