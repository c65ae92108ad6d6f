//! `s3bk prune`: runs the library's two-phase prune (execute due deletion plans, then mark) and
//! prints what it did, or with `--dry-run` what it would do, as text or one JSON object. Also
//! used by `forget --prune`.

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use s3bk::prune::{self, PruneOptions, PruneReport};

use super::context::Ctx;
use super::exit;
use super::format::{bytes, print_json};

/// Options shared by `prune` and `forget --prune`.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Prune options")]
pub struct PruneArgs {
    /// Repack a partly used pack when more than this share of its bytes is unused (e.g. 5%, 0%
    /// to repack any pack with unused blobs, 100% never to repack)
    #[arg(long, value_name = "PERCENT", default_value = "5%", value_parser = parse_percent)]
    pub max_unused: f64,

    /// How long a deletion plan waits before a later prune executes it: at least as long as the
    /// longest backup, plus clock skew (e.g. 24h, 2d, 0s)
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = parse_duration)]
    pub grace: Duration,
}

/// Arguments of `prune`.
#[derive(Debug, clap::Args)]
#[command(
    long_about = "Remove data no snapshot needs.\n\n\
        Prune works in two phases, so that a backup running at the same time never loses data. \
        Each run first executes the deletion plans that earlier runs wrote and whose grace period \
        (--grace) has passed: their packs are deleted, except those a snapshot has started to \
        use since, which are kept. Then it marks: packs no snapshot uses, packs no index file \
        lists, and partly used packs (above --max-unused), whose used blobs it first copies into \
        new packs, go into a new deletion plan. Nothing is deleted in the run that finds it \
        unused: run prune again after the grace period (a daily timer does this).\n\n\
        Prune refuses to run when a snapshot uses a blob that no index file lists (run `s3bk \
        verify`). Memory: about 12 bytes per used blob (16 at most while collecting them), plus \
        about 90 per tree blob and 100 per pack; ten million blobs need a few hundred MB.",
    after_help = "Examples:\n  s3bk prune --dry-run           # show the plan, write nothing\n  \
        s3bk prune                     # execute due plans, write a new one\n  \
        s3bk forget --keep-within 60d --prune"
)]
pub struct Args {
    /// Print what would be deleted and repacked, and write nothing (not even the lease)
    #[arg(long, short = 'n')]
    pub dry_run: bool,

    /// Prune options.
    #[command(flatten)]
    pub prune: PruneArgs,
}

/// `5%`, `5` or `0.5%` as a fraction.
fn parse_percent(s: &str) -> Result<f64, String> {
    let v: f64 = s.trim().trim_end_matches('%').trim().parse().map_err(|_| format!("{s:?} is not a percentage"))?;
    if !(0.0..=100.0).contains(&v) {
        return Err(format!("{s:?}: expected 0% to 100%"));
    }
    Ok(v / 100.0)
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| format!("{s:?}: {e} (e.g. 24h, 2d, 0s)"))
}

impl PruneArgs {
    /// The library's options.
    pub fn options(&self, dry_run: bool) -> PruneOptions {
        PruneOptions { max_unused: self.max_unused, grace: self.grace, dry_run, ..PruneOptions::default() }
    }
}

/// Runs `prune`.
pub async fn run(ctx: &Ctx, args: &Args) -> anyhow::Result<u8> {
    let report = run_prune(ctx, &args.prune.options(args.dry_run)).await?;
    if ctx.global.json {
        print_json(&report)?;
    }
    Ok(exit::OK)
}

/// Opens the repository, prunes it and prints the human summary (not the JSON).
pub async fn run_prune(ctx: &Ctx, opts: &PruneOptions) -> anyhow::Result<PruneReport> {
    // Prune reads the index files from the repository itself, not through the cache.
    let opened = ctx.open(false).await?;
    let bar = ctx.progress_of("objects");
    let report = prune::prune(&opened.repo, opts, bar.clone())
        .await
        .with_context(|| format!("pruning {}", opened.location.display()))?;
    bar.finish();
    if ctx.chatty() {
        print_human(&report)?;
    }
    Ok(report)
}

fn print_human(r: &PruneReport) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let would = |done: &'static str, planned: &'static str| if r.dry_run { planned } else { done };
    writeln!(
        out,
        "{} snapshots use {} blobs ({} trees); {} packs, {} in the repository",
        r.snapshots,
        r.blobs_used,
        r.trees,
        r.packs,
        bytes(r.bytes)
    )?;
    let e = &r.executed;
    // Executed plans stay for 30 days; one with nothing left to do is not worth a line.
    if e.packs_deleted + e.packs_recovered + e.index_files_deleted > 0 {
        writeln!(
            out,
            "{} {} due deletion plan(s): {} {} packs ({}), kept {} packs a backup indexed since, recovered {} \
             packs a snapshot uses; {} {} superseded index files",
            would("executed", "would execute"),
            e.plans_due,
            would("deleted", "would delete"),
            e.packs_deleted,
            bytes(e.bytes_deleted),
            e.packs_kept,
            e.packs_recovered,
            would("deleted", "would delete"),
            e.index_files_deleted,
        )?;
    }
    if e.plans_pending > 0 {
        writeln!(out, "{} deletion plan(s) not due yet", e.plans_pending)?;
    }
    let m = &r.marked;
    if m.packs_condemned() == 0 {
        writeln!(out, "nothing to mark: {} packs ({}) are kept as they are", m.packs_kept, bytes(m.bytes_kept))?;
        return Ok(());
    }
    writeln!(out, "{}:", would("marked for deletion", "would mark for deletion"))?;
    writeln!(out, "  unused packs:    {:>6}  {}", m.packs_unused, bytes(m.bytes_unused))?;
    writeln!(out, "  unindexed packs: {:>6}  {}", m.packs_unindexed, bytes(m.bytes_unindexed))?;
    writeln!(
        out,
        "  repacked packs:  {:>6}  {} (after copying {} used blobs, {}, into new packs)",
        m.packs_repack,
        bytes(m.bytes_repack),
        m.blobs_repacked,
        bytes(m.bytes_repacked)
    )?;
    writeln!(out, "  kept packs:      {:>6}  {}", m.packs_kept, bytes(m.bytes_kept))?;
    match (m.plan, m.not_before) {
        (Some(plan), Some(t)) => writeln!(
            out,
            "wrote {} new packs, {} index files and deletion plan {}; a prune at or after {} deletes {} packs ({})",
            m.packs_written,
            m.index_files_written,
            plan.short(),
            jiff::Timestamp::from_second(t as i64).map(|t| t.to_string()).unwrap_or_default(),
            m.packs_condemned(),
            bytes(m.bytes_condemned())
        )?,
        _ => writeln!(out, "dry run: nothing was written")?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_percent_and_duration() {
        assert_eq!(parse_percent("5%").unwrap(), 0.05);
        assert_eq!(parse_percent("0").unwrap(), 0.0);
        assert_eq!(parse_percent("100%").unwrap(), 1.0);
        assert!(parse_percent("101%").is_err() && parse_percent("x").is_err());
        assert_eq!(parse_duration("0s").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86400));
    }
}
