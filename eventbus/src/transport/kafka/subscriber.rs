//! [`KafkaSubscriber`]: a consumer-group member that hands out each partition's
//! messages in offset order, stores an offset for commit only once its message
//! is acknowledged (never past an unsettled or released one), rewinds a
//! partition to a released message, and commits on rebalance and close.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use rdkafka::client::ClientContext;
use rdkafka::consumer::stream_consumer::StreamPartitionQueue;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use super::{canonical_key, config_error, envelope_from_message, Settings};
use crate::envelope::{Envelope, EnvelopeError};
use crate::error::{Error, Result};
use crate::transport::{MessageInfo, PublishError, Received, Settle, Subscriber};

/// How many messages a [`KafkaSubscriber`] hands out and has not seen settled,
/// unless [`KafkaSubscriberBuilder::max_in_flight`] says otherwise.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 64;

/// How many fetched messages a subscriber keeps ready to hand out, per
/// partition.
const PARTITION_BUFFER: usize = 32;

/// How many messages one call takes in from the group's main queue (it carries
/// rebalances, and the messages of partitions that have no queue of their own).
const MAIN_QUEUE_BATCH: usize = 1_000;

/// Consumer settings applied unless overridden with [`KafkaSubscriberBuilder::set`].
const DEFAULTS: &[(&str, &str)] = &[
    // Offsets are committed in the background, but only those stored by
    // acknowledgements: librdkafka must not store what it merely delivered.
    ("enable.auto.commit", "true"),
    ("enable.auto.offset.store", "false"),
    // A new group starts with the backlog: nothing published before its first
    // member joined is skipped.
    ("auto.offset.reset", "earliest"),
    // Keep the prefetch buffer modest: it is memory, and after a rebalance the
    // new owner fetches these messages again anyway.
    ("queued.max.messages.kbytes", "4096"),
    ("queued.min.messages", "1000"),
];

/// The consumer of a subscriber.
type GroupConsumer = StreamConsumer<GroupContext>;

/// The messages of one assigned partition, read apart from the others
/// (librdkafka's partition queue).
struct PartitionStream {
    topic: String,
    partition: i32,
    queue: StreamPartitionQueue<GroupContext>,
}

impl fmt::Debug for PartitionStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PartitionStream")
            .field("topic", &self.topic)
            .field("partition", &self.partition)
            .finish_non_exhaustive()
    }
}

/// Reads the topics of one consumer group from Kafka, as a [`Subscriber`] for
/// [`crate::consumer::Consumer`].
///
/// - **Order and lanes.** Each (topic, partition) is one lane
///   ([`Received::lane`], a number stable across processes): its messages are
///   handled one after another in offset order, and partitions run
///   concurrently.
/// - **Offsets.** librdkafka commits in the background
///   (`enable.auto.commit=true`), but an offset becomes committable only when
///   its message is acknowledged ([`Settle::ack`]), and never past a message of
///   the partition that is still unsettled, so an unhandled message is never
///   skipped after a crash. [`Settle::ack_durably`] commits synchronously.
/// - **Release.** [`Settle::release`] rewinds the partition to the message, so
///   it is delivered again; acknowledgements of later messages of the partition
///   that were already handed out do not count until it has come round again.
///   Dropping a [`Received::settle`] handle without settling counts as a release.
/// - **Rebalances.** Before partitions are revoked, the stored offsets are
///   committed synchronously; the in-flight messages of revoked partitions are
///   forgotten, so that their late acknowledgements commit nothing (the new
///   owner gets them again; the inbox absorbs the repeat).
/// - **Partitions in turn.** Each assigned partition is read from a queue of
///   its own, and the next message handed out comes from the partition with
///   the fewest unsettled messages: a fetch brings each partition's messages in
///   a run (a whole record batch), and handing them out in arrival order would
///   fill every in-flight slot from one partition while the others wait.
/// - **Backpressure.** At most `max_in_flight` messages are handed out and not
///   settled; librdkafka's prefetch is bounded (`queued.max.messages.kbytes=4096`,
///   `queued.min.messages=1000`), and the subscriber keeps at most 32 fetched
///   messages per partition ready to hand out.
/// - **Liveness.** [`Subscriber::next`] must be called at least every
///   `max.poll.interval.ms` ([`KafkaSubscriberBuilder::max_poll_interval`]), or
///   librdkafka leaves the group until the next call: keep it above the longest
///   time all in-flight slots may be busy (a slow handler plus its retries).
/// - **Shutdown.** [`Subscriber::close`] commits the stored offsets
///   synchronously and leaves the group; call it rather than dropping the
///   subscriber.
///
/// Kafka does not say whether it delivered a message before:
/// [`Received::redelivered`] is always `false`.
///
/// # Examples
///
/// ```no_run
/// # #[cfg(all(feature = "postgres", feature = "macros"))]
/// # async fn demo(pool: sqlx::PgPool) -> eventbus::Result<()> {
/// use std::sync::Arc;
/// use eventbus::consumer::{Consumer, Context};
/// use eventbus::transport::kafka::{KafkaPublisher, KafkaSubscriber};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(eventbus::Event, Serialize, Deserialize, schemars::JsonSchema)]
/// #[event(type = "com.example.order.placed", destination = "orders", key = order_id)]
/// struct OrderPlaced { order_id: String }
///
/// let subscriber = KafkaSubscriber::builder("127.0.0.1:9092")
///     .group("billing")
///     .topics(["orders"])
///     .max_in_flight(32)
///     .set("client.id", "billing-1")
///     .build()?;
/// let dead_letters = Arc::new(KafkaPublisher::builder("127.0.0.1:9092").build()?);
/// let consumer = Consumer::builder("billing")
///     .max_in_flight(32)
///     .on(|_ctx: Context<sqlx::Postgres>, event: OrderPlaced| async move {
///         println!("order {} placed", event.order_id);
///         Ok(())
///     })
///     .build(pool, Box::new(subscriber), dead_letters)?;
/// consumer.run(async { let _ = tokio::signal::ctrl_c().await; }).await?;
/// # Ok(()) }
/// ```
pub struct KafkaSubscriber {
    /// `None` once closed.
    consumer: Option<Arc<GroupConsumer>>,
    partitions: Arc<Partitions>,
    /// A receive error met while taking in ready messages, reported next.
    error: Option<KafkaError>,
    in_flight: Arc<Semaphore>,
    max_in_flight: usize,
    group: String,
    topics: Vec<String>,
    settings: Settings,
}

