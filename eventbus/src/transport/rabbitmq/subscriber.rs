//! [`RabbitSubscriber`]: a consumer group's durable queue, bound to the topic
//! exchanges of its destinations, read with manual acknowledgement under a
//! prefetch bound, reconnecting by itself.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use lapin::acker::Acker;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::uri::AMQPUri;
use lapin::{BasicProperties, Channel, Connection, Consumer, ExchangeKind};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::tls::check_scheme;
use super::{
    envelope_from_delivery, header_text, is_soft, redact_url, sent_at, tokio_properties, RabbitTls,
    Secrets, DEFAULT_BROKER_TIMEOUT, DEFAULT_CONNECT_TIMEOUT, HEADER_PREFIX, SHORT_STRING_MAX,
};
use crate::error::{Error, Result};
use crate::hash::fnv1a;
use crate::transport::{MessageInfo, PublishError, Received, Settle, Subscriber};

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

/// One destination (exchange) and the routing patterns the queue is bound with.
#[derive(Debug, Clone)]
struct Binding {
    exchange: String,
    patterns: Vec<String>,
}

/// Options for a [`RabbitSubscriber`]; start with [`RabbitSubscriber::builder`].
///
/// The URL's password never appears in `Debug` output, logs or errors.
#[derive(Clone)]
pub struct RabbitSubscriberBuilder {
    url: String,
    group: Option<String>,
    bindings: Vec<Binding>,
    prefetch: usize,
    single_active_consumer: bool,
    lanes: u64,
    dead_letter_exchange: Option<String>,
    queue_expires: Option<Duration>,
    connect_timeout: Duration,
    broker_timeout: Duration,
    connection_name: Option<String>,
    tls: RabbitTls,
}

impl fmt::Debug for RabbitSubscriberBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitSubscriberBuilder")
            .field("url", &redact_url(&self.url))
            .field("group", &self.group)
            .field("bindings", &self.bindings)
            .field("prefetch", &self.prefetch)
            .field("single_active_consumer", &self.single_active_consumer)
            .field("lanes", &self.lanes)
            .field("dead_letter_exchange", &self.dead_letter_exchange)
            .field("queue_expires", &self.queue_expires)
            .field("connect_timeout", &self.connect_timeout)
            .field("broker_timeout", &self.broker_timeout)
            .field("connection_name", &self.connection_name)
            .field("tls", &self.tls)
            .finish()
    }
}

