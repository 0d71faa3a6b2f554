//! The broker the services talk through: the SDK's in-memory broker (the
//! embedded default), Kafka, RabbitMQ or Amazon SQS; and the chaos publisher
//! that sends some events twice, as a relay that crashed between send and
//! acknowledge would.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use eventbus::consumer::dead_letter;
use eventbus::transport::memory::MemoryBroker;
use eventbus::transport::rabbitmq::{RabbitPublisher, RabbitSubscriber};
use eventbus::transport::{Delivered, Subscriber};
use eventbus::{OutgoingMessage, PublishError, Publisher};

use crate::{Error, Result};

/// A broker, by URL.
#[derive(Debug, Clone)]
pub enum Broker {
    /// The SDK's in-process broker (`memory://`).
    Memory(MemoryBroker),
    /// Kafka bootstrap servers (`kafka://host:port`).
    Kafka(String),
    /// A RabbitMQ URL (`amqp://…`).
    Amqp(String),
    /// Amazon SQS (`sqs://…`, `sqs+http://host:port` for a local server),
    /// with FIFO queues: the events of one order stay in order.
    Sqs(String),
}

impl Broker {
    /// Reads `--broker`: `memory://`, `kafka://host:port[,host:port]`, `amqp://…`
    /// or `sqs://…` / `sqs+http://host:port`.
    pub fn parse(url: &str) -> Result<Broker> {
        match url.split_once("://") {
            Some(("memory", _)) => Ok(Broker::Memory(MemoryBroker::new())),
            Some(("kafka", servers)) if !servers.trim_end_matches('/').is_empty() => {
                if cfg!(feature = "kafka") {
                    Ok(Broker::Kafka(servers.trim_end_matches('/').to_owned()))
                } else {
                    Err(Error::Usage(
                        "this build has no Kafka support: rebuild with `--features kafka`".into(),
                    ))
                }
            }
            Some(("amqp" | "amqps", _)) => Ok(Broker::Amqp(url.to_owned())),
            Some(("sqs" | "sqs+http" | "sqs+https", _)) => {
                if cfg!(feature = "sqs") {
                    Ok(Broker::Sqs(url.to_owned()))
                } else {
                    Err(Error::Usage(
                        "this build has no SQS support: rebuild with `--features sqs`".into(),
                    ))
                }
            }
            _ => Err(Error::Usage(format!(
                "unsupported --broker `{}`: use memory://, kafka://host:port, amqp://… or sqs://…",
                crate::redact(url)
            ))),
        }
    }

    /// What to show in logs.
    pub fn describe(&self) -> String {
        match self {
            Broker::Memory(_) => "in-memory broker".into(),
            Broker::Kafka(servers) => format!("Kafka at {servers}"),
            Broker::Amqp(url) => format!("RabbitMQ at {}", crate::redact(url)),
            Broker::Sqs(url) => format!("SQS ({url})"),
        }
    }

    /// A publisher (the relay's, and the consumers' dead letters).
    pub async fn publisher(&self) -> Result<Arc<dyn Publisher>> {
        Ok(match self {
            Broker::Memory(broker) => Arc::new(broker.publisher()),
            Broker::Kafka(servers) => kafka::publisher(servers)?,
            Broker::Amqp(url) => Arc::new(RabbitPublisher::connect(url).await?),
            Broker::Sqs(url) => sqs::publisher(url).await?,
        })
    }

    /// A member of consumer group `group` on `destinations`.
    pub async fn subscribe(
        &self,
        group: &str,
        destinations: &[String],
    ) -> Result<Box<dyn Subscriber>> {
        Ok(match self {
            Broker::Memory(broker) => {
                let names: Vec<&str> = destinations.iter().map(String::as_str).collect();
                Box::new(broker.subscribe(group, &names))
            }
            Broker::Kafka(servers) => kafka::subscriber(servers, group, destinations)?,
            Broker::Amqp(url) => {
                let mut builder = RabbitSubscriber::builder(url.clone()).group(group);
                for destination in destinations {
                    builder = builder.bind_all(destination.clone());
                }
                Box::new(builder.connect().await?)
            }
            Broker::Sqs(url) => sqs::subscriber(url, group, destinations).await?,
        })
    }
}

/// SQS has no exchanges: a queue is one consumer group. So each saga topic
/// is one FIFO queue per service listening to it (`<topic>.<service>`), and
/// the publisher sends every event of a topic to each of them.
#[cfg(feature = "sqs")]
mod sqs {
    use std::sync::Arc;

    use eventbus::transport::sqs::{SqsPublisherBuilder, SqsSubscriberBuilder};
    use eventbus::transport::Subscriber;
    use eventbus::Publisher;

    use crate::events::{INVENTORY, ORDERS, ORDER_TIMEOUTS, PAYMENTS};
    use crate::service::Service;

    /// The queues (as destinations) of `destination`: one per listening
    /// service for a saga topic (`<namespace>.orders`), none (its own queue)
    /// for anything else, such as dead letters.
    fn fan_out(destination: &str) -> Vec<String> {
        let topic = [ORDERS, INVENTORY, PAYMENTS, ORDER_TIMEOUTS]
            .into_iter()
            .find(|t| destination == *t || destination.ends_with(&format!(".{t}")));
        let Some(topic) = topic else {
            return Vec::new();
        };
        Service::ALL
            .into_iter()
            .filter(|s| s.listens_to().contains(&topic))
            .map(|s| format!("{destination}.{}", s.name()))
            .collect()
    }