/// Configures a [`KafkaSubscriber`]; made by [`KafkaSubscriber::builder`].
#[must_use = "a builder does nothing until `build` is called"]
pub struct KafkaSubscriberBuilder {
    settings: Settings,
    topics: Vec<String>,
    max_in_flight: usize,
    session_timeout: Option<Duration>,
}

impl KafkaSubscriber {
    /// Starts configuring a subscriber for the cluster reached through
    /// `bootstrap_servers` (`host:port[,host:port…]`).
    pub fn builder(bootstrap_servers: impl Into<String>) -> KafkaSubscriberBuilder {
        let mut settings = Settings::default();
        settings.insert("bootstrap.servers", bootstrap_servers.into());
        for (key, value) in DEFAULTS {
            settings.insert(key, (*value).to_owned());
        }
        KafkaSubscriberBuilder {
            settings,
            topics: Vec::new(),
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            session_timeout: None,
        }
    }

    /// The consumer group (`group.id`).
    pub fn group(&self) -> &str {
        &self.group
    }

    /// The subscribed topics.
    pub fn topics(&self) -> &[String] {
        &self.topics
    }

    fn buffer(&self, message: &BorrowedMessage<'_>) {
        let (topic, partition, fetched) = fetched(message);
        self.partitions.buffer(&topic, partition, fetched);
    }

    /// Takes in what librdkafka has ready, without waiting: from the main
    /// queue (serving rebalances), then from each partition's queue until its
    /// buffer is full. A receive error is kept for the next call.
    fn take_in_ready(&mut self, consumer: &GroupConsumer) {
        for _ in 0..MAIN_QUEUE_BATCH {
            match consumer.recv().now_or_never() {
                None => break,
                Some(Ok(message)) => self.buffer(&message),
                Some(Err(e)) => {
                    self.error = Some(e);
                    return;
                }
            }
        }
        for (stream, buffered) in self.partitions.streams() {
            for _ in buffered..PARTITION_BUFFER {
                match stream.queue.recv().now_or_never() {
                    None => break,
                    Some(Ok(message)) => self.buffer(&message),
                    Some(Err(e)) => {
                        self.error = Some(e);
                        return;
                    }
                }
            }
        }
    }

    /// Waits until a message arrives on any queue (and buffers it), or the
    /// assignment changes.
    async fn wait_for_message(&mut self, consumer: &GroupConsumer) {
        let streams = self.partitions.streams();
        let changed = self.partitions.changed.notified();
        let mut waits: Vec<BoxFuture<'_, KafkaResult<Arrival>>> = streams
            .iter()
            .map(|(stream, _)| {
                async move {
                    let message = stream.queue.recv().await?;
                    Ok(fetched(&message))
                }
                .boxed()
            })
            .collect();
        waits.push(
            async move {
                let message = consumer.recv().await?;
                Ok(fetched(&message))
            }
            .boxed(),
        );
        let arrived = tokio::select! {
            (arrived, _, _) = futures::future::select_all(waits) => arrived,
            () = changed => return,
        };
        match arrived {
            Ok((topic, partition, fetched)) => self.partitions.buffer(&topic, partition, fetched),
            Err(e) => self.error = Some(e),
        }
    }

    fn received(
        &self,
        out: HandOut,
        consumer: &Arc<GroupConsumer>,
        permit: OwnedSemaphorePermit,
    ) -> Received {
        let HandOut {
            topic,
            partition,
            epoch,
            fetched,
        } = out;
        let mut info = MessageInfo::new("kafka");
        info.partition = Some(partition);
        info.offset = Some(fetched.offset);
        info.key = fetched.key;
        info.broker_time = fetched
            .timestamp_ms
            .and_then(chrono::DateTime::from_timestamp_millis);
        Received {
            destination: topic.clone(),
            lane: lane_of(&topic, partition),
            envelope: fetched.envelope,
            body: fetched.body,
            redelivered: false,
            info,
            settle: Box::new(KafkaSettle {
                topic,
                partition,
                offset: fetched.offset,
                epoch,
                partitions: Arc::clone(&self.partitions),
                consumer: Arc::downgrade(consumer),
                group: self.group.clone(),
                _permit: permit,
                settled: false,
            }),
        }
    }

    fn unavailable(&self, what: &str, error: &KafkaError) -> Error {
        Error::Publish(PublishError::Unavailable(format!(
            "Kafka consumer of group `{}`: {what}: {}",
            self.group,
            self.settings.scrub(&error.to_string())
        )))
    }
}

