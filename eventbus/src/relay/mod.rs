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

mod admin;
mod config;
mod key_gate;
mod membership;
mod metrics;
mod retention;
mod scheduled;
mod store;
mod telemetry;
mod wakeup;

use std::collections::{BTreeSet, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use uuid::Uuid;

use crate::error::Result;
use crate::outbox::OutboxRecord;
use crate::transport::{OutgoingMessage, PublishError, Publisher};

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
pub use admin::{AdminStore, FailedRow, OutboxAdmin, Status};
pub use config::{RelayConfig, Retention};
pub(crate) use key_gate::KeyGate;
use membership::Membership;
pub use metrics::{RelayMetrics, Snapshot};
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
    async fn work(
        &self,
        membership: Arc<Membership>,
        wake: Arc<Notify>,
        written: Arc<Notify>,
        stop: Arc<Notify>,
    ) -> std::result::Result<(), PublishError> {
        let mut known_destinations: HashSet<String> = HashSet::new();
        let mut outage_step = 0u32;
        loop {
            // Hand back partitions a rebalance gave to others, between batches so
            // no batch of theirs is in flight.
            let to_release = membership.to_release();
            if !to_release.is_empty() {
                match self.store.release(self.id, &to_release).await {
                    Ok(()) => membership.released(&to_release),
                    Err(e) => tracing::warn!(error = %e, "releasing partitions failed"),
                }
            }
            let owned = membership.usable();
            let mut full_batch = false;
            let mut found_rows = false;
            if !owned.is_empty() {
                match self.store.claim(self.id, &owned, self.claim_limits()).await {
                    Ok(rows) => {
                        full_batch = rows.len() as u64 >= u64::from(self.config.batch_size)
                            || self.cut_by_bytes(&rows);
                        found_rows = !rows.is_empty();
                        if !rows.is_empty() {
                            match self
                                .relay_batch(rows, &membership, &mut known_destinations)
                                .await
                            {
                                BatchOutcome::Done => outage_step = 0,
                                BatchOutcome::BrokerDown => {
                                    let pause = exponential(
                                        self.config.outage_initial,
                                        self.config.outage_max,
                                        outage_step,
                                    );
                                    outage_step = outage_step.saturating_add(1);
                                    tracing::info!(?pause, "pausing until the broker is back");
                                    if sleep_or_stop(pause, &stop).await {
                                        return Ok(());
                                    }
                                    continue;
                                }
                                BatchOutcome::Fatal(e) => {
                                    tracing::error!(error = %e, "fatal broker error; the relay stops");
                                    return Err(e);
                                }
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "claiming outbox rows failed; retrying");
                        if sleep_or_stop(self.config.poll_interval, &stop).await {
                            return Ok(());
                        }
                        continue;
                    }
                }
            }
            if full_batch {
                // More is waiting: go again, unless asked to stop.
                if stop_requested(&stop) {
                    return Ok(());
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
                () = stop.notified() => return Ok(()),
            }
        }
    }

    /// Publishes one claimed batch and records the outcome of every row.
    async fn relay_batch(
        &self,
        rows: Vec<OutboxRecord>,
        membership: &Membership,
        known_destinations: &mut HashSet<String>,
    ) -> BatchOutcome {
        // The tenure the rows were claimed in: every write about them is
        // fenced on it, and the send must finish while it is trusted.
        let partitions: Vec<i32> = rows
            .iter()
            .map(|r| r.partition)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let leases = membership.leases(&partitions);
        let mut rejections: Vec<Rejection> = Vec::new();
        // Once a row of a key is refused here, no later row of that key is
        // sent in this batch: they wait behind it, in order.
        let mut refused = KeyGate::default();
        let mut sendable: Vec<(&OutboxRecord, OutgoingMessage)> = Vec::with_capacity(rows.len());
        for row in &rows {
            if refused.is_stopped(row) {
                continue;
            }
            match self.prepare(row) {
                Ok(message) => sendable.push((row, message)),
                Err(reason) => {
                    refused.stop(row);
                    rejections.push(self.rejection(row, reason.error, reason.permanent));
                }
            }
        }

        if self.config.create_destinations {
            for (_, m) in &sendable {
                if known_destinations.contains(&m.destination) {
                    continue;
                }
                match self.publisher.ensure_destination(&m.destination).await {
                    Ok(()) => {
                        known_destinations.insert(m.destination.clone());
                    }
                    Err(PublishError::Unavailable(e)) => {
                        tracing::warn!(destination = %m.destination, error = %e, "broker unavailable");
                        self.broker_state(false);
                        return BatchOutcome::BrokerDown;
                    }
                    Err(e) if e.is_fatal() => return BatchOutcome::Fatal(e),
                    // A destination that cannot be created fails its messages below.
                    Err(e) => {
                        tracing::warn!(destination = %m.destination, error = %e, "cannot create destination")
                    }
                }
            }
        }

        // Fencing: publish only while every lease of the batch is still ours,
        // in the tenure the rows were claimed in.
        if leases.len() != partitions.len()
            || membership
                .trusted_until(&leases)
                .is_none_or(|until| until <= Instant::now())
        {
            tracing::info!("lease expired before publishing; dropping the batch");
            return BatchOutcome::Done;
        }
        // One `send` span per row; the message carries its trace context.
        let system = self.publisher.system();
        let spans: Vec<_> = sendable
            .iter_mut()
            .map(|(row, message)| telemetry::start_send(system, row, message))
            .collect();
        // Moved, not cloned: a copy of every message was a tenth of the relay's CPU.
        let (sent_rows, messages): (Vec<&OutboxRecord>, Vec<OutgoingMessage>) =
            sendable.into_iter().unzip();
        let started = Instant::now();
        let results = if messages.is_empty() {
            Vec::new()
        } else {
            // The send is bounded by the leases: if one lapses first (this
            // process was paused, or cut off from the database while the
            // broker is slow), another relay may already publish these keys,
            // so nothing more of this batch may go out.
            tokio::select! {
                results = self.publisher.publish_batch(&messages) => results,
                () = membership.lapse(&leases) => {
                    self.publisher.abandon().await;
                    self.metrics.lease_lapsed();
                    tracing::warn!(
                        rows = messages.len(),
                        "lease lapsed while the batch was being sent; abandoned it, \
                         its rows stay pending for the partitions' next owner"
                    );
                    return BatchOutcome::Done;
                }
            }
        };
        let latency = started.elapsed();
        let acknowledged_at = chrono::Utc::now();

        let mut acked: Vec<i64> = Vec::with_capacity(results.len());
        // Keys whose send failed, from that row on (sent rows are in id
        // order). Rows refused before sending were never sent with their
        // followers, so this starts afresh.
        let mut failed = KeyGate::default();
        let mut unavailable: Option<crate::transport::Cause> = None;
        let mut fatal: Option<PublishError> = None;
        for ((row, result), span) in sent_rows.into_iter().zip(results).zip(spans) {
            if let Some(waited) = telemetry::finish_send(span, row, &result, acknowledged_at) {
                self.metrics.outbox_wait(waited);
            }
            // An earlier row of this key failed. This one may have reached
            // the broker anyway (sends are pipelined), but it stays pending and
            // goes again after that row: acknowledging it now would let the
            // earlier row follow it for good.
            if failed.is_stopped(row) {
                continue;
            }
            match result {
                Ok(delivered) => {
                    if delivered.unroutable {
                        let destination = self.config.broker_destination(&row.destination);
                        tracing::info!(id = row.id, event_type = %row.event_type, %destination, "no queue is bound for the event; dropped (unroutable policy `drop`)");
                        self.metrics.unroutable(&destination);
                    }
                    acked.push(row.id);
                }
                Err(PublishError::Unavailable(e)) => {
                    tracing::debug!(id = row.id, error = %e, "broker unavailable");
                    failed.stop(row);
                    unavailable.get_or_insert(e);
                }
                // Stays pending, behind its key's rejected row; no attempt used.
                Err(PublishError::NotSent(_)) => failed.stop(row),
                // Stays pending; the relay stops once the batch is recorded.
                Err(e) if e.is_fatal() => {
                    failed.stop(row);
                    fatal.get_or_insert(e);
                }
                Err(e) => {
                    failed.stop(row);
                    rejections.push(self.rejection(row, e.to_string(), false));
                }
            }
        }
        if !messages.is_empty() {
            self.metrics.batch(latency, messages.len());
        }
        self.metrics.published(acked.len() as u64);
        self.metrics.rejected(rejections.len() as u64);
        self.metrics
            .parked(rejections.iter().filter(|r| r.park).count() as u64);

        if !acked.is_empty() {
            if let Err(e) = self
                .store
                .acknowledge(self.id, &leases, &acked, self.config.retention)
                .await
            {
                // The events reached the broker; they will be sent again, and the
                // consumers' inbox absorbs the duplicates.
                tracing::warn!(error = %e, rows = acked.len(), "acknowledging published rows failed");
            }
        }
        if !rejections.is_empty() {
            for r in &rejections {
                let trace_id = rows
                    .iter()
                    .find(|row| row.id == r.id)
                    .and_then(telemetry::trace_id);
                tracing::warn!(id = r.id, trace_id = trace_id.as_deref(), parked = r.park, error = %r.error, "event rejected");
            }
            if let Err(e) = self.store.reject(self.id, &leases, &rejections).await {
                tracing::warn!(error = %e, "recording rejected rows failed");
            }
        }
        self.broker_state(unavailable.is_none() && fatal.is_none());
        if let Some(e) = fatal {
            BatchOutcome::Fatal(e)
        } else if let Some(reason) = unavailable {
            tracing::warn!(%reason, "broker unavailable");
            self.metrics.outage();
            BatchOutcome::BrokerDown
        } else {
            BatchOutcome::Done
        }
    }

    /// Checks a row and builds its message; a row that can never be sent is
    /// refused here without bothering the broker.
    fn prepare(&self, row: &OutboxRecord) -> std::result::Result<OutgoingMessage, Refusal> {
        // Before anything reaches the broker, or creates a destination there.
        if let Err(error) = self.config.check_destination(&row.destination) {
            return Err(Refusal {
                error,
                permanent: true,
            });
        }
        if row.payload.len() > self.config.max_message_bytes {
            return Err(Refusal {
                error: format!(
                    "event is {} bytes, more than max_message_bytes = {}",
                    row.payload.len(),
                    self.config.max_message_bytes
                ),
                permanent: false,
            });
        }
        let envelope = row
            .to_envelope(&self.config.default_source)
            .map_err(|e| Refusal {
                error: format!("cannot build CloudEvent: {e}"),
                permanent: true,
            })?;
        Ok(OutgoingMessage {
            destination: self.config.broker_destination(&row.destination),
            envelope,
        })
    }

    /// The claim's limits from the configuration.
    fn claim_limits(&self) -> ClaimLimits {
        ClaimLimits {
            rows: self.config.batch_size,
            bytes: self.config.claim_bytes as u64,
            max_message_bytes: self.config.max_message_bytes as u64,
        }
    }

    /// Whether the byte budget may have ended this claim early: then more
    /// rows may be waiting, as after a full batch.
    fn cut_by_bytes(&self, rows: &[OutboxRecord]) -> bool {
        let loaded: usize = rows.iter().map(|r| r.payload.len()).sum();
        // A row left out did not fit: it is at most `max_message_bytes`.
        loaded.saturating_add(self.config.max_message_bytes) > self.config.claim_bytes
    }

    fn rejection(&self, row: &OutboxRecord, error: String, permanent: bool) -> Rejection {
        let attempts = u32::try_from(row.attempts).unwrap_or(0).saturating_add(1);
        Rejection {
            id: row.id,
            park: permanent || attempts >= self.config.max_attempts,
            retry_in: self.config.retry_delay(attempts),
            error,
        }
    }

    fn broker_state(&self, available: bool) {
        self.metrics
            .update_snapshot(|s| s.broker_available = available);
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

/// Why [`Relay::prepare`] refused a row.
struct Refusal {
    error: String,
    /// Retrying cannot help (park at once).
    permanent: bool,
}

enum BatchOutcome {
    Done,
    BrokerDown,
    /// The publisher cannot go on: the relay stops with this error.
    Fatal(PublishError),
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
