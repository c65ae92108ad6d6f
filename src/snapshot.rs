//! Snapshots: the record of one backup, pointing at its root tree.
//!
//! A snapshot file is written last, after every pack and index file it depends on, so a snapshot
//! that can be listed is complete (or says `incomplete` when files were skipped). This module
//! also selects snapshots (`latest`, id prefixes, host/path/tag filters).

use serde::{Deserialize, Serialize};

use crate::id::Id;

/// What a backup did, stored with the snapshot and printed by `backup --json`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Files seen for the first time.
    pub files_new: u64,
    /// Files whose metadata changed (their content was read).
    pub files_changed: u64,
    /// Files reused from the parent snapshot without reading.
    pub files_unmodified: u64,
    /// Directories in the snapshot.
    pub dirs: u64,
    /// Other entries (symlinks, devices, FIFOs, sockets).
    pub others: u64,
    /// Bytes of file content read.
    pub bytes_read: u64,
    /// Logical bytes of all files in the snapshot.
    pub bytes_total: u64,
    /// New blobs stored.
    pub blobs_added: u64,
    /// Plaintext bytes of the new blobs.
    pub bytes_added: u64,
    /// Bytes the new blobs take in the repository (compressed, encrypted).
    pub bytes_added_stored: u64,
    /// Packs written.
    pub packs_written: u64,
    /// Wall-clock seconds.
    pub duration_secs: f64,
    /// Paths that could not be backed up, with the reason.
    #[serde(default)]
    pub skipped: Vec<Skipped>,
}

/// A path left out of (or flagged in) a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    /// The path, lossily as text.
    pub path: String,
    /// Why.
    pub error: String,
}

/// One snapshot file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// When the backup started, nanoseconds since the Unix epoch.
    pub time_ns: i64,
    /// The root tree: one entry per backed-up path, named by the path's last component.
    pub tree: Id,
    /// The absolute paths that were backed up.
    pub paths: Vec<String>,
    /// Host that made it.
    pub hostname: String,
    /// User that made it.
    pub username: String,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// The snapshot used for change detection, if any.
    #[serde(default)]
    pub parent: Option<Id>,
    /// The program that wrote it (`s3bk x.y.z`).
    pub program: String,
    /// Whether some paths were skipped (see `summary.skipped`).
    #[serde(default)]
    pub incomplete: bool,
    /// Statistics.
    pub summary: Summary,
    /// For a snapshot written by `repair snapshots`: the damaged snapshot it replaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original: Option<Id>,
}

impl Snapshot {
    /// The start time as a timestamp.
    pub fn time(&self) -> jiff::Timestamp {
        jiff::Timestamp::from_nanosecond(i128::from(self.time_ns)).unwrap_or(jiff::Timestamp::UNIX_EPOCH)
    }
}

/// A snapshot with its id.
#[derive(Clone, Debug, PartialEq)]
pub struct SnapshotEntry {
    /// The snapshot file's id.
    pub id: Id,
    /// Its content.
    pub snapshot: Snapshot,
}

/// Narrows a set of snapshots.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Only these hosts (any, when empty).
    pub hosts: Vec<String>,
    /// Only snapshots that contain all of these paths (any, when empty).
    pub paths: Vec<String>,
    /// Only snapshots that carry all of these tags (any, when empty).
    pub tags: Vec<String>,
}

impl Filter {
    /// The entries of `list` that pass the filter.
    pub fn keep(&self, list: Vec<SnapshotEntry>) -> Vec<SnapshotEntry> {
        list.into_iter().filter(|e| self.matches(&e.snapshot)).collect()
    }

    /// Whether `s` passes the filter.
    pub fn matches(&self, s: &Snapshot) -> bool {
        (self.hosts.is_empty() || self.hosts.contains(&s.hostname))
            && self.paths.iter().all(|p| s.paths.contains(p))
            && self.tags.iter().all(|t| s.tags.contains(t))
    }
}

/// Picks the snapshot `spec` names: `latest` (newest passing `filter`), a full id or a unique
/// id prefix. `snapshots` need not be sorted.
pub fn select<'a>(snapshots: &'a [SnapshotEntry], spec: &str, filter: &Filter) -> Result<&'a SnapshotEntry, String> {
    if spec == "latest" {
        return snapshots
            .iter()
            .filter(|e| filter.matches(&e.snapshot))
            .max_by_key(|e| e.snapshot.time_ns)
            .ok_or_else(|| "no snapshot matches (see `s3bk snapshots`)".to_owned());
    }
    let spec = spec.to_ascii_lowercase();
    let mut found = snapshots.iter().filter(|e| e.id.to_hex().starts_with(&spec));
    match (found.next(), found.next()) {
        (Some(e), None) if !spec.is_empty() => Ok(e),
        (Some(_), Some(_)) => Err(format!("snapshot id prefix {spec:?} is ambiguous; give more digits")),
        _ => Err(format!("no snapshot {spec:?} (see `s3bk snapshots`)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(time_ns: i64, host: &str, tags: &[&str]) -> Snapshot {
        Snapshot {
            time_ns,
            tree: Id([1; 32]),
            paths: vec!["/r".into()],
            hostname: host.into(),
            username: "u".into(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            parent: None,
            program: "s3bk".into(),
            incomplete: false,
            summary: Summary::default(),
            original: None,
        }
    }

    #[test]
    fn cbor_round_trip() {
        let s = snap(5, "h", &["a"]);
        assert_eq!(crate::codec::from_cbor::<Snapshot>(&crate::codec::to_cbor(&s)).unwrap(), s);
    }

    #[test]
    fn selects_latest_and_prefixes() {
        let list = vec![
            SnapshotEntry { id: Id([0xaa; 32]), snapshot: snap(1, "a", &[]) },
            SnapshotEntry { id: Id([0xab; 32]), snapshot: snap(3, "b", &["x"]) },
            SnapshotEntry { id: Id([0xbb; 32]), snapshot: snap(2, "a", &[]) },
        ];
        let none = Filter::default();
        assert_eq!(select(&list, "latest", &none).unwrap().id, Id([0xab; 32]));
        let host_a = Filter { hosts: vec!["a".into()], ..Filter::default() };
        assert_eq!(select(&list, "latest", &host_a).unwrap().id, Id([0xbb; 32]));
        let tag = Filter { tags: vec!["x".into()], ..Filter::default() };
        assert_eq!(select(&list, "latest", &tag).unwrap().id, Id([0xab; 32]));
        assert!(select(&list, "a", &none).unwrap_err().contains("ambiguous"));
        assert_eq!(select(&list, "AAA", &none).unwrap().id, Id([0xaa; 32]));
        assert!(select(&list, "cc", &none).is_err());
        assert!(select(&[], "latest", &none).is_err());
    }
}
