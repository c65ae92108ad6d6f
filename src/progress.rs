//! Progress reporting: a trait the library calls and the binary implements (with indicatif).
//!
//! Totals may grow while work is under way (backup scans the tree in parallel with reading it),
//! so implementations should treat them as estimates.

/// Receives progress from long operations. Every method has a do-nothing default.
pub trait Progress: Send + Sync {
    /// More work was discovered: `files` entries and `bytes` bytes.
    fn add_total(&self, _files: u64, _bytes: u64) {}
    /// Work was done: `files` entries finished and `bytes` bytes processed.
    fn advance(&self, _files: u64, _bytes: u64) {}
    /// The item being worked on changed (a path, a pack).
    fn current(&self, _item: &str) {}
}

/// Reports nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoProgress;

impl Progress for NoProgress {}