impl KafkaSubscriberBuilder {
    /// The consumer group this subscriber joins (`group.id`); required.
    /// Subscribers of one group share the partitions; every group gets every
    /// message.
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.settings.insert("group.id", group.into());
        self
    }

    /// The topics to read (replacing any given before); at least one is required.
    pub fn topics<I, T>(mut self, topics: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.topics = topics.into_iter().map(Into::into).collect();
        self
    }

    /// At most this many messages are handed out and not yet settled (default
    /// [`DEFAULT_MAX_IN_FLIGHT`]); [`Subscriber::next`] waits while the bound is
    /// reached.
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n;
        self
    }

    /// How long the group coordinator waits for a heartbeat before it declares
    /// this member dead and gives its partitions to others
    /// (`session.timeout.ms`); the heartbeat interval becomes a third of it
    /// unless `heartbeat.interval.ms` is [set](Self::set).
    ///
    /// Default: librdkafka's 45 s, suitable for production (a short network
    /// hiccup does not cause a rebalance). Tests use a few seconds (e.g. 6 s)
    /// so that a killed member's partitions move on quickly.
    pub fn session_timeout(mut self, timeout: Duration) -> Self {
        self.settings
            .insert("session.timeout.ms", millis(timeout).to_string());
        self.session_timeout = Some(timeout);
        self
    }

    /// The longest time between two calls of [`Subscriber::next`] before
    /// librdkafka leaves the group on this member's behalf
    /// (`max.poll.interval.ms`); it is also how long a rebalance waits for the
    /// members to rejoin. Must be at least the session timeout.
    ///
    /// Default: librdkafka's 300 s, suitable for production: keep it above the
    /// longest time all in-flight slots may be busy (a slow handler plus its
    /// retries). Tests against tansu use a few seconds (e.g. 6 s): its group
    /// coordinator is slow to complete a join otherwise.
    pub fn max_poll_interval(mut self, interval: Duration) -> Self {
        self.settings
            .insert("max.poll.interval.ms", millis(interval).to_string());
        self
    }

    /// Sets a librdkafka consumer property (see librdkafka's
    /// `CONFIGURATION.md`), overriding the defaults: `enable.auto.commit=true`,
    /// `auto.offset.reset=earliest`, `queued.max.messages.kbytes=4096`,
    /// `queued.min.messages=1000`. `enable.auto.offset.store` must stay
    /// `false`: the subscriber stores offsets of acknowledged messages itself.
    pub fn set(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        let key = key.into();
        self.settings
            .insert(canonical_key(key.trim()), value.into());
        self
    }

    /// Creates the consumer and subscribes it to the topics; it joins the group
    /// in the background, on the first calls of [`Subscriber::next`]. Must be
    /// called inside a tokio runtime.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for no bootstrap servers, no group, no topic or an
    /// empty topic name, `max_in_flight` of zero, `enable.auto.offset.store`
    /// other than `false`, an unknown property or an invalid value, or no tokio
    /// runtime. Values of secret properties are never part of the message.
    pub fn build(self) -> Result<KafkaSubscriber> {
        let KafkaSubscriberBuilder {
            mut settings,
            topics,
            max_in_flight,
            session_timeout,
        } = self;
        settings.check_common()?;
        let group = settings
            .get("group.id")
            .unwrap_or_default()
            .trim()
            .to_owned();
        if group.is_empty() {
            return Err(Error::config(
                "a Kafka subscriber needs a consumer group: call `.group(...)`",
            ));
        }
        if topics.is_empty() {
            return Err(Error::config(format!(
                "Kafka subscriber of group `{group}` has no topic: call `.topics([...])`"
            )));
        }
        if topics.iter().any(|t| t.trim().is_empty()) {
            return Err(Error::config("Kafka topic names must not be empty"));
        }
        if max_in_flight == 0 {
            return Err(Error::config("max_in_flight must be at least 1"));
        }
        if settings
            .get("enable.auto.offset.store")
            .is_some_and(|v| v.trim() != "false")
        {
            return Err(Error::config(
                "Kafka property `enable.auto.offset.store` must be `false`: the subscriber \
                 stores the offsets of acknowledged messages itself",
            ));
        }
        if let Some(timeout) = session_timeout {
            if !settings.contains("heartbeat.interval.ms") {
                let heartbeat = (millis(timeout) / 3).max(1);
                settings.insert("heartbeat.interval.ms", heartbeat.to_string());
            }
        }
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::config(
                "KafkaSubscriber must be built inside a tokio runtime",
            ));
        }

        let partitions = Arc::new(Partitions::default());
        let context = GroupContext {
            partitions: Arc::clone(&partitions),
            group: group.clone(),
            settings: settings.clone(),
            consumer: OnceLock::new(),
        };
        let consumer: GroupConsumer = settings
            .client_config()
            .create_with_context(context)
            .map_err(|e| config_error(&settings, &e, "consumer"))?;
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer.subscribe(&names).map_err(|e| {
            Error::config(format!(
                "cannot subscribe to Kafka topics {topics:?}: {}",
                settings.scrub(&e.to_string())
            ))
        })?;
        let consumer = Arc::new(consumer);
        // Weak: the consumer owns its context.
        let _ = consumer.context().consumer.set(Arc::downgrade(&consumer));
        let max_in_flight = max_in_flight.min(Semaphore::MAX_PERMITS);
        Ok(KafkaSubscriber {
            consumer: Some(consumer),
            partitions,
            error: None,
            in_flight: Arc::new(Semaphore::new(max_in_flight)),
            max_in_flight,
            group,
            topics,
            settings,
        })
    }
}

