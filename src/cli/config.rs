//! The config file: `$XDG_CONFIG_HOME/s3bk/config.toml` (or `S3BK_CONFIG`), holding named
//! profiles and the default profile. This module owns its format, where it is found, and the
//! choice of the active profile; relative paths in a profile are relative to the file's folder.
//!
//! ```toml
//! default_profile = "home"
//!
//! [profiles.home]
//! repo = "/mnt/backup/s3bk"
//! password_file = "~/.config/s3bk/home.pass"
//! excludes = ["*.tmp", "**/node_modules"]
//! exclude_if_present = [".nobackup"]
//! tags = ["home"]
//! retention = { keep_within = "60d", keep_daily = 7, keep_weekly = 4 }
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use jiff::Span;
use s3bk::forget::{self, KeepPolicy};
use serde::Deserialize;

/// Environment variable naming the config file, instead of the default path.
pub const CONFIG_ENV: &str = "S3BK_CONFIG";

/// The parsed config file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// The profile used when none is named with `--profile`.
    pub default_profile: Option<String>,
    /// Named profiles.
    #[serde(default)]
    pub profiles: BTreeMap<String, Profile>,
}

/// One named profile.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Repository location.
    pub repo: Option<String>,
    /// File holding the password.
    pub password_file: Option<PathBuf>,
    /// Shell command printing the password.
    pub password_command: Option<String>,
    /// Exclude patterns added to every backup.
    #[serde(default)]
    pub excludes: Vec<String>,
    /// Marker file names added to every backup's `--exclude-if-present`.
    #[serde(default)]
    pub exclude_if_present: Vec<String>,
    /// Tags added to every backup.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Which snapshots `forget` keeps when no `--keep-*` option is given.
    pub retention: Option<Retention>,
}

/// A retention policy, as in `forget --keep-*`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    /// Keep every snapshot younger than this, measured from the group's newest snapshot (e.g.
    /// `60d`, `2weeks`, `6mo`).
    pub keep_within: Option<String>,
    /// Keep the newest snapshot of each hour within this span.
    pub keep_within_hourly: Option<String>,
    /// ... of each day.
    pub keep_within_daily: Option<String>,
    /// ... of each week.
    pub keep_within_weekly: Option<String>,
    /// ... of each month.
    pub keep_within_monthly: Option<String>,
    /// ... of each year.
    pub keep_within_yearly: Option<String>,
    /// Keep the newest N snapshots.
    pub keep_last: Option<u32>,
    /// Keep the newest snapshot of each of the last N hours that have one.
    pub keep_hourly: Option<u32>,
    /// ... days.
    pub keep_daily: Option<u32>,
    /// ... weeks.
    pub keep_weekly: Option<u32>,
    /// ... months.
    pub keep_monthly: Option<u32>,
    /// ... years.
    pub keep_yearly: Option<u32>,
    /// Keep every snapshot with one of these tags.
    #[serde(default)]
    pub keep_tags: Vec<String>,
}

impl Retention {
    /// The policy, with every span parsed (the error names the field).
    pub fn policy(&self) -> anyhow::Result<KeepPolicy> {
        let span = |field: &str, v: &Option<String>| -> anyhow::Result<Option<Span>> {
            v.as_deref().map(|s| forget::parse_span(s).with_context(|| format!("retention.{field}"))).transpose()
        };
        Ok(KeepPolicy {
            last: self.keep_last,
            hourly: self.keep_hourly,
            daily: self.keep_daily,
            weekly: self.keep_weekly,
            monthly: self.keep_monthly,
            yearly: self.keep_yearly,
            within: span("keep_within", &self.keep_within)?,
            within_hourly: span("keep_within_hourly", &self.keep_within_hourly)?,
            within_daily: span("keep_within_daily", &self.keep_within_daily)?,
            within_weekly: span("keep_within_weekly", &self.keep_within_weekly)?,
            within_monthly: span("keep_within_monthly", &self.keep_within_monthly)?,
            within_yearly: span("keep_within_yearly", &self.keep_within_yearly)?,
            tags: self.keep_tags.clone(),
        })
    }
}

/// A config file that was found and read.
#[derive(Clone, Debug)]
pub struct Loaded {
    /// Where it was read from.
    pub path: PathBuf,
    /// Its content.
    pub file: ConfigFile,
}

/// A profile chosen for this run, its paths made absolute.
#[derive(Clone, Debug)]
pub struct ActiveProfile {
    /// Its name.
    pub name: String,
    /// Its settings.
    pub profile: Profile,
    /// The folder relative paths in it are relative to.
    pub base: PathBuf,
}

