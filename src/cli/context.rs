//! The run context: global options, the config file and active profile, and everything built
//! from them that commands share: which repository, which password, opening (or, for the
//! embedded default, creating) the repository, the cache folder and output settings. A
//! repository is opened by KMS when `--kms-key-id` is given, else by password when one is
//! configured, else by KMS when it has KMS key files, else by a password typed on a terminal.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, anyhow};
use s3bk::backend::{Backend, Handle, MemoryBackend};
use s3bk::error::Error;
use s3bk::keyfile::{KdfParams, Wrap};
use s3bk::kms::Kms;
use s3bk::repo::{InitOptions, Repository, Secret};

use super::GlobalArgs;
use super::config::{self, ActiveProfile};
use super::exit::{CodedError, NO_REPOSITORY};
use super::location::{self, DefaultRepo, Location, Origin};
use super::password::{self, Password, Sources};
use super::progress::Bar;

/// Everything a command needs besides its own arguments.
pub struct Ctx {
    /// The global options.
    pub global: GlobalArgs,
    /// The active profile, if any.
    pub profile: Option<ActiveProfile>,
}

/// An open repository and where it is.
pub struct Opened {
    /// The repository.
    pub repo: Repository,
    /// Its location.
    pub location: Location,
}

impl Ctx {
    /// Reads the config file and picks the profile.
    pub fn new(global: GlobalArgs) -> anyhow::Result<Self> {
        let config = config::load()?;
        let profile = config::select(config.as_ref(), global.profile.as_deref())?;
        Ok(Self { global, profile })
    }

    /// Whether to print human-oriented messages on stderr.
    pub fn chatty(&self) -> bool {
        !self.global.quiet && !self.global.json
    }

    /// Prints a message on stderr unless `--quiet` or `--json`.
    pub fn note(&self, msg: impl std::fmt::Display) {
        if self.chatty() {
            eprintln!("{msg}");
        }
    }

    /// A progress bar (hidden unless stderr is a terminal and output is for humans).
    pub fn progress(&self) -> Arc<Bar> {
        Arc::new(Bar::new(self.chatty() && std::io::stderr().is_terminal()))
    }

    /// Like [`Self::progress`], counting `unit` instead of files.
    pub fn progress_of(&self, unit: &'static str) -> Arc<Bar> {
        Arc::new(Bar::with_unit(self.chatty() && std::io::stderr().is_terminal(), unit))
    }

    /// The index cache folder, or `None` for `--no-cache`.
    pub fn cache_dir(&self) -> Option<PathBuf> {
        if self.global.no_cache {
            return None;
        }
        self.global.cache_dir.clone().or_else(Repository::default_cache_dir)
    }

    /// The configured repository location, if any: `--repo`/`S3BK_REPOSITORY`, then the profile.
    pub fn configured_location(&self) -> anyhow::Result<Option<Location>> {
        if let Some(spec) = &self.global.repo {
            return Ok(Some(Location { target: location::parse(spec, None)?, origin: Origin::Flag }));
        }
        if let Some(p) = &self.profile
            && let Some(spec) = &p.profile.repo
        {
            let target = location::parse(spec, Some(&p.base)).with_context(|| format!("profile {:?}", p.name))?;
            return Ok(Some(Location { target, origin: Origin::Profile(p.name.clone()) }));
        }
        Ok(None)
    }

    /// The password sources: the command line's (or environment's) if any, else the profile's.
    pub fn password_sources(&self) -> Sources {
        if self.global.password_file.is_some() || self.global.password_command.is_some() {
            return Sources { file: self.global.password_file.clone(), command: self.global.password_command.clone() };
        }
        match &self.profile {
            Some(p) => Sources { file: p.profile.password_file.clone(), command: p.profile.password_command.clone() },
            None => Sources::default(),
        }
    }

    /// The password from a non-interactive source, and a description of that source.
    fn explicit_password(&self) -> anyhow::Result<Option<(Password, String)>> {
        let sources = self.password_sources();
        let origin = if password::from_env().is_some() {
            format!("from {}", password::PASSWORD_ENV)
        } else if let Some(f) = &sources.file {
            format!("from password file {}", f.display())
        } else if let Some(c) = &sources.command {
            format!("from password command `{c}`")
        } else {
            return Ok(None);
        };
        Ok(password::from_sources(&sources)?.map(|p| (p, origin)))
    }

