//! [`KafkaPublisher`]: an idempotent rdkafka producer that pipelines batches,
//! keeps per-key order behind refused messages, sorts failures into "broker
//! unavailable" and "message rejected", and creates topics.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::{PoisonError, RwLock};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::{ClientConfig, FromClientConfig};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};

mod builder;

pub use builder::KafkaPublisherBuilder;
use builder::DEFAULTS;

use super::classify::{
    classify, classify_code, fetch_topic_metadata, is_fencing, Outcome, TopicState,
};
use super::codec::kafka_headers;
use super::settings::Settings;
use crate::transport::{Cause, Delivered, OutgoingMessage, PublishError, Publisher};

/// In a CreateTopics request: "the cluster's default" (`num.partitions`,
/// `default.replication.factor`; KIP-464, brokers from Kafka 2.4).
const CLUSTER_DEFAULT: i32 = -1;

/// How long admin requests (topic creation, metadata look-ups) may take.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Upper bound for the metadata probe that tells a missing topic from an
/// unreachable broker after a delivery timed out.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Pause before retrying a message that found the local queue full.
const QUEUE_FULL_PAUSE: Duration = Duration::from_millis(10);

/// Publishes envelopes to Kafka through an idempotent rdkafka producer.
///
/// Each message uses the CloudEvents Kafka protocol binding in binary mode: the
/// key is the envelope's `partition_key`, the value is its `data`, every
/// attribute travels in a `ce_<attribute>` header, the content type in
/// `content-type`, and the W3C trace context additionally in plain
/// `traceparent` / `tracestate` headers for OpenTelemetry instrumentations.
///
/// A batch is pipelined: every message is handed to the producer before any
/// acknowledgement is awaited. Failures are reported per message, as
/// [`PublishError::Unavailable`] when the cluster cannot take messages now and
/// as [`PublishError::Rejected`] when the broker refuses this message.
///
/// # Examples
///
/// ```no_run
/// # async fn demo() -> eventbus::Result<()> {
/// use eventbus::transport::kafka::KafkaPublisher;
/// use eventbus::{Envelope, OutgoingMessage, Publisher};
///
/// let publisher = KafkaPublisher::builder("127.0.0.1:9092")
///     .set("linger.ms", "5")
///     .partitions(8) // the replication factor stays the cluster's default
///     .build()?;
/// publisher.ensure_destination("orders").await?;
///
/// let mut envelope = Envelope::new("urn:svc:orders", "com.example.order.placed", br#"{"id":1}"#.to_vec());
/// envelope.partition_key = Some("order-1".into());
/// let results = publisher
///     .publish_batch(&[OutgoingMessage { destination: "orders".into(), envelope }])
///     .await;
/// for result in results {
///     let delivered = result?;
///     println!("partition {:?} offset {:?}", delivered.partition, delivered.offset);
/// }
/// # Ok(()) }
/// ```
pub struct KafkaPublisher {
    config: ClientConfig,
    settings: Settings,
    producer: RwLock<FutureProducer>,
    /// Set when the broker fenced the producer's id or epoch: librdkafka keeps
    /// bumping the epoch without ever reporting a fatal error, so we replace it.
    fenced: std::sync::atomic::AtomicBool,
    admin: tokio::sync::OnceCell<AdminClient<DefaultClientContext>>,
    /// `None`: the cluster's default.
    partitions: Option<u32>,
    /// `None`: the cluster's default.
    replication_factor: Option<u32>,
    /// `message.timeout.ms`; `None` when 0 (librdkafka: no limit).
    message_timeout: Option<Duration>,
}

impl KafkaPublisher {
    /// Starts configuring a publisher for the cluster reached through
    /// `bootstrap_servers` (`host:port[,host:port…]`).
    pub fn builder(bootstrap_servers: impl Into<String>) -> KafkaPublisherBuilder {
        let mut settings = Settings::default();
        settings.insert("bootstrap.servers", bootstrap_servers.into());
        for (key, value) in DEFAULTS {
            settings.insert(key, (*value).to_owned());
        }
        KafkaPublisherBuilder {
            settings,
            partitions: None,
            replication_factor: None,
        }
    }

