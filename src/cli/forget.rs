//! `s3bk forget`: applies a retention policy (from `--keep-*` options, else the profile's
//! `retention`) to the snapshots, prints the plan per group, then deletes the snapshot files it
//! does not keep, one by one. It never touches packs or index files itself: the space is
//! reclaimed by `prune`, which `--prune` runs afterwards (see `cli/prune.rs`). A failed deletion
//! is reported and the others still run (prune is then skipped); the exit code is then 1.

use std::io::Write;

use anyhow::{Context, bail};
use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{ContentArrangement, Table};
use jiff::Span;
use s3bk::forget::{self, GroupBy, KeepPolicy};
use s3bk::snapshot::SnapshotEntry;
use serde_json::{Value, json};

use super::context::Ctx;
use super::exit;
use super::filter::{FilterArgs, split_tags};
use super::format::{local_time, print_json, rfc3339};

/// Arguments of `forget`.
#[derive(Debug, clap::Args)]
#[command(
    long_about = "Remove snapshots according to a retention policy.\n\n\
        Snapshots are grouped (by host and paths unless --group-by says otherwise) and the policy \
        is applied to each group: a snapshot is kept if any --keep-* rule keeps it, and removed \
        otherwise. The rules are restic's. With no --keep-* option, the profile's `retention` \
        from the config file is used; with neither, nothing is done.\n\n\
        Only snapshot files are deleted; the data they referred to stays in the repository until \
        prune removes it: pass --prune to run it afterwards (with --json, the output is then one \
        object {\"forget\": [groups], \"prune\": {report}}).",
    after_help = "Examples:\n  s3bk forget --keep-within 60d --dry-run    # show the plan, remove nothing\n  \
        s3bk forget --keep-within 60d              # keep everything from the last 60 days\n  \
        s3bk forget --keep-within 60d --prune      # and remove the data only the others used"
)]
pub struct Args {
    /// Keep the newest N snapshots
    #[arg(long, value_name = "N", help_heading = "Policy")]
    pub keep_last: Option<u32>,
    /// Keep the newest snapshot of each of the newest N hours that have one
    #[arg(long, value_name = "N", help_heading = "Policy")]
    pub keep_hourly: Option<u32>,
    /// Keep the newest snapshot of each of the newest N days that have one
    #[arg(long, value_name = "N", help_heading = "Policy")]
    pub keep_daily: Option<u32>,
    /// Keep the newest snapshot of each of the newest N weeks (ISO) that have one
    #[arg(long, value_name = "N", help_heading = "Policy")]
    pub keep_weekly: Option<u32>,
    /// Keep the newest snapshot of each of the newest N months that have one
    #[arg(long, value_name = "N", help_heading = "Policy")]
    pub keep_monthly: Option<u32>,
    /// Keep the newest snapshot of each of the newest N years that have one
    #[arg(long, value_name = "N", help_heading = "Policy")]
    pub keep_yearly: Option<u32>,
    /// Keep every snapshot made less than DURATION before the newest snapshot of its group
    /// (e.g. 60d, 12h, 2w, 6mo, 2y; `m` would be minutes and is refused)
    #[arg(long, value_name = "DURATION", value_parser = parse_span, help_heading = "Policy")]
    pub keep_within: Option<Span>,
    /// Keep the newest snapshot of each hour within DURATION of the group's newest snapshot
    #[arg(long, value_name = "DURATION", value_parser = parse_span, help_heading = "Policy")]
    pub keep_within_hourly: Option<Span>,
    /// Keep the newest snapshot of each day within DURATION of the group's newest snapshot
    #[arg(long, value_name = "DURATION", value_parser = parse_span, help_heading = "Policy")]
    pub keep_within_daily: Option<Span>,
    /// Keep the newest snapshot of each week within DURATION of the group's newest snapshot
    #[arg(long, value_name = "DURATION", value_parser = parse_span, help_heading = "Policy")]
    pub keep_within_weekly: Option<Span>,
    /// Keep the newest snapshot of each month within DURATION of the group's newest snapshot
    #[arg(long, value_name = "DURATION", value_parser = parse_span, help_heading = "Policy")]
    pub keep_within_monthly: Option<Span>,
    /// Keep the newest snapshot of each year within DURATION of the group's newest snapshot
    #[arg(long, value_name = "DURATION", value_parser = parse_span, help_heading = "Policy")]
    pub keep_within_yearly: Option<Span>,
    /// Keep every snapshot with this tag (repeatable, or comma-separated: any of them keeps)
    #[arg(long = "keep-tag", value_name = "TAG", help_heading = "Policy")]
    pub keep_tags: Vec<String>,

