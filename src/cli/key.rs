//! `s3bk key`: the repository's key files. `list` shows them, `add` wraps the master key once
//! more (by a KMS key given with `--kms-key-id`, else by a new password), `remove` deletes a wrap
//! (never the last), `rewrap` moves KMS wraps to another KMS key inside KMS, and `rotate` starts a
//! new data-key epoch. See docs/format.md §3–4.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, bail};
use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{ContentArrangement, Table};
use s3bk::backend::Handle;
use s3bk::error::Error;
use s3bk::keyfile::{KdfParams, Wrap};
use s3bk::repo::{StoredKey, key_files, rewrap_kms};
use serde_json::{Value, json};
use zeroize::Zeroizing;

use super::context::Ctx;
use super::exit;
use super::format::print_json;
use super::password::{self, Password};

/// Environment variable holding the new password for `key add`.
pub const NEW_PASSWORD_ENV: &str = "S3BK_NEW_PASSWORD";

/// Arguments of `key`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// What to do
    #[command(subcommand)]
    pub command: KeyCommand,
}

/// The `key` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum KeyCommand {
    /// List the key files: master-key wraps (password, KMS) and key epochs
    List,
    /// Wrap the master key once more: by the KMS key of --kms-key-id, else by a new password
    /// (S3BK_NEW_PASSWORD, --new-password-file, or asked twice)
    Add(AddArgs),
    /// Remove a master-key wrap (never the last one)
    Remove(RemoveArgs),
    /// Re-wrap the KMS key files (or the one given) under the KMS key of --kms-key-id, inside
    /// KMS; afterwards the old KMS key is no longer needed
    Rewrap(RewrapArgs),
    /// Start a new key epoch: new data is encrypted under a new random key, old data stays
    /// readable and is not re-encrypted
    Rotate,
}

/// Arguments of `key add`.
#[derive(Debug, clap::Args)]
pub struct AddArgs {
    /// Read the new password from this file
    #[arg(long, value_name = "FILE")]
    pub new_password_file: Option<PathBuf>,
}

/// Arguments of `key remove`.
#[derive(Debug, clap::Args)]
pub struct RemoveArgs {
    /// The key file (its id or a unique prefix, as `key list` shows it)
    pub id: String,
}

/// Arguments of `key rewrap`.
#[derive(Debug, clap::Args)]
pub struct RewrapArgs {
    /// Only this KMS key file (id or unique prefix); default: all of them
    pub id: Option<String>,
}

/// Runs `key`.
pub async fn run(ctx: &Ctx, args: &Args) -> anyhow::Result<u8> {
    match &args.command {
        KeyCommand::List => list(ctx).await,
        KeyCommand::Add(a) => add(ctx, a).await,
        KeyCommand::Remove(a) => remove(ctx, a).await,
        KeyCommand::Rewrap(a) => rewrap(ctx, a).await,
        KeyCommand::Rotate => rotate(ctx).await,
    }
}

/// The key files at the configured location (the repository must exist; no key is needed).
async fn stored(ctx: &Ctx) -> anyhow::Result<Vec<StoredKey>> {
    let loc = ctx.location()?;
    let backend = loc.backend(&ctx.global.s3).await?;
    match backend.stat(&Handle::config()).await {
        Ok(_) => {}
        Err(e) if e.is_not_found() => return Err(Error::NoRepository(loc.display()).into()),
        Err(e) => return Err(Error::from(e).into()),
    }
    Ok(key_files(&*backend).await?)
}

/// The one key file whose name starts with `prefix`.
fn resolve<'a>(files: &'a [StoredKey], prefix: &str) -> anyhow::Result<&'a StoredKey> {
    let prefix = prefix.to_ascii_lowercase();
    let found: Vec<&StoredKey> = files.iter().filter(|k| k.name.starts_with(&prefix)).collect();
    match found.as_slice() {
        [one] => Ok(one),
        [] => bail!("no key file starts with {prefix:?} (see `s3bk key list`)"),
        _ => bail!("{prefix:?} matches {} key files; give more digits", found.len()),
    }
}

/// What a key file is wrapped by, for the table.
fn describe(w: &Wrap) -> String {
    match w {
        Wrap::Passphrase { .. } => "passphrase".to_owned(),
        Wrap::Kms { key_id, .. } => key_id.clone(),
        Wrap::Epoch { epoch, .. } => format!("epoch {epoch}"),
    }
}

fn to_json(k: &StoredKey) -> Value {
    let f = &k.file;
    let mut v = json!({
        "id": k.name,
        "short_id": &k.name[..8.min(k.name.len())],
        "kind": f.wrap.kind(),
        "created": f.created,
        "hostname": f.hostname,
        "username": f.username,
    });
    match &f.wrap {
        Wrap::Kms { key_id, context, .. } => {
            v["kms_key_id"] = json!(key_id);
            v["context"] = json!(context);
        }
        Wrap::Epoch { epoch, .. } => v["epoch"] = json!(epoch),
        Wrap::Passphrase { .. } => {}
    }
    v
}

