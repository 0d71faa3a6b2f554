//! Where each event was when: commit, broker acknowledgement, handler. Plus
//! the two wrappers that let the in-process relay report acknowledgements
//! ([`TimedPublisher`]) and run without NOTIFY ([`PollingOnly`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use eventbus::relay::{ClaimLimits, Lease, Rejection, RelayStore, Retention, Snapshot};
use eventbus::transport::Delivered;
use eventbus::{OutboxRecord, OutgoingMessage, PublishError, Publisher};
use tokio::sync::Notify;
use uuid::Uuid;

/// Instants per event key, for one measured run.
#[derive(Debug, Default)]
pub(crate) struct Timeline {
    committed: Mutex<HashMap<Uuid, Instant>>,
    acked: Mutex<HashMap<Uuid, Instant>>,
    handled: Mutex<HashMap<Uuid, Instant>>,
    acked_count: AtomicU64,
    handled_count: AtomicU64,
}

fn first(map: &Mutex<HashMap<Uuid, Instant>>, key: Uuid, at: Instant) -> bool {
    // A duplicate delivery keeps the first instant.
    let mut map = map.lock().unwrap_or_else(PoisonError::into_inner);
    if map.contains_key(&key) {
        return false;
    }
    map.insert(key, at);
    true
}

/// Latencies from commit of the events that committed, in ms, and how many
/// of them never reached the later point.
#[derive(Debug, Default)]
pub(crate) struct Latencies {
    /// Commit → broker acknowledgement.
    pub(crate) ack: Vec<f64>,
    /// Committed events without an acknowledgement.
    pub(crate) ack_missing: usize,
    /// Commit → handler (or raw reader).
    pub(crate) handled: Vec<f64>,
    /// Committed events never handled.
    pub(crate) handled_missing: usize,
}

impl Timeline {
    /// Records that the transaction carrying `key` committed.
    pub(crate) fn commit(&self, key: Uuid) {
        first(&self.committed, key, Instant::now());
    }

