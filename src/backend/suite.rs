//! The backend conformance suite: one async function that drives any [`Backend`] through the
//! contract (round trips, ranges, listing, create-only races, not-found semantics) and returns
//! the first violation as an error message. Every backend's tests run it.
//!
//! It needs an empty location and leaves it empty (it deletes what it wrote, also on failure), so
//! it can run against a shared bucket prefix.
//!
//! How far a backend honours create-only puts is a parameter ([`CreateOnly`]): servers that
//! ignore conditional writes (Garage) skip the assertions that a create-only put refuses an
//! existing name, and servers that honour them but not atomically (moto) skip the race; the
//! capability probe must agree either way.

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use bytes::Bytes;

use super::{Backend, BackendError, FileType, Handle, PutMode};

/// Returns `Err(message)` from the enclosing function unless `cond` holds.
macro_rules! check {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}

/// How a backend treats [`PutMode::CreateOnly`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CreateOnly {
    /// Refuses an existing name, also when puts race (local, memory, Amazon S3).
    Atomic,
    /// Refuses an existing name one request at a time, but racing puts may both win (moto 5.2
    /// checks, then writes, without a lock).
    Sequential,
    /// Replaces the object (Garage 2.5 ignores `If-None-Match`).
    Ignored,
}

/// Runs the whole suite against `be`, which must be empty, expecting `create_only` behaviour
/// (the capability probe must agree). `Err` names the first violation.
pub async fn conformance(be: &dyn Backend, create_only: CreateOnly) -> Result<(), String> {
    let mut s = Suite { be, written: BTreeSet::new(), create_only };
    let result = s.run().await;
    let cleanup = s.cleanup().await;
    result.and(cleanup)
}

struct Suite<'a> {
    be: &'a dyn Backend,
    /// Everything the suite may have stored, for the final cleanup.
    written: BTreeSet<Handle>,
    /// How create-only puts behave.
    create_only: CreateOnly,
}

fn random_bytes(n: usize) -> Bytes {
    let mut buf = vec![0u8; n];
    rand::fill(&mut buf[..]);
    buf.into()
}

fn random_handle(tpe: FileType) -> Handle {
    if tpe == FileType::Config {
        return Handle::config();
    }
    let mut id = [0u8; 32];
    rand::fill(&mut id);
    Handle::new(tpe, hex::encode(id))
}

/// Describes how `got` differs from `want` without dumping megabytes into the message.
fn same_bytes(what: &str, got: &[u8], want: &[u8]) -> Result<(), String> {
    if got == want {
        return Ok(());
    }
    let first = got.iter().zip(want).position(|(a, b)| a != b);
    Err(format!(
        "{what}: got {} bytes, want {}; first difference at {}",
        got.len(),
        want.len(),
        first.map_or("the end of the shorter".to_owned(), |i| format!("byte {i}"))
    ))
}

