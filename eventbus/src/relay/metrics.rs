//! [`RelayMetrics`]: counters, gauges and histograms of a running relay,
//! rendered in the Prometheus text format for `/metrics`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::telemetry::{Exposition, Histogram, LATENCY_BUCKETS, SIZE_BUCKETS, WAIT_BUCKETS};

/// Live figures of one relay. Cheap to update from the hot path.
#[derive(Debug)]
pub struct RelayMetrics {
    published: AtomicU64,
    rejected: AtomicU64,
    parked: AtomicU64,
    /// Events dropped as unroutable, per broker-level destination.
    unroutable: Mutex<BTreeMap<String, u64>>,
    outages: AtomicU64,
    /// Batches abandoned mid-send because a lease lapsed.
    abandoned: AtomicU64,
    batches: AtomicU64,
    /// Retention: rows deleted, and expired rows not yet deleted.
    retention_deleted: AtomicU64,
    retention_backlog: AtomicU64,
    latency: Histogram,
    batch_size: Histogram,
    outbox_wait: Histogram,
    snapshot: Mutex<Snapshot>,
}

impl Default for RelayMetrics {
    fn default() -> Self {
        RelayMetrics {
            published: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            parked: AtomicU64::new(0),
            unroutable: Mutex::new(BTreeMap::new()),
            outages: AtomicU64::new(0),
            abandoned: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            retention_deleted: AtomicU64::new(0),
            retention_backlog: AtomicU64::new(0),
            latency: Histogram::new(LATENCY_BUCKETS),
            batch_size: Histogram::new(SIZE_BUCKETS),
            outbox_wait: Histogram::new(WAIT_BUCKETS),
            // Presumed up until a publish finds it down: an idle relay has
            // seen no outage.
            snapshot: Mutex::new(Snapshot {
                broker_available: true,
                ..Snapshot::default()
            }),
        }
    }
}

/// Backlog statistics as last measured from the database.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// Pending rows per owned partition.
    pub backlog: BTreeMap<i32, u64>,
    /// Age of the oldest pending row, in seconds.
    pub oldest_pending_seconds: f64,
    /// Age of the oldest committed row held back because an older transaction is
    /// still open (commit-order safety), in seconds; 0 when none is held back.
    pub held_back_seconds: f64,
    /// Rows parked as `failed`.
    pub parked_rows: u64,
    /// Partitions this relay owns.
    pub owned_partitions: usize,
    /// Whether the broker answered the last publish (true before the first).
    pub broker_available: bool,
    /// Whether the last heartbeat reached the database.
    pub database_available: bool,
}

impl RelayMetrics {
    pub(crate) fn published(&self, n: u64) {
        self.published.fetch_add(n, Ordering::Relaxed);
    }
    pub(crate) fn rejected(&self, n: u64) {
        self.rejected.fetch_add(n, Ordering::Relaxed);
    }
    pub(crate) fn parked(&self, n: u64) {
        self.parked.fetch_add(n, Ordering::Relaxed);
    }
    /// One event the broker routed nowhere and `destination`'s policy dropped.
    pub(crate) fn unroutable(&self, destination: &str) {
        if let Ok(mut counts) = self.unroutable.lock() {
            *counts.entry(destination.to_owned()).or_default() += 1;
        }
    }
    pub(crate) fn outage(&self) {
        self.outages.fetch_add(1, Ordering::Relaxed);
    }
    /// A batch abandoned in flight because its lease lapsed (fencing).
    pub(crate) fn lease_lapsed(&self) {
        self.abandoned.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn batch(&self, publish_latency: Duration, size: usize) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.latency.observe_duration(publish_latency);
        self.batch_size.observe(size as f64);
    }
    /// One row acknowledged by the broker `waited` after it was written.
    pub(crate) fn outbox_wait(&self, waited: Duration) {
        self.outbox_wait.observe_duration(waited);
    }
    pub(crate) fn retention_deleted(&self, n: u64) {
        self.retention_deleted.fetch_add(n, Ordering::Relaxed);
    }
    pub(crate) fn retention_backlog(&self, n: u64) {
        self.retention_backlog.store(n, Ordering::Relaxed);
    }
    pub(crate) fn update_snapshot(&self, f: impl FnOnce(&mut Snapshot)) {
        if let Ok(mut s) = self.snapshot.lock() {
            f(&mut s);
        }
    }

    /// Events acknowledged by the broker since start.
    pub fn published_total(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }

