//! [`ConsumerMetrics`]: what a consumer has done since it started.

use std::sync::atomic::{AtomicU64, Ordering};

use super::Outcome;

/// Counters of one consumer.
#[derive(Debug, Default)]
pub struct ConsumerMetrics {
    handled: AtomicU64,
    duplicates: AtomicU64,
    dead_lettered: AtomicU64,
    released: AtomicU64,
    retries: AtomicU64,
}

impl ConsumerMetrics {
    pub(super) fn record(&self, outcome: &Outcome) {
        let counter = match outcome {
            Outcome::Handled => &self.handled,
            Outcome::Duplicate => &self.duplicates,
            Outcome::DeadLettered => &self.dead_lettered,
            Outcome::Released => &self.released,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn retried(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }

    /// Messages whose handler ran and committed.
    pub fn handled(&self) -> u64 {
        self.handled.load(Ordering::Relaxed)
    }

    /// Redeliveries recognised by the inbox and skipped.
    pub fn duplicates(&self) -> u64 {
        self.duplicates.load(Ordering::Relaxed)
    }

    /// Messages sent to the dead-letter destination.
    pub fn dead_lettered(&self) -> u64 {
        self.dead_lettered.load(Ordering::Relaxed)
    }

    /// Messages given back to the broker (shutdown, dead-lettering impossible).
    pub fn released(&self) -> u64 {
        self.released.load(Ordering::Relaxed)
    }

    /// Retries made.
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }
}
