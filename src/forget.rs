//! Retention: which snapshots a `forget` policy keeps and which it removes.
//!
//! The semantics are restic's (`internal/restic/snapshot_policy.go`, including the 0.17 rule that
//! keeps the oldest snapshot while a count is left), so a policy means the same in both tools.
//! Snapshots are grouped (by default by host and paths) and the policy is applied to each group
//! on its own, newest snapshot first:
//!
//! - `last N` keeps the N newest snapshots;
//! - `hourly/daily/weekly/monthly/yearly N` keep the newest snapshot of each of the N newest
//!   calendar hours/days/ISO weeks/months/years (in the given time zone) that have one; while a
//!   count is left when the oldest snapshot of the group is reached, that one is kept too;
//! - `within D` keeps every snapshot newer than D before the group's newest snapshot (not before
//!   now: a host that stopped backing up keeps its last snapshots however old they get);
//!   `within_daily D` etc. keep the newest snapshot of each day (...) in that window;
//! - `tags` keeps every snapshot carrying any of the tags.
//!
//! A snapshot is kept if any rule keeps it; the reasons are returned with it. A policy with no
//! rule is refused rather than read as "keep everything" or "remove everything".
//! [`remove_snapshots`] then deletes snapshot files, and nothing else: packs and index files
//! stay until prune.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use jiff::tz::TimeZone;
use jiff::{Span, Timestamp, ZonedDateTime};

use crate::backend::{Backend, FileType, Handle};
use crate::error::{Error, Result};
use crate::id::Id;
use crate::snapshot::{Snapshot, SnapshotEntry};

/// Which snapshots to keep. A count of 0 is the same as no count (as in restic).
#[derive(Clone, Debug, Default)]
pub struct KeepPolicy {
    /// Keep the newest N snapshots.
    pub last: Option<u32>,
    /// Keep the newest snapshot of each of the newest N hours that have one.
    pub hourly: Option<u32>,
    /// ... days.
    pub daily: Option<u32>,
    /// ... ISO weeks.
    pub weekly: Option<u32>,
    /// ... months.
    pub monthly: Option<u32>,
    /// ... years.
    pub yearly: Option<u32>,
    /// Keep every snapshot newer than this before the newest snapshot of its group.
    pub within: Option<Span>,
    /// Keep the newest snapshot of each hour within this span of the group's newest snapshot.
    pub within_hourly: Option<Span>,
    /// ... of each day.
    pub within_daily: Option<Span>,
    /// ... of each ISO week.
    pub within_weekly: Option<Span>,
    /// ... of each month.
    pub within_monthly: Option<Span>,
    /// ... of each year.
    pub within_yearly: Option<Span>,
    /// Keep every snapshot that carries any of these tags.
    pub tags: Vec<String>,
}

impl KeepPolicy {
    fn counts(&self) -> [(Bucket, u32); 6] {
        [
            (Bucket::Last, self.last.unwrap_or(0)),
            (Bucket::Hourly, self.hourly.unwrap_or(0)),
            (Bucket::Daily, self.daily.unwrap_or(0)),
            (Bucket::Weekly, self.weekly.unwrap_or(0)),
            (Bucket::Monthly, self.monthly.unwrap_or(0)),
            (Bucket::Yearly, self.yearly.unwrap_or(0)),
        ]
    }

    fn windows(&self) -> [(Bucket, Option<Span>); 5] {
        [
            (Bucket::Hourly, self.within_hourly),
            (Bucket::Daily, self.within_daily),
            (Bucket::Weekly, self.within_weekly),
            (Bucket::Monthly, self.within_monthly),
            (Bucket::Yearly, self.within_yearly),
        ]
    }

    fn spans(&self) -> impl Iterator<Item = Span> {
        std::iter::once(self.within).chain(self.windows().map(|(_, s)| s)).flatten()
    }

    /// Whether the policy has no rule at all (zero counts and zero spans count as none).
    pub fn is_empty(&self) -> bool {
        self.counts().iter().all(|(_, n)| *n == 0) && self.spans().all(|s| s.is_zero()) && self.tags.is_empty()
    }

    /// Checks the policy: it must have a rule, and no span may be negative.
    pub fn validate(&self) -> Result<()> {
        if self.is_empty() {
            return Err(Error::Invalid("no retention policy given: nothing says which snapshots to keep".into()));
        }
        if let Some(s) = self.spans().find(|s| s.is_negative()) {
            return Err(Error::Invalid(format!("retention span {} is negative", show_span(s))));
        }
        Ok(())
    }
}

