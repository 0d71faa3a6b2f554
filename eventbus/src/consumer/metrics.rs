//! [`ConsumerMetrics`]: what a consumer has done since it started, and how
//! long it took, rendered in the Prometheus text format.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::Outcome;
use crate::telemetry::{Exposition, Histogram, LATENCY_BUCKETS, SIZE_BUCKETS, WAIT_BUCKETS};

/// Counters and histograms of one consumer.
///
/// ```
/// use eventbus::consumer::ConsumerMetrics;
///
/// let metrics = ConsumerMetrics::new("billing");
/// let text = metrics.render_prometheus();
/// assert!(text.contains("eventbus_consumer_duplicates_total{group=\"billing\"} 0"));
/// ```
#[derive(Debug)]
pub struct ConsumerMetrics {
    group: String,
    handling: Histogram,
    broker_wait: Histogram,
    end_to_end: Histogram,
    batch_size: Histogram,
    handled: AtomicU64,
    duplicates: AtomicU64,
    dead_lettered: AtomicU64,
    released: AtomicU64,
    parked: AtomicU64,
    retries: AtomicU64,
    batches: AtomicU64,
    batched: AtomicU64,
    largest_batch: AtomicU64,
    batch_splits: AtomicU64,
    version_gated: AtomicU64,
}

impl Default for ConsumerMetrics {
    fn default() -> Self {
        Self::new("")
    }
}

impl ConsumerMetrics {
    /// Zeroed metrics of consumer group `group` (the `group` label).
    pub fn new(group: impl Into<String>) -> Self {
        ConsumerMetrics {
            group: group.into(),
            handling: Histogram::new(LATENCY_BUCKETS),
            broker_wait: Histogram::new(WAIT_BUCKETS),
            end_to_end: Histogram::new(WAIT_BUCKETS),
            batch_size: Histogram::new(SIZE_BUCKETS),
            handled: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
            released: AtomicU64::new(0),
            parked: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            batched: AtomicU64::new(0),
            largest_batch: AtomicU64::new(0),
            batch_splits: AtomicU64::new(0),
            version_gated: AtomicU64::new(0),
        }
    }

    /// One message (or batch) handled from start to settlement in `took`,
    /// retries included.
    pub(super) fn handling(&self, took: Duration) {
        self.handling.observe_duration(took);
    }

    /// A message reached its handler `waited` after the broker took it.
    pub(super) fn broker_wait(&self, waited: Duration) {
        self.broker_wait.observe_duration(waited);
    }

    /// A message reached its handler `age` after its event happened (its
    /// CloudEvents `time`: the outbox write).
    pub(super) fn end_to_end(&self, age: Duration) {
        self.end_to_end.observe_duration(age);
    }

