//! Consumers: typed handlers over a [`Subscriber`], dispatched by CloudEvents
//! type, in one of three delivery modes, with retries, dead letters and
//! bounded in-flight work.
//!
//! Each message runs in a database transaction handed to the handler through
//! its [`Context`]; in [`DeliveryMode::EffectivelyOnce`] the inbox row joins the
//! same transaction, so a redelivered duplicate changes nothing. A batch
//! handler ([`ConsumerBuilder::on_batch`]) gets several events of one type in
//! one transaction, through a [`BatchContext`].
//!
//! Handlers are written for their event's current schema version: older
//! messages are upcast first ([`ConsumerBuilder::upcast`]), newer ones are set
//! aside for an upgraded consumer ([`NewerVersions`]).

mod attempts;
mod batch;
mod builder;
mod context;
pub mod dead_letter;
mod gate;
mod given_back;
mod group;
mod handler;
mod inbox_retention;
mod metrics;
mod pace;
mod parking;
mod retry;
mod supervise;
mod telemetry;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Notify, Semaphore};

use crate::envelope::Envelope;
use crate::error::{Error, Result};
use crate::inbox::InboxDatabase;
use crate::inbox::ParkedState;
use crate::outbox::{Outbox, OutboxDatabase};
use crate::table::TableName;
use crate::telemetry::span::MessagingSpan;
use crate::transport::{MessageInfo, Publisher, Received, Subscriber};

pub use builder::ConsumerBuilder;
pub use context::{BatchContext, Context, TransactionGuard};
pub use dead_letter::DeadLetterKeys;
pub use gate::NewerVersions;
pub use metrics::ConsumerMetrics;
pub use retry::RetryPolicy;

use handler::{Failure, Handler, Registry};

/// When the broker is told a message is done, relative to the handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryMode {
    /// Acknowledge first, then handle once: a crash loses the message, never
    /// repeats it.
    AtMostOnce,
    /// Handle, commit, then acknowledge: a crash between commit and
    /// acknowledgement repeats the handler.
    AtLeastOnce,
    /// Like at-least-once, plus an inbox row in the handler's transaction: a
    /// repeated delivery is recognised and skipped. Attempts are counted in
    /// the database too (`<inbox>_attempts`), so a message that kills the
    /// process is dead-lettered after its attempts instead of looping. The
    /// default.
    EffectivelyOnce,
}

/// What to do with an event type no handler is registered for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownTypes {
    /// Send it to the dead-letter destination (default).
    DeadLetter,
    /// Acknowledge and ignore it (a destination shared by many event types).
    Skip,
}

/// A running consumer group member: pulls from its subscriber, runs handlers,
/// settles messages.
#[derive(Debug)]
pub struct Consumer<DB: sqlx::Database> {
    shared: Arc<Shared<DB>>,
    subscriber: tokio::sync::Mutex<Box<dyn Subscriber>>,
}

#[derive(Debug)]
struct Shared<DB: sqlx::Database> {
    group: String,
    mode: DeliveryMode,
    registry: Registry<DB>,
    retry: RetryPolicy,
    /// The longest a handler call may take (off by default).
    handler_timeout: Option<Duration>,
    unknown: UnknownTypes,
    newer_versions: NewerVersions,
    max_in_flight: usize,
    rate_limit: Option<u32>,
    pacer: Option<pace::Pacer>,
    batch_linger: Duration,
    /// Group commit's bounds; `None` when off (and outside effectively-once).
    group_commit: Option<group::GroupCommit>,
    inbox_table: TableName,
    /// How long inbox rows are kept, when a background sweep deletes them.
    inbox_retention: Option<Duration>,
    outbox: Outbox,
    pool: sqlx::Pool<DB>,
    dead_letters: Arc<dyn Publisher>,
    dead_letter_destinations: tokio::sync::Mutex<HashSet<String>>,
    /// What a dead letter does to its key.
    dead_letter_keys: DeadLetterKeys,
    /// How often the parked table is read for due messages.
    parked_poll: Duration,
    /// Attempts share it; a message suspected of killing the process takes
    /// it alone (`attempts` module).
    isolation: tokio::sync::RwLock<()>,
    metrics: ConsumerMetrics,
    stopping: Notify,
    stopped: std::sync::atomic::AtomicBool,
}

impl<DB> Consumer<DB>
where
    DB: InboxDatabase + OutboxDatabase,
{
    /// Starts building a consumer for group `group` (Kafka `group.id`, RabbitMQ
    /// queue name); also the inbox's consumer name. The database follows from
    /// the handlers' [`Context`] type and the pool given to
    /// [`ConsumerBuilder::build`].
    pub fn builder(group: impl Into<String>) -> ConsumerBuilder<DB> {
        ConsumerBuilder::new(group)
    }
}