impl fmt::Display for KeepPolicy {
    /// `keep 2 latest, 7 daily snapshots, all snapshots within 60d of the newest, ...`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        let counts: Vec<String> =
            self.counts().iter().filter(|(_, n)| *n > 0).map(|(b, n)| format!("{n} {}", b.describe())).collect();
        if !counts.is_empty() {
            parts.push(format!("{} snapshots", counts.join(", ")));
        }
        if let Some(s) = self.within.filter(|s| !s.is_zero()) {
            parts.push(format!("all snapshots within {} of the newest", show_span(s)));
        }
        for (b, s) in self.windows() {
            if let Some(s) = s.filter(|s| !s.is_zero()) {
                parts.push(format!("{} snapshots within {} of the newest", b.name(), show_span(s)));
            }
        }
        if !self.tags.is_empty() {
            parts.push(format!("all snapshots tagged {}", self.tags.join(" or ")));
        }
        if parts.is_empty() {
            return f.write_str("keep nothing (no rule)");
        }
        write!(f, "keep {}", parts.join(", "))
    }
}

/// Parses a retention span: `60d`, `2y`, `12h`, `6mo`, `2 weeks`, `1y 6mo` (jiff's friendly
/// format) or ISO 8601 (`P60D`). Minutes and smaller units are refused, because restic (and
/// habit) read `6m` as six months while the friendly format reads it as six minutes.
pub fn parse_span(s: &str) -> Result<Span> {
    let bad =
        |why: &str| Error::Invalid(format!("{s:?} is not a retention span ({why}); try \"60d\", \"2y\" or \"6mo\""));
    let span: Span = s.trim().parse().map_err(|e: jiff::Error| bad(&e.to_string()))?;
    if span.is_negative() {
        return Err(bad("it is negative"));
    }
    let small = span.get_minutes() != 0
        || span.get_seconds() != 0
        || span.get_milliseconds() != 0
        || span.get_microseconds() != 0
        || span.get_nanoseconds() != 0;
    if small {
        return Err(bad("units smaller than an hour are not allowed; months are `mo`"));
    }
    if span.is_zero() {
        return Err(bad("it is zero"));
    }
    Ok(span)
}

/// A span as users write it (`60d`, `1y 6mo`).
pub fn show_span(s: Span) -> String {
    format!("{s:#}")
}

/// What snapshots are grouped by before the policy is applied to each group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupBy {
    /// By host name.
    pub host: bool,
    /// By the set of backed-up paths.
    pub paths: bool,
    /// By the set of tags.
    pub tags: bool,
}

impl Default for GroupBy {
    /// Host and paths, as restic.
    fn default() -> Self {
        Self { host: true, paths: true, tags: false }
    }
}

impl FromStr for GroupBy {
    type Err = String;

    /// `host,paths,tags` in any subset and order (singulars accepted); empty for one group.
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        let mut g = Self { host: false, paths: false, tags: false };
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part {
                "host" | "hosts" => g.host = true,
                "path" | "paths" => g.paths = true,
                "tag" | "tags" => g.tags = true,
                other => return Err(format!("unknown grouping {other:?}: use host, paths and/or tags")),
            }
        }
        Ok(g)
    }
}

/// What the snapshots of one group share (`None` for what is not grouped by).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct GroupKey {
    /// The host, when grouping by host.
    pub host: Option<String>,
    /// The backed-up paths, sorted, when grouping by paths.
    pub paths: Option<Vec<String>>,
    /// The tags, sorted, when grouping by tags.
    pub tags: Option<Vec<String>>,
}

impl GroupKey {
    fn of(s: &Snapshot, by: GroupBy) -> Self {
        let sorted = |v: &[String]| {
            let mut v = v.to_vec();
            v.sort();
            v.dedup();
            v
        };
        Self {
            host: by.host.then(|| s.hostname.clone()),
            paths: by.paths.then(|| sorted(&s.paths)),
            tags: by.tags.then(|| sorted(&s.tags)),
        }
    }
}

impl fmt::Display for GroupKey {
    /// `host laptop, paths /home/me, tags (none)`, or `all snapshots` with no grouping.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |v: &[String]| if v.is_empty() { "(none)".to_owned() } else { v.join(", ") };
        let mut parts = Vec::new();
        if let Some(h) = &self.host {
            parts.push(format!("host {h}"));
        }
        if let Some(p) = &self.paths {
            parts.push(format!("paths {}", list(p)));
        }
        if let Some(t) = &self.tags {
            parts.push(format!("tags {}", list(t)));
        }
        if parts.is_empty() {
            return f.write_str("all snapshots");
        }
        f.write_str(&parts.join(", "))
    }
}

