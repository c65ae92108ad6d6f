//! Storage backends: a small async contract over immutable named objects, and its implementations.
//!
//! A backend stores opaque bytes under a [`Handle`] (a file type plus a name); it never sees keys
//! or plaintext. Everything above it (encryption, packs, index) is backend-agnostic.

mod local;
mod memory;
mod s3;

use std::fmt;
use std::ops::Range;

use async_trait::async_trait;
use bytes::Bytes;

pub use local::LocalBackend;
pub use memory::MemoryBackend;
pub use s3::{MULTIPART_THRESHOLD, PART_SIZE, S3Backend, S3Options};

/// The kinds of object in a repository; each has its own folder.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FileType {
    /// The repository config (one object, named `config`).
    Config,
    /// Key files: the master key, wrapped by a passphrase or a KMS key.
    Key,
    /// Lock and lease objects.
    Lock,
    /// Snapshot files.
    Snapshot,
    /// Index files.
    Index,
    /// Pack files (data and tree blobs).
    Pack,
    /// Prune's deletion plans (format §11.3).
    Deletion,
}

impl FileType {
    /// Every type, in the order `list_all`-style walks use.
    pub const ALL: [FileType; 7] = [
        FileType::Config,
        FileType::Key,
        FileType::Lock,
        FileType::Snapshot,
        FileType::Index,
        FileType::Pack,
        FileType::Deletion,
    ];

    /// The folder that holds objects of this type. The one place that mapping lives.
    pub fn dirname(self) -> &'static str {
        match self {
            FileType::Config => "",
            FileType::Key => "keys",
            FileType::Lock => "locks",
            FileType::Snapshot => "snapshots",
            FileType::Index => "index",
            FileType::Pack => "data",
            FileType::Deletion => "deletions",
        }
    }

    /// The object's path relative to the repository root: `data/<2 hex>/<name>` for packs,
    /// `<dir>/<name>` for the rest, `config` for the config.
    pub fn path(self, name: &str) -> String {
        match self {
            FileType::Config => "config".to_owned(),
            FileType::Pack => format!("data/{}/{}", name.get(..2).unwrap_or(name), name),
            _ => format!("{}/{}", self.dirname(), name),
        }
    }
}

/// A name in the repository: a file type and a name within it.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Handle {
    /// The object's type.
    pub tpe: FileType,
    /// The object's name: 64 hex digits, or `config`.
    pub name: String,
}

impl Handle {
    /// A handle for `name` of type `tpe`.
    pub fn new(tpe: FileType, name: impl Into<String>) -> Self {
        Self { tpe, name: name.into() }
    }

    /// The handle of the repository config.
    pub fn config() -> Self {
        Self::new(FileType::Config, "config")
    }

    /// The path relative to the repository root.
    pub fn path(&self) -> String {
        self.tpe.path(&self.name)
    }
}

impl fmt::Debug for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.path())
    }
}

impl fmt::Display for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.path())
    }
}

/// How `put` treats an object that already exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PutMode {
    /// Replace it (only the config and lock renewals use this).
    Overwrite,
    /// Fail with [`BackendError::AlreadyExists`], atomically (S3 `If-None-Match: *`).
    CreateOnly,
}

/// What `stat` and `list` report about an object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileInfo {
    /// The object.
    pub handle: Handle,
    /// Its size in bytes.
    pub size: u64,
    /// When the store last wrote it, by the store's clock (S3 `Last-Modified`, file mtime);
    /// `None` where the backend keeps no time. Maintenance measures clock skew with it.
    pub modified: Option<std::time::SystemTime>,
}

/// A boxed error from a backend's underlying client.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a backend call failed.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The object does not exist.
    #[error("{0} not found")]
    NotFound(Handle),
    /// A create-only put found the name taken.
    #[error("{0} already exists")]
    AlreadyExists(Handle),
    /// Worth retrying: throttling, 5xx, timeouts, a conflicting concurrent request.
    #[error("{context}: {source}")]
    Transient {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: BoxError,
    },
    /// Not worth retrying: permissions, missing bucket, full disk, bad configuration.
    #[error("{context}: {source}")]
    Permanent {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: BoxError,
    },
}

