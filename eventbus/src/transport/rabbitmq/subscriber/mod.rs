//! [`RabbitSubscriber`]: a consumer group's durable queue, bound to the topic
//! exchanges of its destinations, read with manual acknowledgement under a
//! prefetch bound, reconnecting by itself.
//!
//! | module | owns |
//! | --- | --- |
//! | this one | the subscriber, its [`Subscriber`] implementation and reconnect loop, lanes |
//! | `builder` | [`RabbitSubscriberBuilder`]: options, checked before connecting |
//! | `session` | one connection: declarations, bindings, consuming, closing |
//! | `settle` | acknowledging or releasing one delivery |

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use lapin::message::Delivery;
use lapin::{BasicProperties, Channel};
use tokio::sync::watch;
use tokio::task::JoinHandle;

mod builder;
mod session;
mod settle;

pub use builder::RabbitSubscriberBuilder;

use super::{
    attribute_of, envelope_from_delivery, header_text, sent_at, RabbitTls, DEFAULT_BROKER_TIMEOUT,
    DEFAULT_CONNECT_TIMEOUT, SHORT_STRING_MAX,
};
use crate::error::{Error, Result};
use crate::transport::{MessageInfo, Received, Subscriber, TransportError};
use session::{Options, Session};
use settle::RabbitSettle;

/// The default prefetch: at most this many messages are delivered to one
/// subscriber and not yet settled.
pub const DEFAULT_PREFETCH: usize = 64;

/// The default number of ordering lanes messages are spread over by partition
/// key (see [`RabbitSubscriberBuilder::lanes`]).
pub const DEFAULT_LANES: u64 = 64;

/// The routing pattern that matches every event type.
const EVERY_TYPE: &str = "#";

/// The longest pause between two reconnection attempts.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(5);

/// How often a pending acknowledgement checks that its channel is still open.
const CHANNEL_CHECK_INTERVAL: Duration = Duration::from_millis(50);

/// The first pause after a failed reconnection attempt; doubles each time.
const FIRST_RECONNECT_DELAY: Duration = Duration::from_millis(100);

/// Reads a consumer group's messages from RabbitMQ.
///
/// The group is a durable queue named after it, bound to the durable topic
/// exchange of each destination with routing patterns on the event type.
/// Subscribers of one group compete for the queue's messages (point-to-point);
/// different groups each get every message (publish-subscribe).
///
/// Messages are acknowledged manually: [`Settle::ack`](crate::transport::Settle::ack) is `basic.ack`,
/// [`Settle::release`](crate::transport::Settle::release) is `basic.nack` with requeue. At most
/// [`prefetch`](RabbitSubscriberBuilder::prefetch) messages are unsettled at
/// once. When the connection dies the subscriber reconnects by itself on the
/// next call; the messages that were unsettled on the dead connection come
/// back from the broker, marked redelivered.
///
/// # Ordering
///
/// RabbitMQ hands a queue's messages to its subscribers round-robin, so with
/// several subscribers in a group two events of one key may be handled at the
/// same time on two machines. Within one subscriber, [`Received::lane`] is a
/// hash of the partition key, so one key is handled in order. For order across
/// the whole group, turn on
/// [`single_active_consumer`](RabbitSubscriberBuilder::single_active_consumer):
/// one subscriber reads at a time and the others are hot standbys — order for
/// every key, but no parallelism beyond one subscriber handling one message
/// at a time.
///
/// # Dead letters
///
/// The consumer publishes messages it gives up on to its group's
/// `<destination>.<group>.dlq`, a topic exchange with a durable queue of the
/// same name bound to it (declared by the consumer before its first letter),
/// which keeps them; `outbox-relay dlq import` moves them into the group's
/// parked table to be replayed to that group, and a subscriber of that queue
/// can be handed to [`redrive`](crate::consumer::dead_letter::redrive).
///
/// # Examples
///
/// ```no_run
/// # async fn demo() -> eventbus::Result<()> {
/// use eventbus::transport::rabbitmq::RabbitSubscriber;
/// use eventbus::transport::Subscriber;
///
/// let mut subscriber = RabbitSubscriber::builder("amqp://guest:guest@127.0.0.1:5672/%2f")
///     .group("billing")
///     .bind("orders", ["com.example.order.*"])
///     .prefetch(32)
///     .single_active_consumer(true)
///     .connect()
///     .await?;
/// while let Some(received) = subscriber.next().await {
///     let received = match received {
///         Ok(received) => received,
///         Err(e) => {
///             eprintln!("reconnecting: {e}");
///             continue;
///         }
///     };
///     println!("{:?} from {}", received.envelope.as_ref().map(|e| &e.id), received.destination);
///     received.settle.ack().await?;
/// }
/// # Ok(()) }
/// ```
pub struct RabbitSubscriber {
    options: Arc<Options>,
    /// The live connection, channel and consumer; `None` after it died.
    session: Option<Session>,
    /// A reconnection in progress: a task, so that dropping `next` halfway
    /// (a `select!` on shutdown) neither loses nor leaks the connection.
    opening: Option<JoinHandle<Result<Session>>>,
    /// Failed reconnection attempts in a row, for the back-off.
    failures: u32,
    closed: bool,
    /// How many acknowledgements are on their way to the broker.
    settling: Arc<watch::Sender<usize>>,
}

