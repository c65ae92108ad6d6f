//! `s3bk verify` through the binary: exit codes, the human report and `--json`, on a clean
//! repository and on one with a damaged pack. Commands run isolated like in cli_roundtrip.rs
//! (temp HOME and XDG folders, no inherited `S3BK_*` variables).

mod common;

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use predicates::prelude::*;
use serde_json::Value;
use tempfile::TempDir;

struct Env {
    dir: TempDir,
}

impl Env {
    fn new() -> Self {
        Self { dir: tempfile::tempdir().unwrap() }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// `s3bk --repo <repo>` with the password, a temp home and no inherited configuration.
    fn cmd(&self) -> Command {
        let mut c = common::isolated_s3bk(self.dir.path());
        c.env("S3BK_PASSWORD", "pw").arg("--repo").arg(self.path("repo"));
        c
    }

    /// A repository holding one backup of the fixture tree.
    fn with_backup() -> Self {
        let e = Self::new();
        common::make_fixture_tree(&e.path("src"));
        e.cmd().arg("init").assert().success();
        e.cmd().args(["backup", "--json"]).arg(e.path("src")).assert().code(0);
        e
    }

    /// `verify --json <extra>`, expecting `code`; returns the report.
    fn verify_json(&self, extra: &[&str], code: i32) -> Value {
        let out = self.cmd().args(["verify", "--json"]).args(extra).assert().code(code).get_output().stdout.clone();
        serde_json::from_slice(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out)))
    }
}

/// The largest pack (a data pack: tree packs of the fixture are small).
fn largest_pack(repo: &Path) -> (String, PathBuf) {
    let mut packs: Vec<(u64, PathBuf)> = common::walk(&repo.join("data"))
        .into_iter()
        .filter(|p| p.is_file())
        .map(|p| (p.metadata().unwrap().len(), p))
        .collect();
    packs.sort();
    let (_, path) = packs.pop().expect("a pack");
    (path.file_name().unwrap().to_str().unwrap().to_owned(), path)
}

#[test]
fn clean_repository_verifies_and_exits_0() {
    let e = Env::with_backup();
    e.cmd().arg("verify").assert().code(0).stdout(predicate::str::contains("no problems found"));
    let r = e.verify_json(&[], 0);
    assert_eq!(r["problems"], serde_json::json!([]), "{r}");
    assert_eq!(r["snapshots"], 1);
    assert_eq!(r["packs_read"], 0);
    let r = e.verify_json(&["--read-data"], 0);
    assert_eq!(r["problems"], serde_json::json!([]), "{r}");
    assert!(r["packs"].as_u64().unwrap() >= 2, "{r}");
    assert_eq!(r["packs_read"], r["packs"]);
    let r = e.verify_json(&["--read-data-subset", "100%"], 0);
    assert_eq!(r["packs_read"], r["packs"]);
    e.cmd().args(["verify", "--read-data-subset", "5/4"]).assert().code(2);
    e.cmd().args(["verify", "--read-data", "--read-data-subset", "1/4"]).assert().code(2);
}

#[test]
fn damaged_pack_is_named_and_exits_1() {
    let e = Env::with_backup();
    let (name, path) = largest_pack(&e.path("repo"));
    let mut data = std::fs::read(&path).unwrap();
    let at = data.len() / 3;
    data[at] ^= 1;
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, data).unwrap();

    // Invisible without reading the pack.
    e.cmd().arg("verify").assert().code(0);
    e.cmd()
        .args(["verify", "--read-data"])
        .assert()
        .code(1)
        .stdout(predicate::str::contains(format!("problem: pack {name} is corrupt")))
        .stderr(predicate::str::contains("2 problems found"));
    let r = e.verify_json(&["--read-data"], 1);
    let problems = r["problems"].as_array().unwrap();
    assert!(problems.iter().any(|p| p["kind"] == "pack_hash_mismatch" && p["pack"] == name.as_str()), "{r}");
    assert!(problems.iter().any(|p| p["kind"] == "blob_corrupt" && p["pack"] == name.as_str()), "{r}");
}

#[test]
fn restore_test_measures_throughput_and_estimates_the_full_restore() {
    let e = Env::with_backup();
    let r = e.verify_json(&["--restore-test", "100%"], 0);
    let t = &r["restore_test"];
    assert_eq!(t["problems"], serde_json::json!([]), "{r}");
    let total = t["bytes_total"].as_u64().unwrap();
    // hello (and its hard link, once), note, big, sparse (its data only), the latin-1 name.
    assert!(total > 3 << 20, "{t}");
    assert_eq!(t["files_sampled"], t["files_total"], "{t}");
    assert_eq!(t["bytes_sampled"].as_u64(), Some(total));
    assert_eq!(t["bytes_restored"].as_u64(), Some(total), "{t}");
    let rate = t["throughput_bytes_per_sec"].as_f64().unwrap();
    let est = t["estimated_full_restore_secs"].as_f64().unwrap();
    assert!(rate > 0.0 && est > 0.0, "{t}");
    assert!((est * rate - total as f64).abs() < total as f64 * 0.01, "estimate is total / throughput: {t}");
    assert_eq!(t["within_rto"], Value::Null);

    // An RTO it meets exits 0, one it cannot meet exits 4 (the repository is fine).
    let r = e.verify_json(&["--restore-test", "--rto", "1000h"], 0);
    assert_eq!(r["restore_test"]["within_rto"], true, "{r}");
    assert_eq!(r["restore_test"]["rto_secs"], 3_600_000.0);
    let r = e.verify_json(&["--restore-test", "1%", "--rto", "1ns"], 4);
    assert_eq!(r["restore_test"]["within_rto"], false, "{r}");
    assert!(r["restore_test"]["files_sampled"].as_u64().unwrap() >= 1, "{r}");
    e.cmd()
        .args(["verify", "--restore-test", "--rto", "1ns"])
        .assert()
        .code(4)
        .stdout(predicate::str::contains("estimated time to restore the whole snapshot"))
        .stdout(predicate::str::contains("exceeds the recovery time objective"));
    e.cmd().args(["verify", "--rto", "2h"]).assert().code(2);
    e.cmd().args(["verify", "--restore-test", "0%"]).assert().code(2);

    // The temporary folder is gone afterwards.
    let scratch = e.path("scratch");
    std::fs::create_dir(&scratch).unwrap();
    e.cmd().args(["verify", "--restore-test", "--restore-test-dir"]).arg(&scratch).assert().code(0);
    assert_eq!(std::fs::read_dir(&scratch).unwrap().count(), 0);
}

#[test]
fn restore_test_detects_a_corrupted_pack() {
    let e = Env::with_backup();
    let (_, path) = largest_pack(&e.path("repo"));
    let mut data = std::fs::read(&path).unwrap();
    let at = data.len() / 3;
    data[at] ^= 1;
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, data).unwrap();

    // The structure check cannot see it; the restore test does.
    let r = e.verify_json(&["--restore-test", "100%"], 1);
    assert_eq!(r["problems"], serde_json::json!([]), "{r}");
    let problems = r["restore_test"]["problems"].as_array().unwrap();
    assert!(problems.iter().any(|p| p["kind"] == "restore_failed"), "{r}");
    assert_eq!(r["restore_test"]["throughput_bytes_per_sec"], Value::Null);
    e.cmd()
        .args(["verify", "--restore-test", "100%", "--rto", "1000h"])
        .assert()
        .code(1)
        .stdout(predicate::str::contains("problem: restore test of snapshot"));
}
