//! [`RelayMetrics`]: counters, gauges and histograms of a running relay,
//! recorded through the [`metrics`] facade (into the application's recorder)
//! and rendered in the Prometheus text format for `/metrics`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use metrics::{Counter, Gauge, Label};

use crate::telemetry::facade::{self, Describe};
use crate::telemetry::{Exposition, Histogram, LATENCY_BUCKETS, SIZE_BUCKETS, WAIT_BUCKETS};

const PUBLISHED: Describe = Describe::new(
    "eventbus_relay_published_total",
    "Events acknowledged by the broker.",
);
const REJECTED: Describe = Describe::new(
    "eventbus_relay_rejected_total",
    "Publish attempts rejected by the broker (failed).",
);
const PARKED: Describe = Describe::new(
    "eventbus_relay_parked_total",
    "Rows parked as failed after their last attempt.",
);
const UNROUTABLE: Describe = Describe::new(
    "eventbus_relay_unroutable_total",
    "Events the broker routed to no queue, dropped by the destination's policy (also counted as published).",
);
const OUTAGES: Describe = Describe::new(
    "eventbus_relay_broker_outages_total",
    "Batches that found the broker unavailable.",
);
const ABANDONED: Describe = Describe::new(
    "eventbus_relay_abandoned_batches_total",
    "Batches abandoned while being sent because a partition lease lapsed.",
);
const BATCHES: Describe = Describe::new("eventbus_relay_batches_total", "Batches published.");
const RETENTION_DELETED: Describe = Describe::new(
    "eventbus_relay_retention_deleted_total",
    "Published rows deleted by the retention clean-up.",
);
const RETENTION_BACKLOG: Describe = Describe::new(
    "eventbus_outbox_retention_backlog_rows",
    "Published rows older than the retention window, not yet deleted.",
);
const SCHEDULED_RELEASED: Describe = Describe::new(
    "eventbus_relay_scheduled_released_total",
    "Scheduled events moved into the outbox when they came due.",
);
const SCHEDULED_ROWS: Describe = Describe::new(
    "eventbus_outbox_scheduled_rows",
    "Scheduled events waiting, due or not.",
);
const SCHEDULED_NEXT_DUE: Describe = Describe::new(
    "eventbus_outbox_scheduled_next_due_timestamp_seconds",
    "When the earliest scheduled event is due, in seconds since the epoch (0 when none waits).",
);
const BACKLOG: Describe = Describe::new(
    "eventbus_outbox_backlog",
    "Pending outbox rows per partition owned by this relay.",
);
const PENDING: Describe = Describe::new(
    "eventbus_outbox_pending_rows",
    "Pending outbox rows in partitions owned by this relay.",
);
const OLDEST_PENDING: Describe = Describe::new(
    "eventbus_outbox_oldest_pending_age_seconds",
    "Age of the oldest pending row.",
);
const HELD_BACK: Describe = Describe::new(
    "eventbus_relay_held_back_seconds",
    "How long committed rows have waited for an older open transaction.",
);
const PARKED_ROWS: Describe =
    Describe::new("eventbus_outbox_parked_rows", "Rows parked as failed.");
const OWNED: Describe = Describe::new(
    "eventbus_relay_owned_partitions",
    "Partitions this relay owns.",
);
const DATABASE_UP: Describe = Describe::new(
    "eventbus_relay_database_up",
    "1 if the last heartbeat reached the database.",
);
const BROKER_UP: Describe = Describe::new(
    "eventbus_relay_broker_up",
    "1 if the last publish reached the broker (or none was tried yet).",
);
const LATENCY: Describe = Describe::new(
    "eventbus_relay_publish_latency_seconds",
    "Time from sending a batch to the broker's last acknowledgement.",
);
const BATCH_SIZE: Describe = Describe::new(
    "eventbus_relay_batch_size",
    "Rows sent to the broker per batch.",
);
const OUTBOX_WAIT: Describe = Describe::new(
    "eventbus_relay_outbox_wait_seconds",
    "Time an event waited in the outbox: from its write in the business transaction to the broker's acknowledgement.",
);