#[async_trait::async_trait]
impl Subscriber for KafkaSubscriber {
    async fn next(&mut self) -> Option<Result<Received>> {
        let consumer = self.consumer.clone()?;
        if let Some(e) = self.error.take() {
            return Some(Err(self.unavailable("receiving failed", &e)));
        }
        let permit = Arc::clone(&self.in_flight).acquire_owned().await.ok()?;
        loop {
            self.take_in_ready(&consumer);
            // What is here first; an error met on the way is reported next.
            if let Some(out) = self.partitions.hand_out() {
                return Some(Ok(self.received(out, &consumer, permit)));
            }
            if let Some(e) = self.error.take() {
                return Some(Err(self.unavailable("receiving failed", &e)));
            }
            self.wait_for_message(&consumer).await;
        }
    }

    async fn close(&mut self) -> Result<()> {
        let Some(consumer) = self.consumer.take() else {
            return Ok(());
        };
        let partitions = Arc::clone(&self.partitions);
        let group = self.group.clone();
        let settings = self.settings.clone();
        // Committing waits for the broker, and dropping the consumer waits
        // until it has left the group: both block their thread.
        let closed = tokio::task::spawn_blocking(move || {
            // Acknowledgements arriving from now on commit nothing.
            partitions.forget_all();
            let committed = commit_stored(consumer.as_ref());
            consumer.unsubscribe();
            drop(consumer);
            committed.map_err(|e| {
                Error::Publish(PublishError::Unavailable(format!(
                    "Kafka consumer of group `{group}`: committing offsets on close failed: {}",
                    settings.scrub(&e.to_string())
                )))
            })
        })
        .await;
        match closed {
            Ok(result) => result,
            Err(e) => Err(Error::Publish(PublishError::Unavailable(format!(
                "Kafka consumer of group `{}`: closing failed: {e}",
                self.group
            )))),
        }
    }
}

impl fmt::Debug for KafkaSubscriber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaSubscriber")
            .field("group", &self.group)
            .field("topics", &self.topics)
            .field("max_in_flight", &self.max_in_flight)
            .field("closed", &self.consumer.is_none())
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Drop for KafkaSubscriber {
    fn drop(&mut self) {
        // Partition queues hold the consumer: let it go.
        self.partitions.forget_all();
    }
}

impl fmt::Debug for KafkaSubscriberBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaSubscriberBuilder")
            .field("settings", &self.settings)
            .field("topics", &self.topics)
            .field("max_in_flight", &self.max_in_flight)
            .finish()
    }
}

/// A fetched message with its topic and partition.
type Arrival = (String, i32, Fetched);

/// A fetched message, decoded and owned, with its topic and partition.
fn fetched(message: &BorrowedMessage<'_>) -> Arrival {
    let fetched = Fetched {
        offset: message.offset(),
        envelope: envelope_from_message(message),
        body: message.payload().unwrap_or_default().to_vec(),
        key: message
            .key()
            .and_then(|k| std::str::from_utf8(k).ok())
            .map(str::to_owned),
        timestamp_ms: message.timestamp().to_millis(),
    };
    (message.topic().to_owned(), message.partition(), fetched)
}

/// Commits the stored offsets and waits for the broker; nothing stored since
/// the last commit is not an error.
fn commit_stored<C: Consumer<GroupContext>>(consumer: &C) -> KafkaResult<()> {
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => Ok(()),
        other => other,
    }
}

/// The lane of a (topic, partition): FNV-1a over the topic and the partition,
/// the same in every process and release (unlike `DefaultHasher`).
fn lane_of(topic: &str, partition: i32) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    // The partition has a fixed width, so (topic, partition) is encoded uniquely.
    for byte in topic.bytes().chain(partition.to_be_bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

fn millis(duration: Duration) -> u128 {
    duration.as_millis()
}

/// Settles one message: stores its offset for commit, or rewinds its partition.
struct KafkaSettle {
    topic: String,
    partition: i32,
    offset: i64,
    /// The assignment of the partition the message was handed out in.
    epoch: u64,
    partitions: Arc<Partitions>,
    /// Weak, so that a forgotten handle does not keep a closed consumer alive.
    consumer: Weak<GroupConsumer>,
    group: String,
    /// The subscriber's in-flight slot, given back when this handle goes.
    _permit: OwnedSemaphorePermit,
    settled: bool,
}

impl fmt::Debug for KafkaSettle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaSettle")
            .field("topic", &self.topic)
            .field("partition", &self.partition)
            .field("offset", &self.offset)
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

impl KafkaSettle {
    fn not_recorded(&self, why: &str) -> Error {
        Error::Publish(PublishError::Unavailable(format!(
            "Kafka consumer of group `{}`: the acknowledgement of {}/{} offset {} does not \
             count ({why}); the message will be delivered again",
            self.group, self.topic, self.partition, self.offset
        )))
    }

    /// Records the acknowledgement and stores the partition's new position.
    fn store(&mut self) -> Result<()> {
        self.settled = true;
        let consumer = self.consumer.upgrade();
        let stored = self.partitions.ack(
            &self.topic,
            self.partition,
            self.offset,
            self.epoch,
            |position| {
                let Some(consumer) = &consumer else {
                    return Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::State));
                };
                let mut list = TopicPartitionList::with_capacity(1);
                list.add_partition_offset(&self.topic, self.partition, Offset::Offset(position))?;
                consumer.store_offsets(&list)
            },
        );
        match stored {
            Ok(Ack::Recorded) => Ok(()),
            Ok(Ack::Revoked) => {
                Err(self.not_recorded("its partition was revoked or the subscriber closed"))
            }
            Ok(Ack::Rewound) => {
                Err(self.not_recorded("its partition was rewound to an earlier released message"))
            }
            Err(e) => Err(self.not_recorded(&format!("storing the offset failed: {e}"))),
        }
    }

    /// Rewinds the partition to this message.
    fn rewind(&mut self) -> Result<()> {
        self.settled = true;
        let Some(consumer) = self.consumer.upgrade() else {
            // Closed: the next member of the group starts at the committed
            // offset, which is not past this message.
            return Ok(());
        };
        self.partitions
            .release(
                &self.topic,
                self.partition,
                self.offset,
                self.epoch,
                |offset| {
                    // Zero timeout: the seek is queued in order behind earlier ones
                    // without waiting for the fetcher.
                    consumer.seek(
                        &self.topic,
                        self.partition,
                        Offset::Offset(offset),
                        Duration::ZERO,
                    )
                },
            )
            .map_err(|e| {
                Error::Publish(PublishError::Unavailable(format!(
                    "Kafka consumer of group `{}`: cannot rewind {}/{} to offset {}: {e}",
                    self.group, self.topic, self.partition, self.offset
                )))
            })
    }
}

