//! Sagas (process managers): long-running workflows driven by events, with
//! their state kept in the service's own database.
//!
//! A saga is a serde type implementing [`Saga`]. Each event type it reacts
//! to names the instance it belongs to (its **correlation id**, taken from
//! the event) and has a handler: [`StartedBy`] creates an instance,
//! [`Handles`] moves an existing one on. A [`SagaDefinition`] lists them and
//! joins a consumer with [`ConsumerBuilder::saga`](crate::consumer::ConsumerBuilder::saga).
//!
//! Each step — one event applied to one instance — runs in the consumer's
//! transaction and commits in one piece: the inbox row (a duplicate
//! delivery finds it and changes nothing), the instance's new state, the
//! service's own writes, the events it published and the timeouts it
//! scheduled or cancelled. Steps of one instance are serialized by a row
//! lock on the instance, so two events of one instance handled at once by
//! two consumer processes apply one after the other, each seeing the state
//! the other left.
//!
//! **Timeouts** are scheduled events ([`Outbox::publish_at`](crate::Outbox::publish_at))
//! addressed to the instance: [`SagaContext::request_timeout`] writes one
//! and records its id with the instance. It comes back through the broker
//! to the handler registered with [`SagaDefinition::timeout`], which runs
//! only if the instance still waits for that id: a timeout cancelled, or
//! one that arrives after the saga completed, is ignored by that rule, even
//! if it was already on its way when the saga moved on.
//!
//! An event whose instance does not exist, or has completed, follows the
//! rules [`SagaDefinition::when_missing`] and
//! [`SagaDefinition::when_completed`] (default: [`Unmatched::Ignore`]).
//!
//! ```no_run
//! # #[cfg(feature = "postgres")]
//! # mod demo {
//! use std::time::Duration;
//! use eventbus::saga::{Handles, Saga, SagaContext, SagaDatabase, SagaDefinition, StartedBy};
//! use eventbus::{BoxError, Event};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Event, Serialize, Deserialize, schemars::JsonSchema)]
//! #[event(type = "com.example.order.placed", destination = "orders", key = order_id)]
//! struct OrderPlaced { order_id: String }
//!
//! #[derive(Event, Serialize, Deserialize, schemars::JsonSchema)]
//! #[event(type = "com.example.payment.charged", destination = "payments", key = order_id)]
//! struct PaymentCharged { order_id: String }
//!
//! #[derive(Event, Serialize, Deserialize, schemars::JsonSchema)]
//! #[event(type = "com.example.order.payment_due", destination = "order-timeouts", key = order_id)]
//! struct PaymentDue { order_id: String }
//!
//! #[derive(Event, Serialize, Deserialize, schemars::JsonSchema)]
//! #[event(type = "com.example.order.cancelled", destination = "orders", key = order_id)]
//! struct OrderCancelled { order_id: String }
//!
//! #[derive(Serialize, Deserialize)]
//! struct Checkout { paid: bool }
//!
//! impl Saga for Checkout {
//!     const NAME: &'static str = "checkout";
//! }
//!
//! #[eventbus::saga::async_trait]
//! impl<DB: SagaDatabase> StartedBy<OrderPlaced, DB> for Checkout {
//!     fn correlate(e: &OrderPlaced) -> String { e.order_id.clone() }
//!     async fn start(ctx: &SagaContext<DB>, e: OrderPlaced) -> Result<Self, BoxError> {
//!         ctx.request_timeout(Duration::from_secs(900), &PaymentDue { order_id: e.order_id })?;
//!         Ok(Checkout { paid: false })
//!     }
//! }
//!
//! #[eventbus::saga::async_trait]
//! impl<DB: SagaDatabase> Handles<PaymentCharged, DB> for Checkout {
//!     fn correlate(e: &PaymentCharged) -> String { e.order_id.clone() }
//!     async fn handle(&mut self, ctx: &SagaContext<DB>, _: PaymentCharged) -> Result<(), BoxError> {
//!         self.paid = true;
//!         ctx.complete(); // cancels the pending PaymentDue
//!         Ok(())
//!     }
//! }
//!
//! #[eventbus::saga::async_trait]
//! impl<DB: SagaDatabase> Handles<PaymentDue, DB> for Checkout {
//!     fn correlate(e: &PaymentDue) -> String { e.order_id.clone() }
//!     async fn handle(&mut self, ctx: &SagaContext<DB>, e: PaymentDue) -> Result<(), BoxError> {
//!         ctx.publish(&OrderCancelled { order_id: e.order_id }).await?;
//!         ctx.complete();
//!         Ok(())
//!     }
//! }
//!
//! fn checkout() -> SagaDefinition<Checkout, sqlx::Postgres> {
//!     SagaDefinition::new()
//!         .starts::<OrderPlaced>()
//!         .handles::<PaymentCharged>()
//!         .timeout::<PaymentDue>()
//! }
//! # }
//! ```
//!
//! `docs/sagas.md` explains the model, the guarantees and the rules.

mod context;
mod definition;
mod store;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::BoxError;
use crate::event::Event;

/// The attribute the saga traits' impls take (`#[eventbus::saga::async_trait]`),
/// re-exported so a service needs no dependency of its own for it.
pub use async_trait::async_trait;
pub use context::SagaContext;
pub use definition::{SagaDefinition, Unmatched};
pub use store::{
    PendingTimeout, SagaCount, SagaDatabase, SagaInstance, SagaQuery, SagaRecord, SagaStatus,
    Sagas, DEFAULT_TABLE, MAX_INSTANCE_ID,
};

#[doc(hidden)]
pub use store::StoredInstance;

pub(crate) use store::default_table;
#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
pub(crate) use store::{time, Row};

/// A saga's state: stored as JSON in the saga table, one row per instance,
/// under the saga's [`NAME`](Self::NAME).
///
/// Change the type as you would an event's payload: an instance saved by
/// the previous version must still deserialize (add fields with defaults).
pub trait Saga: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The saga's name: its instances are stored under it, and inspection
    /// (`outbox-relay sagas`) shows it. Never change it while instances live.
    const NAME: &'static str;
}

/// `E` starts an instance of this saga.
///
/// If an active instance with the event's correlation id exists already,
/// the event changes nothing (a second start is not a step), unless the saga
/// also [handles](Handles) `E` and was registered with
/// [`SagaDefinition::starts_or_handles`]: then it is handled as a step of
/// that instance.
#[async_trait::async_trait]
pub trait StartedBy<E: Event, DB: SagaDatabase>: Saga {
    /// The instance `event` starts: its correlation id (1 to
    /// [`MAX_INSTANCE_ID`] bytes).
    fn correlate(event: &E) -> String;

    /// The new instance's state. Whatever the handler does through `ctx`
    /// commits with it.
    async fn start(ctx: &SagaContext<DB>, event: E) -> Result<Self, BoxError>;
}

/// `E` moves an existing instance of this saga on.
#[async_trait::async_trait]
pub trait Handles<E: Event, DB: SagaDatabase>: Saga {
    /// The instance `event` belongs to: its correlation id.
    fn correlate(event: &E) -> String;

    /// Applies `event` to the instance's state. An error rolls the whole
    /// step back (state, writes, events, timeouts); the consumer retries it
    /// per its policy.
    async fn handle(&mut self, ctx: &SagaContext<DB>, event: E) -> Result<(), BoxError>;
}
