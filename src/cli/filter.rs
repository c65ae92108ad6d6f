//! Choosing snapshots on the command line: the `--host`/`--path`/`--tag` filter options, tag
//! lists (repeatable and comma-separated), and resolving `latest` or an id prefix to one
//! snapshot with a message that says what to do when it fails.

use std::path::PathBuf;

use anyhow::anyhow;
use s3bk::snapshot::{self, Filter, SnapshotEntry};

/// Options that narrow which snapshots are considered.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct FilterArgs {
    /// Only snapshots from this host (repeatable)
    #[arg(long = "host", value_name = "HOST")]
    pub hosts: Vec<String>,
    /// Only snapshots that include this backed-up path (repeatable)
    #[arg(long = "path", value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Only snapshots with this tag (repeatable; or comma-separated)
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
}

impl FilterArgs {
    /// The library filter. Paths are made absolute, as snapshots record them.
    pub fn filter(&self) -> Filter {
        Filter {
            hosts: self.hosts.clone(),
            paths: self
                .paths
                .iter()
                .map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone()))
                .map(|p| p.to_string_lossy().into_owned())
                .collect(),
            tags: split_tags(&self.tags),
        }
    }
}

/// Tags from repeated and comma-separated values, trimmed, without empties or duplicates.
pub fn split_tags(values: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for t in values.iter().flat_map(|v| v.split(',')).map(str::trim) {
        if !t.is_empty() && !out.iter().any(|o| o == t) {
            out.push(t.to_owned());
        }
    }
    out
}

/// The snapshot `spec` names (`latest` or an id prefix) among `entries`.
pub fn select<'a>(entries: &'a [SnapshotEntry], spec: &str, filter: &Filter) -> anyhow::Result<&'a SnapshotEntry> {
    snapshot::select(entries, spec, filter).map_err(|e| anyhow!(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_split_on_commas() {
        let v = vec!["a,b".to_owned(), " c ".to_owned(), "a".to_owned(), ",".to_owned()];
        assert_eq!(split_tags(&v), ["a", "b", "c"]);
    }
}
