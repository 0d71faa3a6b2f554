//! The baselines' plain clients, without eventbus in the path: an rdkafka
//! producer and a lapin confirm channel with the same durability settings as
//! ours, a group-less Kafka reader, and the RabbitMQ queue the messages land in.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use eventbus::transport::kafka::rdkafka;
use eventbus::transport::rabbitmq::{lapin, message_properties};
use eventbus::OutgoingMessage;
use futures::StreamExt;
use indicatif::ProgressBar;
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use lapin::{Confirmation, PublisherConfirm};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use uuid::Uuid;

use crate::error::{BenchError, Result};
use crate::timeline::Timeline;

/// Messages a raw producer keeps unacknowledged at once.
const WINDOW: usize = 10_000;

/// `fetch.wait.max.ms` of every Kafka consumer here (ours and the raw one).
/// tansu 0.6 holds a fetch for the whole wait even when messages arrive
/// meanwhile (Kafka answers as soon as `fetch.min.bytes` is there), so
/// librdkafka's default of 500 ms would add up to half a second to every
/// delivery and measure the broker, not the consumer.
pub(crate) const FETCH_WAIT_MS: &str = "10";

/// The Kafka producer settings our `KafkaPublisher` uses, set on a plain
/// rdkafka producer.
pub(crate) fn kafka_producer(brokers: &str) -> Result<FutureProducer> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("partitioner", "murmur2_random")
        .set("message.timeout.ms", "30000")
        .set("compression.codec", "none")
        .set("linger.ms", "1")
        .create()
        .map_err(|e| BenchError::Broker(format!("cannot create Kafka producer: {e}")))
}

/// The record our publisher would send for `message`: key, payload and the
/// CloudEvents headers.
fn kafka_headers(message: &OutgoingMessage) -> OwnedHeaders {
    let envelope = &message.envelope;
    let attributes = envelope.binary_headers(eventbus::transport::kafka::HEADER_PREFIX);
    let mut headers = OwnedHeaders::new_with_capacity(attributes.len() + 1);
    for (name, value) in &attributes {
        headers = headers.insert(Header {
            key: name,
            value: Some(value.as_str()),
        });
    }
    headers.insert(Header {
        key: eventbus::transport::kafka::CONTENT_TYPE_HEADER,
        value: Some(
            envelope
                .datacontenttype
                .as_deref()
                .unwrap_or("application/json"),
        ),
    })
}

/// Hands `message` to the producer (waiting while its queue is full).
pub(crate) async fn kafka_send(
    producer: &FutureProducer,
    message: &OutgoingMessage,
) -> Result<DeliveryFuture> {
    let envelope = &message.envelope;
    let mut record = FutureRecord::<[u8], [u8]>::to(&message.destination)
        .payload(envelope.data.as_slice())
        .headers(kafka_headers(message));
    if let Some(key) = &envelope.partition_key {
        record = record.key(key.as_bytes());
    }
    loop {
        match producer.send_result(record) {
            Ok(delivery) => return Ok(delivery),
            Err((
                rdkafka::error::KafkaError::MessageProduction(
                    rdkafka::types::RDKafkaErrorCode::QueueFull,
                ),
                back,
            )) => {
                record = back;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Err((e, _)) => return Err(BenchError::Broker(format!("Kafka refused a message: {e}"))),
        }
    }
}

async fn kafka_settle(delivery: DeliveryFuture) -> Result<()> {
    match delivery.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((e, _))) => Err(BenchError::Broker(format!(
            "Kafka did not take a message: {e}"
        ))),
        Err(_) => Err(BenchError::Broker("the Kafka producer went away".into())),
    }
}

/// Sends every message and waits for every acknowledgement, streaming: at
/// most [`WINDOW`] unacknowledged at once.
pub(crate) async fn kafka_send_all(
    producer: &FutureProducer,
    messages: &[OutgoingMessage],
    bar: &ProgressBar,
) -> Result<()> {
    let mut pending: VecDeque<DeliveryFuture> = VecDeque::with_capacity(WINDOW);
    for message in messages {
        if pending.len() >= WINDOW {
            if let Some(oldest) = pending.pop_front() {
                kafka_settle(oldest).await?;
                bar.inc(1);
            }
        }
        pending.push_back(kafka_send(producer, message).await?);
    }
    for delivery in pending {
        kafka_settle(delivery).await?;
        bar.inc(1);
    }
    Ok(())
}

