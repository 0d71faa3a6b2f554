//! [`RabbitPublisher`]: sends envelopes to durable topic exchanges with
//! publisher confirms, pipelined per batch, reconnecting by itself.

use std::collections::{BTreeSet, HashSet};
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex as StdMutex, MutexGuard, PoisonError};
use std::time::Duration;

use lapin::message::BasicReturnMessage;
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::publisher_confirm::Confirmation;
use lapin::types::{FieldTable, ShortString};
use lapin::uri::AMQPUri;
use lapin::{Channel, Connection, ExchangeKind};
use tokio::sync::Mutex;

use super::tls::check_scheme;
use super::unroutable::{Unroutable, UnroutablePolicies};
use super::{
    is_soft, message_properties, redact_url, tokio_properties, with_sent_at, RabbitTls, Secrets,
    DEFAULT_BROKER_TIMEOUT, DEFAULT_CONNECT_TIMEOUT, HEADER_PREFIX, SHORT_STRING_MAX,
};
use crate::error::{Error, Result};
use crate::transport::{Delivered, OutgoingMessage, PublishError, Publisher};

/// The default client-side limit on one message body: 16 MiB.
///
/// RabbitMQ 4.x refuses larger messages by default (`max_message_size`; 3.x allowed
/// 128 MiB) and does so by closing the channel, which fails every other message in
/// flight on it. Checking first turns that into a [`PublishError::Rejected`] for
/// the one message.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 16 * 1024 * 1024;

/// Idle confirm-mode channels kept per publisher for concurrent batches.
const MAX_IDLE_CHANNELS: usize = 8;

/// How many times finding a refused message may reconnect.
const ISOLATION_RECONNECTS: u32 = 3;

/// Options for a [`RabbitPublisher`]; start with [`RabbitPublisher::builder`].
///
/// The URL's password never appears in `Debug` output, logs or errors.
#[derive(Clone)]
pub struct RabbitPublisherBuilder {
    url: String,
    connect_timeout: Duration,
    broker_timeout: Duration,
    max_message_size: usize,
    declare_exchanges: bool,
    app_id: Option<String>,
    connection_name: Option<String>,
    tls: RabbitTls,
    unroutable: UnroutablePolicies,
}

impl fmt::Debug for RabbitPublisherBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitPublisherBuilder")
            .field("url", &redact_url(&self.url))
            .field("connect_timeout", &self.connect_timeout)
            .field("broker_timeout", &self.broker_timeout)
            .field("max_message_size", &self.max_message_size)
            .field("declare_exchanges", &self.declare_exchanges)
            .field("app_id", &self.app_id)
            .field("connection_name", &self.connection_name)
            .field("tls", &self.tls)
            .field("unroutable", &self.unroutable)
            .finish()
    }
}

impl RabbitPublisherBuilder {
    /// How long connecting (TCP and AMQP handshake) may take; default
    /// [`DEFAULT_CONNECT_TIMEOUT`].
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long the broker may take to answer: confirms for a whole batch, an
    /// exchange declaration, opening a channel; default [`DEFAULT_BROKER_TIMEOUT`].
    /// Past it, the unanswered messages fail with [`PublishError::Unavailable`].
    #[must_use]
    pub fn broker_timeout(mut self, timeout: Duration) -> Self {
        self.broker_timeout = timeout;
        self
    }

    /// The largest message body sent; larger ones fail with
    /// [`PublishError::Rejected`] without reaching the broker. Default
    /// [`DEFAULT_MAX_MESSAGE_SIZE`]; keep it at or below the broker's
    /// `max_message_size`.
    #[must_use]
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// Whether [`Publisher::publish_batch`] declares (once per connection) the
    /// exchange of each destination it has not declared yet. Default `true`.
    ///
    /// When the broker refuses the declaration (no `configure` permission, an
    /// existing exchange of another kind), an existing exchange of that name is
    /// used as it is. Turn declaration off when exchanges are managed elsewhere;
    /// publishing to a missing exchange then fails with [`PublishError::Rejected`].
    #[must_use]
    pub fn declare_exchanges(mut self, declare: bool) -> Self {
        self.declare_exchanges = declare;
        self
    }

