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
