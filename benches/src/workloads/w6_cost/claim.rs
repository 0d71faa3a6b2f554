//! W6's claim timing: one claim of a batch through the relay store API
//! (`PgRelayStore`: register, take every lease, `claim`), repeated without
//! deleting anything, so every claim faces the same backlog.

use std::time::{Duration, Instant};

use eventbus::relay::{ClaimLimits, PgRelayStore, RelayConfig, RelayStore};
use indicatif::ProgressBar;
use sqlx::PgPool;
use uuid::Uuid;

use crate::error::{BenchError, Result};
use crate::stats::{summarize, Summary};

/// Long enough that the leases outlive the timed claims without renewal.
const LEASE_TTL: Duration = Duration::from_secs(3_600);

/// Times of repeated claims on one backlog.
#[derive(Debug, Clone)]
pub(crate) struct ClaimTimes {
    /// Percentiles of the timed claims, ms.
    pub(crate) summary: Summary,
    /// Rows each claim returned.
    pub(crate) rows: usize,
}

/// The relay's claim limits with its default configuration: batch size,
/// byte budget, largest message.
pub(crate) fn default_limits() -> ClaimLimits {
    let config = RelayConfig::default();
    ClaimLimits {
        rows: config.batch_size,
        bytes: config.claim_bytes as u64,
        max_message_bytes: config.max_message_bytes as u64,
    }
}

/// Claims `expected` rows `claims` times (after one claim that warms the
/// caches, not timed) as a relay holding every partition; returns the times.
/// Fails if a claim returns another number of rows.
pub(crate) async fn time_claims(
    pool: &PgPool,
    claims: usize,
    expected: usize,
    bar: &ProgressBar,
) -> Result<ClaimTimes> {
    let store = PgRelayStore::new(pool.clone(), RelayConfig::default().table);
    let relay = Uuid::new_v4();
    store
        .heartbeat(relay, "eventbus-bench-claims", LEASE_TTL)
        .await?;
    let partitions = store.partitions().await?;
    let leases = store.acquire(relay, &partitions, LEASE_TTL).await?;
    if leases.len() != partitions.len() {
        return Err(BenchError::Relay(format!(
            "the claim timer took {} of {} partition leases",
            leases.len(),
            partitions.len()
        )));
    }
    let limits = default_limits();
    let timed = time_each(claims, bar, || async {
        let claimed = store.claim(relay, &partitions, limits, &[]).await?;
        if claimed.len() != expected {
            return Err(BenchError::Relay(format!(
                "a claim returned {} rows, expected {expected}",
                claimed.len()
            )));
        }
        Ok(())
    })
    .await;
    // Given back even when a claim failed, so nothing waits for the leases.
    store.release(relay, &partitions).await?;
    store.deregister(relay).await?;
    let mut ms = timed?;
    Ok(ClaimTimes {
        summary: summarize(&mut ms, 0),
        rows: expected,
    })
}

/// Runs `op` once untimed, then `times` times timed; returns the times in ms.
async fn time_each<F, Fut>(times: usize, bar: &ProgressBar, mut op: F) -> Result<Vec<f64>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    op().await?;
    let mut ms = Vec::with_capacity(times);
    for _ in 0..times {
        let started = Instant::now();
        op().await?;
        ms.push(started.elapsed().as_secs_f64() * 1_000.0);
        bar.inc(1);
    }
    Ok(ms)
}

/// How many times slower the claim is at the largest backlog than at the
/// smallest: `(backlog, claim time)` pairs in any order.
pub(crate) fn growth(points: &[(usize, Option<f64>)]) -> Option<f64> {
    let smallest = points.iter().min_by_key(|(n, _)| *n)?;
    let largest = points.iter().max_by_key(|(n, _)| *n)?;
    if smallest.0 == largest.0 {
        return None;
    }
    crate::stats::ratio(largest.1?, smallest.1?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growth_compares_the_largest_backlog_with_the_smallest() {
        let points = [
            (1_000_000, Some(3.0)),
            (10_000, Some(2.0)),
            (5_000_000, Some(5.0)),
        ];
        assert_eq!(growth(&points), Some(2.5));
        assert_eq!(growth(&[(10_000, Some(2.0))]), None);
        assert_eq!(growth(&[(10_000, Some(2.0)), (20_000, None)]), None);
        assert_eq!(growth(&[]), None);
    }

    #[tokio::test]
    async fn claims_are_timed_after_one_untimed_warm_up() {
        let calls = std::sync::atomic::AtomicUsize::new(0);
        let ms = time_each(5, &ProgressBar::hidden(), || async {
            calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok(())
        })
        .await
        .expect("runs");
        assert_eq!(ms.len(), 5);
        assert_eq!(calls.load(std::sync::atomic::Ordering::Relaxed), 6);
        let mut ms = vec![4.0, 1.0, 3.0, 2.0, 100.0];
        let s = summarize(&mut ms, 0);
        assert_eq!((s.p50_ms, s.p99_ms), (Some(3.0), Some(100.0)));
    }
}