impl fmt::Debug for RabbitSubscriber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitSubscriber")
            .field("url", &self.options.redacted_url)
            .field("group", &self.options.group)
            .field("bindings", &self.options.bindings)
            .field("prefetch", &self.options.prefetch)
            .field(
                "single_active_consumer",
                &self.options.single_active_consumer,
            )
            .field("connected", &self.session.is_some())
            .finish_non_exhaustive()
    }
}

impl RabbitSubscriber {
    /// Options for a subscriber connecting to `url`, e.g.
    /// `amqp://user:password@host:5672/%2f` (`%2f` is the default vhost `/`).
    pub fn builder(url: impl Into<String>) -> RabbitSubscriberBuilder {
        RabbitSubscriberBuilder {
            url: url.into(),
            group: None,
            bindings: Vec::new(),
            prefetch: DEFAULT_PREFETCH,
            single_active_consumer: false,
            lanes: DEFAULT_LANES,
            dead_letter_exchange: None,
            queue_expires: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            broker_timeout: DEFAULT_BROKER_TIMEOUT,
            connection_name: None,
            tls: RabbitTls::default(),
        }
    }

    /// The consumer group (the queue name).
    pub fn group(&self) -> &str {
        &self.options.group
    }

    /// The broker URL with its password replaced by `***`, for display.
    pub fn url(&self) -> &str {
        &self.options.redacted_url
    }

    /// Whether the subscriber is connected and consuming now.
    pub fn is_connected(&self) -> bool {
        self.session
            .as_ref()
            .is_some_and(|s| s.channel.status().connected())
    }

    /// Turns a delivery into a [`Received`] whose settle handle acknowledges on
    /// the delivery's own channel.
    fn received(&self, delivery: Delivery, channel: Channel) -> Received {
        let envelope = envelope_from_delivery(&delivery.properties, &delivery.data);
        let lane = self.options.lane_of(&delivery, envelope.as_ref().ok());
        let mut info = MessageInfo::new("rabbitmq");
        info.broker_time = sent_at(&delivery.properties);
        let Delivery {
            delivery_tag,
            exchange,
            routing_key,
            redelivered,
            data,
            acker,
            ..
        } = delivery;
        info.routing_key = Some(routing_key.to_string());
        Received {
            destination: exchange.to_string(),
            lane,
            envelope,
            body: data,
            redelivered,
            info,
            settle: Box::new(RabbitSettle {
                acker,
                delivery_tag,
                channel,
                prefetch: self.options.prefetch,
                settling: Arc::clone(&self.settling),
                timeout: self.options.broker_timeout,
            }),
        }
    }

    /// Forgets a session that failed; the next call reconnects.
    fn lose_session(&mut self) {
        // Dropping the last handle closes what is still open.
        self.session = None;
        self.failures = self.failures.saturating_add(1);
    }
}

