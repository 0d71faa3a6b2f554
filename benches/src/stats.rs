//! Latency summaries (percentiles by nearest rank, with events that never
//! arrived counted as slower than any that did) and throughput helpers.

use std::time::Duration;

use serde::Serialize;

/// Percentiles of one latency series, in milliseconds. A percentile that
/// falls on an event that never arrived (within the deadline) is `None`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Summary {
    /// Events that arrived.
    pub(crate) count: usize,
    /// Events that did not arrive before the deadline.
    pub(crate) missing: usize,
    /// Median.
    pub(crate) p50_ms: Option<f64>,
    /// 99th percentile.
    pub(crate) p99_ms: Option<f64>,
    /// 99.9th percentile.
    pub(crate) p999_ms: Option<f64>,
    /// Largest of those that arrived.
    pub(crate) max_ms: Option<f64>,
    /// Mean of those that arrived.
    pub(crate) mean_ms: Option<f64>,
}

/// Summarizes `samples` (ms; sorted in place) with `missing` events that never arrived.
pub(crate) fn summarize(samples: &mut [f64], missing: usize) -> Summary {
    samples.sort_by(f64::total_cmp);
    let total = samples.len() + missing;
    let at = |p: f64| -> Option<f64> {
        if total == 0 {
            return None;
        }
        // Nearest rank: the smallest value with at least p of all events at or below it.
        let rank = ((p * total as f64).ceil() as usize).clamp(1, total);
        samples.get(rank - 1).copied()
    };
    let mean = (!samples.is_empty()).then(|| samples.iter().sum::<f64>() / samples.len() as f64);
    Summary {
        count: samples.len(),
        missing,
        p50_ms: at(0.50),
        p99_ms: at(0.99),
        p999_ms: at(0.999),
        max_ms: samples.last().copied(),
        mean_ms: mean,
    }
}

/// Events per second.
pub(crate) fn rate(events: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 {
        return 0.0;
    }
    events as f64 / secs
}

/// `a / b`, or `None` when `b` is not positive.
pub(crate) fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0 && a.is_finite() && b.is_finite()).then(|| a / b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let mut v: Vec<f64> = (1..=1000).map(f64::from).collect();
        let s = summarize(&mut v, 0);
        assert_eq!(s.p50_ms, Some(500.0));
        assert_eq!(s.p99_ms, Some(990.0));
        assert_eq!(s.p999_ms, Some(999.0));
        assert_eq!(s.max_ms, Some(1000.0));
    }

    #[test]
    fn missing_events_count_as_slowest() {
        let mut v: Vec<f64> = (1..=98).map(f64::from).collect();
        let s = summarize(&mut v, 2);
        assert_eq!(s.p50_ms, Some(50.0));
        assert_eq!(s.p99_ms, None);
    }
}
