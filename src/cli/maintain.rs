//! `s3bk maintain`: the scheduled admin job in one command. It forgets snapshots by the
//! profile's retention policy, prunes (executing due deletion plans, marking new ones), and
//! verifies the structure plus a slice of the packs (the day's slice of 30 by default, so a daily
//! timer reads every pack once a month), then prints one summary (or one JSON object). Exits 1
//! when verify finds a problem or a snapshot could not be removed.

use std::io::Write;

use anyhow::Context;
use s3bk::checker::{self, ReadData, Subset, VerifyOptions};
use s3bk::forget::{self, GroupBy};
use serde_json::json;

use super::context::Ctx;
use super::exit;
use super::format::{bytes, print_json};
use super::prune::{PruneArgs, run_prune};

/// Arguments of `maintain`.
#[derive(Debug, clap::Args)]
#[command(
    long_about = "The daily admin job: forget by the profile's retention policy, prune, verify.\n\n\
        Snapshots are forgotten by the `retention` of the profile in the config file (grouped by \
        host and paths), then prune executes the deletion plans whose grace has passed and marks \
        what is newly unused, then verify checks the structure and reads one slice of the packs. \
        One summary at the end; exit 1 if anything is wrong.",
    after_help = "A systemd timer or cron line, once a day, on one admin machine:\n  \
        s3bk --profile reports maintain --quiet"
)]
pub struct Args {
    /// Show what would be forgotten and pruned; remove, write and read nothing (verify still
    /// checks the structure)
    #[arg(long, short = 'n')]
    pub dry_run: bool,

    /// Which packs verify reads: `n/t` or `P%` [default: today's slice of 30, so 30 daily runs
    /// read every pack once]
    #[arg(long, value_name = "n/t|P%", value_parser = parse_subset)]
    pub read_data_subset: Option<Subset>,

    /// Prune options.
    #[command(flatten)]
    pub prune: PruneArgs,
}

fn parse_subset(s: &str) -> Result<Subset, String> {
    s.parse().map_err(|e: s3bk::error::Error| e.to_string())
}

/// Today's slice of 30 (days since the epoch, modulo 30, plus one).
fn todays_slice() -> Subset {
    let day = jiff::Timestamp::now().as_second().div_euclid(86_400);
    Subset::Slice { n: (day.rem_euclid(30) + 1) as u64, t: 30 }
}

/// Runs `maintain`.
pub async fn run(ctx: &Ctx, args: &Args) -> anyhow::Result<u8> {
    let policy = super::forget::profile_policy(ctx)?;
    let opened = ctx.open(false).await?;
    let repo = &opened.repo;

    // 1. Forget. Groups keep at least one snapshot: the policy's durations count back from a
    // group's newest snapshot, and a policy that would empty a group is refused below.
    let list = repo.snapshots().await.context("listing snapshots")?;
    let groups =
        forget::apply(&policy, &list, jiff::Timestamp::now(), &jiff::tz::TimeZone::system(), GroupBy::default())?;
    let emptied: Vec<String> =
        groups.iter().filter(|g| g.keep.is_empty() && !g.remove.is_empty()).map(|g| g.key.to_string()).collect();
    anyhow::ensure!(
        emptied.is_empty(),
        "the retention policy ({policy}) would remove every snapshot of: {}; nothing was done",
        emptied.join("; ")
    );
    let remove: Vec<_> = groups.iter().flat_map(|g| g.remove.iter().cloned()).collect();
    let kept: usize = groups.iter().map(|g| g.keep.len()).sum();
    let mut failed = Vec::new();
    if !args.dry_run {
        for (id, outcome) in forget::remove_snapshots(repo.backend().as_ref(), &remove).await {
            if let Err(e) = outcome {
                failed.push(format!("{}: {:#}", id.short(), anyhow::Error::new(e)));
            }
        }
    }

    // 2. Prune (as if the forgotten snapshots were gone, in a dry run).
    let mut opts = args.prune.options(args.dry_run);
    if args.dry_run {
        opts.assume_removed = remove.iter().map(|e| e.id).collect();
    }
    let pruned = run_prune(ctx, &opts).await?;

    // 3. Verify the structure and a slice of the data.
    let subset = args.read_data_subset.clone().unwrap_or_else(todays_slice);
    let read_data = if args.dry_run { ReadData::None } else { ReadData::Subset(subset) };
    let bar = ctx.progress_of("objects");
    let verified = checker::verify(repo, &VerifyOptions { read_data, ..VerifyOptions::default() }, bar.clone())
        .await
        .with_context(|| format!("verifying {}", opened.location.display()))?;
    bar.finish();

    let ok = failed.is_empty() && verified.is_clean();
    if ctx.global.json {
        print_json(&json!({
            "dry_run": args.dry_run,
            "policy": policy.to_string(),
            "forget": { "kept": kept, "removed": remove.len() - failed.len(), "failed": failed },
            "prune": pruned,
            "verify": verified,
            "ok": ok,
        }))?;
    } else if !ctx.global.quiet || !ok {
        let mut out = std::io::stdout().lock();
        let verb = if args.dry_run { "would forget" } else { "forgot" };
        writeln!(out, "maintain: {verb} {} snapshots by {policy}, kept {kept}", remove.len() - failed.len())?;
        for f in &failed {
            writeln!(out, "  could not remove {f}")?;
        }
        let m = &pruned.marked;
        writeln!(
            out,
            "prune: deleted {} packs ({}) from due plans; marked {} packs ({}) for deletion",
            pruned.executed.packs_deleted,
            bytes(pruned.executed.bytes_deleted),
            m.packs_condemned(),
            bytes(m.bytes_condemned())
        )?;
        let problems = verified.problems.len();
        writeln!(
            out,
            "verify: {}",
            if problems == 0 { "no problems".to_owned() } else { format!("{problems} problem(s)") }
        )?;
        for p in &verified.problems {
            writeln!(out, "  {p}")?;
        }
    }
    Ok(if ok { exit::OK } else { exit::ERROR })
}
