//! # eventbus
//!
//! Typed domain events, published atomically with your business data through a
//! transactional **outbox**, forwarded to Kafka or RabbitMQ by a **relay**, and
//! consumed effectively once through an **inbox**. Every event travels in a
//! CloudEvents 1.0 [`Envelope`] with its schema version and trace context.
//!
//! ```no_run
//! # #[cfg(feature = "postgres")]
//! # async fn demo() -> eventbus::Result<()> {
//! use eventbus::{Event, Outbox};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Event, Serialize, Deserialize, schemars::JsonSchema)]
//! #[event(type = "com.example.order.placed", version = 1, destination = "orders", key = order_id)]
//! struct OrderPlaced { order_id: String, amount_cents: i64 }
//!
//! let pool = sqlx::PgPool::connect("postgres://postgres@127.0.0.1/shop").await?;
//! eventbus::migrate(&pool).await?;
//!
//! let outbox = Outbox::new("urn:service:orders");
//! let mut tx = pool.begin().await?;
//! outbox.publish(&mut tx, &OrderPlaced { order_id: "o-1".into(), amount_cents: 990 }).await?;
//! tx.commit().await?;
//! # Ok(()) }
//! ```
//!
//! ## Feature flags
//!
//! | feature    | default | what it adds |
//! |------------|---------|--------------|
//! | `macros`   | yes     | `#[derive(Event)]` |
//! | `postgres` | yes     | PostgreSQL outbox, inbox, migrations and relay store |
//! | `sqlite`   | no      | SQLite outbox, inbox, migrations and relay store (bundled SQLite; one relay per database file) |
//! | `mysql`    | no      | MySQL 8 / MariaDB 10.6+ outbox, inbox, migrations and relay store; commit order through per-partition write locks (module `mysql`) |
//! | `kafka`    | no      | Kafka transport (rdkafka; builds librdkafka) |
//! | `rabbitmq` | no      | RabbitMQ transport (lapin, publisher confirms) |
//! | `sqs`      | no      | Amazon SQS transport (aws-sdk-sqs; standard and FIFO queues, see [`transport::sqs`]) |
//! | `otel`     | no      | OpenTelemetry `publish`/`send`/`process` spans and trace context captured at publish (see [`telemetry`]) |
//! | `full`     | no      | all of the above |
//!
//! Always compiled: the in-process broker [`transport::memory`] (topics,
//! consumer groups, acknowledgement and redelivery like Kafka) for dev mode,
//! demos and fast tests of handlers.

pub mod backend;
mod backoff;
pub mod consumer;
mod dead_letter;
pub mod envelope;
mod error;
pub mod event;
mod hash;
pub mod inbox;
pub mod migrate;
pub mod outbox;
pub mod redact;
pub mod relay;
pub mod saga;
pub mod schema;
mod table;
pub mod telemetry;
// Used by the tests of the log relay's decoders, which need PostgreSQL.
#[cfg(all(test, feature = "postgres"))]
mod test_rng;
pub mod transport;

#[cfg(feature = "mysql")]
#[doc(inline)]
pub use backend::mysql;
#[cfg(feature = "sqlite")]
#[doc(inline)]
pub use backend::sqlite;
pub use envelope::{Envelope, EnvelopeError};
pub use error::{BoxError, Error, Result};
pub use event::Event;
pub use inbox::{Delivery, Inbox, Processed};
pub use migrate::{migrate, Migrator};
pub use outbox::{Metadata, Outbox, OutboxEntry, OutboxRecord};
pub use table::TableName;
pub use transport::{OutgoingMessage, PublishError, Publisher, TransportError};

/// Derives [`Event`]; see [`eventbus_macros::Event`] for the attributes.
#[cfg(feature = "macros")]
pub use eventbus_macros::Event;

// Re-exported so users and generated code name the same versions.
pub use schemars;
pub use uuid;
