//! `verify --restore-test`: restores a random sample of a snapshot's files with the real
//! restorer into a temporary folder, checks every restored byte against the snapshot, and
//! measures the restore's throughput to estimate how long restoring the whole snapshot would
//! take (the recovery time objective, RTO).
//!
//! Sampling: the snapshot's trees are walked once to total its file data (holes excluded), then
//! again picking each file that holds data independently with probability `budget / total`, so
//! the sample's expected size is the budget and large and small files are equally likely per
//! byte. A picked file that would take the sample past twice the budget is left out, which bounds
//! the run. The default budget is 5% of the snapshot's data, at least 256 MiB (or everything
//! when smaller), at most 1 GiB: big enough that the throughput is not just request latency,
//! small enough for a daily run.
//!
//! Checking: each restored file must have its recorded size, read as zeros where the snapshot
//! has holes, and each data extent's bytes must hash (keyed, like the archiver) to the blob id
//! the snapshot lists. A restore that fails (a corrupt or missing blob, a missing pack) or a
//! mismatch is a [`Problem`]. The estimate is `total data / measured throughput`; with a sample
//! far smaller than the snapshot, per-request latency weighs more than it would in a full
//! restore, so the estimate errs on the slow side. The temporary folder is removed afterwards.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Serialize, Serializer};

use crate::cache::BlobIndex;
use crate::checker::Problem;
use crate::crypto::Keys;
use crate::error::{Error, Result};
use crate::id::Id;
use crate::progress::Progress;
use crate::repo::Repository;
use crate::restorer::{Overwrite, RestoreOptions};
use crate::snapshot::SnapshotEntry;
use crate::tree::{Extent, Node, NodeKind};

/// Share of the snapshot's data the default budget restores.
pub const AUTO_SHARE: f64 = 0.05;
/// The default budget's floor (when the snapshot holds more).
pub const AUTO_MIN: u64 = 256 << 20;
/// The default budget's ceiling.
pub const AUTO_MAX: u64 = 1 << 30;

/// How much to restore.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum Budget {
    /// 5% of the snapshot's data, at least 256 MiB, at most 1 GiB (see the module comment).
    #[default]
    Auto,
    /// This percentage of the snapshot's data (0 < p ≤ 100).
    Percent(f64),
    /// About this many bytes of file data.
    Bytes(u64),
}

impl FromStr for Budget {
    type Err = Error;

    /// `auto`, `2%`, `500MiB`, `2G`, `1048576`.
    fn from_str(s: &str) -> Result<Self> {
        let bad = |why: &str| Error::Invalid(format!("restore-test size {s:?}: {why}"));
        let t = s.trim();
        if t.eq_ignore_ascii_case("auto") {
            return Ok(Self::Auto);
        }
        if let Some(p) = t.strip_suffix('%') {
            let p: f64 = p.trim().parse().map_err(|_| bad("expected a percentage such as 2%"))?;
            if !(p > 0.0 && p <= 100.0) {
                return Err(bad("the percentage must be above 0 and at most 100"));
            }
            return Ok(Self::Percent(p));
        }
        let split = t.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let num: f64 = num.parse().map_err(|_| bad("expected a size such as 500MiB or a percentage"))?;
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" | "kib" => 1 << 10,
            "m" | "mb" | "mib" => 1 << 20,
            "g" | "gb" | "gib" => 1 << 30,
            "t" | "tb" | "tib" => 1 << 40,
            _ => return Err(bad("unknown unit (use B, KiB, MiB, GiB or TiB)")),
        };
        let n = num * mult as f64;
        if !(n >= 1.0 && n < u64::MAX as f64) {
            return Err(bad("the size must be at least 1 byte"));
        }
        Ok(Self::Bytes(n as u64))
    }
}

impl Budget {
    /// The bytes to restore out of a snapshot holding `total` bytes of file data.
    pub fn bytes_of(&self, total: u64) -> u64 {
        let b = match *self {
            Self::Auto => ((total as f64 * AUTO_SHARE) as u64).clamp(AUTO_MIN, AUTO_MAX),
            Self::Percent(p) => (total as f64 * p / 100.0).ceil() as u64,
            Self::Bytes(b) => b,
        };
        b.min(total)
    }
}

/// What to test.
#[derive(Clone, Debug, Default)]
pub struct RestoreTestOptions {
    /// How much to restore.
    pub budget: Budget,
    /// Folder to make the temporary folder in (default: the system's temporary folder). A
    /// RAM-backed `/tmp` measures the network, not the disk a real restore writes to.
    pub scratch: Option<PathBuf>,
    /// The recovery time objective to compare the estimate with.
    pub rto: Option<Duration>,
}