#[async_trait::async_trait]
impl Subscriber for RabbitSubscriber {
    async fn next(&mut self) -> Option<Result<Received>> {
        loop {
            if self.closed {
                return None;
            }
            let Some(session) = self.session.as_mut() else {
                let opening = self.opening.get_or_insert_with(|| {
                    let options = Arc::clone(&self.options);
                    let delay = reconnect_delay(self.failures);
                    options.runtime.clone().spawn(async move {
                        tokio::time::sleep(delay).await;
                        Session::open(&options).await
                    })
                });
                let opened = opening.await;
                self.opening = None;
                match opened {
                    Ok(Ok(session)) => {
                        tracing::info!(url = %self.options.redacted_url, group = %self.options.group, "reconnected to RabbitMQ");
                        self.session = Some(session);
                        self.failures = 0;
                        continue;
                    }
                    Ok(Err(e)) => {
                        self.failures = self.failures.saturating_add(1);
                        return Some(Err(e));
                    }
                    Err(e) => {
                        self.failures = self.failures.saturating_add(1);
                        return Some(Err(self.options.unavailable("reconnecting failed", &e)));
                    }
                }
            };
            match session.consumer.next().await {
                Some(Ok(delivery)) => {
                    let channel = session.channel.clone();
                    return Some(Ok(self.received(delivery, channel)));
                }
                Some(Err(e)) => {
                    let error = self
                        .options
                        .broker_error("the subscription was interrupted", &e);
                    self.lose_session();
                    return Some(Err(error));
                }
                None => {
                    // Cancelled by the broker: the queue was deleted, or the
                    // node holding it went away. Declaring again recreates it.
                    self.lose_session();
                    return Some(Err(Error::Subscribe(TransportError::Unavailable(
                        format!(
                            "RabbitMQ cancelled the subscription of group `{}`",
                            self.options.group
                        )
                        .into(),
                    ))));
                }
            }
        }
    }

    async fn close(&mut self) -> Result<()> {
        self.closed = true;
        if let Some(opening) = self.opening.take() {
            opening.abort();
            // A connection opened just before the abort is dropped, which closes it.
            let _ = opening.await;
        }
        match self.session.take() {
            Some(session) => session.close(&self.options, &self.settling).await,
            None => Ok(()),
        }
    }
}

impl Drop for RabbitSubscriber {
    fn drop(&mut self) {
        if let Some(opening) = self.opening.take() {
            opening.abort();
        }
    }
}

/// The `partitionkey` attribute header (any prefix we read, names
/// case-insensitive), as bytes: the key of a message that does not decode.
fn partition_key(properties: &BasicProperties) -> Option<Vec<u8>> {
    let headers = properties.headers().as_ref()?;
    headers.inner().iter().find_map(|(name, value)| {
        attribute_of(name.as_str())
            .is_some_and(|a| a.eq_ignore_ascii_case("partitionkey"))
            .then(|| header_text(value))
            .flatten()
    })
}

/// A consumer tag naming the group, unique per subscription.
fn consumer_tag(group: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    // Keep within AMQP's short-string limit whatever the group's length.
    let room = SHORT_STRING_MAX - id.len() - 1;
    let mut end = group.len().min(room);
    while !group.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}.{id}", &group[..end])
}