impl BackendError {
    /// Whether the same call may succeed if tried again.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Transient { .. })
    }

    /// Whether this is [`BackendError::NotFound`].
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::NotFound(_))
    }
}

/// The storage contract. Objects are immutable once written, except the config and locks.
///
/// Implementations must make a put atomic (no reader sees a partial object) and durable when it
/// returns; `list` may lag a put by the store's consistency model (S3 and local are strong).
#[async_trait]
pub trait Backend: Send + Sync + fmt::Debug + 'static {
    /// Where this backend stores, for messages (`/path/to/repo`, `s3://bucket/prefix`).
    fn location(&self) -> String;

    /// How many requests may usefully run at once.
    fn connections(&self) -> usize;

    /// Prepares an empty repository location (folders, bucket check). Idempotent.
    async fn create(&self) -> Result<(), BackendError>;

    /// Stores `data` under `h`. With [`PutMode::CreateOnly`] an existing object is left untouched
    /// and [`BackendError::AlreadyExists`] returned.
    async fn put(&self, h: &Handle, data: bytes::Bytes, mode: PutMode) -> Result<(), BackendError>;

    /// Reads the whole object, or the byte `range` of it. A range past the end is an error.
    async fn get(&self, h: &Handle, range: Option<Range<u64>>) -> Result<Bytes, BackendError>;

    /// The object's size, or [`BackendError::NotFound`].
    async fn stat(&self, h: &Handle) -> Result<FileInfo, BackendError>;

    /// Every object of type `tpe`, in no particular order.
    async fn list(&self, tpe: FileType) -> Result<Vec<FileInfo>, BackendError>;

    /// Removes the object; [`BackendError::NotFound`] if it was not there.
    async fn delete(&self, h: &Handle) -> Result<(), BackendError>;

    /// Whether [`PutMode::CreateOnly`] is atomic here. Some S3-compatible servers (Garage)
    /// silently ignore `If-None-Match`, so a create-only put replaces; locking must then fall back
    /// to lock files (format §11). Local and memory backends really honour it.
    async fn supports_create_only(&self) -> Result<bool, BackendError> {
        Ok(true)
    }
}

/// The name of the capability probe in `locks/` (format §2): written create-only to learn whether
/// the server honours conditional writes; never a lock, and never deleted.
pub const CREATE_ONLY_PROBE: &str = "0000000000000000000000000000000000000000000000000000000000000001";

/// Whether `name` is a valid object name for `tpe`: 64 lowercase hex digits (or `config`).
/// Backends skip anything else they find when listing (temp files, stray uploads).
pub fn valid_name(tpe: FileType, name: &str) -> bool {
    match tpe {
        FileType::Config => name == "config",
        _ => name.len() == 64 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
    }
}

/// Rejects a handle whose name `valid_name` refuses, so no backend ever builds a path from a
/// name like `../x` (and `FileType::path` never slices a non-ASCII name).
pub(crate) fn check_handle(h: &Handle) -> Result<(), BackendError> {
    if valid_name(h.tpe, &h.name) {
        Ok(())
    } else {
        Err(BackendError::Permanent {
            context: format!("invalid object name {:?} for {:?}", h.name, h.tpe),
            source: "names are 64 lowercase hex digits, or `config`".into(),
        })
    }
}

/// Checks `range` against an object of `len` bytes; the shared rule for every backend's `get`.
pub(crate) fn check_range(h: &Handle, range: &Range<u64>, len: u64) -> Result<(), BackendError> {
    if range.start <= range.end && range.end <= len {
        Ok(())
    } else {
        Err(BackendError::Permanent {
            context: format!("reading {h} bytes {}..{}", range.start, range.end),
            source: format!("range is not within the {len}-byte object").into(),
        })
    }
}

#[doc(hidden)]
pub mod suite;