fn hex<S: Serializer>(id: &Id, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&id.to_hex())
}

fn opt_secs<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_f64(d.as_secs_f64()),
        None => s.serialize_none(),
    }
}

/// What the restore test did and found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RestoreTestReport {
    /// The snapshot tested.
    #[serde(serialize_with = "hex")]
    pub snapshot: Id,
    /// Files holding data in the snapshot (a hard-link group counts once).
    pub files_total: u64,
    /// Bytes of file data in the snapshot (holes excluded, hard links once): what a full
    /// restore writes.
    pub bytes_total: u64,
    /// Files restored and checked.
    pub files_sampled: u64,
    /// Bytes of file data in the sample.
    pub bytes_sampled: u64,
    /// Bytes the restorer wrote.
    pub bytes_restored: u64,
    /// Wall time of the restore (planning included), seconds.
    pub restore_secs: f64,
    /// Wall time of the content check, seconds.
    pub check_secs: f64,
    /// Bytes restored per second.
    pub throughput_bytes_per_sec: Option<f64>,
    /// `bytes_total / throughput`: the estimated time to restore the whole snapshot, seconds.
    #[serde(serialize_with = "opt_secs", rename = "estimated_full_restore_secs")]
    pub estimated_full_restore: Option<Duration>,
    /// The recovery time objective given, seconds.
    #[serde(serialize_with = "opt_secs", rename = "rto_secs")]
    pub rto: Option<Duration>,
    /// Whether the estimate is within the RTO (`None` without an RTO or an estimate).
    pub within_rto: Option<bool>,
    /// Damage found: a failed restore, a restored file that differs from the snapshot.
    pub problems: Vec<Problem>,
    /// What the restorer could not apply (metadata), not damage.
    pub warnings: Vec<String>,
}

impl RestoreTestReport {
    /// Whether the RTO was given and the estimate (or a failed restore) misses it.
    pub fn misses_rto(&self) -> bool {
        self.rto.is_some() && self.within_rto != Some(true)
    }
}

/// A file picked for the sample.
struct Picked {
    rel: PathBuf,
    node: Node,
}

/// Bytes of data in a file (its size minus its holes).
fn data_bytes(node: &Node) -> u64 {
    let holes: u64 = node.content.iter().map(|e| if let Extent::Hole(n) = e { *n } else { 0 }).sum();
    node.size.saturating_sub(holes)
}