/// Live figures of one relay. Cheap to update from the hot path.
///
/// Every figure is recorded twice: in the relay's own counters (read by
/// [`snapshot`](Self::snapshot), the accessors and
/// [`render_prometheus`](Self::render_prometheus)), and through the
/// [`metrics`] facade into whatever recorder the application installed,
/// labelled `relay` (the relay's name) and `outbox` (its table) so that
/// several relays in one process stay apart.
///
/// ```
/// use eventbus::relay::RelayMetrics;
///
/// let metrics = RelayMetrics::new("orders-relay", "eventbus_outbox");
/// let text = metrics.render_prometheus();
/// assert!(text.contains(
///     "eventbus_relay_published_total{relay=\"orders-relay\",outbox=\"eventbus_outbox\"} 0"
/// ));
/// ```
#[derive(Debug)]
pub struct RelayMetrics {
    relay: String,
    outbox: String,
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
    /// Scheduled events: moved into the outbox, waiting, and the next due
    /// time (seconds since the epoch, 0 when none).
    scheduled_released: AtomicU64,
    scheduled_rows: AtomicU64,
    scheduled_next_due: AtomicU64,
    latency: Histogram,
    batch_size: Histogram,
    outbox_wait: Histogram,
    snapshot: Mutex<Snapshot>,
    recorded: Recorded,
}

/// The facade's handles, labelled with the relay.
#[derive(Debug)]
struct Recorded {
    labels: Vec<Label>,
    published: Counter,
    rejected: Counter,
    parked: Counter,
    outages: Counter,
    abandoned: Counter,
    batches: Counter,
    retention_deleted: Counter,
    retention_backlog: Gauge,
    scheduled_released: Counter,
    scheduled_rows: Gauge,
    scheduled_next_due: Gauge,
    pending: Gauge,
    oldest_pending: Gauge,
    held_back: Gauge,
    parked_rows: Gauge,
    owned: Gauge,
    database_up: Gauge,
    broker_up: Gauge,
    latency: metrics::Histogram,
    batch_size: metrics::Histogram,
    outbox_wait: metrics::Histogram,
}

impl Recorded {
    fn new(labels: Vec<Label>) -> Self {
        let l = labels.as_slice();
        Recorded {
            published: PUBLISHED.counter(l),
            rejected: REJECTED.counter(l),
            parked: PARKED.counter(l),
            outages: OUTAGES.counter(l),
            abandoned: ABANDONED.counter(l),
            batches: BATCHES.counter(l),
            retention_deleted: RETENTION_DELETED.counter(l),
            retention_backlog: RETENTION_BACKLOG.gauge(l),
            scheduled_released: SCHEDULED_RELEASED.counter(l),
            scheduled_rows: SCHEDULED_ROWS.gauge(l),
            scheduled_next_due: SCHEDULED_NEXT_DUE.gauge(l),
            pending: PENDING.gauge(l),
            oldest_pending: OLDEST_PENDING.gauge(l),
            held_back: HELD_BACK.gauge(l),
            parked_rows: PARKED_ROWS.gauge(l),
            owned: OWNED.gauge(l),
            database_up: DATABASE_UP.gauge(l),
            broker_up: BROKER_UP.gauge(l),
            latency: LATENCY.histogram(l),
            batch_size: BATCH_SIZE.histogram(l),
            outbox_wait: OUTBOX_WAIT.histogram(l),
            labels,
        }
    }

    /// Sets the gauges read from the database; partitions in `before` but
    /// no longer owned drop to 0 (a facade cannot remove a series).
    fn snapshot(&self, before: &Snapshot, now: &Snapshot) {
        for p in before.backlog.keys() {
            if !now.backlog.contains_key(p) {
                self.backlog(*p).set(0.0);
            }
        }
        for (p, n) in &now.backlog {
            self.backlog(*p).set(*n as f64);
        }
        self.pending.set(now.backlog.values().sum::<u64>() as f64);
        self.oldest_pending.set(now.oldest_pending_seconds);
        self.held_back.set(now.held_back_seconds);
        self.parked_rows.set(now.parked_rows as f64);
        self.owned.set(now.owned_partitions as f64);
        self.database_up
            .set(f64::from(u8::from(now.database_available)));
        self.broker_up
            .set(f64::from(u8::from(now.broker_available)));
    }

    fn backlog(&self, partition: i32) -> Gauge {
        BACKLOG.gauge(&facade::with(
            &self.labels,
            "partition",
            partition.to_string(),
        ))
    }
}

