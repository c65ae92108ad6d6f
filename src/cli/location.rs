//! Repository locations: parsing a `--repo` string into a backend, and the embedded default
//! repository (`$XDG_DATA_HOME/s3bk/repo`, key in `$XDG_CONFIG_HOME/s3bk/key`) with the
//! creation of its key file. Only local directories are supported by this build.

use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use s3bk::backend::{Backend, LocalBackend};

use super::config::resolve_path;

/// Where a repository location came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// `--repo` or `S3BK_REPOSITORY`.
    Flag,
    /// A profile of the config file.
    Profile(String),
    /// The embedded default.
    Default,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Flag => f.write_str("--repo/S3BK_REPOSITORY"),
            Origin::Profile(name) => write!(f, "profile {name:?}"),
            Origin::Default => f.write_str("the default location"),
        }
    }
}

/// A resolved repository location.
#[derive(Clone, Debug)]
pub struct Location {
    /// The repository folder.
    pub path: PathBuf,
    /// Where it was configured.
    pub origin: Origin,
}

impl Location {
    /// A backend for it.
    pub fn backend(&self) -> Arc<dyn Backend> {
        Arc::new(LocalBackend::new(&self.path))
    }

    /// The location as shown to users.
    pub fn display(&self) -> String {
        self.path.display().to_string()
    }
}

/// Turns a repository string into a local folder. `base` is the folder relative paths are
/// relative to (the config file's for a profile, the working directory otherwise).
pub fn parse(spec: &str, base: Option<&Path>) -> anyhow::Result<PathBuf> {
    let spec = spec.trim();
    if spec.is_empty() {
        bail!("the repository location is empty");
    }
    let lower = spec.to_ascii_lowercase();
    if lower.starts_with("s3:") {
        bail!("S3 repositories are not supported by this build yet ({spec}); use a local directory");
    }
    if let Some((scheme, _)) = spec.split_once("://")
        && !scheme.is_empty()
        && scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
    {
        bail!("unsupported repository location {spec}: this build only supports local directories");
    }
    let spec = spec.strip_prefix("local:").unwrap_or(spec);
    let path = match base {
        Some(base) => resolve_path(base, Path::new(spec)),
        None => resolve_path(Path::new(""), Path::new(spec)),
    };
    std::path::absolute(&path).with_context(|| format!("resolving repository path {}", path.display()))
}

/// The embedded default repository and its key file.
#[derive(Clone, Debug)]
pub struct DefaultRepo {
    /// `$XDG_DATA_HOME/s3bk/repo`.
    pub repo: PathBuf,
    /// `$XDG_CONFIG_HOME/s3bk/key`.
    pub key: PathBuf,
}

impl DefaultRepo {
    /// The default paths for this user.
    pub fn new() -> anyhow::Result<Self> {
        let dirs = directories::BaseDirs::new()
            .context("cannot find the home folder (is HOME set?) to place the default repository")?;
        Ok(Self { repo: dirs.data_dir().join("s3bk").join("repo"), key: dirs.config_dir().join("s3bk").join("key") })
    }

    /// Whether a repository exists there.
    pub fn exists(&self) -> bool {
        self.repo.join("config").exists()
    }

    /// The location.
    pub fn location(&self) -> Location {
        Location { path: self.repo.clone(), origin: Origin::Default }
    }
}

/// A fresh random passphrase: 32 random bytes, hex-encoded.
pub fn random_passphrase() -> String {
    let mut b = [0u8; 32];
    rand::fill(&mut b);
    hex::encode(b)
}

/// Writes `contents` to a new file at `path`, mode 0600, atomically (temp file, then an
/// atomic no-clobber link or rename). Never replaces an existing file: returns an
/// `AlreadyExists` error instead.
pub fn write_secret_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    if fs::symlink_metadata(path).is_ok() {
        return Err(ErrorKind::AlreadyExists.into());
    }
    let mut suffix = [0u8; 8];
    rand::fill(&mut suffix);
    let tmp = dir.join(format!(".key.{}.tmp", hex::encode(suffix)));
    let result = (|| {
        let mut f = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
        drop(f);
        // A hard link publishes atomically and fails if the name is taken; fall back to a
        // rename on filesystems without links.
        match fs::hard_link(&tmp, path) {
            Ok(()) => fs::remove_file(&tmp),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Err(e),
            Err(_) if fs::symlink_metadata(path).is_ok() => Err(ErrorKind::AlreadyExists.into()),
            Err(_) => fs::rename(&tmp, path),
        }
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn parses_locations() {
        let e = parse("s3://bucket/x", None).unwrap_err().to_string();
        assert!(e.contains("S3 repositories are not supported by this build yet"), "{e}");
        assert!(parse("sftp://host/x", None).is_err());
        assert!(parse("  ", None).is_err());
        assert_eq!(parse("/a/b", None).unwrap(), Path::new("/a/b"));
        assert_eq!(parse("rel", Some(Path::new("/etc/s3bk"))).unwrap(), Path::new("/etc/s3bk/rel"));
        assert!(parse("rel", None).unwrap().is_absolute());
    }

    #[test]
    fn secret_file_is_private_and_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a/b/key");
        write_secret_file(&p, b"one\n").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"one\n");
        assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        let e = write_secret_file(&p, b"two\n").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::AlreadyExists);
        assert_eq!(fs::read(&p).unwrap(), b"one\n");
        assert_eq!(fs::read_dir(p.parent().unwrap()).unwrap().count(), 1);
        assert_eq!(random_passphrase().len(), 64);
    }
}
