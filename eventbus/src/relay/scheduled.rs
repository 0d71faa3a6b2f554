//! Scheduled events coming due: a task of its own that moves them into the
//! outbox (see [`crate::outbox::schedule`]), batch after batch while any are
//! due, and reports what waits as metrics. One relay does it, the one
//! holding the lowest partition, so relays do not race for the same rows
//! (a race would only cost a rolled-back move: each row moves once).

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::config::RelayConfig;
use super::membership::Membership;
use super::metrics::RelayMetrics;
use super::store::RelayStore;

/// Events moved per transaction.
pub(crate) const RELEASE_BATCH: u32 = 1_000;

/// How often the scheduled table is counted for the metrics: a count over a
/// large table is not free, and the gauges need not be fresher.
const COUNT_EVERY: Duration = Duration::from_secs(5);

/// The longest pause between two looks at the scheduled table: how late a
/// due event may be moved, beyond the time a move takes.
const LOOK_EVERY: Duration = Duration::from_millis(500);

/// Moves due scheduled events into the outbox for as long as it runs.
pub(crate) async fn release(
    membership: Arc<Membership>,
    store: Arc<dyn RelayStore>,
    config: Arc<RelayConfig>,
    metrics: Arc<RelayMetrics>,
) {
    let idle = config.poll_interval.min(LOOK_EVERY);
    let mut next_count = Instant::now();
    loop {
        let lowest = membership.lowest_partition();
        if lowest.is_none() || membership.usable().first() != lowest.as_ref() {
            // Another relay moves them.
            tokio::time::sleep(config.heartbeat_interval).await;
            continue;
        }
        match store.release_due(chrono::Utc::now(), RELEASE_BATCH).await {
            Ok(moved) => {
                if moved > 0 {
                    tracing::debug!(moved, "scheduled events came due");
                    metrics.scheduled_released(moved);
                    // Committed: this process's relays (this one among them)
                    // claim them now rather than at their next poll.
                    if config.in_process_wakeups {
                        super::wakeup::written(&config.table);
                    }
                }
                if moved >= u64::from(RELEASE_BATCH) {
                    // More may be due: go again at once.
                    continue;
                }
            }
            Err(e) => tracing::warn!(error = %e, "moving due scheduled events failed; retrying"),
        }
        if Instant::now() >= next_count {
            match store.scheduled().await {
                Ok(stats) => metrics.scheduled(&stats),
                Err(e) => tracing::debug!(error = %e, "scheduled events uncounted"),
            }
            next_count = Instant::now() + COUNT_EVERY;
        }
        tokio::time::sleep(idle).await;
    }
}
