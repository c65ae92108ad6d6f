//! `s3bk repair index|snapshots` through the binary, on repositories damaged on purpose: every
//! index file deleted (repair index brings back full function: verify clean, restore
//! byte-identical), a pack with a damaged header (left out and reported), a deleted data pack
//! (repair snapshots writes a repaired snapshot that restores without the lost files, leaves the
//! original alone unless --forget). Repositories are made with small packs (several data packs).

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use assert_cmd::Command;
use predicates::prelude::*;
use serde_json::Value;
use tempfile::TempDir;

struct Env {
    dir: TempDir,
}

impl Env {
    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn cmd(&self) -> Command {
        let mut c = common::isolated_s3bk(self.dir.path());
        c.env("S3BK_PASSWORD", "pw").arg("--repo").arg(self.path("repo"));
        c
    }

    /// A repository with 1 MiB packs and small chunks holding one backup of the fixture tree
    /// plus 2 MiB of noise.
    fn with_backup() -> Self {
        let e = Self { dir: tempfile::tempdir().unwrap() };
        let src = e.path("src");
        common::make_fixture_tree(&src);
        let mut noise = vec![0u8; 2 << 20];
        rand::fill(&mut noise[..]);
        std::fs::write(src.join("noise.bin"), &noise).unwrap();
        let repo = e.path("repo");
        tokio::runtime::Runtime::new().unwrap().block_on(async {
            let be: Arc<dyn s3bk::backend::Backend> = Arc::new(s3bk::backend::LocalBackend::new(&repo));
            s3bk::repo::Repository::init(be, &s3bk::repo::Secret::passphrase("pw"), &common::cheap_init())
                .await
                .unwrap();
        });
        e.cmd().args(["backup", "--json"]).arg(&src).assert().code(0);
        e
    }

    fn json(&self, args: &[&str], code: i32) -> Value {
        let out = self.cmd().arg("--json").args(args).assert().code(code).get_output().stdout.clone();
        serde_json::from_slice(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out)))
    }

    fn objects(&self, folder: &str) -> BTreeSet<PathBuf> {
        common::walk(&self.path("repo").join(folder)).into_iter().filter(|p| p.is_file()).collect()
    }

    fn snapshot_ids(&self) -> Vec<String> {
        let v = self.json(&["snapshots"], 0);
        v.as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap().to_owned()).collect()
    }
}

fn replace(path: &Path, data: &[u8]) {
    std::fs::remove_file(path).unwrap();
    std::fs::write(path, data).unwrap();
}

/// Data packs (largest first): tree packs of the fixture are small.
fn largest_packs(e: &Env) -> Vec<PathBuf> {
    let mut packs: Vec<(u64, PathBuf)> =
        e.objects("data").into_iter().map(|p| (p.metadata().unwrap().len(), p)).collect();
    packs.sort();
    packs.into_iter().rev().map(|(_, p)| p).collect()
}

fn name(p: &Path) -> String {
    p.file_name().unwrap().to_str().unwrap().to_owned()
}

#[test]
fn repair_index_after_losing_every_index_file_restores_full_function() {
    let e = Env::with_backup();
    let old = e.objects("index");
    assert!(!old.is_empty());
    for f in &old {
        std::fs::remove_file(f).unwrap();
    }
    // Broken: the snapshot's trees are in no index file.
    e.cmd().arg("verify").assert().code(1);

    // A dry run changes nothing.
    let r = e.json(&["repair", "index", "--dry-run"], 0);
    assert_eq!(r["dry_run"], true);
    assert!(e.objects("index").is_empty());

    let packs = e.objects("data").len() as u64;
    let r = e.json(&["repair", "index"], 0);
    assert_eq!(r["packs"], packs, "{r}");
    assert_eq!(r["packs_read"], packs, "{r}");
    assert_eq!(r["skipped"], serde_json::json!([]));
    assert_eq!(r["index_written"].as_array().unwrap().len(), 1, "{r}");
    assert_eq!(e.objects("index").len(), 1);

    let v = e.json(&["verify", "--read-data"], 0);
    assert_eq!(v["problems"], serde_json::json!([]), "{v}");
    assert_eq!(v["unindexed_packs"], serde_json::json!([]), "{v}");
    assert_eq!(v["packs_read"], packs);
    e.cmd().args(["restore", "--target"]).arg(e.path("out")).assert().code(0);
    common::assert_same_tree(&e.path("src"), &e.path("out/src"));

    // Again, on a healthy repository: the new index replaces (and deletes) the old one, reusing
    // its entries; --read-all-packs reads every header instead.
    let before = e.objects("index");
    let r = e.json(&["repair", "index"], 0);
    assert_eq!((r["packs_from_index"].as_u64(), r["packs_read"].as_u64()), (Some(packs), Some(0)), "{r}");
    assert_eq!(r["index_deleted"], 1);
    let after = e.objects("index");
    assert_eq!(after.len(), 1);
    assert!(after.is_disjoint(&before));
    let r = e.json(&["repair", "index", "--read-all-packs"], 0);
    assert_eq!(r["packs_read"], packs, "{r}");
    e.cmd().arg("verify").assert().code(0);
}

