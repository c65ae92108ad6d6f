//! The repository: config, keys, and typed access to files and blobs over a backend.
//!
//! `Repository` is the only place that turns backend objects into trusted plaintext: every file
//! is checked against its name (the hash of its bytes), opened (MAC), decompressed within bounds
//! and decoded; every blob is also checked against its id. Write order is the caller's contract
//! (packs, then index files, then the snapshot); this module gives the primitives. It also owns
//! the key files in `keys/`: opening by passphrase or KMS, the epoch key ring, and adding,
//! removing and re-wrapping keys.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::backend::{Backend, BackendError, FileType, Handle, PutMode};
use crate::cache::{BlobIndex, Location};
use crate::chunker::ChunkerParams;
use crate::compress;
use crate::crypto::{EpochKey, Keys, MasterKey};
use crate::error::{Error, Result};
use crate::id::Id;
use crate::index::{IndexFile, IndexPack, MAX_BLOBS_PER_FILE};
use crate::keyfile::{KdfParams, KeyFile, Wrap};
use crate::kms::Kms;
use crate::pack::BlobEntry;
use crate::snapshot::{Snapshot, SnapshotEntry};
use crate::tree::Tree;
use crate::treecache::TreePacks;

/// The newest repository format this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;
/// Optional format features this build understands (none yet).
pub const KNOWN_FEATURES: &[&str] = &[];
/// Largest index, snapshot or config file accepted.
const MAX_FILE: u64 = 64 << 20;
const CONFIG_MAGIC: &[u8; 8] = b"s3bkconf";

/// The repository config: fixed at `init`, sealed under the master key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// Format version.
    pub version: u32,
    /// Random repository id (names the local cache).
    pub id: Id,
    /// Chunker sizes and secret seed.
    pub chunker: ChunkerParams,
    /// Target pack size in bytes.
    pub pack_size: u32,
    /// zstd level for new blobs.
    pub compression: i32,
    /// Format features in use; a reader that lacks one must refuse the repository.
    #[serde(default)]
    pub features: Vec<String>,
}

/// How a caller proves it may open the repository.
pub enum Secret {
    /// A passphrase for a passphrase key file.
    Passphrase(Zeroizing<Vec<u8>>),
    /// AWS KMS: `Decrypt` of the `kms` key files. `key_id` is required by `init` (the key that
    /// wraps the new master key); when opening, key files wrapped by it are tried first.
    Kms {
        /// The client.
        kms: Kms,
        /// The KMS key (id, ARN, alias name or alias ARN).
        key_id: Option<String>,
    },
}

impl Secret {
    /// A passphrase secret.
    pub fn passphrase(p: impl Into<Vec<u8>>) -> Self {
        Self::Passphrase(Zeroizing::new(p.into()))
    }

    /// A KMS secret.
    pub fn kms(kms: Kms, key_id: Option<String>) -> Self {
        Self::Kms { kms, key_id }
    }
}

/// A key file as stored: its name under `keys/` and its content.
#[derive(Clone, Debug)]
pub struct StoredKey {
    /// The name (64 hex digits).
    pub name: String,
    /// The content.
    pub file: KeyFile,
}

/// Every key file of the repository that decodes; the others are skipped with a warning
/// (kinds from a newer s3bk, stray files).
pub async fn key_files(backend: &dyn Backend) -> Result<Vec<StoredKey>> {
    let mut out = Vec::new();
    for f in backend.list(FileType::Key).await? {
        let data = match backend.get(&f.handle, None).await {
            Ok(d) => d,
            // Removed since the listing (a concurrent `key rewrap`).
            Err(e) if e.is_not_found() => continue,
            Err(e) => return Err(e.into()),
        };
        match KeyFile::decode(&data) {
            Ok(file) => out.push(StoredKey { name: f.handle.name.clone(), file }),
            Err(e) => tracing::warn!("skipping key file {}: {e}", f.handle),
        }
    }
    out.sort_by(|a, b| (&a.file.created, &a.name).cmp(&(&b.file.created, &b.name)));
    Ok(out)
}

/// The name of the key-ring entry of `epoch`: fixed, so two concurrent rotations cannot both
/// create the same epoch with different keys (the second create-only put fails).
fn epoch_entry_name(epoch: u32) -> String {
    Id::hash(&[&b"s3bk key-ring epoch "[..], &epoch.to_le_bytes()].concat()).to_hex()
}

