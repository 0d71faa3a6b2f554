//! [`ConsumerMetrics`]: what a consumer has done since it started, and how
//! long it took, recorded through the [`metrics`] facade (into the
//! application's recorder) and rendered in the Prometheus text format.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use metrics::{Counter, Label};

use super::Outcome;
use crate::telemetry::facade::Describe;
use crate::telemetry::{Exposition, Histogram, LATENCY_BUCKETS, SIZE_BUCKETS, WAIT_BUCKETS};

const HANDLED: Describe = Describe::new(
    "eventbus_consumer_handled_total",
    "Messages whose handler ran and committed.",
);
const DUPLICATES: Describe = Describe::new(
    "eventbus_consumer_duplicates_total",
    "Redeliveries the inbox recognised and skipped.",
);
const DEAD_LETTERED: Describe = Describe::new(
    "eventbus_consumer_dead_lettered_total",
    "Messages dead-lettered (to the broker or the parked table).",
);
const RELEASED: Describe = Describe::new(
    "eventbus_consumer_released_total",
    "Messages given back to the broker unhandled.",
);
const PARKED: Describe = Describe::new(
    "eventbus_consumer_parked_total",
    "Messages parked in the consumer's table to be handled later.",
);
const RETRIES: Describe = Describe::new("eventbus_consumer_retries_total", "Handler retries made.");
const BATCHES: Describe = Describe::new(
    "eventbus_consumer_batches_total",
    "Batches taken for batch handlers.",
);
const BATCH_SPLITS: Describe = Describe::new(
    "eventbus_consumer_batch_splits_total",
    "Failed batches split in two to isolate the failing event.",
);
const GROUP_COMMITS: Describe = Describe::new(
    "eventbus_consumer_group_commits_total",
    "Group commits that committed: several messages' handlers in one database transaction.",
);
const GROUPED: Describe = Describe::new(
    "eventbus_consumer_grouped_total",
    "Messages whose first attempt ran in a group commit that committed; divided by the group commits, the mean group size.",
);
const VERSION_GATED: Describe = Describe::new(
    "eventbus_consumer_version_gated_total",
    "Messages of a schema version newer than their handler knows, set aside for an upgraded consumer.",
);
const HANDLING: Describe = Describe::new(
    "eventbus_consumer_handling_duration_seconds",
    "Time from a message's arrival at its handler to its settlement, retries included (per batch for batch handlers).",
);
const BROKER_WAIT: Describe = Describe::new(
    "eventbus_consumer_broker_wait_seconds",
    "Time a message waited in the broker: from the broker taking it to its handler starting.",
);
const END_TO_END: Describe = Describe::new(
    "eventbus_consumer_end_to_end_seconds",
    "Time from an event's outbox write (its CloudEvents time) to its handler starting.",
);
const BATCH_SIZE: Describe = Describe::new(
    "eventbus_consumer_batch_size",
    "Messages per batch taken for batch handlers.",
);

/// Counters and histograms of one consumer.
///
/// Every figure is recorded twice: in the consumer's own counters (read by
/// the accessors and [`render_prometheus`](Self::render_prometheus)), and
/// through the [`metrics`] facade into whatever recorder the application
/// installed, labelled `group` so that several consumers in one process
/// stay apart.
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
    group_commits: AtomicU64,
    grouped: AtomicU64,
    version_gated: AtomicU64,
    recorded: Recorded,
}

/// The facade's handles, labelled with the group.
#[derive(Debug)]
struct Recorded {
    handled: Counter,
    duplicates: Counter,
    dead_lettered: Counter,
    released: Counter,
    parked: Counter,
    retries: Counter,
    batches: Counter,
    batch_splits: Counter,
    group_commits: Counter,
    grouped: Counter,
    version_gated: Counter,
    handling: metrics::Histogram,
    broker_wait: metrics::Histogram,
    end_to_end: metrics::Histogram,
    batch_size: metrics::Histogram,
}

impl Recorded {
    fn new(group: &str) -> Self {
        let l = [Label::new("group", group.to_owned())];
        Recorded {
            handled: HANDLED.counter(&l),
            duplicates: DUPLICATES.counter(&l),
            dead_lettered: DEAD_LETTERED.counter(&l),
            released: RELEASED.counter(&l),
            parked: PARKED.counter(&l),
            retries: RETRIES.counter(&l),
            batches: BATCHES.counter(&l),
            batch_splits: BATCH_SPLITS.counter(&l),
            group_commits: GROUP_COMMITS.counter(&l),
            grouped: GROUPED.counter(&l),
            version_gated: VERSION_GATED.counter(&l),
            handling: HANDLING.histogram(&l),
            broker_wait: BROKER_WAIT.histogram(&l),
            end_to_end: END_TO_END.histogram(&l),
            batch_size: BATCH_SIZE.histogram(&l),
        }
    }
}

