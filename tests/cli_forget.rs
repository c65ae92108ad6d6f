//! End-to-end tests of `s3bk forget`: dry runs remove nothing, the policy removes exactly the
//! snapshots it does not keep and the kept ones still restore, grouping and filters, the
//! profile's retention, and the refusals (no policy, spans in minutes). `--prune` is tested in
//! `cli_prune.rs`.
//!
//! Every command runs with HOME and the XDG folders in a temp dir and without inherited
//! `S3BK_*` variables, so the real home is never touched.

mod common;

use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use assert_cmd::Command;
use predicates::prelude::*;
use serde_json::Value;
use tempfile::TempDir;

const PW: &str = "correct horse";
const TIMEOUT: Duration = Duration::from_secs(60);

/// An isolated home with a repository holding five snapshots of `src`: four from host `alpha`
/// (`src/f.txt` = `v1`..`v4`, tagged odd/even) and then one from host `beta` (`v5`).
struct Env {
    dir: TempDir,
    /// Snapshot ids in the order they were made.
    ids: Vec<String>,
}

impl Env {
    fn new() -> Self {
        let mut e = Self { dir: tempfile::tempdir().unwrap(), ids: Vec::new() };
        e.cmd().arg("init").assert().success();
        let src = e.path("src");
        fs::create_dir_all(&src).unwrap();
        for (i, (host, tag)) in
            [("alpha", "odd"), ("alpha", "even"), ("alpha", "odd"), ("alpha", "even"), ("beta", "odd")]
                .into_iter()
                .enumerate()
        {
            fs::write(src.join("f.txt"), format!("v{}", i + 1)).unwrap();
            let out = e
                .cmd()
                .args(["backup", "--json", "--host", host, "--tag", tag])
                .arg(&src)
                .assert()
                .code(0)
                .get_output()
                .stdout
                .clone();
            e.ids.push(json(&out)["snapshot_id"].as_str().unwrap().to_owned());
        }
        e
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// `s3bk --repo <repo>` with the password, this home, and nothing inherited.
    fn cmd(&self) -> Command {
        let mut c = common::isolated_s3bk(self.dir.path());
        c.env("S3BK_PASSWORD", PW).timeout(TIMEOUT).arg("--repo").arg(self.path("repo"));
        c
    }

    /// The ids `snapshots --json` lists, oldest first.
    fn listed(&self) -> Vec<String> {
        let out = self.cmd().args(["snapshots", "--json"]).assert().success().get_output().stdout.clone();
        json(&out).as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap().to_owned()).collect()
    }

    /// `forget --json <args>`, expecting exit 0; returns the groups.
    fn forget_json(&self, args: &[&str]) -> Vec<Value> {
        let out = self.cmd().args(["forget", "--json"]).args(args).assert().code(0).get_output().stdout.clone();
        json(&out).as_array().expect("forget --json is an array").clone()
    }

    /// Snapshot numbers (1-based, in the order made) for a list of JSON entries.
    fn numbers(&self, entries: &Value) -> Vec<usize> {
        entries
            .as_array()
            .unwrap()
            .iter()
            .map(|v| 1 + self.ids.iter().position(|id| v["id"] == id.as_str()).expect("a known snapshot id"))
            .collect()
    }

    fn write_config(&self, text: &str) {
        let dir = self.path("config").join("s3bk");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("config.toml"), text).unwrap();
    }
}

fn json(out: &[u8]) -> Value {
    serde_json::from_slice(out).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(out)))
}

#[test]
fn dry_run_lists_the_plan_and_removes_nothing() {
    let e = Env::new();
    let groups = e.forget_json(&["--keep-last", "2", "--dry-run"]);
    assert_eq!(groups.len(), 2, "{groups:?}");
    let (alpha, beta) = (&groups[0], &groups[1]);
    assert_eq!(alpha["key"]["host"], "alpha");
    assert_eq!(alpha["key"]["tags"], Value::Null, "not grouped by tags");
    assert_eq!(e.numbers(&alpha["keep"]), [4, 3]);
    assert_eq!(alpha["keep"][0]["reasons"], serde_json::json!(["last 1"]));
    assert_eq!(alpha["keep"][1]["reasons"], serde_json::json!(["last 2"]));
    assert_eq!(e.numbers(&alpha["remove"]), [2, 1]);
    assert!(alpha["remove"].as_array().unwrap().iter().all(|r| r["removed"] == false));
    assert_eq!(beta["key"]["host"], "beta");
    assert_eq!(e.numbers(&beta["keep"]), [5]);
    assert_eq!(e.numbers(&beta["remove"]), Vec::<usize>::new());
    assert_eq!(e.listed(), e.ids, "a dry run removed something");

    // The human plan says what would go, with the reasons.
    e.cmd()
        .args(["forget", "--keep-last", "2", "--dry-run"])
        .assert()
        .success()
        .stdout(predicate::str::contains("would remove 2 snapshots").and(predicate::str::contains("last 2")))
        .stderr(predicate::str::contains("nothing was removed"));
    assert_eq!(e.listed(), e.ids);

    // Grouping by tags too splits alpha in two; a host filter leaves beta out.
    let groups = e.forget_json(&["--keep-last", "1", "--dry-run", "--group-by", "host,tags", "--host", "alpha"]);
    let plan: Vec<(Value, Vec<usize>, Vec<usize>)> =
        groups.iter().map(|g| (g["key"]["tags"].clone(), e.numbers(&g["keep"]), e.numbers(&g["remove"]))).collect();
    assert_eq!(
        plan,
        [(serde_json::json!(["even"]), vec![4], vec![2]), (serde_json::json!(["odd"]), vec![3], vec![1])],
        "{groups:?}"
    );
}

