//! Many writers and a prune at once (format §11): four `s3bk backup` processes back up
//! overlapping trees, again and again, while a fifth loop runs `forget` and `prune` with a short
//! grace so plans are marked and executed during the backups. Afterwards nothing may be missing:
//! `verify --read-data` is clean and every snapshot left restores exactly the tree it was taken
//! of. A backup may refuse to write its snapshot when a prune overlapped it (that is the
//! protocol working); it is then retried, and never leaves a snapshot behind.
//!
//! Runs on a local repository and on moto (S3 with conditional writes).

mod common;
mod servers;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use assert_cmd::Command;
use rand::{Rng, SeedableRng};
use serde_json::Value;

const WRITERS: usize = 4;
const ROUNDS: usize = 4;
const PW: &str = "many writers";

/// Where the repository is and how to reach it.
struct Target {
    repo: String,
    args: Vec<String>,
    env: Vec<(&'static str, String)>,
}

fn s3bk(home: &Path, t: &Target) -> Command {
    let mut c = common::isolated_s3bk(home);
    c.env("S3BK_PASSWORD", PW).timeout(Duration::from_secs(300)).arg("--repo").arg(&t.repo).args(&t.args);
    for (k, v) in &t.env {
        c.env(k, v);
    }
    c
}

fn json(out: &[u8]) -> Value {
    serde_json::from_slice(out).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(out)))
}

/// Deterministic bytes: the same `seed` gives the same content in every writer (dedup across
/// writers), different seeds differ.
fn content(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut v = vec![0u8; len];
    rng.fill_bytes(&mut v);
    v
}

/// Round `round` of writer `w`'s tree: shared files that change every other round (the same in
/// all writers), a file of its own per round (unique data that forget and prune can drop), and
/// one file edited in place.
fn mutate(src: &Path, w: usize, round: usize) {
    let shared = src.join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    for f in 0..3 {
        std::fs::write(shared.join(format!("s{f}")), content(1000 + (round / 2 * 10 + f) as u64, 150_000)).unwrap();
    }
    let own = src.join("own");
    std::fs::create_dir_all(&own).unwrap();
    if round > 0 {
        std::fs::remove_file(own.join(format!("r{}", round - 1))).unwrap();
    }
    std::fs::write(own.join(format!("r{round}")), content((w * 100 + round) as u64, 200_000)).unwrap();
    std::fs::write(src.join("notes.txt"), format!("writer {w}, round {round}\n").repeat(500)).unwrap();
}

fn run_scenario(t: Target) {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().to_path_buf();
    s3bk(&home, &t).arg("init").assert().success();
    let t = Arc::new(t);
    let expected: Arc<Mutex<HashMap<String, PathBuf>>> = Arc::default();
    let refused = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));

    let pruner = {
        let (t, home, done) = (t.clone(), home.clone(), done.clone());
        std::thread::spawn(move || {
            let (mut prunes, mut deleted) = (0, 0);
            while !done.load(Ordering::SeqCst) {
                s3bk(&home, &t).args(["forget", "--keep-last", "2"]).assert().success();
                deleted += prune(&home, &t);
                prunes += 1;
                std::thread::sleep(Duration::from_millis(500));
            }
            (prunes, deleted)
        })
    };

    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (t, home, expected, refused) = (t.clone(), home.clone(), expected.clone(), refused.clone());
            std::thread::spawn(move || {
                let src = home.join(format!("w{w}")).join("tree");
                for round in 0..ROUNDS {
                    mutate(&src, w, round);
                    let mut attempts = 0;
                    let id = loop {
                        attempts += 1;
                        let out = s3bk(&home, &t)
                            .args(["backup", "--json", "--host", &format!("writer{w}")])
                            .arg(&src)
                            .output()
                            .unwrap();
                        let stderr = String::from_utf8_lossy(&out.stderr);
                        if out.status.success() {
                            break json(&out.stdout)["snapshot_id"].as_str().unwrap().to_owned();
                        }
                        assert!(stderr.contains("no snapshot was written"), "backup failed: {stderr}");
                        assert!(attempts < 10, "backup refused {attempts} times: {stderr}");
                        refused.fetch_add(1, Ordering::SeqCst);
                    };
                    // What this snapshot must restore to.
                    let copy = home.join("expected").join(&id);
                    std::fs::create_dir_all(&copy).unwrap();
                    let st = std::process::Command::new("cp").arg("-a").arg(&src).arg(&copy).status().unwrap();
                    assert!(st.success());
                    expected.lock().unwrap().insert(id, copy.join("tree"));
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    done.store(true, Ordering::SeqCst);
    let (prunes, mut deleted) = pruner.join().unwrap();
    assert!(prunes >= 2, "the prune loop ran only {prunes} times during the backups");

    // Let the last plans come due and execute them, then check everything.
    s3bk(&home, &t).args(["forget", "--keep-last", "2"]).assert().success();
    std::thread::sleep(GRACE / 2);
    deleted += prune(&home, &t);
    std::thread::sleep(GRACE + Duration::from_secs(1));
    deleted += prune(&home, &t);
    assert!(deleted > 0, "no prune deleted a pack: the test did not exercise deletion");
    s3bk(&home, &t).args(["verify", "--read-data"]).assert().code(0);

    let listed = s3bk(&home, &t).args(["snapshots", "--json"]).assert().success().get_output().stdout.clone();
    let ids: Vec<String> =
        json(&listed).as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(ids.len(), WRITERS * 2, "forget --keep-last 2 per writer: {ids:?}");
    let expected = expected.lock().unwrap();
    for id in &ids {
        let want = expected.get(id).unwrap_or_else(|| panic!("snapshot {id} was not made by a writer"));
        let target = home.join("restored").join(id);
        s3bk(&home, &t).args(["restore", "--snapshot", id, "--target"]).arg(&target).assert().success();
        common::assert_same_tree(want, &target.join("tree"));
    }
    eprintln!(
        "{prunes} prune runs, {deleted} packs deleted, {} refused backups (retried)",
        refused.load(Ordering::SeqCst)
    );
}

/// The prunes' grace: short, so plans come due during the run, yet longer than any backup here
/// (format §11.4: a backup that runs longer refuses its snapshot if it relied on marked data).
const GRACE: Duration = Duration::from_secs(8);

/// One `prune --json` run; returns how many packs it deleted.
fn prune(home: &Path, t: &Target) -> u64 {
    let grace = format!("{}s", GRACE.as_secs());
    let out = s3bk(home, t).args(["prune", "--json", "--max-unused", "0%", "--grace", &grace]).output().unwrap();
    assert!(out.status.success(), "prune failed: {}", String::from_utf8_lossy(&out.stderr));
    json(&out.stdout)["executed"]["packs_deleted"].as_u64().expect("executed.packs_deleted")
}

#[test]
fn four_writers_and_a_prune_lose_nothing_on_a_local_repository() {
    let repo_dir = tempfile::tempdir().unwrap();
    run_scenario(Target { repo: repo_dir.path().join("repo").display().to_string(), args: vec![], env: vec![] });
}

#[tokio::test(flavor = "multi_thread")]
async fn four_writers_and_a_prune_lose_nothing_on_moto() {
    let server = servers::Server::moto().await;
    let t = Target {
        repo: format!("s3://{}/concurrency", server.bucket),
        args: vec!["--endpoint-url".into(), server.endpoint.clone()],
        env: server.env(),
    };
    tokio::task::spawn_blocking(move || run_scenario(t)).await.unwrap();
}