impl RabbitSubscriberBuilder {
    /// The consumer group: the name of its durable queue. Required.
    ///
    /// Subscribers of one group share the queue and compete for its messages;
    /// each group gets every message routed to it.
    #[must_use]
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.group = Some(group.into());
        self
    }

    /// Subscribes to `destination` (a topic exchange, declared durable if it
    /// does not exist) for the event types matching `patterns`: topic patterns
    /// on the CloudEvents `type` such as `com.example.order.*` (`*` one word,
    /// `#` any number of words). No pattern means every type (`#`).
    ///
    /// Call it once per destination; a dead-letter destination
    /// (`orders.billing.dlq`) is bound like any other.
    #[must_use]
    pub fn bind<I>(mut self, destination: impl Into<String>, patterns: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        let mut patterns: Vec<String> = patterns.into_iter().map(Into::into).collect();
        if patterns.is_empty() {
            patterns.push(EVERY_TYPE.to_owned());
        }
        self.bindings.push(Binding {
            exchange: destination.into(),
            patterns,
        });
        self
    }

    /// Subscribes to every event type of `destination`; the same as
    /// `bind(destination, ["#"])`.
    #[must_use]
    pub fn bind_all(self, destination: impl Into<String>) -> Self {
        self.bind(destination, [EVERY_TYPE])
    }

    /// At most `n` messages delivered and not yet settled (AMQP `basic.qos`
    /// prefetch count, 1 to 65535); default [`DEFAULT_PREFETCH`]. This is the
    /// broker-side bound on in-flight work: keep it at or below the consumer's
    /// `max_in_flight`.
    #[must_use]
    pub fn prefetch(mut self, n: usize) -> Self {
        self.prefetch = n;
        self
    }

    /// Declares the queue with single active consumer (`x-single-active-consumer`):
    /// of the group's subscribers only one receives at a time, the others stand
    /// by and take over when it leaves. The queue is then read in order, one
    /// message at a time ([`Received::lane`] is always `0`), which keeps the
    /// order of every key at the price of parallelism. Default `false`.
    ///
    /// Every subscriber of a group must agree: RabbitMQ refuses to declare an
    /// existing queue with other arguments.
    #[must_use]
    pub fn single_active_consumer(mut self, on: bool) -> Self {
        self.single_active_consumer = on;
        self
    }

    /// How many ordering lanes messages are spread over, by a hash of their
    /// partition key (the `ce-partitionkey` header; the message id when there
    /// is none). Messages of one lane are handled one at a time, so one key is
    /// handled in order within this subscriber. Default [`DEFAULT_LANES`];
    /// ignored with [`single_active_consumer`](Self::single_active_consumer).
    #[must_use]
    pub fn lanes(mut self, n: u64) -> Self {
        self.lanes = n;
        self
    }

    /// Declares the queue with `x-dead-letter-exchange`, so that messages the
    /// broker itself gives up on (expired, rejected without requeue, over a
    /// length limit) go to `exchange`. Not needed for the consumer's own dead
    /// letters: it publishes those to `<destination>.<group>.dlq` itself.
    #[must_use]
    pub fn dead_letter_exchange(mut self, exchange: impl Into<String>) -> Self {
        self.dead_letter_exchange = Some(exchange.into());
        self
    }

    /// Declares the queue with `x-expires`: the broker deletes it after it has
    /// had no subscriber for `after` (whole milliseconds). For short-lived
    /// groups, such as tests; a production group's queue should outlive its
    /// subscribers.
    #[must_use]
    pub fn queue_expires(mut self, after: Duration) -> Self {
        self.queue_expires = Some(after);
        self
    }

    /// How long connecting (TCP and AMQP handshake) may take; default
    /// [`DEFAULT_CONNECT_TIMEOUT`].
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long the broker may take to answer a declaration, a binding, an
    /// acknowledgement; default [`DEFAULT_BROKER_TIMEOUT`].
    #[must_use]
    pub fn broker_timeout(mut self, timeout: Duration) -> Self {
        self.broker_timeout = timeout;
        self
    }

    /// The connection name shown in the RabbitMQ management UI.
    #[must_use]
    pub fn connection_name(mut self, name: impl Into<String>) -> Self {
        self.connection_name = Some(name.into());
        self
    }

    /// TLS settings for an `amqps://` URL: a private CA, a client
    /// certificate. See [`RabbitTls`].
    #[must_use]
    pub fn tls(mut self, tls: RabbitTls) -> Self {
        self.tls = tls;
        self
    }

    /// Connects, declares the exchanges, the group's queue and its bindings,
    /// and starts consuming.
    ///
    /// # Errors
    ///
    /// - [`Error::Config`] for an invalid URL (or TLS settings with a plain
    ///   `amqp://` one), a missing or invalid group, no
    ///   [`bind`](Self::bind), a prefetch outside 1 to 65535, zero lanes, a name
    ///   longer than AMQP allows, when called outside a tokio runtime, or when
    ///   the broker refuses the declarations (the queue exists with other
    ///   arguments, an exchange of another kind, missing permissions);
    /// - [`Error::Publish`] with [`PublishError::Unavailable`] when the broker
    ///   cannot be reached or does not answer.
    pub async fn connect(self) -> Result<RabbitSubscriber> {
        let redacted_url = redact_url(&self.url);
        let uri = AMQPUri::from_str(&self.url).map_err(|e| {
            let reason = Secrets::from_url(&self.url).scrub(&e);
            Error::Config(format!("invalid AMQP URL `{redacted_url}`: {reason}"))
        })?;
        check_scheme(&self.tls, &uri)?;
        let group = self.group.clone().unwrap_or_default();
        if group.is_empty() {
            return Err(Error::Config(
                "a RabbitSubscriber needs a consumer group: call `.group(name)`".into(),
            ));
        }
        check_name("group (the queue name)", &group)?;
        if group.starts_with("amq.") {
            return Err(Error::Config(format!(
                "group `{group}`: queue names starting with `amq.` are reserved by RabbitMQ"
            )));
        }
        if self.bindings.is_empty() {
            return Err(Error::Config(format!(
                "group `{group}` subscribes to nothing: call `.bind(destination, patterns)`"
            )));
        }
        for binding in &self.bindings {
            if binding.exchange.is_empty() {
                return Err(Error::Config(
                    "the destination (exchange name) must not be empty".into(),
                ));
            }
            check_name("destination (the exchange name)", &binding.exchange)?;
            for pattern in &binding.patterns {
                check_name("routing pattern", pattern)?;
            }
        }
        if let Some(dlx) = &self.dead_letter_exchange {
            check_name("dead-letter exchange", dlx)?;
        }
        let prefetch = u16::try_from(self.prefetch)
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| {
                Error::Config(format!(
                    "prefetch must be between 1 and 65535, not {}",
                    self.prefetch
                ))
            })?;
        if self.lanes == 0 {
            return Err(Error::Config("lanes must be at least 1".into()));
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            Error::Config("RabbitSubscriber must be created inside a tokio runtime".into())
        })?;
        let (settling, _) = watch::channel(0_usize);
        let options = Arc::new(Options {
            uri,
            secrets: Secrets::from_url(&self.url),
            redacted_url,
            runtime,
            group,
            bindings: self.bindings,
            prefetch,
            single_active_consumer: self.single_active_consumer,
            lanes: self.lanes,
            dead_letter_exchange: self.dead_letter_exchange,
            queue_expires: self.queue_expires,
            connect_timeout: self.connect_timeout,
            broker_timeout: self.broker_timeout,
            connection_name: self.connection_name,
            tls: self.tls,
        });
        let session = Session::open(&options).await?;
        Ok(RabbitSubscriber {
            options,
            session: Some(session),
            opening: None,
            failures: 0,
            closed: false,
            settling: Arc::new(settling),
        })
    }
}

