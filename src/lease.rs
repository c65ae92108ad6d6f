//! The maintenance lease (format §11.2): at most one prune or repair works on a repository at a
//! time, and one that loses its lease (expired, taken over, suspended past its deadline) stops
//! before its next deletion.
//!
//! The lease is a chain of generations `locks/1<g as 63 hex digits>`, each created create-only:
//! acquiring, renewing and releasing all write the next generation, so whoever creates a name
//! first wins, with no compare-and-swap on an existing object. On servers that ignore
//! `If-None-Match` (the capability probe failed) the holder also reads its generation back after a
//! pause. Creating a generation also measures the clock skew to the server, whose stamped
//! modification time must be within [`MAX_SKEW`] of the local clock.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::backend::{Backend, BackendError, FileType, Handle, PutMode};
use crate::crypto::Keys;
use crate::error::{Error, Result};
use crate::repo::{Repository, open_file, seal_file};

/// How far the local and the server's clock may differ before destructive work is refused.
pub const MAX_SKEW: Duration = Duration::from_secs(5 * 60);

/// The lease's timing: how long a generation is valid, how often it is renewed, and how much
/// validity must be left for [`Lease::check`] to pass.
#[derive(Clone, Copy, Debug)]
pub struct LeaseTimes {
    /// Validity of each generation.
    pub valid_for: Duration,
    /// Renewal interval.
    pub renew_every: Duration,
    /// Validity that must remain for work to go on.
    pub min_left: Duration,
    /// Pause before the read-back check on servers without atomic create-only.
    pub settle: Duration,
}

impl Default for LeaseTimes {
    fn default() -> Self {
        Self {
            valid_for: Duration::from_secs(10 * 60),
            renew_every: Duration::from_secs(2 * 60),
            min_left: Duration::from_secs(2 * 60),
            settle: Duration::from_secs(2),
        }
    }
}

/// One generation's content (sealed CBOR).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LeaseRecord {
    /// Random per holder run; tells the holder's generations from anyone else's.
    #[serde(with = "serde_bytes")]
    pub session: Vec<u8>,
    /// Holder's host name.
    pub host: String,
    /// Holder's user name.
    pub user: String,
    /// Holder's process id.
    pub pid: u32,
    /// What the holder does (`prune`, `repair index`).
    pub operation: String,
    /// When the generation was written (holder's clock, unix milliseconds).
    pub written_ms: u64,
    /// Until when it is valid (unix milliseconds).
    pub expires_ms: u64,
    /// Whether it ends the lease.
    pub released: bool,
}

impl LeaseRecord {
    /// Whether it still excludes others at `now_ms` (unix milliseconds).
    pub fn is_live(&self, now_ms: u64) -> bool {
        !self.released && self.expires_ms > now_ms
    }

    fn describe(&self) -> String {
        let until = jiff::Timestamp::from_millisecond(self.expires_ms as i64).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
        format!("{} by {}@{} (pid {}), valid until {until}", self.operation, self.user, self.host, self.pid)
    }
}

/// A held maintenance lease. Renewed in the background until released or dropped.
pub struct Lease {
    backend: Arc<dyn Backend>,
    keys: Arc<Keys>,
    level: i32,
    record: LeaseRecord,
    times: LeaseTimes,
    state: Arc<Mutex<State>>,
    renewer: tokio::task::JoinHandle<()>,
    exclusive: bool,
}

