//! The relay: claims committed outbox rows, publishes them to the broker, waits
//! for acknowledgement, then deletes (or marks) them — in order per key, with
//! any number of relay instances sharing the partitions.
//!
//! The loop: *claim* a batch from the partitions this relay leases → *check*
//! each row (decodable, not oversized) → *publish* the batch pipelined → on
//! acknowledgement *acknowledge* the rows; on a message-specific rejection
//! record the attempt with exponential backoff (parking the row after
//! `max_attempts`), on a broker-wide outage pause with backoff without counting
//! attempts. Every row write is fenced on the partition lease.

mod acks;
mod admin;
mod batch;
mod config;
mod key_gate;
#[cfg(feature = "postgres")]
mod log;
mod membership;
mod metrics;
mod retention;
mod row_limit;
mod scheduled;
mod store;
mod telemetry;
mod wakeup;

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use uuid::Uuid;

use crate::error::Result;
use crate::transport::{PublishError, Publisher};

#[cfg(feature = "mysql")]
#[doc(inline)]
pub use crate::backend::mysql::MySqlRelayStore;
#[cfg(feature = "postgres")]
#[doc(inline)]
pub use crate::backend::postgres::PgRelayStore;
#[cfg(feature = "sqlite")]
#[doc(inline)]
pub use crate::backend::sqlite::SqliteRelayStore;
use crate::backoff::exponential;
use acks::Acknowledger;
pub use admin::{AdminStore, FailedRow, OutboxAdmin, Status};
use batch::{BatchOutcome, Claimed};
#[doc(hidden)]
pub use config::Defects;
pub use config::{RelayConfig, Retention};
pub(crate) use key_gate::KeyGate;
use membership::Membership;
pub use metrics::{RelayMetrics, Snapshot};
use row_limit::RowLimit;
#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
pub(crate) use store::leases;
pub use store::{ClaimLimits, Lease, Rejection, RelayStore};
pub(crate) use wakeup::written;

/// Forwards outbox rows to a broker. Build one with [`Relay::new`], then
/// [`run`](Relay::run) it until shutdown.
///
/// Stop it through `run`'s shutdown future. A relay that is dropped or whose
/// task is aborted instead stops mid-statement; its connections then go back
/// to their pool with a transaction still open, so give an in-process relay
/// a pool of its own rather than the one your handlers use (the sidecar
/// `outbox-relay` is a process of its own and has none of this).
///
/// ```no_run
/// # #[cfg(all(feature = "postgres", feature = "kafka"))]
/// # async fn demo() -> eventbus::Result<()> {
/// use std::sync::Arc;
/// use eventbus::relay::{PgRelayStore, Relay, RelayConfig};
/// use eventbus::transport::kafka::KafkaPublisher;
///
/// let pool = sqlx::PgPool::connect("postgres://postgres@127.0.0.1/shop").await?;
/// let config = RelayConfig::default();
/// let store = PgRelayStore::new(pool, config.table.clone());
/// let publisher = KafkaPublisher::builder("127.0.0.1:9092").build()?;
/// let relay = Relay::new(Arc::new(store), Arc::new(publisher), config)?;
/// relay.run(async { let _ = tokio::signal::ctrl_c().await; }).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Relay {
    id: Uuid,
    store: Arc<dyn RelayStore>,
    publisher: Arc<dyn Publisher>,
    config: Arc<RelayConfig>,
    metrics: Arc<RelayMetrics>,
    /// Shared with the claims made ahead on their own tasks.
    row_limit: Arc<RowLimit>,
}

impl Relay {
    /// A relay over `store` publishing through `publisher`.
    ///
    /// # Errors
    ///
    /// [`crate::Error::Config`] if `config` does not validate.
    pub fn new(
        store: Arc<dyn RelayStore>,
        publisher: Arc<dyn Publisher>,
        config: RelayConfig,
    ) -> Result<Self> {
        config.validate()?;
        let metrics = RelayMetrics::new(config.name.clone(), config.table.to_string());
        Ok(Relay {
            id: Uuid::now_v7(),
            store,
            publisher,
            row_limit: Arc::new(RowLimit::new(config.batch_size)),
            config: Arc::new(config),
            metrics: Arc::new(metrics),
        })
    }

    /// This instance's id, as recorded in the membership table.
    pub fn id(&self) -> Uuid {
        self.id
    }

    /// Live figures, for `/metrics` (also recorded through the [`metrics`](::metrics)
    /// facade, labelled with the configuration's `name` and `table`).
    pub fn metrics(&self) -> Arc<RelayMetrics> {
        Arc::clone(&self.metrics)
    }