/// No pause before the first attempt, then [`FIRST_RECONNECT_DELAY`]
/// doubling per failure up to [`MAX_RECONNECT_DELAY`].
fn reconnect_delay(failures: u32) -> Duration {
    match failures.checked_sub(1) {
        None => Duration::ZERO,
        Some(step) => {
            crate::backoff::exponential_ceiling(FIRST_RECONNECT_DELAY, MAX_RECONNECT_DELAY, step)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::{AMQPValue, FieldTable, ShortString};

    fn properties_with_key(name: &str, key: &str) -> BasicProperties {
        let mut headers = FieldTable::default();
        headers.insert(name.into(), AMQPValue::LongString(key.into()));
        BasicProperties::default()
            .with_headers(headers)
            .with_message_id(ShortString::from("id-1"))
    }

    #[test]
    fn the_partition_key_header_is_found_case_insensitively() {
        let p = properties_with_key("CE-PartitionKey", "o-1");
        assert_eq!(partition_key(&p), Some(b"o-1".to_vec()));
        let p = properties_with_key("cloudEvents:partitionkey", "o-2");
        assert_eq!(partition_key(&p), Some(b"o-2".to_vec()));
        let p = properties_with_key("ce-subject", "o-1");
        assert_eq!(partition_key(&p), None);
        assert_eq!(partition_key(&BasicProperties::default()), None);
    }

    #[test]
    fn reconnect_delays_grow_to_a_ceiling() {
        assert_eq!(reconnect_delay(0), Duration::ZERO);
        assert_eq!(reconnect_delay(1), Duration::from_millis(100));
        assert_eq!(reconnect_delay(2), Duration::from_millis(200));
        assert_eq!(reconnect_delay(4), Duration::from_millis(800));
        assert_eq!(reconnect_delay(10), MAX_RECONNECT_DELAY);
        assert_eq!(reconnect_delay(u32::MAX), MAX_RECONNECT_DELAY);
    }

    #[test]
    fn consumer_tags_fit_in_a_short_string() {
        let long = "é".repeat(200);
        let tag = consumer_tag(&long);
        assert!(tag.len() <= SHORT_STRING_MAX, "{}", tag.len());
        assert!(consumer_tag("billing").starts_with("billing."));
        assert_ne!(consumer_tag("billing"), consumer_tag("billing"));
    }

    async fn config_error(builder: RabbitSubscriberBuilder) -> String {
        crate::transport::testing::config_error(builder.connect()).await
    }

    #[tokio::test]
    async fn invalid_options_are_config_errors_before_connecting() {
        // Port 1: nothing listens, so reaching the network would be a different error.
        let url = "amqp://user:hunter2@127.0.0.1:1/%2f";
        let text = config_error(RabbitSubscriber::builder(url).bind_all("orders")).await;
        assert!(text.contains("needs a consumer group"), "{text}");
        let text = config_error(RabbitSubscriber::builder(url).group("billing")).await;
        assert!(text.contains("subscribes to nothing"), "{text}");
        let text = config_error(
            RabbitSubscriber::builder(url)
                .group("billing")
                .bind_all("orders")
                .prefetch(0),
        )
        .await;
        assert!(text.contains("prefetch"), "{text}");
        let text = config_error(
            RabbitSubscriber::builder(url)
                .group("billing")
                .bind_all("orders")
                .prefetch(70_000),
        )
        .await;
        assert!(text.contains("65535"), "{text}");
        let text = config_error(
            RabbitSubscriber::builder(url)
                .group("amq.billing")
                .bind_all("orders"),
        )
        .await;
        assert!(text.contains("reserved"), "{text}");
        let text = config_error(
            RabbitSubscriber::builder(url)
                .group("billing")
                .bind_all("x".repeat(300)),
        )
        .await;
        assert!(text.contains("limit of 255"), "{text}");
        let text = config_error(
            RabbitSubscriber::builder("http://user:hunter2@host/")
                .group("billing")
                .bind_all("orders"),
        )
        .await;
        assert!(text.contains("invalid AMQP URL"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
    }

    #[tokio::test]
    async fn an_unreachable_broker_is_unavailable_without_the_password() {
        let err = RabbitSubscriber::builder("amqp://user:hunter2@127.0.0.1:1/%2f")
            .group("billing")
            .bind_all("orders")
            .connect()
            .await
            .expect_err("nothing listens on port 1");
        crate::transport::testing::assert_unavailable_hiding(&err, "hunter2");
    }

    #[test]
    fn builder_debug_hides_the_password() {
        let b = RabbitSubscriber::builder("amqp://user:hunter2@host/%2f").group("g");
        let text = format!("{b:?}");
        assert!(text.contains("amqp://user:***@host/%2f"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
    }
}
