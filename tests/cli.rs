//! Tests of the `s3bk` binary that need no backup or restore: help, completions, man pages,
//! `init`, `snapshots`, password sources, repository resolution and exit codes.
//!
//! Every command runs with HOME and the XDG folders in a temp dir and without inherited
//! `S3BK_*` variables, so the real home is never touched.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use assert_cmd::Command;
use predicates::prelude::*;
use tempfile::TempDir;

/// An isolated home for one test.
struct Home {
    dir: TempDir,
}

impl Home {
    fn new() -> Self {
        Self { dir: tempfile::tempdir().unwrap() }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn config_dir(&self) -> PathBuf {
        self.path("config")
    }

    /// `s3bk` with this home and no inherited configuration.
    fn cmd(&self) -> Command {
        common::isolated_s3bk(self.dir.path())
    }

    /// Creates a repository at `repo` with password `pw`.
    fn init(&self, repo: &Path, pw: &str) {
        self.cmd().arg("--repo").arg(repo).arg("init").env("S3BK_PASSWORD", pw).assert().success();
    }
}

fn json(out: &[u8]) -> serde_json::Value {
    serde_json::from_slice(out).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(out)))
}

#[test]
fn help_lists_commands_and_exit_codes() {
    let h = Home::new();
    let out = h.cmd().arg("--help").assert().success().get_output().stdout.clone();
    let text = String::from_utf8(out).unwrap();
    for c in ["init", "backup", "restore", "snapshots", "ls", "diff", "find", "completions", "man"] {
        assert!(text.contains(c), "help lacks {c}:\n{text}");
    }
    for code in ["10", "11", "12", "incomplete"] {
        assert!(text.contains(code), "help lacks exit code {code}");
    }
}

#[test]
fn bad_arguments_exit_2() {
    let h = Home::new();
    h.cmd().arg("--no-such-flag").assert().code(2);
    h.cmd().args(["restore", "--overwrite", "sometimes"]).assert().code(2);
}

#[test]
fn completions_and_man() {
    let h = Home::new();
    h.cmd().args(["completions", "bash"]).assert().success().stdout(predicate::str::contains("s3bk"));
    h.cmd().arg("man").assert().success().stdout(predicate::str::contains(".TH s3bk"));
    let dir = h.path("man");
    h.cmd().args(["man", "--dir"]).arg(&dir).assert().success();
    assert!(dir.join("s3bk.1").is_file());
    assert!(dir.join("s3bk-backup.1").is_file());
}

#[test]
fn init_creates_a_repository_and_snapshots_lists_none() {
    let h = Home::new();
    let repo = h.path("repo");
    let out = h
        .cmd()
        .arg("--repo")
        .arg(&repo)
        .args(["--json", "init"])
        .env("S3BK_PASSWORD", "pw")
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let v = json(&out);
    assert_eq!(v["repository"], repo.display().to_string());
    assert_eq!(v["id"].as_str().unwrap().len(), 64);
    assert!(repo.join("config").is_file());
    assert_eq!(fs::read_dir(repo.join("keys")).unwrap().count(), 1);

    h.cmd()
        .args(["snapshots", "--json"])
        .env("S3BK_REPOSITORY", &repo)
        .env("S3BK_PASSWORD", "pw")
        .assert()
        .success()
        .stdout("[]\n");

    // A second init refuses.
    h.cmd()
        .arg("--repo")
        .arg(&repo)
        .arg("init")
        .env("S3BK_PASSWORD", "pw")
        .assert()
        .code(1)
        .stderr(predicate::str::contains("already exists"));
}

#[test]
fn wrong_password_exits_12() {
    let h = Home::new();
    let repo = h.path("repo");
    h.init(&repo, "right");
    h.cmd()
        .arg("--repo")
        .arg(&repo)
        .arg("snapshots")
        .env("S3BK_PASSWORD", "wrong")
        .assert()
        .code(12)
        .stderr(predicate::str::contains("password"));
}

#[test]
fn missing_repository_exits_10() {
    let h = Home::new();
    h.cmd()
        .arg("--repo")
        .arg(h.path("nowhere"))
        .arg("snapshots")
        .env("S3BK_PASSWORD", "pw")
        .assert()
        .code(10)
        .stderr(predicate::str::contains("init"));
}

#[test]
fn nothing_configured_exits_10_with_advice() {
    let h = Home::new();
    h.cmd()
        .arg("snapshots")
        .assert()
        .code(10)
        .stderr(predicate::str::contains("--repo").and(predicate::str::contains("S3BK_REPOSITORY")));
    for cmd in [&["ls", "latest"][..], &["diff", "a", "b"], &["find", "x"], &["restore"]] {
        h.cmd().args(cmd).assert().code(10);
    }
    // Nothing was created.
    assert!(!h.path("data").exists());
    assert!(!h.config_dir().exists());
}

