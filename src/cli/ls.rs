//! `s3bk ls`: lists the entries of a snapshot (optionally below a path inside it), short or
//! long (`-l`), or as JSON.

use std::io::{BufWriter, Write};

use anyhow::Context;
use s3bk::browse::{self, Entry};
use s3bk::snapshot::Filter;
use serde_json::json;

use super::context::Ctx;
use super::exit;
use super::filter::select;
use super::format::{kind_name, local_time, mode_string, path_lossy, print_json, rfc3339, timestamp};

/// Arguments of `ls`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The snapshot: an id (prefix) or `latest`
    #[arg(value_name = "SNAPSHOT")]
    pub snapshot: String,

    /// Only entries below this path inside the snapshot (e.g. `home/docs`)
    #[arg(value_name = "PATH")]
    pub path: Option<String>,

    /// Long format: mode, owner, size, modification time
    #[arg(long, short = 'l')]
    pub long: bool,
}

/// The path inside a snapshot as the library wants it: `/`-separated, no leading or trailing
/// slash.
pub fn snapshot_prefix(path: Option<&str>) -> Vec<u8> {
    path.unwrap_or("").trim_matches('/').as_bytes().to_vec()
}

fn long_line(e: &Entry) -> String {
    let n = &e.node;
    let owner = n.user.clone().unwrap_or_else(|| n.uid.to_string());
    let group = n.group.clone().unwrap_or_else(|| n.gid.to_string());
    let mut line = format!(
        "{} {owner:>8} {group:>8} {:>12} {} {}",
        mode_string(n),
        n.size,
        local_time(timestamp(n.mtime_ns)),
        path_lossy(&e.path)
    );
    if let Some(t) = &n.link_target {
        line.push_str(" -> ");
        line.push_str(&path_lossy(t));
    }
    line
}

/// Runs `ls`.
pub async fn run(ctx: &Ctx, args: &Args) -> anyhow::Result<u8> {
    let opened = ctx.open(true).await?;
    let repo = &opened.repo;
    let all = repo.snapshots().await.context("listing snapshots")?;
    let entry = select(&all, &args.snapshot, &Filter::default())?;
    let prefix = snapshot_prefix(args.path.as_deref());
    let entries = browse::walk(repo, &entry.snapshot.tree, &prefix)
        .await
        .with_context(|| format!("listing snapshot {}", entry.id.short()))?;
    if ctx.global.json {
        let items: Vec<_> = entries
            .iter()
            .map(|e| {
                json!({
                    "path": path_lossy(&e.path),
                    "type": kind_name(e.node.kind),
                    "size": e.node.size,
                    "mode": e.node.mode,
                    "mtime": rfc3339(timestamp(e.node.mtime_ns)),
                })
            })
            .collect();
        print_json(&items)?;
        return Ok(exit::OK);
    }
    let mut out = BufWriter::new(std::io::stdout().lock());
    for e in &entries {
        if args.long {
            writeln!(out, "{}", long_line(e))?;
        } else {
            writeln!(out, "{}", path_lossy(&e.path))?;
        }
    }
    out.flush()?;
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes() {
        assert_eq!(snapshot_prefix(None), b"");
        assert_eq!(snapshot_prefix(Some("/home/docs/")), b"home/docs");
    }
}