    /// Which snapshots to consider
    #[command(flatten)]
    pub filter: FilterArgs,

    /// Apply the policy to each group of snapshots sharing these (comma-separated: host, paths,
    /// tags; empty for a single group)
    #[arg(long, value_name = "KEYS", default_value = "host,paths", value_parser = parse_group_by)]
    pub group_by: GroupBy,

    /// Print what would be kept and removed, and remove nothing
    #[arg(long, short = 'n')]
    pub dry_run: bool,

    /// Go ahead even when a group would lose every one of its snapshots (refused otherwise)
    #[arg(long)]
    pub unsafe_allow_remove_all: bool,

    /// Then run prune: mark the data only forgotten snapshots used (deleted by a prune after
    /// --grace), and execute due deletion plans. With --dry-run, show prune's plan too
    #[arg(long)]
    pub prune: bool,

    /// Options for --prune.
    #[command(flatten)]
    pub prune_args: super::prune::PruneArgs,
}

fn parse_span(s: &str) -> Result<Span, String> {
    forget::parse_span(s).map_err(|e| e.to_string())
}

fn parse_group_by(s: &str) -> Result<GroupBy, String> {
    s.parse()
}

impl Args {
    /// The policy the `--keep-*` options give (empty when none is given).
    fn policy(&self) -> KeepPolicy {
        KeepPolicy {
            last: self.keep_last,
            hourly: self.keep_hourly,
            daily: self.keep_daily,
            weekly: self.keep_weekly,
            monthly: self.keep_monthly,
            yearly: self.keep_yearly,
            within: self.keep_within,
            within_hourly: self.keep_within_hourly,
            within_daily: self.keep_within_daily,
            within_weekly: self.keep_within_weekly,
            within_monthly: self.keep_within_monthly,
            within_yearly: self.keep_within_yearly,
            tags: split_tags(&self.keep_tags),
        }
    }
}

/// The policy to apply: the options' if they say anything, else the profile's retention.
fn choose_policy(ctx: &Ctx, args: &Args) -> anyhow::Result<KeepPolicy> {
    let from_args = args.policy();
    if !from_args.is_empty() {
        return Ok(from_args);
    }
    profile_policy(ctx)
}

/// The profile's retention policy, or an error saying how to configure one.
pub fn profile_policy(ctx: &Ctx) -> anyhow::Result<KeepPolicy> {
    if let Some(p) = &ctx.profile
        && let Some(r) = &p.profile.retention
    {
        let policy = r.policy().with_context(|| format!("profile {:?}", p.name))?;
        if !policy.is_empty() {
            ctx.note(format_args!("using the retention policy of profile {:?}", p.name));
            return Ok(policy);
        }
    }
    bail!(
        "no retention policy: give --keep-* options (for example `s3bk forget --keep-within 60d`), or set \
         `retention = {{ keep_within = \"60d\" }}` in a profile of the config file"
    )
}

/// A table of snapshots, with a reasons column when `reasons` is given for each.
fn table<'a>(rows: impl Iterator<Item = (&'a SnapshotEntry, Option<String>)>) -> Table {
    let mut t = Table::new();
    t.load_style(UTF8_FULL_CONDENSED).set_content_arrangement(ContentArrangement::Dynamic);
    let mut with_reasons = false;
    for (e, reasons) in rows {
        let s = &e.snapshot;
        let mut row =
            vec![e.id.short(), local_time(s.time()), s.hostname.clone(), s.tags.join(","), s.paths.join("\n")];
        with_reasons |= reasons.is_some();
        row.extend(reasons);
        t.add_row(row);
    }
    let mut header = vec!["ID", "Time", "Host", "Tags", "Paths"];
    if with_reasons {
        header.push("Reasons");
    }
    t.set_header(header);
    t
}