/// A snapshot the policy keeps, and why.
#[derive(Clone, Debug, PartialEq)]
pub struct Kept {
    /// The snapshot.
    pub entry: SnapshotEntry,
    /// Every rule that keeps it (`last 1`, `daily 3`, `within 60d`, `tag important`, ...).
    pub reasons: Vec<String>,
}

/// One group and the policy's verdict on it, newest snapshot first in both lists.
#[derive(Clone, Debug, PartialEq)]
pub struct Group {
    /// What the group's snapshots share.
    pub key: GroupKey,
    /// Snapshots to keep.
    pub keep: Vec<Kept>,
    /// Snapshots to remove.
    pub remove: Vec<SnapshotEntry>,
}

/// A calendar bucket (or, for `Last`, one bucket per snapshot).
#[derive(Clone, Copy, Debug)]
enum Bucket {
    Last,
    Hourly,
    Daily,
    Weekly,
    Monthly,
    Yearly,
}

impl Bucket {
    fn name(self) -> &'static str {
        match self {
            Self::Last => "last",
            Self::Hourly => "hourly",
            Self::Daily => "daily",
            Self::Weekly => "weekly",
            Self::Monthly => "monthly",
            Self::Yearly => "yearly",
        }
    }

    /// The name in a policy's description (`keep 2 latest, 7 daily snapshots`).
    fn describe(self) -> &'static str {
        match self {
            Self::Last => "latest",
            other => other.name(),
        }
    }

    /// The bucket `t` falls in; `nr` (the position, newest first) makes `Last` unique per snapshot.
    fn of(self, t: &ZonedDateTime, nr: usize) -> i64 {
        let (y, mo, d, h) = (i64::from(t.year()), i64::from(t.month()), i64::from(t.day()), i64::from(t.hour()));
        match self {
            Self::Last => nr as i64,
            Self::Hourly => ((y * 100 + mo) * 100 + d) * 100 + h,
            Self::Daily => (y * 100 + mo) * 100 + d,
            Self::Weekly => {
                let w = t.iso_week_date();
                i64::from(w.year()) * 100 + i64::from(w.week())
            }
            Self::Monthly => y * 100 + mo,
            Self::Yearly => y,
        }
    }
}

/// Splits `snapshots` into groups and applies `policy` to each. Calendar buckets and spans are
/// reckoned in `tz`; `now` only decides which snapshots are "in the future" (clock skew), and
/// those never count as a group's newest for `within` rules. Groups come sorted by key.
pub fn apply(
    policy: &KeepPolicy,
    snapshots: &[SnapshotEntry],
    now: Timestamp,
    tz: &TimeZone,
    group_by: GroupBy,
) -> Result<Vec<Group>> {
    policy.validate()?;
    let mut groups: BTreeMap<GroupKey, Vec<&SnapshotEntry>> = BTreeMap::new();
    for e in snapshots {
        groups.entry(GroupKey::of(&e.snapshot, group_by)).or_default().push(e);
    }
    Ok(groups
        .into_iter()
        .map(|(key, mut list)| {
            // Newest first; ties broken by id so the outcome does not depend on listing order.
            list.sort_by_key(|e| std::cmp::Reverse((e.snapshot.time_ns, e.id)));
            let (keep, remove) = apply_to_group(policy, &list, now, tz);
            tracing::debug!(group = %key, keep = keep.len(), remove = remove.len(), "retention applied");
            Group { key, keep, remove }
        })
        .collect())
}

/// The earliest time a `within` rule of `span` still keeps (exclusive), or `None` when every
/// snapshot is in the window (no past snapshot to measure from, or a span beyond the calendar).
fn window_start(latest: Option<&ZonedDateTime>, span: Span) -> Option<Timestamp> {
    latest.and_then(|l| l.checked_sub(span).ok()).map(|z| z.timestamp())
}

fn in_window(start: Option<Timestamp>, t: Timestamp) -> bool {
    start.is_none_or(|s| t > s)
}

