//! Restore: writes a snapshot's files back to disk, never outside the target.

use std::path::PathBuf;
use std::sync::Arc;

use crate::error::Result;
use crate::progress::Progress;
use crate::repo::Repository;
use crate::snapshot::Snapshot;

/// What to do with a file that already exists at the target.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Overwrite {
    /// Always replace it.
    Always,
    /// Replace it unless size and mtime already match (cheap resume of an interrupted restore).
    #[default]
    IfChanged,
    /// Keep it.
    Never,
}

/// Where and what to restore.
#[derive(Clone, Debug, Default)]
pub struct RestoreOptions {
    /// The folder to restore into (created if missing).
    pub target: PathBuf,
    /// Only paths matching one of these globs (relative to the snapshot root, e.g. `reports/**`).
    pub includes: Vec<String>,
    /// Leave out paths matching these globs.
    pub excludes: Vec<String>,
    /// Policy for existing files.
    pub overwrite: Overwrite,
    /// Restore ownership (uid/gid); only works as root.
    pub owner: bool,
}

/// What a restore did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct RestoreSummary {
    /// Files written.
    pub files_restored: u64,
    /// Files left as they were (overwrite policy).
    pub files_skipped: u64,
    /// Directories created or updated.
    pub dirs: u64,
    /// Other entries (links, devices, FIFOs, sockets).
    pub others: u64,
    /// Content bytes written.
    pub bytes_written: u64,
    /// Problems that did not stop the restore (metadata that could not be applied, ...).
    pub warnings: Vec<String>,
}

/// Restores `snapshot` under `opts.target` (the repository's index must be loaded).
pub async fn restore(
    repo: &Repository,
    snapshot: &Snapshot,
    opts: &RestoreOptions,
    progress: Arc<dyn Progress>,
) -> Result<RestoreSummary> {
    let _ = (repo, snapshot, opts, progress);
    todo!("restore")
}
