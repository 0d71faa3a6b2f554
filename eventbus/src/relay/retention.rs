//! The retention clean-up ([`Retention::Keep`](super::Retention::Keep)): a
//! task of its own that deletes rows published longer ago than the window,
//! batch after batch while there are any, so it keeps up with the drain; it
//! sleeps when caught up, and reports its backlog as a metric.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::config::RelayConfig;
use super::membership::Membership;
use super::metrics::RelayMetrics;
use super::store::RelayStore;

/// Rows deleted per statement: large enough that the per-statement cost is
/// small, small enough that one statement holds its locks only briefly.
pub(crate) const DELETE_BATCH: i64 = 5_000;

/// Deletes expired published rows for as long as it runs. Only one relay
/// does it: the one holding the lowest partition.
pub(crate) async fn clean_up(
    membership: Arc<Membership>,
    store: Arc<dyn RelayStore>,
    config: Arc<RelayConfig>,
    metrics: Arc<RelayMetrics>,
    keep: Duration,
) {
    // Rows expire continuously: look again well within the window.
    let idle = config
        .poll_interval
        .min(keep / 4)
        .clamp(Duration::from_millis(10), Duration::from_secs(1));
    let mut next_count = Instant::now();
    loop {
        let lowest = membership.lowest_partition();
        if lowest.is_none() || membership.usable().first() != lowest.as_ref() {
            // Another relay cleans; this one reports no backlog of its own.
            metrics.retention_backlog(0);
            tokio::time::sleep(config.heartbeat_interval).await;
            continue;
        }
        match store.delete_published(keep, DELETE_BATCH).await {
            Ok(deleted) => {
                metrics.retention_deleted(deleted);
                if deleted >= DELETE_BATCH.unsigned_abs() {
                    // More is waiting: go again at once. The count can wait;
                    // spacing it by its own cost keeps it off the drain's back.
                    if Instant::now() >= next_count {
                        next_count = count_backlog(store.as_ref(), keep, &metrics, &config).await;
                    }
                    continue;
                }
                // Caught up: nothing older than the window is left.
                metrics.retention_backlog(0);
            }
            Err(e) => {
                tracing::warn!(error = %e, "retention clean-up failed; retrying");
                if Instant::now() >= next_count {
                    next_count = count_backlog(store.as_ref(), keep, &metrics, &config).await;
                }
            }
        }
        tokio::time::sleep(idle).await;
    }
}

/// Counts the backlog into `metrics`; returns when to count again (at most a
/// tenth of the time spent counting, as the backlog statistics do).
async fn count_backlog(
    store: &dyn RelayStore,
    keep: Duration,
    metrics: &RelayMetrics,
    config: &RelayConfig,
) -> Instant {
    let started = Instant::now();
    match store.expired_published(keep).await {
        Ok(n) => metrics.retention_backlog(n),
        Err(e) => tracing::debug!(error = %e, "retention backlog unavailable"),
    }
    let took = started.elapsed();
    Instant::now() + config.stats_interval.max(took * 10)
}
