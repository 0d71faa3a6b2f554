//! [`AckFailsOnce`]: a [`RelayStore`] around a real database's whose first
//! acknowledgement fails (without touching the rows), as a dropped
//! connection or a deadlock would make it fail, while everything else goes
//! through.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use eventbus::outbox::{OutboxRecord, ScheduledStats};
use eventbus::relay::{ClaimLimits, Lease, Rejection, RelayStore, Retention, Snapshot};
use tokio::sync::Notify;
use uuid::Uuid;

/// Fails the first [`acknowledge`](RelayStore::acknowledge) call; records
/// the ids it failed.
#[derive(Debug)]
pub struct AckFailsOnce {
    inner: Arc<dyn RelayStore>,
    failed: AtomicBool,
    failed_ids: Mutex<Vec<i64>>,
}

impl AckFailsOnce {
    /// Around `inner`.
    pub fn new(inner: Arc<dyn RelayStore>) -> Self {
        AckFailsOnce {
            inner,
            failed: AtomicBool::new(false),
            failed_ids: Mutex::new(Vec::new()),
        }
    }

    /// The ids of the acknowledgement that failed (empty if none did yet).
    pub fn failed_ids(&self) -> Vec<i64> {
        self.failed_ids
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

#[async_trait::async_trait]
impl RelayStore for AckFailsOnce {
    async fn partitions(&self) -> eventbus::Result<Vec<i32>> {
        self.inner.partitions().await
    }
    async fn heartbeat(
        &self,
        relay: Uuid,
        name: &str,
        dead: Duration,
    ) -> eventbus::Result<Vec<Uuid>> {
        self.inner.heartbeat(relay, name, dead).await
    }
    async fn renew(&self, relay: Uuid, ps: &[i32], ttl: Duration) -> eventbus::Result<Vec<Lease>> {
        self.inner.renew(relay, ps, ttl).await
    }
    async fn acquire(
        &self,
        relay: Uuid,
        ps: &[i32],
        ttl: Duration,
    ) -> eventbus::Result<Vec<Lease>> {
        self.inner.acquire(relay, ps, ttl).await
    }
    async fn release(&self, relay: Uuid, ps: &[i32]) -> eventbus::Result<()> {
        self.inner.release(relay, ps).await
    }
    async fn deregister(&self, relay: Uuid) -> eventbus::Result<()> {
        self.inner.deregister(relay).await
    }
    async fn claim(
        &self,
        relay: Uuid,
        ps: &[i32],
        limits: ClaimLimits,
        skip: &[i64],
    ) -> eventbus::Result<Vec<OutboxRecord>> {
        self.inner.claim(relay, ps, limits, skip).await
    }
    async fn acknowledge(
        &self,
        relay: Uuid,
        leases: &[Lease],
        ids: &[i64],
        retention: Retention,
    ) -> eventbus::Result<u64> {
        if !self.failed.swap(true, Ordering::SeqCst) {
            *self
                .failed_ids
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = ids.to_vec();
            return Err(eventbus::Error::Database(sqlx::Error::PoolTimedOut));
        }
        self.inner.acknowledge(relay, leases, ids, retention).await
    }
    async fn reject(&self, relay: Uuid, leases: &[Lease], r: &[Rejection]) -> eventbus::Result<()> {
        self.inner.reject(relay, leases, r).await
    }
    async fn stats(&self, ps: &[i32]) -> eventbus::Result<Snapshot> {
        self.inner.stats(ps).await
    }
    async fn delete_published(&self, keep: Duration, batch: i64) -> eventbus::Result<u64> {
        self.inner.delete_published(keep, batch).await
    }
    async fn expired_published(&self, keep: Duration) -> eventbus::Result<u64> {
        self.inner.expired_published(keep).await
    }
    async fn release_due(
        &self,
        now: chrono::DateTime<chrono::Utc>,
        limit: u32,
    ) -> eventbus::Result<u64> {
        self.inner.release_due(now, limit).await
    }
    async fn scheduled(&self) -> eventbus::Result<ScheduledStats> {
        self.inner.scheduled().await
    }
    async fn listen(&self, notify: Arc<Notify>) -> eventbus::Result<()> {
        self.inner.listen(notify).await
    }
}