/// restic's `ApplyPolicy` on one group sorted newest first.
fn apply_to_group(
    policy: &KeepPolicy,
    list: &[&SnapshotEntry],
    now: Timestamp,
    tz: &TimeZone,
) -> (Vec<Kept>, Vec<SnapshotEntry>) {
    let latest =
        list.iter().map(|e| e.snapshot.time()).filter(|t| *t < now).max().map(|t| t.to_zoned_datetime(tz.clone()));
    let within = policy.within.filter(|s| !s.is_zero()).map(|s| (s, window_start(latest.as_ref(), s)));

    struct Count {
        bucket: Bucket,
        left: u32,
        used: u32,
        last: Option<i64>,
    }
    let mut counts: Vec<Count> = policy
        .counts()
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(bucket, left)| Count { bucket, left, used: 0, last: None })
        .collect();

    struct Window {
        bucket: Bucket,
        span: Span,
        start: Option<Timestamp>,
        last: Option<i64>,
    }
    let mut windows: Vec<Window> = policy
        .windows()
        .into_iter()
        .filter_map(|(bucket, span)| span.filter(|s| !s.is_zero()).map(|s| (bucket, s)))
        .map(|(bucket, span)| Window { bucket, span, start: window_start(latest.as_ref(), span), last: None })
        .collect();

    let mut keep = Vec::new();
    let mut remove = Vec::new();
    for (nr, e) in list.iter().enumerate() {
        let t = e.snapshot.time();
        let zoned = t.to_zoned_datetime(tz.clone());
        let oldest = nr + 1 == list.len();
        let mut reasons = Vec::new();
        for tag in &policy.tags {
            if e.snapshot.tags.contains(tag) {
                reasons.push(format!("tag {tag}"));
            }
        }
        if let Some((span, start)) = within
            && in_window(start, t)
        {
            reasons.push(format!("within {}", show_span(span)));
        }
        for c in counts.iter_mut().filter(|c| c.left > 0) {
            let val = c.bucket.of(&zoned, nr);
            let new_bucket = c.last != Some(val);
            // restic keeps the oldest snapshot while a count is left, to keep the longest
            // history the counts allow (restic #3624).
            if new_bucket || oldest {
                c.left -= 1;
                c.used += 1;
                c.last = Some(val);
                let suffix = if new_bucket { "" } else { " (oldest)" };
                reasons.push(format!("{} {}{suffix}", c.bucket.name(), c.used));
            }
        }
        for w in windows.iter_mut() {
            if in_window(w.start, t) {
                let val = w.bucket.of(&zoned, nr);
                if w.last != Some(val) {
                    w.last = Some(val);
                    reasons.push(format!("{} within {}", w.bucket.name(), show_span(w.span)));
                }
            }
        }
        if reasons.is_empty() {
            remove.push((*e).clone());
        } else {
            keep.push(Kept { entry: (*e).clone(), reasons });
        }
    }
    (keep, remove)
}

/// Deletes the snapshot files of `entries`, one by one, and returns what happened to each, in
/// order. A failure stops nothing: the rest are still tried. A file already gone counts as
/// removed (another `forget` got there first). Only snapshot files are touched.
pub async fn remove_snapshots(backend: &dyn Backend, entries: &[SnapshotEntry]) -> Vec<(Id, Result<()>)> {
    let mut out = Vec::with_capacity(entries.len());
    for e in entries {
        let outcome = match backend.delete(&Handle::new(FileType::Snapshot, e.id.to_hex())).await {
            Ok(()) => {
                tracing::info!("removed snapshot {}", e.id);
                Ok(())
            }
            Err(err) if err.is_not_found() => {
                tracing::info!("snapshot {} was already removed", e.id);
                Ok(())
            }
            Err(err) => {
                tracing::warn!("removing snapshot {}: {err}", e.id);
                Err(Error::from(err))
            }
        };
        out.push((e.id, outcome));
    }
    out
}

#[cfg(test)]
mod tests {
    //! Table-driven tests in the manner of restic's `snapshot_policy_test.go`: one fixed list of
    //! snapshots and, per policy, the kept set written out by hand (never computed by the code
    //! under test). All times are UTC and the zone is UTC, so the calendar is unambiguous.

    use super::*;
    use crate::snapshot::Summary;

