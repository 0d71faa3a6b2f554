//! [`KafkaSubscriber`]: a consumer-group member that hands out each partition's
//! messages in offset order, stores an offset for commit only once its message
//! is acknowledged (never past an unsettled or released one), rewinds a
//! partition to a released message, and commits on rebalance and close.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use rdkafka::consumer::Consumer;
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{BorrowedMessage, Message};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

mod builder;

pub use builder::KafkaSubscriberBuilder;
use builder::DEFAULTS;

use super::codec::envelope_from_message;
use super::partitions::{lane_of, Fetched, HandOut, Partitions};
use super::rebalance::{commit_stored, GroupConsumer};
use super::settings::Settings;
use super::settle::KafkaSettle;
use crate::error::{Error, Result};
use crate::transport::{Cause, MessageInfo, Received, Subscriber, TransportError};

/// How many messages a [`KafkaSubscriber`] hands out and has not seen settled,
/// unless [`KafkaSubscriberBuilder::max_in_flight`] says otherwise.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 64;

/// How many fetched messages a subscriber keeps ready to hand out, per
/// partition.
const PARTITION_BUFFER: usize = 32;

/// How many messages one call takes in from the group's main queue (it carries
/// rebalances, and the messages of partitions that have no queue of their own).
const MAIN_QUEUE_BATCH: usize = 1_000;

/// Reads the topics of one consumer group from Kafka, as a [`Subscriber`] for
/// [`crate::consumer::Consumer`].
///
/// - **Order and lanes.** Each (topic, partition) is one lane
///   ([`Received::lane`], a number stable across processes): its messages are
///   handled one after another in offset order, and partitions run
///   concurrently.
/// - **Offsets.** librdkafka commits in the background
///   (`enable.auto.commit=true`), but an offset becomes committable only when
///   its message is acknowledged ([`Settle::ack`](crate::transport::Settle::ack)), and never past a message of
///   the partition that is still unsettled, so an unhandled message is never
///   skipped after a crash. [`Settle::ack_durably`](crate::transport::Settle::ack_durably) commits synchronously.
/// - **Release.** [`Settle::release`](crate::transport::Settle::release) rewinds the partition to the message, so
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

    /// A receive error: [`TransportError::Fatal`] once librdkafka reports a
    /// fatal error for the consumer (it cannot fetch again, e.g. its static
    /// group membership was fenced by another instance), otherwise
    /// [`TransportError::Unavailable`]. The rdkafka error is the source.
    fn receive_error(&self, consumer: &GroupConsumer, error: KafkaError) -> Error {
        let scrub = |text: &str| self.settings.scrub(text);
        match consumer.client().fatal_error() {
            Some((code, reason)) => Error::Subscribe(TransportError::Fatal(Cause::scrubbed(
                format_args!(
                    "Kafka consumer of group `{}` hit a fatal error ({code}: {})",
                    self.group,
                    self.settings.scrub(&reason)
                ),
                error,
                scrub,
            ))),
            None => Error::Subscribe(TransportError::Unavailable(Cause::scrubbed(
                format_args!("Kafka consumer of group `{}`: receiving failed", self.group),
                error,
                scrub,
            ))),
        }
    }
}

#[async_trait::async_trait]
impl Subscriber for KafkaSubscriber {
    async fn next(&mut self) -> Option<Result<Received>> {
        let consumer = self.consumer.clone()?;
        if let Some(e) = self.error.take() {
            return Some(Err(self.receive_error(&consumer, e)));
        }
        let permit = Arc::clone(&self.in_flight).acquire_owned().await.ok()?;
        loop {
            self.take_in_ready(&consumer);
            // What is here first; an error met on the way is reported next.
            if let Some(out) = self.partitions.hand_out() {
                return Some(Ok(self.received(out, &consumer, permit)));
            }
            if let Some(e) = self.error.take() {
                return Some(Err(self.receive_error(&consumer, e)));
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
                Error::Subscribe(TransportError::Unavailable(Cause::scrubbed(
                    format_args!(
                        "Kafka consumer of group `{group}`: committing offsets on close failed"
                    ),
                    e,
                    |text| settings.scrub(text),
                )))
            })
        })
        .await;
        match closed {
            Ok(result) => result,
            Err(e) => Err(Error::Subscribe(TransportError::Unavailable(
                format!(
                    "Kafka consumer of group `{}`: closing failed: {e}",
                    self.group
                )
                .into(),
            ))),
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

pub(super) fn millis(duration: Duration) -> u128 {
    duration.as_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

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