    /// The producer, replaced by a fresh one first if the current one hit a
    /// fatal error (an idempotent producer that lost its sequence state cannot
    /// send again).
    fn producer(&self) -> FutureProducer {
        let current = self
            .producer
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let fenced = self.fenced.swap(false, std::sync::atomic::Ordering::SeqCst);
        let (code, reason) = match current.client().fatal_error() {
            Some(fatal) => fatal,
            None if fenced => (
                RDKafkaErrorCode::ProducerFenced,
                "the broker fenced the idempotent producer".to_owned(),
            ),
            None => return current,
        };
        let mut slot = self
            .producer
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        // Another task may have replaced it while we waited for the lock.
        if !fenced && slot.client().fatal_error().is_none() {
            return slot.clone();
        }
        match FutureProducer::from_config(&self.config) {
            Ok(fresh) => {
                tracing::warn!(
                    error.code = ?code,
                    error.message = %self.settings.scrub(&reason),
                    "Kafka producer unusable (fatal error or fenced); replaced it with a new producer"
                );
                *slot = fresh;
            }
            Err(e) => tracing::error!(
                error.message = %self.settings.scrub(&e.to_string()),
                "Kafka producer hit a fatal error and could not be recreated"
            ),
        }
        slot.clone()
    }

    async fn admin(&self) -> std::result::Result<&AdminClient<DefaultClientContext>, PublishError> {
        let admin = self
            .admin
            .get_or_try_init(|| async {
                let mut config = self.config.clone();
                // The admin client is a producer-type handle: keep it from running
                // the idempotent producer's id handshake for nothing.
                config.remove("enable.idempotence");
                AdminClient::from_config(&config).map_err(|e| {
                    PublishError::Unavailable(Cause::scrubbed(
                        "cannot create Kafka admin client",
                        e,
                        |text| self.settings.scrub(text),
                    ))
                })
            })
            .await?;
        Ok(admin)
    }

    /// Hands `message` to the producer, waiting while the local queue is full.
    async fn enqueue(
        &self,
        producer: &FutureProducer,
        message: &OutgoingMessage,
    ) -> std::result::Result<DeliveryFuture, PublishError> {
        let envelope = &message.envelope;
        let mut record = FutureRecord::<[u8], [u8]>::to(&message.destination)
            .payload(envelope.data.as_slice())
            .headers(kafka_headers(envelope));
        if let Some(key) = &envelope.partition_key {
            record = record.key(key.as_bytes());
        }
        let deadline = self.message_timeout.map(|t| Instant::now() + t);
        loop {
            match producer.send_result(record) {
                Ok(delivery) => return Ok(delivery),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                    if deadline.is_none_or(|d| Instant::now() < d) =>
                {
                    // The producer's own thread drains the queue as the broker
                    // acknowledges; retrying this message before the next one
                    // keeps per-key order.
                    record = back;
                    tokio::time::sleep(QUEUE_FULL_PAUSE).await;
                }
                Err((e, _)) => return Err(classify(e, &message.destination)),
            }
        }
    }

    /// On a cluster that cannot apply its own defaults to a new topic (older
    /// than Kafka 2.4): an existing topic is used as it is; a missing one is not
    /// created with guessed settings (a replication factor of 1 would lose
    /// acknowledged events with one broker), and the relay waits, saying why.
    async fn without_cluster_defaults(&self, topic: &str) -> std::result::Result<(), PublishError> {
        let producer = self.producer();
        match fetch_topic_metadata(&producer, topic, PROBE_TIMEOUT).await {
            Ok(TopicState::Exists { .. }) => Ok(()),
            Ok(TopicState::Missing(_)) => Err(PublishError::Unavailable(
                format!(
                "cannot create Kafka topic `{topic}` with the cluster's default partition count \
                 and replication factor: the cluster is older than Kafka 2.4 (KIP-464); set \
                 both (`partitions` and `replication_factor` of the publisher; the relay's \
                 --topic-partitions and --topic-replication-factor) or create the topic"
            )
                .into(),
            )),
            Err(e) => Err(PublishError::Unavailable(e.into())),
        }
    }

