//! The receiving side of a transport: a [`Subscriber`] yields [`Received`]
//! messages, each settled exactly once through its [`Settle`] handle.

use std::fmt;

use crate::envelope::{Envelope, EnvelopeError};
use crate::error::Result;

/// A message received from the broker and not yet settled.
#[derive(Debug)]
pub struct Received {
    /// Where it came from: the Kafka topic or the RabbitMQ exchange.
    pub destination: String,
    /// Its ordering lane. Messages of one lane are handled one at a time, in
    /// arrival order; different lanes run concurrently. Kafka: the partition.
    /// RabbitMQ: a hash of the partition key, or `0` for single active consumer.
    /// SQS: a hash of the message group (FIFO) or of the partition key.
    pub lane: u64,
    /// The decoded CloudEvent, or why the message is not one.
    pub envelope: std::result::Result<Envelope, EnvelopeError>,
    /// The raw body, kept to dead-letter messages that do not decode.
    pub body: Vec<u8>,
    /// Whether the broker says it delivered this message before.
    pub redelivered: bool,
    /// Where and when the broker had the message, for telemetry.
    pub info: MessageInfo,
    /// Settles the message with the broker.
    pub settle: Box<dyn Settle>,
}

/// What the broker says about a received message, beyond the event: what
/// the consumer's `process` span and broker-wait metric are made of.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MessageInfo {
    /// The OpenTelemetry `messaging.system`: `kafka`, `rabbitmq`, `memory`.
    pub system: &'static str,
    /// The Kafka partition (and the in-memory broker's).
    pub partition: Option<i32>,
    /// The Kafka offset.
    pub offset: Option<i64>,
    /// The Kafka message key, when it is UTF-8; the SQS message group of a
    /// FIFO queue, else the `ce-partitionkey` message attribute.
    pub key: Option<String>,
    /// The AMQP routing key.
    pub routing_key: Option<String>,
    /// When the broker took the message, as precisely as it says: the Kafka
    /// record timestamp; RabbitMQ's `timestamp_in_ms` header (set by our
    /// publisher when sending, replaced on arrival by the broker's
    /// message-timestamp plugin where that is enabled).
    pub broker_time: Option<chrono::DateTime<chrono::Utc>>,
}

impl MessageInfo {
    /// Information about a message received from `system`; the other fields
    /// are set one by one.
    ///
    /// ```
    /// use eventbus::transport::MessageInfo;
    ///
    /// let mut info = MessageInfo::new("kafka");
    /// info.partition = Some(3);
    /// info.offset = Some(42);
    /// assert_eq!(info.system, "kafka");
    /// ```
    pub fn new(system: &'static str) -> Self {
        MessageInfo {
            system,
            ..MessageInfo::default()
        }
    }
}

/// Settles one received message with the broker.
#[async_trait::async_trait]
pub trait Settle: Send + Sync + fmt::Debug {
    /// Done with the message (handled, duplicate, or dead-lettered): the broker
    /// will not deliver it again to this group. Kafka: its offset becomes
    /// committable. RabbitMQ: `basic.ack`. SQS: `DeleteMessage`.
    async fn ack(self: Box<Self>) -> Result<()>;

    /// Like [`Settle::ack`], but returns only once the broker has recorded the
    /// acknowledgement, so that a crash right after it cannot bring the message
    /// back. At-most-once delivery acknowledges this way before it runs the
    /// handler. Kafka: the offset is committed synchronously instead of by the
    /// next auto-commit (which may be seconds away). The default is
    /// [`Settle::ack`], for brokers that apply an acknowledgement on receipt.
    async fn ack_durably(self: Box<Self>) -> Result<()> {
        self.ack().await
    }

    /// Whether the message can still be settled: `false` once the broker has
    /// taken it back — RabbitMQ: its channel closed, and the broker requeued
    /// every unacknowledged message of it for whichever member of the group
    /// consumes next. A consumer does not start a message that is no longer
    /// current, so that it is not handled beside its redelivery, out of its
    /// key's order. By default always `true`.
    fn is_current(&self) -> bool {
        true
    }

    /// Not done: deliver it again later (to this or another member of the group).
    /// Kafka: the partition is rewound to it, and nothing from it on is
    /// committed until it has come round again. RabbitMQ: `basic.nack` with
    /// requeue. SQS: its visibility timeout set to 0.
    async fn release(self: Box<Self>) -> Result<()>;
}

/// A subscription of one consumer group to its destinations.
///
/// Implementations bound the number of unsettled messages they hand out
/// (prefetch, paused partitions) so a slow consumer never buffers without limit.
#[async_trait::async_trait]
pub trait Subscriber: Send + fmt::Debug {
    /// The next message; `None` once the subscription has ended. Errors are
    /// transient (the implementation reconnects); the caller may call again.
    async fn next(&mut self) -> Option<Result<Received>>;

    /// Stops fetching, lets already-acknowledged work be committed, and leaves
    /// the group.
    async fn close(&mut self) -> Result<()>;
}

/// Compile-time check that the traits stay object safe.
fn _object_safe(_: &dyn Settle, _: &dyn Subscriber) {}