/// Runs `forget`.
pub async fn run(ctx: &Ctx, args: &Args) -> anyhow::Result<u8> {
    let policy = choose_policy(ctx, args)?;
    let opened = ctx.open(false).await?;
    let repo = &opened.repo;
    let filter = args.filter.filter();
    let list: Vec<SnapshotEntry> = filter.keep(repo.snapshots().await.context("listing snapshots")?);
    let groups = forget::apply(&policy, &list, jiff::Timestamp::now(), &jiff::tz::TimeZone::system(), args.group_by)?;

    let emptied: Vec<String> =
        groups.iter().filter(|g| g.keep.is_empty() && !g.remove.is_empty()).map(|g| g.key.to_string()).collect();
    if !emptied.is_empty() && !args.unsafe_allow_remove_all {
        bail!(
            "the policy ({policy}) would remove every snapshot of: {}; nothing was removed. Add a rule that \
             keeps something (e.g. --keep-last 1), or pass --unsafe-allow-remove-all",
            emptied.join("; ")
        );
    }

    let human = ctx.chatty();
    if human {
        let mut out = std::io::stdout().lock();
        writeln!(out, "Applying policy: {policy}")?;
        for g in &groups {
            writeln!(out, "\nsnapshots for {}:", g.key)?;
            if !g.keep.is_empty() {
                let t = table(g.keep.iter().map(|k| (&k.entry, Some(k.reasons.join("\n")))));
                writeln!(out, "keep {} snapshots:\n{t}", g.keep.len())?;
            }
            if !g.remove.is_empty() {
                let t = table(g.remove.iter().map(|e| (e, None)));
                let verb = if args.dry_run { "would remove" } else { "remove" };
                writeln!(out, "{verb} {} snapshots:\n{t}", g.remove.len())?;
            }
        }
        out.flush()?;
    }

    let mut failures: Vec<(String, String)> = Vec::new();
    let mut removed = 0usize;
    if !args.dry_run {
        let remove: Vec<SnapshotEntry> = groups.iter().flat_map(|g| g.remove.iter().cloned()).collect();
        for (id, outcome) in forget::remove_snapshots(repo.backend().as_ref(), &remove).await {
            match outcome {
                Ok(()) => removed += 1,
                Err(err) => {
                    let msg = format!("{:#}", anyhow::Error::new(err));
                    eprintln!("error: removing snapshot {}: {msg}", id.short());
                    failures.push((id.to_hex(), msg));
                }
            }
        }
    }

    let pruned = if args.prune && failures.is_empty() {
        let mut opts = args.prune_args.options(args.dry_run);
        if args.dry_run {
            // Prune's plan as it would be once the snapshots are gone.
            opts.assume_removed = groups.iter().flat_map(|g| g.remove.iter().map(|e| e.id)).collect();
        }
        Some(super::prune::run_prune(ctx, &opts).await?)
    } else {
        None
    };

    if ctx.global.json {
        let failed = |id: &str| failures.iter().find(|(f, _)| f == id).map(|(_, m)| m.clone());
        let out: Vec<Value> = groups
            .iter()
            .map(|g| {
                json!({
                    "key": { "host": g.key.host, "paths": g.key.paths, "tags": g.key.tags },
                    "keep": g.keep.iter().map(|k| json!({
                        "id": k.entry.id.to_hex(),
                        "short_id": k.entry.id.short(),
                        "time": rfc3339(k.entry.snapshot.time()),
                        "reasons": k.reasons,
                    })).collect::<Vec<_>>(),
                    "remove": g.remove.iter().map(|e| {
                        let id = e.id.to_hex();
                        let error = failed(&id);
                        json!({
                            "id": id,
                            "short_id": e.id.short(),
                            "time": rfc3339(e.snapshot.time()),
                            "removed": !args.dry_run && error.is_none(),
                            "error": error,
                        })
                    }).collect::<Vec<_>>(),
                })
            })
            .collect();
        match &pruned {
            Some(p) => print_json(&json!({ "forget": out, "prune": p }))?,
            None => print_json(&out)?,
        }
    }

    let planned: usize = groups.iter().map(|g| g.remove.len()).sum();
    if args.dry_run {
        ctx.note(format_args!("dry run: {planned} snapshots would be removed; nothing was removed"));
    } else if planned == 0 {
        ctx.note("no snapshots to remove");
    } else if pruned.is_some() {
        ctx.note(format_args!("removed {removed} of {planned} snapshots"));
    } else {
        ctx.note(format_args!(
            "removed {removed} of {planned} snapshots; their data stays in the repository until `s3bk prune` \
             removes it"
        ));
    }
    if !failures.is_empty() {
        if args.prune {
            eprintln!("error: prune was not run because snapshots could not be removed");
        }
        eprintln!("error: {} of {planned} snapshots could not be removed (listed above)", failures.len());
        return Ok(exit::ERROR);
    }
    Ok(exit::OK)
}
