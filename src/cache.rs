//! The local blob index: a SQLite database that mirrors the repository's index files.
//!
//! It lives under `$XDG_CACHE_HOME/s3bk/<repo id>/index.sqlite` and is never the source of truth:
//! it records which index files it has absorbed, and is topped up, or rebuilt from scratch, when
//! the repository's set of index files differs (see `Repository::load_index`). A corrupt cache is
//! deleted and rebuilt. Blobs are looked up here instead of holding the whole index in memory,
//! so memory stays flat however large the repository grows.
//!
//! It also keeps snapshot files as stored (still encrypted), so listing 60,000 snapshots of a
//! shared repository costs a LIST, not 60,000 downloads.
//!
//! And it remembers which snapshots had every blob indexed, as of a count of index-file
//! removals: while no index file has been dropped since, their blobs are all still here, and a
//! backup on top of one skips looking up each unchanged file's blobs.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::error::{Error, Result};
use crate::id::Id;
use crate::index::IndexFile;
use crate::pack::BlobEntry;

const SCHEMA_VERSION: i64 = 5;

/// A blob's location: its pack and its entry in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    /// The pack holding the blob.
    pub pack: Id,
    /// The blob's entry in that pack.
    pub entry: BlobEntry,
}

/// The SQLite-backed blob index.
pub struct BlobIndex {
    conn: Mutex<Conn>,
    path: Option<PathBuf>,
}

/// The connection and the read transaction lookups share.
///
/// In WAL mode every autocommit query opens and closes a read transaction (an fstat and two
/// fcntl locks): most of the cost of a lookup. Lookups instead share one transaction, renewed
/// every [`READS_PER_TXN`] reads so other processes' writes become visible and the WAL can be
/// checkpointed, and closed before any write.
struct Conn {
    conn: Connection,
    reads: u32,
}

const READS_PER_TXN: u32 = 4096;

impl Conn {
    fn read(&mut self) -> rusqlite::Result<&Connection> {
        if self.reads == 0 {
            self.conn.execute_batch("BEGIN")?;
        }
        self.reads += 1;
        if self.reads >= READS_PER_TXN {
            self.conn.execute_batch("COMMIT; BEGIN")?;
            self.reads = 1;
        }
        Ok(&self.conn)
    }

    /// The connection for a write transaction, which must begin IMMEDIATE: a deferred one that
    /// reads first and then writes fails at once with SQLITE_BUSY (no busy wait) when another
    /// process wrote in between.
    fn write(&mut self) -> rusqlite::Result<&mut Connection> {
        if self.reads > 0 {
            self.conn.execute_batch("COMMIT")?;
            self.reads = 0;
        }
        Ok(&mut self.conn)
    }
}

impl std::fmt::Debug for BlobIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BlobIndex({:?})", self.path)
    }
}

/// Why a cache file cannot be used as it is.
#[derive(Debug, thiserror::Error)]
enum OpenError {
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    #[error("it was written by another version of s3bk (cache schema {0}, this s3bk uses {SCHEMA_VERSION})")]
    Schema(i64),
}

fn open_conn(path: Option<&Path>) -> Result<Connection, OpenError> {
    let conn = match path {
        Some(p) => Connection::open(p)?,
        None => Connection::open_in_memory()?,
    };
    conn.busy_timeout(std::time::Duration::from_secs(60))?;
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA mmap_size=1073741824; PRAGMA cache_size=-32768;
         CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
         CREATE TABLE IF NOT EXISTS index_files (
            file INTEGER PRIMARY KEY, id BLOB NOT NULL UNIQUE, supersedes BLOB NOT NULL
         );
         CREATE TABLE IF NOT EXISTS blobs (
            id BLOB NOT NULL, file INTEGER NOT NULL, pack BLOB NOT NULL, flags INTEGER NOT NULL,
            offset INTEGER NOT NULL, length INTEGER NOT NULL, raw_len INTEGER NOT NULL,
            PRIMARY KEY (id, file)
         ) WITHOUT ROWID;
         CREATE INDEX IF NOT EXISTS blobs_by_file ON blobs(file);
         CREATE TABLE IF NOT EXISTS snapshots (id BLOB PRIMARY KEY, stored BLOB NOT NULL) WITHOUT ROWID;
         CREATE TABLE IF NOT EXISTS indexed_snapshots (id BLOB PRIMARY KEY, removals INTEGER NOT NULL) WITHOUT ROWID;",
    )?;
    let version: Option<i64> =
        conn.query_row("SELECT value FROM meta WHERE key='schema'", [], |r| r.get(0)).optional()?;
    match version {
        Some(SCHEMA_VERSION) => {}
        Some(v) => return Err(OpenError::Schema(v)),
        None => {
            conn.execute("INSERT INTO meta(key, value) VALUES('schema', ?1)", [SCHEMA_VERSION])?;
        }
    }
    Ok(conn)
}

