//! End-to-end tests of `s3bk prune` and `forget --prune`: forgetting and pruning twice with no
//! grace removes the forgotten data while the kept snapshot restores byte-identical and `verify
//! --read-data` stays clean; `--dry-run` writes nothing and reports the plan as JSON; prune
//! refuses a repository with missing blobs; bad options are usage errors.
//!
//! Every command runs with HOME and the XDG folders in a temp dir and without inherited
//! `S3BK_*` variables, so the real home is never touched.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use assert_cmd::Command;
use predicates::prelude::*;
use serde_json::Value;
use tempfile::TempDir;

const PW: &str = "correct horse";

struct Env {
    dir: TempDir,
}

impl Env {
    /// A repository with two snapshots of `src`: `keep.txt` in both, `noise.bin` replaced in
    /// between (so the first snapshot's noise is used by nothing once it is forgotten).
    fn new() -> Self {
        let e = Self { dir: tempfile::tempdir().unwrap() };
        e.cmd().arg("init").assert().success();
        let src = e.path("src");
        fs::create_dir_all(&src).unwrap();
        fs::write(src.join("keep.txt"), "kept in both snapshots\n".repeat(1000)).unwrap();
        for _ in 0..2 {
            let mut noise = vec![0u8; 900 << 10];
            rand::fill(&mut noise[..]);
            fs::write(src.join("noise.bin"), noise).unwrap();
            e.cmd().args(["backup", "--json"]).arg(&src).assert().code(0);
        }
        e
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn cmd(&self) -> Command {
        let mut c = common::isolated_s3bk(self.dir.path());
        c.env("S3BK_PASSWORD", PW).timeout(Duration::from_secs(120)).arg("--repo").arg(self.path("repo"));
        c
    }

    fn json(&self, args: &[&str]) -> Value {
        let out = self.cmd().arg("--json").args(args).assert().code(0).get_output().stdout.clone();
        serde_json::from_slice(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out)))
    }

    /// Every regular file of the repository with its size and mtime.
    fn files(&self, with_locks: bool) -> BTreeMap<PathBuf, (u64, std::time::SystemTime)> {
        let locks = self.path("repo/locks");
        walkdir::WalkDir::new(self.path("repo"))
            .into_iter()
            .map(|e| e.unwrap())
            .filter(|e| !e.file_type().is_dir() && (with_locks || !e.path().starts_with(&locks)))
            .map(|e| {
                let m = e.metadata().unwrap();
                (e.path().to_path_buf(), (m.len(), m.modified().unwrap()))
            })
            .collect()
    }

    fn packs(&self) -> usize {
        self.files(false).keys().filter(|p| p.starts_with(self.path("repo/data"))).count()
    }
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[test]
fn forget_prune_then_prune_removes_forgotten_data_and_the_rest_restores() {
    let e = Env::new();
    let packs_before = e.packs();

    // A dry run of forget --prune shows prune's plan as if the snapshot were gone; nothing changes.
    let before = e.files(true);
    let out = e.json(&["forget", "--keep-last", "1", "--prune", "--grace", "0s", "--dry-run"]);
    assert!(out["forget"].is_array(), "{out}");
    assert_eq!(out["prune"]["dry_run"], true);
    assert!(u(&out["prune"]["marked"]["packs_unused"]) + u(&out["prune"]["marked"]["packs_repack"]) >= 1, "{out}");
    assert_eq!(e.files(true), before, "a dry run wrote something");

    let out = e.json(&["forget", "--keep-last", "1", "--prune", "--grace", "0s"]);
    assert_eq!(out["forget"][0]["remove"].as_array().unwrap().len(), 1, "{out}");
    let marked = &out["prune"]["marked"];
    let condemned = u(&marked["packs_unused"]) + u(&marked["packs_repack"]) + u(&marked["packs_unindexed"]);
    assert!(condemned >= 2, "the forgotten noise and tree packs: {out}");
    assert!(marked["plan"].is_string(), "{out}");
    assert!(e.packs() >= packs_before, "marking deletes nothing");
    // Between the runs verify is clean and tells condemned packs apart.
    e.cmd()
        .arg("verify")
        .assert()
        .code(0)
        .stdout(predicate::str::contains(format!("{condemned} packs are condemned by a deletion plan")));

    // prune --dry-run: the due plan and what executing it would delete; nothing changes.
    let before = e.files(true);
    let out = e.json(&["prune", "--dry-run"]);
    assert_eq!(u(&out["executed"]["plans_due"]), 1, "{out}");
    assert_eq!(u(&out["executed"]["packs_deleted"]), condemned, "{out}");
    assert_eq!(e.files(true), before, "a dry run wrote something");

    let out = e.json(&["prune", "--grace", "0s"]);
    assert_eq!(u(&out["executed"]["packs_deleted"]), condemned, "{out}");
    assert_eq!(u(&out["marked"]["packs_unused"]), 0, "{out}");
    assert!(e.packs() < packs_before, "packs were deleted");

    let target = e.path("restored");
    e.cmd().args(["restore", "--target"]).arg(&target).assert().success();
    common::assert_same_tree(&e.path("src"), &target.join("src"));
    e.cmd().args(["verify", "--read-data"]).assert().code(0).stdout(predicate::str::contains("no problems found"));

    // Human output of a run with nothing to do.
    e.cmd().arg("prune").assert().code(0).stdout(predicate::str::contains("nothing to mark"));
}

#[test]
fn prune_refuses_missing_blobs_and_bad_options() {
    let e = Env::new();
    e.cmd().args(["prune", "--max-unused", "101%"]).assert().code(2);
    e.cmd().args(["prune", "--grace", "soon"]).assert().code(2);
    for f in fs::read_dir(e.path("repo/index")).unwrap() {
        fs::remove_file(f.unwrap().path()).unwrap();
    }
    let before = e.files(false);
    e.cmd().arg("prune").assert().code(1).stderr(predicate::str::contains("prune refused"));
    assert_eq!(e.files(false), before, "a refused prune wrote something");
    assert!(Path::new(&e.path("repo/deletions")).read_dir().map_or(true, |mut d| d.next().is_none()));
}