/// Polls every future until all are done, so they are all in flight at once (the suite only gets
/// `&dyn Backend`, which cannot be moved into spawned tasks).
async fn join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, out) in futures.iter_mut().zip(outputs.iter_mut()) {
            if out.is_none() {
                match f.as_mut().poll(cx) {
                    Poll::Ready(v) => *out = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending { Poll::Pending } else { Poll::Ready(()) }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

impl Suite<'_> {
    async fn put(&mut self, h: &Handle, data: &Bytes, mode: PutMode) -> Result<(), String> {
        self.written.insert(h.clone());
        self.be
            .put(h, data.clone(), mode)
            .await
            .map_err(|e| format!("put {h} ({} bytes, {mode:?}) failed: {e}", data.len()))
    }

    /// Checks that `h` reads back as `want`, whole and by `stat`.
    async fn expect_content(&self, h: &Handle, want: &[u8]) -> Result<(), String> {
        let got = self.be.get(h, None).await.map_err(|e| format!("get {h} failed: {e}"))?;
        same_bytes(&format!("get {h}"), &got, want)?;
        let info = self.be.stat(h).await.map_err(|e| format!("stat {h} failed: {e}"))?;
        check!(&info.handle == h, "stat {h} reported handle {}", info.handle);
        check!(info.size == want.len() as u64, "stat {h}: size {}, want {}", info.size, want.len());
        Ok(())
    }

    /// Checks that a ranged get of an object holding `data` returns exactly the slice.
    async fn expect_range(&self, h: &Handle, data: &[u8], start: usize, end: usize) -> Result<(), String> {
        let range = start as u64..end as u64;
        let got =
            self.be.get(h, Some(range.clone())).await.map_err(|e| format!("get {h} range {range:?} failed: {e}"))?;
        same_bytes(&format!("get {h} range {range:?}"), &got, &data[start..end])
    }

    /// Checks that a ranged get not within an object of `len` bytes fails, and not as missing or
    /// retryable (retrying cannot make the object longer).
    async fn expect_bad_range(&self, h: &Handle, start: u64, end: u64) -> Result<(), String> {
        match self.be.get(h, Some(start..end)).await {
            Ok(b) => Err(format!("get {h} range {start}..{end} returned {} bytes, want an error", b.len())),
            Err(e) if e.is_not_found() || e.is_retryable() => {
                Err(format!("get {h} range {start}..{end}: want a permanent error, got {e}"))
            }
            Err(_) => Ok(()),
        }
    }

    async fn expect_not_found(&self, h: &Handle) -> Result<(), String> {
        match self.be.get(h, None).await {
            Ok(_) => return Err(format!("get {h}: found an object that should be missing")),
            Err(e) => check!(e.is_not_found(), "get {h} of a missing object: want NotFound, got {e}"),
        }
        match self.be.get(h, Some(0..1)).await {
            Ok(_) => {
                return Err(format!("ranged get {h}: found an object that should be missing"));
            }
            Err(e) => check!(e.is_not_found(), "ranged get {h} of a missing object: want NotFound, got {e}"),
        }
        match self.be.stat(h).await {
            Ok(_) => return Err(format!("stat {h}: found an object that should be missing")),
            Err(e) => check!(e.is_not_found(), "stat {h} of a missing object: want NotFound, got {e}"),
        }
        Ok(())
    }

    /// Checks that `list(tpe)` is exactly `want` (handle and size).
    async fn expect_list(&self, tpe: FileType, want: &[(&Handle, usize)]) -> Result<(), String> {
        let got: BTreeSet<(Handle, u64)> = self
            .be
            .list(tpe)
            .await
            .map_err(|e| format!("list {tpe:?} failed: {e}"))?
            .into_iter()
            .map(|i| (i.handle, i.size))
            .collect();
        let want: BTreeSet<(Handle, u64)> = want.iter().map(|(h, n)| ((*h).clone(), *n as u64)).collect();
        check!(got == want, "list {tpe:?}: got {got:?}, want {want:?}");
        Ok(())
    }

    async fn run(&mut self) -> Result<(), String> {
        let be = self.be;
        be.create().await.map_err(|e| format!("create failed: {e}"))?;
        be.create().await.map_err(|e| format!("create is not idempotent: second call failed: {e}"))?;
        for tpe in FileType::ALL {
            let found = be.list(tpe).await.map_err(|e| format!("list {tpe:?} failed: {e}"))?;
            check!(
                found.is_empty(),
                "the suite needs an empty backend, but {} has {} {tpe:?} object(s)",
                be.location(),
                found.len()
            );
        }

        // Round trips of every type. Before each type is written, listing it must find nothing
        // while the types before it are populated.
        let mut objects = Vec::new();
        for (i, tpe) in FileType::ALL.into_iter().enumerate() {
            self.expect_list(tpe, &[]).await?;
            // Two of each type (one config), so listing is checked with more than one entry.
            let count = if tpe == FileType::Config { 1 } else { 2 };
            let mine: Vec<(Handle, Bytes)> =
                (0..count).map(|j| (random_handle(tpe), random_bytes(1000 + 37 * i + j))).collect();
            for (h, data) in &mine {
                self.put(h, data, PutMode::CreateOnly).await?;
                self.expect_content(h, data).await?;
                let n = data.len();
                for (start, end) in [(0, 0), (5, 5), (10, 20), (0, n), (n - 7, n), (n, n)] {
                    self.expect_range(h, data, start, end).await?;
                }
                let n = n as u64;
                for (start, end) in [(n - 1, n + 1), (n + 1, n + 2), (0, n + 1)] {
                    self.expect_bad_range(h, start, end).await?;
                }
            }
            let want: Vec<(&Handle, usize)> = mine.iter().map(|(h, d)| (h, d.len())).collect();
            self.expect_list(tpe, &want).await?;
            objects.push(mine);
        }

        let probed = be.supports_create_only().await.map_err(|e| format!("capability probe failed: {e}"))?;
        check!(
            probed == (self.create_only != CreateOnly::Ignored),
            "the capability probe says create-only puts are {}honoured, the suite was told {:?}",
            if probed { "" } else { "not " },
            self.create_only
        );
        // The probe must not show in listings.
        for (tpe, mine) in FileType::ALL.into_iter().zip(&objects) {
            self.expect_list(tpe, &mine.iter().map(|(h, d)| (h, d.len())).collect::<Vec<_>>())
                .await
                .map_err(|e| format!("after the capability probe: {e}"))?;
        }

        // Create-only never replaces; overwrite does.
        for (h, old) in objects.iter().flatten().filter(|_| self.create_only != CreateOnly::Ignored) {
            match be.put(h, random_bytes(10), PutMode::CreateOnly).await {
                Ok(()) => return Err(format!("create-only put over existing {h} succeeded")),
                Err(BackendError::AlreadyExists(got)) => {
                    check!(&got == h, "create-only put over {h} reported AlreadyExists({got})")
                }
                Err(e) => {
                    return Err(format!("create-only put over existing {h}: want AlreadyExists, got {e}"));
                }
            }
            self.expect_content(h, old).await?;
        }
        for (h, _) in objects.iter().flatten() {
            let new = random_bytes(321);
            self.put(h, &new, PutMode::Overwrite).await?;
            self.expect_content(h, &new).await?;
        }
        // Overwrite also creates.
        let fresh = random_handle(FileType::Lock);
        let data = random_bytes(99);
        self.put(&fresh, &data, PutMode::Overwrite).await?;
        self.expect_content(&fresh, &data).await?;

        // Missing objects, and deletion.
        for tpe in FileType::ALL.into_iter().filter(|t| *t != FileType::Config) {
            let h = random_handle(tpe);
            self.expect_not_found(&h).await?;
            match be.delete(&h).await {
                Ok(()) => return Err(format!("delete of missing {h} succeeded")),
                Err(e) => check!(e.is_not_found(), "delete of missing {h}: want NotFound, got {e}"),
            }
        }
        for (h, _) in objects.iter().flatten() {
            be.delete(h).await.map_err(|e| format!("delete {h} failed: {e}"))?;
            self.expect_not_found(h).await?;
            match be.delete(h).await {
                Ok(()) => return Err(format!("second delete of {h} succeeded")),
                Err(e) => check!(e.is_not_found(), "second delete of {h}: want NotFound, got {e}"),
            }
        }
        for tpe in FileType::ALL.into_iter().filter(|t| *t != FileType::Lock) {
            self.expect_list(tpe, &[]).await?;
        }
        self.expect_list(FileType::Lock, &[(&fresh, data.len())]).await?;
        be.delete(&fresh).await.map_err(|e| format!("delete {fresh} failed: {e}"))?;

        // Edge sizes: empty and multi-megabyte.
        let empty = random_handle(FileType::Snapshot);
        self.put(&empty, &Bytes::new(), PutMode::CreateOnly).await?;
        self.expect_content(&empty, &[]).await?;
        self.expect_range(&empty, &[], 0, 0).await?;
        self.expect_bad_range(&empty, 0, 1).await?;
        self.expect_list(FileType::Snapshot, &[(&empty, 0)]).await?;

        let big = random_handle(FileType::Pack);
        let data = random_bytes(5 * 1024 * 1024 + 123);
        self.put(&big, &data, PutMode::CreateOnly).await?;
        self.expect_content(&big, &data).await?;
        self.expect_range(&big, &data, 3 << 20, (4 << 20) + 17).await?;
        self.expect_range(&big, &data, data.len() - 4096, data.len()).await?;
        self.expect_list(FileType::Pack, &[(&big, data.len())]).await?;

        if self.create_only != CreateOnly::Atomic {
            return Ok(());
        }
        // Racing create-only puts: exactly one wins and its content is what is stored.
        let contested = random_handle(FileType::Lock);
        let contents: Vec<Bytes> = (0..16).map(|i| random_bytes(64 * 1024 + i)).collect();
        self.written.insert(contested.clone());
        let results =
            join_all(contents.iter().map(|d| be.put(&contested, d.clone(), PutMode::CreateOnly)).collect()).await;
        let mut winners = Vec::new();
        for (i, r) in results.into_iter().enumerate() {
            match r {
                Ok(()) => winners.push(i),
                Err(BackendError::AlreadyExists(_)) => {}
                Err(e) => {
                    return Err(format!(
                        "racing create-only put #{i} of {contested}: want success or AlreadyExists, got {e}"
                    ));
                }
            }
        }
        check!(
            winners.len() == 1,
            "16 racing create-only puts of {contested}: {} succeeded (#{winners:?}), want exactly 1",
            winners.len()
        );
        self.expect_content(&contested, &contents[winners[0]]).await?;
        Ok(())
    }

    /// Deletes everything the suite may have written and checks the backend is empty again.
    async fn cleanup(&mut self) -> Result<(), String> {
        let mut first_err = None;
        for h in std::mem::take(&mut self.written) {
            match self.be.delete(&h).await {
                Ok(()) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => {
                    first_err.get_or_insert(format!("cleanup: delete {h} failed: {e}"));
                }
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        for tpe in FileType::ALL {
            self.expect_list(tpe, &[]).await.map_err(|e| format!("cleanup left objects behind: {e}"))?;
        }
        Ok(())
    }
}