/// Reads a consumer group's messages from RabbitMQ.
///
/// The group is a durable queue named after it, bound to the durable topic
/// exchange of each destination with routing patterns on the event type.
/// Subscribers of one group compete for the queue's messages (point-to-point);
/// different groups each get every message (publish-subscribe).
///
/// Messages are acknowledged manually: [`Settle::ack`] is `basic.ack`,
/// [`Settle::release`] is `basic.nack` with requeue. At most
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

/// The validated options, shared with reconnection tasks.
struct Options {
    /// Holds the password: never printed.
    uri: AMQPUri,
    secrets: Secrets,
    redacted_url: String,
    runtime: tokio::runtime::Handle,
    group: String,
    bindings: Vec<Binding>,
    prefetch: u16,
    single_active_consumer: bool,
    lanes: u64,
    dead_letter_exchange: Option<String>,
    queue_expires: Option<Duration>,
    connect_timeout: Duration,
    broker_timeout: Duration,
    connection_name: Option<String>,
    tls: RabbitTls,
}

impl Options {
    fn unavailable(&self, what: &str, e: &dyn fmt::Display) -> Error {
        Error::Publish(PublishError::Unavailable(format!(
            "{what} (RabbitMQ at {}): {}",
            self.redacted_url,
            self.secrets.scrub(e)
        )))
    }

    fn no_answer(&self, what: &str) -> Error {
        Error::Publish(PublishError::Unavailable(format!(
            "{what} (RabbitMQ at {}): no answer within {:?}",
            self.redacted_url, self.broker_timeout
        )))
    }

    /// A broker refusal (channel-level error) is a configuration problem;
    /// anything else means the broker is not reachable.
    fn broker_error(&self, what: &str, e: &lapin::Error) -> Error {
        if is_soft(e) {
            Error::Config(format!("{what}: {}", self.secrets.scrub(e)))
        } else {
            self.unavailable(what, e)
        }
    }

    /// Runs one broker operation under the broker timeout.
    async fn step<T>(
        &self,
        what: impl Fn() -> String,
        operation: impl std::future::Future<Output = lapin::Result<T>>,
    ) -> Result<T> {
        match tokio::time::timeout(self.broker_timeout, operation).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(self.broker_error(&what(), &e)),
            Err(_) => Err(self.no_answer(&what())),
        }
    }

    fn queue_arguments(&self) -> FieldTable {
        let mut arguments = FieldTable::default();
        if self.single_active_consumer {
            arguments.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
        }
        if let Some(dlx) = &self.dead_letter_exchange {
            arguments.insert(
                "x-dead-letter-exchange".into(),
                AMQPValue::LongString(dlx.as_str().into()),
            );
        }
        if let Some(after) = self.queue_expires {
            let ms = i64::try_from(after.as_millis()).unwrap_or(i64::MAX).max(1);
            arguments.insert("x-expires".into(), AMQPValue::LongLongInt(ms));
        }
        arguments
    }

    /// The lane of a delivery: `0` with single active consumer, otherwise a
    /// hash of its partition key (its message id when it has none).
    fn lane_of(&self, delivery: &Delivery) -> u64 {
        if self.single_active_consumer {
            return 0;
        }
        let key = partition_key(&delivery.properties).or_else(|| {
            delivery
                .properties
                .message_id()
                .as_ref()
                .map(|id| id.as_str().as_bytes().to_vec())
        });
        match key {
            Some(key) => fnv1a(&key) % self.lanes,
            None => delivery.delivery_tag % self.lanes,
        }
    }
}

