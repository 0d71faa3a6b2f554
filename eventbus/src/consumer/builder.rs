//! [`ConsumerBuilder`]: handlers, delivery mode, retries, limits, then
//! [`ConsumerBuilder::build`].

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use super::group::GroupCommit;
use super::handler::Registry;
use super::{
    inbox_retention, pace, BatchContext, Consumer, ConsumerMetrics, Context, DeadLetterKeys,
    DeliveryMode, NewerVersions, RetryPolicy, Shared, UnknownTypes,
};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::inbox::{BoxError, InboxDatabase};
use crate::outbox::{Outbox, OutboxDatabase};
use crate::saga::{Saga, SagaDatabase, SagaDefinition};
use crate::schema::Upcasters;
use crate::table::TableName;
use crate::transport::{Publisher, Subscriber};

/// How often the parked table is read by default.
const DEFAULT_PARKED_POLL: Duration = Duration::from_millis(250);

/// Builds a [`Consumer`].
///
/// ```no_run
/// # async fn demo(pool: sqlx::PgPool, subscriber: Box<dyn eventbus::transport::Subscriber>,
/// #               dead_letters: std::sync::Arc<dyn eventbus::Publisher>) -> eventbus::Result<()> {
/// use eventbus::consumer::{Consumer, DeliveryMode};
/// use eventbus::Event;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Event, Serialize, Deserialize, schemars::JsonSchema)]
/// #[event(type = "com.example.order.placed", destination = "orders", key = order_id)]
/// struct OrderPlaced { order_id: String, amount_cents: i64 }
///
/// let consumer = Consumer::builder("billing")
///     .mode(DeliveryMode::EffectivelyOnce)
///     .on(|ctx: eventbus::consumer::Context<sqlx::Postgres>, event: OrderPlaced| async move {
///         let mut tx = ctx.tx().await?;
///         sqlx::query("INSERT INTO invoices (order_id, cents) VALUES ($1, $2)")
///             .bind(&event.order_id).bind(event.amount_cents)
///             .execute(&mut **tx).await?;
///         Ok(())
///     })
///     .build(pool, subscriber, dead_letters)?;
/// consumer.run(async { let _ = tokio::signal::ctrl_c().await; }).await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct ConsumerBuilder<DB: sqlx::Database> {
    group: String,
    mode: DeliveryMode,
    registry: Registry<DB>,
    retry: RetryPolicy,
    handler_timeout: Option<Duration>,
    unknown: UnknownTypes,
    newer_versions: NewerVersions,
    dead_letter_keys: DeadLetterKeys,
    parked_poll: Duration,
    max_in_flight: usize,
    rate_limit: Option<u32>,
    batch_linger: Duration,
    group_commit: Option<GroupCommit>,
    inbox_table: TableName,
    inbox_retention: Option<Duration>,
    outbox: Outbox,
    /// The sagas joined, and the first that could not be, for `build`.
    sagas: Vec<&'static str>,
    invalid_saga: Option<String>,
}