    /// The error for "nothing configured and no default repository".
    fn no_repository(&self) -> anyhow::Error {
        let config = config::path().map_or_else(|| "the config file".to_owned(), |(p, _)| p.display().to_string());
        let default =
            DefaultRepo::new().map_or_else(|_| "$XDG_DATA_HOME/s3bk/repo".to_owned(), |d| d.repo.display().to_string());
        anyhow!(CodedError::new(
            NO_REPOSITORY,
            format!(
                "no repository configured: pass --repo PATH, set S3BK_REPOSITORY, or add a \
                 profile to {config}; or run `s3bk backup PATH...` to create the default \
                 repository at {default}"
            ),
        ))
    }

    /// A KMS client from the standard AWS configuration (region, profile, credentials,
    /// `AWS_ENDPOINT_URL_KMS`).
    pub async fn kms(&self) -> anyhow::Result<Kms> {
        Ok(Kms::from_env().await?)
    }

    /// Opens the configured repository (or the existing default one), loading its index when
    /// `load_index` is set.
    pub async fn open(&self, load_index: bool) -> anyhow::Result<Opened> {
        self.open_with(load_index, true).await
    }

    /// Like [`Self::open`], but `--kms-key-id` is not a way to open: for `key add`, where it
    /// names the key being added, which does not wrap the repository yet.
    pub async fn open_ignoring_kms_flag(&self) -> anyhow::Result<Opened> {
        self.open_with(false, false).await
    }

    /// The configured (or existing default) location, without opening it.
    pub fn location(&self) -> anyhow::Result<Location> {
        match self.configured_location()? {
            Some(loc) => Ok(loc),
            None => {
                let default = DefaultRepo::new()?;
                if !default.exists() {
                    return Err(self.no_repository());
                }
                Ok(default.location())
            }
        }
    }

    async fn open_with(&self, load_index: bool, kms_flag: bool) -> anyhow::Result<Opened> {
        let mut opened = match self.configured_location()? {
            Some(loc) => self.open_at(loc, None, kms_flag).await?,
            None => {
                let default = DefaultRepo::new()?;
                if !default.exists() {
                    return Err(self.no_repository());
                }
                self.open_at(default.location(), Some(&default), kms_flag).await?
            }
        };
        if load_index {
            self.load_index(&mut opened.repo).await?;
        } else {
            opened.repo.attach_cache(self.cache_dir().as_deref()).context("opening the local cache")?;
        }
        Ok(opened)
    }

    /// Like [`Self::open`] with the index, but creates the default repository when no location
    /// is configured and it does not exist yet (for `backup`). A dry run creates nothing: it
    /// gets a throwaway in-memory repository instead.
    pub async fn open_or_create_default(&self, dry_run: bool) -> anyhow::Result<Opened> {
        if self.configured_location()?.is_none() {
            let default = DefaultRepo::new()?;
            if !default.exists() {
                if dry_run {
                    return self.scratch(&default).await;
                }
                return self.create_default(&default).await;
            }
        }
        self.open(true).await
    }

    /// An empty in-memory repository, for a dry run before the default repository exists.
    async fn scratch(&self, default: &DefaultRepo) -> anyhow::Result<Opened> {
        self.note(format_args!(
            "dry run: the default repository {} does not exist yet and will not be created",
            default.repo.display()
        ));
        let opts = InitOptions { kdf: KdfParams { m_cost: 8 * 1024, t_cost: 1, p_cost: 1 }, ..InitOptions::default() };
        let backend = Arc::new(MemoryBackend::new());
        let secret = Secret::passphrase(location::random_passphrase().into_bytes());
        let repo =
            Repository::init(backend, &secret, &opts).await.context("creating a scratch repository for the dry run")?;
        Ok(Opened { repo, location: default.location() })
    }

    /// Brings the repository's index up to date (through the cache unless `--no-cache`).
    pub async fn load_index(&self, repo: &mut Repository) -> anyhow::Result<()> {
        repo.load_index(self.cache_dir().as_deref()).await.context("loading the index")
    }

