//! Placeholder for the maintenance lease (`crate::lease`, format §11.2) until the real one lands
//! on main: the same API, but it excludes nobody. Removed when `src/lease.rs` is merged.

use crate::error::Result;
use crate::repo::Repository;

/// A held maintenance lease (placeholder: holds nothing).
#[derive(Debug)]
pub struct Lease {
    operation: String,
}

impl Lease {
    /// Takes the lease for `operation`.
    pub async fn acquire(_repo: &Repository, operation: &str) -> Result<Self> {
        tracing::debug!("maintenance lease placeholder: {operation}");
        Ok(Self { operation: operation.to_owned() })
    }

    /// Checks the lease is still held with time to spare (call before every deletion).
    pub fn check(&self) -> Result<()> {
        Ok(())
    }

    /// Gives the lease back.
    pub async fn release(self) -> Result<()> {
        tracing::debug!("maintenance lease placeholder released: {}", self.operation);
        Ok(())
    }
}
