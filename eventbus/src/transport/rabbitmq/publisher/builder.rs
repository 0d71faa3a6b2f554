//! [`RabbitPublisherBuilder`]: the options of a publisher, checked when it
//! connects.

use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::AtomicU64;
use std::sync::Mutex as StdMutex;
use std::time::Duration;

use tokio::sync::Mutex;

use super::RabbitPublisher;
use crate::error::{Error, Result};
use crate::redact::Secrets;
use crate::transport::rabbitmq::unroutable::{Unroutable, UnroutablePolicies};
use crate::transport::rabbitmq::{amqp_uri, redact_url, RabbitTls, SHORT_STRING_MAX};

/// Options for a [`RabbitPublisher`]; start with [`RabbitPublisher::builder`].
///
/// The URL's password never appears in `Debug` output, logs or errors.
#[derive(Clone)]
pub struct RabbitPublisherBuilder {
    pub(super) url: String,
    pub(super) connect_timeout: Duration,
    pub(super) broker_timeout: Duration,
    pub(super) max_message_size: usize,
    pub(super) declare_exchanges: bool,
    pub(super) app_id: Option<String>,
    pub(super) connection_name: Option<String>,
    pub(super) tls: RabbitTls,
    pub(super) unroutable: UnroutablePolicies,
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
    /// [`DEFAULT_CONNECT_TIMEOUT`](crate::transport::rabbitmq::DEFAULT_CONNECT_TIMEOUT).
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long the broker may take to answer: confirms for a whole batch, an
    /// exchange declaration, opening a channel; default [`DEFAULT_BROKER_TIMEOUT`](crate::transport::rabbitmq::DEFAULT_BROKER_TIMEOUT).
    /// Past it, the unanswered messages fail with [`PublishError::Unavailable`](crate::transport::PublishError::Unavailable).
    #[must_use]
    pub fn broker_timeout(mut self, timeout: Duration) -> Self {
        self.broker_timeout = timeout;
        self
    }

    /// The largest message body sent; larger ones fail with
    /// [`PublishError::Rejected`](crate::transport::PublishError::Rejected) without reaching the broker. Default
    /// [`DEFAULT_MAX_MESSAGE_SIZE`](crate::transport::rabbitmq::DEFAULT_MAX_MESSAGE_SIZE); keep it at or below the broker's
    /// `max_message_size`.
    #[must_use]
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// Whether [`Publisher::publish_batch`](crate::transport::Publisher::publish_batch) declares (once per connection) the
    /// exchange of each destination it has not declared yet. Default `true`.
    ///
    /// When the broker refuses the declaration (no `configure` permission, an
    /// existing exchange of another kind), an existing exchange of that name is
    /// used as it is. Turn declaration off when exchanges are managed elsewhere;
    /// publishing to a missing exchange then fails with [`PublishError::Rejected`](crate::transport::PublishError::Rejected).
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
    ///   long, or TLS settings come with a plain `amqp://` URL;
    /// - [`Error::InvalidState`] when called outside a tokio runtime;
    /// - [`Error::Publish`] with [`PublishError::Unavailable`](crate::transport::PublishError::Unavailable) when the broker
    ///   cannot be reached or refuses the connection (including bad credentials).
    pub async fn connect(self) -> Result<RabbitPublisher> {
        let (uri, redacted_url) = amqp_uri(&self.url, &self.tls)?;
        if let Some(app_id) = &self.app_id {
            if app_id.len() > SHORT_STRING_MAX {
                return Err(Error::Config(format!(
                    "AMQP app_id is {} bytes, more than the limit of {SHORT_STRING_MAX}",
                    app_id.len()
                )));
            }
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            Error::invalid_state("RabbitPublisher must be created inside a tokio runtime")
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
