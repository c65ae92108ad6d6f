//! `s3bk snapshots`: lists snapshots, narrowed by host/path/tag, as a table or as JSON.

use std::io::Write;

use anyhow::Context;
use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{CellAlignment, ContentArrangement, Table};
use s3bk::snapshot::SnapshotEntry;
use serde_json::{Value, json};

use super::context::Ctx;
use super::exit;
use super::filter::FilterArgs;
use super::format::{bytes, local_time, print_json, rfc3339};

/// Arguments of `snapshots`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Which snapshots to list
    #[command(flatten)]
    pub filter: FilterArgs,
}

/// A snapshot as JSON (ids as hex, time as RFC 3339).
pub fn to_json(e: &SnapshotEntry) -> Value {
    let s = &e.snapshot;
    json!({
        "id": e.id.to_hex(),
        "short_id": e.id.short(),
        "time": rfc3339(s.time()),
        "hostname": s.hostname,
        "username": s.username,
        "paths": s.paths,
        "tags": s.tags,
        "parent": s.parent.map(|p| p.to_hex()),
        "tree": s.tree.to_hex(),
        "program": s.program,
        "incomplete": s.incomplete,
        "summary": s.summary,
        "original": s.original.map(|p| p.to_hex()),
    })
}

/// Runs `snapshots`.
pub async fn run(ctx: &Ctx, args: &Args) -> anyhow::Result<u8> {
    let opened = ctx.open(false).await?;
    let filter = args.filter.filter();
    let list: Vec<SnapshotEntry> = filter.keep(opened.repo.snapshots().await.context("listing snapshots")?);
    if ctx.global.json {
        print_json(&list.iter().map(to_json).collect::<Vec<_>>())?;
        return Ok(exit::OK);
    }
    if list.is_empty() {
        if !ctx.global.quiet {
            eprintln!("no snapshots in {}", opened.location.display());
        }
        return Ok(exit::OK);
    }
    let mut table = Table::new();
    table
        .load_style(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(["ID", "Time", "Host", "Tags", "Paths", "Files", "Size"]);
    let mut incomplete = false;
    for e in &list {
        let s = &e.snapshot;
        let mut id = e.id.short();
        if s.incomplete {
            id.push('*');
            incomplete = true;
        }
        let files = s.summary.files_new + s.summary.files_changed + s.summary.files_unmodified;
        table.add_row([
            id,
            local_time(s.time()),
            s.hostname.clone(),
            s.tags.join(","),
            s.paths.join("\n"),
            files.to_string(),
            bytes(s.summary.bytes_total),
        ]);
    }
    for col in [5, 6] {
        if let Some(c) = table.column_mut(col) {
            c.set_cell_alignment(CellAlignment::Right);
        }
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "{table}")?;
    if !ctx.global.quiet {
        writeln!(out, "{} snapshots", list.len())?;
        if incomplete {
            writeln!(out, "* incomplete: some paths were skipped (see `s3bk snapshots --json`)")?;
        }
    }
    Ok(exit::OK)
}
