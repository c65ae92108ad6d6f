//! End-to-end tests of the `s3bk` binary that back up and restore: fidelity through the CLI,
//! change detection, wrong passwords, unreadable files, FIFOs, browsing, the default restore
//! target, the embedded default repository, exclude options and dry runs.
//!
//! Every command runs with HOME and the XDG folders in a temp dir and without inherited
//! `S3BK_*` variables, so the real home is never touched.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use assert_cmd::Command;
use predicates::prelude::*;
use serde_json::Value;
use tempfile::TempDir;

const PW: &str = "correct horse";

/// Generous bound for any single command: a FIFO or a lock must never make one hang.
const TIMEOUT: Duration = Duration::from_secs(60);

/// An isolated home for one test, with a repository location at `repo`.
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

    fn repo(&self) -> PathBuf {
        self.path("repo")
    }

    /// `s3bk` with this home, no repository and no password.
    fn bare(&self) -> Command {
        let mut c = common::isolated_s3bk(self.dir.path());
        c.timeout(TIMEOUT);
        c
    }

    /// `s3bk --repo <repo>` with the right password.
    fn cmd(&self) -> Command {
        let mut c = self.bare();
        c.arg("--repo").arg(self.repo()).env("S3BK_PASSWORD", PW);
        c
    }

    fn init(&self) {
        self.cmd().arg("init").assert().success();
    }

    /// `backup --json <extra...>`, expecting exit 0; returns the summary.
    fn backup(&self, extra: &[&OsStr]) -> Value {
        let out = self.cmd().args(["backup", "--json"]).args(extra).assert().code(0).get_output().stdout.clone();
        let v = json(&out);
        assert_eq!(v["incomplete"], false, "{v}");
        v
    }

    /// `snapshots --json`.
    fn snapshots(&self) -> Vec<Value> {
        let out = self.cmd().args(["snapshots", "--json"]).assert().success().get_output().stdout.clone();
        json(&out).as_array().expect("snapshots --json is an array").clone()
    }
}

fn json(out: &[u8]) -> Value {
    serde_json::from_slice(out).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(out)))
}

fn text(out: &[u8]) -> String {
    String::from_utf8(out.to_vec()).expect("output is UTF-8")
}

fn os(p: &Path) -> &OsStr {
    p.as_os_str()
}

/// The number of regular files under `root` (each name of a hard link counts).
fn count_files(root: &Path) -> u64 {
    common::walk(root).iter().filter(|p| p.symlink_metadata().unwrap().is_file()).count() as u64
}

/// Every entry under `root` with its kind, size and content hash: changes to any byte, name or
/// file show up as a difference.
fn fingerprint(root: &Path) -> BTreeMap<PathBuf, (bool, u64, String)> {
    common::walk(root)
        .into_iter()
        .map(|p| {
            let m = p.symlink_metadata().unwrap();
            let hash =
                if m.is_file() { blake3::hash(&fs::read(&p).unwrap()).to_hex().to_string() } else { String::new() };
            (p.strip_prefix(root).unwrap().to_path_buf(), (m.is_dir(), m.len(), hash))
        })
        .collect()
}

/// The `path` values of an `ls --json` listing.
fn listed_paths(ls_json: &Value) -> BTreeSet<String> {
    ls_json
        .as_array()
        .expect("ls --json is an array")
        .iter()
        .map(|e| e["path"].as_str().expect("path is a string").to_owned())
        .collect()
}

/// Names of the entries under `dir` (empty if it does not exist).
fn names_in(dir: &Path) -> BTreeSet<PathBuf> {
    fs::read_dir(dir).map(|rd| rd.map(|e| e.unwrap().path()).collect()).unwrap_or_default()
}

fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn round_trip_keeps_every_entry_kind_and_attribute() {
    let e = Env::new();
    let src = e.path("src");
    common::make_fixture_tree(&src);
    e.init();
    // The fixture holds a FIFO: the backup must not open it (it has no writer and would block).
    let v = e.backup(&[os(&src)]);
    assert_eq!(v["dry_run"], false);
    assert_eq!(v["snapshot_id"].as_str().expect("snapshot id").len(), 64);
    assert!(v["skipped"].as_array().unwrap().is_empty(), "{v}");
    assert_eq!(v["files_new"], count_files(&src));
    // Holes are not read as data: 40 MiB sparse + 3 MiB dense.
    assert!(v["bytes_read"].as_u64().unwrap() < 20 << 20, "{v}");

    let target = e.path("target");
    let out = e
        .cmd()
        .args(["restore", "--snapshot", "latest", "--json", "--target"])
        .arg(&target)
        .assert()
        .code(0)
        .get_output()
        .stdout
        .clone();
    let r = json(&out);
    assert_eq!(r["snapshot_id"], v["snapshot_id"]);
    assert_eq!(r["target"], target.display().to_string());
    common::assert_same_tree(&src, &target.join("src"));
}

