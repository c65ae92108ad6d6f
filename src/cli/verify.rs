//! `s3bk verify`: runs the library's checker (structure always; pack contents with
//! `--read-data` or a `--read-data-subset`), shows progress, and reports counts and every problem
//! on its own line, or the report as JSON. With `--restore-test`, also restores a sample of a
//! snapshot and estimates the full restore time (`s3bk::restoretest`). Exits 1 when anything is
//! wrong, 4 when the estimate misses `--rto`, so a daily cron job or systemd timer notices.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use s3bk::checker::{self, ReadData, Report, Subset, VerifyOptions};
use s3bk::restoretest::{self, Budget, RestoreTestOptions, RestoreTestReport};
use serde::Serialize;

use super::context::Ctx;
use super::exit;
use super::filter::select;
use super::format::{bytes, print_json};

/// Arguments of `verify`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Run daily with --read-data-subset \"$(( $(date +%s) / 86400 % 30 + 1 ))/30\" to read \
    every pack once every 30 days (a fixed n/t reads the same packs each time).\n\n\
    --restore-test restores a random sample of the snapshot's files (default: 5% of its data, at least \
    256 MiB, at most 1 GiB) into a temporary folder, checks every byte against the snapshot, and \
    estimates the time to restore the whole snapshot from the measured throughput. With --rto, an \
    estimate above it exits 4 (the repository is fine, the restore is too slow); damage exits 1.")]
pub struct Args {
    /// Also download every pack and check every byte: its hash, its header against the index,
    /// and every blob (MAC, decompression, id)
    #[arg(long, conflicts_with = "read_data_subset")]
    pub read_data: bool,

    /// Like --read-data for part of the packs: `n/t` reads slice n of t (slices 1/t to t/t
    /// together read every pack once), `P%` a random P% (another part each run)
    #[arg(long, value_name = "n/t|P%", value_parser = parse_subset)]
    pub read_data_subset: Option<Subset>,

    /// Walk only this snapshot's trees (an id, prefix or `latest`), and restore-test it
    #[arg(long, short = 's', value_name = "ID")]
    pub snapshot: Option<String>,

    /// Restore a random sample of the snapshot (latest by default) and check it byte for byte;
    /// report the throughput and the estimated time to restore it all. SIZE: `P%` of its data,
    /// a size (`500MiB`), or `auto`
    #[arg(long, value_name = "SIZE|P%", num_args = 0..=1, default_missing_value = "auto", value_parser = parse_budget)]
    pub restore_test: Option<Budget>,

    /// Recovery time objective (e.g. `2h`, `90min`): exit 4 when the estimated full restore
    /// takes longer
    #[arg(long, value_name = "DURATION", requires = "restore_test", value_parser = parse_duration)]
    pub rto: Option<Duration>,

    /// Make the restore test's temporary folder here [default: the system's temporary folder]
    #[arg(long, value_name = "DIR", requires = "restore_test")]
    pub restore_test_dir: Option<PathBuf>,
}

fn parse_subset(s: &str) -> Result<Subset, String> {
    s.parse().map_err(|e: s3bk::error::Error| e.to_string())
}

fn parse_budget(s: &str) -> Result<Budget, String> {
    s.parse().map_err(|e: s3bk::error::Error| e.to_string())
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (expected e.g. 2h, 90min, 1h30m)"))
}

/// `verify --json`: the checker's report, with the restore test's when one ran.
#[derive(Serialize)]
struct JsonReport<'a> {
    #[serde(flatten)]
    report: &'a Report,
    #[serde(skip_serializing_if = "Option::is_none")]
    restore_test: Option<&'a RestoreTestReport>,
}