/// One connection with its consuming channel.
struct Session {
    connection: Connection,
    channel: Channel,
    consumer: Consumer,
    tag: String,
}

impl Session {
    /// Connects and sets up the exchanges, the queue, its bindings, the
    /// prefetch and the consumer.
    async fn open(options: &Options) -> Result<Session> {
        let mut properties = tokio_properties(options.runtime.clone());
        if let Some(name) = &options.connection_name {
            properties = properties.with_connection_name(name.clone().into());
        }
        let connecting = Connection::connect_uri_with_config(
            options.uri.clone(),
            properties,
            options.tls.to_lapin(),
        );
        let connection = match tokio::time::timeout(options.connect_timeout, connecting).await {
            Ok(Ok(connection)) => connection,
            Ok(Err(e)) => return Err(options.unavailable("cannot connect", &e)),
            Err(_) => {
                return Err(Error::Publish(PublishError::Unavailable(format!(
                    "cannot connect to RabbitMQ at {}: no answer within {:?}",
                    options.redacted_url, options.connect_timeout
                ))))
            }
        };
        let url = options.redacted_url.clone();
        let secrets = options.secrets.clone();
        let group = options.group.clone();
        connection.on_error(move |e| {
            tracing::warn!(url = %url, group = %group, error = %secrets.scrub(&e), "RabbitMQ connection lost; the subscriber reconnects");
        });
        let channel = options
            .step(
                || "cannot open a channel".to_owned(),
                connection.create_channel(),
            )
            .await?;
        let channel = Self::declare_exchanges(options, &connection, channel).await?;
        let group = options.group.as_str();
        options
            .step(
                || {
                    format!(
                        "cannot declare queue `{group}` (if it exists with other arguments — \
                         single active consumer, dead-letter exchange, expiry — every subscriber \
                         of the group must use the same ones)"
                    )
                },
                channel.queue_declare(
                    group,
                    QueueDeclareOptions {
                        durable: true,
                        ..QueueDeclareOptions::default()
                    },
                    options.queue_arguments(),
                ),
            )
            .await?;
        for binding in &options.bindings {
            for pattern in &binding.patterns {
                options
                    .step(
                        || {
                            format!(
                                "cannot bind queue `{group}` to exchange `{}` with `{pattern}`",
                                binding.exchange
                            )
                        },
                        channel.queue_bind(
                            group,
                            &binding.exchange,
                            pattern,
                            QueueBindOptions::default(),
                            FieldTable::default(),
                        ),
                    )
                    .await?;
            }
        }
        options
            .step(
                || "cannot set the prefetch (basic.qos)".to_owned(),
                channel.basic_qos(options.prefetch, BasicQosOptions { global: false }),
            )
            .await?;
        let tag = consumer_tag(group);
        let consumer = options
            .step(
                || format!("cannot consume from queue `{group}`"),
                channel.basic_consume(
                    group,
                    &tag,
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                ),
            )
            .await?;
        tracing::debug!(url = %options.redacted_url, group, tag, "consuming from RabbitMQ");
        Ok(Session {
            connection,
            channel,
            consumer,
            tag,
        })
    }

