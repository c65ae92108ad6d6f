//! Repository locations: parsing a `--repo` string (a local directory or `s3://bucket[/prefix]`)
//! into a backend with the global S3 options, and the embedded default repository
//! (`$XDG_DATA_HOME/s3bk/repo`, key in `$XDG_CONFIG_HOME/s3bk/key`) with the creation of its key
//! file.

use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use s3bk::backend::{Backend, LocalBackend, S3Backend};

use super::S3Args;
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

/// Where a repository's objects live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A local (or mounted) folder.
    Local(PathBuf),
    /// A prefix of an S3 bucket (`prefix` is empty or has no leading/trailing `/`).
    S3 {
        /// The bucket.
        bucket: String,
        /// The key prefix.
        prefix: String,
    },
}

/// A resolved repository location.
#[derive(Clone, Debug)]
pub struct Location {
    /// Where the objects are.
    pub target: Target,
    /// Where it was configured.
    pub origin: Origin,
}

impl Location {
    /// A backend for it; S3 ones are configured from `s3` and the AWS configuration chain.
    pub async fn backend(&self, s3: &S3Args) -> anyhow::Result<Arc<dyn Backend>> {
        match &self.target {
            Target::Local(path) => Ok(Arc::new(LocalBackend::new(path))),
            Target::S3 { bucket, prefix } => {
                let (opts, warning) = s3.options()?;
                if let Some(w) = warning {
                    eprintln!("warning: {w}");
                }
                let sdk = s3bk::aws::load(&s3.aws_options()).await?;
                Ok(Arc::new(S3Backend::new(&sdk, bucket, prefix, opts)))
            }
        }
    }

    /// Whether the repository is in S3.
    pub fn is_s3(&self) -> bool {
        matches!(self.target, Target::S3 { .. })
    }

    /// The location as shown to users.
    pub fn display(&self) -> String {
        match &self.target {
            Target::Local(path) => path.display().to_string(),
            Target::S3 { bucket, prefix } if prefix.is_empty() => format!("s3://{bucket}"),
            Target::S3 { bucket, prefix } => format!("s3://{bucket}/{prefix}"),
        }
    }
}

/// Whether `b` is a valid S3 bucket name (3-63 of a-z 0-9 . -, starting and ending alphanumeric).
fn valid_bucket(b: &str) -> bool {
    (3..=63).contains(&b.len())
        && b.bytes().all(|c| matches!(c, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-'))
        && b.starts_with(|c: char| c.is_ascii_alphanumeric())
        && b.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// Parses `s3://bucket[/prefix]`.
fn parse_s3(spec: &str, rest: &str) -> anyhow::Result<Target> {
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if !valid_bucket(bucket) {
        bail!(
            "invalid S3 location {spec}: {bucket:?} is not a bucket name (3-63 lowercase letters, digits, dots              and hyphens); write s3://BUCKET[/PREFIX]"
        );
    }
    let prefix = prefix.trim_end_matches('/');
    if prefix.split('/').any(|seg| seg.is_empty() || seg == "." || seg == "..") && !prefix.is_empty() {
        bail!("invalid S3 location {spec}: the prefix must not contain empty, `.` or `..` segments");
    }
    Ok(Target::S3 { bucket: bucket.to_owned(), prefix: prefix.to_owned() })
}

/// Turns a repository string into a target. `base` is the folder relative paths are relative to
/// (the config file's for a profile, the working directory otherwise).
pub fn parse(spec: &str, base: Option<&Path>) -> anyhow::Result<Target> {
    let spec = spec.trim();
    if spec.is_empty() {
        bail!("the repository location is empty");
    }
    if let Some((scheme, rest)) = spec.split_once("://")
        && !scheme.is_empty()
        && scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
    {
        if scheme.eq_ignore_ascii_case("s3") {
            return parse_s3(spec, rest);
        }
        bail!("unsupported repository location {spec}: use a local directory or s3://BUCKET[/PREFIX]");
    }
    if spec.to_ascii_lowercase().starts_with("s3:") {
        bail!("invalid S3 location {spec}: write s3://BUCKET[/PREFIX]");
    }
    let spec = spec.strip_prefix("local:").unwrap_or(spec);
    let path = match base {
        Some(base) => resolve_path(base, Path::new(spec)),
        None => resolve_path(Path::new(""), Path::new(spec)),
    };
    let path = std::path::absolute(&path).with_context(|| format!("resolving repository path {}", path.display()))?;
    Ok(Target::Local(path))
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
        Location { target: Target::Local(self.repo.clone()), origin: Origin::Default }
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
        let s3 = |b: &str, p: &str| Target::S3 { bucket: b.to_owned(), prefix: p.to_owned() };
        assert_eq!(parse("s3://bucket/x", None).unwrap(), s3("bucket", "x"));
        assert_eq!(parse("S3://my.bucket-1/a/b/", None).unwrap(), s3("my.bucket-1", "a/b"));
        assert_eq!(parse("s3://bucket", None).unwrap(), s3("bucket", ""));
        assert_eq!(parse("s3://bucket/", None).unwrap(), s3("bucket", ""));
        for bad in ["s3://", "s3://B", "s3://ab", "s3://bucket//x", "s3://bucket/a/../b", "s3:bucket"] {
            let e = parse(bad, None).unwrap_err().to_string();
            assert!(e.contains("s3://") || e.contains("bucket"), "{bad}: {e}");
        }
        assert!(parse("sftp://host/x", None).is_err());
        assert!(parse("  ", None).is_err());
        assert_eq!(parse("/a/b", None).unwrap(), Target::Local("/a/b".into()));
        assert_eq!(parse("rel", Some(Path::new("/etc/s3bk"))).unwrap(), Target::Local("/etc/s3bk/rel".into()));
        assert!(matches!(parse("rel", None).unwrap(), Target::Local(p) if p.is_absolute()));
        let loc = Location { target: s3("b", "p/q"), origin: Origin::Flag };
        assert_eq!(loc.display(), "s3://b/p/q");
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
