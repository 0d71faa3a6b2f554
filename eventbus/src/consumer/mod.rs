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
mod single;
mod supervise;
mod telemetry;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Notify, Semaphore};

use crate::error::Result;
use crate::inbox::InboxDatabase;
use crate::outbox::{Outbox, OutboxDatabase};
use crate::table::TableName;
use crate::telemetry::span::MessagingSpan;
use crate::transport::{Publisher, Received, Subscriber};

pub use builder::ConsumerBuilder;
pub use context::{BatchContext, Context, TransactionGuard};
pub use dead_letter::DeadLetterKeys;
pub use gate::NewerVersions;
pub use metrics::ConsumerMetrics;
pub use retry::RetryPolicy;

use handler::{Failure, Registry};

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
}
