//! Telemetry: the W3C trace context every event carries ([`TraceContext`]),
//! OpenTelemetry spans for the async gap (behind the `otel` feature), and the
//! Prometheus text exposition relays and consumers render their metrics in
//! ([`Exposition`]).
//!
//! # Traces
//!
//! With the `otel` feature, eventbus creates spans through the
//! [`opentelemetry`] API (install any SDK tracer provider to export them):
//!
//! | span | kind | parent | where |
//! | --- | --- | --- | --- |
//! | `publish <destination>` | producer | the active context, or `Metadata::traceparent` | [`Outbox::publish`](crate::Outbox::publish) and friends, in the business transaction |
//! | `send <destination>` | producer | the `publish` span stored in the outbox row | the relay, per row |
//! | `process <destination>` | consumer | the `send` span the message carries | the consumer, per message (retries included) |
//! | `process <destination>` (batch) | consumer | none; linked to every message | the consumer, per batch |
//!
//! Each span's context travels on: `publish` into the outbox row's
//! `traceparent`/`tracestate`, `send` into the broker message (CloudEvents
//! extension *and* plain `traceparent`/`tracestate` headers), and `process`
//! into the events a handler publishes through
//! [`Context::publish`](crate::consumer::Context::publish). A saga is thus one
//! trace: `publish → send → process → publish → send → process`. A message
//! from another producer with only a plain `traceparent` header is continued
//! too. Attribute names follow the OpenTelemetry messaging semantic
//! conventions; see [`attributes`] and `docs/observability.md`.
//!
//! An application that exports its `tracing` spans through a
//! `tracing-opentelemetry` layer gets the same trace, each span once: the
//! consumer's `process` `tracing` span (see below) is then the exported
//! `process` span rather than a copy of it (`docs/observability.md`,
//! "Applications on `tracing-opentelemetry`").
//!
//! Without the feature, the trace context given in
//! [`Metadata`](crate::Metadata) (or received) still travels unchanged.
//!
//! ```no_run
//! # #[cfg(all(feature = "otel", feature = "postgres", feature = "macros"))]
//! # async fn demo(pool: sqlx::PgPool) -> eventbus::Result<()> {
//! use eventbus::telemetry::TraceContext;
//! use eventbus::{Event, Outbox};
//! use opentelemetry::trace::{FutureExt as _, TraceContextExt as _, Tracer as _};
//!
//! #[derive(Event, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
//! #[event(type = "com.example.order.placed", destination = "orders", key = order_id)]
//! struct OrderPlaced { order_id: String }
//!
//! let tracer = opentelemetry::global::tracer("shop");
//! let request = opentelemetry::Context::current_with_span(tracer.start("POST /orders"));
//! let outbox = Outbox::new("urn:service:orders");
//! async {
//!     let mut tx = pool.begin().await?;
//!     // The `publish` span is a child of "POST /orders"; its context is
//!     // stored with the event and continued by the relay and every consumer.
//!     outbox.publish(&mut tx, &OrderPlaced { order_id: "o-1".into() }).await?;
//!     tx.commit().await?;
//!     let trace = TraceContext::current().map(|tc| tc.trace_id());
//!     tracing::info!(trace_id = ?trace, "order placed");
//!     Ok::<_, eventbus::Error>(())
//! }
//! .with_context(request)
//! .await
//! # }
//! ```
//!
//! Log lines written while a message is sent or handled are inside a
//! `tracing` span named `send` or `process` with `trace_id` and `span_id`
//! fields, so a `tracing-subscriber` `fmt` layer prints the trace id on each.
//!
//! # Metrics
//!
//! [`RelayMetrics`](crate::relay::RelayMetrics) and
//! [`ConsumerMetrics`](crate::consumer::ConsumerMetrics) count and time what
//! happens. They record through the [`metrics`] facade into the recorder the
//! application installs (relay series labelled `relay` and `outbox`, consumer
//! series `group`), and render the same figures in the Prometheus text
//! format, alone or together through an [`Exposition`] (what `outbox-relay`
//! serves). `docs/observability.md` lists every metric;
//! `docs/adr/0013-metrics-facade.md` says why both.
//!
//! ```
//! use eventbus::consumer::ConsumerMetrics;
//! use metrics_util::debugging::DebuggingRecorder;
//!
//! let recorder = DebuggingRecorder::new();
//! let snapshotter = recorder.snapshotter();
//! // Built while the application's recorder is in force: registered with it.
//! let metrics = metrics::with_local_recorder(&recorder, || ConsumerMetrics::new("billing"));
//! let names: Vec<String> = snapshotter
//!     .snapshot()
//!     .into_vec()
//!     .into_iter()
//!     .map(|(key, ..)| key.key().name().to_owned())
//!     .collect();
//! assert!(names.iter().any(|n| n == "eventbus_consumer_handled_total"));
//! assert_eq!(metrics.handled(), 0);
//! ```