    /// Runs until `shutdown` completes, then finishes the in-flight batch,
    /// releases its partitions and deregisters.
    ///
    /// Database and broker trouble never ends the loop: the relay logs, backs off
    /// and carries on. It returns only on shutdown, a configuration problem
    /// found at start, or a broker error that retrying cannot mend.
    ///
    /// # Errors
    ///
    /// [`crate::Error::NotMigrated`] if the outbox tables are missing at start;
    /// [`crate::Error::Publish`] with [`PublishError::Fatal`] when the
    /// publisher reports one (the rows of that batch stay pending).
    pub async fn run(&self, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
        let partitions = self.store.partitions().await?;
        let membership = Arc::new(Membership::new(self.id, partitions));
        let wake = Arc::new(Notify::new());
        // Writes by this process (see `wakeup`): heeded only by an idle relay.
        let written = Arc::new(Notify::new());
        let stop = Arc::new(Notify::new());

        // Held in guards: if this future is dropped (the caller's task aborted),
        // the heartbeat must stop too, or it would renew a dead relay's leases
        // forever and its partitions would never move.
        let listener = AbortOnDrop(tokio::spawn({
            let store = Arc::clone(&self.store);
            let wake = Arc::clone(&wake);
            async move {
                if let Err(e) = store.listen(wake).await {
                    tracing::warn!(error = %e, "outbox notifications unavailable; polling only");
                }
            }
        }));
        // Writes by this process to the outbox wake the relay at once; the
        // poll stays the fallback (see `wakeup`).
        let writes = self.config.in_process_wakeups.then(|| {
            AbortOnDrop(tokio::spawn(wakeup::follow(
                wakeup::Writes::on(self.config.table.clone()),
                Arc::clone(&written),
                self.config.poll_interval,
            )))
        });
        let heart = AbortOnDrop(tokio::spawn(membership::keep_alive(
            Arc::clone(&membership),
            Arc::clone(&self.store),
            Arc::clone(&self.config),
            Arc::clone(&self.metrics),
            Arc::clone(&wake),
        )));

        let stats = AbortOnDrop(tokio::spawn(watch_backlog(
            Arc::clone(&membership),
            Arc::clone(&self.store),
            Arc::clone(&self.config),
            Arc::clone(&self.metrics),
        )));

        // Retention mode: expired rows are deleted by a task of their own, so
        // the clean-up keeps pace with the drain instead of taking turns with it.
        let cleaner = match self.config.retention {
            Retention::Keep(keep) => Some(AbortOnDrop(tokio::spawn(retention::clean_up(
                Arc::clone(&membership),
                Arc::clone(&self.store),
                Arc::clone(&self.config),
                Arc::clone(&self.metrics),
                keep,
            )))),
            Retention::Delete => None,
        };
        // Scheduled events coming due move into the outbox on their own task.
        let scheduler = AbortOnDrop(tokio::spawn(scheduled::release(
            Arc::clone(&membership),
            Arc::clone(&self.store),
            Arc::clone(&self.config),
            Arc::clone(&self.metrics),
        )));
        let worker = self.work(
            Arc::clone(&membership),
            Arc::clone(&wake),
            Arc::clone(&written),
            Arc::clone(&stop),
        );
        tokio::pin!(worker);
        tokio::pin!(shutdown);
        let outcome = tokio::select! {
            outcome = &mut worker => outcome,
            () = &mut shutdown => {
                // Let the current batch finish, then leave.
                stop.notify_one();
                worker.await
            }
        };
        drop((heart, listener, writes, stats, cleaner, scheduler));
        if let Err(e) = self.store.deregister(self.id).await {
            tracing::warn!(error = %e, "could not release partitions on shutdown; they expire with their leases");
        }
        tracing::info!(relay = %self.id, "relay stopped");
        Ok(outcome?)
    }