    /// The AMQP `app_id` property set on every message, e.g. the service name.
    #[must_use]
    pub fn app_id(mut self, app_id: impl Into<String>) -> Self {
        self.app_id = Some(app_id.into());
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

    /// What happens to a message no queue is bound for, for every destination
    /// without a policy of its own; default [`Unroutable::Drop`].
    #[must_use]
    pub fn unroutable(mut self, policy: Unroutable) -> Self {
        self.unroutable.default = policy;
        self
    }

    /// What happens to a message no queue is bound for, for `exchange` (the
    /// broker-level destination name, after any prefix or mapping).
    #[must_use]
    pub fn unroutable_for(mut self, exchange: impl Into<String>, policy: Unroutable) -> Self {
        self.unroutable.by_exchange.insert(exchange.into(), policy);
        self
    }

    /// Connects to the broker and returns the publisher.
    ///
    /// # Errors
    ///
    /// - [`Error::Config`] when the URL is not a valid AMQP URL, `app_id` is too
    ///   long, TLS settings come with a plain `amqp://` URL, or when called
    ///   outside a tokio runtime;
    /// - [`Error::Publish`] with [`PublishError::Unavailable`] when the broker
    ///   cannot be reached or refuses the connection (including bad credentials).
    pub async fn connect(self) -> Result<RabbitPublisher> {
        let redacted_url = redact_url(&self.url);
        let uri = AMQPUri::from_str(&self.url).map_err(|e| {
            let reason = Secrets::from_url(&self.url).scrub(&e);
            Error::Config(format!("invalid AMQP URL `{redacted_url}`: {reason}"))
        })?;
        check_scheme(&self.tls, &uri)?;
        if let Some(app_id) = &self.app_id {
            if app_id.len() > SHORT_STRING_MAX {
                return Err(Error::Config(format!(
                    "AMQP app_id is {} bytes, more than the limit of {SHORT_STRING_MAX}",
                    app_id.len()
                )));
            }
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            Error::Config("RabbitPublisher must be created inside a tokio runtime".into())
        })?;
        let publisher = RabbitPublisher {
            secrets: Secrets::from_url(&self.url),
            uri,
            redacted_url,
            runtime,
            connect_timeout: self.connect_timeout,
            broker_timeout: self.broker_timeout,
            max_message_size: self.max_message_size,
            declare_exchanges: self.declare_exchanges,
            app_id: self.app_id,
            connection_name: self.connection_name,
            tls: self.tls,
            unroutable: self.unroutable,
            link: Mutex::new(None),
            generation: AtomicU64::new(0),
            idle: StdMutex::new(Vec::new()),
            declared: StdMutex::new(HashSet::new()),
        };
        {
            let mut link = publisher.link.lock().await;
            *link = Some(publisher.open().await?);
        }
        Ok(publisher)
    }
}

/// Publishes envelopes to RabbitMQ with publisher confirms.
///
/// Each destination is a durable `topic` exchange; the routing key is the
/// CloudEvents `type`, so consumers bind queues with patterns such as
/// `com.example.order.*`. A message counts as published only when the broker
/// confirms it. Messages are sent `mandatory`, so the broker returns one no
/// queue is bound for; what happens then is the destination's [`Unroutable`]
/// policy: by default it counts as published with
/// [`Delivered::unroutable`] set, with [`Unroutable::Park`] it fails with
/// [`PublishError::Rejected`].
///
/// A batch is pipelined: every message is sent, then every confirm awaited.
/// Concurrent batches use separate channels of one connection. When the
/// connection or a channel dies the publisher reconnects by itself on the next
/// call; until the broker is back, calls fail with [`PublishError::Unavailable`].
///
/// # Examples
///
/// ```no_run
/// # async fn demo() -> eventbus::Result<()> {
/// use eventbus::transport::rabbitmq::RabbitPublisher;
/// use eventbus::{Envelope, OutgoingMessage, Publisher};
///
/// let publisher = RabbitPublisher::builder("amqp://guest:guest@127.0.0.1:5672/%2f")
///     .app_id("orders")
///     .connect()
///     .await?;
/// publisher.ensure_destination("orders").await?;
///
/// let mut envelope = Envelope::new(
///     "urn:service:orders",
///     "com.example.order.placed",
///     br#"{"order_id":"o-1"}"#.to_vec(),
/// );
/// envelope.partition_key = Some("o-1".into());
/// let batch = [OutgoingMessage { destination: "orders".into(), envelope }];
/// for result in publisher.publish_batch(&batch).await {
///     // `unroutable` when no queue is bound for `com.example.order.placed`
///     let delivered = result?;
///     println!("routed: {}", !delivered.unroutable);
/// }
/// # Ok(()) }
/// ```
pub struct RabbitPublisher {
    /// Holds the password: never printed.
    uri: AMQPUri,
    secrets: Secrets,
    redacted_url: String,
    runtime: tokio::runtime::Handle,
    connect_timeout: Duration,
    broker_timeout: Duration,
    max_message_size: usize,
    declare_exchanges: bool,
    app_id: Option<String>,
    connection_name: Option<String>,
    tls: RabbitTls,
    unroutable: UnroutablePolicies,
    /// The current connection; replaced when it is found dead.
    link: Mutex<Option<Link>>,
    /// Incremented per connection, so channels of an old one are never reused.
    generation: AtomicU64,
    idle: StdMutex<Vec<PooledChannel>>,
    /// Exchanges declared on the current connection.
    declared: StdMutex<HashSet<String>>,
}