    /// The fixture: (time in UTC, tags). Index = position in this list; ids are derived from it.
    /// Newest first. 2023-12-31 is a Sunday (ISO week 2023-W52); 2024-01-01 a Monday (2024-W01).
    const TIMES: &[(&str, &[&str])] = &[
        ("2025-06-30T12:00:00Z", &[]),              // 0  Mon, W27
        ("2025-06-30T10:30:00Z", &[]),              // 1  same day, other hour
        ("2025-06-30T10:05:00Z", &[]),              // 2  same hour as 1
        ("2025-06-29T23:00:00Z", &[]),              // 3  Sun, W26
        ("2025-06-28T08:00:00Z", &["important"]),   // 4  Sat, W26
        ("2025-06-27T08:00:00Z", &[]),              // 5  Fri
        ("2025-06-26T08:00:00Z", &[]),              // 6  Thu
        ("2025-06-25T08:00:00Z", &[]),              // 7  Wed
        ("2025-06-24T08:00:00Z", &[]),              // 8  Tue
        ("2025-06-23T08:00:00Z", &[]),              // 9  Mon, W26
        ("2025-06-20T08:00:00Z", &[]),              // 10 Fri, W25
        ("2025-06-13T08:00:00Z", &[]),              // 11 W24
        ("2025-06-01T08:00:00Z", &[]),              // 12 Sun, W22
        ("2025-05-31T08:00:00Z", &[]),              // 13 Sat, W22, May
        ("2025-05-01T08:00:00Z", &["important"]),   // 14 May
        ("2025-04-30T08:00:00Z", &[]),              // 15 Apr
        ("2025-04-15T08:00:00Z", &[]),              // 16 Apr
        ("2025-03-10T08:00:00Z", &[]),              // 17 Mar
        ("2025-02-10T08:00:00Z", &[]),              // 18 Feb
        ("2025-01-15T08:00:00Z", &[]),              // 19 Jan 2025
        ("2024-12-31T08:00:00Z", &[]),              // 20 Dec 2024, ISO 2025-W01
        ("2024-11-20T08:00:00Z", &[]),              // 21 Nov
        ("2024-09-05T08:00:00Z", &["important"]),   // 22 Sep
        ("2024-07-04T08:00:00Z", &[]),              // 23 Jul
        ("2024-03-01T08:00:00Z", &[]),              // 24 Mar
        ("2024-01-01T08:00:00Z", &[]),              // 25 Jan 2024, W01
        ("2023-12-31T20:00:00Z", &[]),              // 26 Dec 2023, W52
        ("2023-09-01T08:00:00Z", &[]),              // 27 Sep 2023
        ("2023-07-15T08:00:00Z", &[]),              // 28 Jul 2023
        ("2023-07-01T08:00:00Z", &["weekly", "x"]), // 29 Jul 2023, oldest
    ];

    fn id(i: usize) -> Id {
        let mut b = [0u8; 32];
        b[0] = i as u8;
        Id(b)
    }

    fn entry(i: usize, time: &str, host: &str, tags: &[&str]) -> SnapshotEntry {
        let t: Timestamp = time.parse().unwrap();
        SnapshotEntry {
            id: id(i),
            snapshot: Snapshot {
                time_ns: t.as_nanosecond() as i64,
                tree: Id([1; 32]),
                paths: vec!["/data".into()],
                hostname: host.into(),
                username: "u".into(),
                tags: tags.iter().map(|t| t.to_string()).collect(),
                parent: None,
                program: "s3bk test".into(),
                incomplete: false,
                summary: Summary::default(),
                original: None,
            },
        }
    }

    /// The fixture, oldest first (as `Repository::snapshots` returns them), to show the input
    /// order does not matter.
    fn fixture() -> Vec<SnapshotEntry> {
        TIMES.iter().enumerate().rev().map(|(i, (t, tags))| entry(i, t, "h", tags)).collect()
    }

    fn now() -> Timestamp {
        "2025-07-01T00:00:00Z".parse().unwrap()
    }

    /// Applies `p` to the fixture as one group; returns the kept indexes, newest first.
    fn kept(p: &KeepPolicy) -> Vec<usize> {
        let groups = apply(p, &fixture(), now(), &TimeZone::UTC, GroupBy::default()).unwrap();
        assert_eq!(groups.len(), 1);
        let g = &groups[0];
        assert_eq!(g.keep.len() + g.remove.len(), TIMES.len(), "every snapshot is kept or removed");
        g.keep.iter().map(|k| k.entry.id.0[0] as usize).collect()
    }

    fn span(s: &str) -> Option<Span> {
        Some(parse_span(s).unwrap())
    }