/// What the renewal task and [`Lease::check`] share.
#[derive(Debug)]
struct State {
    generation: u64,
    /// Valid until (monotonic clock; does not advance while the machine sleeps).
    until: Instant,
    /// Valid until (wall clock; does).
    until_wall: SystemTime,
    lost: Option<String>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease").field("record", &self.record).field("state", &self.state).finish()
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// The object name of generation `g`.
pub fn generation_name(g: u64) -> String {
    format!("1{g:063x}")
}

/// The generation a lock-object name stands for; `None` for other names (the capability probe).
pub fn parse_generation(name: &str) -> Option<u64> {
    let digits = name.strip_prefix('1')?;
    let significant = digits.trim_start_matches('0');
    if digits.len() != 63 || significant.len() > 16 {
        return None;
    }
    if significant.is_empty() { None } else { u64::from_str_radix(significant, 16).ok() }
}

/// The current state of the chain: every generation present, the highest one's record.
#[derive(Debug)]
pub struct Chain {
    /// Generations present, ascending.
    pub generations: Vec<u64>,
    /// The highest generation and its record, if any; `Err` text when it cannot be read.
    pub top: Option<(u64, std::result::Result<LeaseRecord, String>)>,
}

impl Chain {
    /// Reads the chain from `locks/`.
    pub async fn read(backend: &dyn Backend, keys: &Keys) -> Result<Self> {
        let mut generations: Vec<u64> =
            backend.list(FileType::Lock).await?.iter().filter_map(|f| parse_generation(&f.handle.name)).collect();
        generations.sort_unstable();
        let top = match generations.last() {
            None => None,
            Some(&g) => Some((g, read_record(backend, keys, g).await?)),
        };
        Ok(Self { generations, top })
    }

    /// The highest generation number (0 without any).
    pub fn top_generation(&self) -> u64 {
        self.top.as_ref().map_or(0, |(g, _)| *g)
    }

    /// Why the chain keeps a newcomer out at `now`, if it does.
    fn blocker(&self, now: u64) -> Option<String> {
        match &self.top {
            Some((_, Ok(r))) if r.is_live(now) => Some(format!("maintenance is running: {}", r.describe())),
            Some((g, Err(why))) => Some(format!(
                "lease generation {} cannot be read ({why}); if no maintenance is running, run `s3bk unlock --force`",
                generation_name(*g)
            )),
            _ => None,
        }
    }
}

/// Reads one generation; a missing one is reported like an unreadable one (it was just there).
async fn read_record(backend: &dyn Backend, keys: &Keys, g: u64) -> Result<std::result::Result<LeaseRecord, String>> {
    let h = Handle::new(FileType::Lock, generation_name(g));
    let stored = match backend.get(&h, None).await {
        Ok(b) => b,
        Err(e) if e.is_not_found() => return Ok(Err("it vanished while being read".into())),
        Err(e) => return Err(e.into()),
    };
    if stored.len() > 64 * 1024 {
        return Ok(Err("larger than any lease".into()));
    }
    Ok(open_file(keys, &stored, &h.to_string())
        .map_err(|e| e.to_string())
        .and_then(|plain| crate::codec::from_cbor::<LeaseRecord>(&plain)))
}

impl Lease {
    /// Acquires the lease for `operation` with the default timing.
    pub async fn acquire(repo: &Repository, operation: &str) -> Result<Lease> {
        Self::acquire_with(repo, operation, LeaseTimes::default()).await
    }

    /// Acquires the lease for `operation`: [`Error::Locked`] when another run holds it (or won
    /// the race for it), [`Error::ClockSkew`] when the server's clock is too far from ours.
    pub async fn acquire_with(repo: &Repository, operation: &str, times: LeaseTimes) -> Result<Lease> {
        let backend = repo.backend().clone();
        let keys = repo.keys().clone();
        let level = repo.config().compression;
        let exclusive = repo.create_only_supported();
        let chain = Chain::read(&*backend, &keys).await?;
        if let Some(why) = chain.blocker(unix_ms(SystemTime::now())) {
            return Err(Error::Locked(why));
        }
        let mut session = vec![0u8; 16];
        rand::fill(&mut session[..]);
        let record = LeaseRecord {
            session,
            host: crate::host::hostname(),
            user: crate::host::username(),
            pid: std::process::id(),
            operation: operation.to_owned(),
            written_ms: 0,
            expires_ms: 0,
            released: false,
        };
        let generation = chain.top_generation() + 1;
        let (until, until_wall) = match write_generation(&*backend, &keys, level, &record, generation, &times).await {
            Ok(v) => v,
            Err(Error::Backend(BackendError::AlreadyExists(_))) => {
                return Err(Error::Locked("another maintenance run took the lease at the same moment".into()));
            }
            Err(e) => return Err(e),
        };
        let state = Arc::new(Mutex::new(State { generation, until, until_wall, lost: None }));
        let renewer = tokio::spawn(renew(backend.clone(), keys.clone(), level, record.clone(), times, state.clone()));
        let lease = Lease { backend, keys, level, record, times, state, renewer, exclusive };
        if let Err(e) = lease.confirm(generation).await {
            let _ = lease.release().await;
            return Err(e);
        }
        Ok(lease)
    }