struct Link {
    connection: Connection,
    generation: u64,
}

struct PooledChannel {
    channel: Channel,
    generation: u64,
}

impl fmt::Debug for RabbitPublisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitPublisher")
            .field("url", &self.redacted_url)
            .field("connect_timeout", &self.connect_timeout)
            .field("broker_timeout", &self.broker_timeout)
            .field("max_message_size", &self.max_message_size)
            .field("declare_exchanges", &self.declare_exchanges)
            .field("app_id", &self.app_id)
            .field("connection_name", &self.connection_name)
            .field("unroutable", &self.unroutable)
            .finish_non_exhaustive()
    }
}

/// The result of sending one message on a channel.
enum Attempt {
    /// Confirmed by the broker.
    Confirmed,
    /// Confirmed, but routed to no queue, and the destination's policy drops
    /// such messages.
    Dropped,
    /// Failed for a reason that is not the channel's death.
    Failed(PublishError),
    /// The channel died (closed by the broker, connection lost, timed out).
    ChannelLost(ChannelFailure),
}

#[derive(Clone)]
enum ChannelFailure {
    Lapin(lapin::Error),
    Timeout,
    NotConfirmMode,
}

impl RabbitPublisher {
    /// Connects with default options; see [`RabbitPublisher::builder`].
    ///
    /// # Errors
    ///
    /// As for [`RabbitPublisherBuilder::connect`].
    pub async fn connect(url: &str) -> Result<Self> {
        Self::builder(url).connect().await
    }

