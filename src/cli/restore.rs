//! `s3bk restore`: picks a snapshot (`latest` by default, narrowed by host/path/tag), restores
//! it into a target folder with the restorer, and reports what was written.

use std::path::PathBuf;

use anyhow::Context;
use s3bk::restorer::{self, Overwrite, RestoreOptions, RestoreSummary};
use serde::Serialize;

use super::context::Ctx;
use super::exit;
use super::filter::{FilterArgs, select};
use super::format::{bytes, print_json};

/// `--overwrite` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OverwriteArg {
    /// Always replace existing files
    Always,
    /// Replace existing files unless size and modification time match
    IfChanged,
    /// Keep existing files
    Never,
}

impl From<OverwriteArg> for Overwrite {
    fn from(v: OverwriteArg) -> Self {
        match v {
            OverwriteArg::Always => Overwrite::Always,
            OverwriteArg::IfChanged => Overwrite::IfChanged,
            OverwriteArg::Never => Overwrite::Never,
        }
    }
}

/// Arguments of `restore`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The snapshot: an id (prefix) or `latest`
    #[arg(long, short = 's', default_value = "latest", value_name = "ID")]
    pub snapshot: String,

    /// Which snapshots `latest` chooses from
    #[command(flatten)]
    pub filter: FilterArgs,

    /// Folder to restore into [default: ./s3bk-restore-<short id>]
    #[arg(long, short = 't', value_name = "DIR")]
    pub target: Option<PathBuf>,

    /// Restore only paths matching this glob (repeatable; relative to the snapshot root)
    #[arg(long = "include", short = 'i', value_name = "GLOB")]
    pub includes: Vec<String>,

    /// Leave out paths matching this glob (repeatable)
    #[arg(long = "exclude", short = 'e', value_name = "GLOB")]
    pub excludes: Vec<String>,

    /// What to do with files that already exist in the target
    #[arg(long, value_enum, default_value_t = OverwriteArg::IfChanged, value_name = "WHEN")]
    pub overwrite: OverwriteArg,

    /// Restore file ownership (uid/gid) [default: true when running as root]
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub owner: Option<bool>,
}

#[derive(Serialize)]
struct Report<'a> {
    snapshot_id: String,
    target: String,
    #[serde(flatten)]
    summary: &'a RestoreSummary,
}

/// Runs `restore`.
pub async fn run(ctx: &Ctx, args: &Args) -> anyhow::Result<u8> {
    let opened = ctx.open(true).await?;
    let repo = &opened.repo;
    let all = repo.snapshots().await.context("listing snapshots")?;
    let entry = select(&all, &args.snapshot, &args.filter.filter())?;
    let target = args.target.clone().unwrap_or_else(|| PathBuf::from(format!("s3bk-restore-{}", entry.id.short())));
    let opts = RestoreOptions {
        target: target.clone(),
        includes: args.includes.clone(),
        excludes: args.excludes.clone(),
        paths: None,
        overwrite: args.overwrite.into(),
        owner: args.owner.unwrap_or_else(|| rustix::process::geteuid().is_root()),
    };
    ctx.note(format_args!(
        "restoring snapshot {} of {} ({}) into {}",
        entry.id.short(),
        entry.snapshot.hostname,
        super::format::local_time(entry.snapshot.time()),
        target.display()
    ));
    let bar = ctx.progress();
    let summary = restorer::restore(repo, &entry.snapshot, &opts, bar.clone()).await;
    bar.finish();
    let summary = summary.with_context(|| format!("restoring into {}", target.display()))?;

    if ctx.global.json {
        print_json(&Report {
            snapshot_id: entry.id.to_hex(),
            target: target.display().to_string(),
            summary: &summary,
        })?;
    } else {
        for w in &summary.warnings {
            eprintln!("warning: {w}");
        }
        if !ctx.global.quiet {
            println!(
                "restored {} files ({}), {} dirs, {} other entries; {} files left as they were",
                summary.files_restored,
                bytes(summary.bytes_written),
                summary.dirs,
                summary.others,
                summary.files_skipped
            );
        }
    }
    Ok(exit::OK)
}
