//! [`Context`] and [`BatchContext`]: what a handler gets besides its events —
//! the envelopes, the attempt number, and the database transaction its writes
//! (and follow-up events) commit in.

use std::sync::Arc;

use tokio::sync::{Mutex, OwnedMappedMutexGuard, OwnedMutexGuard};
use uuid::Uuid;

use crate::envelope::Envelope;
use crate::error::{Error, Result};
use crate::event::Event;
use crate::outbox::{Metadata, Outbox, OutboxDatabase};
use crate::telemetry::TraceContext;

/// The handler's transaction, locked for as long as this guard lives:
/// dereferences to [`sqlx::Transaction`] (`&mut **guard` is an executor).
pub type TransactionGuard<DB> =
    OwnedMappedMutexGuard<Option<sqlx::Transaction<'static, DB>>, sqlx::Transaction<'static, DB>>;

/// The handler's view of the message being handled. Cheap to clone; all clones
/// share one transaction, which the consumer commits after the handler
/// returns `Ok` (together with the inbox row in effectively-once mode).
#[derive(Debug)]
pub struct Context<DB: sqlx::Database> {
    inner: Arc<Inner<DB>>,
}

#[derive(Debug)]
struct Inner<DB: sqlx::Database> {
    envelope: Envelope,
    attempt: u32,
    outbox: Outbox,
    tx: SharedTx<DB>,
    /// The consumer's `process` span, when there is one (`otel` feature).
    trace: Option<TraceContext>,
}

/// The handler's transaction, shared with the guards handed out: an owned
/// guard (unlike a borrowed one) is `Send` across the handler's `.await`s,
/// which a borrowed `MappedMutexGuard` is not for a transaction type with a
/// lifetime.
#[derive(Debug)]
struct SharedTx<DB: sqlx::Database>(Arc<Mutex<Option<sqlx::Transaction<'static, DB>>>>);

impl<DB: sqlx::Database> SharedTx<DB> {
    fn new(tx: sqlx::Transaction<'static, DB>) -> Self {
        SharedTx(Arc::new(Mutex::new(Some(tx))))
    }

    async fn lock(&self) -> Result<TransactionGuard<DB>> {
        let guard = Arc::clone(&self.0).lock_owned().await;
        OwnedMutexGuard::try_map(guard, Option::as_mut)
            .map_err(|_| Error::config("the handler's transaction is already finished"))
    }

    async fn take(&self) -> Option<sqlx::Transaction<'static, DB>> {
        self.0.lock().await.take()
    }
}