    /// Options for a publisher connecting to `url`, e.g.
    /// `amqp://user:password@host:5672/%2f` (`%2f` is the default vhost `/`).
    pub fn builder(url: impl Into<String>) -> RabbitPublisherBuilder {
        RabbitPublisherBuilder {
            url: url.into(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            broker_timeout: DEFAULT_BROKER_TIMEOUT,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            declare_exchanges: true,
            app_id: None,
            connection_name: None,
            tls: RabbitTls::default(),
            unroutable: UnroutablePolicies::default(),
        }
    }

    /// The broker URL with its password replaced by `***`, for display.
    pub fn url(&self) -> &str {
        &self.redacted_url
    }

    /// Whether the connection is currently open.
    pub async fn is_connected(&self) -> bool {
        self.link
            .lock()
            .await
            .as_ref()
            .is_some_and(|l| l.connection.status().connected())
    }

    /// Closes the connection gracefully, after the messages already sent. A later
    /// publish opens a new one.
    pub async fn close(&self) {
        lock(&self.idle).clear();
        if let Some(link) = self.link.lock().await.take() {
            if link.connection.status().connected() {
                if let Err(e) = link
                    .connection
                    .close(200, "eventbus publisher closed")
                    .await
                {
                    tracing::debug!(url = %self.redacted_url, error = %self.secrets.scrub(&e), "closing RabbitMQ connection failed");
                }
            }
        }
    }

    /// Opens a new connection.
    async fn open(&self) -> Result<Link, PublishError> {
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        lock(&self.declared).clear();
        let mut properties = tokio_properties(self.runtime.clone());
        if let Some(name) = &self.connection_name {
            properties = properties.with_connection_name(name.clone().into());
        }
        let connecting =
            Connection::connect_uri_with_config(self.uri.clone(), properties, self.tls.to_lapin());
        let connection = match tokio::time::timeout(self.connect_timeout, connecting).await {
            Ok(Ok(connection)) => connection,
            Ok(Err(e)) => {
                return Err(PublishError::Unavailable(format!(
                    "cannot connect to RabbitMQ at {}: {}",
                    self.redacted_url,
                    self.secrets.scrub(&e)
                )))
            }
            Err(_) => {
                return Err(PublishError::Unavailable(format!(
                    "cannot connect to RabbitMQ at {}: no answer within {:?}",
                    self.redacted_url, self.connect_timeout
                )))
            }
        };
        let url = self.redacted_url.clone();
        let secrets = self.secrets.clone();
        connection.on_error(move |e| {
            tracing::warn!(url = %url, error = %secrets.scrub(&e), "RabbitMQ connection lost; reconnecting on the next publish");
        });
        tracing::debug!(url = %self.redacted_url, generation, "connected to RabbitMQ");
        Ok(Link {
            connection,
            generation,
        })
    }

    /// A confirm-mode channel: an idle one of the current connection, or a new
    /// one (reconnecting first when the connection is gone).
    async fn acquire(&self) -> Result<PooledChannel, PublishError> {
        let current = self.generation.load(Ordering::Acquire);
        {
            let mut idle = lock(&self.idle);
            while let Some(pooled) = idle.pop() {
                if pooled.generation == current && pooled.channel.status().connected() {
                    return Ok(pooled);
                }
            }
        }
        let mut link = self.link.lock().await;
        let alive = link
            .as_ref()
            .is_some_and(|l| l.connection.status().connected());
        if !alive {
            // Dropping a dead connection only releases its resources.
            *link = None;
            lock(&self.idle).clear();
            *link = Some(self.open().await?);
        }
        let Some(link) = link.as_ref() else {
            return Err(PublishError::Unavailable(format!(
                "no connection to RabbitMQ at {}",
                self.redacted_url
            )));
        };
        let opening = async {
            let channel = link.connection.create_channel().await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            Ok::<_, lapin::Error>(channel)
        };
        match tokio::time::timeout(self.broker_timeout, opening).await {
            Ok(Ok(channel)) => Ok(PooledChannel {
                channel,
                generation: link.generation,
            }),
            Ok(Err(e)) => Err(PublishError::Unavailable(format!(
                "cannot open a channel to RabbitMQ at {}: {}",
                self.redacted_url,
                self.secrets.scrub(&e)
            ))),
            Err(_) => Err(PublishError::Unavailable(format!(
                "RabbitMQ at {} did not open a channel within {:?}",
                self.redacted_url, self.broker_timeout
            ))),
        }
    }

    /// Returns a healthy channel to the pool; a dead one is dropped.
    fn release(&self, pooled: PooledChannel) {
        if pooled.channel.status().connected()
            && pooled.generation == self.generation.load(Ordering::Acquire)
        {
            let mut idle = lock(&self.idle);
            if idle.len() < MAX_IDLE_CHANNELS {
                idle.push(pooled);
            }
        }
    }

    /// Checks what the broker would refuse by closing the channel, or what lapin
    /// cannot encode.
    fn validate(&self, message: &OutgoingMessage) -> Result<(), PublishError> {
        let envelope = &message.envelope;
        check_destination(&message.destination)?;
        if envelope.data.len() > self.max_message_size {
            return Err(PublishError::Rejected(format!(
                "message body is {} bytes, more than the limit of {} bytes (max_message_size)",
                envelope.data.len(),
                self.max_message_size
            )));
        }
        check_short("event type (the routing key)", &envelope.event_type)?;
        check_short("event id (the message_id property)", &envelope.id)?;
        if let Some(ct) = &envelope.datacontenttype {
            check_short("datacontenttype (the content_type property)", ct)?;
        }
        for (name, _) in envelope.attributes() {
            if HEADER_PREFIX.len() + name.len() > SHORT_STRING_MAX {
                return Err(PublishError::Rejected(format!(
                    "attribute name `{name}` is too long for an AMQP header name ({SHORT_STRING_MAX} bytes)"
                )));
            }
        }
        Ok(())
    }

    /// Sends `items` (indices into `messages`) on `channel`, then awaits every
    /// confirm. Returns one attempt per item, in order.
    async fn pipeline(
        &self,
        channel: &Channel,
        messages: &[OutgoingMessage],
        items: &[usize],
    ) -> Vec<(usize, Attempt)> {
        let mut confirms = Vec::with_capacity(items.len());
        let mut out = Vec::with_capacity(items.len());
        // One deadline for sending and confirming: a blocked connection (broker
        // resource alarm) stalls the sending, not only the confirms.
        let deadline = tokio::time::Instant::now() + self.broker_timeout;
        let mut send_failure = None;
        for (pos, &i) in items.iter().enumerate() {
            let message = &messages[i];
            let envelope = &message.envelope;
            let sending = channel.basic_publish(
                &message.destination,
                &envelope.event_type,
                BasicPublishOptions {
                    mandatory: true,
                    immediate: false,
                },
                &envelope.data,
                with_sent_at(message_properties(envelope, self.app_id.as_deref())),
            );
            match tokio::time::timeout_at(deadline, sending).await {
                Ok(Ok(confirm)) => confirms.push((i, confirm)),
                Ok(Err(e)) => {
                    send_failure = Some((pos, ChannelFailure::Lapin(e)));
                    break;
                }
                Err(_) => {
                    send_failure = Some((pos, ChannelFailure::Timeout));
                    break;
                }
            }
        }

        let mut returned: Vec<BasicReturnMessage> = Vec::new();
        let mut timed_out = false;
        for (i, confirm) in confirms {
            if timed_out {
                out.push((i, Attempt::ChannelLost(ChannelFailure::Timeout)));
                continue;
            }
            let attempt = match tokio::time::timeout_at(deadline, confirm).await {
                Ok(Ok(Confirmation::Ack(ret))) => {
                    returned.extend(ret.map(|r| *r));
                    Attempt::Confirmed
                }
                Ok(Ok(Confirmation::Nack(ret))) => {
                    returned.extend(ret.map(|r| *r));
                    Attempt::Failed(PublishError::Rejected(
                        "the broker nacked the message (negative publisher confirm)".into(),
                    ))
                }
                Ok(Ok(Confirmation::NotRequested)) => {
                    Attempt::ChannelLost(ChannelFailure::NotConfirmMode)
                }
                Ok(Err(e)) => Attempt::ChannelLost(ChannelFailure::Lapin(e)),
                Err(_) => {
                    timed_out = true;
                    Attempt::ChannelLost(ChannelFailure::Timeout)
                }
            };
            out.push((i, attempt));
        }
        if let Some((pos, failure)) = send_failure {
            for &i in &items[pos..] {
                out.push((i, Attempt::ChannelLost(failure.clone())));
            }
        }

        // lapin hands a returned message to whichever confirm completes next, which
        // with the broker's `multiple` acks need not be its own: match returns to
        // messages by what they carry instead.
        for ret in returned {
            let id = ret
                .delivery
                .properties
                .message_id()
                .as_ref()
                .map(ShortString::as_str);
            let exchange = ret.delivery.exchange.as_str();
            let routing_key = ret.delivery.routing_key.as_str();
            let owner = out.iter_mut().find(|(i, attempt)| {
                let m = &messages[*i];
                !matches!(attempt, Attempt::Failed(_) | Attempt::Dropped)
                    && id == Some(m.envelope.id.as_str())
                    && m.destination == exchange
                    && m.envelope.event_type == routing_key
            });
            match owner {
                // Routing happens before the confirm: the broker has decided,
                // even if the channel died before its ack arrived.
                Some((_, attempt)) if self.unroutable.of(exchange) == Unroutable::Drop => {
                    *attempt = Attempt::Dropped;
                }
                Some((_, attempt)) => {
                    *attempt = Attempt::Failed(PublishError::Rejected(format!(
                        "unroutable: no queue is bound to exchange `{exchange}` for routing key `{routing_key}` (broker returned {} {})",
                        ret.reply_code, ret.reply_text
                    )));
                }
                None => tracing::warn!(
                    exchange,
                    routing_key,
                    message_id = ?id,
                    "RabbitMQ returned a message that matches none in the batch"
                ),
            }
        }
        out
    }

    fn describe(&self, failure: &ChannelFailure) -> String {
        match failure {
            ChannelFailure::Lapin(e) => self.secrets.scrub(e),
            ChannelFailure::Timeout => format!(
                "RabbitMQ did not take and confirm the messages within {:?} \
                 (connection blocked by a resource alarm, or broker unresponsive)",
                self.broker_timeout
            ),
            ChannelFailure::NotConfirmMode => {
                "the channel is not in confirm mode, so the publish was not confirmed".into()
            }
        }
    }

    /// Resends messages whose channel died one at a time, each on a healthy
    /// channel, to find the one the broker refuses: that one is
    /// [`PublishError::Rejected`], the others go through.
    ///
    /// The connection itself may die on the way: lapin sends its `channel.close-ok`
    /// ahead of publish frames still queued for the closed channel, and RabbitMQ
    /// answers those with a connection-level CHANNEL_ERROR. Reconnecting a few
    /// times is allowed for that; a broker that stays away makes the rest
    /// [`PublishError::Unavailable`].
    async fn isolate(
        &self,
        messages: &[OutgoingMessage],
        items: &[usize],
        results: &mut [Option<Result<Delivered, PublishError>>],
    ) {
        let mut reconnects_left = ISOLATION_RECONNECTS;
        let mut pos = 0;
        while let Some(&i) = items.get(pos) {
            let attempt = match self.acquire().await {
                Ok(pooled) => {
                    let attempt = self
                        .pipeline(&pooled.channel, messages, &[i])
                        .await
                        .pop()
                        .map_or(Attempt::ChannelLost(ChannelFailure::Timeout), |(_, a)| a);
                    self.release(pooled);
                    attempt
                }
                Err(e) => Attempt::Failed(e),
            };
            let unavailable = match attempt {
                Attempt::Confirmed | Attempt::Dropped => {
                    results[i] = Some(Ok(delivered(&attempt)));
                    pos += 1;
                    continue;
                }
                Attempt::Failed(e) if !e.is_unavailable() => {
                    results[i] = Some(Err(e));
                    pos += 1;
                    continue;
                }
                Attempt::ChannelLost(ChannelFailure::Lapin(e)) if is_soft(&e) => {
                    results[i] = Some(Err(PublishError::Rejected(format!(
                        "RabbitMQ refused the message and closed the channel: {}",
                        self.secrets.scrub(&e)
                    ))));
                    pos += 1;
                    continue;
                }
                Attempt::Failed(e) => e,
                Attempt::ChannelLost(failure) => PublishError::Unavailable(self.describe(&failure)),
            };
            if reconnects_left == 0 {
                fill(results, &items[pos..], &unavailable);
                return;
            }
            reconnects_left -= 1;
            // Let the dying connection be noticed, so that `acquire` reconnects.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Declares `destination` as a durable topic exchange or, when `passive`,
    /// only checks that an exchange of that name exists.
    async fn declare(&self, destination: &str, passive: bool) -> Result<(), PublishError> {
        check_destination(destination)?;
        let pooled = self.acquire().await?;
        let declaring = pooled.channel.exchange_declare(
            destination,
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                passive,
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        );
        let what = if passive {
            format!("cannot find exchange `{destination}`")
        } else {
            format!("cannot declare topic exchange `{destination}`")
        };
        self.answer(&what, declaring).await?;
        lock(&self.declared).insert(destination.to_owned());
        self.release(pooled);
        Ok(())
    }

    /// Waits for the broker's answer to a declaration, at most the broker
    /// timeout: a refusal of the declaration is `Rejected` (a soft error,
    /// the channel closed), anything else `Unavailable`; `what` says what
    /// failed.
    async fn answer(
        &self,
        what: &str,
        declaring: impl std::future::Future<Output = lapin::Result<()>>,
    ) -> Result<(), PublishError> {
        match tokio::time::timeout(self.broker_timeout, declaring).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) if is_soft(&e) => Err(PublishError::Rejected(format!(
                "{what}: {}",
                self.secrets.scrub(&e)
            ))),
            Ok(Err(e)) => Err(PublishError::Unavailable(format!(
                "{what}: {}",
                self.secrets.scrub(&e)
            ))),
            Err(_) => Err(PublishError::Unavailable(format!(
                "{what}: no answer from RabbitMQ within {:?}",
                self.broker_timeout
            ))),
        }
    }

    /// Before publishing: declares the exchange, and when the broker refuses
    /// (no `configure` permission, an existing exchange of another kind) accepts
    /// any existing exchange of that name.
    async fn declare_for_publish(&self, destination: &str) -> Result<(), PublishError> {
        match self.declare(destination, false).await {
            Err(PublishError::Rejected(reason)) => match self.declare(destination, true).await {
                Ok(()) => {
                    tracing::warn!(
                        exchange = destination,
                        reason = %reason,
                        "cannot declare the exchange; publishing to the existing one"
                    );
                    Ok(())
                }
                Err(PublishError::Rejected(_)) => Err(PublishError::Rejected(reason)),
                Err(e) => Err(e),
            },
            other => other,
        }
    }
}

#[async_trait::async_trait]
impl Publisher for RabbitPublisher {
    fn system(&self) -> &'static str {
        "rabbitmq"
    }