/// A data pack lost and the index repaired: an unchanged re-backup must not trust the parent
/// snapshot's content lists (the local cache's "every blob indexed" record is void once an
/// index file is dropped), so it reads the files whose chunks were lost, stores them again,
/// and its snapshot restores in full.
#[test]
fn after_a_lost_pack_and_repair_index_a_re_backup_stores_the_lost_files_again() {
    let e = Env::with_backup();
    let src = e.path("src");
    let unchanged = e.json(&["backup", src.to_str().unwrap()], 0);
    assert_eq!(unchanged["bytes_read"], 0, "{unchanged}");

    std::fs::remove_file(&largest_packs(&e)[0]).unwrap();
    e.json(&["repair", "index"], 0);
    let again = e.json(&["backup", src.to_str().unwrap()], 0);
    let read = again["bytes_read"].as_u64().unwrap();
    assert!(read > 0, "the lost chunks must be read again: {again}");
    assert!(again["bytes_added"].as_u64().unwrap() > 0, "{again}");
    let id = again["snapshot_id"].as_str().unwrap();
    e.cmd().args(["restore", "--snapshot", id, "--target"]).arg(e.path("out")).assert().code(0);
    common::assert_same_tree(&src, &e.path("out/src"));
    // And the record is made again: the next re-backup reads nothing.
    let last = e.json(&["backup", src.to_str().unwrap()], 0);
    assert_eq!(last["bytes_read"], 0, "{last}");
}

#[test]
fn repair_index_skips_and_reports_a_pack_with_a_damaged_header() {
    let e = Env::with_backup();
    for f in e.objects("index") {
        std::fs::remove_file(f).unwrap();
    }
    let bad = largest_packs(&e)[0].clone();
    let mut data = std::fs::read(&bad).unwrap();
    let n = data.len();
    data[n - 20] ^= 0x01; // inside the sealed header
    replace(&bad, &data);

    let r = e.json(&["repair", "index"], 1);
    let skipped = r["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 1, "{r}");
    assert_eq!(skipped[0]["pack"], name(&bad).as_str());
    assert!(skipped[0]["error"].as_str().unwrap().contains("header"), "{r}");
    assert_eq!(r["packs_read"].as_u64().unwrap(), e.objects("data").len() as u64 - 1);
    // The rest is indexed; the damaged pack shows up as unindexed, its blobs as missing.
    let v = e.json(&["verify"], 1);
    assert_eq!(v["unindexed_packs"], serde_json::json!([name(&bad)]), "{v}");
    assert!(v["problems"].as_array().unwrap().iter().all(|p| p["kind"] == "blob_missing"), "{v}");

    e.cmd()
        .args(["repair", "index"])
        .assert()
        .code(1)
        .stdout(predicate::str::contains(format!("skipped pack {}", name(&bad))))
        .stderr(predicate::str::contains("repair snapshots"));
}

#[test]
fn repair_snapshots_drops_lost_files_and_keeps_the_original() {
    let e = Env::with_backup();
    let original = e.snapshot_ids().pop().unwrap();
    let lost = largest_packs(&e)[0].clone();
    std::fs::remove_file(&lost).unwrap();

    let r = e.json(&["repair", "snapshots", "--dry-run"], 0);
    assert_eq!(r["repaired"].as_array().unwrap().len(), 1, "{r}");
    assert_eq!(e.snapshot_ids().len(), 1, "a dry run writes nothing");

    let r = e.json(&["repair", "snapshots"], 0);
    let rep = &r["repaired"][0];
    assert_eq!(rep["original"], original.as_str());
    assert_eq!(rep["forgotten"], false);
    let new = rep["repaired"].as_str().unwrap().to_owned();
    // Paths as the JSON report gives them (lossy for the fixture's non-UTF-8 name).
    let dropped: BTreeSet<String> = rep["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            assert_eq!(c["kind"], "file_dropped", "{c}");
            c["path"].as_str().unwrap().to_owned()
        })
        .collect();
    assert!(!dropped.is_empty());

    // Both snapshots are there; the new one is tagged and names the original.
    let list = e.json(&["snapshots"], 0);
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");
    let s = list.as_array().unwrap().iter().find(|s| s["id"] == new.as_str()).unwrap();
    assert!(s["tags"].as_array().unwrap().contains(&Value::from("repaired")), "{s}");

    // The repaired snapshot restores: every file it still has is intact, only the dropped ones
    // are missing.
    e.cmd().args(["restore", "--snapshot", &new, "--target"]).arg(e.path("out")).assert().code(0);
    let mut restored = 0;
    for p in common::walk(&e.path("src")) {
        let rel = p.strip_prefix(e.path("")).unwrap().to_path_buf();
        let out = e.path("out").join(&rel);
        if !p.symlink_metadata().unwrap().is_file() {
            continue;
        }
        if dropped.contains(rel.to_string_lossy().as_ref()) {
            assert!(out.symlink_metadata().is_err(), "{rel:?} was dropped but restored");
        } else {
            assert!(std::fs::read(&p).unwrap() == std::fs::read(&out).unwrap(), "{rel:?} differs");
            restored += 1;
        }
    }
    assert!(restored >= 1, "no file restored");

    // After the index is repaired too, the new snapshot verifies clean; the original does not.
    e.json(&["repair", "index"], 0);
    let v = e.json(&["verify", "--read-data", "--snapshot", &new], 0);
    assert_eq!(v["problems"], serde_json::json!([]), "{v}");
    e.cmd().args(["verify", "--snapshot", &original]).assert().code(1);

    // Running it again finds the earlier repair instead of storing a copy; --forget then
    // removes the original.
    let r = e.json(&["repair", "snapshots"], 0);
    assert_eq!(r["repaired"][0]["earlier"], true, "{r}");
    assert_eq!(r["repaired"][0]["repaired"], new.as_str());
    assert_eq!(e.snapshot_ids().len(), 2);
    let r = e.json(&["repair", "snapshots", "--forget", &original[..12]], 0);
    assert_eq!(r["repaired"][0]["forgotten"], true, "{r}");
    assert_eq!(r["repaired"][0]["repaired"], new.as_str());
    assert_eq!(e.snapshot_ids(), vec![new.clone()]);
    e.cmd().arg("verify").assert().code(0);
    e.cmd().args(["restore", "--target"]).arg(e.path("out2")).assert().code(0);
}

