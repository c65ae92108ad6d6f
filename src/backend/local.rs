//! The local directory backend: a repository is a folder laid out exactly as [`Handle::path`]
//! says (`config`, `keys/<id>`, `data/<2 hex>/<id>`, ...), plus a `tmp/` folder for writes in
//! flight. It owns the on-disk layout, atomic and durable puts, and the mapping of `io::Error`s
//! onto [`BackendError`].
//!
//! All file I/O is blocking `std::fs`, run on tokio's blocking pool.

use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;

use super::{Backend, BackendError, FileInfo, FileType, Handle, PutMode, check_handle, check_range, valid_name};

/// The folder (under the root) where puts are written before they get their final name.
const TMP_DIR: &str = "tmp";

/// A backend storing a repository in a local (or mounted) directory.
#[derive(Clone, Debug)]
pub struct LocalBackend {
    root: PathBuf,
}

impl LocalBackend {
    /// A backend for the repository at `root`; nothing is touched until a call is made.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn path(&self, h: &Handle) -> PathBuf {
        self.root.join(h.path())
    }
}

/// Runs blocking file work off the async threads; a panic in it is re-raised here.
async fn blocking<T, F>(f: F) -> Result<T, BackendError>
where
    F: FnOnce() -> Result<T, BackendError> + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // Only happens while the runtime shuts down.
        Err(e) => Err(BackendError::Transient { context: "running a file operation".to_owned(), source: e.into() }),
    }
}

/// Classifies an I/O error from doing `what` on `path`. `NotFound` is not special here: callers
/// that mean "the object is missing" use [`object_error`].
fn io_error(e: io::Error, what: &str, path: &Path) -> BackendError {
    let context = format!("{what} {}", path.display());
    match e.kind() {
        ErrorKind::Interrupted | ErrorKind::WouldBlock | ErrorKind::TimedOut => {
            BackendError::Transient { context, source: e.into() }
        }
        // Full disk or quota (StorageFull, QuotaExceeded), no permission, a read-only file
        // system, and anything unknown: retrying will not help.
        _ => BackendError::Permanent { context, source: e.into() },
    }
}

/// Like [`io_error`], but a missing file means the object `h` is missing.
fn object_error(h: &Handle, e: io::Error, what: &str, path: &Path) -> BackendError {
    if e.kind() == ErrorKind::NotFound { BackendError::NotFound(h.clone()) } else { io_error(e, what, path) }
}

/// Makes the names in `dir` durable. Some file systems cannot fsync a directory; that is not a
/// reason to fail a put whose data is already synced.
fn sync_dir(dir: &Path) -> Result<(), BackendError> {
    match File::open(dir).and_then(|d| d.sync_all()) {
        Ok(()) => Ok(()),
        Err(e) if matches!(e.kind(), ErrorKind::InvalidInput | ErrorKind::Unsupported) => Ok(()),
        Err(e) => Err(io_error(e, "syncing directory", dir)),
    }
}

fn create_dir(dir: &Path) -> Result<(), BackendError> {
    fs::create_dir_all(dir).map_err(|e| io_error(e, "creating directory", dir))
}

fn put_blocking(root: &Path, h: &Handle, path: &Path, data: &[u8], mode: PutMode) -> Result<(), BackendError> {
    let parent = path.parent().unwrap_or(root);
    // `create` makes every folder, but a `data/xx` one may have been removed since; recreate it.
    if !parent.is_dir() {
        create_dir(parent)?;
        sync_dir(parent.parent().unwrap_or(root))?;
    }

    let mut suffix = [0u8; 16];
    rand::fill(&mut suffix);
    let tmp = root.join(TMP_DIR).join(hex::encode(suffix));

    let result = write_and_publish(h, path, &tmp, data, mode);
    // After a rename the temp name is gone already; after a link or a failure it must go.
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        // The object is stored (or the put failed for its own reason); a stray temp file is
        // only garbage, not a reason to report a different outcome.
        Err(e) => tracing::warn!(path = %tmp.display(), error = %e, "cannot remove temp file"),
    }
    result?;
    sync_dir(parent)
}