#[async_trait::async_trait]
impl Settle for KafkaSettle {
    async fn ack(mut self: Box<Self>) -> Result<()> {
        self.store()
    }

    async fn ack_durably(mut self: Box<Self>) -> Result<()> {
        self.store()?;
        let Some(consumer) = self.consumer.upgrade() else {
            return Err(self.not_recorded("the subscriber closed"));
        };
        let committed = tokio::task::spawn_blocking(move || commit_stored(consumer.as_ref())).await;
        let failure = match committed {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        };
        // Stored, so a later commit may still take it: whether the broker
        // delivers it again is unknown.
        Err(Error::Publish(PublishError::Unavailable(format!(
            "Kafka consumer of group `{}`: committing the acknowledgement of {}/{} offset {} \
             failed: {failure}",
            self.group, self.topic, self.partition, self.offset
        ))))
    }

    async fn release(mut self: Box<Self>) -> Result<()> {
        self.rewind()
    }
}

impl Drop for KafkaSettle {
    fn drop(&mut self) {
        if !self.settled {
            if let Err(e) = self.rewind() {
                tracing::warn!(error = %e, "releasing a dropped, unsettled Kafka message failed");
            }
        }
        // The in-flight slot (`_permit`) is given back as the fields drop.
    }
}

/// What an acknowledgement amounted to.
#[derive(Debug, PartialEq, Eq)]
enum Ack {
    /// Counted; the partition's position was stored if it moved.
    Recorded,
    /// The partition was revoked (or the subscriber closed) since the message
    /// was handed out.
    Revoked,
    /// The partition was rewound to an earlier message that has not come round
    /// again: this message will be delivered again too.
    Rewound,
}

/// A fetched message not yet handed out.
#[derive(Debug)]
struct Fetched {
    offset: i64,
    envelope: std::result::Result<Envelope, EnvelopeError>,
    body: Vec<u8>,
    /// The message key, when it is UTF-8.
    key: Option<String>,
    /// The record timestamp, in milliseconds since the epoch.
    timestamp_ms: Option<i64>,
}

/// A message picked to be handed out.
#[derive(Debug)]
struct HandOut {
    topic: String,
    partition: i32,
    epoch: u64,
    fetched: Fetched,
}

/// Bookkeeping per partition of the messages fetched and handed out: shared by
/// the subscriber, its settle handles and the rebalance callback.
#[derive(Debug, Default)]
struct Partitions {
    inner: Mutex<Book>,
    /// Told when partitions are assigned, so that a waiting `next` reads
    /// their queues too.
    changed: Notify,
}

#[derive(Debug, Default)]
struct Book {
    states: HashMap<(String, i32), PartitionState>,
    /// Fetched messages buffered over all partitions.
    buffered: usize,
    /// Counts assignments, to tell them apart.
    epochs: u64,
    /// Counts hand-outs, to take partitions in turn.
    turns: u64,
}

/// One partition, since it was (last) assigned to this member.
#[derive(Debug)]
struct PartitionState {
    /// Tells this assignment from earlier ones of the same partition.
    epoch: u64,
    /// The partition's own queue, unless librdkafka could not split it off
    /// (its messages then come through the main queue).
    stream: Option<Arc<PartitionStream>>,
    /// Fetched and not handed out yet, in offset order.
    buffered: VecDeque<Fetched>,
    /// Offsets handed out and not settled, with a count: a rewound partition
    /// may hand an offset out again while its first copy is still in a lane.
    unsettled: BTreeMap<i64, u32>,
    /// How many messages are handed out and not settled.
    unsettled_count: usize,
    /// When a message of this partition was last handed out.
    turn: u64,
    /// One past the highest acknowledged offset.
    acked_to: Option<i64>,
    /// The position last stored for commit.
    stored: Option<i64>,
    /// The lowest released offset, until it has come round again.
    rewound_to: Option<i64>,
}

impl PartitionState {
    fn new(epoch: u64) -> Self {
        PartitionState {
            epoch,
            stream: None,
            buffered: VecDeque::new(),
            unsettled: BTreeMap::new(),
            unsettled_count: 0,
            turn: 0,
            acked_to: None,
            stored: None,
            rewound_to: None,
        }
    }