#[test]
fn s3_location_without_a_region_says_how_to_set_one() {
    let h = Home::new();
    let mut c = h.cmd();
    for v in ["AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"] {
        c.env_remove(v);
    }
    c.env("AWS_CONFIG_FILE", h.path("none"))
        .env("AWS_SHARED_CREDENTIALS_FILE", h.path("none"))
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .args(["--repo", "s3://bucket/prefix", "snapshots"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("no AWS region configured: pass --region, set AWS_REGION"))
        // The SDK's own chatter (region lookups) stays out of the default output.
        .stderr(predicate::str::contains("WARN").not());
}

#[test]
fn password_command_and_file() {
    let h = Home::new();
    let repo = h.path("repo");
    h.init(&repo, "s3cret");

    h.cmd()
        .arg("--repo")
        .arg(&repo)
        .args(["snapshots", "--json"])
        .env("S3BK_PASSWORD_COMMAND", "echo s3cret")
        .assert()
        .success()
        .stdout("[]\n");

    let file = h.path("pw.txt");
    fs::write(&file, "s3cret\n").unwrap();
    h.cmd()
        .arg("--repo")
        .arg(&repo)
        .arg("--password-file")
        .arg(&file)
        .args(["snapshots", "--json"])
        .assert()
        .success()
        .stdout("[]\n");

    h.cmd()
        .arg("--repo")
        .arg(&repo)
        .arg("--password-command")
        .arg("exit 7")
        .arg("snapshots")
        .assert()
        .code(1)
        .stderr(predicate::str::contains("exit 7"));

    // No source and no terminal: say which variables to set.
    h.cmd()
        .arg("--repo")
        .arg(&repo)
        .arg("snapshots")
        .assert()
        .code(1)
        .stderr(predicate::str::contains("S3BK_PASSWORD"));
}

#[test]
fn config_profile_selects_the_repository() {
    let h = Home::new();
    let a = h.path("repo-a");
    let b = h.path("repo-b");
    h.init(&a, "pa");
    h.init(&b, "pb");
    fs::write(h.path("pb.txt"), "pb\n").unwrap();
    let dir = h.config_dir().join("s3bk");
    fs::create_dir_all(&dir).unwrap();
    fs::write(
        dir.join("config.toml"),
        format!(
            r#"
default_profile = "a"

[profiles.a]
repo = "{}"
password_command = "echo pa"
excludes = ["*.tmp"]
tags = ["home"]
retention = {{ keep_within = "60d", keep_daily = 7 }}

[profiles.b]
repo = "{}"
password_file = "../../pb.txt"
"#,
            a.display(),
            b.display()
        ),
    )
    .unwrap();

    // The default profile.
    h.cmd().args(["snapshots", "--json"]).assert().success().stdout("[]\n");
    // --profile, with a password file relative to the config file.
    h.cmd().args(["--profile", "b", "snapshots", "--json"]).assert().success().stdout("[]\n");
    h.cmd().args(["snapshots", "--json"]).env("S3BK_PROFILE", "b").assert().success();
    // The wrong profile's password shows it is really the other repository.
    h.cmd().args(["--profile", "b", "snapshots"]).env("S3BK_PASSWORD", "pa").assert().code(12);
    // An unknown profile names the known ones.
    h.cmd().args(["--profile", "c", "snapshots"]).assert().code(1).stderr(predicate::str::contains("a, b"));
    // --repo beats the profile.
    h.cmd().arg("--repo").arg(h.path("nowhere")).args(["snapshots"]).assert().code(10);

    // S3BK_CONFIG points elsewhere.
    let other = h.path("other.toml");
    fs::write(&other, format!("[profiles.x]\nrepo = \"{}\"\n", b.display())).unwrap();
    h.cmd()
        .args(["--profile", "x", "snapshots", "--json"])
        .env("S3BK_CONFIG", &other)
        .env("S3BK_PASSWORD", "pb")
        .assert()
        .success()
        .stdout("[]\n");
}

#[test]
fn bad_config_file_is_reported() {
    let h = Home::new();
    let dir = h.config_dir().join("s3bk");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("config.toml"), "[profiles.a]\nrepository = \"/x\"\n").unwrap();
    h.cmd()
        .arg("snapshots")
        .assert()
        .code(1)
        .stderr(predicate::str::contains("config.toml").and(predicate::str::contains("repository")));
}

#[test]
fn init_without_configuration_creates_the_default_repository() {
    let h = Home::new();
    let out = h.cmd().args(["init", "--json"]).assert().success().get_output().stdout.clone();
    let v = json(&out);
    let repo = h.path("data").join("s3bk").join("repo");
    let key = h.config_dir().join("s3bk").join("key");
    assert_eq!(v["repository"], repo.display().to_string());
    assert!(repo.join("config").is_file());
    let mode = fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let secret = fs::read_to_string(&key).unwrap();
    assert_eq!(secret.trim_end().len(), 64);

    // Other commands find it and open it with the key file.
    h.cmd().args(["snapshots", "--json"]).assert().success().stdout("[]\n");
    // An explicit password takes precedence over the key file.
    h.cmd().arg("snapshots").env("S3BK_PASSWORD", "nope").assert().code(12);

    // Without --json the notice says where things are and what losing the key means.
    let h2 = Home::new();
    h2.cmd()
        .arg("init")
        .assert()
        .success()
        .stderr(predicate::str::contains("key").and(predicate::str::contains("safe")));
    // A second init leaves it alone.
    h.cmd().arg("init").assert().code(1);
    assert_eq!(fs::read_to_string(&key).unwrap(), secret);
}

#[test]
fn backup_creates_nothing_on_a_dry_run_or_bad_options() {
    let h = Home::new();
    let src = h.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a.txt"), "hello").unwrap();
    let repo = h.path("data").join("s3bk").join("repo");
    let key = h.config_dir().join("s3bk").join("key");

    h.cmd()
        .args(["backup", "--exclude-file", "missing.txt"])
        .arg(&src)
        .assert()
        .code(1)
        .stderr(predicate::str::contains("missing.txt"));
    h.cmd().args(["backup", "--parent", "abc", "--force-rehash"]).arg(&src).assert().code(2);
    // Whatever the archiver does with it, a dry run must not create the default repository.
    let _ = h.cmd().args(["backup", "--dry-run", "--json"]).arg(&src).env("RUST_BACKTRACE", "0").output();
    assert!(!repo.exists());
    assert!(!key.exists());
}