    /// How to open the repository (see the module comment), and a description for messages.
    async fn secret(
        &self,
        backend: &dyn Backend,
        loc: &Location,
        default: Option<&DefaultRepo>,
        kms_flag: bool,
    ) -> anyhow::Result<(Secret, String)> {
        if kms_flag && let Some(id) = &self.global.kms_key_id {
            return Ok((Secret::kms(self.kms().await?, Some(id.clone())), format!("through KMS key {id}")));
        }
        if let Some((pw, origin)) = self.explicit_password()? {
            return Ok((Secret::passphrase(pw.to_vec()), format!("with the password {origin}")));
        }
        if let Some(d) = default
            && d.key.exists()
        {
            let pw = password::from_file(&d.key)?;
            return Ok((
                Secret::passphrase(pw.to_vec()),
                format!("with the password from key file {}", d.key.display()),
            ));
        }
        let keys = s3bk::repo::key_files(backend).await?;
        if keys.iter().any(|k| matches!(k.file.wrap, Wrap::Kms { .. })) {
            return Ok((Secret::kms(self.kms().await?, None), "through its KMS key files".to_owned()));
        }
        if let Some(d) = default
            && !password::can_prompt()
        {
            return Err(anyhow!(
                "the default repository at {} has no key file at {}; restore the key file from your copy, or \
                 give the password with S3BK_PASSWORD, --password-file or --password-command",
                loc.display(),
                d.key.display()
            ));
        }
        Ok((Secret::passphrase(password::prompt(&loc.display())?.to_vec()), "with the password entered".to_owned()))
    }

    async fn open_at(&self, loc: Location, default: Option<&DefaultRepo>, kms_flag: bool) -> anyhow::Result<Opened> {
        let backend = loc.backend(&self.global.s3).await?;
        // Check the repository is there before asking for a password.
        match backend.stat(&Handle::config()).await {
            Ok(_) => {}
            Err(e) if e.is_not_found() => {
                // A missing bucket also reads as a missing object: say which it is.
                if loc.is_s3() {
                    backend.create().await.map_err(Error::from)?;
                }
                return Err(Error::NoRepository(loc.display()).into());
            }
            Err(e) => return Err(Error::from(e).into()),
        }
        let (secret, origin) = self.secret(&*backend, &loc, default, kms_flag).await?;
        let repo = match Repository::open(backend, &secret).await {
            Ok(r) => r,
            Err(e @ Error::WrongKey(_)) => {
                return Err(anyhow::Error::new(e)
                    .context(format!("cannot open repository {} {origin}; check the password", loc.display())));
            }
            Err(e @ (Error::Kms(_) | Error::NoKmsKeyFile | Error::NoPassphraseKeyFile)) => {
                return Err(anyhow::Error::new(e).context(format!("cannot open repository {} {origin}", loc.display())));
            }
            Err(e) => return Err(e.into()),
        };
        tracing::info!(
            "opened repository {} ({}, location from {})",
            loc.display(),
            repo.config().id.short(),
            loc.origin
        );
        Ok(Opened { repo, location: loc })
    }

    /// Creates the embedded default repository. The password is the explicit one when given,
    /// else the key file's (created with a random key when missing).
    pub async fn create_default(&self, default: &DefaultRepo) -> anyhow::Result<Opened> {
        let loc = default.location();
        let (pw, origin) = match self.explicit_password()? {
            Some((p, origin)) => (p, Some(origin)),
            None => (ensure_key_file(&default.key)?, None),
        };
        let repo = Repository::init(
            loc.backend(&self.global.s3).await?,
            &Secret::passphrase(pw.to_vec()),
            &InitOptions::default(),
        )
        .await
        .with_context(|| format!("creating the default repository at {}", loc.display()))?;
        match origin {
            None => self.note(format_args!(
                "Created a new repository at {}.\n\
                 Its key is in {}.\n\
                 If you lose the key file, you lose your backups: copy it somewhere safe now \
                 (a password manager, a USB stick, another machine).",
                loc.display(),
                default.key.display()
            )),
            Some(origin) => self.note(format_args!(
                "Created a new repository at {}, protected by the password {origin}.\n\
                 If you lose that password, you lose your backups: keep a copy somewhere safe.",
                loc.display()
            )),
        }
        let mut opened = Opened { repo, location: loc };
        self.load_index(&mut opened.repo).await?;
        Ok(opened)
    }
}

/// The passphrase in the key file at `path`, creating the file with a random one if missing.
fn ensure_key_file(path: &std::path::Path) -> anyhow::Result<Password> {
    if !path.exists() {
        let key = zeroize::Zeroizing::new(format!("{}\n", location::random_passphrase()));
        match location::write_secret_file(path, key.as_bytes()) {
            Ok(()) => {}
            // Another s3bk created it first: use theirs.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(e).with_context(|| format!("writing the key file {}", path.display()));
            }
        }
    }
    password::from_file(path)
}