    /// The claim → publish → acknowledge loop; ends on a stop request or a
    /// fatal broker error.
    ///
    /// Pipelined (ADR 14): while a full batch is sent, the next one is
    /// claimed, passing over the rows in flight; once the sent batch's
    /// outcome is known, the claimed-ahead rows of every key with a row left
    /// pending are dropped (they stay pending, behind it), and the sent rows
    /// are acknowledged in the background while the next batch goes out.
    /// Sends never overlap.
    async fn work(
        &self,
        membership: Arc<Membership>,
        wake: Arc<Notify>,
        written: Arc<Notify>,
        stop: Arc<Notify>,
    ) -> std::result::Result<(), PublishError> {
        let mut known_destinations: HashSet<String> = HashSet::new();
        let mut outage_step = 0u32;
        let mut acks = Acknowledger::new(
            self.id,
            Arc::clone(&self.store),
            Arc::clone(&membership),
            Arc::clone(&self.config),
        );
        let mut ahead: Option<Claimed> = None;
        let outcome = loop {
            // Hand back partitions a rebalance gave to others with nothing of
            // theirs in flight: the claimed-ahead rows stay pending, and the
            // acknowledgement finishes first.
            let to_release = membership.to_release();
            if !to_release.is_empty() {
                ahead = None;
                acks.drain().await;
                match self.store.release(self.id, &to_release).await {
                    Ok(()) => membership.released(&to_release),
                    Err(e) => tracing::warn!(error = %e, "releasing partitions failed"),
                }
            }
            let mut batch = match ahead.take() {
                Some(batch) => batch,
                None => match self.claim(&membership, acks.in_flight()).await {
                    Ok(batch) => batch,
                    Err(e) => {
                        tracing::warn!(error = %e, "claiming outbox rows failed; retrying");
                        if sleep_or_stop(self.config.poll_interval, &stop).await {
                            break Ok(());
                        }
                        continue;
                    }
                },
            };
            let found_rows = !batch.rows.is_empty();
            if found_rows {
                // More may be waiting: claim it while this batch is sent.
                let claim_ahead = (batch.more && self.config.pipeline).then(|| {
                    let mut skip = batch.ids();
                    skip.extend_from_slice(acks.in_flight());
                    skip
                });
                // On a task of its own, so that decoding the claimed rows runs
                // on another thread than building and sending this batch.
                let claiming = claim_ahead.map(|skip| {
                    let relay = self.clone();
                    let membership = Arc::clone(&membership);
                    AbortOnDrop(tokio::spawn(async move {
                        relay.claim(&membership, &skip).await
                    }))
                });
                let sent = self
                    .relay_batch(&mut batch, &membership, &mut known_destinations)
                    .await;
                let next = match claiming {
                    Some(mut task) => Some(match (&mut task.0).await {
                        Ok(claimed) => claimed,
                        Err(e) => Err(crate::Error::InvalidState(format!(
                            "the claim ahead did not finish: {e}"
                        ))),
                    }),
                    None => None,
                };
                let outcome = sent.outcome;
                let held = batch.left_pending(&sent.acked);
                acks.start(sent.acked).await;
                if !self.config.pipeline {
                    acks.drain().await;
                }
                match outcome {
                    BatchOutcome::Done => {
                        outage_step = 0;
                        ahead = match next {
                            Some(Ok(next)) => Some(self.behind(next, &batch, &held)),
                            Some(Err(e)) => {
                                tracing::warn!(error = %e, "claiming outbox rows ahead failed");
                                None
                            }
                            None => None,
                        };
                    }
                    BatchOutcome::BrokerDown => {
                        let pause = exponential(
                            self.config.outage_initial,
                            self.config.outage_max,
                            outage_step,
                        );
                        outage_step = outage_step.saturating_add(1);
                        tracing::info!(?pause, "pausing until the broker is back");
                        if sleep_or_stop(pause, &stop).await {
                            break Ok(());
                        }
                        continue;
                    }
                    BatchOutcome::Fatal(e) => {
                        tracing::error!(error = %e, "fatal broker error; the relay stops");
                        break Err(e);
                    }
                }
            }
            if batch.more {
                // More is waiting: go again, unless asked to stop.
                if stop_requested(&stop) {
                    break Ok(());
                }
                continue;
            }
            // After a batch, look again soon: only one writer at a time sends
            // the NOTIFY (ADR 6), so a writer that skipped it may commit just
            // after this claim and would otherwise wait for the fallback poll.
            let next_look = if found_rows {
                self.config.poll_interval.min(SETTLE_POLL)
            } else {
                self.config.poll_interval
            };
            tokio::select! {
                () = wake.notified() => {}
                // A relay that just found rows looks again within 20 ms
                // anyway: writes seen meanwhile would only split its batches,
                // and on SQLite every batch is one more write transaction
                // competing with the writers.
                () = written.notified(), if !found_rows => {}
                () = tokio::time::sleep(next_look) => {}
                () = stop.notified() => break Ok(()),
            }
        };
        // Nothing is left half done: the last acknowledgement finishes
        // before the partitions are released.
        acks.drain().await;
        outcome
    }
}

/// How soon the relay claims again after a batch that was not full.
const SETTLE_POLL: Duration = Duration::from_millis(20);

/// Refreshes the backlog figures every `stats_interval`, in a task of its own so
/// a slow count never delays heartbeats.
async fn watch_backlog(
    membership: Arc<Membership>,
    store: Arc<dyn RelayStore>,
    config: Arc<RelayConfig>,
    metrics: Arc<RelayMetrics>,
) {
    loop {
        let started = tokio::time::Instant::now();
        let owned = membership.usable();
        match store.stats(&owned).await {
            Ok(fresh) => metrics.update_snapshot(|s| {
                s.backlog = fresh.backlog;
                s.oldest_pending_seconds = fresh.oldest_pending_seconds;
                s.held_back_seconds = fresh.held_back_seconds;
                s.parked_rows = fresh.parked_rows;
            }),
            Err(e) => tracing::debug!(error = %e, "backlog statistics unavailable"),
        }
        // Counting a large backlog is not free (over 1 s at a million pending
        // rows on PostgreSQL): space the counts so that they take at most a
        // tenth of the database's time, rather than compete with the drain.
        let took = started.elapsed();
        tokio::time::sleep(config.stats_interval.max(took * 10)).await;
    }
}

/// Sleeps for `d`; `true` if a stop was requested meanwhile.
async fn sleep_or_stop(d: Duration, stop: &Notify) -> bool {
    tokio::select! {
        () = tokio::time::sleep(d) => false,
        () = stop.notified() => true,
    }
}

/// Whether a stop was requested, without waiting.
fn stop_requested(stop: &Notify) -> bool {
    let notified = stop.notified();
    tokio::pin!(notified);
    // `enable` + poll once: a stored permit from `notify_one` completes it.
    futures::FutureExt::now_or_never(notified).is_some()
}

/// Aborts its task when dropped.
#[derive(Debug)]
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