    pub(super) async fn publisher(url: &str) -> crate::Result<Arc<dyn Publisher>> {
        Ok(Arc::new(
            SqsPublisherBuilder::from_url(url)?
                .fifo(true)
                .route_with(fan_out)
                .connect()
                .await?,
        ))
    }

    /// The service's queue of each topic; `group` is `<namespace>.<service>`.
    pub(super) async fn subscriber(
        url: &str,
        group: &str,
        topics: &[String],
    ) -> crate::Result<Box<dyn Subscriber>> {
        let service = group.rsplit('.').next().unwrap_or(group);
        Ok(Box::new(
            SqsSubscriberBuilder::from_url(url)?
                .fifo(true)
                .queues(topics.iter().map(|t| format!("{t}.{service}")))
                .max_in_flight(64)
                .wait_time(std::time::Duration::from_secs(5))
                .connect()
                .await?,
        ))
    }
}

#[cfg(not(feature = "sqs"))]
mod sqs {
    use std::sync::Arc;

    use eventbus::transport::Subscriber;
    use eventbus::Publisher;

    fn missing() -> crate::Error {
        crate::Error::Usage("this build has no SQS support: rebuild with `--features sqs`".into())
    }

    pub(super) async fn publisher(_: &str) -> crate::Result<Arc<dyn Publisher>> {
        Err(missing())
    }

    pub(super) async fn subscriber(
        _: &str,
        _: &str,
        _: &[String],
    ) -> crate::Result<Box<dyn Subscriber>> {
        Err(missing())
    }
}

#[cfg(feature = "kafka")]
mod kafka {
    use std::sync::Arc;

    use eventbus::transport::kafka::{KafkaPublisher, KafkaSubscriber};
    use eventbus::transport::Subscriber;
    use eventbus::Publisher;

    pub(super) fn publisher(servers: &str) -> crate::Result<Arc<dyn Publisher>> {
        Ok(Arc::new(KafkaPublisher::builder(servers).build()?))
    }

    pub(super) fn subscriber(
        servers: &str,
        group: &str,
        topics: &[String],
    ) -> crate::Result<Box<dyn Subscriber>> {
        Ok(Box::new(
            KafkaSubscriber::builder(servers)
                .group(group)
                .topics(topics.iter().cloned())
                .build()?,
        ))
    }
}

#[cfg(not(feature = "kafka"))]
mod kafka {
    use std::sync::Arc;

    use eventbus::transport::Subscriber;
    use eventbus::Publisher;

    fn missing() -> crate::Error {
        crate::Error::Usage(
            "this build has no Kafka support: rebuild with `--features kafka`".into(),
        )
    }

    pub(super) fn publisher(_: &str) -> crate::Result<Arc<dyn Publisher>> {
        Err(missing())
    }

    pub(super) fn subscriber(_: &str, _: &str, _: &[String]) -> crate::Result<Box<dyn Subscriber>> {
        Err(missing())
    }
}

/// Sends every `every`-th event twice in a row: what the broker sees when a
/// relay crashes after sending and before deleting the row. The consumers'
/// inboxes must absorb the copies.
///
/// The copy is marked as re-driven ([`dead_letter::REDRIVEN_AT`]): an SQS
/// FIFO queue would drop a plain copy within five minutes (it deduplicates by
/// event id), and the point here is that copies reach the consumers, as
/// redeliveries do. Other brokers ignore the mark.
#[derive(Debug)]
pub struct ChaosPublisher {
    inner: Arc<dyn Publisher>,
    every: u64,
    seen: AtomicU64,
    duplicated: Arc<AtomicU64>,
}

impl ChaosPublisher {
    /// Wraps `inner`, counting the copies it sends in `duplicated`.
    pub fn new(inner: Arc<dyn Publisher>, every: u64, duplicated: Arc<AtomicU64>) -> Self {
        ChaosPublisher {
            inner,
            every: every.max(1),
            seen: AtomicU64::new(0),
            duplicated,
        }
    }
}

#[async_trait::async_trait]
impl Publisher for ChaosPublisher {
    fn system(&self) -> &'static str {
        self.inner.system()
    }

    async fn publish_batch(
        &self,
        messages: &[OutgoingMessage],
    ) -> Vec<Result<Delivered, PublishError>> {
        let mut sent =
            Vec::with_capacity(messages.len() + messages.len() / self.every as usize + 1);
        // Where each original landed in `sent`; the copy goes right after it,
        // so per-key order is kept.
        let mut originals = Vec::with_capacity(messages.len());
        for message in messages {
            originals.push(sent.len());
            sent.push(message.clone());
            if self.seen.fetch_add(1, Ordering::Relaxed) % self.every == self.every - 1 {
                let mut copy = message.clone();
                copy.envelope
                    .extensions
                    .insert(dead_letter::REDRIVEN_AT.into(), now_mark());
                sent.push(copy);
                self.duplicated.fetch_add(1, Ordering::Relaxed);
            }
        }
        let mut results = self.inner.publish_batch(&sent).await;
        originals
            .into_iter()
            .map(|i| std::mem::replace(&mut results[i], Err(PublishError::NotSent("taken".into()))))
            .collect()
    }

    async fn ensure_destination(&self, destination: &str) -> std::result::Result<(), PublishError> {
        self.inner.ensure_destination(destination).await
    }
}

/// Now, as a unique enough mark: seconds and nanoseconds since the epoch.
fn now_mark() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}.{:09}", now.as_secs(), now.subsec_nanos())
}