impl BlobIndex {
    /// Opens (or creates) the cache at `path`, or an in-memory one for `None`.
    /// A database that cannot be opened or has another schema is deleted and made anew.
    pub fn open(path: Option<&Path>) -> Result<Self> {
        let conn = match open_conn(path) {
            Ok(c) => c,
            Err(e) => {
                let Some(p) = path else { return Err(Error::Cache(e.to_string())) };
                tracing::warn!("local cache {} unusable ({e}); rebuilding it", p.display());
                for suffix in ["", "-wal", "-shm"] {
                    let mut f = p.as_os_str().to_owned();
                    f.push(suffix);
                    let _ = std::fs::remove_file(f);
                }
                open_conn(path).map_err(|e| Error::Cache(e.to_string()))?
            }
        };
        Ok(Self { conn: Mutex::new(Conn { conn, reads: 0 }), path: path.map(Path::to_path_buf) })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Conn> {
        // A panic while holding the lock leaves SQLite consistent (transactions roll back).
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The ids of the index files absorbed so far.
    pub fn index_files(&self) -> Result<HashSet<Id>> {
        let mut guard = self.conn();
        let conn = guard.read()?;
        let mut stmt = conn.prepare("SELECT id FROM index_files")?;
        let ids = stmt
            .query_map([], |r| r.get::<_, Vec<u8>>(0))?
            .filter_map(|r| r.ok().and_then(|b| Id::from_slice(&b)))
            .collect();
        Ok(ids)
    }

    /// Every index file that an absorbed index file supersedes (format §11.1).
    pub fn superseded(&self) -> Result<HashSet<Id>> {
        let mut guard = self.conn();
        let conn = guard.read()?;
        let mut stmt = conn.prepare("SELECT supersedes FROM index_files WHERE length(supersedes) > 0")?;
        let mut out = HashSet::new();
        for ids in stmt.query_map([], |r| r.get::<_, Vec<u8>>(0))? {
            out.extend(ids?.chunks_exact(32).filter_map(Id::from_slice));
        }
        Ok(out)
    }

    /// Forgets the index files `files` and their entries, in one transaction: other processes
    /// sharing the cache see the index before or after, never a part of it. Absorb a file's
    /// superseder before dropping it, so no blob is ever missing in between.
    pub fn drop_index_files(&self, files: &HashSet<Id>) -> Result<()> {
        if files.is_empty() {
            return Ok(());
        }
        let mut guard = self.conn();
        let tx = guard.write()?.transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut find = tx.prepare_cached("SELECT file FROM index_files WHERE id = ?1")?;
            let mut blobs = tx.prepare_cached("DELETE FROM blobs WHERE file = ?1")?;
            let mut file = tx.prepare_cached("DELETE FROM index_files WHERE file = ?1")?;
            for id in files {
                if let Some(n) = find.query_row([&id.0[..]], |r| r.get::<_, i64>(0)).optional()? {
                    blobs.execute([n])?;
                    file.execute([n])?;
                }
            }
            // Blobs may have left: every "fully indexed" record made before now is void.
            tx.execute(
                "INSERT INTO meta(key, value) VALUES('removals', 1) \
                 ON CONFLICT(key) DO UPDATE SET value = value + 1",
                [],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Absorbs the index files `files` (id, content) in one transaction. Each file keeps its own
    /// entries, so dropping it later (superseded or deleted) leaves every other file's intact.
    pub fn add_index_files(&self, files: &[(Id, IndexFile)]) -> Result<()> {
        let mut guard = self.conn();
        let tx = guard.write()?.transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut known = tx.prepare_cached("SELECT 1 FROM index_files WHERE id = ?1")?;
            let mut f = tx.prepare_cached("INSERT INTO index_files(id, supersedes) VALUES (?1, ?2)")?;
            let mut blob = tx.prepare_cached(
                "INSERT OR IGNORE INTO blobs(id, file, pack, flags, offset, length, raw_len) \
                 VALUES (?1,?2,?3,?4,?5,?6,?7)",
            )?;
            for (id, file) in files {
                // Another process sharing the cache may have absorbed it meanwhile.
                if known.exists([&id.0[..]])? {
                    continue;
                }
                let supersedes: Vec<u8> = file.supersedes.iter().flat_map(|s| s.0).collect();
                f.execute(params![&id.0[..], supersedes])?;
                let n = tx.last_insert_rowid();
                // In key order, each B-tree page is filled once instead of touched at random,
                // which keeps the transaction's dirty pages within the page cache.
                let mut rows: Vec<_> =
                    file.packs.iter().flat_map(|p| p.blobs.iter().map(move |b| (b, &p.id))).collect();
                rows.sort_unstable_by_key(|(b, _)| b.id);
                for (b, pack) in rows {
                    blob.execute(params![&b.id.0[..], n, &pack.0[..], b.flags(), b.offset, b.length, b.raw_len])?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Where blob `id` is stored, if indexed.
    pub fn get(&self, id: &Id) -> Result<Option<Location>> {
        let mut guard = self.conn();
        let conn = guard.read()?;
        let mut stmt =
            conn.prepare_cached("SELECT pack, flags, offset, length, raw_len FROM blobs WHERE id = ?1 LIMIT 1")?;
        let row = stmt
            .query_row([&id.0[..]], |r| {
                Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, u8>(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .optional()?;
        let Some((pack, flags, offset, length, raw_len)) = row else { return Ok(None) };
        let pack = Id::from_slice(&pack).ok_or_else(|| Error::corrupt("local cache", "bad pack id"))?;
        let (tpe, compressed) =
            BlobEntry::from_flags(flags).ok_or_else(|| Error::corrupt("local cache", "bad flags"))?;
        Ok(Some(Location { pack, entry: BlobEntry { id: *id, tpe, offset, length, raw_len, compressed } }))
    }

    /// Whether blob `id` is indexed.
    pub fn contains(&self, id: &Id) -> Result<bool> {
        let mut guard = self.conn();
        let conn = guard.read()?;
        let mut stmt = conn.prepare_cached("SELECT 1 FROM blobs WHERE id = ?1")?;
        Ok(stmt.exists([&id.0[..]])?)
    }

    /// Number of indexed blobs of each type: (data, tree).
    pub fn counts(&self) -> Result<(u64, u64)> {
        let mut guard = self.conn();
        let conn = guard.read()?;
        let count = |tree: u8| -> rusqlite::Result<u64> {
            conn.query_row("SELECT count(DISTINCT id) FROM blobs WHERE (flags & 1) = ?1", [tree], |r| {
                r.get::<_, i64>(0)
            })
            .map(|n| n as u64)
        };
        Ok((count(0)?, count(1)?))
    }

    /// Calls `f` for every indexed blob, in id order (for verify and prune).
    pub fn for_each(&self, mut f: impl FnMut(Location) -> Result<()>) -> Result<()> {
        let mut guard = self.conn();
        let conn = guard.read()?;
        let mut stmt =
            conn.prepare("SELECT id, pack, flags, offset, length, raw_len FROM blobs GROUP BY id ORDER BY id")?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let id = Id::from_slice(&r.get::<_, Vec<u8>>(0)?).ok_or_else(|| Error::corrupt("local cache", "bad id"))?;
            let pack =
                Id::from_slice(&r.get::<_, Vec<u8>>(1)?).ok_or_else(|| Error::corrupt("local cache", "bad id"))?;
            let (tpe, compressed) =
                BlobEntry::from_flags(r.get(2)?).ok_or_else(|| Error::corrupt("local cache", "flags"))?;
            f(Location {
                pack,
                entry: BlobEntry { id, tpe, offset: r.get(3)?, length: r.get(4)?, raw_len: r.get(5)?, compressed },
            })?;
        }
        Ok(())
    }
}

impl BlobIndex {
    /// How many times index files have been dropped from this cache: blobs can only leave it
    /// then. Read it after loading the index, before relying on what is indexed.
    pub fn removals(&self) -> Result<i64> {
        let mut guard = self.conn();
        let conn = guard.read()?;
        let n = conn.query_row("SELECT value FROM meta WHERE key = 'removals'", [], |r| r.get(0)).optional()?;
        Ok(n.unwrap_or(0))
    }

    /// Records that every blob snapshot `id` references was indexed here when the removal
    /// count was `removals`.
    pub fn set_fully_indexed(&self, id: &Id, removals: i64) -> Result<()> {
        let mut guard = self.conn();
        let tx = guard.write()?.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "INSERT OR REPLACE INTO indexed_snapshots(id, removals) VALUES (?1, ?2)",
            params![&id.0[..], removals],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Whether every blob snapshot `id` references is indexed here still: it was recorded so
    /// and no index file has been dropped since.
    pub fn fully_indexed(&self, id: &Id) -> Result<bool> {
        let removals = self.removals()?;
        let mut guard = self.conn();
        let conn = guard.read()?;
        let mut stmt = conn.prepare_cached("SELECT removals FROM indexed_snapshots WHERE id = ?1")?;
        let recorded: Option<i64> = stmt.query_row([&id.0[..]], |r| r.get(0)).optional()?;
        Ok(recorded == Some(removals))
    }

    /// The cached stored bytes of snapshot `id`.
    pub fn snapshot(&self, id: &Id) -> Result<Option<Vec<u8>>> {
        let mut guard = self.conn();
        let conn = guard.read()?;
        let mut stmt = conn.prepare_cached("SELECT stored FROM snapshots WHERE id = ?1")?;
        Ok(stmt.query_row([&id.0[..]], |r| r.get(0)).optional()?)
    }

    /// Caches the stored bytes of snapshots, and forgets those not in `keep` (and their records).
    pub fn update_snapshots(&self, new: &[(Id, Vec<u8>)], keep: &HashSet<Id>) -> Result<()> {
        let mut guard = self.conn();
        let tx = guard.write()?.transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut ins = tx.prepare_cached("INSERT OR IGNORE INTO snapshots(id, stored) VALUES (?1, ?2)")?;
            for (id, stored) in new {
                ins.execute(params![&id.0[..], stored])?;
            }
            for table in ["snapshots", "indexed_snapshots"] {
                let cached: Vec<Vec<u8>> = tx
                    .prepare(&format!("SELECT id FROM {table}"))?
                    .query_map([], |r| r.get(0))?
                    .collect::<rusqlite::Result<_>>()?;
                let mut del = tx.prepare(&format!("DELETE FROM {table} WHERE id = ?1"))?;
                for id in cached {
                    if Id::from_slice(&id).is_none_or(|i| !keep.contains(&i)) {
                        del.execute([&id])?;
                    }
                }
            }
        }
        tx.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::IndexPack;
    use crate::pack::BlobType;

    fn entry(n: u8, tpe: BlobType) -> BlobEntry {
        BlobEntry {
            id: Id([n; 32]),
            tpe,
            offset: u32::from(n) * 10,
            length: 10,
            raw_len: 7,
            compressed: n.is_multiple_of(2),
        }
    }

    #[test]
    fn absorbs_and_looks_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.sqlite");
        let idx = BlobIndex::open(Some(&path)).unwrap();
        let file = IndexFile {
            supersedes: vec![Id([7; 32]), Id([8; 32])],
            packs: vec![IndexPack { id: Id([9; 32]), blobs: vec![entry(1, BlobType::Data), entry(2, BlobType::Tree)] }],
        };
        idx.add_index_files(&[(Id([5; 32]), file)]).unwrap();
        drop(idx);
        let idx = BlobIndex::open(Some(&path)).unwrap();
        assert_eq!(
            idx.get(&Id([2; 32])).unwrap(),
            Some(Location { pack: Id([9; 32]), entry: entry(2, BlobType::Tree) })
        );
        assert!(idx.contains(&Id([1; 32])).unwrap());
        assert!(!idx.contains(&Id([3; 32])).unwrap());
        assert_eq!(idx.counts().unwrap(), (1, 1));
        assert_eq!(idx.index_files().unwrap(), HashSet::from([Id([5; 32])]));
        assert_eq!(idx.superseded().unwrap(), HashSet::from([Id([7; 32]), Id([8; 32])]));
        idx.drop_index_files(&HashSet::from([Id([5; 32])])).unwrap();
        assert!(idx.get(&Id([2; 32])).unwrap().is_none());
        assert!(idx.index_files().unwrap().is_empty());
    }

    #[test]
    fn a_fully_indexed_record_lasts_until_an_index_file_is_dropped() {
        let idx = BlobIndex::open(None).unwrap();
        let file = IndexFile {
            supersedes: vec![],
            packs: vec![IndexPack { id: Id([9; 32]), blobs: vec![entry(1, BlobType::Data)] }],
        };
        idx.add_index_files(&[(Id([5; 32]), file.clone()), (Id([6; 32]), file)]).unwrap();
        let (snap, other) = (Id([40; 32]), Id([41; 32]));
        idx.set_fully_indexed(&snap, idx.removals().unwrap()).unwrap();
        assert!(idx.fully_indexed(&snap).unwrap());
        assert!(!idx.fully_indexed(&other).unwrap());
        // Adding index files removes nothing: the record stands.
        idx.add_index_files(&[(Id([7; 32]), IndexFile { supersedes: vec![], packs: vec![] })]).unwrap();
        assert!(idx.fully_indexed(&snap).unwrap());
        // Dropping one voids it, even though blob 1 is still indexed through file 6.
        idx.drop_index_files(&HashSet::from([Id([5; 32])])).unwrap();
        assert!(!idx.fully_indexed(&snap).unwrap());
        idx.set_fully_indexed(&snap, idx.removals().unwrap()).unwrap();
        assert!(idx.fully_indexed(&snap).unwrap());
        // A forgotten snapshot's record goes with its cached file.
        idx.update_snapshots(&[], &HashSet::new()).unwrap();
        assert!(!idx.fully_indexed(&snap).unwrap());
    }

    #[test]
    fn corrupt_cache_is_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.sqlite");
        std::fs::write(&path, b"this is not a sqlite database at all, not even close....").unwrap();
        let idx = BlobIndex::open(Some(&path)).unwrap();
        assert!(idx.index_files().unwrap().is_empty());
    }
}