    /// Decides what a timed-out delivery to `topic` means: a missing (or
    /// forbidden, or invalid) topic is the message's problem, anything else the
    /// cluster's.
    async fn probe_timed_out(&self, producer: &FutureProducer, topic: &str) -> PublishError {
        let timeout = self
            .message_timeout
            .map_or(PROBE_TIMEOUT, |t| t.min(PROBE_TIMEOUT));
        let waited = self.message_timeout.unwrap_or_default().as_millis();
        match fetch_topic_metadata(producer, topic, timeout).await {
            Ok(TopicState::Missing(code)) => {
                let hint = if code == RDKafkaErrorCode::UnknownTopicOrPartition {
                    "; create it first (`ensure_destination`)"
                } else {
                    ""
                };
                PublishError::Rejected(
                    format!("Kafka topic `{topic}` is not available for publishing ({code}){hint}")
                        .into(),
                )
            }
            Ok(TopicState::Exists { .. }) => PublishError::Unavailable(
                format!(
                    "Kafka did not acknowledge the message to topic `{topic}` within {waited} ms"
                )
                .into(),
            ),
            Err(e) => PublishError::Unavailable(
                format!(
                    "Kafka did not acknowledge the message to topic `{topic}` within {waited} ms \
                 and the cluster does not answer: {e}"
                )
                .into(),
            ),
        }
    }
}

#[async_trait::async_trait]
impl Publisher for KafkaPublisher {
    fn system(&self) -> &'static str {
        "kafka"
    }

    async fn publish_batch(
        &self,
        messages: &[OutgoingMessage],
    ) -> Vec<std::result::Result<Delivered, PublishError>> {
        let producer = self.producer();

        // Send everything first, then await the acknowledgements.
        let mut pending = Vec::with_capacity(messages.len());
        // A message refused at enqueue (e.g. too large) must not be overtaken by
        // later messages of its key: those are held back as `NotSent`.
        let mut refused_keys: BTreeSet<(&str, Option<&str>)> = BTreeSet::new();
        for message in messages {
            let key = (
                message.destination.as_str(),
                message.envelope.partition_key.as_deref(),
            );
            if refused_keys.contains(&key) {
                pending.push(Err(PublishError::NotSent(
                    "an earlier event of the same key was rejected".into(),
                )));
                continue;
            }
            let sent = self.enqueue(&producer, message).await;
            if matches!(sent, Err(PublishError::Rejected(_))) {
                refused_keys.insert(key);
            }
            pending.push(sent);
        }

        let mut outcomes = Vec::with_capacity(messages.len());
        let mut timed_out_topics: BTreeSet<&str> = BTreeSet::new();
        for (message, sent) in messages.iter().zip(pending) {
            let outcome = match sent {
                Err(e) => Outcome::Done(Err(e)),
                Ok(delivery) => match delivery.await {
                    Ok(Ok(d)) => Outcome::Done(Ok(Delivered {
                        partition: Some(d.partition),
                        offset: Some(d.offset),
                        unroutable: false,
                    })),
                    Ok(Err((
                        KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut),
                        _,
                    ))) => {
                        timed_out_topics.insert(&message.destination);
                        Outcome::TimedOut
                    }
                    Ok(Err((e, _))) => {
                        if e.rdkafka_error_code().is_some_and(is_fencing) {
                            self.fenced.store(true, std::sync::atomic::Ordering::SeqCst);
                        }
                        Outcome::Done(Err(classify(e, &message.destination)))
                    }
                    Err(_canceled) => Outcome::Done(Err(PublishError::Unavailable(
                        "the Kafka producer was shut down before the broker answered".into(),
                    ))),
                },
            };
            outcomes.push(outcome);
        }

        // A timeout alone does not say whether the broker or the topic is gone:
        // ask the cluster, once per topic rather than once per message.
        let mut verdicts = BTreeMap::new();
        for topic in timed_out_topics {
            verdicts.insert(topic, self.probe_timed_out(&producer, topic).await);
        }
        messages
            .iter()
            .zip(outcomes)
            .map(|(message, outcome)| match outcome {
                Outcome::Done(result) => result,
                Outcome::TimedOut => Err(verdicts
                    .get(message.destination.as_str())
                    .cloned()
                    .unwrap_or_else(|| {
                        classify_code(RDKafkaErrorCode::MessageTimedOut, &message.destination)
                    })),
            })
            .collect()
    }

    async fn ensure_destination(&self, destination: &str) -> std::result::Result<(), PublishError> {
        let admin = self.admin().await?;
        let explicit =
            |n: Option<u32>| n.map_or(CLUSTER_DEFAULT, |n| i32::try_from(n).unwrap_or(i32::MAX));
        let partitions = explicit(self.partitions);
        let replication = explicit(self.replication_factor);
        let topic = NewTopic::new(
            destination,
            partitions,
            TopicReplication::Fixed(replication),
        );
        let options = AdminOptions::new()
            .request_timeout(Some(ADMIN_TIMEOUT))
            .operation_timeout(Some(ADMIN_TIMEOUT));
        let results = match admin.create_topics([&topic], &options).await {
            Ok(results) => results,
            // librdkafka refuses to send "the cluster's default" to a broker
            // older than Kafka 2.4 (CreateTopics v4).
            Err(KafkaError::AdminOp(RDKafkaErrorCode::UnsupportedFeature))
                if partitions == CLUSTER_DEFAULT || replication == CLUSTER_DEFAULT =>
            {
                return self.without_cluster_defaults(destination).await;
            }
            // The request as a whole failed, e.g. timed out without an answer.
            Err(KafkaError::AdminOp(code)) => return Err(classify_code(code, destination)),
            Err(other) => {
                return Err(PublishError::Unavailable(Cause::scrubbed(
                    format_args!("cannot create Kafka topic `{destination}`"),
                    other,
                    |text| self.settings.scrub(text),
                )))
            }
        };
        let mut created = true;
        for result in results {
            match result {
                Ok(_) => {}
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => created = false,
                Err((_, code)) => return Err(classify_code(code, destination)),
            }
        }

        // Wait until the topic is visible to the producer, so a publish right
        // after this call does not race the cluster's metadata propagation.
        let producer = self.producer();
        let deadline = Instant::now() + ADMIN_TIMEOUT;
        loop {
            match fetch_topic_metadata(&producer, destination, PROBE_TIMEOUT).await {
                Ok(TopicState::Exists { partitions }) => {
                    let configured = self.partitions.map_or(partitions, |n| n as usize);
                    if !created && partitions != configured {
                        tracing::warn!(
                            messaging.destination.name = destination,
                            partitions,
                            configured,
                            "Kafka topic already exists with a different partition count"
                        );
                    }
                    return Ok(());
                }
                Ok(TopicState::Missing(_)) | Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Ok(TopicState::Missing(code)) => {
                    return Err(PublishError::Unavailable(
                        format!(
                        "Kafka topic `{destination}` was created but is not visible yet ({code})"
                    )
                        .into(),
                    ))
                }
                Err(e) => return Err(PublishError::Unavailable(e.into())),
            }
        }
    }

    /// Purges the messages still queued in librdkafka: they have not been
    /// written to a broker connection, and now never will be. Messages already
    /// in a produce request stay in flight (the broker may still take them).
    async fn abandon(&self) {
        self.producer()
            .purge(rdkafka::producer::PurgeConfig::default().queue());
    }
}