impl Default for ConsumerMetrics {
    fn default() -> Self {
        Self::new("")
    }
}

impl ConsumerMetrics {
    /// Zeroed metrics of consumer group `group` (the `group` label),
    /// registered with the [`metrics`] recorder in force.
    pub fn new(group: impl Into<String>) -> Self {
        let group = group.into();
        ConsumerMetrics {
            recorded: Recorded::new(&group),
            group,
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
            group_commits: AtomicU64::new(0),
            grouped: AtomicU64::new(0),
            version_gated: AtomicU64::new(0),
        }
    }

    /// One message (or batch) handled from start to settlement in `took`,
    /// retries included.
    pub(super) fn handling(&self, took: Duration) {
        self.handling.observe_duration(took);
        self.recorded.handling.record(took);
    }

    /// A message reached its handler `waited` after the broker took it.
    pub(super) fn broker_wait(&self, waited: Duration) {
        self.broker_wait.observe_duration(waited);
        self.recorded.broker_wait.record(waited);
    }

    /// A message reached its handler `age` after its event happened (its
    /// CloudEvents `time`: the outbox write).
    pub(super) fn end_to_end(&self, age: Duration) {
        self.end_to_end.observe_duration(age);
        self.recorded.end_to_end.record(age);
    }

    pub(super) fn record(&self, outcome: &Outcome) {
        let (counter, recorded) = match outcome {
            Outcome::Handled => (&self.handled, &self.recorded.handled),
            Outcome::Duplicate => (&self.duplicates, &self.recorded.duplicates),
            Outcome::DeadLettered => (&self.dead_lettered, &self.recorded.dead_lettered),
            Outcome::Released => (&self.released, &self.recorded.released),
            Outcome::Parked => (&self.parked, &self.recorded.parked),
        };
        counter.fetch_add(1, Ordering::Relaxed);
        recorded.increment(1);
    }

    pub(super) fn retried(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
        self.recorded.retries.increment(1);
    }

    pub(super) fn batch(&self, size: usize) {
        let size = size as u64;
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.batch_size.observe(size as f64);
        self.batched.fetch_add(size, Ordering::Relaxed);
        self.largest_batch.fetch_max(size, Ordering::Relaxed);
        self.recorded.batches.increment(1);
        self.recorded.batch_size.record(size as f64);
    }

    /// A group commit of `size` messages committed.
    pub(super) fn group_committed(&self, size: usize) {
        self.group_commits.fetch_add(1, Ordering::Relaxed);
        self.grouped.fetch_add(size as u64, Ordering::Relaxed);
        self.recorded.group_commits.increment(1);
        self.recorded.grouped.increment(size as u64);
    }

    pub(super) fn batch_split(&self) {
        self.batch_splits.fetch_add(1, Ordering::Relaxed);
        self.recorded.batch_splits.increment(1);
    }

    pub(super) fn gated(&self) {
        self.version_gated.fetch_add(1, Ordering::Relaxed);
        self.recorded.version_gated.increment(1);
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

    /// Group commits that committed (see
    /// [`ConsumerBuilder::group_commit`](super::ConsumerBuilder::group_commit)).
    pub fn group_commits(&self) -> u64 {
        self.group_commits.load(Ordering::Relaxed)
    }

    /// Messages whose first attempt ran in a group commit that committed
    /// (a handler that failed there included); divided by
    /// [`group_commits`](Self::group_commits), the mean group size.
    pub fn grouped_messages(&self) -> u64 {
        self.grouped.load(Ordering::Relaxed)
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
            (HANDLED, self.handled()),
            (DUPLICATES, self.duplicates()),
            (DEAD_LETTERED, self.dead_lettered()),
            (RELEASED, self.released()),
            (PARKED, self.parked()),
            (RETRIES, self.retries()),
            (BATCHES, self.batches()),
            (BATCH_SPLITS, self.batch_splits()),
            (GROUP_COMMITS, self.group_commits()),
            (GROUPED, self.grouped_messages()),
            (VERSION_GATED, self.version_gated()),
        ];
        for (d, value) in counters {
            out.counter(d.name, d.help, &labels, value);
        }
        let histograms = [
            (HANDLING, &self.handling),
            (BROKER_WAIT, &self.broker_wait),
            (END_TO_END, &self.end_to_end),
            (BATCH_SIZE, &self.batch_size),
        ];
        for (d, histogram) in histograms {
            out.histogram(d.name, d.help, &labels, histogram);
        }
    }
}