    /// Declares each destination's durable topic exchange, as the publisher
    /// does. When the broker refuses (no `configure` permission, an exchange of
    /// another kind), an existing exchange of that name is used as it is.
    /// Returns a usable channel: a refusal closes the one it happened on.
    async fn declare_exchanges(
        options: &Options,
        connection: &Connection,
        mut channel: Channel,
    ) -> Result<Channel> {
        for binding in &options.bindings {
            let exchange = binding.exchange.as_str();
            let declaring = channel.exchange_declare(
                exchange,
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            );
            let what = || format!("cannot declare topic exchange `{exchange}`");
            let refusal = match options.step(what, declaring).await {
                Ok(()) => continue,
                Err(Error::Config(reason)) => reason,
                Err(e) => return Err(e),
            };
            channel = options
                .step(
                    || "cannot open a channel".to_owned(),
                    connection.create_channel(),
                )
                .await?;
            let checking = channel.exchange_declare(
                exchange,
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    passive: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            );
            match options.step(String::new, checking).await {
                Ok(()) => {
                    tracing::warn!(exchange, reason = %refusal, "cannot declare the exchange; binding to the existing one");
                }
                Err(Error::Config(_)) => return Err(Error::Config(refusal)),
                Err(e) => return Err(e),
            }
        }
        Ok(channel)
    }

    /// Stops deliveries, waits for acknowledgements on their way, closes.
    async fn close(self, options: &Options, settling: &watch::Sender<usize>) -> Result<()> {
        let mut result = Ok(());
        if self.channel.status().connected() {
            let tag = self.tag.as_str();
            if let Err(e) = options
                .step(
                    || format!("cannot cancel consumer `{tag}`"),
                    self.channel
                        .basic_cancel(tag, BasicCancelOptions::default()),
                )
                .await
            {
                result = Err(e);
            }
        }
        // Acknowledgements already issued must reach the broker before the
        // channel closes, or their messages would be delivered again.
        let mut idle = settling.subscribe();
        let waiting = idle.wait_for(|n| *n == 0);
        if tokio::time::timeout(options.broker_timeout, waiting)
            .await
            .is_err()
        {
            tracing::warn!(group = %options.group, "acknowledgements still pending at close");
        }
        // Closing the channel gives back what was delivered but never settled.
        if self.channel.status().connected() {
            if let Err(e) = options
                .step(
                    || "cannot close the channel".to_owned(),
                    self.channel.close(200, "eventbus subscriber closed"),
                )
                .await
            {
                result = result.and(Err(e));
            }
        }
        if self.connection.status().connected() {
            if let Err(e) = options
                .step(
                    || "cannot close the connection".to_owned(),
                    self.connection.close(200, "eventbus subscriber closed"),
                )
                .await
            {
                result = result.and(Err(e));
            }
        }
        result
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
        let lane = self.options.lane_of(&delivery);
        let envelope = envelope_from_delivery(&delivery.properties, &delivery.data);
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
                        .unavailable("the subscription was interrupted", &e);
                    self.lose_session();
                    return Some(Err(error));
                }
                None => {
                    // Cancelled by the broker: the queue was deleted, or the
                    // node holding it went away. Declaring again recreates it.
                    self.lose_session();
                    return Some(Err(Error::Publish(PublishError::Unavailable(format!(
                        "RabbitMQ cancelled the subscription of group `{}`",
                        self.options.group
                    )))));
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

/// Settles one delivery on the channel it arrived on.
struct RabbitSettle {
    acker: Acker,
    delivery_tag: u64,
    /// The delivery's channel: a tag means nothing on any other.
    channel: Channel,
    /// The channel's prefetch, re-sent by [`Settle::ack_durably`].
    prefetch: u16,
    settling: Arc<watch::Sender<usize>>,
    timeout: Duration,
}

impl fmt::Debug for RabbitSettle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitSettle")
            .field("delivery_tag", &self.delivery_tag)
            .finish_non_exhaustive()
    }
}

/// Counts an acknowledgement on its way to the broker while it lives.
struct SettlingGuard(Arc<watch::Sender<usize>>);

impl SettlingGuard {
    fn new(settling: &Arc<watch::Sender<usize>>) -> Self {
        settling.send_modify(|n| *n += 1);
        SettlingGuard(Arc::clone(settling))
    }
}