#[test]
fn forget_removes_what_the_policy_does_not_keep_and_the_rest_restores() {
    let e = Env::new();
    e.cmd()
        .args(["forget", "--keep-last", "2"])
        .assert()
        .success()
        .stdout(predicate::str::contains("remove 2 snapshots"))
        .stderr(predicate::str::contains("removed 2 of 2 snapshots"));
    let left = e.listed();
    assert_eq!(left, [e.ids[2].clone(), e.ids[3].clone(), e.ids[4].clone()]);

    // The kept snapshots still restore, each with its own content (packs were not touched).
    for (n, id) in [(3, &e.ids[2]), (4, &e.ids[3]), (5, &e.ids[4])] {
        let target = e.path(&format!("restore-{n}"));
        e.cmd().args(["restore", "--snapshot", id, "--target"]).arg(&target).assert().success();
        assert_eq!(fs::read_to_string(target.join("src/f.txt")).unwrap(), format!("v{n}"));
    }

    // Running it again finds nothing more to remove; JSON reports removals that happened.
    let groups = e.forget_json(&["--keep-last", "1"]);
    assert_eq!(e.numbers(&groups[0]["remove"]), [3]);
    assert_eq!(groups[0]["remove"][0]["removed"], true);
    assert_eq!(e.listed(), [e.ids[3].clone(), e.ids[4].clone()]);
}

#[test]
fn refusals_leave_every_snapshot() {
    let e = Env::new();
    // No policy and no profile: the message shows an example.
    e.cmd()
        .arg("forget")
        .assert()
        .code(1)
        .stderr(predicate::str::contains("no retention policy").and(predicate::str::contains("--keep-within 60d")));
    // Zero counts are no policy either.
    e.cmd().args(["forget", "--keep-last", "0"]).assert().code(1).stderr(predicate::str::contains("--keep-within 60d"));
    // `6m` would be six minutes: refused as a usage error.
    e.cmd()
        .args(["forget", "--keep-within", "6m"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("months are `mo`"));
    // A policy that would empty a group (no alpha snapshot is tagged `never`).
    e.cmd()
        .args(["forget", "--keep-tag", "never"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("would remove every snapshot").and(predicate::str::contains("host alpha")));
    assert_eq!(e.listed(), e.ids);
}

#[test]
fn profile_retention_is_used_when_no_option_is_given() {
    let e = Env::new();
    e.write_config("default_profile = \"p\"\n[profiles.p]\nretention = { keep_last = 1, keep_tags = [\"odd\"] }\n");
    let groups = e.forget_json(&["--dry-run"]);
    // alpha: 4 by keep_last, 3 and 1 by the tag; beta: 5.
    assert_eq!(e.numbers(&groups[0]["keep"]), [4, 3, 1]);
    assert_eq!(e.numbers(&groups[0]["remove"]), [2]);
    assert_eq!(groups[0]["keep"][1]["reasons"], serde_json::json!(["tag odd"]));
    // Options replace the profile's policy entirely.
    let groups = e.forget_json(&["--dry-run", "--keep-last", "3"]);
    assert_eq!(e.numbers(&groups[0]["keep"]), [4, 3, 2]);
    assert_eq!(e.numbers(&groups[0]["remove"]), [1]);
    // And without --dry-run the profile's policy removes.
    e.cmd().arg("forget").assert().success().stderr(predicate::str::contains("retention policy of profile \"p\""));
    assert_eq!(e.listed(), [e.ids[0].clone(), e.ids[2].clone(), e.ids[3].clone(), e.ids[4].clone()]);
}

#[test]
fn maintain_forgets_by_the_profile_prunes_and_verifies_in_one_summary() {
    let e = Env::new();
    // No policy anywhere: maintain refuses and removes nothing.
    e.cmd().arg("maintain").assert().failure().stderr(predicate::str::contains("no retention policy"));
    assert_eq!(e.listed(), e.ids);

    e.write_config("default_profile = \"p\"\n[profiles.p]\nretention = { keep_last = 1 }\n");
    let dry = e.cmd().args(["maintain", "--dry-run", "--json"]).assert().code(0).get_output().stdout.clone();
    let dry = json(&dry);
    assert_eq!(dry["forget"]["removed"], 3, "{dry}");
    assert_eq!(e.listed(), e.ids, "a dry run removed something");

    let out = e
        .cmd()
        .args(["maintain", "--json", "--grace", "0s", "--read-data-subset", "100%"])
        .assert()
        .code(0)
        .get_output()
        .stdout
        .clone();
    let r = json(&out);
    assert_eq!((r["forget"]["kept"].as_u64(), r["forget"]["removed"].as_u64()), (Some(2), Some(3)), "{r}");
    assert!(r["prune"]["marked"]["plan"].is_string(), "the forgotten data is marked: {r}");
    assert_eq!(r["verify"]["problems"], serde_json::json!([]), "{r}");
    assert_eq!(r["ok"], true);
    assert_eq!(e.listed(), vec![e.ids[3].clone(), e.ids[4].clone()]);

    // The next day's run executes the plan (grace 0s here) and the kept snapshots restore.
    let out = e.cmd().args(["maintain", "--json", "--grace", "0s"]).assert().code(0).get_output().stdout.clone();
    assert!(json(&out)["prune"]["executed"]["packs_deleted"].as_u64().unwrap() > 0);
    let target = e.path("restored");
    e.cmd().args(["restore", "--snapshot", &e.ids[3], "--target"]).arg(&target).assert().success();
    assert_eq!(fs::read_to_string(target.join("src/f.txt")).unwrap(), "v4");
}
