//! The maintenance lease (format §11.2): exclusion, expiry, renewal, takeover, release, unlock,
//! the read-back fallback for servers that ignore conditional writes, and the clock-skew check.

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use s3bk::backend::{Backend, BackendError, FileInfo, FileType, Handle, MemoryBackend, PutMode};
use s3bk::error::Error;
use s3bk::lease::{Lease, LeaseTimes, unlock};
use s3bk::repo::{Repository, Secret};

async fn repo_on(backend: Arc<dyn Backend>) -> Repository {
    Repository::init(backend, &Secret::passphrase("pw"), &common::cheap_init()).await.unwrap()
}

fn quick(valid_for_ms: u64, renew_every_ms: u64) -> LeaseTimes {
    LeaseTimes {
        valid_for: Duration::from_millis(valid_for_ms),
        renew_every: Duration::from_millis(renew_every_ms),
        min_left: Duration::from_millis(100),
        settle: Duration::from_millis(300),
    }
}

async fn lock_names(repo: &Repository) -> Vec<String> {
    let mut names: Vec<String> =
        repo.backend().list(FileType::Lock).await.unwrap().into_iter().map(|f| f.handle.name).collect();
    names.sort();
    names
}

#[tokio::test]
async fn one_holder_at_a_time_and_release_lets_the_next_in() {
    let repo = repo_on(Arc::new(MemoryBackend::new())).await;
    let a = Lease::acquire(&repo, "prune").await.unwrap();
    a.check().unwrap();
    let err = Lease::acquire(&repo, "repair index").await.unwrap_err();
    assert!(matches!(&err, Error::Locked(m) if m.contains("prune")), "{err}");
    a.release().await.unwrap();
    // Only the released generation is left.
    assert_eq!(lock_names(&repo).await.len(), 1);
    let b = Lease::acquire(&repo, "repair index").await.unwrap();
    b.release().await.unwrap();
}

#[tokio::test]
async fn an_expired_lease_blocks_nobody_and_its_holder_stops() {
    let repo = repo_on(Arc::new(MemoryBackend::new())).await;
    // Expires after 1 s and is never renewed in time (a holder that slept).
    let a = Lease::acquire_with(&repo, "prune", quick(1000, 3_600_000)).await.unwrap();
    a.check().unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(matches!(a.check(), Err(Error::Locked(_))), "an expired holder must stop");
    let b = Lease::acquire(&repo, "prune").await.unwrap();
    // Releasing the stale lease must not end the new holder's.
    a.release().await.unwrap();
    assert!(matches!(Lease::acquire(&repo, "prune").await, Err(Error::Locked(_))));
    b.release().await.unwrap();
}

#[tokio::test]
async fn renewal_keeps_the_lease_and_a_takeover_is_noticed() {
    let repo = repo_on(Arc::new(MemoryBackend::new())).await;
    let a = Lease::acquire_with(&repo, "prune", quick(1000, 300)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2000)).await;
    a.check().expect("renewed every 300 ms, so still valid after 2 s");
    assert!(matches!(Lease::acquire(&repo, "prune").await, Err(Error::Locked(_))));
    a.release().await.unwrap();

    // Renewing only after expiry: another run takes over, and the first one notices.
    let slow = Lease::acquire_with(&repo, "prune", quick(500, 1000)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let b = Lease::acquire(&repo, "prune").await.unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let err = slow.check().unwrap_err();
    assert!(err.to_string().contains("lost") || err.to_string().contains("renewed"), "{err}");
    b.check().unwrap();
    b.release().await.unwrap();
}

#[tokio::test]
async fn unlock_clears_stale_generations_and_ends_a_live_lease_only_with_force() {
    let repo = repo_on(Arc::new(MemoryBackend::new())).await;
    let a = Lease::acquire_with(&repo, "prune", quick(60_000, 100)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(450)).await;
    let before = lock_names(&repo).await.len();
    assert!(before >= 3, "renewals add generations: {before}");
    drop(a); // a crashed holder: no release

    let r = unlock(&repo, false).await.unwrap();
    assert!(r.live.as_deref().is_some_and(|m| m.contains("prune")), "{r:?}");
    assert!(!r.ended);
    assert_eq!(r.removed, before - 1, "every generation below the live one is stale");
    assert!(matches!(Lease::acquire(&repo, "prune").await, Err(Error::Locked(_))));

    let r = unlock(&repo, true).await.unwrap();
    assert!(r.ended && r.removed == 1, "{r:?}");
    assert_eq!(lock_names(&repo).await.len(), 1);
    Lease::acquire(&repo, "prune").await.unwrap().release().await.unwrap();
}

/// A server that ignores `If-None-Match` (like Garage) and optionally reports a skewed clock.
#[derive(Debug)]
struct Lax {
    inner: MemoryBackend,
    clock_offset: Duration,
}

#[async_trait]
impl Backend for Lax {
    fn location(&self) -> String {
        "lax".into()
    }
    fn connections(&self) -> usize {
        4
    }
    async fn create(&self) -> Result<(), BackendError> {
        self.inner.create().await
    }
    async fn supports_create_only(&self) -> Result<bool, BackendError> {
        Ok(false)
    }
    async fn put(&self, h: &Handle, data: Bytes, _: PutMode) -> Result<(), BackendError> {
        self.inner.put(h, data, PutMode::Overwrite).await
    }
    async fn get(&self, h: &Handle, range: Option<std::ops::Range<u64>>) -> Result<Bytes, BackendError> {
        self.inner.get(h, range).await
    }
    async fn stat(&self, h: &Handle) -> Result<FileInfo, BackendError> {
        let mut info = self.inner.stat(h).await?;
        info.modified = Some(SystemTime::now() - self.clock_offset);
        Ok(info)
    }
    async fn list(&self, tpe: FileType) -> Result<Vec<FileInfo>, BackendError> {
        self.inner.list(tpe).await
    }
    async fn delete(&self, h: &Handle) -> Result<(), BackendError> {
        self.inner.delete(h).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_atomic_create_only_the_read_back_lets_one_racer_win() {
    let backend: Arc<dyn Backend> = Arc::new(Lax { inner: MemoryBackend::new(), clock_offset: Duration::ZERO });
    let repo = Arc::new(repo_on(backend).await);
    assert!(!repo.create_only_supported());
    for _ in 0..5 {
        let racers: Vec<_> = (0..4)
            .map(|_| {
                let repo = repo.clone();
                tokio::spawn(async move { Lease::acquire_with(&repo, "prune", quick(60_000, 60_000)).await })
            })
            .collect();
        let mut winners = Vec::new();
        for r in racers {
            match r.await.unwrap() {
                Ok(lease) => winners.push(lease),
                Err(Error::Locked(_)) => {}
                Err(e) => panic!("{e}"),
            }
        }
        assert!(winners.len() <= 1, "{} racers hold the lease", winners.len());
        for w in winners {
            assert!(!w.exclusive());
            w.release().await.unwrap();
        }
    }
}

#[tokio::test]
async fn a_skewed_clock_is_refused_and_leaves_no_live_lease() {
    let backend: Arc<dyn Backend> =
        Arc::new(Lax { inner: MemoryBackend::new(), clock_offset: Duration::from_secs(10 * 60) });
    let repo = repo_on(backend).await;
    let err = Lease::acquire_with(&repo, "prune", quick(60_000, 60_000)).await.unwrap_err();
    assert!(matches!(err, Error::ClockSkew { seconds } if seconds >= 599), "{err}");
    assert!(unlock(&repo, false).await.unwrap().live.is_none(), "the refused lease must be released");
}