impl fmt::Debug for KafkaPublisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaPublisher")
            .field("settings", &self.settings)
            .field("partitions", &self.partitions)
            .field("replication_factor", &self.replication_factor)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    #[test]
    fn secrets_stay_out_of_debug_and_errors() {
        let builder = KafkaPublisher::builder("127.0.0.1:1")
            .set("sasl.password", "hunter2")
            .set("sasl.oauthbearer.client.secret", "s3cr3t")
            .set("linger.ms", "5");
        let shown = format!("{builder:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("s3cr3t"),
            "{shown}"
        );
        assert!(shown.contains("linger.ms"), "{shown}");

        let err = KafkaPublisher::builder("127.0.0.1:1")
            .set("sasl.password", "hunter2")
            .set("no.such.property", "hunter2")
            .build()
            .expect_err("unknown property");
        assert!(matches!(err, Error::Config(_)), "{err:?}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn bad_settings_are_config_errors() {
        for builder in [
            KafkaPublisher::builder(""),
            KafkaPublisher::builder("127.0.0.1:1").partitions(0),
            KafkaPublisher::builder("127.0.0.1:1").replication_factor(0),
            KafkaPublisher::builder("127.0.0.1:1").replication_factor(40_000),
            KafkaPublisher::builder("127.0.0.1:1").set("message.timeout.ms", "soon"),
            KafkaPublisher::builder("127.0.0.1:1").set("acks", "most"),
        ] {
            let err = builder.build().expect_err("invalid");
            assert!(matches!(err, Error::Config(_)), "{err:?}");
        }
    }

    #[test]
    fn aliases_replace_the_defaults() {
        let builder = KafkaPublisher::builder("127.0.0.1:1").set("compression.type", "lz4");
        assert_eq!(builder.settings.get("compression.codec"), Some("lz4"));
        assert_eq!(builder.settings.get("compression.type"), None);
    }
}
