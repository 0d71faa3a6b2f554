//! The broker the services talk through: the SDK's in-memory broker (the
//! embedded default), Kafka or RabbitMQ; and the chaos publisher that sends
//! some events twice, as a relay that crashed between send and acknowledge
//! would.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

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
}

impl Broker {
    /// Reads `--broker`: `memory://`, `kafka://host:port[,host:port]` or `amqp://…`.
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
            _ => Err(Error::Usage(format!(
                "unsupported --broker `{}`: use memory://, kafka://host:port or amqp://…",
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
        }
    }

    /// A publisher (the relay's, and the consumers' dead letters).
    pub async fn publisher(&self) -> Result<Arc<dyn Publisher>> {
        Ok(match self {
            Broker::Memory(broker) => Arc::new(broker.publisher()),
            Broker::Kafka(servers) => kafka::publisher(servers)?,
            Broker::Amqp(url) => Arc::new(RabbitPublisher::connect(url).await?),
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
        })
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
                sent.push(message.clone());
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
