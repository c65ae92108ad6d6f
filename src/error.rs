//! The library's error type.
//!
//! Rules: every public fallible function returns [`Result`]; a variant says what went wrong in
//! words a user can act on, and the binary maps variants to exit codes (`exit_code`). Backend
//! errors keep their retryable/permanent split so callers can decide to retry.

use std::path::PathBuf;

use crate::backend::BackendError;

/// Result with the library's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything the library can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The storage failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// There is no repository at that location.
    #[error("no repository at {0}; create one with `s3bk --repo {0} init`")]
    NoRepository(String),
    /// A repository already exists where `init` was asked to make one.
    #[error("a repository already exists at {0}")]
    AlreadyInitialized(String),
    /// No key file opens with the given passphrase or key.
    #[error("wrong password or key: none of the {0} key file(s) in the repository opens with it")]
    WrongKey(usize),
    /// The repository has no key file of the kind the caller can open.
    #[error(
        "the repository has no KMS-wrapped key file; open it with its password (and add a KMS wrap with \
         `s3bk key add --kms-key-id KEY`)"
    )]
    NoKmsKeyFile,
    /// A password was given, but only KMS wraps the master key.
    #[error(
        "the repository has no password key file, only KMS-wrapped ones; open it with KMS (--kms-key-id, or \
         with no password configured)"
    )]
    NoPassphraseKeyFile,
    /// An AWS KMS key cannot be used: missing, disabled, denied, wrong context, no credentials.
    /// The message says what to fix.
    #[error("KMS: {0}")]
    Kms(String),
    /// The local clock is too far from the server's for time-based maintenance to be safe.
    #[error(
        "the local clock differs from the storage server's by {seconds} s (more than 5 minutes); fix the clock (NTP) before running maintenance"
    )]
    ClockSkew {
        /// The measured difference.
        seconds: u64,
    },
    /// A prune marked data this backup relies on while it ran; no snapshot was written.
    #[error(
        "{0}; no snapshot was written. Run the backup again: unchanged files whose data is still indexed are not re-read"
    )]
    PruneOverlap(String),
    /// The repository is locked by a conflicting operation.
    #[error("repository is locked: {0}")]
    Locked(String),
    /// The repository was written by a newer s3bk.
    #[error("repository format version {found} is newer than this s3bk understands ({supported}); upgrade s3bk")]
    UnsupportedVersion {
        /// Version in the repository.
        found: u32,
        /// Newest version this build reads.
        supported: u32,
    },
    /// The repository needs features this build lacks.
    #[error("repository uses features this s3bk does not know: {0}; upgrade s3bk")]
    UnsupportedFeatures(String),
    /// Stored data failed a check: MAC, hash, framing, schema.
    #[error("corrupt {what}: {why}")]
    Corrupt {
        /// Which object.
        what: String,
        /// What check failed.
        why: String,
    },
    /// A blob the repository refers to is not in the index.
    #[error("blob {0} is not in the index (run `s3bk verify`, then `s3bk repair index`)")]
    MissingBlob(crate::id::Id),
    /// A local file operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The local index cache failed.
    #[error("local cache: {0}")]
    Cache(String),
    /// The request does not make sense (bad snapshot id, conflicting options, ...).
    #[error("{0}")]
    Invalid(String),
    /// The operation was cancelled (another stage failed first, or the user interrupted).
    #[error("cancelled")]
    Cancelled,
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        Self::Cache(e.to_string())
    }
}

impl Error {
    /// Builds an [`Error::Corrupt`].
    pub fn corrupt(what: impl Into<String>, why: impl Into<String>) -> Self {
        Self::Corrupt { what: what.into(), why: why.into() }
    }

    /// Builds an [`Error::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { path: path.into(), source }
    }
}