    /// Where the group may resume: after everything acknowledged, but not past
    /// an unsettled or released message.
    fn position(&self) -> Option<i64> {
        let mut position = self.acked_to?;
        if let Some((&first, _)) = self.unsettled.first_key_value() {
            position = position.min(first);
        }
        if let Some(rewound) = self.rewound_to {
            position = position.min(rewound);
        }
        Some(position)
    }

    fn settle_one(&mut self, offset: i64) {
        if let Some(count) = self.unsettled.get_mut(&offset) {
            *count -= 1;
            self.unsettled_count -= 1;
            if *count == 0 {
                self.unsettled.remove(&offset);
            }
        }
    }
}

impl Partitions {
    fn lock(&self) -> MutexGuard<'_, Book> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Fetched messages waiting to be handed out.
    #[cfg(test)]
    fn buffered(&self) -> usize {
        self.lock().buffered
    }

    /// Starts a new assignment of a partition, read through `stream` if it
    /// could be split off.
    fn assign(&self, topic: &str, partition: i32, stream: Option<PartitionStream>) {
        {
            let mut book = self.lock();
            book.epochs += 1;
            let mut state = PartitionState::new(book.epochs);
            state.stream = stream.map(Arc::new);
            if let Some(old) = book.states.insert((topic.to_owned(), partition), state) {
                book.buffered -= old.buffered.len();
            }
        }
        self.changed.notify_one();
    }

    /// The partitions' own queues, with how many of their messages are buffered.
    fn streams(&self) -> Vec<(Arc<PartitionStream>, usize)> {
        self.lock()
            .states
            .values()
            .filter_map(|s| s.stream.as_ref().map(|q| (Arc::clone(q), s.buffered.len())))
            .collect()
    }

    /// Keeps a fetched message until [`Partitions::hand_out`] picks it; drops
    /// it if its partition is not assigned (any more).
    fn buffer(&self, topic: &str, partition: i32, fetched: Fetched) {
        let mut book = self.lock();
        let book = &mut *book;
        let Some(state) = book.states.get_mut(&(topic.to_owned(), partition)) else {
            tracing::debug!(
                topic,
                partition,
                offset = fetched.offset,
                "dropped a message of an unassigned partition"
            );
            return;
        };
        state.buffered.push_back(fetched);
        book.buffered += 1;
    }

    /// Picks the next message to hand out: the oldest buffered message of the
    /// partition with the fewest unsettled messages (the longest waiting among
    /// equals), so that lanes fill evenly. Messages fetched before their
    /// partition was rewound to a released message are dropped (they come
    /// again after the rewind).
    fn hand_out(&self) -> Option<HandOut> {
        let mut book = self.lock();
        let book = &mut *book;
        loop {
            let key = book
                .states
                .iter()
                .filter(|(_, s)| !s.buffered.is_empty())
                // Ties (partitions never handed out yet) go by topic and
                // partition, not by the map's random order.
                .min_by_key(|(k, s)| (s.unsettled_count, s.turn, *k))
                .map(|(k, _)| k.clone())?;
            let state = book.states.get_mut(&key)?;
            let Some(fetched) = state.buffered.pop_front() else {
                continue;
            };
            book.buffered -= 1;
            if let Some(rewound) = state.rewound_to {
                if fetched.offset > rewound {
                    continue;
                }
                state.rewound_to = None;
            }
            *state.unsettled.entry(fetched.offset).or_insert(0) += 1;
            state.unsettled_count += 1;
            book.turns += 1;
            state.turn = book.turns;
            let (topic, partition) = key;
            return Some(HandOut {
                topic,
                partition,
                epoch: state.epoch,
                fetched,
            });
        }
    }

    /// Records an acknowledgement; when the partition's position moves, hands
    /// it to `store` (under the lock, so stored positions never go backwards).
    fn ack(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
        epoch: u64,
        store: impl FnOnce(i64) -> KafkaResult<()>,
    ) -> KafkaResult<Ack> {
        let mut book = self.lock();
        let Some(state) = book
            .states
            .get_mut(&(topic.to_owned(), partition))
            .filter(|s| s.epoch == epoch)
        else {
            return Ok(Ack::Revoked);
        };
        state.settle_one(offset);
        if state.rewound_to.is_some_and(|r| offset > r) {
            return Ok(Ack::Rewound);
        }
        state.acked_to = Some(state.acked_to.map_or(offset + 1, |a| a.max(offset + 1)));
        if let Some(position) = state.position() {
            if state.stored.is_none_or(|s| position > s) {
                store(position)?;
                state.stored = Some(position);
            }
        }
        Ok(Ack::Recorded)
    }

    /// Records a release; when it lowers the partition's rewind target, drops
    /// the buffered messages from there on and hands the new target to `seek`
    /// (under the lock, so seeks happen in the order of their targets and the
    /// last one goes to the lowest released offset).
    fn release(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
        epoch: u64,
        seek: impl FnOnce(i64) -> KafkaResult<()>,
    ) -> KafkaResult<()> {
        let mut book = self.lock();
        let book = &mut *book;
        let Some(state) = book
            .states
            .get_mut(&(topic.to_owned(), partition))
            .filter(|s| s.epoch == epoch)
        else {
            // Revoked: the new owner starts at the committed offset, which is
            // not past this message.
            return Ok(());
        };
        state.settle_one(offset);
        if state.rewound_to.is_none_or(|r| offset < r) {
            state.rewound_to = Some(offset);
            let before = state.buffered.len();
            state.buffered.retain(|f| f.offset < offset);
            book.buffered -= before - state.buffered.len();
            seek(offset)?;
        }
        Ok(())
    }

