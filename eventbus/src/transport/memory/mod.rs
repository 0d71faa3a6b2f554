//! In-memory transport: a Kafka-like broker inside the process, for dev mode,
//! demos that run the relay and several services in one process, and fast
//! tests of handlers. Always compiled; no broker, no dependency.
//!
//! | module | owns |
//! | --- | --- |
//! | `broker` | [`MemoryBroker`] (configuration, introspection) and [`MemoryPublisher`] |
//! | `cluster` | the shared state: partitioned logs, consumer groups, assignments, settled positions |
//! | `partitioner` | Kafka's partitioner (murmur2) for keyed messages |
//! | `subscriber` | [`MemorySubscriber`]: a group member handing out messages, and its settle handles |
//!
//! # Semantics
//!
//! The broker behaves like Kafka, so that code tried against it behaves the
//! same against the real thing:
//!
//! - **Topics** are append-only logs split into partitions (default
//!   [`DEFAULT_PARTITIONS`], see [`MemoryBroker::with_partitions`]). A message
//!   with a partition key goes to the partition Kafka's Java client (and our
//!   Kafka publisher's `murmur2_random`) would pick for that key, so one key
//!   stays in one partition and in order; messages without a key go round
//!   robin.
//! - **Topics are created on first use**: by
//!   [`Publisher::ensure_destination`](crate::Publisher::ensure_destination),
//!   by the first publish to them, and by a subscription. Production Kafka
//!   clusters often disable auto-creation, but the relay creates its
//!   destinations itself anyway, and in dev mode a forgiving broker beats a
//!   start-up order that must be just right (a service subscribing before the
//!   relay published anything).
//! - **Size limit**: a message whose CloudEvents JSON structured encoding
//!   ([`Envelope::to_json`](crate::Envelope::to_json)) is longer than
//!   [`DEFAULT_MAX_MESSAGE_BYTES`] (see [`MemoryBroker::with_max_message_bytes`])
//!   is [`PublishError::Rejected`](crate::PublishError::Rejected), as Kafka
//!   rejects one above `message.max.bytes`. The structured encoding counts the
//!   attributes too, like the headers that travel with a Kafka record.
//! - **Consumer groups**: every group gets every message (publish-subscribe);
//!   the members of one group split the partitions between them (competing
//!   consumers) and rebalance when a member joins, closes or is dropped. A
//!   group's first subscription starts at the beginning of the log (like
//!   `auto.offset.reset=earliest`); a group remembers its positions after its
//!   last member left.
//! - **Order and lanes**: each partition is handed out in offset order, and
//!   is one [`Received::lane`](crate::transport::Received::lane).
//! - **Settling**: an acknowledgement is applied at once (so
//!   [`Settle::ack_durably`](crate::transport::Settle::ack_durably) is
//!   [`Settle::ack`](crate::transport::Settle::ack)); the group's committed
//!   position of a partition only moves over contiguous acknowledged messages.
//!   A release, or a handle dropped unsettled, rewinds the partition to the
//!   message: it and every later message not acknowledged come round again,
//!   marked [`redelivered`](crate::transport::Received::redelivered). When a
//!   partition moves to another member, its unsettled messages come round
//!   again to the new owner, and settle handles from the old owner no longer
//!   count (an acknowledgement through one is an error; a release does
//!   nothing).
//! - **Backpressure**: a subscriber holds at most
//!   [`DEFAULT_MAX_UNACKED`] unsettled messages (see
//!   [`MemorySubscriber::max_unacked`]); [`Subscriber::next`](crate::transport::Subscriber::next)
//!   waits (without polling) while the bound is reached or nothing is there.
//!
//! Unlike Kafka, a group also remembers acknowledgements past an unsettled
//! message, so after a release or a rebalance only unacknowledged messages
//! come round again, and [`Received::redelivered`](crate::transport::Received::redelivered)
//! says whether the group was handed the message before.
//!
//! # Examples
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> eventbus::Result<()> {
//! use eventbus::transport::memory::MemoryBroker;
//! use eventbus::transport::Subscriber;
//! use eventbus::{Envelope, OutgoingMessage, Publisher};
//!
//! let broker = MemoryBroker::new().with_partitions(2);
//! let mut billing = broker.subscribe("billing", &["orders"]);
//!
//! let mut envelope = Envelope::new(
//!     "urn:service:orders",
//!     "com.example.order.placed",
//!     br#"{"order_id":"o-1"}"#.to_vec(),
//! );
//! envelope.partition_key = Some("o-1".into());
//! let message = OutgoingMessage { destination: "orders".into(), envelope };
//! let publisher = broker.publisher();
//! for result in publisher.publish_batch(&[message]).await {
//!     assert_eq!(result?.offset, Some(0));
//! }
//!
//! let received = billing.next().await.expect("subscribed")?;
//! assert_eq!(received.envelope?.partition_key.as_deref(), Some("o-1"));
//! assert_eq!(broker.pending("billing", "orders"), 1);
//! received.settle.ack().await?;
//! assert_eq!(broker.pending("billing", "orders"), 0);
//! billing.close().await?;
//! # Ok(()) }
//! ```

mod broker;
mod cluster;
mod partitioner;
mod subscriber;

pub use broker::{MemoryBroker, MemoryPublisher, DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_PARTITIONS};
pub use subscriber::{MemorySubscriber, DEFAULT_MAX_UNACKED};
