//! Broker transports: the [`Publisher`] trait the relay sends through, the
//! [`Subscriber`] consumers read from, and their implementations per broker:
//! Kafka, RabbitMQ and Amazon SQS (behind the `kafka`, `rabbitmq` and `sqs`
//! features) and the in-process [`memory`] broker (always compiled: dev mode,
//! demos, tests).

use std::fmt;

use crate::envelope::Envelope;

mod error;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod memory;
#[cfg(feature = "rabbitmq")]
pub mod rabbitmq;
#[cfg(feature = "sqs")]
pub mod sqs;
mod subscription;
#[cfg(test)]
mod testing;

pub use error::{BoxedSource, Cause, PublishError, TransportError, TransportErrorKind};
pub use subscription::{MessageInfo, Received, Settle, Subscriber};

/// An event on its way to the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingMessage {
    /// The broker-level destination: Kafka topic or RabbitMQ exchange.
    pub destination: String,
    /// The event; its `partition_key` becomes the Kafka key.
    pub envelope: Envelope,
}

/// Where the broker put an acknowledged message, when it says.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Delivered {
    /// Kafka partition.
    pub partition: Option<i32>,
    /// Kafka offset.
    pub offset: Option<i64>,
    /// The broker took the message but routed it to no consumer (RabbitMQ: no
    /// queue bound for its routing key), and the destination's policy says to
    /// drop such messages: it counts as published, and the relay counts it in
    /// `eventbus_relay_unroutable_total`.
    pub unroutable: bool,
}

/// Sends events to a broker and waits for its acknowledgement.
///
/// Implementations pipeline a batch (send all, then await all acknowledgements)
/// and report one result per message, in input order. Messages with the same
/// destination and partition key must reach the broker in input order; when one
/// is rejected before it left the client, the later ones of its key are not sent
/// and report [`PublishError::NotSent`].
#[async_trait::async_trait]
pub trait Publisher: Send + Sync + fmt::Debug + 'static {
    /// The OpenTelemetry `messaging.system` name, e.g. `kafka`, `rabbitmq`.
    fn system(&self) -> &'static str;

    /// Publishes `messages`; one result per message, in the same order.
    async fn publish_batch(
        &self,
        messages: &[OutgoingMessage],
    ) -> Vec<Result<Delivered, PublishError>>;

    /// Creates `destination` (topic, exchange) if it does not exist.
    async fn ensure_destination(&self, destination: &str) -> Result<(), PublishError>;

    /// Creates the dead-letter destination `destination` of one consumer
    /// group so that what is published to it is kept: RabbitMQ declares a
    /// durable queue of the same name bound to the exchange (an exchange alone
    /// would drop the letters). By default the same as
    /// [`ensure_destination`](Self::ensure_destination), for brokers that
    /// keep what a destination receives.
    async fn ensure_dead_letter_destination(&self, destination: &str) -> Result<(), PublishError> {
        self.ensure_destination(destination).await
    }

    /// Drops whatever was handed over but has not left the client yet. The
    /// relay calls it when its lease lapsed while a batch was in flight: from
    /// then on another relay may publish those keys, and a late send of the
    /// old batch would land after its newer events. What is already on the
    /// wire cannot be recalled. By default nothing is kept back, so there is
    /// nothing to drop.
    async fn abandon(&self) {}
}

/// Compile-time check that [`Publisher`] stays object safe.
fn _publisher_is_object_safe(_: &dyn Publisher) {}
