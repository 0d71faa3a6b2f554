//! The broker a shared consumer scenario runs on ([`Broker`]): fresh
//! destinations and their publishers, consumer groups, raw (non-CloudEvent)
//! messages, what a group has left unacknowledged, and the dead letters of a
//! destination ([`DeadLetters`]). Where SQS differs from Kafka and RabbitMQ
//! (FIFO deduplication, a queue per group), these methods hide it.

use std::sync::Arc;
use std::time::Duration;

use eventbus::consumer::dead_letter;
use eventbus::transport::kafka::envelope_from_message;
use eventbus::transport::kafka::rdkafka;
use eventbus::transport::rabbitmq::lapin::options::{BasicPublishOptions, QueueDeclareOptions};
use eventbus::transport::rabbitmq::lapin::types::FieldTable;
use eventbus::transport::rabbitmq::lapin::BasicProperties;
use eventbus::transport::rabbitmq::RabbitPublisher;
use eventbus::transport::sqs::aws_sdk_sqs::types::QueueAttributeName;
use eventbus::transport::sqs::queue_name;
use eventbus::transport::Subscriber;
use eventbus::{Envelope, Event, Publisher};

use crate::relay::Step;
use crate::{kafka, rabbitmq, sqs, unique_name};

/// The broker a shared scenario runs on.
#[derive(Debug, Clone)]
pub enum Broker {
    /// A Kafka-protocol broker at these bootstrap servers.
    Kafka(String),
    /// RabbitMQ at this URL.
    RabbitMq(String),
    /// An SQS-compatible server at this endpoint, with FIFO queues (per-key
    /// order). A FIFO queue drops a copy of an event sent within five
    /// minutes, so the scenarios' copies are sent as re-drives
    /// ([`sqs::Redelivering`]): they reach the consumer as redeliveries do.
    Sqs(String),
}

/// Where to read the dead letters of a destination from; made before anything
/// is dead-lettered.
#[derive(Debug)]
pub enum DeadLetters {
    /// A Kafka dead-letter topic, read from the start without a group, and
    /// re-driven by the group `redrive_group`.
    Kafka {
        /// Bootstrap servers.
        brokers: String,
        /// The dead-letter topic.
        topic: String,
        /// The group that re-drives it.
        redrive_group: String,
    },
    /// A queue (`group`) bound to the dead-letter exchange `dlq`.
    RabbitMq {
        /// RabbitMQ's URL.
        url: String,
        /// The dead-letter exchange.
        dlq: String,
        /// The reading queue's group.
        group: String,
        /// A subscriber of it.
        subscriber: Box<dyn Subscriber>,
    },
    /// The dead-letter queue `dlq`.
    Sqs {
        /// The dead-letter destination.
        dlq: String,
        /// A subscriber of it.
        subscriber: Box<dyn Subscriber>,
    },
}

impl Broker {
    /// The Kafka-protocol broker of `KAFKA_BROKERS`.
    pub async fn kafka() -> Self {
        Broker::Kafka(crate::kafka_brokers().await)
    }

    /// The RabbitMQ of `AMQP_URL`.
    pub async fn rabbitmq() -> Self {
        Broker::RabbitMq(crate::amqp_url().await)
    }

    /// The SQS-compatible server of `SQS_ENDPOINT`.
    pub async fn sqs() -> Self {
        Broker::Sqs(crate::sqs_endpoint().await)
    }

