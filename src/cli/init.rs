//! `s3bk init`: creates a repository at the configured location, with a password from the
//! usual sources or asked twice on the terminal. With nothing configured it creates the
//! embedded default repository and its key file, as `backup` would on first use. With
//! `--kms-key-id`, the master key is a data key of that AWS KMS key instead, and no password is
//! involved.

use anyhow::{Context, bail};
use s3bk::backend::Handle;
use s3bk::error::Error;
use s3bk::repo::{InitOptions, Repository, Secret};
use serde_json::json;

use super::context::Ctx;
use super::exit;
use super::format::print_json;
use super::location::DefaultRepo;
use super::password;

/// Arguments of `init`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `init`.
pub async fn run(ctx: &Ctx, _args: &Args) -> anyhow::Result<u8> {
    let Some(loc) = ctx.configured_location()? else {
        if ctx.global.kms_key_id.is_some() {
            bail!("--kms-key-id needs a repository location: pass --repo PATH (or set S3BK_REPOSITORY)");
        }
        let default = DefaultRepo::new()?;
        if default.exists() {
            bail!(
                "the default repository at {} already exists; use it as it is, or pass --repo \
                 PATH to create another one",
                default.repo.display()
            );
        }
        let opened = ctx.create_default(&default).await?;
        if ctx.global.json {
            print_json(&json!({
                "repository": opened.location.display(),
                "id": opened.repo.config().id.to_hex(),
                "key_file": default.key.display().to_string(),
            }))?;
        }
        return Ok(exit::OK);
    };
    let backend = loc.backend(&ctx.global.s3).await?;
    match backend.stat(&Handle::config()).await {
        Ok(_) => return Err(Error::AlreadyInitialized(loc.display()).into()),
        Err(e) if e.is_not_found() => {}
        Err(e) => return Err(Error::from(e).into()),
    }
    let secret = match &ctx.global.kms_key_id {
        Some(id) => Secret::kms(ctx.kms().await?, Some(id.clone())),
        None => Secret::passphrase(
            match password::from_sources(&ctx.password_sources())? {
                Some(p) => p,
                None => password::prompt_new(&loc.display())?,
            }
            .to_vec(),
        ),
    };
    let repo = Repository::init(backend, &secret, &InitOptions::default())
        .await
        .with_context(|| format!("creating a repository at {}", loc.display()))?;
    let id = repo.config().id;
    if ctx.global.json {
        print_json(&json!({ "repository": loc.display(), "id": id.to_hex(), "kms_key_id": ctx.global.kms_key_id }))?;
    } else if !ctx.global.quiet {
        println!("created repository {} at {}", id.short(), loc.display());
        match &ctx.global.kms_key_id {
            Some(k) => eprintln!(
                "The master key is wrapped by KMS key {k}: whoever may call kms:Decrypt on it can read these \
                 backups. If the key is deleted, they are lost; consider `s3bk key add` for a second key."
            ),
            None => eprintln!("Keep the password safe: without it the backups in this repository cannot be read."),
        }
    }
    Ok(exit::OK)
}
