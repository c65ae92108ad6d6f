//! `s3bk repair index|snapshots`: runs the library's repairs (`s3bk::repair`), shows progress,
//! and prints every change (or the report as JSON). `repair index` exits 1 when packs had to be
//! left out (their data is then missing: run `repair snapshots`); `repair snapshots` exits 1
//! when a snapshot file could not be loaded.

use std::io::Write;

use anyhow::Context;
use s3bk::id::Id;
use s3bk::repair::{self, IndexOptions, IndexReport, SnapshotsOptions, SnapshotsReport};

use super::context::Ctx;
use super::exit;
use super::filter::select;
use super::format::{bytes, print_json};

/// Arguments of `repair`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// What to repair.
    #[command(subcommand)]
    pub what: What,
}

/// The repairs.
#[derive(Debug, clap::Subcommand)]
pub enum What {
    /// Rebuild the index from the packs: new index files replace (supersede) every existing one,
    /// which is then deleted. Packs whose header cannot be read are reported and left out.
    /// Takes the maintenance lease.
    Index(IndexArgs),
    /// Write a new snapshot, tagged `repaired`, for each snapshot that references data the
    /// repository does not have: files with missing content are dropped, directories whose tree
    /// is unreadable are emptied (a marker file says so). Every change is listed.
    Snapshots(SnapshotsArgs),
}

/// Arguments of `repair index`.
#[derive(Debug, clap::Args)]
pub struct IndexArgs {
    /// Read the header of every pack, instead of reusing index entries that account for a
    /// pack's size exactly
    #[arg(long)]
    pub read_all_packs: bool,

    /// Show what would change; write and delete nothing
    #[arg(long, short = 'n')]
    pub dry_run: bool,
}

/// Arguments of `repair snapshots`.
#[derive(Debug, clap::Args)]
pub struct SnapshotsArgs {
    /// Snapshots to check (ids or prefixes, or `latest`) [default: all]
    #[arg(value_name = "ID")]
    pub snapshots: Vec<String>,

    /// Delete each damaged snapshot once its repaired copy is stored
    #[arg(long)]
    pub forget: bool,

    /// Show what would change; write and delete nothing
    #[arg(long, short = 'n')]
    pub dry_run: bool,
}

/// Runs `repair`.
pub async fn run(ctx: &Ctx, args: &Args) -> anyhow::Result<u8> {
    match &args.what {
        What::Index(a) => run_index(ctx, a).await,
        What::Snapshots(a) => run_snapshots(ctx, a).await,
    }
}

async fn run_index(ctx: &Ctx, args: &IndexArgs) -> anyhow::Result<u8> {
    let opened = ctx.open(false).await?;
    let bar = ctx.progress_of("objects");
    let opts = IndexOptions { read_all_packs: args.read_all_packs, dry_run: args.dry_run };
    let report = repair::repair_index(&opened.repo, &opts, bar.clone()).await;
    bar.finish();
    let report = report.with_context(|| format!("repairing the index of {}", opened.location.display()))?;
    if ctx.global.json {
        print_json(&report)?;
    } else {
        print_index(ctx, &report)?;
        if report.lease_exclusive == Some(false) {
            eprintln!(
                "warning: this server ignores conditional writes, so the maintenance lease rested on a read-back \
                 check that narrows but cannot close the race with another maintenance run"
            );
        }
    }
    if report.skipped.is_empty() {
        return Ok(exit::OK);
    }
    if !ctx.global.json {
        eprintln!(
            "error: {} could not be read and {} not in the index; snapshots that use their data are damaged: \
             run `s3bk repair snapshots`",
            plural(report.skipped.len() as u64, "pack"),
            if report.skipped.len() == 1 { "is" } else { "are" }
        );
    }
    Ok(exit::ERROR)
}

fn print_index(ctx: &Ctx, r: &IndexReport) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let would = if r.dry_run { "would " } else { "" };
    for s in &r.skipped {
        writeln!(out, "skipped pack {} ({}): {}", s.pack, bytes(s.size), s.error)?;
    }
    for u in &r.unreadable_index {
        writeln!(out, "unreadable index file {}: {}", u.index, u.error)?;
    }
    for p in &r.dropped {
        let verb = if r.dry_run { "would be dropped" } else { "dropped" };
        writeln!(out, "pack {p} is missing; {verb} from the index")?;
    }
    if !ctx.global.quiet {
        writeln!(
            out,
            "{} in the repository: {} read from their headers, {} taken from index files, {} skipped",
            plural(r.packs, "pack"),
            r.packs_read,
            r.packs_from_index,
            r.skipped.len()
        )?;
        writeln!(
            out,
            "{}{} {} ({}) superseding {}{}",
            would,
            if r.dry_run { "write" } else { "wrote" },
            plural(r.index_written.len() as u64, "index file"),
            plural(r.blobs, "blob"),
            plural(r.index_superseded.len() as u64, "index file"),
            if r.dry_run { String::new() } else { format!(", deleted {}", r.index_deleted) }
        )?;
    }
    Ok(())
}

async fn run_snapshots(ctx: &Ctx, args: &SnapshotsArgs) -> anyhow::Result<u8> {
    let mut opened = ctx.open(false).await?;
    ctx.load_index(&mut opened.repo).await?;
    let repo = &opened.repo;
    let mut ids: Vec<Id> = Vec::new();
    if !args.snapshots.is_empty() {
        // An unreadable snapshot file cannot be named here; run without ids to have it reported.
        let all = repo.snapshots_lenient().await.context("listing snapshots")?.0;
        for spec in &args.snapshots {
            ids.push(select(&all, spec, &Default::default())?.id);
        }
    }
    let bar = ctx.progress_of("trees");
    let opts = SnapshotsOptions { snapshots: ids, forget: args.forget, dry_run: args.dry_run };
    let report = repair::repair_snapshots(repo, &opts, bar.clone()).await;
    bar.finish();
    let report = report.with_context(|| format!("repairing snapshots in {}", opened.location.display()))?;
    if ctx.global.json {
        print_json(&report)?;
    } else {
        print_snapshots(ctx, &report)?;
    }
    Ok(if report.unreadable.is_empty() { exit::OK } else { exit::ERROR })
}

fn print_snapshots(ctx: &Ctx, r: &SnapshotsReport) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    for u in &r.unreadable {
        writeln!(out, "snapshot {} is unreadable and cannot be repaired: {}", u.snapshot, u.error)?;
    }
    for s in &r.repaired {
        match s.repaired {
            Some(new) if s.earlier => {
                writeln!(out, "snapshot {} was already repaired as {}:", s.original.short(), new.short())?
            }
            Some(new) => writeln!(out, "snapshot {} repaired as {}:", s.original.short(), new.short())?,
            None => writeln!(out, "snapshot {} would be repaired:", s.original.short())?,
        }
        for c in &s.changes {
            writeln!(out, "  {c}")?;
        }
        if s.forgotten {
            writeln!(out, "  removed snapshot {}", s.original.short())?;
        }
    }
    if !ctx.global.quiet {
        let verb = if r.dry_run { "would need repair" } else { "repaired" };
        writeln!(out, "checked {}, {} {verb}", plural(r.checked, "snapshot"), r.repaired.len())?;
    }
    Ok(())
}

fn plural(n: u64, what: &str) -> String {
    if n == 1 { format!("1 {what}") } else { format!("{n} {what}s") }
}