impl<DB: sqlx::Database> Clone for Context<DB> {
    fn clone(&self) -> Self {
        Context {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<DB: sqlx::Database> Context<DB> {
    pub(crate) fn new(
        envelope: Envelope,
        attempt: u32,
        outbox: Outbox,
        tx: sqlx::Transaction<'static, DB>,
        trace: Option<TraceContext>,
    ) -> Self {
        Context {
            inner: Arc::new(Inner {
                envelope,
                attempt,
                outbox,
                tx: SharedTx::new(tx),
                trace,
            }),
        }
    }

    /// The trace context the handler runs in: the consumer's `process` span
    /// (`otel` feature), else the one the message carried, if any. Log it, or
    /// hand it to calls to other services, to keep them in the trace.
    pub fn trace_context(&self) -> Option<TraceContext> {
        self.inner
            .trace
            .clone()
            .or_else(|| TraceContext::of(&self.inner.envelope))
    }

    /// The CloudEvent being handled: ids, correlation, causation, trace context.
    pub fn envelope(&self) -> &Envelope {
        &self.inner.envelope
    }

    /// Which delivery attempt this is, starting at 1.
    pub fn attempt(&self) -> u32 {
        self.inner.attempt
    }

    /// The transaction the handler's writes belong to.
    ///
    /// ```no_run
    /// # async fn demo(ctx: eventbus::consumer::Context<sqlx::Postgres>) -> Result<(), eventbus::BoxError> {
    /// let mut tx = ctx.tx().await?;
    /// sqlx::query("UPDATE stock SET reserved = reserved + 1 WHERE sku = 'a'")
    ///     .execute(&mut **tx)
    ///     .await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if called after the handler finished.
    pub async fn tx(&self) -> Result<TransactionGuard<DB>> {
        self.inner.tx.lock().await
    }

    /// Publishes a follow-up event through the outbox in the handler's
    /// transaction, with correlation and causation taken from the message
    /// being handled. Its trace context is the consumer's `process` span
    /// (`otel` feature), so the event's `publish` span is that span's child and
    /// a whole saga is one trace; without the feature, the message's own trace
    /// context is passed on.
    ///
    /// # Errors
    ///
    /// As for [`Outbox::publish`].
    pub async fn publish<E: Event>(&self, event: &E) -> Result<Uuid>
    where
        DB: OutboxDatabase,
    {
        let mut meta = Metadata::caused_by(&self.inner.envelope);
        if let Some(trace) = &self.inner.trace {
            meta.traceparent = Some(trace.traceparent());
            meta.tracestate = trace.tracestate().map(str::to_owned);
        }
        let mut tx = self.tx().await?;
        self.inner.outbox.publish_with(&mut tx, event, &meta).await
    }

    /// Takes the transaction back once the handler is done.
    pub(crate) async fn finish(&self) -> Option<sqlx::Transaction<'static, DB>> {
        self.inner.tx.take().await
    }
}

/// A batch handler's view of the messages being handled: their envelopes, in
/// the order of the events the handler got, the attempt number, and the one
/// transaction the whole batch commits in. Cheap to clone; all clones share
/// the transaction, which the consumer commits after the handler returns `Ok`
/// (together with the inbox rows in effectively-once mode).
///
/// A batch has no single envelope: follow-up events name the event that caused
/// them with [`BatchContext::publish_caused_by`].
#[derive(Debug)]
pub struct BatchContext<DB: sqlx::Database> {
    inner: Arc<BatchInner<DB>>,
}

#[derive(Debug)]
struct BatchInner<DB: sqlx::Database> {
    envelopes: Vec<Envelope>,
    attempt: u32,
    outbox: Outbox,
    tx: SharedTx<DB>,
}

impl<DB: sqlx::Database> Clone for BatchContext<DB> {
    fn clone(&self) -> Self {
        BatchContext {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<DB: sqlx::Database> BatchContext<DB> {
    pub(crate) fn new(
        envelopes: Vec<Envelope>,
        attempt: u32,
        outbox: Outbox,
        tx: sqlx::Transaction<'static, DB>,
    ) -> Self {
        BatchContext {
            inner: Arc::new(BatchInner {
                envelopes,
                attempt,
                outbox,
                tx: SharedTx::new(tx),
            }),
        }
    }

    /// The CloudEvents being handled: `envelopes()[i]` carries `events[i]` of
    /// the handler's arguments (ids, correlation, causation, trace context).
    pub fn envelopes(&self) -> &[Envelope] {
        &self.inner.envelopes
    }

    /// Which attempt this is, starting at 1. A batch is tried once; after a
    /// failure its halves are tried anew (attempt 1), and an event left alone
    /// counts its retries from 1 too.
    pub fn attempt(&self) -> u32 {
        self.inner.attempt
    }

    /// The transaction the whole batch's writes belong to; see [`Context::tx`].
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if called after the handler finished.
    pub async fn tx(&self) -> Result<TransactionGuard<DB>> {
        self.inner.tx.lock().await
    }

    /// Publishes a follow-up event through the outbox in the batch's
    /// transaction, with correlation, causation and trace context taken from
    /// `cause` (one of [`envelopes`](Self::envelopes)).
    ///
    /// ```no_run
    /// # use eventbus::Event;
    /// # #[derive(Event, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
    /// # #[event(type = "com.example.invoice.issued", destination = "invoices", key = order_id)]
    /// # struct InvoiceIssued { order_id: String }
    /// # async fn demo(ctx: eventbus::consumer::BatchContext<sqlx::Postgres>, ids: Vec<String>)
    /// #     -> Result<(), eventbus::BoxError> {
    /// for (envelope, order_id) in ctx.envelopes().iter().zip(ids) {
    ///     ctx.publish_caused_by(envelope, &InvoiceIssued { order_id }).await?;
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As for [`Outbox::publish`].
    pub async fn publish_caused_by<E: Event>(&self, cause: &Envelope, event: &E) -> Result<Uuid>
    where
        DB: OutboxDatabase,
    {
        let meta = Metadata::caused_by(cause);
        let mut tx = self.tx().await?;
        self.inner.outbox.publish_with(&mut tx, event, &meta).await
    }

    /// Takes the transaction back once the handler is done.
    pub(crate) async fn finish(&self) -> Option<sqlx::Transaction<'static, DB>> {
        self.inner.tx.take().await
    }
}
