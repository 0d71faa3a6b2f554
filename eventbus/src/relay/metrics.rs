//! [`RelayMetrics`]: counters and gauges of a running relay, rendered in the
//! Prometheus text format for `/metrics`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (seconds) of the publish-latency histogram buckets.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Live figures of one relay. Cheap to update from the hot path.
#[derive(Debug, Default)]
pub struct RelayMetrics {
    published: AtomicU64,
    rejected: AtomicU64,
    parked: AtomicU64,
    outages: AtomicU64,
    batches: AtomicU64,
    latency: Mutex<Histogram>,
    snapshot: Mutex<Snapshot>,
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
    /// Whether the broker answered the last publish.
    pub broker_available: bool,
    /// Whether the last heartbeat reached the database.
    pub database_available: bool,
}

#[derive(Debug, Default)]
struct Histogram {
    counts: [u64; 13],
    count: u64,
    sum: f64,
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
    pub(crate) fn outage(&self) {
        self.outages.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn batch(&self, publish_latency: Duration) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        let secs = publish_latency.as_secs_f64();
        if let Ok(mut h) = self.latency.lock() {
            h.count += 1;
            h.sum += secs;
            for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
                if secs <= *bound {
                    h.counts[i] += 1;
                }
            }
        }
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

    /// The latest backlog statistics.
    pub fn snapshot(&self) -> Snapshot {
        self.snapshot.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// All metrics in the Prometheus text exposition format.
    pub fn render_prometheus(&self) -> String {
        let mut out = String::new();
        let snap = self.snapshot();
        let mut counter = |name: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        };
        counter(
            "eventbus_relay_published_total",
            "Events acknowledged by the broker.",
            self.published_total(),
        );
        counter(
            "eventbus_relay_rejected_total",
            "Publish attempts rejected by the broker.",
            self.rejected_total(),
        );
        counter(
            "eventbus_relay_parked_total",
            "Rows parked as failed after their last attempt.",
            self.parked_total(),
        );
        counter(
            "eventbus_relay_broker_outages_total",
            "Batches that found the broker unavailable.",
            self.outages.load(Ordering::Relaxed),
        );
        counter(
            "eventbus_relay_batches_total",
            "Batches published.",
            self.batches.load(Ordering::Relaxed),
        );

        let total: u64 = snap.backlog.values().sum();
        let _ = writeln!(out, "# HELP eventbus_outbox_backlog Pending outbox rows per partition owned by this relay.\n# TYPE eventbus_outbox_backlog gauge");
        for (p, n) in &snap.backlog {
            let _ = writeln!(out, "eventbus_outbox_backlog{{partition=\"{p}\"}} {n}");
        }
        let mut gauge = |name: &str, help: &str, value: String| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        };
        gauge(
            "eventbus_outbox_backlog_total",
            "Pending outbox rows in partitions owned by this relay.",
            total.to_string(),
        );
        gauge(
            "eventbus_outbox_oldest_pending_age_seconds",
            "Age of the oldest pending row.",
            fmt_f64(snap.oldest_pending_seconds),
        );
        gauge(
            "eventbus_relay_held_back_seconds",
            "How long committed rows have waited for an older open transaction.",
            fmt_f64(snap.held_back_seconds),
        );
        gauge(
            "eventbus_outbox_parked_rows",
            "Rows parked as failed.",
            snap.parked_rows.to_string(),
        );
        gauge(
            "eventbus_relay_owned_partitions",
            "Partitions this relay owns.",
            snap.owned_partitions.to_string(),
        );
        gauge(
            "eventbus_relay_database_up",
            "1 if the last heartbeat reached the database.",
            u8::from(snap.database_available).to_string(),
        );
        gauge(
            "eventbus_relay_broker_up",
            "1 if the last publish reached the broker.",
            u8::from(snap.broker_available).to_string(),
        );

        let name = "eventbus_relay_publish_latency_seconds";
        let _ = writeln!(out, "# HELP {name} Time from sending a batch to the broker's last acknowledgement.\n# TYPE {name} histogram");
        if let Ok(h) = self.latency.lock() {
            for (bound, count) in LATENCY_BUCKETS.iter().zip(h.counts) {
                let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {count}");
            }
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"+Inf\"}} {}\n{name}_sum {}\n{name}_count {}",
                h.count,
                fmt_f64(h.sum),
                h.count
            );
        }
        out
    }
}

fn fmt_f64(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.6}")
    } else {
        "0".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_gauges_and_histogram() {
        let m = RelayMetrics::default();
        m.published(5);
        m.batch(Duration::from_millis(3));
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
        assert!(text.contains("eventbus_relay_broker_up 1"));
    }
}