impl Default for RelayMetrics {
    /// Metrics of a relay with no name and no table (empty labels).
    fn default() -> Self {
        Self::new("", "")
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
    /// Zeroed metrics of relay `relay` over outbox table `outbox` (the
    /// `relay` and `outbox` labels), registered with the [`metrics`]
    /// recorder in force. [`Relay::new`](super::Relay::new) makes them from
    /// its configuration's `name` and `table`.
    pub fn new(relay: impl Into<String>, outbox: impl Into<String>) -> Self {
        let relay = relay.into();
        let outbox = outbox.into();
        // Presumed up until a publish finds it down: an idle relay has seen
        // no outage.
        let snapshot = Snapshot {
            broker_available: true,
            ..Snapshot::default()
        };
        let recorded = Recorded::new(vec![
            Label::new("relay", relay.clone()),
            Label::new("outbox", outbox.clone()),
        ]);
        recorded.snapshot(&Snapshot::default(), &snapshot);
        RelayMetrics {
            relay,
            outbox,
            published: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            parked: AtomicU64::new(0),
            unroutable: Mutex::new(BTreeMap::new()),
            outages: AtomicU64::new(0),
            abandoned: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            retention_deleted: AtomicU64::new(0),
            retention_backlog: AtomicU64::new(0),
            scheduled_released: AtomicU64::new(0),
            scheduled_rows: AtomicU64::new(0),
            scheduled_next_due: AtomicU64::new(0),
            latency: Histogram::new(LATENCY_BUCKETS),
            batch_size: Histogram::new(SIZE_BUCKETS),
            outbox_wait: Histogram::new(WAIT_BUCKETS),
            snapshot: Mutex::new(snapshot),
            recorded,
        }
    }

    /// The relay's name (the `relay` label).
    pub fn relay(&self) -> &str {
        &self.relay
    }

    /// The relay's outbox table (the `outbox` label).
    pub fn outbox(&self) -> &str {
        &self.outbox
    }

    pub(crate) fn published(&self, n: u64) {
        self.published.fetch_add(n, Ordering::Relaxed);
        self.recorded.published.increment(n);
    }
    pub(crate) fn rejected(&self, n: u64) {
        self.rejected.fetch_add(n, Ordering::Relaxed);
        self.recorded.rejected.increment(n);
    }
    pub(crate) fn parked(&self, n: u64) {
        self.parked.fetch_add(n, Ordering::Relaxed);
        self.recorded.parked.increment(n);
    }
    /// One event the broker routed nowhere and `destination`'s policy dropped.
    pub(crate) fn unroutable(&self, destination: &str) {
        if let Ok(mut counts) = self.unroutable.lock() {
            *counts.entry(destination.to_owned()).or_default() += 1;
        }
        // Rare, and labelled by a destination known only now.
        let labels = facade::with(&self.recorded.labels, "destination", destination.to_owned());
        UNROUTABLE.counter(&labels).increment(1);
    }
    pub(crate) fn outage(&self) {
        self.outages.fetch_add(1, Ordering::Relaxed);
        self.recorded.outages.increment(1);
    }
    /// A batch abandoned in flight because its lease lapsed (fencing).
    pub(crate) fn lease_lapsed(&self) {
        self.abandoned.fetch_add(1, Ordering::Relaxed);
        self.recorded.abandoned.increment(1);
    }
    pub(crate) fn batch(&self, publish_latency: Duration, size: usize) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.latency.observe_duration(publish_latency);
        self.batch_size.observe(size as f64);
        self.recorded.batches.increment(1);
        self.recorded.latency.record(publish_latency);
        self.recorded.batch_size.record(size as f64);
    }
    /// One row acknowledged by the broker `waited` after it was written.
    pub(crate) fn outbox_wait(&self, waited: Duration) {
        self.outbox_wait.observe_duration(waited);
        self.recorded.outbox_wait.record(waited);
    }
    pub(crate) fn retention_deleted(&self, n: u64) {
        self.retention_deleted.fetch_add(n, Ordering::Relaxed);
        self.recorded.retention_deleted.increment(n);
    }
    pub(crate) fn scheduled_released(&self, n: u64) {
        self.scheduled_released.fetch_add(n, Ordering::Relaxed);
        self.recorded.scheduled_released.increment(n);
    }
    pub(crate) fn scheduled(&self, stats: &crate::outbox::ScheduledStats) {
        let next = stats
            .next_due
            .map_or(0, |t| u64::try_from(t.timestamp()).unwrap_or(0));
        self.scheduled_rows.store(stats.rows, Ordering::Relaxed);
        self.scheduled_next_due.store(next, Ordering::Relaxed);
        self.recorded.scheduled_rows.set(stats.rows as f64);
        self.recorded.scheduled_next_due.set(next as f64);
    }
    pub(crate) fn retention_backlog(&self, n: u64) {
        self.retention_backlog.store(n, Ordering::Relaxed);
        self.recorded.retention_backlog.set(n as f64);
    }
    pub(crate) fn update_snapshot(&self, f: impl FnOnce(&mut Snapshot)) {
        if let Ok(mut s) = self.snapshot.lock() {
            let before = s.clone();
            f(&mut s);
            self.recorded.snapshot(&before, &s);
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

    /// Scheduled events this relay moved into the outbox since start.
    pub fn scheduled_released_total(&self) -> u64 {
        self.scheduled_released.load(Ordering::Relaxed)
    }

    /// Scheduled events waiting, as last counted by the relay that moves
    /// them (0 on the others).
    pub fn scheduled_rows(&self) -> u64 {
        self.scheduled_rows.load(Ordering::Relaxed)
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
    /// those of consumers, or of other relays, in the same process).
    pub fn write_to(&self, out: &mut Exposition) {
        let snap = self.snapshot();
        let labels = [
            ("relay", self.relay.as_str()),
            ("outbox", self.outbox.as_str()),
        ];
        let counters = [
            (PUBLISHED, self.published_total()),
            (REJECTED, self.rejected_total()),
            (PARKED, self.parked_total()),
            (OUTAGES, self.outages.load(Ordering::Relaxed)),
            (ABANDONED, self.abandoned_batches_total()),
            (BATCHES, self.batches.load(Ordering::Relaxed)),
            (RETENTION_DELETED, self.retention_deleted_total()),
            (SCHEDULED_RELEASED, self.scheduled_released_total()),
        ];
        for (d, value) in counters {
            out.counter(d.name, d.help, &labels, value);
        }
        for (destination, n) in self.unroutable_total() {
            let labels = [labels[0], labels[1], ("destination", destination.as_str())];
            out.counter(UNROUTABLE.name, UNROUTABLE.help, &labels, n);
        }

        out.gauge_family(BACKLOG.name, BACKLOG.help);
        for (p, n) in &snap.backlog {
            let partition = p.to_string();
            let labels = [labels[0], labels[1], ("partition", partition.as_str())];
            out.gauge(BACKLOG.name, BACKLOG.help, &labels, *n as f64);
        }
        let gauges = [
            (RETENTION_BACKLOG, self.retention_backlog_rows() as f64),
            (SCHEDULED_ROWS, self.scheduled_rows() as f64),
            (
                SCHEDULED_NEXT_DUE,
                self.scheduled_next_due.load(Ordering::Relaxed) as f64,
            ),
            (PENDING, snap.backlog.values().sum::<u64>() as f64),
            (OLDEST_PENDING, snap.oldest_pending_seconds),
            (HELD_BACK, snap.held_back_seconds),
            (PARKED_ROWS, snap.parked_rows as f64),
            (OWNED, snap.owned_partitions as f64),
            (DATABASE_UP, f64::from(u8::from(snap.database_available))),
            (BROKER_UP, f64::from(u8::from(snap.broker_available))),
        ];
        for (d, value) in gauges {
            out.gauge(d.name, d.help, &labels, value);
        }

        out.histogram(LATENCY.name, LATENCY.help, &labels, &self.latency);
        out.histogram(BATCH_SIZE.name, BATCH_SIZE.help, &labels, &self.batch_size);
        out.histogram(
            OUTBOX_WAIT.name,
            OUTBOX_WAIT.help,
            &labels,
            &self.outbox_wait,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_gauges_and_histograms() {
        let m = RelayMetrics::new("r1", "eventbus_outbox");
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
        let l = "relay=\"r1\",outbox=\"eventbus_outbox\"";
        for line in [
            format!("eventbus_relay_published_total{{{l}}} 5"),
            format!("eventbus_outbox_backlog{{{l},partition=\"3\"}} 7"),
            format!("eventbus_outbox_pending_rows{{{l}}} 7"),
            format!("eventbus_relay_publish_latency_seconds_bucket{{{l},le=\"0.005\"}} 1"),
            format!("eventbus_relay_publish_latency_seconds_bucket{{{l},le=\"0.001\"}} 0"),
            format!("eventbus_relay_batch_size_bucket{{{l},le=\"5\"}} 1"),
            format!("eventbus_relay_batch_size_sum{{{l}}} 5"),
            format!("eventbus_relay_outbox_wait_seconds_bucket{{{l},le=\"0.025\"}} 0"),
            format!("eventbus_relay_outbox_wait_seconds_bucket{{{l},le=\"0.05\"}} 1"),
            format!("eventbus_relay_broker_up{{{l}}} 1"),
            format!("eventbus_relay_unroutable_total{{{l},destination=\"shop.orders\"}} 2"),
        ] {
            assert!(text.contains(&line), "{line} missing from\n{text}");
        }
        // A gauge is not a counter: no `_total` on the backlog.
        assert!(!text.contains("eventbus_outbox_backlog_total"), "{text}");
    }
}