/// Where the config file is looked for: `S3BK_CONFIG`, else `$XDG_CONFIG_HOME/s3bk/config.toml`.
/// The flag says whether it was named explicitly (then it must exist).
pub fn path() -> Option<(PathBuf, bool)> {
    match std::env::var_os(CONFIG_ENV) {
        Some(p) if !p.is_empty() => Some((PathBuf::from(p), true)),
        _ => directories::BaseDirs::new().map(|d| (d.config_dir().join("s3bk").join("config.toml"), false)),
    }
}

/// Reads the config file, if there is one.
pub fn load() -> anyhow::Result<Option<Loaded>> {
    let Some((path, explicit)) = path() else {
        return Ok(None);
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => return Ok(None),
        Err(e) => {
            return Err(e).with_context(|| format!("reading config file {} (named by {CONFIG_ENV})", path.display()));
        }
    };
    let file = parse(&text).with_context(|| format!("config file {}", path.display()))?;
    Ok(Some(Loaded { path, file }))
}

/// Parses and checks a config file's text.
pub fn parse(text: &str) -> anyhow::Result<ConfigFile> {
    let file: ConfigFile = toml::from_str(text)?;
    for (name, p) in &file.profiles {
        if let Some(r) = &p.retention {
            r.policy().with_context(|| format!("profile {name:?}"))?;
        }
    }
    if let Some(d) = &file.default_profile
        && !file.profiles.contains_key(d)
    {
        bail!("default_profile = {d:?}, but there is no [profiles.{d}] section");
    }
    Ok(file)
}

/// The profile to use: `name` (from `--profile`/`S3BK_PROFILE`), else the file's
/// `default_profile`, else none.
pub fn select(loaded: Option<&Loaded>, name: Option<&str>) -> anyhow::Result<Option<ActiveProfile>> {
    let Some(loaded) = loaded else {
        if let Some(name) = name {
            let where_ = path().map_or_else(|| "config.toml".to_owned(), |(p, _)| p.display().to_string());
            bail!(
                "profile {name:?} was asked for, but there is no config file at {where_}; create it with a [profiles.{name}] section"
            );
        }
        return Ok(None);
    };
    let Some(name) = name.or(loaded.file.default_profile.as_deref()) else {
        return Ok(None);
    };
    let Some(profile) = loaded.file.profiles.get(name) else {
        let known: Vec<&str> = loaded.file.profiles.keys().map(String::as_str).collect();
        bail!(
            "no profile {name:?} in {} (profiles there: {})",
            loaded.path.display(),
            if known.is_empty() { "none".to_owned() } else { known.join(", ") }
        );
    };
    let base = loaded.path.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut profile = profile.clone();
    profile.password_file = profile.password_file.map(|p| resolve_path(&base, &p));
    Ok(Some(ActiveProfile { name: name.to_owned(), profile, base }))
}

/// Expands a leading `~/` to the home folder and makes a relative path relative to `base`.
pub fn resolve_path(base: &Path, p: &Path) -> PathBuf {
    if let Ok(rest) = p.strip_prefix("~")
        && let Some(dirs) = directories::BaseDirs::new()
    {
        return dirs.home_dir().join(rest);
    }
    if p.is_absolute() { p.to_path_buf() } else { base.join(p) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_profiles() {
        let c = parse(
            r#"
            default_profile = "a"
            [profiles.a]
            repo = "/r"
            tags = ["x"]
            retention = { keep_within = "60d", keep_daily = 7 }
            [profiles.b]
            repo = "rel"
            "#,
        )
        .unwrap();
        assert_eq!(c.profiles["a"].repo.as_deref(), Some("/r"));
        let policy = c.profiles["a"].retention.as_ref().unwrap().policy().unwrap();
        assert_eq!(policy.daily, Some(7));
        assert_eq!(policy.within.map(forget::show_span).as_deref(), Some("60d"));
        let loaded = Loaded { path: "/etc/s3bk/config.toml".into(), file: c };
        let p = select(Some(&loaded), None).unwrap().unwrap();
        assert_eq!(p.name, "a");
        assert_eq!(select(Some(&loaded), Some("b")).unwrap().unwrap().base, Path::new("/etc/s3bk"));
        assert!(select(Some(&loaded), Some("c")).unwrap_err().to_string().contains("profiles there: a, b"));
    }

    #[test]
    fn rejects_mistakes() {
        assert!(parse("[profiles.a]\nrepoo = \"x\"").is_err());
        assert!(parse("[profiles.a]\nretention = { keep_within = \"soon\" }").is_err());
        // `m` is minutes in the span syntax, so it is refused rather than read as months.
        let e = parse("[profiles.a]\nretention = { keep_within_daily = \"6m\" }").unwrap_err();
        assert!(format!("{e:#}").contains("retention.keep_within_daily"), "{e:#}");
        assert!(parse("default_profile = \"z\"").is_err());
    }
}
