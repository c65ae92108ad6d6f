//! `s3bk diff`: shows what changed between two snapshots, one line per path (`+` added,
//! `-` removed, `M` content modified, `U` metadata updated, `T` type changed), or as JSON.

use std::io::{BufWriter, Write};

use anyhow::Context;
use s3bk::browse::{self, Change};
use s3bk::snapshot::Filter;
use serde_json::json;

use super::context::Ctx;
use super::exit;
use super::filter::select;
use super::format::{path_lossy, print_json};

/// Arguments of `diff`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The older snapshot: an id (prefix) or `latest`
    #[arg(value_name = "SNAPSHOT1")]
    pub first: String,
    /// The newer snapshot: an id (prefix) or `latest`
    #[arg(value_name = "SNAPSHOT2")]
    pub second: String,
}

/// The one-character marker of a change.
pub fn marker(c: Change) -> char {
    match c {
        Change::Added => '+',
        Change::Removed => '-',
        Change::Modified => 'M',
        Change::Metadata => 'U',
        Change::Type => 'T',
    }
}

/// Runs `diff`.
pub async fn run(ctx: &Ctx, args: &Args) -> anyhow::Result<u8> {
    let opened = ctx.open(true).await?;
    let repo = &opened.repo;
    let all = repo.snapshots().await.context("listing snapshots")?;
    let a = select(&all, &args.first, &Filter::default())?;
    let b = select(&all, &args.second, &Filter::default())?;
    let changes = browse::diff(repo, &a.snapshot.tree, &b.snapshot.tree)
        .await
        .with_context(|| format!("comparing snapshots {} and {}", a.id.short(), b.id.short()))?;
    if ctx.global.json {
        let items: Vec<_> = changes.iter().map(|(p, c)| json!({ "path": path_lossy(p), "change": c })).collect();
        print_json(&items)?;
        return Ok(exit::OK);
    }
    let mut out = BufWriter::new(std::io::stdout().lock());
    for (p, c) in &changes {
        writeln!(out, "{} {}", marker(*c), path_lossy(p))?;
    }
    out.flush()?;
    if !ctx.global.quiet {
        let count = |k: Change| changes.iter().filter(|(_, c)| *c == k).count();
        eprintln!(
            "{} added, {} removed, {} modified, {} metadata, {} type changed",
            count(Change::Added),
            count(Change::Removed),
            count(Change::Modified),
            count(Change::Metadata),
            count(Change::Type)
        );
    }
    Ok(exit::OK)
}