fn write_and_publish(h: &Handle, path: &Path, tmp: &Path, data: &[u8], mode: PutMode) -> Result<(), BackendError> {
    // Errors name the object being written; the temp file is an implementation detail.
    let via = |what: &str| format!("{what} (temp file {})", tmp.display());
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(tmp)
        .map_err(|e| io_error(e, &via("creating temp file for"), path))?;
    f.write_all(data).map_err(|e| io_error(e, &via("writing"), path))?;
    f.sync_all().map_err(|e| io_error(e, &via("syncing"), path))?;
    drop(f);

    match mode {
        PutMode::Overwrite => fs::rename(tmp, path).map_err(|e| io_error(e, &via("renaming onto"), path)),
        // A hard link never replaces an existing name, so it is an atomic create-only.
        PutMode::CreateOnly => match fs::hard_link(tmp, path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Err(BackendError::AlreadyExists(h.clone())),
            Err(e) => Err(io_error(e, &via("linking"), path)),
        },
    }
}

fn get_blocking(h: &Handle, path: &Path, range: Option<Range<u64>>) -> Result<Bytes, BackendError> {
    let mut f = File::open(path).map_err(|e| object_error(h, e, "opening", path))?;
    let read_err = |e| io_error(e, "reading", path);
    let Some(range) = range else {
        let mut buf = Vec::new();
        f.read_to_end(&mut buf).map_err(read_err)?;
        return Ok(buf.into());
    };
    let len = f.metadata().map_err(read_err)?.len();
    check_range(h, &range, len)?;
    let n = usize::try_from(range.end - range.start)
        .map_err(|e| BackendError::Permanent { context: format!("reading {}", path.display()), source: e.into() })?;
    let mut buf = vec![0; n];
    f.seek(SeekFrom::Start(range.start)).map_err(read_err)?;
    f.read_exact(&mut buf).map_err(read_err)?;
    Ok(buf.into())
}

/// Adds the valid objects of type `tpe` in `dir` to `out`, skipping anything else. A missing
/// `dir` holds nothing if `missing_ok` (a `data/xx` folder removed while listing).
fn list_dir(tpe: FileType, dir: &Path, missing_ok: bool, out: &mut Vec<FileInfo>) -> Result<(), BackendError> {
    let listing_err = |e| io_error(e, "listing", dir);
    // A pack's folder is named after its first two digits; one anywhere else is unreachable.
    let prefix = match tpe {
        FileType::Pack => dir.file_name().and_then(|n| n.to_str()).unwrap_or(""),
        _ => "",
    };
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if missing_ok && e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(listing_err(e)),
    };
    for entry in entries {
        let entry = entry.map_err(listing_err)?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if !valid_name(tpe, &name) || !name.starts_with(prefix) {
            continue;
        }
        let path = entry.path();
        let meta = match fs::metadata(&path) {
            Ok(m) => m,
            // Deleted while we were listing.
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => return Err(io_error(e, "reading metadata of", &path)),
        };
        if meta.is_file() {
            out.push(FileInfo { handle: Handle::new(tpe, name), size: meta.len(), modified: meta.modified().ok() });
        }
    }
    Ok(())
}