    /// The broker's name, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Broker::Kafka(_) => "Kafka",
            Broker::RabbitMq(_) => "RabbitMQ",
            Broker::Sqs(_) => "SQS",
        }
    }

    /// `n` events of a scenario sized for Kafka and RabbitMQ, scaled for this
    /// broker: a tenth on SQS, whose local server (moto, in Python) walks a
    /// queue's whole message list for every receive and delete.
    pub fn scale(&self, n: u64) -> u64 {
        match self {
            Broker::Sqs(_) => n / 10,
            Broker::Kafka(_) | Broker::RabbitMq(_) => n,
        }
    }

    /// The `consumer_worker` binary's broker argument.
    pub fn worker_url(&self) -> String {
        match self {
            Broker::Kafka(brokers) => format!("kafka://{brokers}"),
            Broker::RabbitMq(url) => url.clone(),
            Broker::Sqs(endpoint) => endpoint
                .strip_prefix("http://")
                .map_or_else(|| endpoint.clone(), |rest| format!("sqs+http://{rest}")),
        }
    }

    /// A fresh destination named after `tag` and a publisher for it (which
    /// also takes the dead letters). Kafka: a topic of `partitions`
    /// partitions, created now, every message in a record batch of its own
    /// (see [`kafka::one_per_batch_publisher`]). RabbitMQ: an exchange,
    /// declared by the first subscriber. SQS: a FIFO queue, created now.
    pub async fn destination(&self, tag: &str, partitions: u32) -> (String, Arc<dyn Publisher>) {
        self.destination_for_groups(tag, partitions, &[]).await
    }

    /// Like [`destination`](Self::destination), for publish-subscribe between
    /// `groups`, each of which gets every message. On SQS a queue is one
    /// group: the publisher routes the destination to a queue per group
    /// (created now; see [`group_destination`](Self::group_destination)).
    pub async fn destination_for_groups(
        &self,
        tag: &str,
        partitions: u32,
        groups: &[&str],
    ) -> (String, Arc<dyn Publisher>) {
        let destination = format!("{}.{}", unique_name(tag), Step::DESTINATION);
        let publisher: Arc<dyn Publisher> = match self {
            Broker::Kafka(brokers) => {
                Arc::new(kafka::one_per_batch_publisher(brokers, &destination, partitions).await)
            }
            Broker::RabbitMq(url) => Arc::new(
                RabbitPublisher::connect(url)
                    .await
                    .expect("connect to RabbitMQ"),
            ),
            Broker::Sqs(_) => {
                let queues: Vec<String> = groups
                    .iter()
                    .map(|g| self.group_destination(&destination, g))
                    .collect();
                let mut builder = sqs::publisher_builder().await.fifo(true);
                if !queues.is_empty() {
                    builder = builder.route(destination.clone(), queues.clone());
                }
                let publisher = builder.connect().await.expect("connect to SQS");
                let own = [destination.clone()];
                let queues = if queues.is_empty() {
                    &own[..]
                } else {
                    &queues[..]
                };
                for queue in queues {
                    publisher
                        .ensure_destination(queue)
                        .await
                        .unwrap_or_else(|e| panic!("create the queue of {queue}: {e}"));
                }
                Arc::new(sqs::Redelivering::new(Arc::new(publisher)))
            }
        };
        (destination, publisher)
    }

    /// What `group` subscribes to for the messages of `destination`: the
    /// destination itself, but on SQS (made by
    /// [`destination_for_groups`](Self::destination_for_groups)) the group's
    /// own queue.
    pub fn group_destination(&self, destination: &str, group: &str) -> String {
        match self {
            Broker::Sqs(_) => format!("{destination}.{group}"),
            Broker::Kafka(_) | Broker::RabbitMq(_) => destination.to_owned(),
        }
    }

    /// A subscriber of consumer group `group` to `destination`, at most
    /// `max_in_flight` messages unsettled. On RabbitMQ this declares the
    /// group's queue: make it before publishing.
    pub async fn subscriber(
        &self,
        group: &str,
        destination: &str,
        max_in_flight: usize,
    ) -> Box<dyn Subscriber> {
        match self {
            Broker::Kafka(brokers) => {
                kafka::subscriber(brokers, group, &[destination], max_in_flight).await
            }
            Broker::RabbitMq(url) => {
                rabbitmq::subscriber(url, group, &[destination], max_in_flight).await
            }
            // A queue is the group: `group` names only the consumer.
            Broker::Sqs(_) => sqs::subscriber(&[destination], true, max_in_flight).await,
        }
    }

    /// Like [`subscriber`](Self::subscriber), with every message in one lane
    /// where the broker allows it: RabbitMQ with a single active consumer
    /// (lane 0); a Kafka topic of one partition (made by
    /// [`destination`](Self::destination) with one partition) is one lane
    /// anyway. On SQS a lane is a message group (a key).
    pub async fn one_lane_subscriber(
        &self,
        group: &str,
        destination: &str,
        max_in_flight: usize,
    ) -> Box<dyn Subscriber> {
        match self {
            Broker::RabbitMq(url) => Box::new(
                rabbitmq::subscriber_builder(url, group, &[destination], max_in_flight)
                    .single_active_consumer(true)
                    .connect()
                    .await
                    .unwrap_or_else(|e| panic!("subscribe {group} to {destination}: {e}")),
            ),
            Broker::Kafka(_) | Broker::Sqs(_) => {
                self.subscriber(group, destination, max_in_flight).await
            }
        }
    }

    /// Makes sure what is published to `destination` from now on is kept for
    /// `group`, before any of its consumers runs (RabbitMQ drops what no
    /// queue is bound for; a Kafka topic and an SQS queue keep everything).
    pub async fn prepare_group(&self, group: &str, destination: &str) {
        if let Broker::RabbitMq(url) = self {
            let mut subscriber = rabbitmq::subscriber(url, group, &[destination], 64).await;
            subscriber.close().await.expect("close");
        }
    }

    /// Publishes `body` to `destination` as it is, no CloudEvent, with
    /// `key` as the partition key (Kafka) or message group (SQS).
    pub async fn publish_raw(&self, destination: &str, key: &str, body: &[u8]) {
        match self {
            Broker::Kafka(brokers) => {
                use rdkafka::producer::{FutureProducer, FutureRecord};
                let raw: FutureProducer = rdkafka::ClientConfig::new()
                    .set("bootstrap.servers", brokers)
                    .create()
                    .expect("raw producer");
                raw.send(
                    FutureRecord::<str, [u8]>::to(destination)
                        .key(key)
                        .payload(body),
                    Duration::from_secs(10),
                )
                .await
                .map_err(|(e, _)| e)
                .expect("produce a raw message");
            }
            Broker::RabbitMq(_) => {
                let connection = rabbitmq::connect().await;
                let channel = connection.create_channel().await.expect("channel");
                channel
                    .basic_publish(
                        destination.into(),
                        Step::TYPE.into(),
                        BasicPublishOptions::default(),
                        body,
                        BasicProperties::default().with_content_type("text/plain".into()),
                    )
                    .await
                    .expect("publish raw")
                    .await
                    .expect("raw publish sent");
                let _ = connection.close(200, "sent".into()).await;
            }
            Broker::Sqs(_) => {
                let publisher = sqs::publisher(true).await;
                let client = publisher.client();
                let url = sqs_queue_url(client, destination).await;
                client
                    .send_message()
                    .queue_url(url)
                    .message_body(String::from_utf8_lossy(body))
                    .message_group_id(key)
                    .message_deduplication_id(uuid::Uuid::new_v4().simple().to_string())
                    .send()
                    .await
                    .expect("send a raw message");
            }
        }
    }

    /// Messages of `destination` (of which `messages` were published) that
    /// `group` has not acknowledged: Kafka, those past its committed offsets;
    /// RabbitMQ, those ready in its queue (not the ones delivered and
    /// unacknowledged: stop the consumers to count those too); SQS, those
    /// in the group's queue, visible or not.
    pub async fn backlog(&self, group: &str, destination: &str, messages: i64) -> i64 {
        match self {
            Broker::Kafka(brokers) => {
                let committed = kafka::committed_total(brokers, group, destination).await;
                assert!(
                    committed <= messages,
                    "group {group} committed {committed} offsets of {destination}, \
                     which holds only {messages}"
                );
                messages - committed
            }
            Broker::RabbitMq(_) => i64::from(ready_in_queue(group).await),
            Broker::Sqs(_) => {
                let publisher = sqs::publisher(true).await;
                let client = publisher.client();
                let url = sqs_queue_url(client, destination).await;
                let attributes = client
                    .get_queue_attributes()
                    .queue_url(url)
                    .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
                    .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
                    .send()
                    .await
                    .expect("queue attributes");
                let count = |name: QueueAttributeName| -> i64 {
                    attributes
                        .attributes()
                        .and_then(|a| a.get(&name))
                        .map_or(0, |n| n.parse().expect("a count"))
                };
                count(QueueAttributeName::ApproximateNumberOfMessages)
                    + count(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            }
        }
    }

    /// Prepares to read the dead letters of `group` for `destination`: the
    /// dead-letter topic exists (Kafka), a queue of the reader's own is bound
    /// to the dead-letter exchange (RabbitMQ).
    pub async fn dead_letters(
        &self,
        destination: &str,
        group: &str,
        publisher: &dyn Publisher,
    ) -> DeadLetters {
        let dlq = dead_letter::destination_of(destination, group);
        match self {
            Broker::Kafka(brokers) => {
                publisher
                    .ensure_destination(&dlq)
                    .await
                    .unwrap_or_else(|e| panic!("create the dead-letter topic {dlq}: {e}"));
                DeadLetters::Kafka {
                    brokers: brokers.clone(),
                    redrive_group: format!("{dlq}.redrive"),
                    topic: dlq,
                }
            }
            Broker::RabbitMq(url) => {
                let group = format!("{dlq}.reader");
                DeadLetters::RabbitMq {
                    subscriber: rabbitmq::subscriber(url, &group, &[&dlq], 64).await,
                    url: url.clone(),
                    dlq,
                    group,
                }
            }
            Broker::Sqs(_) => DeadLetters::Sqs {
                subscriber: sqs::subscriber(&[&dlq], true, 64).await,
                dlq,
            },
        }
    }

    /// Removes what a test left on the broker (RabbitMQ queues of `groups`,
    /// exchanges `destinations` and their dead-letter exchanges; SQS queues of
    /// `destinations` and their dead letters); Kafka topics stay (tansu keeps
    /// them in memory).
    pub async fn clean_up(&self, groups: &[&str], destinations: &[&str]) {
        if let Broker::Sqs(_) = self {
            sqs::delete_queues(destinations, groups, true).await;
        }
        if let Broker::RabbitMq(_) = self {
            for group in groups {
                rabbitmq::delete_group(group).await;
            }
            for destination in destinations {
                for group in groups {
                    let dlq = dead_letter::destination_of(destination, group);
                    rabbitmq::delete_group(&format!("{dlq}.reader")).await;
                    rabbitmq::delete_group(&dlq).await;
                    rabbitmq::delete_exchange(&dlq).await;
                }
                rabbitmq::delete_exchange(destination).await;
            }
        }
    }
}

