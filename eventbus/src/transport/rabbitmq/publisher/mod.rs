//! [`RabbitPublisher`]: sends envelopes to durable topic exchanges with
//! publisher confirms, pipelined per batch, reconnecting by itself.
//!
//! | module | owns |
//! | --- | --- |
//! | this one | the publisher, its [`Publisher`] implementation, what a send's outcome is |
//! | `builder` | [`RabbitPublisherBuilder`]: options, checked on connect |
//! | `channels` | the connection and its pool of confirm-mode channels |
//! | `confirm` | one batch on one channel: checks, publishes, confirms, returns, isolating a refusal |

use std::collections::{BTreeSet, HashSet};
use std::fmt;
use std::sync::atomic::AtomicU64;
use std::sync::Mutex as StdMutex;
use std::time::Duration;

use lapin::options::{QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::uri::AMQPUri;
use tokio::sync::Mutex;

mod builder;
mod channels;
mod confirm;

pub use builder::RabbitPublisherBuilder;

use super::unroutable::UnroutablePolicies;
use super::{
    is_soft, RabbitTls, Secrets, DEFAULT_BROKER_TIMEOUT, DEFAULT_CONNECT_TIMEOUT, SHORT_STRING_MAX,
};
use crate::error::Result;
use crate::transport::{Cause, Delivered, OutgoingMessage, PublishError, Publisher};
use channels::{lock, Link, PooledChannel};

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

/// Publishes envelopes to RabbitMQ with publisher confirms.
///
/// Each destination is a durable `topic` exchange; the routing key is the
/// CloudEvents `type`, so consumers bind queues with patterns such as
/// `com.example.order.*`. A message counts as published only when the broker
/// confirms it. Messages are sent `mandatory`, so the broker returns one no
/// queue is bound for; what happens then is the destination's [`Unroutable`](crate::transport::rabbitmq::Unroutable)
/// policy: by default it counts as published with
/// [`Delivered::unroutable`] set, with [`Unroutable::Park`](crate::transport::rabbitmq::Unroutable::Park) it fails with
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
    /// `context` and the text of the lapin error `e`, which stays the source
    /// unless its text held the password.
    fn lapin_cause(&self, context: impl fmt::Display, e: &lapin::Error) -> Cause {
        Cause::scrubbed(context, e.clone(), |text| self.secrets.scrub(&text))
    }

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
                    .close(200, "eventbus publisher closed".into())
                    .await
                {
                    tracing::debug!(url = %self.redacted_url, error = %self.secrets.scrub(&e), "closing RabbitMQ connection failed");
                }
            }
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
                    destination.into(),
                    QueueDeclareOptions {
                        durable: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await?;
            channel
                .queue_bind(
                    destination.into(),
                    destination.into(),
                    "#".into(),
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
        return Err(PublishError::Rejected(
            format!(
                "{what} is {} bytes, more than AMQP's limit of {SHORT_STRING_MAX}",
                value.len()
            )
            .into(),
        ));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

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
