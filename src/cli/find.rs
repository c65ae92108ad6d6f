//! `s3bk find`: searches snapshots for entries whose file name or full path matches a glob,
//! across all snapshots (narrowed by host/path/tag) or one `--snapshot`.

use std::io::{BufWriter, Write};

use anyhow::Context;
use globset::{GlobBuilder, GlobMatcher};
use s3bk::browse;
use s3bk::snapshot::SnapshotEntry;
use serde_json::json;

use super::context::Ctx;
use super::exit;
use super::filter::{FilterArgs, select};
use super::format::{kind_name, path_lossy, print_json, rfc3339, timestamp};

/// Arguments of `find`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Glob matched against each entry's file name and its full path (e.g. `*.pdf`)
    #[arg(value_name = "PATTERN")]
    pub pattern: String,

    /// Search only this snapshot (an id prefix or `latest`)
    #[arg(long, short = 's', value_name = "ID")]
    pub snapshot: Option<String>,

    /// Which snapshots to search
    #[command(flatten)]
    pub filter: FilterArgs,

    /// Match regardless of case
    #[arg(long, short = 'i')]
    pub ignore_case: bool,
}

/// The matcher for `pattern`.
pub fn matcher(pattern: &str, ignore_case: bool) -> anyhow::Result<GlobMatcher> {
    Ok(GlobBuilder::new(pattern)
        .case_insensitive(ignore_case)
        .literal_separator(false)
        .build()
        .with_context(|| format!("bad pattern {pattern:?}"))?
        .compile_matcher())
}

/// Whether the entry at `path` (`/`-separated bytes) matches by name or full path.
pub fn matches(m: &GlobMatcher, path: &[u8]) -> bool {
    let full = String::from_utf8_lossy(path);
    let name = full.rsplit('/').next().unwrap_or(&full);
    m.is_match(name) || m.is_match(&*full)
}

/// Runs `find`.
pub async fn run(ctx: &Ctx, args: &Args) -> anyhow::Result<u8> {
    let m = matcher(&args.pattern, args.ignore_case)?;
    let opened = ctx.open(true).await?;
    let repo = &opened.repo;
    let all = repo.snapshots().await.context("listing snapshots")?;
    let filter = args.filter.filter();
    let chosen: Vec<&SnapshotEntry> = match &args.snapshot {
        Some(spec) => vec![select(&all, spec, &filter)?],
        None => all.iter().filter(|e| filter.matches(&e.snapshot)).collect(),
    };
    let mut found = Vec::new();
    let mut out = BufWriter::new(std::io::stdout().lock());
    for e in chosen {
        let entries = browse::walk(repo, &e.snapshot.tree, b"")
            .await
            .with_context(|| format!("listing snapshot {}", e.id.short()))?;
        for entry in entries.into_iter().filter(|x| matches(&m, &x.path)) {
            if ctx.global.json {
                found.push(json!({
                    "snapshot_id": e.id.to_hex(),
                    "short_id": e.id.short(),
                    "time": rfc3339(e.snapshot.time()),
                    "path": path_lossy(&entry.path),
                    "type": kind_name(entry.node.kind),
                    "size": entry.node.size,
                    "mtime": rfc3339(timestamp(entry.node.mtime_ns)),
                }));
            } else {
                writeln!(out, "{}  {}", e.id.short(), path_lossy(&entry.path))?;
            }
        }
    }
    out.flush()?;
    drop(out);
    if ctx.global.json {
        print_json(&found)?;
    }
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_or_full_path() {
        let m = matcher("*.pdf", false).unwrap();
        assert!(matches(&m, b"a/b/report.pdf"));
        assert!(!matches(&m, b"a/b/report.txt"));
        let m = matcher("docs/**", false).unwrap();
        assert!(matches(&m, b"docs/x/y"));
        let m = matcher("README*", true).unwrap();
        assert!(matches(&m, b"src/readme.md"));
    }
}