#[test]
fn unchanged_rebackup_reads_nothing_and_force_rehash_reads_everything() {
    let e = Env::new();
    let src = e.path("src");
    common::make_fixture_tree(&src);
    let files = count_files(&src);
    assert_eq!(files, 7, "the fixture changed; check this test still means what it says");
    e.init();
    let first = e.backup(&[os(&src)]);
    assert_eq!(first["files_new"], files);
    assert!(first["bytes_read"].as_u64().unwrap() > 3 << 20, "{first}");
    assert!(first["bytes_added"].as_u64().unwrap() > 0, "{first}");

    let second = e.backup(&[os(&src)]);
    assert_eq!(second["bytes_read"], 0, "{second}");
    assert_eq!(second["files_unmodified"], files, "{second}");
    assert_eq!(second["files_new"], 0, "{second}");
    assert_eq!(second["files_changed"], 0, "{second}");
    assert_eq!(second["bytes_added"], 0, "{second}");
    assert_eq!(second["packs_written"], 0, "{second}");
    assert_eq!(second["bytes_total"], first["bytes_total"]);
    assert_ne!(second["snapshot_id"], first["snapshot_id"]);

    let forced = e.backup(&[OsStr::new("--force-rehash"), os(&src)]);
    assert_eq!(forced["bytes_read"], first["bytes_read"], "{forced}");
    assert_eq!(forced["files_unmodified"], 0, "{forced}");
    assert_eq!(forced["bytes_added"], 0, "{forced}");
    assert_eq!(forced["packs_written"], 0, "{forced}");

    let snaps = e.snapshots();
    assert_eq!(snaps.len(), 3);
    // The unchanged backup recorded the first as its parent; the forced one had none.
    let by_id = |id: &Value| snaps.iter().find(|s| s["id"] == *id).unwrap().clone();
    assert_eq!(by_id(&second["snapshot_id"])["parent"], first["snapshot_id"]);
    assert_eq!(by_id(&forced["snapshot_id"])["parent"], Value::Null);
}

#[test]
fn wrong_password_exits_12_and_changes_nothing() {
    let e = Env::new();
    let src = e.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a.txt"), "first").unwrap();
    e.init();
    e.backup(&[os(&src)]);
    // Something new to back up, so a backup that got past the password would write packs.
    fs::write(src.join("b.txt"), "second").unwrap();
    let before = fingerprint(&e.repo());
    assert!(before.keys().any(|p| p.starts_with("snapshots")), "{before:?}");

    let target = e.path("target");
    let runs: [&[&OsStr]; 3] = [
        &[OsStr::new("snapshots")],
        &[OsStr::new("backup"), os(&src)],
        &[OsStr::new("restore"), OsStr::new("--snapshot"), OsStr::new("latest"), OsStr::new("--target"), os(&target)],
    ];
    for args in runs {
        e.cmd()
            .args(args)
            .env("S3BK_PASSWORD", "wrong horse")
            .assert()
            .code(12)
            .stderr(predicate::str::contains("password"));
        assert_eq!(fingerprint(&e.repo()), before, "{args:?} changed the repository");
    }
    assert!(!target.exists(), "restore created its target despite the wrong password");
    // The right password still works and still sees exactly one snapshot.
    assert_eq!(e.snapshots().len(), 1);
}

/// Runs `s3bk` as uid/gid 65534 when we are root (where permissions would not stop reads),
/// else as ourselves.
struct Runner {
    /// A copy of the binary that the unprivileged user can execute.
    bin: PathBuf,
    as_nobody: bool,
}