/// Calls `f` with the path (from the root) of every file in the tree `root`.
async fn each_file(repo: &Repository, root: Id, mut f: impl FnMut(&[u8], &Node)) -> Result<()> {
    let mut stack = vec![(root, Vec::new())];
    while let Some((id, prefix)) = stack.pop() {
        let tree = repo.load_tree(&id).await?;
        for node in &tree.nodes {
            let mut path = prefix.clone();
            if !path.is_empty() {
                path.push(b'/');
            }
            path.extend_from_slice(&node.name);
            match node.kind {
                NodeKind::File => f(&path, node),
                NodeKind::Dir => {
                    if let Some(sub) = node.subtree {
                        stack.push((sub, path));
                    }
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// A uniform random number in `[0, 1)`.
fn unit() -> f64 {
    (rand::random::<u64>() >> 11) as f64 / (1u64 << 53) as f64
}

/// Runs the restore test on `entry` (see the module comment); the repository's index must be
/// loaded. Damage goes into the report's problems; an error means the test could not run (no
/// temporary folder).
pub async fn restore_test(
    repo: &Repository,
    entry: &SnapshotEntry,
    opts: &RestoreTestOptions,
    progress: Arc<dyn Progress>,
) -> Result<RestoreTestReport> {
    let mut r = RestoreTestReport { snapshot: entry.id, rto: opts.rto, ..Default::default() };
    let failed = |r: &mut RestoreTestReport, e: Error| {
        r.problems.push(Problem::RestoreFailed { snapshot: entry.id, error: e.to_string() });
    };

    progress.current("sizing the snapshot");
    let (mut files_total, mut bytes_total) = (0u64, 0u64);
    let mut fallback: Option<Picked> = None;
    // A hard-link group is restored (and counted) once.
    let mut linked = HashSet::new();
    if let Err(e) = each_file(repo, entry.snapshot.tree, |path, node| {
        let n = data_bytes(node);
        if n > 0 && (node.links <= 1 || linked.insert((node.device, node.inode))) {
            files_total += 1;
            bytes_total += n;
            if fallback.as_ref().is_none_or(|f| data_bytes(&f.node) > n) {
                fallback = Some(Picked { rel: PathBuf::from(OsStr::from_bytes(path)), node: node.clone() });
            }
        }
    })
    .await
    {
        failed(&mut r, e);
        return Ok(r);
    }
    r.files_total = files_total;
    r.bytes_total = bytes_total;

    let budget = opts.budget.bytes_of(bytes_total);
    let p = if bytes_total == 0 { 0.0 } else { budget as f64 / bytes_total as f64 };
    let mut picked: Vec<Picked> = Vec::new();
    let mut picked_bytes = 0u64;
    linked.clear();
    if let Err(e) = each_file(repo, entry.snapshot.tree, |path, node| {
        let n = data_bytes(node);
        if n == 0 || (node.links > 1 && !linked.insert((node.device, node.inode))) || (p < 1.0 && unit() >= p) {
            return;
        }
        if p < 1.0 && picked_bytes + n > budget.saturating_mul(2) {
            return;
        }
        picked_bytes += n;
        picked.push(Picked { rel: PathBuf::from(OsStr::from_bytes(path)), node: node.clone() });
    })
    .await
    {
        failed(&mut r, e);
        return Ok(r);
    }
    if picked.is_empty()
        && let Some(f) = fallback
    {
        picked_bytes = data_bytes(&f.node);
        picked.push(f);
    }
    r.files_sampled = picked.len() as u64;
    r.bytes_sampled = picked_bytes;
    if picked.is_empty() {
        return Ok(r); // nothing holds data: nothing to restore, nothing to estimate
    }

    let scratch = opts.scratch.clone().unwrap_or_else(std::env::temp_dir);
    let tmp = tempfile::Builder::new()
        .prefix("s3bk-restore-test-")
        .tempdir_in(&scratch)
        .map_err(|e| Error::io(&scratch, e))?;
    let target = tmp.path().join("restore");
    let ro = RestoreOptions {
        target: target.clone(),
        paths: Some(Arc::new(picked.iter().map(|f| f.rel.clone()).collect::<HashSet<_>>())),
        overwrite: Overwrite::Always,
        owner: false,
        ..RestoreOptions::default()
    };
    progress.current("restoring the sample");
    let started = Instant::now();
    let restored = crate::restorer::restore(repo, &entry.snapshot, &ro, progress.clone()).await;
    let took = started.elapsed();
    r.restore_secs = took.as_secs_f64();
    match restored {
        Ok(summary) => {
            r.bytes_restored = summary.bytes_written;
            r.warnings = summary.warnings;
        }
        Err(e) => {
            failed(&mut r, e);
            return Ok(r);
        }
    }
    if r.bytes_restored > 0 && took > Duration::ZERO {
        let rate = r.bytes_restored as f64 / took.as_secs_f64();
        r.throughput_bytes_per_sec = Some(rate);
        let est = Duration::from_secs_f64(bytes_total as f64 / rate);
        r.estimated_full_restore = Some(est);
        r.within_rto = opts.rto.map(|rto| est <= rto);
    }

    progress.current("checking the restored files");
    let started = Instant::now();
    let (index, keys, id) = (repo.index().clone(), repo.keys().clone(), entry.id);
    let problems = tokio::task::spawn_blocking(move || {
        let mut problems = Vec::new();
        for f in &picked {
            if let Err(detail) = check_file(&index, &keys, &target.join(&f.rel), &f.node) {
                let path = f.rel.to_string_lossy().into_owned();
                problems.push(Problem::RestoredFileMismatch { snapshot: id, path, detail });
            }
        }
        drop(tmp); // the temporary folder goes here, off the async workers
        problems
    })
    .await
    .map_err(|_| Error::Cancelled)?;
    r.check_secs = started.elapsed().as_secs_f64();
    r.problems.extend(problems);
    Ok(r)
}

/// Checks a restored file against its node: size, zeros in holes, each data extent's keyed id.
fn check_file(index: &BlobIndex, keys: &Keys, path: &Path, node: &Node) -> std::result::Result<(), String> {
    let mut f = std::fs::File::open(path).map_err(|e| format!("cannot open the restored file: {e}"))?;
    let len = f.metadata().map_err(|e| e.to_string())?.len();
    if len != node.size {
        return Err(format!("restored with {len} bytes, the snapshot says {}", node.size));
    }
    let mut offset = 0u64;
    let mut buf = Vec::new();
    for e in &node.content {
        match e {
            Extent::Hole(n) => {
                let mut left = *n;
                while left > 0 {
                    let step = left.min(1 << 20) as usize;
                    buf.resize(step, 0);
                    f.read_exact(&mut buf).map_err(|e| format!("reading at {offset}: {e}"))?;
                    if buf.iter().any(|&b| b != 0) {
                        return Err(format!("data where the snapshot has a hole, near offset {offset}"));
                    }
                    offset += step as u64;
                    left -= step as u64;
                }
            }
            Extent::Data(id) => {
                let loc = index
                    .get(id)
                    .map_err(|e| e.to_string())?
                    .ok_or_else(|| format!("blob {id} is not in the index"))?;
                buf.resize(loc.entry.raw_len as usize, 0);
                f.read_exact(&mut buf).map_err(|e| format!("reading at {offset}: {e}"))?;
                if keys.blob_id(&buf) != *id {
                    return Err(format!("the bytes at offset {offset} do not match blob {id}"));
                }
                offset += buf.len() as u64;
            }
        }
    }
    if offset != node.size {
        return Err(format!("the snapshot's extents cover {offset} bytes of {}", node.size));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_budgets() {
        assert_eq!("auto".parse::<Budget>().unwrap(), Budget::Auto);
        assert_eq!("2%".parse::<Budget>().unwrap(), Budget::Percent(2.0));
        assert_eq!("500MiB".parse::<Budget>().unwrap(), Budget::Bytes(500 << 20));
        assert_eq!("1.5G".parse::<Budget>().unwrap(), Budget::Bytes(3 << 29));
        assert_eq!("4096".parse::<Budget>().unwrap(), Budget::Bytes(4096));
        for bad in ["0%", "101%", "x", "", "5 parsecs", "0", "-1M"] {
            assert!(bad.parse::<Budget>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn restored_files_are_checked_against_their_blob_ids() {
        use crate::index::{IndexFile, IndexPack};
        use crate::pack::{BlobEntry, BlobType};
        let keys = crate::crypto::MasterKey::generate().keys();
        let index = BlobIndex::open(None).unwrap();
        let (a, b) = (b"first chunk".to_vec(), b"second".to_vec());
        let entry = |plain: &[u8]| BlobEntry {
            id: keys.blob_id(plain),
            tpe: BlobType::Data,
            offset: 0,
            length: 1,
            raw_len: plain.len() as u32,
            compressed: false,
        };
        let blobs = vec![entry(&a), entry(&b)];
        index
            .add_index_files(&[(
                Id::random(),
                IndexFile { supersedes: vec![], packs: vec![IndexPack { id: Id::random(), blobs }] },
            )])
            .unwrap();
        let mut node = Node::new(b"f".to_vec(), NodeKind::File);
        node.content = vec![Extent::Data(keys.blob_id(&a)), Extent::Hole(3), Extent::Data(keys.blob_id(&b))];
        node.size = (a.len() + 3 + b.len()) as u64;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let good = [&a[..], &[0; 3], &b[..]].concat();
        std::fs::write(&path, &good).unwrap();
        assert_eq!(check_file(&index, &keys, &path, &node), Ok(()));
        let mut bad = good.clone();
        bad[good.len() - 1] ^= 1;
        std::fs::write(&path, &bad).unwrap();
        assert!(check_file(&index, &keys, &path, &node).unwrap_err().contains("do not match blob"));
        bad = good.clone();
        bad[a.len() + 1] = 7;
        std::fs::write(&path, &bad).unwrap();
        assert!(check_file(&index, &keys, &path, &node).unwrap_err().contains("hole"));
        std::fs::write(&path, &good[..good.len() - 1]).unwrap();
        assert!(check_file(&index, &keys, &path, &node).unwrap_err().contains("bytes"));
    }

    #[test]
    fn auto_budget_is_clamped() {
        assert_eq!(Budget::Auto.bytes_of(100 << 20), 100 << 20);
        assert_eq!(Budget::Auto.bytes_of(10 << 30), 512 << 20);
        assert_eq!(Budget::Auto.bytes_of(1 << 40), 1 << 30);
        assert_eq!(Budget::Auto.bytes_of(1 << 30), 256 << 20);
        assert_eq!(Budget::Percent(50.0).bytes_of(1000), 500);
        assert_eq!(Budget::Bytes(5000).bytes_of(1000), 1000);
    }
}