/// Packs holding tree blobs.
fn tree_packs(e: &Env) -> Vec<PathBuf> {
    let repo = e.path("repo");
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let be: Arc<dyn s3bk::backend::Backend> = Arc::new(s3bk::backend::LocalBackend::new(&repo));
        let mut r = s3bk::repo::Repository::open(be, &s3bk::repo::Secret::passphrase("pw")).await.unwrap();
        r.load_index(None).await.unwrap();
        let mut packs = BTreeSet::new();
        r.index()
            .for_each(|loc| {
                if loc.entry.tpe == s3bk::pack::BlobType::Tree {
                    packs.insert(loc.pack);
                }
                Ok(())
            })
            .unwrap();
        packs
            .into_iter()
            .map(|id| repo.join(s3bk::backend::Handle::new(s3bk::backend::FileType::Pack, id.to_hex()).path()))
            .collect()
    })
}

#[test]
fn repair_snapshots_empties_unreadable_directories_with_a_marker() {
    let e = Env::with_backup();
    let packs = tree_packs(&e);
    assert!(!packs.is_empty());
    for p in &packs {
        std::fs::remove_file(p).unwrap();
    }
    let r = e.json(&["repair", "snapshots"], 0);
    let rep = &r["repaired"][0];
    let changes = rep["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 1, "{r}");
    assert_eq!(changes[0]["kind"], "directory_emptied");
    assert_eq!(changes[0]["path"], "/");
    assert!(changes[0]["error"].as_str().unwrap().contains("missing"), "{r}");
    let new = rep["repaired"].as_str().unwrap();
    let list = e.json(&["snapshots"], 0);
    let s = list.as_array().unwrap().iter().find(|s| s["id"] == new).unwrap();
    assert_eq!(s["incomplete"], true);
    assert_eq!(s["original"], rep["original"]);
    assert_eq!(s["summary"]["skipped"][0]["path"], "/", "{s}");

    e.cmd().args(["restore", "--snapshot", new, "--target"]).arg(e.path("out")).assert().code(0);
    let names: Vec<_> = std::fs::read_dir(e.path("out")).unwrap().map(|d| d.unwrap().file_name()).collect();
    assert_eq!(names, vec![std::ffi::OsString::from(s3bk::repair::LOST_MARKER)]);
    let text = std::fs::read_to_string(e.path("out").join(s3bk::repair::LOST_MARKER)).unwrap();
    assert!(text.contains("could not be read"), "{text}");
}

#[test]
fn repair_index_refuses_while_another_run_holds_the_lease() {
    let e = Env::with_backup();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let repo = e.path("repo");
    let lease = rt.block_on(async {
        let be: Arc<dyn s3bk::backend::Backend> = Arc::new(s3bk::backend::LocalBackend::new(&repo));
        let r = s3bk::repo::Repository::open(be, &s3bk::repo::Secret::passphrase("pw")).await.unwrap();
        s3bk::lease::Lease::acquire(&r, "prune").await.unwrap()
    });
    let before = e.objects("index");
    e.cmd().args(["repair", "index"]).assert().code(11).stderr(predicate::str::contains("prune"));
    assert_eq!(e.objects("index"), before, "nothing written or deleted while the lease is held elsewhere");
    // A dry run takes no lease.
    e.cmd().args(["repair", "index", "--dry-run"]).assert().code(0);
    rt.block_on(lease.release()).unwrap();
    let r = e.json(&["repair", "index"], 0);
    assert_eq!(r["lease_exclusive"], true, "{r}");
    assert_eq!(r["index_deleted"], 1);
}