impl Runner {
    fn new(e: &Env) -> Self {
        let as_nobody = rustix::process::geteuid().is_root();
        if as_nobody {
            let which = std::process::Command::new("which").arg("setpriv").output().expect("running `which setpriv`");
            assert!(
                which.status.success(),
                "this test runs as root, where file permissions do not apply; it needs `setpriv` \
                 (util-linux) to run the backup as uid 65534, and `which setpriv` found none"
            );
        }
        // The target dir may sit under /root, which uid 65534 cannot enter: run a copy.
        let dir = e.path("bin");
        fs::create_dir(&dir).unwrap();
        chmod(&dir, 0o755);
        let bin = dir.join("s3bk");
        fs::copy(assert_cmd::cargo::cargo_bin!("s3bk"), &bin).unwrap();
        chmod(&bin, 0o755);
        Self { bin, as_nobody }
    }

    fn cmd(&self, e: &Env) -> Command {
        let mut c = if self.as_nobody {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"]).arg(&self.bin);
            c
        } else {
            Command::new(&self.bin)
        };
        common::isolate(&mut c, e.dir.path());
        c.timeout(TIMEOUT).arg("--repo").arg(e.repo()).env("S3BK_PASSWORD", PW);
        c
    }
}

#[test]
fn unreadable_entries_exit_3_and_still_write_an_incomplete_snapshot() {
    let e = Env::new();
    // Everything the unprivileged user touches: the temp dir, the XDG folders.
    chmod(e.dir.path(), 0o777);
    for d in ["home", "config", "data", "cache"] {
        fs::create_dir(e.path(d)).unwrap();
        chmod(&e.path(d), 0o777);
    }
    let runner = Runner::new(&e);
    let src = e.path("src");
    fs::create_dir_all(src.join("sub")).unwrap();
    fs::create_dir_all(src.join("locked")).unwrap();
    fs::write(src.join("a.txt"), "readable a").unwrap();
    fs::write(src.join("sub/b.txt"), "readable b".repeat(1000)).unwrap();
    fs::write(src.join("secret.txt"), "nobody may read this").unwrap();
    fs::write(src.join("locked/inner.txt"), "nor this").unwrap();
    for p in common::walk(&src) {
        chmod(&p, if p.is_dir() { 0o755 } else { 0o644 });
    }
    chmod(&src, 0o755);
    chmod(&src.join("secret.txt"), 0o000);
    chmod(&src.join("locked"), 0o000);

    runner.cmd(&e).arg("init").assert().success();
    let out = runner.cmd(&e).arg("backup").arg(&src).assert().code(3).get_output().clone();
    let stderr = text(&out.stderr);
    let secret = src.join("secret.txt").display().to_string();
    let locked = src.join("locked").display().to_string();
    assert!(stderr.contains(&secret), "stderr lacks {secret}:\n{stderr}");
    assert!(stderr.contains(&locked), "stderr lacks {locked}:\n{stderr}");
    assert!(stderr.contains("incomplete"), "{stderr}");
    // Exactly those two.
    let listed = stderr.lines().filter(|l| l.starts_with("  /")).count();
    assert_eq!(listed, 2, "{stderr}");

    let snaps = e.snapshots();
    assert_eq!(snaps.len(), 1, "the snapshot was not written");
    let s = &snaps[0];
    assert_eq!(s["incomplete"], true, "{s}");
    let skipped: BTreeSet<&str> =
        s["summary"]["skipped"].as_array().unwrap().iter().map(|k| k["path"].as_str().unwrap()).collect();
    assert_eq!(skipped, BTreeSet::from([secret.as_str(), locked.as_str()]));

    let target = e.path("target");
    e.cmd().args(["restore", "--snapshot", "latest", "--target"]).arg(&target).assert().success();
    let t = target.join("src");
    assert_eq!(fs::read(t.join("a.txt")).unwrap(), b"readable a");
    assert_eq!(fs::read(t.join("sub/b.txt")).unwrap(), "readable b".repeat(1000).as_bytes());
    assert!(t.join("secret.txt").symlink_metadata().is_err(), "an unreadable file was restored");
    assert!(t.join("locked/inner.txt").symlink_metadata().is_err(), "an unreadable folder's content was restored");

    // Let the temp dir be removed when not root.
    chmod(&src.join("locked"), 0o755);
    if t.join("locked").exists() {
        chmod(&t.join("locked"), 0o755);
    }
}