    /// Records the broker's acknowledgement of `key`.
    pub(crate) fn ack(&self, key: Uuid) {
        if first(&self.acked, key, Instant::now()) {
            self.acked_count.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records that a handler (or reader) got `key`.
    pub(crate) fn handle(&self, key: Uuid) {
        if first(&self.handled, key, Instant::now()) {
            self.handled_count.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Distinct events acknowledged so far.
    pub(crate) fn acked(&self) -> u64 {
        self.acked_count.load(Ordering::Relaxed)
    }

    /// Distinct events handled so far.
    pub(crate) fn handled(&self) -> u64 {
        self.handled_count.load(Ordering::Relaxed)
    }

    /// Forgets everything (after a warm-up).
    pub(crate) fn clear(&self) {
        for map in [&self.committed, &self.acked, &self.handled] {
            map.lock().unwrap_or_else(PoisonError::into_inner).clear();
        }
        self.acked_count.store(0, Ordering::Relaxed);
        self.handled_count.store(0, Ordering::Relaxed);
    }

    /// The latencies of the committed events.
    pub(crate) fn latencies(&self) -> Latencies {
        let committed = self
            .committed
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let acked = self.acked.lock().unwrap_or_else(PoisonError::into_inner);
        let handled = self.handled.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out = Latencies::default();
        let ms = |later: Instant, earlier: Instant| -> f64 {
            later.saturating_duration_since(earlier).as_secs_f64() * 1e3
        };
        for (key, at) in committed.iter() {
            match acked.get(key) {
                Some(a) => out.ack.push(ms(*a, *at)),
                None => out.ack_missing += 1,
            }
            match handled.get(key) {
                Some(h) => out.handled.push(ms(*h, *at)),
                None => out.handled_missing += 1,
            }
        }
        out
    }
}

/// A publisher that records, for every acknowledged message, when the
/// acknowledgement came back (keyed by its partition key).
#[derive(Debug)]
pub(crate) struct TimedPublisher {
    inner: Arc<dyn Publisher>,
    timeline: Arc<Timeline>,
}

impl TimedPublisher {
    /// Wraps `inner`.
    pub(crate) fn new(inner: Arc<dyn Publisher>, timeline: Arc<Timeline>) -> Self {
        TimedPublisher { inner, timeline }
    }
}

#[async_trait::async_trait]
impl Publisher for TimedPublisher {
    fn system(&self) -> &'static str {
        self.inner.system()
    }

    async fn publish_batch(
        &self,
        messages: &[OutgoingMessage],
    ) -> Vec<Result<Delivered, PublishError>> {
        let results = self.inner.publish_batch(messages).await;
        for (message, result) in messages.iter().zip(&results) {
            if result.is_ok() {
                if let Some(key) = message
                    .envelope
                    .partition_key
                    .as_deref()
                    .and_then(|k| Uuid::parse_str(k).ok())
                {
                    self.timeline.ack(key);
                }
            }
        }
        results
    }

    async fn ensure_destination(&self, destination: &str) -> Result<(), PublishError> {
        self.inner.ensure_destination(destination).await
    }
}

/// A relay store that never hears NOTIFY: the relay finds work by polling only.
#[derive(Debug)]
pub(crate) struct PollingOnly(pub(crate) Arc<dyn RelayStore>);

#[async_trait::async_trait]
impl RelayStore for PollingOnly {
    async fn partitions(&self) -> eventbus::Result<Vec<i32>> {
        self.0.partitions().await
    }
    async fn heartbeat(
        &self,
        relay: Uuid,
        name: &str,
        dead_after: Duration,
    ) -> eventbus::Result<Vec<Uuid>> {
        self.0.heartbeat(relay, name, dead_after).await
    }
    async fn renew(
        &self,
        relay: Uuid,
        partitions: &[i32],
        ttl: Duration,
    ) -> eventbus::Result<Vec<Lease>> {
        self.0.renew(relay, partitions, ttl).await
    }
    async fn acquire(
        &self,
        relay: Uuid,
        partitions: &[i32],
        ttl: Duration,
    ) -> eventbus::Result<Vec<Lease>> {
        self.0.acquire(relay, partitions, ttl).await
    }
    async fn release(&self, relay: Uuid, partitions: &[i32]) -> eventbus::Result<()> {
        self.0.release(relay, partitions).await
    }
    async fn deregister(&self, relay: Uuid) -> eventbus::Result<()> {
        self.0.deregister(relay).await
    }
    async fn claim(
        &self,
        relay: Uuid,
        partitions: &[i32],
        limits: ClaimLimits,
        skip: &[i64],
    ) -> eventbus::Result<Vec<OutboxRecord>> {
        self.0.claim(relay, partitions, limits, skip).await
    }
    async fn acknowledge(
        &self,
        relay: Uuid,
        leases: &[Lease],
        ids: &[i64],
        retention: Retention,
    ) -> eventbus::Result<u64> {
        self.0.acknowledge(relay, leases, ids, retention).await
    }
    async fn reject(
        &self,
        relay: Uuid,
        leases: &[Lease],
        rejections: &[Rejection],
    ) -> eventbus::Result<()> {
        self.0.reject(relay, leases, rejections).await
    }
    async fn stats(&self, partitions: &[i32]) -> eventbus::Result<Snapshot> {
        self.0.stats(partitions).await
    }
    async fn delete_published(&self, keep: Duration, batch: i64) -> eventbus::Result<u64> {
        self.0.delete_published(keep, batch).await
    }
    async fn expired_published(&self, keep: Duration) -> eventbus::Result<u64> {
        self.0.expired_published(keep).await
    }
    async fn listen(&self, _notify: Arc<Notify>) -> eventbus::Result<()> {
        std::future::pending().await
    }
}