    async fn publish_batch(
        &self,
        messages: &[OutgoingMessage],
    ) -> Vec<Result<Delivered, PublishError>> {
        let mut results: Vec<Option<Result<Delivered, PublishError>>> = vec![None; messages.len()];
        let mut todo = Vec::with_capacity(messages.len());
        // A message refused before sending must not be overtaken by later
        // messages of its key: those are held back as `NotSent`.
        let mut refused_keys: BTreeSet<(&str, Option<&str>)> = BTreeSet::new();
        for (i, message) in messages.iter().enumerate() {
            let key = (
                message.destination.as_str(),
                message.envelope.partition_key.as_deref(),
            );
            if refused_keys.contains(&key) {
                results[i] = Some(Err(PublishError::NotSent(
                    "an earlier event of the same key was rejected".into(),
                )));
                continue;
            }
            match self.validate(message) {
                Ok(()) => todo.push(i),
                Err(e) => {
                    refused_keys.insert(key);
                    results[i] = Some(Err(e));
                }
            }
        }

        if self.declare_exchanges && !todo.is_empty() {
            let missing: BTreeSet<&str> = {
                let declared = lock(&self.declared);
                todo.iter()
                    .map(|&i| messages[i].destination.as_str())
                    .filter(|d| !declared.contains(*d))
                    .collect()
            };
            for destination in missing {
                match self.declare_for_publish(destination).await {
                    Ok(()) => {}
                    Err(e) if e.is_unavailable() => {
                        fill(&mut results, &todo, &e);
                        return finish(results);
                    }
                    Err(e) => todo.retain(|&i| {
                        if messages[i].destination == destination {
                            results[i] = Some(Err(e.clone()));
                            false
                        } else {
                            true
                        }
                    }),
                }
            }
        }
        if todo.is_empty() {
            return finish(results);
        }

        let pooled = match self.acquire().await {
            Ok(pooled) => pooled,
            Err(e) => {
                fill(&mut results, &todo, &e);
                return finish(results);
            }
        };
        let attempts = self.pipeline(&pooled.channel, messages, &todo).await;
        let mut lost = Vec::new();
        let mut loss: Option<ChannelFailure> = None;
        for (i, attempt) in attempts {
            match attempt {
                Attempt::Confirmed | Attempt::Dropped => {
                    results[i] = Some(Ok(delivered(&attempt)));
                }
                Attempt::Failed(e) => results[i] = Some(Err(e)),
                Attempt::ChannelLost(failure) => {
                    // Prefer the broker's reason for closing the channel over the
                    // "channel closed" errors of messages sent after it.
                    let refused = matches!(&failure, ChannelFailure::Lapin(e) if is_soft(e));
                    let known = matches!(&loss, Some(ChannelFailure::Lapin(e)) if is_soft(e));
                    if loss.is_none() || (refused && !known) {
                        loss = Some(failure);
                    }
                    lost.push(i);
                }
            }
        }
        let Some(failure) = loss else {
            self.release(pooled);
            return finish(results);
        };
        // The channel is unusable: dropping it closes it.
        drop(pooled);
        lost.sort_unstable();
        // Even if the connection died too (see `isolate`), a refusal must be pinned
        // on its message: reported as `Unavailable` it would be retried forever.
        if matches!(&failure, ChannelFailure::Lapin(e) if is_soft(e)) {
            // One message made the broker close the channel, failing every
            // unconfirmed message with it: find that one.
            tracing::warn!(
                url = %self.redacted_url,
                error = %self.describe(&failure),
                messages = lost.len(),
                "RabbitMQ closed the channel; resending unconfirmed messages one by one"
            );
            self.isolate(messages, &lost, &mut results).await;
        } else {
            let e = PublishError::Unavailable(self.describe(&failure));
            fill(&mut results, &lost, &e);
        }
        finish(results)
    }

