//! One connection to RabbitMQ and its consuming channel ([`Session`]):
//! declaring the exchanges, the group's queue and its bindings, and closing
//! after the acknowledgements on their way; [`Options`] are what every
//! (re)connection needs.

use std::fmt;
use std::time::Duration;

use lapin::message::Delivery;
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::uri::AMQPUri;
use lapin::{Channel, Connection, ConnectionProperties, Consumer, ExchangeKind};
use tokio::sync::watch;

use super::builder::Binding;
use super::{consumer_tag, partition_key};
use crate::envelope::Envelope;
use crate::error::{Error, Result};
use crate::hash::fnv1a;
use crate::redact::Secrets;
use crate::transport::rabbitmq::{is_soft, on_connection_lost, tokio_runtime, RabbitTls};
use crate::transport::{Cause, TransportError};

/// The validated options, shared with reconnection tasks.
pub(super) struct Options {
    /// Holds the password: never printed.
    pub(super) uri: AMQPUri,
    pub(super) secrets: Secrets,
    pub(super) redacted_url: String,
    pub(super) runtime: tokio::runtime::Handle,
    pub(super) group: String,
    pub(super) bindings: Vec<Binding>,
    pub(super) prefetch: u16,
    pub(super) single_active_consumer: bool,
    pub(super) lanes: u64,
    pub(super) dead_letter_exchange: Option<String>,
    pub(super) queue_expires: Option<Duration>,
    pub(super) connect_timeout: Duration,
    pub(super) broker_timeout: Duration,
    pub(super) connection_name: Option<String>,
    pub(super) tls: RabbitTls,
}

impl Options {
    pub(super) fn unavailable(&self, what: &str, e: &dyn fmt::Display) -> Error {
        Error::Subscribe(TransportError::Unavailable(
            format!(
                "{what} (RabbitMQ at {}): {}",
                self.redacted_url,
                self.secrets.scrub(e)
            )
            .into(),
        ))
    }

    pub(super) fn no_answer(&self, what: &str) -> Error {
        Error::Subscribe(TransportError::Unavailable(
            format!(
                "{what} (RabbitMQ at {}): no answer within {:?}",
                self.redacted_url, self.broker_timeout
            )
            .into(),
        ))
    }

    /// A broker refusal (channel-level error: the queue exists with other
    /// arguments, missing permissions) is [`TransportError::Rejected`];
    /// anything else means the broker is not reachable. The lapin error is
    /// the source.
    pub(super) fn broker_error(&self, what: &str, e: &lapin::Error) -> Error {
        let scrub = |text: &str| self.secrets.scrub(&text);
        if is_soft(e) {
            Error::Subscribe(TransportError::Rejected(Cause::scrubbed(
                what,
                e.clone(),
                scrub,
            )))
        } else {
            Error::Subscribe(TransportError::Unavailable(Cause::scrubbed(
                format_args!("{what} (RabbitMQ at {})", self.redacted_url),
                e.clone(),
                scrub,
            )))
        }
    }

    /// Runs one broker operation under the broker timeout.
    pub(super) async fn step<T>(
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

    pub(super) fn queue_arguments(&self) -> FieldTable {
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
    /// hash of its partition key (its message id, else its event id, when it
    /// has none). The key is the decoded event's, so that a structured-mode
    /// message, whose key is in its body, keeps its key's lane too.
    pub(super) fn lane_of(&self, delivery: &Delivery, envelope: Option<&Envelope>) -> u64 {
        if self.single_active_consumer {
            return 0;
        }
        let key = match envelope {
            Some(e) => e.partition_key.as_ref().map(|k| k.as_bytes().to_vec()),
            None => partition_key(&delivery.properties),
        }
        .or_else(|| {
            delivery
                .properties
                .message_id()
                .as_ref()
                .map(|id| id.as_str().as_bytes().to_vec())
        })
        .or_else(|| envelope.map(|e| e.id.as_bytes().to_vec()));
        match key {
            Some(key) => fnv1a(&key) % self.lanes,
            None => delivery.delivery_tag % self.lanes,
        }
    }
}

/// One connection with its consuming channel.
pub(super) struct Session {
    pub(super) connection: Connection,
    pub(super) channel: Channel,
    pub(super) consumer: Consumer,
    pub(super) tag: String,
}

impl Session {
    /// Connects and sets up the exchanges, the queue, its bindings, the
    /// prefetch and the consumer.
    pub(super) async fn open(options: &Options) -> Result<Session> {
        let mut properties = ConnectionProperties::default();
        if let Some(name) = &options.connection_name {
            properties = properties.with_connection_name(name.clone().into());
        }
        let connecting = Connection::connect_uri_with_config(
            options.uri.clone(),
            properties,
            options.tls.to_lapin(),
            tokio_runtime(options.runtime.clone()),
        );
        let connection = match tokio::time::timeout(options.connect_timeout, connecting).await {
            Ok(Ok(connection)) => connection,
            Ok(Err(e)) => return Err(options.broker_error("cannot connect", &e)),
            Err(_) => {
                return Err(Error::Subscribe(TransportError::Unavailable(
                    format!(
                        "cannot connect to RabbitMQ at {}: no answer within {:?}",
                        options.redacted_url, options.connect_timeout
                    )
                    .into(),
                )))
            }
        };
        let url = options.redacted_url.clone();
        let secrets = options.secrets.clone();
        let group = options.group.clone();
        on_connection_lost(&connection, &options.runtime, move |e| {
            tracing::warn!(url = %url, group = %group, error = %secrets.scrub(e), "RabbitMQ connection lost; the subscriber reconnects");
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
                    group.into(),
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
                            group.into(),
                            binding.exchange.as_str().into(),
                            pattern.as_str().into(),
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
                    group.into(),
                    tag.as_str().into(),
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
    pub(super) async fn declare_exchanges(
        options: &Options,
        connection: &Connection,
        mut channel: Channel,
    ) -> Result<Channel> {
        for binding in &options.bindings {
            let exchange = binding.exchange.as_str();
            let declaring = channel.exchange_declare(
                exchange.into(),
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
                Err(Error::Subscribe(refusal @ TransportError::Rejected(_))) => refusal,
                Err(e) => return Err(e),
            };
            channel = options
                .step(
                    || "cannot open a channel".to_owned(),
                    connection.create_channel(),
                )
                .await?;
            let checking = channel.exchange_declare(
                exchange.into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    passive: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            );
            match options.step(String::new, checking).await {
                Ok(()) => {
                    tracing::warn!(exchange, reason = %refusal.cause(), "cannot declare the exchange; binding to the existing one");
                }
                Err(Error::Subscribe(TransportError::Rejected(_))) => {
                    return Err(Error::Subscribe(refusal))
                }
                Err(e) => return Err(e),
            }
        }
        Ok(channel)
    }

    /// Stops deliveries, waits for acknowledgements on their way, closes.
    pub(super) async fn close(
        self,
        options: &Options,
        settling: &watch::Sender<usize>,
    ) -> Result<()> {
        let mut result = Ok(());
        if self.channel.status().connected() {
            let tag = self.tag.as_str();
            if let Err(e) = options
                .step(
                    || format!("cannot cancel consumer `{tag}`"),
                    self.channel
                        .basic_cancel(tag.into(), BasicCancelOptions::default()),
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
                    self.channel.close(200, "eventbus subscriber closed".into()),
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
                    self.connection
                        .close(200, "eventbus subscriber closed".into()),
                )
                .await
            {
                result = result.and(Err(e));
            }
        }
        result
    }
}
