//! Kafka transport (rdkafka): [`KafkaPublisher`] sends envelopes in the
//! CloudEvents Kafka protocol binding (binary mode) and sorts broker failures
//! into "broker unavailable" and "message rejected"; [`KafkaSubscriber`] reads
//! them back as a member of a consumer group; [`envelope_from_message`] decodes
//! one message, in binary or structured mode.
//!
//! | module | owns |
//! | --- | --- |
//! | this one | the public names of the transport |
//! | `codec` | the wire format: envelope ↔ Kafka headers, key and value |
//! | `settings` | librdkafka properties and the redaction of secrets in them |
//! | `publisher` | [`KafkaPublisher`] and its builder: idempotent producer, pipelined batches, topic creation |
//! | `classify` | sorting send failures into unavailable and rejected; topic metadata probes |
//! | `subscriber` | [`KafkaSubscriber`] and its builder: consumer groups, receiving |
//! | `partitions` | per-partition buffers, lanes and the offsets of acknowledged messages only |
//! | `settle` | acknowledging and releasing one received message |
//! | `rebalance` | what happens when partitions are assigned or revoked |
//!
//! # Wire format
//!
//! The CloudEvents Kafka protocol binding, binary mode:
//!
//! | Kafka | value |
//! | --- | --- |
//! | topic | the destination |
//! | key | the `partitionkey` extension (the ordering key) |
//! | value | the payload bytes |
//! | header `ce_<attr>` | every attribute except `datacontenttype` |
//! | header `content-type` | `datacontenttype` (`application/json` when unset) |
//! | headers `traceparent`, `tracestate` | the W3C trace context, when set |
//!
//! Received messages may also be in structured mode, as other CloudEvents
//! SDKs send them: header `content-type: application/cloudevents+json` and
//! the whole event, `data` included, as the value (the key still maps to
//! `partitionkey` when the event has none). A structured message that is not
//! a JSON CloudEvent fails to decode like a malformed binary one, and the
//! consumer dead-letters it the same way.
//!
//! # Consumer groups
//!
//! Subscribers sharing a group id split the partitions of their topics between
//! them (point-to-point); every group gets every message (publish-subscribe).
//! Each partition is handled in offset order. See [`KafkaSubscriber`].

mod classify;
mod codec;
mod partitions;
mod publisher;
mod rebalance;
mod settings;
mod settle;
mod subscriber;

pub use codec::envelope_from_message;
pub use publisher::{KafkaPublisher, KafkaPublisherBuilder};
pub use subscriber::{KafkaSubscriber, KafkaSubscriberBuilder, DEFAULT_MAX_IN_FLIGHT};

/// The rdkafka crate this transport is built on, re-exported so consumers and
/// tests name the same version as [`envelope_from_message`] expects.
pub use rdkafka;

/// Prefix of the CloudEvents attribute headers in the Kafka binding.
pub const HEADER_PREFIX: &str = "ce_";

/// The Kafka binding's header for `datacontenttype`.
pub const CONTENT_TYPE_HEADER: &str = "content-type";