    /// After creating `generation`: the read-back check where create-only is not atomic, and the
    /// clock-skew check against the time the server stamped on it.
    async fn confirm(&self, generation: u64) -> Result<()> {
        let h = Handle::new(FileType::Lock, generation_name(generation));
        if !self.exclusive {
            tracing::warn!("this server ignores conditional writes; the maintenance lease relies on a read-back check");
            tokio::time::sleep(self.times.settle).await;
            let chain = Chain::read(&*self.backend, &self.keys).await?;
            let mine = matches!(&chain.top, Some((g, Ok(r))) if *g == generation && r.session == self.record.session);
            let ours = read_record(&*self.backend, &self.keys, generation).await?;
            if !mine || !matches!(&ours, Ok(r) if r.session == self.record.session) {
                return Err(Error::Locked("another maintenance run took the lease at the same moment".into()));
            }
        }
        let written = SystemTime::now();
        if let Some(server) = self.backend.stat(&h).await?.modified {
            let skew = match written.duration_since(server) {
                Ok(d) => d,
                Err(e) => e.duration(),
            };
            // The stat ran after the write, so "server behind" includes the request's latency.
            if skew > MAX_SKEW {
                return Err(Error::ClockSkew { seconds: skew.as_secs() });
            }
        }
        Ok(())
    }

    /// Ok while the lease is held with at least `min_left` of validity on both the monotonic and
    /// the wall clock; call before every deletion.
    pub fn check(&self) -> Result<()> {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(why) = &s.lost {
            return Err(Error::Locked(format!("the maintenance lease was lost: {why}")));
        }
        let left = s.until.saturating_duration_since(Instant::now());
        let left_wall = s.until_wall.duration_since(SystemTime::now()).unwrap_or_default();
        if left.min(left_wall) < self.times.min_left {
            return Err(Error::Locked(
                "the maintenance lease could not be renewed in time (suspended or offline?); stopping before the next deletion".into(),
            ));
        }
        Ok(())
    }

    /// Whether the lease excludes others atomically (false on servers that ignore
    /// `If-None-Match`, where it relies on a read-back check).
    pub fn exclusive(&self) -> bool {
        self.exclusive
    }