/// The URL of the FIFO queue of `destination`.
async fn sqs_queue_url(
    client: &eventbus::transport::sqs::aws_sdk_sqs::Client,
    destination: &str,
) -> String {
    let name = queue_name(destination, true).expect("a valid queue name");
    client
        .get_queue_url()
        .queue_name(&name)
        .send()
        .await
        .unwrap_or_else(|e| panic!("the queue {name}: {e}"))
        .queue_url()
        .expect("a queue URL")
        .to_owned()
}

/// Reads `subscriber` until `expected` messages arrived (within 60 s) and no
/// more within a few seconds after; each is acknowledged (`keep`: given
/// back, still counted).
async fn drain(subscriber: &mut dyn Subscriber, expected: usize, keep: bool) -> Vec<Envelope> {
    let mut letters = Vec::new();
    let mut held = Vec::new();
    loop {
        let wait = if letters.len() < expected {
            Duration::from_secs(60)
        } else {
            Duration::from_secs(3)
        };
        match tokio::time::timeout(wait, subscriber.next()).await {
            Ok(Some(Ok(m))) => {
                letters.push(m.envelope.expect("a dead letter is a CloudEvent"));
                if keep {
                    held.push(m.settle);
                } else {
                    m.settle.ack().await.expect("acknowledge a dead letter");
                }
            }
            Ok(Some(Err(e))) => panic!("reading dead letters: {e}"),
            Ok(None) | Err(_) => break,
        }
    }
    for settle in held {
        settle.release().await.expect("give a dead letter back");
    }
    letters
}