    async fn ensure_destination(&self, destination: &str) -> Result<(), PublishError> {
        self.declare(destination, false).await
    }

    async fn ensure_dead_letter_destination(&self, destination: &str) -> Result<(), PublishError> {
        self.declare(destination, false).await?;
        check_short("dead-letter queue name", destination)?;
        let pooled = self.acquire().await?;
        let channel = pooled.channel.clone();
        // A durable queue of the exchange's name takes every letter sent to it.
        let declaring = async {
            channel
                .queue_declare(
                    destination,
                    QueueDeclareOptions {
                        durable: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await?;
            channel
                .queue_bind(
                    destination,
                    destination,
                    "#",
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
        };
        let what = format!("cannot declare dead-letter queue `{destination}`");
        self.answer(&what, declaring).await?;
        self.release(pooled);
        Ok(())
    }
}

/// What a confirmed attempt reports.
fn delivered(attempt: &Attempt) -> Delivered {
    Delivered {
        unroutable: matches!(attempt, Attempt::Dropped),
        ..Delivered::default()
    }
}

fn check_destination(destination: &str) -> Result<(), PublishError> {
    if destination.is_empty() {
        return Err(PublishError::Rejected(
            "the destination (exchange name) must not be empty".into(),
        ));
    }
    check_short("destination (the exchange name)", destination)
}

fn check_short(what: &str, value: &str) -> Result<(), PublishError> {
    if value.len() > SHORT_STRING_MAX {
        return Err(PublishError::Rejected(format!(
            "{what} is {} bytes, more than AMQP's limit of {SHORT_STRING_MAX}",
            value.len()
        )));
    }
    Ok(())
}

fn fill(
    results: &mut [Option<Result<Delivered, PublishError>>],
    items: &[usize],
    error: &PublishError,
) {
    for &i in items {
        if results[i].is_none() {
            results[i] = Some(Err(error.clone()));
        }
    }
}

fn finish(
    results: Vec<Option<Result<Delivered, PublishError>>>,
) -> Vec<Result<Delivered, PublishError>> {
    results
        .into_iter()
        .map(|r| {
            r.unwrap_or_else(|| {
                Err(PublishError::Unavailable(
                    "the message was not sent to RabbitMQ".into(),
                ))
            })
        })
        .collect()
}

fn lock<T>(mutex: &StdMutex<T>) -> MutexGuard<'_, T> {
    // The guarded data stays consistent even if a holder panicked.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_bad_url_is_a_config_error_without_the_password() {
        let err = RabbitPublisher::connect("http://user:hunter2@host/")
            .await
            .expect_err("bad scheme");
        assert!(matches!(err, Error::Config(_)), "{err:?}");
        let text = err.to_string();
        assert!(text.contains("invalid AMQP URL"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
    }

    #[test]
    fn builder_debug_hides_the_password() {
        let b = RabbitPublisher::builder("amqp://user:hunter2@host/%2f");
        let text = format!("{b:?}");
        assert!(text.contains("amqp://user:***@host/%2f"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
    }
}
