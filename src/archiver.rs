//! Backup: walks source paths and stores their content and metadata as a new snapshot.
//!
//! (Pipeline being implemented.)

use std::path::PathBuf;
use std::sync::Arc;

use crate::error::Result;
use crate::id::Id;
use crate::progress::Progress;
use crate::repo::Repository;
use crate::snapshot::Snapshot;

/// Which earlier snapshot to compare against to skip reading unchanged files.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ParentChoice {
    /// The newest snapshot of the same host and paths.
    #[default]
    Auto,
    /// This one.
    Id(Id),
    /// None: read every file (`--force-rehash`).
    None,
}

/// What to back up and how.
#[derive(Clone, Debug, Default)]
pub struct BackupOptions {
    /// Paths to back up (files or directories).
    pub paths: Vec<PathBuf>,
    /// Glob patterns of paths to leave out (gitignore-like: `*.tmp`, `/abs/path`, `**/cache`).
    pub excludes: Vec<String>,
    /// Leave out a directory that contains a file with one of these names (e.g. `.nobackup`).
    pub exclude_if_present: Vec<String>,
    /// Do not cross filesystem boundaries.
    pub one_file_system: bool,
    /// Tags for the snapshot.
    pub tags: Vec<String>,
    /// Host name to record (default: this machine's).
    pub hostname: Option<String>,
    /// Parent snapshot for change detection.
    pub parent: ParentChoice,
    /// Walk and read, but write nothing to the repository.
    pub dry_run: bool,
}

/// The outcome of a backup.
#[derive(Clone, Debug)]
pub struct BackupResult {
    /// The new snapshot's id (`None` for a dry run).
    pub id: Option<Id>,
    /// The snapshot (with its summary; `incomplete` when paths were skipped).
    pub snapshot: Snapshot,
}

/// Backs up `opts.paths` into `repo` (whose index must be loaded).
pub async fn backup(repo: &Repository, opts: &BackupOptions, progress: Arc<dyn Progress>) -> Result<BackupResult> {
    let _ = (repo, opts, progress);
    todo!("pipeline")
}