impl<DB> ConsumerBuilder<DB>
where
    DB: InboxDatabase + OutboxDatabase,
{
    /// A builder for group `group` on any supported database.
    pub fn new(group: impl Into<String>) -> Self {
        let group = group.into();
        // Follow-ups need a source of their own; the group's name is stable.
        let outbox = Outbox::new(format!("urn:eventbus:consumer:{group}"));
        ConsumerBuilder {
            group,
            mode: DeliveryMode::EffectivelyOnce,
            registry: Registry::default(),
            retry: RetryPolicy::default(),
            handler_timeout: None,
            unknown: UnknownTypes::DeadLetter,
            newer_versions: NewerVersions::default(),
            dead_letter_keys: DeadLetterKeys::default(),
            parked_poll: DEFAULT_PARKED_POLL,
            max_in_flight: 64,
            rate_limit: None,
            batch_linger: Duration::ZERO,
            group_commit: None,
            inbox_table: crate::inbox::default_table(),
            inbox_retention: None,
            outbox,
            sagas: Vec::new(),
            invalid_saga: None,
        }
    }

    /// The delivery mode (default: effectively once).
    pub fn mode(mut self, mode: DeliveryMode) -> Self {
        self.mode = mode;
        self
    }

    /// Registers the handler for event type `E` (and its older versions),
    /// replacing any handler of `E` registered before.
    pub fn on<E, F, Fut>(mut self, handler: F) -> Self
    where
        E: Event,
        F: Fn(Context<DB>, E) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<(), BoxError>> + Send + 'static,
    {
        self.registry.add::<E, F, Fut>(handler);
        self
    }

    /// Registers a batch handler for event type `E` (and its older versions),
    /// replacing any handler of `E` registered before: it gets up to `max`
    /// events (at least 1) at once, all handled in one database transaction —
    /// in effectively-once mode with one inbox insert for the whole batch,
    /// after which the handler gets only the events not seen before.
    ///
    /// A batch is what a lane (a Kafka partition, a RabbitMQ key lane) has
    /// queued when its worker gets to it: consecutive messages of type `E`,
    /// waiting up to [`batch_linger`](Self::batch_linger) for more. Messages
    /// of other types between them are handled on their own, in order, so
    /// per-lane order holds. A batch is never larger than the messages the
    /// consumer and the subscriber keep in flight ([`max_in_flight`](Self::max_in_flight),
    /// the subscriber's prefetch): set those at least as high as `max`.
    ///
    /// If the batch fails, it is split in halves, recursively, and each half
    /// handled in a transaction of its own: the good events commit, and an
    /// event that fails alone goes through the [retry policy](Self::retry)
    /// to the dead-letter destination with the reason. Every message of the
    /// batch is settled afterwards. The handler must therefore be ready to see
    /// an event again in a smaller batch after a failure.
    ///
    /// ```no_run
    /// # async fn demo(pool: sqlx::PgPool, subscriber: Box<dyn eventbus::transport::Subscriber>,
    /// #               dead_letters: std::sync::Arc<dyn eventbus::Publisher>) -> eventbus::Result<()> {
    /// use std::time::Duration;
    /// use eventbus::consumer::{BatchContext, Consumer};
    /// use eventbus::Event;
    /// use serde::{Deserialize, Serialize};
    ///
    /// #[derive(Event, Serialize, Deserialize, schemars::JsonSchema)]
    /// #[event(type = "com.example.page.viewed", destination = "views", key = page)]
    /// struct PageViewed { page: String }
    ///
    /// let consumer = Consumer::builder("analytics")
    ///     .max_in_flight(500)
    ///     .on_batch(500, |ctx: BatchContext<sqlx::Postgres>, views: Vec<PageViewed>| async move {
    ///         let pages: Vec<String> = views.into_iter().map(|v| v.page).collect();
    ///         let mut tx = ctx.tx().await?;
    ///         sqlx::query(
    ///             "INSERT INTO page_views (page, views) SELECT p, count(*) FROM UNNEST($1::text[]) p \
    ///              GROUP BY p ON CONFLICT (page) DO UPDATE SET views = page_views.views + EXCLUDED.views",
    ///         )
    ///         .bind(&pages)
    ///         .execute(&mut **tx)
    ///         .await?;
    ///         Ok(())
    ///     })
    ///     .batch_linger(Duration::from_millis(20))
    ///     .build(pool, subscriber, dead_letters)?;
    /// consumer.run(async { let _ = tokio::signal::ctrl_c().await; }).await?;
    /// # Ok(()) }
    /// ```
    pub fn on_batch<E, F, Fut>(mut self, max: usize, handler: F) -> Self
    where
        E: Event,
        F: Fn(BatchContext<DB>, Vec<E>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<(), BoxError>> + Send + 'static,
    {
        self.registry.add_batch::<E, F, Fut>(max, handler);
        self
    }

    /// How long a lane waits for more messages to fill a batch once it has
    /// one (default zero: a batch is what is queued already, so batches grow
    /// with the backlog and an idle consumer adds no latency).
    pub fn batch_linger(mut self, linger: Duration) -> Self {
        self.batch_linger = linger;
        self
    }

    /// Turns group commit on (effectively-once mode; off by default, see
    /// below; 64 messages and a 2 ms window are a good start): a lane handles up to `max_messages` consecutive
    /// messages of single-event handlers ([`on`](Self::on)) in one database
    /// transaction, each message (its inbox row and its handler) inside a
    /// savepoint of its own, and acknowledges them after the one commit. A
    /// handler that fails rolls back only its savepoint: the messages before
    /// it commit and are acknowledged, it goes through the
    /// [retry policy](Self::retry) as a message handled alone would, and the
    /// messages behind it are handled after it, so per-key order holds.
    ///
    /// A group is what the lane has queued, plus what arrives within `window`
    /// of its first message. Throughput rises (one commit, one flush to disk,
    /// per group instead of per message) at the price of latency: a message
    /// is acknowledged, and its effects become visible to other
    /// transactions, only when its group commits — up to `window` plus the
    /// handling time of the messages grouped with it later than it would be
    /// alone; locks a handler takes are held until then too. An idle lane
    /// adds up to `window` to a lone message. Zero `window` groups only what
    /// is queued already, so groups grow with the backlog and an idle
    /// consumer adds no latency. Groups are never larger than
    /// [`max_in_flight`](Self::max_in_flight).
    ///
    /// Handlers must read and write through [`Context::tx`] only: a read on
    /// another connection (the pool) does not see the uncommitted writes of
    /// the earlier messages of its group, and a lock taken there waits for
    /// the group's transaction, which waits for the handler — forever. That
    /// cannot be told from a handler's signature, which is why group commit
    /// is off until turned on here.
    ///
    /// Not grouped (handled alone, in order, as without group commit): batch
    /// handlers' types, saga steps, messages of a key a parked message holds,
    /// of a newer schema version than the handler's, of unknown types, and
    /// what follows a message given back to the broker until it comes round.
    /// `max_messages` below 2 turns group commit off, as
    /// [`no_group_commit`](Self::no_group_commit) does. Other delivery modes
    /// never group.
    pub fn group_commit(mut self, max_messages: usize, window: Duration) -> Self {
        self.group_commit = (max_messages > 1).then_some(GroupCommit {
            max: max_messages,
            window,
        });
        self
    }

    /// Turns [group commit](Self::group_commit) off: every message is
    /// handled and committed in a transaction of its own.
    pub fn no_group_commit(mut self) -> Self {
        self.group_commit = None;
        self
    }

    /// The retry policy (default: 2 immediate, 3 delayed from 1 s).
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// The longest one handler call (single-event or batch) may take; off by
    /// default. A call that takes longer is cancelled — its future dropped at
    /// its next `.await`, its transaction rolled back — and counts as a failed
    /// attempt: retried per the [retry policy](Self::retry), then
    /// dead-lettered with the timeout as the reason (a batch is split first,
    /// as after any failure). Choose it well above the slowest legitimate
    /// call: a handler that blocks its thread without awaiting is not
    /// interrupted, and side effects outside the transaction (a call to
    /// another service) may already have happened.
    pub fn handler_timeout(mut self, limit: Duration) -> Self {
        self.handler_timeout = Some(limit);
        self
    }

    /// Registers the upcaster of `E`'s payload from schema version `from` to
    /// `from + 1`, for messages older than `E::VERSION`: the handler of `E`
    /// receives a v1 message once every step from v1 to `E::VERSION` has
    /// turned its JSON into the current shape. See [`Upcasters`] for the
    /// rules (once `E` has an upcaster, every step from the oldest version
    /// still around must be registered — a step that changes nothing is
    /// `Ok`); a message whose chain has a gap, or whose step fails, is
    /// dead-lettered at once with the [`UpcastError`](crate::schema::UpcastError)
    /// as the reason.
    ///
    /// ```no_run
    /// # async fn demo(pool: sqlx::PgPool, subscriber: Box<dyn eventbus::transport::Subscriber>,
    /// #               dead_letters: std::sync::Arc<dyn eventbus::Publisher>) -> eventbus::Result<()> {
    /// use eventbus::consumer::{Consumer, Context};
    /// use eventbus::Event;
    /// use serde::{Deserialize, Serialize};
    /// use serde_json::json;
    ///
    /// /// v2 renamed `amount_cents` to `amount`; v3 added `currency`.
    /// #[derive(Event, Serialize, Deserialize, schemars::JsonSchema)]
    /// #[event(type = "com.example.order.placed", version = 3, destination = "orders", key = order_id)]
    /// struct OrderPlaced { order_id: String, amount: i64, currency: String }
    ///
    /// let consumer = Consumer::builder("billing")
    ///     .on(|_ctx: Context<sqlx::Postgres>, order: OrderPlaced| async move {
    ///         println!("{} {} {}", order.order_id, order.amount, order.currency);
    ///         Ok(())
    ///     })
    ///     .upcast::<OrderPlaced>(1, |mut v| {
    ///         let cents = v["amount_cents"].take();
    ///         v["amount"] = cents;
    ///         Ok(v)
    ///     })
    ///     .upcast::<OrderPlaced>(2, |mut v| {
    ///         v["currency"] = json!("EUR");
    ///         Ok(v)
    ///     })
    ///     .build(pool, subscriber, dead_letters)?;
    /// # Ok(()) }
    /// ```
    pub fn upcast<E: Event>(
        mut self,
        from: u32,
        step: impl Fn(serde_json::Value) -> std::result::Result<serde_json::Value, BoxError>
            + Send
            + Sync
            + 'static,
    ) -> Self {
        self.registry.upcast::<E>(from, step);
        self
    }

    /// Adds every upcaster of `upcasters` (a set built once and shared by
    /// several consumers), as [`upcast`](Self::upcast) does one.
    pub fn upcasters(mut self, upcasters: Upcasters) -> Self {
        self.registry.add_upcasters(upcasters);
        self
    }

    /// What to do with messages of a schema version newer than their
    /// handler knows (default: park, its key behind it, and look again
    /// every 5 s).
    pub fn newer_versions(mut self, newer: NewerVersions) -> Self {
        self.newer_versions = newer;
        self
    }

    /// What a dead letter does to the later messages of its key (default
    /// [`DeadLetterKeys::Continue`]).
    pub fn dead_letter_keys(mut self, keys: DeadLetterKeys) -> Self {
        self.dead_letter_keys = keys;
        self
    }

    /// How often the group's parked table is read for messages that are due
    /// (delayed retries, newer versions, what waits behind them, replayed
    /// dead letters); default 250 ms. A delayed retry runs at most this long
    /// after its time.
    pub fn parked_poll_interval(mut self, every: Duration) -> Self {
        self.parked_poll = every.max(Duration::from_millis(10));
        self
    }

    /// What to do with event types that have no handler.
    pub fn unknown_types(mut self, unknown: UnknownTypes) -> Self {
        self.unknown = unknown;
        self
    }

    /// At most this many messages are unsettled at once (default 64).
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n.max(1);
        self
    }

    /// At most this many messages start per second (each message of a batch
    /// counts). Default: no limit.
    pub fn rate_limit(mut self, per_second: u32) -> Self {
        self.rate_limit = (per_second > 0).then_some(per_second);
        self
    }

    /// The inbox table (default `eventbus_inbox`).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for an invalid name.
    pub fn inbox_table(mut self, table: &str) -> Result<Self> {
        self.inbox_table = TableName::parse(table)?;
        Ok(self)
    }

    /// Deletes this group's inbox rows older than `window` in the background
    /// while [`Consumer::run`] runs: off by default. The first sweep starts
    /// within seconds of `run`; each deletes in bounded batches, back to back
    /// while old rows remain, then sleeps about a 24th of the window (between
    /// one minute and one hour, jittered); it stops with `run`. Every member
    /// of the group may run it (their deletes overlap harmlessly); a sweep
    /// that fails is logged and tried again after the pause.
    ///
    /// The window must be longer than the longest time a message can still
    /// be delivered again — broker retention, consumer offset expiry, dead
    /// letter replays (see `docs/delivery-guarantees.md`, "Inbox retention"):
    /// a redelivery that finds no inbox row is handled again. It is off by
    /// default because that horizon is a broker setting the consumer cannot
    /// see, and a window too short breaks effectively-once silently, whereas
    /// an inbox kept forever costs only disk space.
    ///
    /// [`build`](Self::build) rejects a window under one minute (a unit
    /// mistake, not a retention). `outbox-relay inbox cleanup` does the same
    /// clean-up once, from the command line.
    pub fn inbox_retention(mut self, window: Duration) -> Self {
        self.inbox_retention = Some(window);
        self
    }

    /// The outbox that [`Context::publish`] writes follow-up events to.
    /// Default: the default table, with the source
    /// `urn:eventbus:consumer:<group>`; give your service's own outbox to
    /// publish under its name.
    pub fn outbox(mut self, outbox: Outbox) -> Self {
        self.outbox = outbox;
        self
    }

    /// Finishes the consumer: handlers run against `pool`, messages come from
    /// `subscriber`, dead letters go out through `dead_letters`.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if no handler is registered or the
    /// [inbox retention](Self::inbox_retention) is under a minute, [`Error::Schema`] if an
    /// upcaster was invalid (from version 0, not below its event's version,
    /// or registered twice).
    pub fn build(
        mut self,
        pool: sqlx::Pool<DB>,
        subscriber: Box<dyn Subscriber>,
        dead_letters: Arc<dyn Publisher>,
    ) -> Result<Consumer<DB>> {
        if self.registry.is_empty() {
            return Err(Error::config(format!(
                "consumer `{}` has no handler: register one with `.on(...)` or `.on_batch(...)`",
                self.group
            )));
        }
        if let Some(e) = self.registry.invalid_upcaster.take() {
            return Err(Error::Schema(e));
        }
        if let Some(e) = self.invalid_saga.take() {
            return Err(Error::config(format!("consumer `{}`: {e}", self.group)));
        }
        if !self.sagas.is_empty() && self.mode != DeliveryMode::EffectivelyOnce {
            return Err(Error::config(format!(
                "consumer `{}` runs sagas ({}) in {:?} mode: sagas need effectively-once \
                 delivery, or a redelivered event would apply its step twice",
                self.group,
                self.sagas.join(", "),
                self.mode
            )));
        }
        if let Some(window) = self.inbox_retention {
            if window < inbox_retention::MIN_WINDOW {
                return Err(Error::config(format!(
                    "consumer `{}`: inbox retention of {window:?} is shorter than the minimum \
                     of {:?}; keep inbox rows longer than a message can be redelivered",
                    self.group,
                    inbox_retention::MIN_WINDOW
                )));
            }
        }
        let metrics = ConsumerMetrics::new(self.group.clone());
        Ok(Consumer {
            shared: Arc::new(Shared {
                group: self.group,
                mode: self.mode,
                registry: self.registry,
                retry: self.retry,
                handler_timeout: self.handler_timeout,
                unknown: self.unknown,
                newer_versions: self.newer_versions,
                dead_letter_keys: self.dead_letter_keys,
                parked_poll: self.parked_poll,
                max_in_flight: self.max_in_flight,
                rate_limit: self.rate_limit,
                pacer: self.rate_limit.map(pace::Pacer::new),
                batch_linger: self.batch_linger,
                group_commit: self
                    .group_commit
                    .filter(|_| self.mode == DeliveryMode::EffectivelyOnce),
                inbox_table: self.inbox_table,
                inbox_retention: self.inbox_retention,
                outbox: self.outbox,
                pool,
                dead_letters,
                dead_letter_destinations: tokio::sync::Mutex::new(HashSet::new()),
                isolation: tokio::sync::RwLock::new(()),
                metrics,
                stopping: Notify::new(),
                stopped: std::sync::atomic::AtomicBool::new(false),
            }),
            subscriber: tokio::sync::Mutex::new(subscriber),
        })
    }
}

impl<DB: SagaDatabase> ConsumerBuilder<DB> {
    /// Joins saga `saga`: each of its event types gets a handler that runs
    /// the saga's step in the consumer's transaction (see
    /// [`crate::saga`]). Sagas need the default
    /// [effectively-once](DeliveryMode::EffectivelyOnce) mode; `build`
    /// refuses another. One handler per event type: a saga's event types
    /// replace handlers of those types registered before, as
    /// [`on`](Self::on) does.
    pub fn saga<S: Saga>(mut self, saga: SagaDefinition<S, DB>) -> Self {
        if saga.is_empty() {
            self.invalid_saga.get_or_insert(format!(
                "saga `{}` has no event: register its events with `.starts::<E>()`, \
                 `.handles::<E>()` or `.timeout::<E>()`",
                S::NAME
            ));
            return self;
        }
        self.sagas.push(S::NAME);
        // A step locks and rewrites its instance's row: it commits alone,
        // not held open by a group.
        for event_type in saga.event_types() {
            self.registry.ungroup(event_type);
        }
        saga.register_with(self)
    }
}