#[test]
fn fifos_never_block_a_backup() {
    let e = Env::new();
    let src = e.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("plain.txt"), "plain").unwrap();
    let fifo = |p: &Path| {
        rustix::fs::mknodat(rustix::fs::CWD, p, rustix::fs::FileType::Fifo, rustix::fs::Mode::from_raw_mode(0o644), 0)
            .unwrap()
    };
    fifo(&src.join("pipe"));
    let top = e.path("toplevel-pipe");
    fifo(&top);
    e.init();
    // No writer ever opens these FIFOs: opening one for reading without O_NONBLOCK would hang.
    let out = e
        .cmd()
        .args(["backup", "--json"])
        .arg(&src)
        .arg(&top)
        .timeout(Duration::from_secs(60))
        .assert()
        .code(0)
        .get_output()
        .stdout
        .clone();
    let v = json(&out);
    assert_eq!(v["incomplete"], false, "{v}");
    assert_eq!(v["files_new"], 1, "{v}");
    let out = e.cmd().args(["ls", "latest", "--json"]).assert().success().get_output().stdout.clone();
    let listing = json(&out);
    let kind = |path: &str| {
        listing.as_array().unwrap().iter().find(|x| x["path"] == path).unwrap_or_else(|| panic!("{path} not listed"))
            ["type"]
            .clone()
    };
    assert_eq!(kind("src/pipe"), "fifo");
    assert_eq!(kind("toplevel-pipe"), "fifo");
    assert_eq!(kind("src/plain.txt"), "file");
}

#[test]
fn browse_ls_diff_find_snapshots_and_tags() {
    let e = Env::new();
    let src = e.path("src");
    common::make_fixture_tree(&src);
    e.init();
    let a = e.backup(&[os(&src)]);

    // `ls`: every path, non-UTF-8 names lossily.
    let out = e.cmd().args(["ls", "latest"]).assert().success().get_output().stdout.clone();
    let listing = text(&out);
    let lines: BTreeSet<&str> = listing.lines().collect();
    for p in ["src", "src/hello.txt", "src/dir/big.bin", "src/dir/sub/deeper/note.md", "src/fifo", "src/empty-dir"] {
        assert!(lines.contains(p), "ls lacks {p}:\n{listing}");
    }
    assert!(lines.contains("src/caf\u{FFFD} \u{FFFD} name"), "ls lacks the non-UTF-8 name:\n{listing}");
    assert_eq!(lines.len() as u64, common::walk(&src).len() as u64 + 1, "{listing}");

    // `ls PATH -l --json`: only that subtree, with sizes.
    let out = e.cmd().args(["ls", "latest", "src/dir", "-l", "--json"]).assert().success().get_output().stdout.clone();
    let dir = json(&out);
    let items = dir.as_array().expect("ls --json is an array");
    let big = items.iter().find(|x| x["path"] == "src/dir/big.bin").unwrap_or_else(|| panic!("no big.bin: {dir}"));
    assert_eq!(big["size"], 3 << 20);
    assert_eq!(big["type"], "file");
    assert_eq!(big["mode"].as_u64().unwrap() & 0o7777, 0o4755);
    assert!(items.iter().all(|x| x["path"].as_str().unwrap().starts_with("src/dir")), "{dir}");
    assert!(!items.iter().any(|x| x["path"] == "src/hello.txt"), "{dir}");

    // `ls -l`: the long format shows the set-uid bit and the size.
    let out = e.cmd().args(["ls", "latest", "src/dir", "-l"]).assert().success().get_output().stdout.clone();
    let long = text(&out);
    let line = long.lines().find(|l| l.ends_with(" src/dir/big.bin")).unwrap_or_else(|| panic!("{long}"));
    assert!(line.starts_with("-rwsr-xr-x"), "{line}");
    assert!(line.contains(&(3u64 << 20).to_string()), "{line}");

    // Edit one file, add another; back up with a tag.
    fs::write(src.join("dir/sub/deeper/note.md"), "# changed\n").unwrap();
    fs::write(src.join("new.txt"), "tagged version").unwrap();
    let b = e.backup(&[OsStr::new("--tag"), OsStr::new("X"), os(&src)]);
    let (ida, idb) = (a["snapshot_id"].as_str().unwrap(), b["snapshot_id"].as_str().unwrap());

    let out = e.cmd().args(["diff", &ida[..8], idb]).assert().success().get_output().stdout.clone();
    let diff = text(&out);
    let lines: BTreeSet<&str> = diff.lines().collect();
    assert!(lines.contains("M src/dir/sub/deeper/note.md"), "{diff}");
    assert!(lines.contains("+ src/new.txt"), "{diff}");
    assert!(!diff.lines().any(|l| l.starts_with("- ")), "nothing was removed:\n{diff}");
    assert!(!diff.contains("hello.txt") && !diff.contains("big.bin"), "unchanged files listed:\n{diff}");

    // `find`: across all snapshots.
    let out = e.cmd().args(["find", "*.md"]).assert().success().get_output().stdout.clone();
    let found = text(&out);
    let hits: Vec<&str> = found.lines().filter(|l| l.ends_with("  src/dir/sub/deeper/note.md")).collect();
    assert_eq!(hits.len(), 2, "one hit per snapshot:\n{found}");
    assert!(found.lines().all(|l| l.ends_with(".md")), "{found}");

    // A newer, untagged snapshot with other content.
    fs::write(src.join("new.txt"), "untagged version").unwrap();
    let c = e.backup(&[os(&src)]);

    let snaps = e.snapshots();
    assert_eq!(snaps.len(), 3);
    for s in &snaps {
        for k in ["id", "time", "hostname", "paths", "tags", "summary"] {
            assert!(!s[k].is_null(), "snapshot lacks {k}: {s}");
        }
        assert_eq!(s["paths"], serde_json::json!([src.display().to_string()]));
        assert!(s["time"].as_str().unwrap().parse::<jiff::Timestamp>().is_ok(), "{s}");
        let expected = if s["id"] == b["snapshot_id"] { serde_json::json!(["X"]) } else { serde_json::json!([]) };
        assert_eq!(s["tags"], expected, "{s}");
    }
    assert!(snaps.iter().any(|s| s["id"] == c["snapshot_id"]));

    // `restore --snapshot latest --tag X` picks the tagged one, not the newest.
    let target = e.path("target");
    let out = e
        .cmd()
        .args(["restore", "--snapshot", "latest", "--tag", "X", "--json", "--target"])
        .arg(&target)
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    assert_eq!(json(&out)["snapshot_id"], b["snapshot_id"]);
    assert_eq!(fs::read(target.join("src/new.txt")).unwrap(), b"tagged version");
}