    #[test]
    fn policies_keep_exactly_the_expected_snapshots() {
        let p = KeepPolicy::default;
        let cases: Vec<(&str, KeepPolicy, Vec<usize>)> = vec![
            ("last 3", KeepPolicy { last: Some(3), ..p() }, vec![0, 1, 2]),
            ("last 100 keeps all", KeepPolicy { last: Some(100), ..p() }, (0..TIMES.len()).collect()),
            // 2 shares hour 10 with 1; the fifth hour is 5's (06-27 08h).
            ("hourly 5", KeepPolicy { hourly: Some(5), ..p() }, vec![0, 1, 3, 4, 5]),
            // 1 and 2 share 0's day.
            ("daily 7", KeepPolicy { daily: Some(7), ..p() }, vec![0, 3, 4, 5, 6, 7, 8]),
            // W27 (0), W26 (3), W25 (10), W24 (11).
            ("weekly 4", KeepPolicy { weekly: Some(4), ..p() }, vec![0, 3, 10, 11]),
            // Jun 25, May, Apr, Mar, Feb, Jan 25, Dec 24, Nov, Sep, Jul 24, Mar 24, Jan 24.
            (
                "monthly 12",
                KeepPolicy { monthly: Some(12), ..p() },
                vec![0, 13, 15, 17, 18, 19, 20, 21, 22, 23, 24, 25],
            ),
            ("yearly 2", KeepPolicy { yearly: Some(2), ..p() }, vec![0, 20]),
            // Three years in the list and a count left: the oldest is kept, as restic does.
            ("yearly 5", KeepPolicy { yearly: Some(5), ..p() }, vec![0, 20, 26, 29]),
            // Counts left when the oldest is reached keep it even in an already-kept bucket.
            ("monthly 100", KeepPolicy { monthly: Some(100), ..p() }, {
                vec![0, 13, 15, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29]
            }),
            // Newest is 0 (06-30 12:00): strictly after 05-01 12:00 keeps 0..=13, not 14 (08:00).
            ("within 60d", KeepPolicy { within: span("60d"), ..p() }, (0..=13).collect()),
            // Calendar months: 2 months before 06-30 12:00 is 04-30 12:00.
            ("within 2mo", KeepPolicy { within: span("2mo"), ..p() }, (0..=14).collect()),
            // 1 year before 2025-06-30 12:00 is 2024-06-30 12:00: 23 (Jul 4) in, 24 out.
            ("within 1y", KeepPolicy { within: span("1y"), ..p() }, (0..=23).collect()),
            (
                "daily 7 + weekly 4 + monthly 6",
                KeepPolicy { daily: Some(7), weekly: Some(4), monthly: Some(6), ..p() },
                // daily: 0,3,4,5,6,7,8; weekly: 0,3,10,11; monthly: 0,13,15,17,18,19.
                vec![0, 3, 4, 5, 6, 7, 8, 10, 11, 13, 15, 17, 18, 19],
            ),
            ("keep-tag", KeepPolicy { tags: vec!["important".into()], ..p() }, vec![4, 14, 22]),
            ("keep-tag any of", KeepPolicy { tags: vec!["important".into(), "x".into()], ..p() }, vec![4, 14, 22, 29]),
            (
                "keep-tag + last 1",
                KeepPolicy { tags: vec!["important".into()], last: Some(1), ..p() },
                vec![0, 4, 14, 22],
            ),
            // Newest of each day within 3 days of 06-30 12:00 (after 06-27 12:00): 0, 3, 4.
            ("within-daily 3d", KeepPolicy { within_daily: span("3d"), ..p() }, vec![0, 3, 4]),
            // Newest of each month within 6 months (after 2024-12-30 12:00): Jun..Dec.
            ("within-monthly 6mo", KeepPolicy { within_monthly: span("6mo"), ..p() }, vec![0, 13, 15, 17, 18, 19, 20]),
            // Zero counts are no rule at all, so only the tag rule remains.
            ("zero counts ignored", KeepPolicy { last: Some(0), tags: vec!["x".into()], ..p() }, vec![29]),
        ];
        for (name, policy, want) in cases {
            assert_eq!(kept(&policy), want, "policy {name}: {policy}");
        }
    }

