//! Output helpers shared by commands: JSON on stdout, sizes, times, modes and entry kinds as
//! shown to users. Commands decide what to print; this module decides how values look.

use std::io::Write;

use indicatif::HumanBytes;
use s3bk::tree::{Node, NodeKind};
use serde::Serialize;

/// Writes `value` as one line of JSON on stdout.
pub fn print_json(value: &impl Serialize) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, value)?;
    writeln!(out)?;
    out.flush()?;
    Ok(())
}

/// A byte count for humans (`1.50 MiB`).
pub fn bytes(n: u64) -> String {
    HumanBytes(n).to_string()
}

/// A time stamp from nanoseconds since the epoch (the epoch when out of range).
pub fn timestamp(ns: i64) -> jiff::Timestamp {
    jiff::Timestamp::from_nanosecond(i128::from(ns)).unwrap_or(jiff::Timestamp::UNIX_EPOCH)
}

/// A time in the local zone, to the second (`2025-01-31 14:05:09`).
pub fn local_time(t: jiff::Timestamp) -> String {
    t.to_zoned_datetime(jiff::tz::TimeZone::system()).strftime("%Y-%m-%d %H:%M:%S").to_string()
}

/// A time as RFC 3339 in UTC, for JSON.
pub fn rfc3339(t: jiff::Timestamp) -> String {
    t.to_string()
}

/// A path from the repository (raw bytes), lossily as text.
pub fn path_lossy(p: &[u8]) -> String {
    String::from_utf8_lossy(p).into_owned()
}

/// The name of an entry kind in listings and JSON.
pub fn kind_name(kind: NodeKind) -> &'static str {
    match kind {
        NodeKind::File => "file",
        NodeKind::Dir => "dir",
        NodeKind::Symlink => "symlink",
        NodeKind::Fifo => "fifo",
        NodeKind::Socket => "socket",
        NodeKind::CharDevice => "chardev",
        NodeKind::BlockDevice => "blockdev",
    }
}

/// `ls -l` style mode: `drwxr-xr-x`, with set-id and sticky bits.
pub fn mode_string(node: &Node) -> String {
    let kind = match node.kind {
        NodeKind::File => '-',
        NodeKind::Dir => 'd',
        NodeKind::Symlink => 'l',
        NodeKind::Fifo => 'p',
        NodeKind::Socket => 's',
        NodeKind::CharDevice => 'c',
        NodeKind::BlockDevice => 'b',
    };
    let m = node.mode;
    let bit = |mask: u32, c: char| if m & mask != 0 { c } else { '-' };
    let exec = |x: u32, special: u32, set: char| match (m & x != 0, m & special != 0) {
        (true, true) => set,
        (false, true) => set.to_ascii_uppercase(),
        (true, false) => 'x',
        (false, false) => '-',
    };
    [
        kind,
        bit(0o400, 'r'),
        bit(0o200, 'w'),
        exec(0o100, 0o4000, 's'),
        bit(0o040, 'r'),
        bit(0o020, 'w'),
        exec(0o010, 0o2000, 's'),
        bit(0o004, 'r'),
        bit(0o002, 'w'),
        exec(0o001, 0o1000, 't'),
    ]
    .into_iter()
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes() {
        let mut n = Node::new(b"x".to_vec(), NodeKind::Dir);
        n.mode = 0o755;
        assert_eq!(mode_string(&n), "drwxr-xr-x");
        n.kind = NodeKind::File;
        n.mode = 0o4644 | 0o1000;
        assert_eq!(mode_string(&n), "-rwSr--r-T");
    }

    #[test]
    fn times() {
        assert_eq!(rfc3339(timestamp(0)), "1970-01-01T00:00:00Z");
    }
}