    /// Publish attempts the broker rejected since start.
    pub fn rejected_total(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    /// Rows parked as `failed` by this relay since start.
    pub fn parked_total(&self) -> u64 {
        self.parked.load(Ordering::Relaxed)
    }

    /// Events the broker routed to no queue and that were dropped by their
    /// destination's policy (counted as published too), per broker-level
    /// destination, since start.
    pub fn unroutable_total(&self) -> BTreeMap<String, u64> {
        self.unroutable
            .lock()
            .map(|counts| counts.clone())
            .unwrap_or_default()
    }

    /// Batches abandoned in flight since start because a partition lease
    /// lapsed before the broker answered (see `Relay`'s fencing).
    pub fn abandoned_batches_total(&self) -> u64 {
        self.abandoned.load(Ordering::Relaxed)
    }

    /// Published rows past the retention window, not yet deleted, as last
    /// counted by this relay's clean-up (0 when caught up, or when another
    /// relay does the clean-up).
    pub fn retention_backlog_rows(&self) -> u64 {
        self.retention_backlog.load(Ordering::Relaxed)
    }

    /// Published rows deleted by this relay's retention clean-up since start.
    pub fn retention_deleted_total(&self) -> u64 {
        self.retention_deleted.load(Ordering::Relaxed)
    }

    /// The latest backlog statistics.
    pub fn snapshot(&self) -> Snapshot {
        self.snapshot.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// All metrics in the Prometheus text exposition format.
    pub fn render_prometheus(&self) -> String {
        let mut exposition = Exposition::new();
        self.write_to(&mut exposition);
        exposition.render()
    }

    /// Adds this relay's metrics to `exposition` (to serve them together with
    /// those of consumers in the same process).
    pub fn write_to(&self, out: &mut Exposition) {
        let snap = self.snapshot();
        out.counter(
            "eventbus_relay_published_total",
            "Events acknowledged by the broker.",
            &[],
            self.published_total(),
        );
        out.counter(
            "eventbus_relay_rejected_total",
            "Publish attempts rejected by the broker (failed).",
            &[],
            self.rejected_total(),
        );
        out.counter(
            "eventbus_relay_parked_total",
            "Rows parked as failed after their last attempt.",
            &[],
            self.parked_total(),
        );
        for (destination, n) in self.unroutable_total() {
            out.counter(
                "eventbus_relay_unroutable_total",
                "Events the broker routed to no queue, dropped by the destination's policy (also counted as published).",
                &[("destination", &destination)],
                n,
            );
        }
        out.counter(
            "eventbus_relay_broker_outages_total",
            "Batches that found the broker unavailable.",
            &[],
            self.outages.load(Ordering::Relaxed),
        );
        out.counter(
            "eventbus_relay_abandoned_batches_total",
            "Batches abandoned while being sent because a partition lease lapsed.",
            &[],
            self.abandoned_batches_total(),
        );
        out.counter(
            "eventbus_relay_batches_total",
            "Batches published.",
            &[],
            self.batches.load(Ordering::Relaxed),
        );

        out.counter(
            "eventbus_relay_retention_deleted_total",
            "Published rows deleted by the retention clean-up.",
            &[],
            self.retention_deleted_total(),
        );
        out.gauge(
            "eventbus_outbox_retention_backlog_rows",
            "Published rows older than the retention window, not yet deleted.",
            &[],
            self.retention_backlog_rows() as f64,
        );

        let backlog = "eventbus_outbox_backlog";
        let help = "Pending outbox rows per partition owned by this relay.";
        out.gauge_family(backlog, help);
        for (p, n) in &snap.backlog {
            out.gauge(backlog, help, &[("partition", &p.to_string())], *n as f64);
        }
        let total: u64 = snap.backlog.values().sum();
        out.gauge(
            "eventbus_outbox_backlog_total",
            "Pending outbox rows in partitions owned by this relay.",
            &[],
            total as f64,
        );
        out.gauge(
            "eventbus_outbox_oldest_pending_age_seconds",
            "Age of the oldest pending row.",
            &[],
            snap.oldest_pending_seconds,
        );
        out.gauge(
            "eventbus_relay_held_back_seconds",
            "How long committed rows have waited for an older open transaction.",
            &[],
            snap.held_back_seconds,
        );
        out.gauge(
            "eventbus_outbox_parked_rows",
            "Rows parked as failed.",
            &[],
            snap.parked_rows as f64,
        );
        out.gauge(
            "eventbus_relay_owned_partitions",
            "Partitions this relay owns.",
            &[],
            snap.owned_partitions as f64,
        );
        out.gauge(
            "eventbus_relay_database_up",
            "1 if the last heartbeat reached the database.",
            &[],
            f64::from(u8::from(snap.database_available)),
        );
        out.gauge(
            "eventbus_relay_broker_up",
            "1 if the last publish reached the broker (or none was tried yet).",
            &[],
            f64::from(u8::from(snap.broker_available)),
        );

        out.histogram(
            "eventbus_relay_publish_latency_seconds",
            "Time from sending a batch to the broker's last acknowledgement.",
            &[],
            &self.latency,
        );
        out.histogram(
            "eventbus_relay_batch_size",
            "Rows sent to the broker per batch.",
            &[],
            &self.batch_size,
        );
        out.histogram(
            "eventbus_relay_outbox_wait_seconds",
            "Time an event waited in the outbox: from its write in the business transaction to the broker's acknowledgement.",
            &[],
            &self.outbox_wait,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_gauges_and_histograms() {
        let m = RelayMetrics::default();
        m.published(5);
        m.unroutable("shop.orders");
        m.unroutable("shop.orders");
        m.batch(Duration::from_millis(3), 5);
        m.outbox_wait(Duration::from_millis(40));
        m.update_snapshot(|s| {
            s.backlog.insert(3, 7);
            s.broker_available = true;
        });
        let text = m.render_prometheus();
        assert!(text.contains("eventbus_relay_published_total 5"));
        assert!(text.contains("eventbus_outbox_backlog{partition=\"3\"} 7"));
        assert!(text.contains("eventbus_outbox_backlog_total 7"));
        assert!(text.contains("eventbus_relay_publish_latency_seconds_bucket{le=\"0.005\"} 1"));
        assert!(text.contains("eventbus_relay_publish_latency_seconds_bucket{le=\"0.001\"} 0"));
        assert!(text.contains("eventbus_relay_batch_size_bucket{le=\"5\"} 1"));
        assert!(text.contains("eventbus_relay_batch_size_sum 5"));
        assert!(text.contains("eventbus_relay_outbox_wait_seconds_bucket{le=\"0.025\"} 0"));
        assert!(text.contains("eventbus_relay_outbox_wait_seconds_bucket{le=\"0.05\"} 1"));
        assert!(text.contains("eventbus_relay_broker_up 1"));
        assert!(
            text.contains("eventbus_relay_unroutable_total{destination=\"shop.orders\"} 2"),
            "{text}"
        );
    }
}
