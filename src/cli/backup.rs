//! `s3bk backup`: turns command-line options and the profile's settings into
//! [`BackupOptions`], runs the archiver with a progress bar, and reports the outcome (exit code
//! 3 when the snapshot is incomplete). Creates the embedded default repository on first use.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use s3bk::archiver::{self, BackupOptions, ParentChoice};
use s3bk::snapshot::Filter;
use serde_json::json;

use super::context::Ctx;
use super::exit;
use super::filter::{select, split_tags};
use super::format::{bytes, print_json};

/// Arguments of `backup`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Files and folders to back up
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,

    /// Leave out paths matching this glob (repeatable; e.g. `*.tmp`, `**/node_modules`)
    #[arg(long = "exclude", short = 'e', value_name = "GLOB")]
    pub excludes: Vec<String>,

    /// Read exclude globs from this file (one per line, `#` starts a comment; repeatable)
    #[arg(long = "exclude-file", value_name = "FILE")]
    pub exclude_files: Vec<PathBuf>,

    /// Leave out folders containing a file with this name (repeatable; e.g. `.nobackup`)
    #[arg(long = "exclude-if-present", value_name = "NAME")]
    pub exclude_if_present: Vec<String>,

    /// Stay on the filesystem of each starting path
    #[arg(long, short = 'x')]
    pub one_file_system: bool,

    /// Tag the snapshot (repeatable, or comma-separated)
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,

    /// Host name to record [default: this machine's]
    #[arg(long, value_name = "NAME")]
    pub host: Option<String>,

    /// Compare against this snapshot instead of the newest one of the same host and paths
    #[arg(long, value_name = "ID", conflicts_with = "force_rehash")]
    pub parent: Option<String>,

    /// Read every file, even those unchanged since the parent snapshot
    #[arg(long)]
    pub force_rehash: bool,

    /// Read everything but write nothing to the repository
    #[arg(long, short = 'n')]
    pub dry_run: bool,
}

/// Reads an exclude file: one glob per line; blank lines and `#` comments are ignored.
fn read_exclude_file(path: &Path) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading exclude file {}", path.display()))?;
    Ok(parse_exclude_lines(&text))
}

fn parse_exclude_lines(text: &str) -> Vec<String> {
    text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_owned).collect()
}

/// Runs `backup`.
pub async fn run(ctx: &Ctx, args: &Args) -> anyhow::Result<u8> {
    let profile = ctx.profile.as_ref().map(|p| &p.profile);
    let mut excludes = args.excludes.clone();
    for f in &args.exclude_files {
        excludes.extend(read_exclude_file(f)?);
    }
    let mut exclude_if_present = args.exclude_if_present.clone();
    let mut tags = args.tags.clone();
    if let Some(p) = profile {
        excludes.extend(p.excludes.iter().cloned());
        exclude_if_present.extend(p.exclude_if_present.iter().cloned());
        tags.extend(p.tags.iter().cloned());
    }
    let mut paths = Vec::with_capacity(args.paths.len());
    for p in &args.paths {
        if p.as_os_str().is_empty() {
            bail!("an empty path was given to back up");
        }
        paths.push(std::path::absolute(p).with_context(|| format!("resolving {}", p.display()))?);
    }

    let opened = ctx.open_or_create_default(args.dry_run).await?;
    let repo = &opened.repo;
    let parent = match (&args.parent, args.force_rehash) {
        (_, true) => ParentChoice::None,
        (Some(spec), false) => {
            let all = repo.snapshots().await.context("listing snapshots")?;
            let e = select(&all, spec, &Filter::default()).context("--parent")?;
            ParentChoice::Id(e.id)
        }
        (None, false) => ParentChoice::Auto,
    };
    let bar = ctx.progress();
    let opts = BackupOptions {
        paths,
        excludes,
        exclude_if_present,
        one_file_system: args.one_file_system,
        tags: split_tags(&tags),
        hostname: args.host.clone(),
        parent,
        dry_run: args.dry_run,
        estimate_totals: bar.is_visible(),
    };
    tracing::debug!("backup options: {opts:?}");
    let result = archiver::backup(repo, &opts, bar.clone()).await;
    bar.finish();
    let result = result.context("backup failed")?;

    let snap = &result.snapshot;
    let s = &snap.summary;
    if ctx.global.json {
        print_json(&json!({
            "snapshot_id": result.id.map(|id| id.to_hex()),
            "files_new": s.files_new,
            "files_changed": s.files_changed,
            "files_unmodified": s.files_unmodified,
            "dirs": s.dirs,
            "bytes_read": s.bytes_read,
            "bytes_total": s.bytes_total,
            "bytes_added": s.bytes_added,
            "bytes_added_stored": s.bytes_added_stored,
            "packs_written": s.packs_written,
            "duration_secs": s.duration_secs,
            "skipped": s.skipped,
            "incomplete": snap.incomplete,
            "dry_run": args.dry_run,
        }))?;
    } else if !ctx.global.quiet {
        println!("Files:      {} new, {} changed, {} unmodified", s.files_new, s.files_changed, s.files_unmodified);
        println!("Dirs:       {}", s.dirs);
        println!("Read:       {} of {}", bytes(s.bytes_read), bytes(s.bytes_total));
        println!(
            "Added:      {} ({} stored, {} packs)",
            bytes(s.bytes_added),
            bytes(s.bytes_added_stored),
            s.packs_written
        );
        println!("Duration:   {:.1}s", s.duration_secs);
        match result.id {
            Some(id) => println!("snapshot {} saved in {}", id.short(), opened.location.display()),
            None => println!("dry run: nothing was written"),
        }
    }
    if snap.incomplete {
        eprintln!("warning: the snapshot is incomplete; these paths were skipped:");
        for sk in &s.skipped {
            eprintln!("  {}: {}", sk.path, sk.error);
        }
        return Ok(exit::INCOMPLETE);
    }
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclude_lines() {
        let v = parse_exclude_lines("# comment\n*.tmp\n\n  cache/  \r\n#x\n");
        assert_eq!(v, ["*.tmp", "cache/"]);
    }
}
