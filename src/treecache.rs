//! Tree packs, fetched whole and kept in memory for the length of a command.
//!
//! Directories are read one at a time (restore plans, the backup's parent comparison, browse,
//! verify). Over S3 a ranged GET per directory costs a round trip each, thousands in sequence;
//! tree blobs are packed together, so fetching each tree pack once turns that into a handful of
//! requests. Concurrent requests for one pack share a single fetch. Memory is capped: past the
//! cap the cache starts afresh (tree packs are a small fraction of a repository).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::OnceCell;

use crate::backend::{Backend, FileType, Handle};
use crate::cache::Location;
use crate::error::{Error, Result};
use crate::id::Id;

/// The most bytes of tree packs kept at once.
const CAP: usize = 512 << 20;

/// A per-command cache of whole tree packs.
#[derive(Default)]
pub struct TreePacks {
    packs: Mutex<Cached>,
}

/// The packs (each fetched once, by whoever asks first) and their total size.
#[derive(Default)]
struct Cached {
    packs: HashMap<Id, Arc<OnceCell<Bytes>>>,
    bytes: usize,
}

impl std::fmt::Debug for TreePacks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TreePacks")
    }
}

impl TreePacks {
    /// The sealed bytes of the blob at `loc` if its pack is in memory already; no waiting.
    pub fn cached(&self, loc: &Location) -> Option<Bytes> {
        let guard = self.packs.lock().unwrap_or_else(|p| p.into_inner());
        let pack = guard.packs.get(&loc.pack)?.get()?;
        let r = loc.entry.range();
        (r.end <= pack.len() as u64).then(|| pack.slice(r.start as usize..r.end as usize))
    }

    /// The sealed bytes of the blob at `loc`, from its pack fetched whole (once).
    pub async fn sealed(&self, backend: &dyn Backend, loc: &Location) -> Result<Bytes> {
        let cell = {
            let mut guard = self.packs.lock().unwrap_or_else(|p| p.into_inner());
            guard.packs.entry(loc.pack).or_default().clone()
        };
        let pack = cell
            .get_or_try_init(|| async {
                let data = backend.get(&Handle::new(FileType::Pack, loc.pack.to_hex()), None).await?;
                let mut guard = self.packs.lock().unwrap_or_else(|p| p.into_inner());
                if guard.bytes + data.len() > CAP {
                    // Start afresh rather than track recency: tree packs rarely exceed the cap.
                    guard.packs.retain(|id, _| *id == loc.pack);
                    guard.bytes = 0;
                }
                guard.bytes += data.len();
                Ok::<_, Error>(data)
            })
            .await?;
        let r = loc.entry.range();
        if r.end > pack.len() as u64 {
            return Err(Error::corrupt(format!("pack {}", loc.pack), "shorter than its index entries"));
        }
        Ok(pack.slice(r.start as usize..r.end as usize))
    }
}