/// Re-wraps the `kms` key files (all, or the one named `only`) under `new_key_id` with KMS
/// `ReEncrypt`; no master key is needed. Each new key file is written (create-only) before its
/// old one is deleted, so a concurrent reader never sees zero valid wraps. Returns
/// `(old name, new name)` pairs.
pub async fn rewrap_kms(
    backend: &dyn Backend,
    kms: &Kms,
    new_key_id: &str,
    only: Option<&str>,
) -> Result<Vec<(String, String)>> {
    let files: Vec<StoredKey> = key_files(backend)
        .await?
        .into_iter()
        .filter(|k| matches!(k.file.wrap, Wrap::Kms { .. }) && only.is_none_or(|n| n == k.name))
        .collect();
    if files.is_empty() {
        return Err(match only {
            Some(n) => Error::Invalid(format!("key file {n} is not a KMS key file")),
            None => Error::NoKmsKeyFile,
        });
    }
    let mut done = Vec::new();
    for k in files {
        let new = kms.rewrap(&k.file, new_key_id).await?;
        let name = Id::random().to_hex();
        backend.put(&Handle::new(FileType::Key, name.clone()), new.encode().into(), PutMode::CreateOnly).await?;
        backend.delete(&Handle::new(FileType::Key, k.name.clone())).await?;
        tracing::info!("re-wrapped key file {} as {name} under {new_key_id}", k.name);
        done.push((k.name, name));
    }
    Ok(done)
}

/// Choices made once, at `init`.
#[derive(Clone, Debug)]
pub struct InitOptions {
    /// KDF cost of the first key file.
    pub kdf: KdfParams,
    /// Target pack size in bytes (default 16 MiB: see ARCHITECTURE.md).
    pub pack_size: u32,
    /// zstd level (default 3).
    pub compression: i32,
    /// Chunker sizes; `None` for the defaults with a random seed.
    pub chunker: Option<ChunkerParams>,
}

impl Default for InitOptions {
    fn default() -> Self {
        Self { kdf: KdfParams::default(), pack_size: 16 << 20, compression: 3, chunker: None }
    }
}

/// An open repository.
pub struct Repository {
    backend: Arc<dyn Backend>,
    master: MasterKey,
    keys: Arc<Keys>,
    config: Config,
    index: Arc<BlobIndex>,
    /// Whether the backend makes create-only puts atomic (see [`Backend::supports_create_only`]).
    create_only: bool,
    /// Tree packs fetched whole, for reading directories.
    tree_packs: Arc<TreePacks>,
    /// When the index was loaded, and the deletion plans present just before.
    index_loaded: Option<IndexLoad>,
}

/// When [`Repository::load_index`] ran and which deletion plans it saw (format §11.4).
#[derive(Clone, Debug)]
pub struct IndexLoad {
    /// The time the plans were listed, just before the index files (wall clock).
    pub at: std::time::SystemTime,
    /// The same moment by the monotonic clock.
    pub at_instant: std::time::Instant,
    /// The plans present then; their packs are already absent from the loaded index.
    pub plans: HashSet<Id>,
}

impl std::fmt::Debug for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Repository({}, {})", self.backend.location(), self.config.id.short())
    }
}

/// Seals a file body: `flag (0 raw, 1 zstd) || raw_len (u32 LE) || payload`.
pub(crate) fn seal_file(keys: &Keys, plain: &[u8], level: i32) -> Vec<u8> {
    let mut body = Vec::with_capacity(plain.len() / 2 + 5);
    match compress::compress(plain, level) {
        Some(c) => {
            body.push(1);
            body.extend_from_slice(&(plain.len() as u32).to_le_bytes());
            body.extend_from_slice(&c);
        }
        None => {
            body.push(0);
            body.extend_from_slice(&(plain.len() as u32).to_le_bytes());
            body.extend_from_slice(plain);
        }
    }
    keys.seal(&body)
}

pub(crate) fn open_file(keys: &Keys, stored: &[u8], what: &str) -> Result<Vec<u8>> {
    let body = keys.open(stored).map_err(|e| Error::corrupt(what, e.to_string()))?;
    if body.len() < 5 {
        return Err(Error::corrupt(what, "truncated body"));
    }
    let raw_len = u32::from_le_bytes(body[1..5].try_into().expect("4 bytes")) as usize;
    match body[0] {
        0 if body.len() - 5 == raw_len => Ok(body[5..].to_vec()),
        1 => compress::decompress(&body[5..], raw_len).map_err(|e| Error::corrupt(what, e)),
        _ => Err(Error::corrupt(what, "bad body framing")),
    }
}