    /// Forgets the partitions of `list` (revoked, or freshly assigned) and
    /// their buffered messages.
    fn forget(&self, list: &TopicPartitionList) {
        let mut book = self.lock();
        for element in list.elements() {
            let key = (element.topic().to_owned(), element.partition());
            if let Some(state) = book.states.remove(&key) {
                book.buffered -= state.buffered.len();
            }
        }
    }

    fn forget_all(&self) {
        let mut book = self.lock();
        book.states.clear();
        book.buffered = 0;
    }
}

/// The rdkafka context of a subscriber: commits and forgets on rebalances,
/// reports client errors through `tracing`.
struct GroupContext {
    partitions: Arc<Partitions>,
    group: String,
    settings: Settings,
    /// The consumer, to split assigned partitions off into queues of their own.
    consumer: OnceLock<Weak<GroupConsumer>>,
}

impl ClientContext for GroupContext {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(
            group = %self.group,
            error = %self.settings.scrub(&error.to_string()),
            reason = %self.settings.scrub(reason),
            "Kafka consumer error"
        );
    }
}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(list) => {
                // Late acknowledgements of these partitions commit nothing:
                // their messages go to the new owner from the committed offset.
                self.partitions.forget(list);
                if let Err(e) = commit_stored(consumer) {
                    tracing::warn!(
                        group = %self.group,
                        error = %self.settings.scrub(&e.to_string()),
                        "committing offsets before a rebalance failed; the new owner may repeat messages"
                    );
                }
                tracing::info!(group = %self.group, partitions = list.count(), "Kafka partitions revoked");
            }
            // Taken over after the assignment, when the partitions can be
            // split off.
            Rebalance::Assign(_) => {}
            Rebalance::Error(e) => {
                // rdkafka unassigns everything after a failed rebalance.
                self.partitions.forget_all();
                tracing::warn!(
                    group = %self.group,
                    error = %self.settings.scrub(&e.to_string()),
                    "Kafka rebalance failed"
                );
            }
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Assign(list) = rebalance else {
            return;
        };
        // Each partition gets a queue of its own (which `assign` would
        // deactivate, hence after it), so that `next` can take partitions in
        // turn instead of in the order of the fetched runs.
        let consumer = self.consumer.get().and_then(Weak::upgrade);
        for element in list.elements() {
            let (topic, partition) = (element.topic(), element.partition());
            let stream = consumer
                .as_ref()
                .and_then(|c| c.split_partition_queue(topic, partition))
                .map(|queue| PartitionStream {
                    topic: topic.to_owned(),
                    partition,
                    queue,
                });
            if stream.is_none() {
                tracing::warn!(
                    group = %self.group,
                    topic,
                    partition,
                    "no queue of its own for a Kafka partition; reading it through the main queue"
                );
            }
            self.partitions.assign(topic, partition, stream);
        }
        tracing::info!(group = %self.group, partitions = list.count(), "Kafka partitions assigned");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fetches `offset` of `topic`/`partition` and hands out the next message.
    fn admit(p: &Partitions, topic: &str, partition: i32, offset: i64) -> Option<u64> {
        let fetched = Fetched {
            offset,
            envelope: Err(EnvelopeError::MissingAttribute("id")),
            body: Vec::new(),
            key: None,
            timestamp_ms: None,
        };
        p.buffer(topic, partition, fetched);
        p.hand_out().map(|out| out.epoch)
    }

    fn stored_by(partitions: &Partitions, offset: i64, epoch: u64) -> (Ack, Option<i64>) {
        let mut stored = None;
        let ack = partitions
            .ack("t", 0, offset, epoch, |p| {
                stored = Some(p);
                Ok(())
            })
            .expect("store succeeds");
        (ack, stored)
    }

    #[test]
    fn the_position_never_passes_an_unsettled_message() {
        let p = Partitions::default();
        p.assign("t", 0, None);
        let epoch = admit(&p, "t", 0, 10).expect("admitted");
        for offset in 11..=13 {
            assert_eq!(admit(&p, "t", 0, offset), Some(epoch));
        }
        // Acknowledged out of order: 11 and 12 first, 10 still in flight, so
        // the position stays at 10.
        assert_eq!(stored_by(&p, 11, epoch), (Ack::Recorded, Some(10)));
        assert_eq!(stored_by(&p, 12, epoch), (Ack::Recorded, None));
        // 10 done: the position jumps past everything acknowledged.
        assert_eq!(stored_by(&p, 10, epoch), (Ack::Recorded, Some(13)));
        assert_eq!(stored_by(&p, 13, epoch), (Ack::Recorded, Some(14)));
    }

    #[test]
    fn a_release_rewinds_and_later_acks_do_not_count_until_it_comes_round() {
        let p = Partitions::default();
        p.assign("t", 0, None);
        let epoch = admit(&p, "t", 0, 5).expect("admitted");
        for offset in 6..=8 {
            admit(&p, "t", 0, offset);
        }
        assert_eq!(stored_by(&p, 5, epoch), (Ack::Recorded, Some(6)));
        let mut seeks = Vec::new();
        p.release("t", 0, 6, epoch, |o| {
            seeks.push(o);
            Ok(())
        })
        .expect("release");
        // A later release does not move the rewind forward.
        p.release("t", 0, 8, epoch, |o| {
            seeks.push(o);
            Ok(())
        })
        .expect("release");
        assert_eq!(seeks, vec![6]);
        // 7 was handed out before the rewind: its ack cannot commit past 6.
        assert_eq!(stored_by(&p, 7, epoch), (Ack::Rewound, None));
        // Messages fetched before the seek are skipped, until 6 comes round.
        assert_eq!(admit(&p, "t", 0, 9), None);
        assert_eq!(admit(&p, "t", 0, 6), Some(epoch));
        assert_eq!(admit(&p, "t", 0, 7), Some(epoch));
        assert_eq!(stored_by(&p, 6, epoch), (Ack::Recorded, Some(7)));
        assert_eq!(stored_by(&p, 7, epoch), (Ack::Recorded, Some(8)));
    }

    #[test]
    fn a_lower_release_seeks_again() {
        let p = Partitions::default();
        p.assign("t", 0, None);
        let epoch = admit(&p, "t", 0, 1).expect("admitted");
        admit(&p, "t", 0, 2);
        let mut seeks = Vec::new();
        for offset in [2, 1] {
            p.release("t", 0, offset, epoch, |o| {
                seeks.push(o);
                Ok(())
            })
            .expect("release");
        }
        assert_eq!(seeks, vec![2, 1]);
    }

    #[test]
    fn partitions_are_handed_out_in_turn() {
        let p = Partitions::default();
        p.assign("t", 0, None);
        p.assign("t", 1, None);
        let fetched = |offset| Fetched {
            offset,
            envelope: Err(EnvelopeError::MissingAttribute("id")),
            body: Vec::new(),
            key: None,
            timestamp_ms: None,
        };
        // One fetch: a run of partition 0, then a run of partition 1.
        for offset in 0..3 {
            p.buffer("t", 0, fetched(offset));
        }
        for offset in 0..3 {
            p.buffer("t", 1, fetched(offset));
        }
        let order: Vec<(i32, i64)> = std::iter::from_fn(|| p.hand_out())
            .map(|out| (out.partition, out.fetched.offset))
            .collect();
        assert_eq!(order, vec![(0, 0), (1, 0), (0, 1), (1, 1), (0, 2), (1, 2)]);
        assert_eq!(p.buffered(), 0);
    }

    #[test]
    fn a_release_drops_the_buffered_messages_behind_it() {
        let p = Partitions::default();
        p.assign("t", 0, None);
        let epoch = admit(&p, "t", 0, 0).expect("admitted");
        for offset in 1..4 {
            p.buffer(
                "t",
                0,
                Fetched {
                    offset,
                    envelope: Err(EnvelopeError::MissingAttribute("id")),
                    body: Vec::new(),
                    key: None,
                    timestamp_ms: None,
                },
            );
        }
        p.release("t", 0, 0, epoch, |_| Ok(())).expect("release");
        assert_eq!(p.buffered(), 0, "they come again after the rewind");
    }

    #[test]
    fn acks_of_a_revoked_assignment_commit_nothing() {
        let p = Partitions::default();
        p.assign("t", 3, None);
        let old = admit(&p, "t", 3, 40).expect("admitted");
        let mut list = TopicPartitionList::new();
        list.add_partition("t", 3);
        p.forget(&list);
        assert_eq!(admit(&p, "t", 3, 41), None, "not assigned: dropped");
        // Assigned again: a new epoch.
        p.assign("t", 3, None);
        let new = admit(&p, "t", 3, 40).expect("admitted");
        assert_ne!(old, new);
        let ack = p
            .ack("t", 3, 40, old, |_| panic!("must not store"))
            .expect("no store");
        assert_eq!(ack, Ack::Revoked);
        p.release("t", 3, 40, old, |_| panic!("must not seek"))
            .expect("no seek");
    }

    #[test]
    fn lanes_are_stable_and_tell_partitions_apart() {
        assert_eq!(lane_of("orders", 0), lane_of("orders", 0));
        assert_ne!(lane_of("orders", 0), lane_of("orders", 1));
        assert_ne!(lane_of("orders", 1), lane_of("payments", 1));
        // Pinned: lanes must not change between releases.
        assert_eq!(lane_of("orders", 0), 0xd54c_97ca_08f4_b60c);
    }

    #[tokio::test]
    async fn bad_settings_are_config_errors() {
        let ok = || {
            KafkaSubscriber::builder("127.0.0.1:1")
                .group("g")
                .topics(["t"])
        };
        for builder in [
            KafkaSubscriber::builder("").group("g").topics(["t"]),
            KafkaSubscriber::builder("127.0.0.1:1").topics(["t"]),
            KafkaSubscriber::builder("127.0.0.1:1").group("g"),
            ok().topics([""]),
            ok().max_in_flight(0),
            ok().set("enable.auto.offset.store", "true"),
            ok().set("no.such.property", "x"),
            ok().session_timeout(Duration::from_secs(60))
                .max_poll_interval(Duration::from_secs(10)),
        ] {
            let err = builder.build().expect_err("invalid");
            assert!(matches!(err, Error::Config(_)), "{err:?}");
        }
        let mut subscriber = ok()
            .session_timeout(Duration::from_secs(6))
            .max_poll_interval(Duration::from_secs(6))
            .build()
            .expect("valid");
        subscriber
            .close()
            .await
            .expect("closes without having joined");
        assert!(subscriber.next().await.is_none(), "closed");
    }

    #[tokio::test]
    async fn secrets_stay_out_of_debug_and_errors() {
        let builder = KafkaSubscriber::builder("127.0.0.1:1")
            .group("g")
            .topics(["t"])
            .set("sasl.password", "hunter2");
        let shown = format!("{builder:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        let err = builder
            .set("no.such.property", "hunter2")
            .build()
            .expect_err("unknown property");
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }
}
