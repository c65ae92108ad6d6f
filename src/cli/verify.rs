//! `s3bk verify`: runs the library's checker (structure always; pack contents with
//! `--read-data` or a `--read-data-subset`), shows progress, and reports counts and every problem
//! on its own line, or the report as JSON. Exits 1 when anything is wrong, so a daily cron job
//! or systemd timer notices.

use std::io::Write;

use anyhow::Context;
use s3bk::checker::{self, ReadData, Report, Subset, VerifyOptions};

use super::context::Ctx;
use super::exit;
use super::format::{bytes, print_json};

/// Arguments of `verify`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Run daily with --read-data-subset \"$(( $(date +%s) / 86400 % 30 + 1 ))/30\" to read \
    every pack once every 30 days (a fixed n/t reads the same packs each time).")]
pub struct Args {
    /// Also download every pack and check every byte: its hash, its header against the index,
    /// and every blob (MAC, decompression, id)
    #[arg(long, conflicts_with = "read_data_subset")]
    pub read_data: bool,

    /// Like --read-data for part of the packs: `n/t` reads slice n of t (slices 1/t to t/t
    /// together read every pack once), `P%` a random P% (another part each run)
    #[arg(long, value_name = "n/t|P%", value_parser = parse_subset)]
    pub read_data_subset: Option<Subset>,
}

fn parse_subset(s: &str) -> Result<Subset, String> {
    s.parse().map_err(|e: s3bk::error::Error| e.to_string())
}

/// Runs `verify`.
pub async fn run(ctx: &Ctx, args: &Args) -> anyhow::Result<u8> {
    let read_data = match (&args.read_data_subset, args.read_data) {
        (Some(s), _) => ReadData::Subset(s.clone()),
        (None, true) => ReadData::All,
        (None, false) => ReadData::None,
    };
    // The checker reads index files from the repository itself, not through the cache.
    let opened = ctx.open(false).await?;
    let bar = ctx.progress_of("objects");
    let report = checker::verify(&opened.repo, &VerifyOptions { read_data }, bar.clone())
        .await
        .with_context(|| format!("verifying {}", opened.location.display()))?;
    bar.finish();
    if ctx.global.json {
        print_json(&report)?;
    } else {
        print_human(ctx, &report)?;
    }
    if report.is_clean() {
        return Ok(exit::OK);
    }
    if !ctx.global.json {
        eprintln!(
            "error: {} found in {}. Keep the repository as it is (delete nothing) until it is repaired; \
             repair commands (`s3bk repair index`, `s3bk repair snapshots`) are planned but not in this version.",
            plural(report.problems.len() as u64, "problem"),
            opened.location.display()
        );
    }
    Ok(exit::ERROR)
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