mod exposition;
pub(crate) mod facade;
pub(crate) mod span;
mod trace_context;

pub use exposition::Exposition;
pub(crate) use exposition::{Histogram, LATENCY_BUCKETS, SIZE_BUCKETS, WAIT_BUCKETS};
pub use trace_context::TraceContext;

/// The OpenTelemetry instrumentation scope of eventbus's spans.
pub const INSTRUMENTATION_SCOPE: &str = "eventbus";

/// `messaging.operation.name` of the outbox's span (type `create`).
pub const PUBLISH: &str = "publish";
/// `messaging.operation.name` of the relay's span (type `send`).
pub const SEND: &str = "send";
/// `messaging.operation.name` of the consumer's span (type `process`).
pub const PROCESS: &str = "process";

/// The span attributes eventbus sets: OpenTelemetry messaging semantic
/// conventions first, then its own under `eventbus.*`.
pub mod attributes {
    /// `kafka`, `rabbitmq` or `memory` (send and process spans).
    pub const MESSAGING_SYSTEM: &str = "messaging.system";
    /// The topic or exchange (the outbox's logical destination on publish).
    pub const DESTINATION: &str = "messaging.destination.name";
    /// `publish`, `send` or `process`.
    pub const OPERATION_NAME: &str = "messaging.operation.name";
    /// `create` (publish), `send` or `process`.
    pub const OPERATION_TYPE: &str = "messaging.operation.type";
    /// The CloudEvents `id`.
    pub const MESSAGE_ID: &str = "messaging.message.id";
    /// The payload size in bytes.
    pub const BODY_SIZE: &str = "messaging.message.body.size";
    /// The consumer group (process spans).
    pub const CONSUMER_GROUP: &str = "messaging.consumer.group.name";
    /// Messages in a batch (batch process spans).
    pub const BATCH_COUNT: &str = "messaging.batch.message_count";
    /// The Kafka partition (send spans once acknowledged, process spans).
    pub const PARTITION: &str = "messaging.destination.partition.id";
    /// The Kafka message key: the event's partition key.
    pub const KAFKA_KEY: &str = "messaging.kafka.message.key";
    /// The Kafka offset.
    pub const KAFKA_OFFSET: &str = "messaging.kafka.offset";
    /// The RabbitMQ routing key: the CloudEvents `type`.
    pub const RABBITMQ_ROUTING_KEY: &str = "messaging.rabbitmq.destination.routing_key";
    /// The class of a failure, on failed spans.
    pub const ERROR_TYPE: &str = "error.type";
    /// The CloudEvents `type`.
    pub const EVENT_TYPE: &str = "cloudevents.event_type";
    /// The CloudEvents `source`.
    pub const EVENT_SOURCE: &str = "cloudevents.event_source";
    /// The CloudEvents `subject`.
    pub const EVENT_SUBJECT: &str = "cloudevents.event_subject";
    /// The ordering key (publish spans).
    pub const PARTITION_KEY: &str = "eventbus.partition_key";
    /// The outbox table (publish spans).
    pub const OUTBOX_TABLE: &str = "eventbus.outbox.table";
    /// The outbox row id (send spans).
    pub const OUTBOX_ROW: &str = "eventbus.outbox.id";
    /// Milliseconds from the outbox write to the broker's acknowledgement
    /// (send spans).
    pub const OUTBOX_WAIT_MS: &str = "eventbus.outbox.wait_ms";
    /// Milliseconds the message waited in the broker before its handler
    /// started (process spans, when the broker says when it took the message).
    pub const BROKER_WAIT_MS: &str = "eventbus.broker.wait_ms";
    /// Attempts made: the send attempt of a row, the handler attempts of a
    /// message.
    pub const ATTEMPT: &str = "eventbus.attempt";
    /// How handling ended: `handled`, `duplicate`, `dead_lettered`, `released`.
    pub const OUTCOME: &str = "eventbus.outcome";
}