/// What handling one message ended in.
enum Outcome {
    Handled,
    Duplicate,
    DeadLettered,
    /// Given back to the broker (shutdown during retries, or neither the
    /// broker nor the database could take what had to be written).
    Released,
    /// Taken off the broker into the parked table, to be handled later.
    Parked,
}

impl<DB> Consumer<DB>
where
    DB: InboxDatabase + OutboxDatabase,
{
    /// Counters of this consumer.
    pub fn metrics(&self) -> &ConsumerMetrics {
        &self.shared.metrics
    }

    /// Consumes until `shutdown` completes; then stops fetching, finishes the
    /// handlers in flight, settles their messages, gives back the ones not
    /// started, and leaves the group.
    ///
    /// # Errors
    ///
    /// If closing the subscription fails, or the subscriber reports a failure
    /// it cannot recover from ([`crate::Error::is_fatal`]): the consumer then
    /// shuts down as above and returns that error. Message-level trouble is
    /// handled (retried, dead-lettered) and never ends the loop, nor does a
    /// broker that is unavailable for a while.
    pub async fn run(&self, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
        let permits = Arc::new(Semaphore::new(self.shared.max_in_flight));
        let mut lanes: HashMap<u64, mpsc::UnboundedSender<Queued>> = HashMap::new();
        let mut workers = tokio::task::JoinSet::new();
        let pace = self
            .shared
            .rate_limit
            .map(|n| Duration::from_secs_f64(1.0 / f64::from(n)));
        let mut next_start = tokio::time::Instant::now();
        let mut subscriber = self.subscriber.lock().await;
        let mut fatal = None;
        let sweeper = self.shared.inbox_retention.map(|window| {
            inbox_retention::Sweeper::start(
                self.shared.pool.clone(),
                self.shared.inbox_table.clone(),
                self.shared.group.clone(),
                window,
            )
        });
        let parked = tokio::spawn(parking::take_up_parked(Arc::clone(&self.shared)));
        tokio::pin!(shutdown);
        loop {
            // Backpressure: no permit, no fetch.
            let permit = tokio::select! {
                p = Arc::clone(&permits).acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
                () = &mut shutdown => break,
            };
            if let Some(pace) = pace {
                tokio::select! {
                    () = tokio::time::sleep_until(next_start) => {}
                    () = &mut shutdown => break,
                }
                next_start = tokio::time::Instant::now().max(next_start) + pace;
            }
            let received = tokio::select! {
                r = subscriber.next() => r,
                () = &mut shutdown => break,
            };
            let message = match received {
                None => break,
                Some(Ok(m)) => m,
                Some(Err(e)) if e.is_fatal() => {
                    tracing::error!(group = %self.shared.group, error = %e, "receiving failed for good; the consumer stops");
                    fatal = Some(e);
                    break;
                }
                Some(Err(e)) => {
                    tracing::warn!(group = %self.shared.group, error = %e, "receiving failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let lane = message.lane;
            let sender = lanes.entry(lane).or_insert_with(|| {
                let (tx, rx) = mpsc::unbounded_channel();
                workers.spawn(lane_worker(Arc::clone(&self.shared), rx));
                tx
            });
            if let Err(mpsc::error::SendError((message, _))) = sender.send((message, permit)) {
                // The worker is gone (it panicked): give the message back.
                let _ = message.settle.release().await;
                lanes.remove(&lane);
            }
        }
        // Shutdown: workers finish their current message, release the queued ones.
        self.shared
            .stopped
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.shared.stopping.notify_waiters();
        drop(lanes);
        while workers.join_next().await.is_some() {}
        if let Err(e) = parked.await {
            tracing::warn!(group = %self.shared.group, error = %e, "the parked-message task ended abnormally");
        }
        if let Some(sweeper) = sweeper {
            sweeper.stop().await;
        }
        let closed = subscriber.close().await;
        match fatal {
            Some(e) => Err(e),
            None => closed,
        }
    }
}

/// A message handed to a lane, with its in-flight slot.
type Queued = (Received, tokio::sync::OwnedSemaphorePermit);

/// Handles one lane's messages one after another, in arrival order: alone, or
/// consecutive messages of a batch-handled type together.
async fn lane_worker<DB>(shared: Arc<Shared<DB>>, rx: mpsc::UnboundedReceiver<Queued>)
where
    DB: InboxDatabase + OutboxDatabase,
{
    let mut lane = batch::Lane::new(rx);
    // Messages given back to the broker, until they come round again: what
    // would overtake them is given back too (`given_back` module).
    let mut awaited = given_back::Awaited::default();
    // Since when the lane has been waiting (idle or giving back) rather than
    // handling: only that time counts against what it awaits.
    let mut waiting_since = tokio::time::Instant::now();
    // Group only while nothing given back is awaited: until it comes round,
    // each message is weighed on its own.
    while let Some(work) = lane.next(&shared, awaited.is_empty()).await {
        awaited.charge(waiting_since.elapsed());
        waiting_since = tokio::time::Instant::now();
        if shared.stopped.load(std::sync::atomic::Ordering::SeqCst) {
            // Not started: back to the broker.
            work.release().await;
            continue;
        }
        if awaited.holds_back(&work) {
            // Not at once: the broker hands it straight back.
            tokio::time::sleep(RELEASE_PAUSE).await;
            work.release().await;
            continue;
        }
        if let Some(pacer) = &shared.pacer {
            let messages = match &work {
                batch::Work::One(_) => 1,
                batch::Work::Batch(_, batch) => batch.len(),
                batch::Work::Group(group) => group.len(),
            };
            if !pacer.turn(messages, shared.stopping.notified()).await {
                work.release().await;
                continue;
            }
        }
        match work {
            batch::Work::One(queued) => {
                let (message, _permit) = *queued;
                awaited.extend(shared.handle(message).await);
            }
            batch::Work::Batch(registration, batch) => {
                awaited.extend(shared.handle_batch(registration, batch).await);
            }
            batch::Work::Group(group) => {
                let handled = shared.handle_group(group).await;
                awaited.extend(handled.given_back);
                lane.put_back(handled.rest, handled.alone);
            }
        }
        waiting_since = tokio::time::Instant::now();
    }
}

/// The pause before a lane gives back a message behind one it gave back.
const RELEASE_PAUSE: Duration = Duration::from_millis(50);

impl<DB> Shared<DB>
where
    DB: InboxDatabase + OutboxDatabase,
{
    /// Handles one message and settles it; what to await if it was given
    /// back to the broker.
    async fn handle(&self, message: Received) -> Option<given_back::GivenBack> {
        self.handle_after(message, None).await
    }

    /// [`handle`](Self::handle) for a message whose first attempt was made
    /// in a group commit and failed (`tried`: its span and failure), or for
    /// a new message (`None`).
    async fn handle_after(
        &self,
        message: Received,
        tried: Option<(MessagingSpan, Failure)>,
    ) -> Option<given_back::GivenBack> {
        let Received {
            destination,
            envelope,
            body,
            settle,
            info,
            ..
        } = message;
        if !settle.is_current() {
            // The broker took it back (its channel closed) and redelivers it:
            // handled here too, it could run beside its redelivery.
            tracing::debug!(group = %self.group, "a message the broker took back is left to its redelivery");
            return None;
        }
        let mut id = None;
        let outcome = match envelope {
            Err(e) => {
                let reason = format!("not a CloudEvent: {e}");
                let wrapped = dead_letter::wrap_body(&body, &self.group);
                self.dead_letter(&wrapped, &destination, 1, &reason).await
            }
            Ok(envelope) => {
                id = Some(given_back::GivenBack::of(&envelope, &info));
                if let Some((span, failure)) = tried {
                    // Counted as arrived by its group; effectively once only.
                    let outcome = self
                        .handle_event_in(&destination, envelope, false, span, Some(failure))
                        .await;
                    return self.settle_one(settle, outcome, id).await;
                }
                telemetry::arrived(&self.metrics, &envelope, &info);
                if self.mode == DeliveryMode::AtMostOnce {
                    // Acknowledge first, durably: from here on the broker will
                    // not repeat it, even if this process dies next.
                    if let Err(e) = settle.ack_durably().await {
                        tracing::warn!(error = %e, "acknowledging failed; skipping the message");
                        return None;
                    }
                    let outcome = self.handle_event(&destination, envelope, true, &info).await;
                    self.metrics.record(&outcome);
                    return None;
                }
                self.handle_event(&destination, envelope, false, &info)
                    .await
            }
        };
        self.settle_one(settle, outcome, id).await
    }

    /// Records `outcome` and settles its message; `id` if it was given back.
    async fn settle_one(
        &self,
        settle: Box<dyn crate::transport::Settle>,
        outcome: Outcome,
        id: Option<given_back::GivenBack>,
    ) -> Option<given_back::GivenBack> {
        self.metrics.record(&outcome);
        let released = matches!(outcome, Outcome::Released);
        let settled = if released {
            settle.release().await
        } else {
            settle.ack().await
        };
        if let Err(e) = settled {
            // It will be delivered again; the inbox absorbs the repeat.
            tracing::warn!(group = %self.group, error = %e, "settling a message failed");
        }
        id.filter(|_| released)
    }

    /// Runs the handler with retries inside the message's `process` span
    /// (whose context is active for the handler); dead-letters what cannot be
    /// handled.
    async fn handle_event(
        &self,
        destination: &str,
        envelope: Envelope,
        once: bool,
        info: &MessageInfo,
    ) -> Outcome {
        let span = telemetry::process_span(&self.group, destination, &envelope, info);
        self.handle_event_in(destination, envelope, once, span, None)
            .await
    }

    /// [`handle_event`](Self::handle_event) in `span`; `prior` is the failure
    /// of a first attempt made in a group commit, which the retries follow.
    async fn handle_event_in(
        &self,
        destination: &str,
        envelope: Envelope,
        once: bool,
        span: MessagingSpan,
        prior: Option<Failure>,
    ) -> Outcome {
        let started = std::time::Instant::now();
        let attempts = std::sync::atomic::AtomicU32::new(0);
        let outcome = span
            .scope(async {
                let id = envelope.id.clone();
                let outcome = self
                    .run_handler(destination, envelope, once, &span, &attempts, prior)
                    .await;
                // Inside the span: the line carries the trace id.
                tracing::debug!(group = %self.group, %id, outcome = telemetry::outcome_name(&outcome), "message settled");
                outcome
            })
            .await;
        self.metrics.handling(started.elapsed());
        telemetry::finish(span, &outcome, attempts.into_inner());
        outcome
    }

    /// The retry loop of [`handle_event`](Self::handle_event); counts the
    /// attempts made into `attempts`.
    async fn run_handler(
        &self,
        destination: &str,
        envelope: Envelope,
        once: bool,
        span: &MessagingSpan,
        attempts: &std::sync::atomic::AtomicU32,
        mut prior: Option<Failure>,
    ) -> Outcome {
        // Behind a parked message of its key: parked too, to keep the order.
        match self.key_is_held(&envelope).await {
            Ok(false) => {}
            Ok(true) => {
                let outcome = self
                    .park(
                        &envelope,
                        destination,
                        ParkedState::Waiting,
                        0,
                        Duration::ZERO,
                        None,
                        true,
                        Outcome::Parked,
                    )
                    .await;
                if self.mode == DeliveryMode::EffectivelyOnce {
                    // A count a batch left for it: the parked row counts now.
                    attempts::forget(self, &envelope, &outcome).await;
                }
                return outcome;
            }
            Err(e) => {
                tracing::error!(group = %self.group, id = %envelope.id, error = %e, "cannot read the parked table; giving the message back");
                tokio::time::sleep(Duration::from_secs(1)).await;
                return Outcome::Released;
            }
        }
        let Some(handler) = self.registry.get(&envelope.event_type).cloned() else {
            return match self.unknown {
                UnknownTypes::Skip => Outcome::Handled,
                UnknownTypes::DeadLetter => {
                    let reason = format!("no handler for event type `{}`", envelope.event_type);
                    span.fail("no_handler", &reason);
                    self.dead_letter(&envelope, destination, 0, &reason).await
                }
            };
        };
        let version = envelope.schema_version().unwrap_or(1);
        if version > handler.version() {
            return self
                .gate(
                    destination,
                    &envelope,
                    version,
                    handler.version(),
                    once,
                    span,
                )
                .await;
        }
        // Effectively once, every attempt (immediate retries too: a process
        // can die in any of them) is counted in the database before it
        // starts, so the count survives the process (`attempts` module).
        let durable = self.mode == DeliveryMode::EffectivelyOnce;
        let mut attempt = 1;
        let mut first_here = true;
        loop {
            let result = if let Some(failure) = prior.take() {
                // Attempt 1 ran (and was counted) in a group commit and
                // failed: the retries go on from it.
                first_here = false;
                attempts.store(attempt, std::sync::atomic::Ordering::Relaxed);
                Err(failure)
            } else {
                let mut counted = Ok(None);
                if durable {
                    match attempts::count(self, &envelope, first_here).await {
                        Ok(attempts::Count::Go(n, guard)) => {
                            attempt = n;
                            counted = Ok(Some(guard));
                        }
                        Ok(attempts::Count::UsedUp(n)) => {
                            attempts.store(n, std::sync::atomic::Ordering::Relaxed);
                            return attempts::give_up(self, destination, &envelope, n, span)
                                .await;
                        }
                        Err(f) => counted = Err(f),
                    }
                }
                first_here = false;
                attempts.store(attempt, std::sync::atomic::Ordering::Relaxed);
                match counted {
                    Ok(_guard) => self.attempt(&handler, &envelope, attempt).await,
                    Err(f) => Err(f),
                }
            };
            let failure = match result {
                Ok(outcome) => return outcome,
                Err(f) => f,
            };
            let (reason, permanent) = match failure {
                Failure::Permanent(r) => (r, true),
                Failure::Transient(r) => (r, false),
            };
            tracing::warn!(group = %self.group, id = %envelope.id, attempt, error = %reason, "handling failed");
            if durable {
                attempts::note_failure(self, &envelope, attempt, &reason).await;
            }
            let delay = if permanent || once {
                None
            } else {
                self.retry.delay_before(attempt + 1)
            };
            let Some(delay) = delay else {
                let kind = if permanent {
                    "undecodable"
                } else {
                    "handler_failed"
                };
                span.fail(kind, &reason);
                let outcome = self
                    .dead_letter(&envelope, destination, attempt, &reason)
                    .await;
                if durable {
                    attempts::forget(self, &envelope, &outcome).await;
                }
                return outcome;
            };
            span.failed_attempt(attempt, &reason);
            self.metrics.retried();
            if attempt > self.retry.immediate {
                // A delayed retry: parked, so that the lane's other keys go
                // on meanwhile; its own key waits behind it.
                let outcome = self
                    .park(
                        &envelope,
                        destination,
                        ParkedState::Retry,
                        attempt,
                        delay,
                        Some(&reason),
                        true,
                        Outcome::Parked,
                    )
                    .await;
                if durable {
                    attempts::forget(self, &envelope, &outcome).await;
                }
                return outcome;
            }
            attempt += 1;
            let stopping = self.stopping.notified();
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = stopping => return Outcome::Released,
            }
            if self.stopped.load(std::sync::atomic::Ordering::SeqCst) {
                return Outcome::Released;
            }
        }
    }

    /// One attempt: transaction, inbox row (effectively once), handler, commit.
    async fn attempt(
        &self,
        handler: &Handler<DB>,
        envelope: &Envelope,
        attempt: u32,
    ) -> std::result::Result<Outcome, Failure> {
        let registration = match handler {
            Handler::One(registration) => registration,
            Handler::Batch(registration) => {
                // A batch of one: an event left alone after its batch failed,
                // or one that came without neighbours of its type.
                let mut outcomes = self
                    .attempt_batch(registration, std::slice::from_ref(envelope), attempt)
                    .await?;
                // Its attempt count went with the batch's transaction.
                return outcomes.pop().ok_or_else(|| {
                    Failure::Transient("a batch of one ended without an outcome".into())
                });
            }
        };
        let transient = |e: Error| Failure::Transient(e.to_string());
        let mut tx = self.pool.begin().await.map_err(|e| transient(e.into()))?;
        if self.mode == DeliveryMode::EffectivelyOnce {
            let fresh = DB::try_record(&mut *tx, &self.inbox_table, &self.group, envelope)
                .await
                .map_err(transient)?;
            // The attempt count goes with the inbox row: gone if this commits
            // (handled, or found a duplicate), back if it rolls back.
            DB::forget_attempts(&mut *tx, &self.inbox_table, &self.group, envelope)
                .await
                .map_err(transient)?;
            if !fresh {
                // Nothing but the count's deletion to keep; should it fail,
                // a later delivery deletes it.
                let _ = tx.commit().await;
                return Ok(Outcome::Duplicate);
            }
        }
        // The `process` span active around us: follow-up events are its children.
        let trace = crate::telemetry::span::current();
        let ctx = Context::new(envelope.clone(), attempt, self.outbox.clone(), tx, trace);
        let result = supervise::supervised(self.handler_timeout, || {
            (registration.call)(ctx.clone(), envelope, &self.registry.upcasters)
        })
        .await;
        if let Err(f) = result {
            // Failed, panicked or timed out: nothing of the attempt stays.
            if let Some(tx) = ctx.abandon() {
                let _ = tx.rollback().await;
            }
            return Err(f);
        }
        match ctx.finish().await.map_err(transient)? {
            Some(tx) => {
                tx.commit().await.map_err(|e| transient(e.into()))?;
                Ok(Outcome::Handled)
            }
            None => Err(Failure::Transient(
                "the handler's transaction vanished".into(),
            )),
        }
    }
}