impl Drop for SettlingGuard {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl RabbitSettle {
    async fn settle(&self, ack: bool) -> Result<()> {
        let what = if ack { "basic.ack" } else { "basic.nack" };
        if !self.channel.status().connected() {
            // The broker already took the message back when the channel died.
            return Err(Error::Publish(PublishError::Unavailable(format!(
                "cannot {what} delivery {}: its channel is closed; RabbitMQ delivers the message again",
                self.delivery_tag
            ))));
        }
        let _counted = SettlingGuard::new(&self.settling);
        let sending = async {
            if ack {
                self.acker.ack(BasicAckOptions::default()).await
            } else {
                self.acker
                    .nack(BasicNackOptions {
                        multiple: false,
                        requeue: true,
                    })
                    .await
            }
        };
        // An acknowledgement sent as the connection dies may never be answered
        // by lapin: stop waiting as soon as the channel is known to be closed.
        let closed = async {
            while self.channel.status().connected() {
                tokio::time::sleep(CHANNEL_CHECK_INTERVAL).await;
            }
        };
        let sending = async {
            tokio::select! {
                sent = sending => Some(sent),
                () = closed => None,
            }
        };
        match tokio::time::timeout(self.timeout, sending).await {
            Ok(None) => Err(Error::Publish(PublishError::Unavailable(format!(
                "cannot {what} delivery {}: its channel closed; RabbitMQ delivers the message again",
                self.delivery_tag
            )))),
            Ok(Some(Ok(()))) => Ok(()),
            Ok(Some(Err(e))) => Err(Error::Publish(PublishError::Unavailable(format!(
                "cannot {what} delivery {}: {e}",
                self.delivery_tag
            )))),
            Err(_) => Err(Error::Publish(PublishError::Unavailable(format!(
                "cannot {what} delivery {}: no answer within {:?}",
                self.delivery_tag, self.timeout
            )))),
        }
    }
}

#[async_trait::async_trait]
impl Settle for RabbitSettle {
    async fn ack(self: Box<Self>) -> Result<()> {
        self.settle(true).await
    }

    /// `basic.ack`, then a synchronous round trip on the same channel
    /// (`basic.qos` with the prefetch it already has). RabbitMQ does not answer
    /// acknowledgements, and a process killed with unread deliveries in its
    /// socket resets the connection, discarding what it had not sent yet; the
    /// broker handles a channel's frames in order, so once `qos-ok` is back the
    /// acknowledgement has been applied.
    async fn ack_durably(self: Box<Self>) -> Result<()> {
        self.settle(true).await?;
        let _counted = SettlingGuard::new(&self.settling);
        let options = BasicQosOptions { global: false };
        match tokio::time::timeout(self.timeout, self.channel.basic_qos(self.prefetch, options))
            .await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Error::Publish(PublishError::Unavailable(format!(
                "acknowledged delivery {}, but cannot confirm RabbitMQ applied it: {e}",
                self.delivery_tag
            )))),
            Err(_) => Err(Error::Publish(PublishError::Unavailable(format!(
                "acknowledged delivery {}, but RabbitMQ did not confirm it within {:?}",
                self.delivery_tag, self.timeout
            )))),
        }
    }

    async fn release(self: Box<Self>) -> Result<()> {
        self.settle(false).await
    }

    fn is_current(&self) -> bool {
        self.channel.status().connected()
    }
}

/// The `ce-partitionkey` header (name case-insensitive), as bytes.
fn partition_key(properties: &BasicProperties) -> Option<Vec<u8>> {
    let headers = properties.headers().as_ref()?;
    headers.inner().iter().find_map(|(name, value)| {
        let name = name.as_str();
        let attribute = name.get(HEADER_PREFIX.len()..)?;
        let is_key = name
            .get(..HEADER_PREFIX.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(HEADER_PREFIX))
            && attribute.eq_ignore_ascii_case("partitionkey");
        if is_key {
            header_text(value)
        } else {
            None
        }
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

fn reconnect_delay(failures: u32) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    let factor = 2_u32.saturating_pow(failures.saturating_sub(1).min(16));
    FIRST_RECONNECT_DELAY
        .saturating_mul(factor)
        .min(MAX_RECONNECT_DELAY)
}

fn check_name(what: &str, value: &str) -> Result<()> {
    if value.len() > SHORT_STRING_MAX {
        return Err(Error::Config(format!(
            "{what} is {} bytes, more than AMQP's limit of {SHORT_STRING_MAX}",
            value.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::ShortString;

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
        match builder.connect().await {
            Err(Error::Config(text)) => text,
            other => panic!("expected a configuration error, got {other:?}"),
        }
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
        assert!(err.is_transient(), "{err:?}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn builder_debug_hides_the_password() {
        let b = RabbitSubscriber::builder("amqp://user:hunter2@host/%2f").group("g");
        let text = format!("{b:?}");
        assert!(text.contains("amqp://user:***@host/%2f"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
    }
}
