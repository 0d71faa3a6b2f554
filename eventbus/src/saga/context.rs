//! [`SagaContext`]: what a saga's handler gets besides its state and event —
//! the step's transaction, follow-up events, timeouts, and completion.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::store::PendingTimeout;
use crate::consumer::{Context, TransactionGuard};
use crate::envelope::Envelope;
use crate::error::{Error, Result};
use crate::event::Event;
use crate::outbox::{Metadata, OutboxDatabase, OutboxEntry};

/// A timeout requested in this step, written with the state when the step
/// saves.
#[derive(Debug)]
pub(crate) struct Requested {
    pub(crate) entry: OutboxEntry,
    pub(crate) due: DateTime<Utc>,
}

/// What the handler asked for besides its state change.
#[derive(Debug, Default)]
pub(crate) struct Effects {
    pub(crate) requested: Vec<Requested>,
    pub(crate) cancelled: Vec<Uuid>,
    pub(crate) cancelled_types: Vec<String>,
    pub(crate) complete: bool,
}

/// One step of a saga instance: the consumer's [`Context`] (the transaction
/// the step commits in, with the inbox row and the new state), plus the
/// instance's timeouts and its completion.
///
/// ```no_run
/// # use std::time::Duration;
/// # use eventbus::Event;
/// # #[derive(Event, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
/// # #[event(type = "com.example.payment.due", destination = "order-timeouts", key = order_id)]
/// # struct PaymentDue { order_id: String }
/// # async fn demo(ctx: &eventbus::saga::SagaContext<sqlx::Postgres>) -> Result<(), eventbus::BoxError> {
/// // Wake this instance in 15 minutes unless the saga moves on first.
/// ctx.request_timeout(Duration::from_secs(900), &PaymentDue { order_id: ctx.instance_id().into() })?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct SagaContext<DB: sqlx::Database> {
    ctx: Context<DB>,
    saga: &'static str,
    instance_id: String,
    pending: Vec<PendingTimeout>,
    effects: Mutex<Effects>,
}

impl<DB: OutboxDatabase> SagaContext<DB> {
    pub(crate) fn new(
        ctx: Context<DB>,
        saga: &'static str,
        instance_id: String,
        pending: Vec<PendingTimeout>,
    ) -> Self {
        SagaContext {
            ctx,
            saga,
            instance_id,
            pending,
            effects: Mutex::new(Effects::default()),
        }
    }

    pub(crate) fn take_effects(&self) -> Effects {
        std::mem::take(&mut *self.effects.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// The saga's name.
    pub fn saga(&self) -> &'static str {
        self.saga
    }

    /// The instance's correlation id.
    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    /// The CloudEvent being handled.
    pub fn envelope(&self) -> &Envelope {
        self.ctx.envelope()
    }

    /// Which delivery attempt this is, starting at 1.
    pub fn attempt(&self) -> u32 {
        self.ctx.attempt()
    }

    /// The timeouts the instance waited for when the step began (the one
    /// being handled, if this is a timeout, no longer among them).
    pub fn pending_timeouts(&self) -> &[PendingTimeout] {
        &self.pending
    }

    /// The step's transaction, for the service's own writes: they commit
    /// with the inbox row and the instance's new state, or not at all.
    ///
    /// # Errors
    ///
    /// As for [`Context::tx`].
    pub async fn tx(&self) -> Result<TransactionGuard<DB>> {
        self.ctx.tx().await
    }

    /// Publishes a follow-up event in the step's transaction, as
    /// [`Context::publish`] does.
    ///
    /// # Errors
    ///
    /// As for [`Context::publish`].
    pub async fn publish<E: Event>(&self, event: &E) -> Result<Uuid> {
        self.ctx.publish(event).await
    }

    /// Schedules `timeout` for this instance, due `after` from now: it is
    /// written to the outbox's scheduled table when the step commits, and
    /// comes back to the saga's handler for its type (registered with
    /// [`SagaDefinition::timeout`](super::SagaDefinition::timeout)) unless
    /// it is cancelled or the saga completes first. Returns its id.
    ///
    /// # Errors
    ///
    /// As for [`Outbox::entry`](crate::Outbox::entry) (an event that does
    /// not serialize), and [`Error::Config`] for a delay out of range.
    pub fn request_timeout<T: Event>(&self, after: Duration, timeout: &T) -> Result<Uuid> {
        let due = chrono::TimeDelta::from_std(after)
            .ok()
            .and_then(|d| Utc::now().checked_add_signed(d))
            .ok_or_else(|| Error::config(format!("a timeout of {after:?} is out of range")))?;
        self.request_timeout_at(due, timeout)
    }

    /// Schedules `timeout` for this instance, due at `due`; see
    /// [`request_timeout`](Self::request_timeout).
    ///
    /// # Errors
    ///
    /// As for [`request_timeout`](Self::request_timeout).
    pub fn request_timeout_at<T: Event>(&self, due: DateTime<Utc>, timeout: &T) -> Result<Uuid> {
        let mut meta = Metadata::caused_by(self.ctx.envelope());
        if let Some(trace) = self.ctx.trace_context() {
            meta.traceparent = Some(trace.traceparent());
            meta.tracestate = trace.tracestate().map(str::to_owned);
        }
        let entry = self.ctx.outbox().entry(timeout, &meta)?;
        let id = entry.event_id;
        self.effects
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .requested
            .push(Requested { entry, due });
        Ok(id)
    }

    /// Cancels timeout `id` when the step commits: it is never handled,
    /// even if it was already on its way.
    pub fn cancel_timeout(&self, id: Uuid) {
        self.effects
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .cancelled
            .push(id);
    }

    /// Cancels every pending timeout of type `T` when the step commits.
    pub fn cancel_timeouts<T: Event>(&self) {
        self.effects
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .cancelled_types
            .push(T::TYPE.to_owned());
    }

    /// Completes the instance when the step commits: its pending timeouts
    /// are cancelled, and its later events follow the
    /// [completed-instance rule](super::SagaDefinition::when_completed).
    pub fn complete(&self) {
        self.effects
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .complete = true;
    }
}
