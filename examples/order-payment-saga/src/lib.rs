//! The order/payment saga: three services — **order**, **inventory**,
//! **payment** — each with its own database, talking through events
//! published with the eventbus outbox and consumed effectively once through
//! the inbox. Two styles side by side: the order service **orchestrates**
//! each order with a saga of the library (`eventbus::saga`: state in its
//! saga table, a scheduled payment timeout), while inventory and payment
//! **choreograph** between themselves, each reacting to the other's events.
//!
//! ```text
//! POST /orders ─► OrderPlaced ─► inventory: StockReserved ─► payment: PaymentCharged ─► order saga: OrderConfirmed
//!    (order saga                      │        │                   │
//!     started)                        │        └► order saga:      ├► PaymentDeclined ─► order saga: OrderCancelled
//!                                     │           PaymentTimedOut  └► (no answer before PaymentTimedOut comes due)
//!                                     │           scheduled             ─► order saga: OrderCancelled
//!                                     └► StockUnavailable ─► order saga: OrderRejected
//!                                                                  OrderCancelled ─► inventory: StockReleased
//!                                                                                 └► payment: PaymentRefunded / void
//! ```
//!
//! The binary (`src/main.rs`) runs the whole saga in one process on SQLite
//! and the in-memory broker by default, or each service on its own against
//! PostgreSQL or MySQL and Kafka, RabbitMQ or SQS. `docs/saga.md` walks
//! through it.

pub mod audit;
pub mod broker;
pub mod db;
pub mod demo;
pub mod events;
pub mod inventory;
pub mod order;
pub mod payment;
pub mod schemas;
pub mod service;
pub mod telemetry;

/// What can go wrong running the saga.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Bad arguments or configuration.
    #[error("{0}")]
    Usage(String),
    /// From the eventbus SDK (outbox, relay, broker).
    #[error(transparent)]
    Eventbus(#[from] eventbus::Error),
    /// From a service's database.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// From the HTTP API or its client.
    #[error("http: {0}")]
    Http(String),
    /// A saga invariant does not hold.
    #[error("invariant violated: {0}")]
    Invariant(String),
}

/// The saga's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Milliseconds since the Unix epoch: the services' clock, portable between
/// their databases.
pub fn now_ms() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}

/// `url` with any password replaced by `***`, for logs and errors.
pub fn redact(url: &str) -> String {
    eventbus::transport::rabbitmq::redact_url(url)
}