fn list_blocking(root: &Path, tpe: FileType) -> Result<Vec<FileInfo>, BackendError> {
    let mut out = Vec::new();
    match tpe {
        FileType::Config => {
            let h = Handle::config();
            let path = root.join(h.path());
            match fs::metadata(&path) {
                Ok(m) if m.is_file() => out.push(FileInfo { handle: h, size: m.len(), modified: m.modified().ok() }),
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(io_error(e, "reading metadata of", &path)),
            }
        }
        FileType::Pack => {
            let data = root.join(tpe.dirname());
            for entry in fs::read_dir(&data).map_err(|e| io_error(e, "listing", &data))? {
                let entry = entry.map_err(|e| io_error(e, "listing", &data))?;
                let is_prefix = entry
                    .file_name()
                    .to_str()
                    .is_some_and(|n| n.len() == 2 && n.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
                let dir = entry.path();
                if !is_prefix || !dir.is_dir() {
                    continue;
                }
                list_dir(tpe, &dir, true, &mut out)?;
            }
        }
        // Repositories made before plans existed have no `deletions/` yet.
        _ => list_dir(tpe, &root.join(tpe.dirname()), tpe == FileType::Deletion, &mut out)?,
    }
    Ok(out)
}

#[async_trait]
impl Backend for LocalBackend {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn connections(&self) -> usize {
        4
    }

    async fn create(&self) -> Result<(), BackendError> {
        let root = self.root.clone();
        blocking(move || {
            create_dir(&root)?;
            for tpe in FileType::ALL {
                if tpe != FileType::Config {
                    create_dir(&root.join(tpe.dirname()))?;
                }
            }
            let data = root.join(FileType::Pack.dirname());
            for i in 0..=255u8 {
                create_dir(&data.join(hex::encode([i])))?;
            }
            create_dir(&root.join(TMP_DIR))?;
            sync_dir(&data)?;
            sync_dir(&root)
        })
        .await
    }

    async fn put(&self, h: &Handle, data: Bytes, mode: PutMode) -> Result<(), BackendError> {
        check_handle(h)?;
        let (root, h, path) = (self.root.clone(), h.clone(), self.path(h));
        blocking(move || put_blocking(&root, &h, &path, &data, mode)).await
    }

    async fn get(&self, h: &Handle, range: Option<Range<u64>>) -> Result<Bytes, BackendError> {
        check_handle(h)?;
        let (h, path) = (h.clone(), self.path(h));
        blocking(move || get_blocking(&h, &path, range)).await
    }

    async fn stat(&self, h: &Handle) -> Result<FileInfo, BackendError> {
        check_handle(h)?;
        let (h, path) = (h.clone(), self.path(h));
        blocking(move || {
            let meta = fs::metadata(&path).map_err(|e| object_error(&h, e, "reading metadata of", &path))?;
            Ok(FileInfo { handle: h, size: meta.len(), modified: meta.modified().ok() })
        })
        .await
    }

    async fn list(&self, tpe: FileType) -> Result<Vec<FileInfo>, BackendError> {
        let root = self.root.clone();
        blocking(move || list_blocking(&root, tpe)).await
    }

    async fn delete(&self, h: &Handle) -> Result<(), BackendError> {
        check_handle(h)?;
        let (h, path) = (h.clone(), self.path(h));
        blocking(move || fs::remove_file(&path).map_err(|e| object_error(&h, e, "deleting", &path))).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h() -> Handle {
        Handle::new(FileType::Pack, "ab".repeat(32))
    }

    #[test]
    fn disk_full_is_permanent_and_names_the_path() {
        let e = io_error(io::Error::from(ErrorKind::StorageFull), "writing", Path::new("/repo/data/ab/abcd"));
        assert!(matches!(e, BackendError::Permanent { .. }));
        assert!(e.to_string().starts_with("writing /repo/data/ab/abcd: "), "{e}");
    }

    #[test]
    fn interrupted_and_timeouts_are_transient() {
        for kind in [ErrorKind::Interrupted, ErrorKind::WouldBlock, ErrorKind::TimedOut] {
            let e = io_error(io::Error::from(kind), "reading", Path::new("/r"));
            assert!(e.is_retryable(), "{kind:?}");
        }
        let e = io_error(io::Error::from(ErrorKind::PermissionDenied), "reading", Path::new("/r"));
        assert!(!e.is_retryable());
    }

    #[test]
    fn missing_object_is_not_found_only_where_meant() {
        let nf = || io::Error::from(ErrorKind::NotFound);
        assert!(object_error(&h(), nf(), "opening", Path::new("/r")).is_not_found());
        // A missing folder while writing is a broken repository, not a missing object.
        assert!(!io_error(nf(), "creating temp file for", Path::new("/r")).is_not_found());
    }
}