/// Reads `topic` from the beginning of every partition without joining a
/// group, recording the arrival of every message in `timeline` by its key.
pub(crate) async fn kafka_reader(
    brokers: &str,
    topic: &str,
    timeline: Arc<Timeline>,
) -> Result<tokio::task::JoinHandle<()>> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set(
            "group.id",
            format!("bench-reader-{}", Uuid::new_v4().simple()),
        )
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", FETCH_WAIT_MS)
        .create()
        .map_err(|e| BenchError::Broker(format!("cannot create Kafka reader: {e}")))?;
    let metadata = {
        let topic = topic.to_owned();
        let consumer_meta: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .create()
            .map_err(|e| BenchError::Broker(e.to_string()))?;
        tokio::task::spawn_blocking(move || {
            consumer_meta
                .fetch_metadata(Some(&topic), Duration::from_secs(10))
                .map_err(|e| BenchError::Broker(format!("metadata of {topic}: {e}")))
        })
        .await??
    };
    let mut assignment = TopicPartitionList::new();
    for t in metadata.topics().iter().filter(|t| t.name() == topic) {
        for p in t.partitions() {
            assignment
                .add_partition_offset(topic, p.id(), Offset::Beginning)
                .map_err(|e| BenchError::Broker(e.to_string()))?;
        }
    }
    if assignment.count() == 0 {
        return Err(BenchError::Broker(format!(
            "Kafka topic {topic} has no partitions"
        )));
    }
    consumer
        .assign(&assignment)
        .map_err(|e| BenchError::Broker(format!("cannot assign {topic}: {e}")))?;
    Ok(tokio::spawn(async move {
        let mut stream = consumer.stream();
        while let Some(message) = stream.next().await {
            let Ok(message) = message else { continue };
            if let Some(key) = message
                .key()
                .and_then(|k| std::str::from_utf8(k).ok())
                .and_then(|k| Uuid::parse_str(k).ok())
            {
                timeline.handle(key);
            }
        }
    }))
}

/// A RabbitMQ connection with a channel in confirm mode.
pub(crate) async fn rabbit_channel(url: &str) -> Result<(Connection, Channel)> {
    let connection = Connection::connect(url, ConnectionProperties::default())
        .await
        .map_err(|e| BenchError::Broker(format!("cannot connect to RabbitMQ: {e}")))?;
    let channel = connection
        .create_channel()
        .await
        .map_err(|e| BenchError::Broker(e.to_string()))?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(|e| BenchError::Broker(e.to_string()))?;
    Ok((connection, channel))
}

/// Declares the durable topic exchange `exchange` and a durable queue of the
/// same name bound to every routing key, so published messages are kept.
pub(crate) async fn rabbit_sink(channel: &Channel, exchange: &str) -> Result<()> {
    let fail = |e: lapin::Error| BenchError::Broker(format!("declaring {exchange}: {e}"));
    channel
        .exchange_declare(
            exchange.into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(fail)?;
    channel
        .queue_declare(
            exchange.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(fail)?;
    channel
        .queue_bind(
            exchange.into(),
            exchange.into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(fail)?;
    Ok(())
}

/// Deletes queue `name` and its messages, on a connection of its own.
pub(crate) async fn rabbit_delete_queue(url: &str, name: &str) -> Result<()> {
    let (connection, channel) = rabbit_channel(url).await?;
    rabbit_drop_sink(&channel, name).await?;
    let _ = connection.close(200, "done".into()).await;
    Ok(())
}

/// Deletes the queue made by [`rabbit_sink`] (and its messages).
pub(crate) async fn rabbit_drop_sink(channel: &Channel, exchange: &str) -> Result<()> {
    channel
        .queue_delete(exchange.into(), QueueDeleteOptions::default())
        .await
        .map_err(|e| BenchError::Broker(format!("deleting queue {exchange}: {e}")))?;
    Ok(())
}

async fn rabbit_settle(confirm: PublisherConfirm) -> Result<()> {
    match confirm.await {
        Ok(Confirmation::Ack(None)) => Ok(()),
        Ok(Confirmation::Ack(Some(ret))) => Err(BenchError::Broker(format!(
            "RabbitMQ returned a message: {} {}",
            ret.reply_code, ret.reply_text
        ))),
        Ok(other) => Err(BenchError::Broker(format!(
            "RabbitMQ did not confirm: {other:?}"
        ))),
        Err(e) => Err(BenchError::Broker(format!("RabbitMQ channel failed: {e}"))),
    }
}

/// Publishes every message persistent and mandatory, with our publisher's
/// properties, keeping at most [`WINDOW`] unconfirmed.
pub(crate) async fn rabbit_send_all(
    channel: &Channel,
    messages: &[OutgoingMessage],
    bar: &ProgressBar,
) -> Result<()> {
    let mut pending: VecDeque<PublisherConfirm> = VecDeque::with_capacity(WINDOW);
    for message in messages {
        if pending.len() >= WINDOW {
            if let Some(oldest) = pending.pop_front() {
                rabbit_settle(oldest).await?;
                bar.inc(1);
            }
        }
        let envelope = &message.envelope;
        let confirm = channel
            .basic_publish(
                message.destination.as_str().into(),
                envelope.event_type.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    immediate: false,
                },
                &envelope.data,
                message_properties(envelope, None),
            )
            .await
            .map_err(|e| BenchError::Broker(format!("RabbitMQ publish failed: {e}")))?;
        pending.push_back(confirm);
    }
    for confirm in pending {
        rabbit_settle(confirm).await?;
        bar.inc(1);
    }
    Ok(())
}