impl DeadLetters {
    /// Reads the dead letters: exactly `expected` must arrive (within 60 s),
    /// and no more within a few seconds after. They are consumed.
    pub async fn read(self, expected: usize) -> Vec<Envelope> {
        let letters = match self {
            DeadLetters::Kafka { brokers, topic, .. } => {
                read_kafka(&brokers, &topic, expected).await
            }
            DeadLetters::RabbitMq { mut subscriber, .. }
            | DeadLetters::Sqs { mut subscriber, .. } => {
                let letters = drain(subscriber.as_mut(), expected, false).await;
                subscriber.close().await.expect("close");
                letters
            }
        };
        assert_letters(&letters, expected);
        letters
    }

    /// Reads the dead letters like [`read`](Self::read), and leaves them
    /// where they are, for a re-drive.
    pub async fn peek(&mut self, expected: usize) -> Vec<Envelope> {
        let letters = match self {
            DeadLetters::Kafka { brokers, topic, .. } => read_kafka(brokers, topic, expected).await,
            DeadLetters::RabbitMq { subscriber, .. } | DeadLetters::Sqs { subscriber, .. } => {
                drain(subscriber.as_mut(), expected, true).await
            }
        };
        assert_letters(&letters, expected);
        letters
    }

    /// Re-drives the dead letters with `publisher` ([`dead_letter::redrive`])
    /// until nothing arrives for a few seconds; returns (re-driven, skipped).
    /// Kafka: a group of its own, which resumes at its committed offsets the
    /// next time. RabbitMQ and SQS: the reading subscriber, replaced by a
    /// fresh one afterwards (what it held goes back to the queue).
    pub async fn redrive(&mut self, publisher: &dyn Publisher) -> (u64, u64) {
        match self {
            DeadLetters::Kafka {
                brokers,
                topic,
                redrive_group,
            } => {
                let mut subscriber =
                    kafka::subscriber(brokers, redrive_group, &[topic.as_str()], 64).await;
                let outcome = redrive_from(subscriber.as_mut(), publisher, 15).await;
                subscriber.close().await.expect("close");
                outcome
            }
            DeadLetters::RabbitMq {
                url,
                dlq,
                group,
                subscriber,
            } => {
                let outcome = redrive_from(subscriber.as_mut(), publisher, 3).await;
                subscriber.close().await.expect("close");
                *subscriber = rabbitmq::subscriber(url, group, &[dlq.as_str()], 64).await;
                outcome
            }
            DeadLetters::Sqs { dlq, subscriber } => {
                let outcome = redrive_from(subscriber.as_mut(), publisher, 5).await;
                subscriber.close().await.expect("close");
                *subscriber = sqs::subscriber(&[dlq.as_str()], true, 64).await;
                outcome
            }
        }
    }
}

async fn redrive_from(
    subscriber: &mut dyn Subscriber,
    publisher: &dyn Publisher,
    idle_secs: u64,
) -> (u64, u64) {
    dead_letter::redrive(subscriber, publisher, Duration::from_secs(idle_secs))
        .await
        .expect("re-drive")
}

async fn read_kafka(brokers: &str, topic: &str, expected: usize) -> Vec<Envelope> {
    kafka::read_all(brokers, topic, expected + 1, Duration::from_secs(15))
        .await
        .iter()
        .map(|m| envelope_from_message(m).expect("a dead letter is a CloudEvent"))
        .collect()
}

fn assert_letters(letters: &[Envelope], expected: usize) {
    assert_eq!(
        letters.len(),
        expected,
        "dead letters: {:#?}",
        letters.iter().map(|l| &l.extensions).collect::<Vec<_>>()
    );
}

/// Messages ready in `group`'s queue (not counting those delivered and unacknowledged).
async fn ready_in_queue(group: &str) -> u32 {
    let connection = rabbitmq::connect().await;
    let channel = connection.create_channel().await.expect("channel");
    let queue = channel
        .queue_declare(
            group.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("passive queue.declare");
    let _ = connection.close(200, "counted".into()).await;
    queue.message_count()
}