/// Runs `verify`.
pub async fn run(ctx: &Ctx, args: &Args) -> anyhow::Result<u8> {
    let read_data = match (&args.read_data_subset, args.read_data) {
        (Some(s), _) => ReadData::Subset(s.clone()),
        (None, true) => ReadData::All,
        (None, false) => ReadData::None,
    };
    // The checker reads index files from the repository itself, not through the cache.
    let mut opened = ctx.open(false).await?;
    let chosen = match (&args.snapshot, &args.restore_test) {
        (None, None) => None,
        (spec, _) => {
            // Unreadable snapshot files are reported by the check itself.
            let all = opened.repo.snapshots_lenient().await.context("listing snapshots")?.0;
            Some(select(&all, spec.as_deref().unwrap_or("latest"), &Default::default())?.clone())
        }
    };
    let snapshots = match (&args.snapshot, &chosen) {
        (Some(_), Some(e)) => vec![e.id],
        _ => Vec::new(),
    };
    let bar = ctx.progress_of("objects");
    let report = checker::verify(&opened.repo, &VerifyOptions { read_data, snapshots }, bar.clone())
        .await
        .with_context(|| format!("verifying {}", opened.location.display()))?;
    bar.finish();

    let mut restore_test = None;
    if let (Some(budget), Some(entry)) = (args.restore_test, &chosen) {
        ctx.load_index(&mut opened.repo).await?;
        let bar = ctx.progress();
        let opts = RestoreTestOptions { budget, scratch: args.restore_test_dir.clone(), rto: args.rto };
        let r = restoretest::restore_test(&opened.repo, entry, &opts, bar.clone()).await;
        bar.finish();
        restore_test = Some(r.context("running the restore test")?);
    }

    if ctx.global.json {
        print_json(&JsonReport { report: &report, restore_test: restore_test.as_ref() })?;
    } else {
        print_human(ctx, &report)?;
        if let Some(t) = &restore_test {
            print_restore_test(ctx, t)?;
        }
    }
    let problems = report.problems.len() + restore_test.as_ref().map_or(0, |t| t.problems.len());
    if problems > 0 {
        if !ctx.global.json {
            eprintln!(
                "error: {} found in {}. Keep the repository as it is (delete nothing) until it is repaired: \
                 `s3bk repair index` rebuilds a damaged or incomplete index from the packs, then \
                 `s3bk repair snapshots` rewrites snapshots without the data that is lost.",
                plural(problems as u64, "problem"),
                opened.location.display()
            );
        }
        return Ok(exit::ERROR);
    }
    if restore_test.as_ref().is_some_and(RestoreTestReport::misses_rto) {
        if !ctx.global.json {
            eprintln!(
                "error: restoring snapshot {} would take longer than the recovery time objective",
                chosen.as_ref().map(|e| e.id.short()).unwrap_or_default()
            );
        }
        return Ok(exit::RTO_EXCEEDED);
    }
    Ok(exit::OK)
}

fn print_restore_test(ctx: &Ctx, t: &RestoreTestReport) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    for w in &t.warnings {
        eprintln!("warning: restore test: {w}");
    }
    for p in &t.problems {
        writeln!(out, "problem: {p}")?;
    }
    if ctx.global.quiet {
        return Ok(());
    }
    let share = if t.bytes_total == 0 { 0.0 } else { 100.0 * t.bytes_sampled as f64 / t.bytes_total as f64 };
    writeln!(
        out,
        "restore test of snapshot {}: {} of {} ({} of {}, {share:.1}%) restored in {:.1}s and checked in {:.1}s",
        t.snapshot.short(),
        plural(t.files_sampled, "file"),
        t.files_total,
        bytes(t.bytes_sampled),
        bytes(t.bytes_total),
        t.restore_secs,
        t.check_secs,
    )?;
    if let (Some(rate), Some(est)) = (t.throughput_bytes_per_sec, t.estimated_full_restore) {
        writeln!(
            out,
            "throughput {}/s; estimated time to restore the whole snapshot: {}",
            bytes(rate as u64),
            humantime::format_duration(Duration::from_secs(est.as_secs().max(1)))
        )?;
    }
    if let Some(rto) = t.rto {
        let rto = humantime::format_duration(rto);
        match t.within_rto {
            Some(true) => writeln!(out, "within the recovery time objective of {rto}")?,
            Some(false) => writeln!(out, "exceeds the recovery time objective of {rto}")?,
            None => writeln!(out, "no estimate, so the recovery time objective of {rto} is not met")?,
        }
    }
    Ok(())
}

fn plural(n: u64, what: &str) -> String {
    if n == 1 { format!("1 {what}") } else { format!("{n} {what}s") }
}

fn print_human(ctx: &Ctx, r: &Report) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if !ctx.global.quiet {
        writeln!(
            out,
            "checked {}, {}, {} ({} in {})",
            plural(r.snapshots, "snapshot"),
            plural(r.trees, "tree"),
            plural(r.index_files, "index file"),
            plural(r.blobs, "blob"),
            plural(r.packs, "pack"),
        )?;
        if r.packs_read > 0 {
            writeln!(
                out,
                "read {} of {} ({}, {})",
                plural(r.packs_read, "pack"),
                r.packs,
                bytes(r.bytes_read),
                plural(r.blobs_read, "blob"),
            )?;
        }
        if !r.unindexed_packs.is_empty() {
            writeln!(
                out,
                "note: {} in no index file (left by an interrupted backup, or one still running); not a problem \
                 by itself",
                match r.unindexed_packs.len() {
                    1 => "1 pack is".to_owned(),
                    n => format!("{n} packs are"),
                }
            )?;
        }
    }
    if !ctx.global.quiet && !r.condemned_packs.is_empty() {
        writeln!(
            out,
            "note: {} condemned by a deletion plan of prune (deleted when the plan is due); not a problem",
            match r.condemned_packs.len() {
                1 => "1 pack is".to_owned(),
                n => format!("{n} packs are"),
            }
        )?;
    }
    for p in &r.problems {
        writeln!(out, "problem: {p}")?;
    }
    if r.is_clean() && !ctx.global.quiet {
        writeln!(out, "no problems found ({:.1}s)", r.duration.as_secs_f64())?;
    }
    Ok(())
}