    /// Ends the lease: a released generation, then the older generations deleted (best effort).
    /// A lease already lost to another run is left to its new holder.
    pub async fn release(self) -> Result<()> {
        self.renewer.abort();
        let released = LeaseRecord { released: true, ..self.record.clone() };
        // A renewal cut off by the abort may still land, taking the name we would have used.
        for _ in 0..3 {
            let chain = Chain::read(&*self.backend, &self.keys).await?;
            let Some((top, Ok(record))) = &chain.top else { return Ok(()) };
            if record.session != self.record.session {
                return Ok(());
            }
            match write_generation(&*self.backend, &self.keys, self.level, &released, top + 1, &self.times).await {
                Ok(_) => {
                    remove_below(&*self.backend, top + 1).await;
                    return Ok(());
                }
                Err(Error::Backend(BackendError::AlreadyExists(_))) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(Error::Locked("could not release the maintenance lease; it expires by itself".into()))
    }
}

impl Drop for Lease {
    /// A lease dropped without [`Lease::release`] (an error path) stops renewing and expires.
    fn drop(&mut self) {
        self.renewer.abort();
    }
}

/// Writes generation `g` of `record` (create-only) valid for `times.valid_for` from now; returns
/// until when, by the monotonic and the wall clock, measured from before the write.
async fn write_generation(
    backend: &dyn Backend,
    keys: &Keys,
    level: i32,
    record: &LeaseRecord,
    g: u64,
    times: &LeaseTimes,
) -> Result<(Instant, SystemTime)> {
    let (start, start_wall) = (Instant::now(), SystemTime::now());
    let record = LeaseRecord {
        written_ms: unix_ms(start_wall),
        expires_ms: unix_ms(start_wall + times.valid_for),
        ..record.clone()
    };
    let sealed = seal_file(keys, &crate::codec::to_cbor(&record), level);
    backend.put(&Handle::new(FileType::Lock, generation_name(g)), sealed.into(), PutMode::CreateOnly).await?;
    Ok((start + times.valid_for, start_wall + times.valid_for))
}

/// Deletes every generation below `top` (they no longer mean anything), ignoring failures.
async fn remove_below(backend: &dyn Backend, top: u64) {
    let Ok(listed) = backend.list(FileType::Lock).await else { return };
    for f in listed {
        if parse_generation(&f.handle.name).is_some_and(|g| g < top)
            && let Err(e) = backend.delete(&f.handle).await
        {
            tracing::debug!("removing old lease generation {}: {e}", f.handle);
        }
    }
}

/// The background renewal: a new generation every `renew_every`. Losing a race for the next
/// name means someone else took over an expired lease; [`Lease::check`] then fails.
async fn renew(
    backend: Arc<dyn Backend>,
    keys: Arc<Keys>,
    level: i32,
    record: LeaseRecord,
    times: LeaseTimes,
    state: Arc<Mutex<State>>,
) {
    loop {
        tokio::time::sleep(times.renew_every).await;
        let next = state.lock().unwrap_or_else(|p| p.into_inner()).generation + 1;
        match write_generation(&*backend, &keys, level, &record, next, &times).await {
            Ok((until, until_wall)) => {
                let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
                (s.generation, s.until, s.until_wall) = (next, until, until_wall);
            }
            Err(Error::Backend(BackendError::AlreadyExists(_))) => {
                state.lock().unwrap_or_else(|p| p.into_inner()).lost =
                    Some("another run took it over after it expired".into());
                return;
            }
            // Transient trouble: try again next round; `check` fails if that is too late.
            Err(e) => tracing::warn!("renewing the maintenance lease: {e}"),
        }
    }
}

/// What [`unlock`] did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct UnlockReport {
    /// Old generations deleted.
    pub removed: usize,
    /// The live lease that was left alone (without `force`), described.
    pub live: Option<String>,
    /// Whether a live or unreadable lease was ended (with `force`).
    pub ended: bool,
}

/// Clears stale lease generations. A live (or unreadable) lease is ended only with `force`,
/// for a holder known to be dead.
pub async fn unlock(repo: &Repository, force: bool) -> Result<UnlockReport> {
    let backend = repo.backend();
    let keys = repo.keys();
    let chain = Chain::read(&**backend, keys).await?;
    let mut report = UnlockReport::default();
    let Some((top, _)) = &chain.top else { return Ok(report) };
    let mut top = *top;
    if let Some(why) = chain.blocker(unix_ms(SystemTime::now())) {
        if !force {
            report.live = Some(why);
        } else {
            let record = LeaseRecord {
                session: vec![0; 16],
                host: crate::host::hostname(),
                user: crate::host::username(),
                pid: std::process::id(),
                operation: "unlock --force".into(),
                written_ms: 0,
                expires_ms: 0,
                released: true,
            };
            write_generation(&**backend, keys, repo.config().compression, &record, top + 1, &LeaseTimes::default())
                .await?;
            top += 1;
            report.ended = true;
        }
    }
    report.removed = chain.generations.iter().filter(|g| **g < top).count();
    remove_below(&**backend, top).await;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_names_round_trip_and_skip_the_probe() {
        for g in [1, 2, 255, u64::MAX] {
            let name = generation_name(g);
            assert_eq!(name.len(), 64);
            assert!(crate::backend::valid_name(FileType::Lock, &name));
            assert_eq!(parse_generation(&name), Some(g));
        }
        assert_eq!(parse_generation(crate::backend::CREATE_ONLY_PROBE), None);
        assert_eq!(parse_generation(&format!("1{}", "0".repeat(63))), None);
        assert_eq!(parse_generation(&format!("1{}", "f".repeat(63))), None);
    }
}
