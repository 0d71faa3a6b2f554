//! [`RabbitSubscriberBuilder`]: the options of a subscriber, checked before
//! it connects.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::session::{Options, Session};
use super::{RabbitSubscriber, EVERY_TYPE};
use crate::error::{Error, Result};
use crate::redact::Secrets;
use crate::transport::rabbitmq::{amqp_uri, redact_url, RabbitTls, SHORT_STRING_MAX};

/// One destination (exchange) and the routing patterns the queue is bound with.
#[derive(Debug, Clone)]
pub(super) struct Binding {
    pub(super) exchange: String,
    pub(super) patterns: Vec<String>,
}

/// Options for a [`RabbitSubscriber`]; start with [`RabbitSubscriber::builder`].
///
/// The URL's password never appears in `Debug` output, logs or errors.
#[derive(Clone)]
pub struct RabbitSubscriberBuilder {
    pub(super) url: String,
    pub(super) group: Option<String>,
    pub(super) bindings: Vec<Binding>,
    pub(super) prefetch: usize,
    pub(super) single_active_consumer: bool,
    pub(super) lanes: u64,
    pub(super) dead_letter_exchange: Option<String>,
    pub(super) queue_expires: Option<Duration>,
    pub(super) connect_timeout: Duration,
    pub(super) broker_timeout: Duration,
    pub(super) connection_name: Option<String>,
    pub(super) tls: RabbitTls,
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
    /// prefetch count, 1 to 65535); default [`DEFAULT_PREFETCH`](crate::transport::rabbitmq::DEFAULT_PREFETCH). This is the
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
    /// message at a time ([`Received::lane`](crate::transport::Received::lane) is always `0`), which keeps the
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
    /// handled in order within this subscriber. Default [`DEFAULT_LANES`](crate::transport::rabbitmq::DEFAULT_LANES);
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
    /// [`DEFAULT_CONNECT_TIMEOUT`](crate::transport::rabbitmq::DEFAULT_CONNECT_TIMEOUT).
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long the broker may take to answer a declaration, a binding, an
    /// acknowledgement; default [`DEFAULT_BROKER_TIMEOUT`](crate::transport::rabbitmq::DEFAULT_BROKER_TIMEOUT).
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
    ///   longer than AMQP allows;
    /// - [`Error::InvalidState`] when called outside a tokio runtime;
    /// - [`Error::Subscribe`] with [`TransportError::Rejected`](crate::transport::TransportError::Rejected) when the broker
    ///   refuses the declarations (the queue exists with other arguments, an
    ///   exchange of another kind, missing permissions), with
    ///   [`TransportError::Unavailable`](crate::transport::TransportError::Unavailable) when it cannot be reached or does not
    ///   answer.
    pub async fn connect(self) -> Result<RabbitSubscriber> {
        let (uri, redacted_url) = amqp_uri(&self.url, &self.tls)?;
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
            Error::invalid_state("RabbitSubscriber must be created inside a tokio runtime")
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

pub(super) fn check_name(what: &str, value: &str) -> Result<()> {
    if value.len() > SHORT_STRING_MAX {
        return Err(Error::Config(format!(
            "{what} is {} bytes, more than AMQP's limit of {SHORT_STRING_MAX}",
            value.len()
        )));
    }
    Ok(())
}
