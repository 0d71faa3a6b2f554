//! [`KafkaPublisherBuilder`]: the librdkafka properties of a producer, with our
//! defaults, checked when it is built.

use std::fmt;
use std::sync::RwLock;
use std::time::Duration;

use rdkafka::config::FromClientConfig;
use rdkafka::producer::FutureProducer;

use super::KafkaPublisher;
use crate::error::{Error, Result};
use crate::transport::kafka::settings::{canonical_key, config_error, Settings};

/// Producer settings applied unless overridden with [`KafkaPublisherBuilder::set`].
pub(super) const DEFAULTS: &[(&str, &str)] = &[
    // Retries can neither duplicate nor reorder messages of one partition.
    ("enable.idempotence", "true"),
    ("acks", "all"),
    // Same key → same partition as the Java client (and Kafka Streams, Connect).
    ("partitioner", "murmur2_random"),
    ("message.timeout.ms", "30000"),
    ("compression.codec", "none"),
    // A batch is handed over whole, so librdkafka's own wait for more
    // messages (5 ms by default) only delays it: 1 ms still fills requests.
    ("linger.ms", "1"),
];

/// Configures a [`KafkaPublisher`]; made by [`KafkaPublisher::builder`].
#[must_use = "a builder does nothing until `build` is called"]
pub struct KafkaPublisherBuilder {
    pub(super) settings: Settings,
    pub(super) partitions: Option<u32>,
    pub(super) replication_factor: Option<u32>,
}

impl KafkaPublisherBuilder {
    /// Sets a librdkafka producer property (see librdkafka's
    /// `CONFIGURATION.md`), overriding the defaults: `enable.idempotence=true`,
    /// `acks=all`, `partitioner=murmur2_random`, `message.timeout.ms=30000`,
    /// `compression.codec=none`. Aliases (`compression.type`,
    /// `delivery.timeout.ms`, `request.required.acks`, `metadata.broker.list`)
    /// replace the property they stand for.
    pub fn set(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        let key = key.into();
        self.settings
            .insert(canonical_key(key.trim()), value.into());
        self
    }

    /// Partition count of topics created by [`Publisher::ensure_destination`](crate::transport::Publisher::ensure_destination).
    /// Default: the cluster's (`num.partitions`). Existing topics are left as
    /// they are.
    pub fn partitions(mut self, partitions: u32) -> Self {
        self.partitions = Some(partitions);
        self
    }

    /// Replication factor of topics created by [`Publisher::ensure_destination`](crate::transport::Publisher::ensure_destination).
    /// Default: the cluster's (`default.replication.factor`), so that a topic
    /// the relay creates is as durable as the cluster is set up to make it.
    ///
    /// Acknowledgements mean something only with `min.insync.replicas` of at
    /// least 2 on the topic or broker: with `acks=all` (the default here) the
    /// broker then acknowledges only what two replicas hold.
    ///
    /// Clusters older than Kafka 2.4 cannot apply their defaults to a new
    /// topic: there, set both this and [`partitions`](Self::partitions), or
    /// create topics beforehand.
    pub fn replication_factor(mut self, replication_factor: u32) -> Self {
        self.replication_factor = Some(replication_factor);
        self
    }

    /// Creates the producer. It connects in the background: an unreachable
    /// cluster shows up as [`PublishError::Unavailable`](crate::transport::PublishError::Unavailable) when publishing.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for no bootstrap servers, a partition count or
    /// replication factor of zero, an unknown property or an invalid value.
    /// Values of secret properties are never part of the message.
    pub fn build(self) -> Result<KafkaPublisher> {
        let KafkaPublisherBuilder {
            settings,
            partitions,
            replication_factor,
        } = self;
        settings.check_common()?;
        if let Some(n) = partitions.filter(|&n| n == 0 || i32::try_from(n).is_err()) {
            return Err(Error::config(format!(
                "Kafka topic partition count must be between 1 and {}, got {n}",
                i32::MAX
            )));
        }
        // The protocol carries a replication factor as an int16.
        if let Some(n) = replication_factor.filter(|&n| n == 0 || i16::try_from(n).is_err()) {
            return Err(Error::config(format!(
                "Kafka replication factor must be between 1 and {}, got {n}",
                i16::MAX
            )));
        }
        let message_timeout = match settings.get("message.timeout.ms") {
            None => Some(Duration::from_secs(30)),
            Some(ms) => match ms.trim().parse::<u64>() {
                Ok(0) => None,
                Ok(ms) => Some(Duration::from_millis(ms)),
                Err(_) => {
                    return Err(Error::config(format!(
                        "Kafka property `message.timeout.ms` must be a number of milliseconds, got `{ms}`"
                    )))
                }
            },
        };
        let config = settings.client_config();
        let producer = FutureProducer::from_config(&config)
            .map_err(|e| config_error(&settings, &e, "producer"))?;
        Ok(KafkaPublisher {
            config,
            settings,
            producer: RwLock::new(producer),
            fenced: std::sync::atomic::AtomicBool::new(false),
            admin: tokio::sync::OnceCell::new(),
            partitions,
            replication_factor,
            message_timeout,
        })
    }
}

impl fmt::Debug for KafkaPublisherBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaPublisherBuilder")
            .field("settings", &self.settings)
            .field("partitions", &self.partitions)
            .field("replication_factor", &self.replication_factor)
            .finish()
    }
}
