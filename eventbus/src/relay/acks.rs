//! [`Acknowledger`]: deletes (or marks) the rows of a sent batch in the
//! background while the next batch is sent — one acknowledgement at a time,
//! retried until it succeeds or its partition changed hands.
//!
//! Until then its ids stay [`in_flight`](Acknowledger::in_flight): the
//! relay's claims pass over them. A failed acknowledgement that was simply
//! forgotten would let the next claim return those rows, and they would go
//! out again *after* the batch sent meanwhile: a later event of a key, then
//! an earlier one again (ADR 14).

use std::sync::Arc;
use std::time::Instant;

use uuid::Uuid;

use super::config::RelayConfig;
use super::membership::Membership;
use super::store::{Lease, RelayStore};
use super::AbortOnDrop;
use crate::backoff::exponential;

/// Rows the broker acknowledged, to be acknowledged in the database.
#[derive(Debug, Default)]
pub(super) struct Acked {
    /// (id, partition) of every row, in id order.
    pub(super) rows: Vec<(i64, i32)>,
    /// The tenure the rows were claimed in.
    pub(super) leases: Vec<Lease>,
}

/// The relay's background acknowledgement: at most one runs at a time.
#[derive(Debug)]
pub(super) struct Acknowledger {
    relay: Uuid,
    store: Arc<dyn RelayStore>,
    membership: Arc<Membership>,
    config: Arc<RelayConfig>,
    running: Option<(Vec<i64>, AbortOnDrop<()>)>,
}

impl Acknowledger {
    pub(super) fn new(
        relay: Uuid,
        store: Arc<dyn RelayStore>,
        membership: Arc<Membership>,
        config: Arc<RelayConfig>,
    ) -> Self {
        Acknowledger {
            relay,
            store,
            membership,
            config,
            running: None,
        }
    }

    /// Ids whose acknowledgement has not finished: the claims pass over them.
    pub(super) fn in_flight(&self) -> &[i64] {
        match &self.running {
            Some((ids, task)) if !task.0.is_finished() => ids,
            _ => &[],
        }
    }

    /// Waits for the running acknowledgement (if any) to finish.
    pub(super) async fn drain(&mut self) {
        if let Some((_, mut task)) = self.running.take() {
            // A task that panicked has nothing left to do either.
            let _ = (&mut task.0).await;
        }
    }

    /// Starts acknowledging `acked` once the previous acknowledgement has
    /// finished.
    pub(super) async fn start(&mut self, acked: Acked) {
        self.drain().await;
        if acked.rows.is_empty() {
            return;
        }
        let ids = acked.rows.iter().map(|(id, _)| *id).collect();
        let task = tokio::spawn(acknowledge(
            self.relay,
            Arc::clone(&self.store),
            Arc::clone(&self.membership),
            Arc::clone(&self.config),
            acked,
        ));
        self.running = Some((ids, AbortOnDrop(task)));
    }
}

/// Acknowledges `acked`, retrying with backoff; gives up on the rows of a
/// partition whose lease is no longer trusted in the tenure they were
/// claimed in (its next owner sends them again, as after a crash).
async fn acknowledge(
    relay: Uuid,
    store: Arc<dyn RelayStore>,
    membership: Arc<Membership>,
    config: Arc<RelayConfig>,
    mut acked: Acked,
) {
    let mut step = 0u32;
    loop {
        let ids: Vec<i64> = acked.rows.iter().map(|(id, _)| *id).collect();
        let result = store
            .acknowledge(relay, &acked.leases, &ids, config.retention)
            .await;
        let Err(e) = result else {
            return;
        };
        if config.defects.forget_failed_acknowledgements {
            tracing::warn!(error = %e, rows = ids.len(), "acknowledging published rows failed; forgotten (deliberate defect)");
            return;
        }
        // Only the partitions still ours in the same tenure are worth it:
        // the fence refuses the others anyway.
        let now = Instant::now();
        acked.leases.retain(|lease| {
            membership
                .trusted_until(std::slice::from_ref(lease))
                .is_some_and(|until| until > now)
        });
        let kept = &acked.leases;
        acked
            .rows
            .retain(|(_, p)| kept.iter().any(|lease| lease.partition == *p));
        if acked.rows.is_empty() {
            tracing::warn!(error = %e, rows = ids.len(), "acknowledging published rows failed and their leases lapsed; the partitions' next owner sends them again");
            return;
        }
        let pause = exponential(config.outage_initial, config.outage_max, step);
        step = step.saturating_add(1);
        tracing::warn!(error = %e, rows = acked.rows.len(), ?pause, "acknowledging published rows failed; retrying");
        tokio::time::sleep(pause).await;
    }
}