    #[test]
    fn reasons_name_every_rule_that_keeps() {
        let p = KeepPolicy {
            last: Some(1),
            daily: Some(2),
            within: span("1d"),
            tags: vec!["important".into()],
            ..Default::default()
        };
        let groups = apply(&p, &fixture(), now(), &TimeZone::UTC, GroupBy::default()).unwrap();
        let reasons: Vec<(usize, Vec<String>)> =
            groups[0].keep.iter().map(|k| (k.entry.id.0[0] as usize, k.reasons.clone())).collect();
        let r = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            reasons,
            vec![
                (0, r(&["within 1d", "last 1", "daily 1"])),
                (1, r(&["within 1d"])),
                (2, r(&["within 1d"])),
                (3, r(&["within 1d", "daily 2"])),
                (4, r(&["tag important"])),
                (14, r(&["tag important"])),
                (22, r(&["tag important"])),
            ]
        );
        let oldest = KeepPolicy { yearly: Some(5), ..Default::default() };
        let g = apply(&oldest, &fixture(), now(), &TimeZone::UTC, GroupBy::default()).unwrap();
        assert_eq!(g[0].keep.last().unwrap().reasons, ["yearly 4 (oldest)"]);
    }

    #[test]
    fn groups_by_host_apply_the_policy_to_each() {
        // Host a: indexes 0..=4; host b: 5..=9 (older). last 2 keeps two of each.
        let list: Vec<SnapshotEntry> = TIMES[..10]
            .iter()
            .enumerate()
            .map(|(i, (t, tags))| entry(i, t, if i < 5 { "a" } else { "b" }, tags))
            .collect();
        let p = KeepPolicy { last: Some(2), ..Default::default() };
        let groups = apply(&p, &list, now(), &TimeZone::UTC, GroupBy::default()).unwrap();
        let summary: Vec<(Option<String>, Vec<u8>, Vec<u8>)> = groups
            .iter()
            .map(|g| {
                (
                    g.key.host.clone(),
                    g.keep.iter().map(|k| k.entry.id.0[0]).collect(),
                    g.remove.iter().map(|e| e.id.0[0]).collect(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![(Some("a".into()), vec![0, 1], vec![2, 3, 4]), (Some("b".into()), vec![5, 6], vec![7, 8, 9])]
        );
        // within is measured from each group's own newest snapshot: b's 06-27 08:00.
        let w = KeepPolicy { within: span("2d"), ..Default::default() };
        let groups = apply(&w, &list, now(), &TimeZone::UTC, GroupBy::default()).unwrap();
        let kept: Vec<Vec<u8>> = groups.iter().map(|g| g.keep.iter().map(|k| k.entry.id.0[0]).collect()).collect();
        assert_eq!(kept, vec![vec![0, 1, 2, 3], vec![5, 6]]);
        // No grouping: one group, last 2 keeps 0 and 1 only.
        let none: GroupBy = "".parse().unwrap();
        let groups = apply(&p, &list, now(), &TimeZone::UTC, none).unwrap();
        assert_eq!(groups.len(), 1);
        assert_eq!(groups[0].key.to_string(), "all snapshots");
        assert_eq!(groups[0].keep.iter().map(|k| k.entry.id.0[0]).collect::<Vec<_>>(), [0, 1]);
        // By tags: the untagged ones and the `important` one are separate groups.
        let by_tags: GroupBy = "tags".parse().unwrap();
        let groups = apply(&p, &list, now(), &TimeZone::UTC, by_tags).unwrap();
        assert_eq!(groups.iter().map(|g| g.key.to_string()).collect::<Vec<_>>(), ["tags (none)", "tags important"]);
    }

    #[test]
    fn time_zone_moves_calendar_buckets() {
        // 2 (10:05Z) and 3 (06-29 23:00Z) in UTC+2: 3 is 06-30 01:00, the same day as 0, 1, 2.
        let tz = TimeZone::fixed(jiff::tz::Offset::constant(2));
        let p = KeepPolicy { daily: Some(2), ..Default::default() };
        let groups = apply(&p, &fixture(), now(), &tz, GroupBy::default()).unwrap();
        assert_eq!(groups[0].keep.iter().map(|k| k.entry.id.0[0]).collect::<Vec<_>>(), [0, 4]);
    }

    #[test]
    fn future_snapshots_do_not_move_the_window() {
        // A snapshot a year ahead (a wrong clock) must not push every real one out of `within`.
        let mut list = fixture();
        list.push(entry(99, "2026-07-01T00:00:00Z", "h", &[]));
        let p = KeepPolicy { within: span("1d"), ..Default::default() };
        let groups = apply(&p, &list, now(), &TimeZone::UTC, GroupBy::default()).unwrap();
        assert_eq!(groups[0].keep.iter().map(|k| k.entry.id.0[0]).collect::<Vec<_>>(), [99, 0, 1, 2, 3]);
    }

    #[test]
    fn empty_policy_and_bad_spans_are_refused() {
        let err = apply(&KeepPolicy::default(), &fixture(), now(), &TimeZone::UTC, GroupBy::default()).unwrap_err();
        assert!(err.to_string().contains("no retention policy"), "{err}");
        let zeros = KeepPolicy { last: Some(0), daily: Some(0), ..Default::default() };
        assert!(zeros.is_empty());
        assert!(apply(&zeros, &[], now(), &TimeZone::UTC, GroupBy::default()).is_err());
        let neg = KeepPolicy { within: Some(Span::new().days(-1)), ..Default::default() };
        assert!(neg.validate().unwrap_err().to_string().contains("negative"));
        for bad in ["", "soon", "6m", "90 minutes", "-5d", "0d", "1h30m"] {
            assert!(parse_span(bad).is_err(), "{bad:?} should be refused");
        }
        for (good, shown) in
            [("60d", "60d"), ("2y", "2y"), ("12h", "12h"), ("6mo", "6mo"), ("2 weeks", "2w"), ("P1Y2M", "1y 2mo")]
        {
            assert_eq!(show_span(parse_span(good).unwrap()), shown, "{good:?}");
        }
    }

    #[test]
    fn group_by_parses() {
        assert_eq!("host,paths".parse::<GroupBy>().unwrap(), GroupBy::default());
        assert_eq!("tags, host".parse::<GroupBy>().unwrap(), GroupBy { host: true, paths: false, tags: true });
        assert_eq!("".parse::<GroupBy>().unwrap(), GroupBy { host: false, paths: false, tags: false });
        assert!("hostname".parse::<GroupBy>().is_err());
    }

    #[test]
    fn policy_describes_itself() {
        let p = KeepPolicy {
            last: Some(2),
            daily: Some(7),
            within: span("60d"),
            tags: vec!["a".into()],
            ..Default::default()
        };
        assert_eq!(
            p.to_string(),
            "keep 2 latest, 7 daily snapshots, all snapshots within 60d of the newest, all snapshots tagged a"
        );
    }

    /// A memory backend whose `delete` fails for one object.
    #[derive(Debug)]
    struct FailingDelete {
        inner: crate::backend::MemoryBackend,
        fail: Handle,
    }

    #[async_trait::async_trait]
    impl Backend for FailingDelete {
        fn location(&self) -> String {
            self.inner.location()
        }
        fn connections(&self) -> usize {
            self.inner.connections()
        }
        async fn create(&self) -> Result<(), crate::backend::BackendError> {
            self.inner.create().await
        }
        async fn put(
            &self,
            h: &Handle,
            data: bytes::Bytes,
            mode: crate::backend::PutMode,
        ) -> Result<(), crate::backend::BackendError> {
            self.inner.put(h, data, mode).await
        }
        async fn get(
            &self,
            h: &Handle,
            range: Option<std::ops::Range<u64>>,
        ) -> Result<bytes::Bytes, crate::backend::BackendError> {
            self.inner.get(h, range).await
        }
        async fn stat(&self, h: &Handle) -> Result<crate::backend::FileInfo, crate::backend::BackendError> {
            self.inner.stat(h).await
        }
        async fn list(&self, tpe: FileType) -> Result<Vec<crate::backend::FileInfo>, crate::backend::BackendError> {
            self.inner.list(tpe).await
        }
        async fn delete(&self, h: &Handle) -> Result<(), crate::backend::BackendError> {
            if *h == self.fail {
                return Err(crate::backend::BackendError::Permanent {
                    context: format!("deleting {h}"),
                    source: "access denied".into(),
                });
            }
            self.inner.delete(h).await
        }
    }

    #[tokio::test]
    async fn removal_goes_on_past_a_failure_and_touches_only_snapshots() {
        let handle = |i: usize| Handle::new(FileType::Snapshot, id(i).to_hex());
        let backend = FailingDelete { inner: crate::backend::MemoryBackend::new(), fail: handle(1) };
        let pack = Handle::new(FileType::Pack, id(0).to_hex());
        for h in [handle(0), handle(1), handle(2), pack.clone()] {
            backend.put(&h, bytes::Bytes::from_static(b"x"), crate::backend::PutMode::CreateOnly).await.unwrap();
        }
        // 3 is not there at all (already removed by someone else): that is not a failure.
        let entries: Vec<SnapshotEntry> = (0..4).map(|i| entry(i, TIMES[i].0, "h", &[])).collect();
        let outcome = remove_snapshots(&backend, &entries).await;
        let summary: Vec<(u8, bool)> = outcome.iter().map(|(id, r)| (id.0[0], r.is_ok())).collect();
        assert_eq!(summary, [(0, true), (1, false), (2, true), (3, true)]);
        assert!(outcome[1].1.as_ref().unwrap_err().to_string().contains("access denied"));
        let left: Vec<Handle> = backend.list(FileType::Snapshot).await.unwrap().into_iter().map(|f| f.handle).collect();
        assert_eq!(left, [handle(1)]);
        assert!(backend.stat(&pack).await.is_ok(), "a pack was touched");
    }
}