fn encode_config(keys: &Keys, config: &Config) -> Vec<u8> {
    let mut out = CONFIG_MAGIC.to_vec();
    out.extend_from_slice(&config.version.to_le_bytes());
    out.extend_from_slice(&keys.seal(&crate::codec::to_cbor(config)));
    out
}

/// Checks the plaintext framing of the config: magic and a version we can read.
fn config_version(data: &[u8]) -> Result<u32> {
    if data.len() < 12 || &data[..8] != CONFIG_MAGIC {
        return Err(Error::corrupt("config", "not an s3bk repository config"));
    }
    let version = u32::from_le_bytes(data[8..12].try_into().expect("4 bytes"));
    if version > FORMAT_VERSION {
        return Err(Error::UnsupportedVersion { found: version, supported: FORMAT_VERSION });
    }
    Ok(version)
}

impl Repository {
    /// Creates a repository at the backend's location with a fresh master key.
    pub async fn init(backend: Arc<dyn Backend>, secret: &Secret, opts: &InitOptions) -> Result<Self> {
        match backend.stat(&Handle::config()).await {
            Ok(_) => return Err(Error::AlreadyInitialized(backend.location())),
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
        let mut seed = [0u8; 8];
        rand::fill(&mut seed);
        let chunker = opts.chunker.unwrap_or_else(|| ChunkerParams::default_with_seed(u64::from_le_bytes(seed)));
        chunker.validate().map_err(Error::Invalid)?;
        let config = Config {
            version: FORMAT_VERSION,
            id: Id::random(),
            chunker,
            pack_size: opts.pack_size.clamp(1 << 20, 1 << 30),
            compression: opts.compression,
            features: Vec::new(),
        };
        // The key comes first, before anything is written: a KMS key that cannot be used leaves
        // no half-made repository behind.
        let (master, kf) = match secret {
            Secret::Passphrase(p) => {
                let master = MasterKey::generate();
                let kf = KeyFile::passphrase(&master, p, opts.kdf)?;
                (master, kf)
            }
            Secret::Kms { kms, key_id } => {
                let key_id = key_id.as_deref().ok_or_else(|| {
                    Error::Invalid("creating a repository with KMS needs the KMS key id (--kms-key-id)".into())
                })?;
                kms.generate_master(key_id, &config.id).await?
            }
        };
        let keys = master.keys();
        backend.create().await?;
        let create_only = backend.supports_create_only().await?;
        // Key first: a config without a key would be a locked-out repository.
        backend
            .put(&Handle::new(FileType::Key, Id::random().to_hex()), kf.encode().into(), PutMode::CreateOnly)
            .await?;
        match backend.put(&Handle::config(), encode_config(&keys, &config).into(), PutMode::CreateOnly).await {
            Err(BackendError::AlreadyExists(_)) => return Err(Error::AlreadyInitialized(backend.location())),
            r => r?,
        }
        Self::assemble(backend, master, keys, config, create_only)
    }

    /// An open repository with an empty in-memory cache (see [`Self::attach_cache`]).
    fn assemble(
        backend: Arc<dyn Backend>,
        master: MasterKey,
        keys: Keys,
        config: Config,
        create_only: bool,
    ) -> Result<Self> {
        Ok(Self {
            backend,
            master,
            keys: Arc::new(keys),
            config,
            index: Arc::new(BlobIndex::open(None)?),
            create_only,
            tree_packs: Arc::default(),
            index_loaded: None,
        })
    }

    /// Opens the repository with `secret`. The index is not loaded yet (see [`Self::load_index`]).
    pub async fn open(backend: Arc<dyn Backend>, secret: &Secret) -> Result<Self> {
        let raw = match backend.get(&Handle::config(), None).await {
            Ok(b) => b,
            Err(e) if e.is_not_found() => return Err(Error::NoRepository(backend.location())),
            Err(e) => return Err(e.into()),
        };
        config_version(&raw)?;
        let files = key_files(&*backend).await?;
        let (master, used) = Self::unwrap_master(&files, secret).await?;
        let keys = Self::key_ring(&master, &files);
        let config: Config =
            crate::codec::from_cbor(&keys.open(&raw[12..]).map_err(|e| Error::corrupt("config", e.to_string()))?)
                .map_err(|e| Error::corrupt("config", e))?;
        config.chunker.validate().map_err(|e| Error::corrupt("config", e))?;
        let unknown: Vec<&str> =
            config.features.iter().map(String::as_str).filter(|f| !KNOWN_FEATURES.contains(f)).collect();
        if !unknown.is_empty() {
            return Err(Error::UnsupportedFeatures(unknown.join(", ")));
        }
        // KMS checked the context against the ciphertext; this checks it names this repository
        // (a wrap copied from another repository would also fail the config's MAC above).
        if let Wrap::Kms { context, .. } = &files[used].file.wrap
            && context.get("repo") != Some(&config.id.to_hex())
        {
            return Err(Error::corrupt(
                format!("key file {}", files[used].name),
                "encryption context names another repository",
            ));
        }
        tracing::debug!(
            "opened with key file {} ({}), writing under epoch {}",
            files[used].name,
            files[used].file.wrap.kind(),
            keys.epoch()
        );
        let create_only = match backend.supports_create_only().await {
            Ok(b) => b,
            // A read-only credential (restore, browse) cannot write the probe; assuming "not
            // atomic" only makes locking more careful.
            Err(e) => {
                tracing::warn!("cannot probe for atomic create-only puts, assuming they are not: {e}");
                false
            }
        };
        Self::assemble(backend, master, keys, config, create_only)
    }

    /// The master key from the first key file that `secret` opens, and that file's position.
    async fn unwrap_master(files: &[StoredKey], secret: &Secret) -> Result<(MasterKey, usize)> {
        match secret {
            Secret::Passphrase(p) => {
                let mut tried = 0;
                for (i, k) in files.iter().enumerate() {
                    if !matches!(k.file.wrap, Wrap::Passphrase { .. }) {
                        continue;
                    }
                    tried += 1;
                    let (kf, p) = (k.file.clone(), p.clone());
                    let found = tokio::task::spawn_blocking(move || kf.unwrap_passphrase(&p))
                        .await
                        .map_err(|_| Error::Cancelled)??;
                    if let Some(master) = found {
                        return Ok((master, i));
                    }
                }
                if tried == 0 && files.iter().any(|k| matches!(k.file.wrap, Wrap::Kms { .. })) {
                    return Err(Error::NoPassphraseKeyFile);
                }
                Err(Error::WrongKey(tried))
            }
            Secret::Kms { kms, key_id } => {
                // Key files wrapped by the requested key first, then the others.
                let mut order: Vec<usize> =
                    (0..files.len()).filter(|&i| matches!(files[i].file.wrap, Wrap::Kms { .. })).collect();
                order.sort_by_key(|&i| {
                    let Wrap::Kms { key_id: k, .. } = &files[i].file.wrap else { unreachable!() };
                    Some(k) != key_id.as_ref()
                });
                let mut first_error = None;
                for &i in &order {
                    match kms.unwrap(&files[i].file).await {
                        Ok(master) => return Ok((master, i)),
                        Err(e @ (Error::Kms(_) | Error::Corrupt { .. })) => {
                            tracing::info!("KMS key file {} does not open: {e}", files[i].name);
                            first_error.get_or_insert(e);
                        }
                        Err(e) => return Err(e),
                    }
                }
                match first_error {
                    None => Err(Error::NoKmsKeyFile),
                    Some(Error::Kms(msg)) if order.len() > 1 => Err(Error::Kms(format!(
                        "{msg} (and none of the other {} KMS key files opens)",
                        order.len() - 1
                    ))),
                    Some(e) => Err(e),
                }
            }
        }
    }

    /// The key set: epoch 0 and every key-ring entry that opens. An entry that does not open
    /// is skipped with a warning: new data then goes under the newest epoch that does, and data
    /// sealed under the bad one reports its epoch as unknown when read.
    fn key_ring(master: &MasterKey, files: &[StoredKey]) -> Keys {
        let mut keys = master.keys();
        for k in files {
            match k.file.open_epoch(master) {
                Ok(Some((epoch, key))) => keys.add_epoch(epoch, &key),
                Ok(None) => {}
                Err(e) => tracing::warn!("skipping key file {}: {e}", k.name),
            }
        }
        keys
    }

    /// Stores a new key file under a random name (create-only); returns the name.
    async fn put_key_file(&self, kf: &KeyFile) -> Result<String> {
        let name = Id::random().to_hex();
        self.backend.put(&Handle::new(FileType::Key, name.clone()), kf.encode().into(), PutMode::CreateOnly).await?;
        Ok(name)
    }

    /// Adds a passphrase wrap of the master key; returns the new key file's name.
    pub async fn add_passphrase(&self, passphrase: &[u8], kdf: KdfParams) -> Result<String> {
        let (master, p) = (self.master.clone(), Zeroizing::new(passphrase.to_vec()));
        let kf = tokio::task::spawn_blocking(move || KeyFile::passphrase(&master, &p, kdf))
            .await
            .map_err(|_| Error::Cancelled)??;
        self.put_key_file(&kf).await
    }

    /// Adds a wrap of the master key by KMS key `key_id`; returns the new key file's name.
    pub async fn add_kms(&self, kms: &Kms, key_id: &str) -> Result<String> {
        let kf = kms.wrap(&self.master, key_id, &self.config.id).await?;
        self.put_key_file(&kf).await
    }

    /// Removes key file `name`. Refuses to remove the last master-key wrap (the repository
    /// could never be opened again) and epoch entries (data sealed under them would be lost).
    pub async fn remove_key(&self, name: &str) -> Result<()> {
        let files = key_files(&*self.backend).await?;
        let Some(target) = files.iter().find(|k| k.name == name) else {
            return Err(Error::Invalid(format!("no key file {name}")));
        };
        if !target.file.wrap.is_master_wrap() {
            return Err(Error::Invalid(format!(
                "key file {name} holds the data key of a key epoch; data written under it would become \
                 unreadable, so it is never removed"
            )));
        }
        if files.iter().filter(|k| k.file.wrap.is_master_wrap()).count() <= 1 {
            return Err(Error::Invalid(format!(
                "key file {name} is the last key of the repository; removing it would lock everyone out \
                 (add another with `s3bk key add` first)"
            )));
        }
        self.backend.delete(&Handle::new(FileType::Key, name.to_owned())).await?;
        Ok(())
    }

    /// Starts a new key epoch with a random data key: its key-ring entry is stored, and this
    /// repository (and every one opened afterwards) seals new data under it. Nothing is
    /// re-encrypted. Returns the new epoch.
    pub async fn rotate(&mut self) -> Result<u32> {
        let files = key_files(&*self.backend).await?;
        let ring = Self::key_ring(&self.master, &files);
        let epoch = ring
            .epoch()
            .max(self.keys.epoch())
            .checked_add(1)
            .ok_or_else(|| Error::Invalid("no key epoch left".into()))?;
        let key = EpochKey::generate();
        let kf = KeyFile::epoch(&self.master, epoch, &key);
        match self
            .backend
            .put(&Handle::new(FileType::Key, epoch_entry_name(epoch)), kf.encode().into(), PutMode::CreateOnly)
            .await
        {
            Err(BackendError::AlreadyExists(_)) => {
                return Err(Error::Invalid(format!(
                    "key epoch {epoch} was just created by another `key rotate`; run it again if another \
                     epoch is still wanted"
                )));
            }
            r => r?,
        }
        let mut keys = ring;
        keys.add_epoch(epoch, &key);
        self.keys = Arc::new(keys);
        Ok(epoch)
    }

    /// The backend.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// Whether create-only puts are atomic on this backend, as probed at init or open. When not
    /// (Garage), maintenance locking falls back to lock files (format §11).
    pub fn create_only_supported(&self) -> bool {
        self.create_only
    }

    /// The key set.
    pub fn keys(&self) -> &Arc<Keys> {
        &self.keys
    }

    /// The config.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The blob index (empty until [`Self::load_index`]).
    pub fn index(&self) -> &Arc<BlobIndex> {
        &self.index
    }

    /// Brings the blob index up to date with the repository's live index files (format §11.1:
    /// those no listed file supersedes), using the cache under `cache_dir` when given: only index
    /// files it has not seen are downloaded, then files that were removed or superseded are
    /// dropped from it. Each step is one transaction, so processes sharing the cache never see
    /// a blob vanish that a live index file lists.
    pub async fn load_index(&mut self, cache_dir: Option<&Path>) -> Result<()> {
        self.attach_cache(cache_dir)?;
        // Plans first: a plan listed now was written after the index files that leave its packs
        // out (format §11.3), so the index read below cannot lead a backup to rely on them.
        let (at, at_instant) = (std::time::SystemTime::now(), std::time::Instant::now());
        let plans = list_ids(&*self.backend, FileType::Deletion).await?;
        self.index_loaded = Some(IndexLoad { at, at_instant, plans });

        let index = self.index.clone();
        // Taken before listing: a file another process absorbs after our listing is new, not
        // deleted, and must not be dropped below.
        let known = index.index_files()?;
        let mut superseded = index.superseded()?;
        let present = list_ids(&*self.backend, FileType::Index).await?;
        let missing: Vec<Id> =
            present.iter().filter(|id| !known.contains(id) && !superseded.contains(id)).copied().collect();
        let this = &*self;
        let mut files =
            futures::stream::iter(missing)
                .map(|id| async move {
                    Ok::<_, Error>((id, IndexFile::decode(&this.load_file(FileType::Index, &id).await?)?))
                })
                .buffer_unordered(this.backend.connections().max(1));
        let mut batch = Vec::new();
        while let Some((id, file)) = files.try_next().await? {
            superseded.extend(file.supersedes.iter().copied());
            if superseded.contains(&id) {
                continue; // superseded by a file that arrived earlier
            }
            batch.push((id, file));
            if batch.len() >= 64 {
                index.add_index_files(&std::mem::take(&mut batch))?;
            }
        }
        index.add_index_files(&batch)?;
        let superseded_now = index.index_files()?.into_iter().filter(|id| superseded.contains(id));
        let stale: HashSet<Id> = known.difference(&present).copied().chain(superseded_now).collect();
        if !stale.is_empty() {
            tracing::info!("dropping {} removed or superseded index files from the cache", stale.len());
            index.drop_index_files(&stale)?;
        }
        Ok(())
    }

    /// When the index was loaded and the deletion plans seen then; `None` before
    /// [`Self::load_index`].
    pub fn index_loaded(&self) -> Option<&IndexLoad> {
        self.index_loaded.as_ref()
    }

    /// Uses the local cache under `cache_dir` (`<dir>/<repo id>/index.sqlite`), or an empty
    /// in-memory one for `None`, without syncing it (see [`Self::load_index`]).
    pub fn attach_cache(&mut self, cache_dir: Option<&Path>) -> Result<()> {
        let path = match cache_dir {
            Some(dir) => {
                let dir = dir.join(self.config.id.to_hex());
                std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
                Some(dir.join("index.sqlite"))
            }
            None => None,
        };
        self.index = Arc::new(BlobIndex::open(path.as_deref())?);
        Ok(())
    }

    /// Stores `plain` as a sealed file of type `tpe`, named by the hash of its bytes.
    pub async fn save_file(&self, tpe: FileType, plain: &[u8]) -> Result<Id> {
        let stored = seal_file(&self.keys, plain, self.config.compression);
        let id = Id::hash(&stored);
        self.put_new(&Handle::new(tpe, id.to_hex()), stored.into()).await?;
        Ok(id)
    }

    /// Puts a content-addressed object. "Already there" is success: the name is the hash of the
    /// content, and a retried create-only PUT whose first attempt landed also ends here.
    pub async fn put_new(&self, h: &Handle, data: Bytes) -> Result<()> {
        match self.backend.put(h, data, PutMode::CreateOnly).await {
            Ok(()) | Err(BackendError::AlreadyExists(_)) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Loads and checks a sealed file.
    pub async fn load_file(&self, tpe: FileType, id: &Id) -> Result<Vec<u8>> {
        let stored = self.fetch_file(tpe, id).await?;
        open_file(&self.keys, &stored, &Handle::new(tpe, id.to_hex()).to_string())
    }

    /// Downloads a sealed file and checks it against its name, without opening it.
    async fn fetch_file(&self, tpe: FileType, id: &Id) -> Result<Bytes> {
        let h = Handle::new(tpe, id.to_hex());
        let stored = self.backend.get(&h, None).await?;
        check_stored(&h, &stored)?;
        Ok(stored)
    }

    /// Writes index files for `packs` (split to bounded sizes) and absorbs them into the cache.
    /// Call only after every pack listed is stored.
    pub async fn save_index(&self, packs: Vec<IndexPack>) -> Result<Vec<Id>> {
        let mut ids = Vec::new();
        let mut file = IndexFile::default();
        let mut count = 0;
        let mut absorbed = Vec::new();
        let mut packs = packs.into_iter().peekable();
        while let Some(p) = packs.next() {
            count += p.blobs.len();
            file.packs.push(p);
            if count >= MAX_BLOBS_PER_FILE || packs.peek().is_none() {
                let id = self.save_file(FileType::Index, &file.encode()).await?;
                ids.push(id);
                absorbed.push((id, std::mem::take(&mut file)));
                count = 0;
            }
        }
        self.index.add_index_files(&absorbed)?;
        Ok(ids)
    }

    /// Where blob `id` is stored.
    pub fn locate(&self, id: &Id) -> Result<Location> {
        self.index.get(id)?.ok_or(Error::MissingBlob(*id))
    }

    /// Fetches one blob with a ranged read and checks it.
    pub async fn load_blob(&self, id: &Id) -> Result<Vec<u8>> {
        let loc = self.locate(id)?;
        let sealed = self.backend.get(&Handle::new(FileType::Pack, loc.pack.to_hex()), Some(loc.entry.range())).await?;
        let keys = self.keys.clone();
        tokio::task::spawn_blocking(move || decode_blob_with(&keys, &loc.entry, &sealed))
            .await
            .map_err(|_| Error::Cancelled)?
    }

    /// Loads and decodes a tree blob.
    pub async fn load_tree(&self, id: &Id) -> Result<Tree> {
        load_tree_with(&*self.backend, &self.keys, &self.index, &self.tree_packs, id).await
    }

    /// The cache of whole tree packs (shared with the backup's parent-tree prefetcher).
    pub fn tree_packs(&self) -> &Arc<TreePacks> {
        &self.tree_packs
    }

    /// Stores a snapshot file (the last write of a backup).
    pub async fn save_snapshot(&self, s: &Snapshot) -> Result<Id> {
        self.save_file(FileType::Snapshot, &crate::codec::to_cbor(s)).await
    }

    /// Loads one snapshot.
    pub async fn load_snapshot(&self, id: &Id) -> Result<Snapshot> {
        self.decode_snapshot(id, &self.fetch_file(FileType::Snapshot, id).await?)
    }

    fn decode_snapshot(&self, id: &Id, stored: &[u8]) -> Result<Snapshot> {
        let what = format!("snapshot {id}");
        let data = open_file(&self.keys, stored, &what)?;
        crate::codec::from_cbor(&data).map_err(|e| Error::corrupt(what, e))
    }

    /// Every snapshot, oldest first. Snapshot files already in the local cache are not
    /// downloaded again (they are immutable); the cache forgets those that are gone.
    pub async fn snapshots(&self) -> Result<Vec<SnapshotEntry>> {
        let ids: HashSet<Id> = self
            .backend
            .list(FileType::Snapshot)
            .await?
            .into_iter()
            .filter_map(|f| f.handle.name.parse().ok())
            .collect();
        let mut stored = Vec::with_capacity(ids.len());
        let mut missing = Vec::new();
        for id in &ids {
            match self.index.snapshot(id)? {
                Some(bytes) if check_stored(&Handle::new(FileType::Snapshot, id.to_hex()), &bytes).is_ok() => {
                    stored.push((*id, bytes));
                }
                _ => missing.push(*id),
            }
        }
        let fetched: Vec<(Id, Vec<u8>)> = futures::stream::iter(missing)
            .map(|id| async move { Ok::<_, Error>((id, self.fetch_file(FileType::Snapshot, &id).await?.to_vec())) })
            .buffer_unordered(self.backend.connections().max(1))
            .try_collect()
            .await?;
        self.index.update_snapshots(&fetched, &ids)?;
        stored.extend(fetched);
        let mut out = stored
            .iter()
            .map(|(id, b)| Ok(SnapshotEntry { id: *id, snapshot: self.decode_snapshot(id, b)? }))
            .collect::<Result<Vec<_>>>()?;
        out.sort_by_key(|e| (e.snapshot.time_ns, e.id));
        Ok(out)
    }

    /// Like [`Self::snapshots`], but a snapshot file that does not load is returned with its
    /// error instead of failing the whole listing: for `verify` and `repair`, which must work on
    /// a damaged repository. Oldest first.
    pub async fn snapshots_lenient(&self) -> Result<(Vec<SnapshotEntry>, Vec<(Id, Error)>)> {
        let ids = list_ids(&*self.backend, FileType::Snapshot).await?;
        let loaded: Vec<(Id, Result<Snapshot>)> = futures::stream::iter(ids)
            .map(|id| async move { (id, self.load_snapshot(&id).await) })
            .buffer_unordered(self.backend.connections().max(1))
            .collect()
            .await;
        let (mut good, mut bad) = (Vec::new(), Vec::new());
        for (id, r) in loaded {
            match r {
                Ok(snapshot) => good.push(SnapshotEntry { id, snapshot }),
                Err(e) => bad.push((id, e)),
            }
        }
        good.sort_by_key(|e: &SnapshotEntry| (e.snapshot.time_ns, e.id));
        bad.sort_by_key(|(id, _)| *id);
        Ok((good, bad))
    }

    /// The default local cache folder (`$XDG_CACHE_HOME/s3bk`).
    pub fn default_cache_dir() -> Option<PathBuf> {
        directories::BaseDirs::new().map(|d| d.cache_dir().join("s3bk"))
    }
}

/// The ids of the valid objects of type `tpe`. A failed listing is an error, never an empty set.
pub(crate) async fn list_ids(backend: &dyn Backend, tpe: FileType) -> Result<HashSet<Id>> {
    Ok(backend.list(tpe).await?.into_iter().filter_map(|f| f.handle.name.parse().ok()).collect())
}

/// Loads and decodes tree `id` through the tree-pack cache (for tasks without a `Repository`).
pub async fn load_tree_with(
    backend: &dyn Backend,
    keys: &Arc<Keys>,
    index: &BlobIndex,
    tree_packs: &TreePacks,
    id: &Id,
) -> Result<Tree> {
    let loc = index.get(id)?.ok_or(Error::MissingBlob(*id))?;
    let sealed = tree_packs.sealed(backend, &loc).await?;
    let keys = keys.clone();
    let id = *id;
    tokio::task::spawn_blocking(move || decode_tree(&keys, &loc, &sealed, &id)).await.map_err(|_| Error::Cancelled)?
}

/// Opens, checks and decodes the sealed tree blob `id` stored at `loc`.
pub fn decode_tree(keys: &Keys, loc: &Location, sealed: &[u8], id: &Id) -> Result<Tree> {
    let plain = decode_blob_with(keys, &loc.entry, sealed)?;
    Tree::decode(&plain).map_err(|e| Error::corrupt(format!("tree {id}"), e.to_string()))
}

/// Checks a stored file against the limits and its name (the hash of its bytes).
fn check_stored(h: &Handle, stored: &[u8]) -> Result<()> {
    if stored.len() as u64 > MAX_FILE {
        return Err(Error::corrupt(h.to_string(), "larger than any valid file"));
    }
    if h.name.parse::<Id>().ok() != Some(Id::hash(stored)) {
        return Err(Error::corrupt(h.to_string(), "content does not match its name"));
    }
    Ok(())
}

/// Opens a sealed blob and checks it is the one `entry` names (MAC, exact length, keyed id).
pub fn decode_blob_with(keys: &Keys, entry: &BlobEntry, sealed: &[u8]) -> Result<Vec<u8>> {
    let mut bufs = DecodeBuffers::default();
    decode_blob_into(keys, entry, sealed, &mut bufs)?;
    Ok(if entry.compressed { bufs.plain } else { bufs.opened })
}

/// Scratch space for [`decode_blob_into`]: reused, so decoding many blobs allocates once.
#[derive(Default)]
pub struct DecodeBuffers {
    opened: Vec<u8>,
    plain: Vec<u8>,
}

/// [`decode_blob_with`] into `bufs`; the checked plaintext borrows from them.
pub fn decode_blob_into<'b>(
    keys: &Keys,
    entry: &BlobEntry,
    sealed: &[u8],
    bufs: &'b mut DecodeBuffers,
) -> Result<&'b [u8]> {
    let what = || format!("blob {}", entry.id);
    keys.open_into(sealed, &mut bufs.opened).map_err(|e| Error::corrupt(what(), e.to_string()))?;
    let plain = if entry.compressed {
        compress::decompress_into(&bufs.opened, entry.raw_len as usize, &mut bufs.plain)
            .map_err(|e| Error::corrupt(what(), e))?;
        &bufs.plain
    } else {
        &bufs.opened
    };
    if plain.len() != entry.raw_len as usize || keys.blob_id(plain) != entry.id {
        return Err(Error::corrupt(what(), "content does not match its id"));
    }
    Ok(plain)
}