    pub(super) fn record(&self, outcome: &Outcome) {
        let counter = match outcome {
            Outcome::Handled => &self.handled,
            Outcome::Duplicate => &self.duplicates,
            Outcome::DeadLettered => &self.dead_lettered,
            Outcome::Released => &self.released,
            Outcome::Parked => &self.parked,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn retried(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn batch(&self, size: usize) {
        let size = size as u64;
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.batch_size.observe(size as f64);
        self.batched.fetch_add(size, Ordering::Relaxed);
        self.largest_batch.fetch_max(size, Ordering::Relaxed);
    }

    pub(super) fn batch_split(&self) {
        self.batch_splits.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn gated(&self) {
        self.version_gated.fetch_add(1, Ordering::Relaxed);
    }

    /// Messages whose handler ran and committed.
    pub fn handled(&self) -> u64 {
        self.handled.load(Ordering::Relaxed)
    }

    /// Redeliveries recognised by the inbox and skipped.
    pub fn duplicates(&self) -> u64 {
        self.duplicates.load(Ordering::Relaxed)
    }

    /// Messages dead-lettered: sent to the group's dead-letter destination,
    /// or kept dead in its parked table.
    pub fn dead_lettered(&self) -> u64 {
        self.dead_lettered.load(Ordering::Relaxed)
    }

    /// Messages given back to the broker (shutdown, dead-lettering impossible).
    pub fn released(&self) -> u64 {
        self.released.load(Ordering::Relaxed)
    }

    /// Messages taken off the broker into the parked table to be handled
    /// later: a delayed retry, a newer schema version, or a message waiting
    /// behind an earlier parked one of its key. Dead letters kept in the
    /// table count as [`dead_lettered`](Self::dead_lettered).
    pub fn parked(&self) -> u64 {
        self.parked.load(Ordering::Relaxed)
    }

    /// Retries made.
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// Batches taken for batch handlers (each one handled in one transaction
    /// unless it had to be split).
    pub fn batches(&self) -> u64 {
        self.batches.load(Ordering::Relaxed)
    }

    /// Messages that went through batch handlers, in all; divided by
    /// [`batches`](Self::batches), the mean batch size.
    pub fn batched_messages(&self) -> u64 {
        self.batched.load(Ordering::Relaxed)
    }

    /// The largest batch so far.
    pub fn largest_batch(&self) -> u64 {
        self.largest_batch.load(Ordering::Relaxed)
    }

    /// Times a failed batch was split in two to isolate the failing event.
    pub fn batch_splits(&self) -> u64 {
        self.batch_splits.load(Ordering::Relaxed)
    }

    /// Messages of a schema version newer than their handler knows, set aside
    /// (each time one comes round; see [`NewerVersions`](super::NewerVersions)).
    /// Those parked also count as [`parked`](Self::parked).
    pub fn version_gated(&self) -> u64 {
        self.version_gated.load(Ordering::Relaxed)
    }

    /// The consumer group these metrics belong to.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// All metrics in the Prometheus text exposition format, labelled with
    /// the group.
    pub fn render_prometheus(&self) -> String {
        let mut exposition = Exposition::new();
        self.write_to(&mut exposition);
        exposition.render()
    }

    /// Adds this consumer's metrics to `exposition` (to serve several
    /// consumers, and a relay, from one endpoint).
    pub fn write_to(&self, out: &mut Exposition) {
        let labels = [("group", self.group.as_str())];
        let counters = [
            (
                "eventbus_consumer_handled_total",
                "Messages whose handler ran and committed.",
                self.handled(),
            ),
            (
                "eventbus_consumer_duplicates_total",
                "Redeliveries the inbox recognised and skipped.",
                self.duplicates(),
            ),
            (
                "eventbus_consumer_dead_lettered_total",
                "Messages dead-lettered (to the broker or the parked table).",
                self.dead_lettered(),
            ),
            (
                "eventbus_consumer_released_total",
                "Messages given back to the broker unhandled.",
                self.released(),
            ),
            (
                "eventbus_consumer_parked_total",
                "Messages parked in the consumer's table to be handled later.",
                self.parked(),
            ),
            (
                "eventbus_consumer_retries_total",
                "Handler retries made.",
                self.retries(),
            ),
            (
                "eventbus_consumer_batches_total",
                "Batches taken for batch handlers.",
                self.batches(),
            ),
            (
                "eventbus_consumer_batch_splits_total",
                "Failed batches split in two to isolate the failing event.",
                self.batch_splits(),
            ),
            (
                "eventbus_consumer_version_gated_total",
                "Messages of a schema version newer than their handler knows, set aside for an upgraded consumer.",
                self.version_gated(),
            ),
        ];
        for (name, help, value) in counters {
            out.counter(name, help, &labels, value);
        }
        out.histogram(
            "eventbus_consumer_handling_duration_seconds",
            "Time from a message's arrival at its handler to its settlement, retries included (per batch for batch handlers).",
            &labels,
            &self.handling,
        );
        out.histogram(
            "eventbus_consumer_broker_wait_seconds",
            "Time a message waited in the broker: from the broker taking it to its handler starting.",
            &labels,
            &self.broker_wait,
        );
        out.histogram(
            "eventbus_consumer_end_to_end_seconds",
            "Time from an event's outbox write (its CloudEvents time) to its handler starting.",
            &labels,
            &self.end_to_end,
        );
        out.histogram(
            "eventbus_consumer_batch_size",
            "Messages per batch taken for batch handlers.",
            &labels,
            &self.batch_size,
        );
    }
}