async fn list(ctx: &Ctx) -> anyhow::Result<u8> {
    let files = stored(ctx).await?;
    if ctx.global.json {
        print_json(&files.iter().map(to_json).collect::<Vec<_>>())?;
        return Ok(exit::OK);
    }
    let mut table = Table::new();
    table
        .load_style(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(["ID", "Kind", "Key", "Created", "Host", "User"]);
    for k in &files {
        let f = &k.file;
        table.add_row([
            k.name[..8.min(k.name.len())].to_owned(),
            f.wrap.kind().to_owned(),
            describe(&f.wrap),
            f.created.clone(),
            f.hostname.clone(),
            f.username.clone(),
        ]);
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "{table}")?;
    Ok(exit::OK)
}

/// The new password for `key add`: S3BK_NEW_PASSWORD, then --new-password-file, then asked twice.
fn new_password(args: &AddArgs, repo: &str) -> anyhow::Result<Password> {
    if let Some(p) = std::env::var_os(NEW_PASSWORD_ENV).filter(|v| !v.is_empty()) {
        use std::os::unix::ffi::OsStringExt;
        return Ok(Zeroizing::new(p.into_vec()));
    }
    if let Some(f) = &args.new_password_file {
        return password::from_file(f);
    }
    if !password::can_prompt() {
        bail!(
            "no new password: set {NEW_PASSWORD_ENV} or pass --new-password-file FILE (or run in a terminal), or \
             add a KMS key with --kms-key-id KEY"
        );
    }
    password::prompt_new(repo)
}

async fn add(ctx: &Ctx, args: &AddArgs) -> anyhow::Result<u8> {
    // Opened by password or by the KMS key files it has: --kms-key-id names the key to add.
    let opened = ctx.open_ignoring_kms_flag().await?;
    let (name, what) = match &ctx.global.kms_key_id {
        Some(key_id) => {
            if args.new_password_file.is_some() {
                bail!("give either --kms-key-id (add a KMS key) or --new-password-file (add a password), not both");
            }
            let kms = ctx.kms().await?;
            let name = opened.repo.add_kms(&kms, key_id).await.context("adding the KMS key")?;
            (name, format!("KMS key {key_id}"))
        }
        None => {
            let pw = new_password(args, &opened.location.display())?;
            let name = opened.repo.add_passphrase(&pw, KdfParams::default()).await.context("adding the password")?;
            (name, "password".to_owned())
        }
    };
    if ctx.global.json {
        print_json(&json!({ "id": name, "added": what }))?;
    } else if !ctx.global.quiet {
        println!("added key {} ({what})", &name[..8]);
    }
    Ok(exit::OK)
}

async fn remove(ctx: &Ctx, args: &RemoveArgs) -> anyhow::Result<u8> {
    // Opening proves the caller holds a key; removing then never locks the repository.
    let opened = ctx.open(false).await?;
    let files = key_files(&**opened.repo.backend()).await?;
    let target = resolve(&files, &args.id)?;
    opened.repo.remove_key(&target.name).await.with_context(|| format!("removing key {}", &target.name[..8]))?;
    if ctx.global.json {
        print_json(&json!({ "removed": target.name }))?;
    } else if !ctx.global.quiet {
        println!("removed key {} ({})", &target.name[..8], describe(&target.file.wrap));
    }
    Ok(exit::OK)
}

async fn rewrap(ctx: &Ctx, args: &RewrapArgs) -> anyhow::Result<u8> {
    let Some(new_key) = &ctx.global.kms_key_id else {
        bail!("`key rewrap` needs the destination KMS key: --kms-key-id KEY (or S3BK_KMS_KEY_ID)");
    };
    let files = stored(ctx).await?;
    let only = match &args.id {
        Some(p) => Some(resolve(&files, p)?.name.clone()),
        None => None,
    };
    let loc = ctx.location()?;
    let kms = ctx.kms().await?;
    let backend = loc.backend(&ctx.global.s3).await?;
    let done = rewrap_kms(&*backend, &kms, new_key, only.as_deref())
        .await
        .with_context(|| format!("re-wrapping under KMS key {new_key}"))?;
    if ctx.global.json {
        let pairs: Vec<Value> = done.iter().map(|(old, new)| json!({ "old": old, "new": new })).collect();
        print_json(&json!({ "kms_key_id": new_key, "rewrapped": pairs }))?;
    } else if !ctx.global.quiet {
        for (old, new) in &done {
            println!("re-wrapped key {} as {} under {new_key}", &old[..8], &new[..8]);
        }
    }
    Ok(exit::OK)
}

async fn rotate(ctx: &Ctx) -> anyhow::Result<u8> {
    let mut opened = ctx.open(false).await?;
    let epoch = opened.repo.rotate().await.context("rotating the data key")?;
    if ctx.global.json {
        print_json(&json!({ "epoch": epoch }))?;
    } else if !ctx.global.quiet {
        println!("new data is now encrypted under key epoch {epoch}; earlier epochs stay readable");
    }
    Ok(exit::OK)
}