#[test]
fn restore_without_target_uses_a_folder_named_after_the_snapshot() {
    let e = Env::new();
    let src = e.path("src");
    common::make_fixture_tree(&src);
    e.init();
    let v = e.backup(&[os(&src)]);
    let short = &v["snapshot_id"].as_str().unwrap()[..8];

    let cwd = e.path("cwd");
    fs::create_dir(&cwd).unwrap();
    e.cmd().args(["restore", "--snapshot", "latest"]).current_dir(&cwd).assert().success();
    let expected = cwd.join(format!("s3bk-restore-{short}"));
    assert_eq!(names_in(&cwd), BTreeSet::from([expected.clone()]));
    assert!(short.chars().all(|c| c.is_ascii_hexdigit()));
    common::assert_same_tree(&src, &expected.join("src"));
}

#[test]
fn embedded_default_repository_end_to_end() {
    let e = Env::new();
    let reports = e.path("reports");
    common::make_fixture_tree(&reports);
    let repo = e.path("data/s3bk/repo");
    let key = e.path("config/s3bk/key");

    // Nothing configured: `backup` creates the default repository and says where the key is.
    let out = e.bare().args(["backup", "./reports"]).assert().code(0).get_output().clone();
    let stderr = text(&out.stderr);
    assert!(stderr.contains(&key.display().to_string()), "no key location on stderr:\n{stderr}");
    assert!(stderr.contains(&repo.display().to_string()), "no repository location on stderr:\n{stderr}");
    assert!(repo.join("config").is_file());
    assert_eq!(fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(fs::read_to_string(&key).unwrap().trim_end().len(), 64);

    let out = e.bare().args(["snapshots", "--json"]).assert().success().get_output().stdout.clone();
    let snaps = json(&out);
    let snaps = snaps.as_array().unwrap();
    assert_eq!(snaps.len(), 1, "{snaps:?}");
    assert_eq!(snaps[0]["paths"], serde_json::json!([reports.display().to_string()]));

    let target = e.path("target");
    e.bare().args(["restore", "--snapshot", "latest", "--target"]).arg(&target).assert().success();
    common::assert_same_tree(&reports, &target.join("reports"));

    // A second backup finds the repository and the parent: nothing is read again.
    let out = e.bare().args(["backup", "./reports", "--json"]).assert().code(0).get_output().clone();
    let v = json(&out.stdout);
    assert_eq!(v["bytes_read"], 0, "{v}");
    assert_eq!(v["files_unmodified"], count_files(&reports), "{v}");
    assert!(!text(&out.stderr).contains("Created"), "the repository was created twice");
    let out = e.bare().args(["snapshots", "--json"]).assert().success().get_output().stdout.clone();
    assert_eq!(json(&out).as_array().unwrap().len(), 2);
}

#[test]
fn exclude_options_leave_entries_out() {
    let e = Env::new();
    let src = e.path("src");
    fs::create_dir_all(src.join("keep")).unwrap();
    fs::create_dir_all(src.join("opted-out/deeper")).unwrap();
    fs::write(src.join("a.txt"), "a").unwrap();
    fs::write(src.join("scratch.tmp"), "tmp").unwrap();
    fs::write(src.join("keep/nested.tmp"), "tmp").unwrap();
    fs::write(src.join("keep/x.txt"), "x").unwrap();
    fs::write(src.join("app.log"), "log").unwrap();
    fs::write(src.join("#hash.txt"), "named like a comment").unwrap();
    fs::write(src.join("opted-out/.nobackup"), "").unwrap();
    fs::write(src.join("opted-out/data.txt"), "data").unwrap();
    fs::write(src.join("opted-out/deeper/more.txt"), "more").unwrap();
    let excludes = e.path("excludes.txt");
    // The comment line would exclude `#hash.txt` if it were taken as a glob.
    fs::write(&excludes, "#hash.txt\n\n*.log\n").unwrap();
    e.init();
    e.backup(&[
        OsStr::new("--exclude"),
        OsStr::new("*.tmp"),
        OsStr::new("--exclude-file"),
        os(&excludes),
        OsStr::new("--exclude-if-present"),
        OsStr::new(".nobackup"),
        os(&src),
    ]);

    let out = e.cmd().args(["ls", "latest", "--json"]).assert().success().get_output().stdout.clone();
    let paths = listed_paths(&json(&out));
    // An opted-out folder is left out whole.
    for kept in ["src/a.txt", "src/keep/x.txt", "src/#hash.txt", "src/keep"] {
        assert!(paths.contains(kept), "{kept} missing: {paths:?}");
    }
    for gone in [
        "src/opted-out",
        "src/scratch.tmp",
        "src/keep/nested.tmp",
        "src/app.log",
        "src/opted-out/.nobackup",
        "src/opted-out/data.txt",
        "src/opted-out/deeper",
        "src/opted-out/deeper/more.txt",
    ] {
        assert!(!paths.contains(gone), "{gone} not excluded: {paths:?}");
    }
}

#[test]
fn dry_run_writes_nothing() {
    let e = Env::new();
    let src = e.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a.txt"), "first").unwrap();
    e.init();
    e.backup(&[os(&src)]);
    // New content that a real backup would store.
    let mut noise = Vec::with_capacity(1 << 20);
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    for _ in 0..(1 << 20) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        noise.push(x as u8);
    }
    fs::write(src.join("new.bin"), &noise).unwrap();
    let before = fingerprint(&e.repo());
    let data_before = names_in(&e.repo().join("data"));
    let index_before = names_in(&e.repo().join("index"));

    let out = e.cmd().args(["backup", "--dry-run", "--json"]).arg(&src).assert().code(0).get_output().stdout.clone();
    let v = json(&out);
    assert_eq!(v["dry_run"], true, "{v}");
    assert_eq!(v["snapshot_id"], Value::Null, "{v}");
    assert_eq!(v["files_new"], 1, "{v}");
    assert_eq!(v["bytes_read"], 1 << 20, "the dry run did not read the new file: {v}");

    assert_eq!(e.snapshots().len(), 1);
    assert_eq!(names_in(&e.repo().join("data")), data_before);
    assert_eq!(names_in(&e.repo().join("index")), index_before);
    assert_eq!(fingerprint(&e.repo()), before, "the dry run changed the repository");

    // A real backup afterwards still stores the new file (the dry run left no stale index entries).
    let real = e.backup(&[os(&src)]);
    assert!(real["bytes_added"].as_u64().unwrap() >= 1 << 20, "{real}");
}
