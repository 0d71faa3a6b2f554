//! [`Context`] and [`BatchContext`]: what a handler gets besides its events —
//! the envelopes, the attempt number, and the database transaction its writes
//! (and follow-up events) commit in.

use std::sync::{Arc, PoisonError};

use tokio::sync::{Mutex, OwnedMappedMutexGuard, OwnedMutexGuard};
use uuid::Uuid;

use crate::envelope::Envelope;
use crate::error::{Error, Result};
use crate::event::Event;
use crate::outbox::{Metadata, Outbox, OutboxDatabase, OutboxEntry};
use crate::telemetry::TraceContext;

/// The handler's transaction, locked for as long as this guard lives:
/// dereferences to [`sqlx::Transaction`] (`&mut **guard` is an executor).
pub type TransactionGuard<DB> =
    OwnedMappedMutexGuard<Option<sqlx::Transaction<'static, DB>>, sqlx::Transaction<'static, DB>>;

/// The handler's view of the message being handled. Cheap to clone; all clones
/// share one transaction, which the consumer commits after the handler
/// returns `Ok` (together with the inbox row in effectively-once mode).
///
/// [`tx`](Self::tx) and [`publish`](Self::publish) work together in any
/// order: `publish` never waits for the transaction. While a guard from `tx`
/// is held (by this handler, or a clone of its context), a published event is
/// staged and written into the transaction the next time it is taken (`tx`
/// or `publish`), and at the latest right before the commit — so the
/// handler's writes and its follow-up events commit together, or not at all.
///
/// ```no_run
/// # use eventbus::Event;
/// # #[derive(Event, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
/// # #[event(type = "com.example.stock.reserved", destination = "stock", key = sku)]
/// # struct StockReserved { sku: String }
/// # async fn demo(ctx: eventbus::consumer::Context<sqlx::Postgres>) -> Result<(), eventbus::BoxError> {
/// let mut tx = ctx.tx().await?;
/// sqlx::query("UPDATE stock SET reserved = reserved + 1 WHERE sku = 'a'")
///     .execute(&mut **tx)
///     .await?;
/// // Fine with the guard held: the event joins the same transaction.
/// ctx.publish(&StockReserved { sku: "a".into() }).await?;
/// # Ok(()) }
/// ```
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
struct SharedTx<DB: sqlx::Database> {
    tx: Arc<Mutex<Option<sqlx::Transaction<'static, DB>>>>,
    /// Follow-up events published while a guard was out, in publish order;
    /// `None` once the handler is done (nothing more may be published).
    staged: std::sync::Mutex<Option<Vec<OutboxEntry>>>,
}

impl<DB: sqlx::Database> SharedTx<DB> {
    fn new(tx: sqlx::Transaction<'static, DB>) -> Self {
        SharedTx {
            tx: Arc::new(Mutex::new(Some(tx))),
            staged: std::sync::Mutex::new(Some(Vec::new())),
        }
    }
}

impl<DB: OutboxDatabase> SharedTx<DB> {
    fn finished() -> Error {
        Error::invalid_state("the handler's transaction is already finished")
    }

    /// The transaction, once no guard is out; staged events are written
    /// into it first.
    async fn lock(&self, outbox: &Outbox) -> Result<TransactionGuard<DB>> {
        let guard = Arc::clone(&self.tx).lock_owned().await;
        self.ready(guard, outbox).await
    }

    async fn ready(
        &self,
        guard: OwnedMutexGuard<Option<sqlx::Transaction<'static, DB>>>,
        outbox: &Outbox,
    ) -> Result<TransactionGuard<DB>> {
        let mut guard =
            OwnedMutexGuard::try_map(guard, Option::as_mut).map_err(|_| Self::finished())?;
        let staged = std::mem::take(
            self.staged
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .as_mut()
                .ok_or_else(Self::finished)?,
        );
        if !staged.is_empty() {
            if let Err(e) = outbox.publish_entries(&mut guard, &staged).await {
                // Kept for the commit, which then fails too: a handler that
                // ignores this error cannot commit without its events.
                if let Some(queue) = self
                    .staged
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .as_mut()
                {
                    queue.splice(0..0, staged);
                }
                return Err(e);
            }
        }
        Ok(guard)
    }

    /// Writes `entry` into the transaction if no guard is out, else stages it
    /// (waiting could deadlock: the guard may be held by the very handler
    /// that publishes).
    async fn publish(&self, outbox: &Outbox, entry: OutboxEntry) -> Result<()> {
        match Arc::clone(&self.tx).try_lock_owned() {
            Ok(guard) => {
                let mut guard = self.ready(guard, outbox).await?;
                outbox
                    .publish_entries(&mut guard, std::slice::from_ref(&entry))
                    .await
            }
            Err(_) => {
                self.staged
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .as_mut()
                    .ok_or_else(Self::finished)?
                    .push(entry);
                Ok(())
            }
        }
    }

    /// Takes the transaction back once the handler returned `Ok` (waiting for
    /// guards still out), with the staged events written into it. `Ok(None)`
    /// if it was taken already.
    async fn finish(&self, outbox: &Outbox) -> Result<Option<sqlx::Transaction<'static, DB>>> {
        let mut slot = self.tx.lock().await;
        let staged = self
            .staged
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .unwrap_or_default();
        let Some(mut tx) = slot.take() else {
            return Ok(None);
        };
        if !staged.is_empty() {
            if let Err(e) = outbox.publish_entries(&mut tx, &staged).await {
                let _ = tx.rollback().await;
                return Err(e);
            }
        }
        Ok(Some(tx))
    }

    /// Takes the transaction back after the handler failed, panicked or timed
    /// out, for a rollback; staged events are dropped. Does not wait: a guard
    /// still out (held by a task the handler spawned) keeps the transaction,
    /// which rolls back when that guard goes.
    fn abandon(&self) -> Option<sqlx::Transaction<'static, DB>> {
        self.staged
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        self.tx.try_lock().ok().and_then(|mut slot| slot.take())
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

    /// The outbox follow-up events go to.
    pub(crate) fn outbox(&self) -> &Outbox {
        &self.inner.outbox
    }
}

impl<DB: OutboxDatabase> Context<DB> {
    /// The transaction the handler's writes belong to, with the events
    /// [published](Self::publish) while another guard was out written into
    /// it first.
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
    /// [`Error::InvalidState`] if called after the handler finished; as for
    /// [`Outbox::publish`] if writing staged events fails.
    pub async fn tx(&self) -> Result<TransactionGuard<DB>> {
        self.inner.tx.lock(&self.inner.outbox).await
    }

    /// Publishes a follow-up event through the outbox in the handler's
    /// transaction, with correlation and causation taken from the message
    /// being handled. Its trace context is the consumer's `process` span
    /// (`otel` feature), so the event's `publish` span is that span's child and
    /// a whole saga is one trace; without the feature, the message's own trace
    /// context is passed on.
    ///
    /// Never waits for the transaction: if a guard from [`tx`](Self::tx) is
    /// out, the event is staged and written into the transaction before the
    /// commit (see [`Context`]). The id returned is the event's either way.
    ///
    /// # Errors
    ///
    /// As for [`Outbox::publish`]; [`Error::InvalidState`] after the handler
    /// finished. A staged event's database error comes from the next
    /// [`tx`](Self::tx) or `publish`, or fails the commit.
    pub async fn publish<E: Event>(&self, event: &E) -> Result<Uuid> {
        let mut meta = Metadata::caused_by(&self.inner.envelope);
        if let Some(trace) = &self.inner.trace {
            meta.traceparent = Some(trace.traceparent());
            meta.tracestate = trace.tracestate().map(str::to_owned);
        }
        let entry = self.inner.outbox.entry(event, &meta)?;
        let id = entry.event_id;
        self.inner.tx.publish(&self.inner.outbox, entry).await?;
        Ok(id)
    }

    /// Takes the transaction back once the handler returned `Ok`, staged
    /// events written into it.
    pub(crate) async fn finish(&self) -> Result<Option<sqlx::Transaction<'static, DB>>> {
        self.inner.tx.finish(&self.inner.outbox).await
    }

    /// Takes the transaction back after the handler failed, for a rollback.
    pub(crate) fn abandon(&self) -> Option<sqlx::Transaction<'static, DB>> {
        self.inner.tx.abandon()
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
}

impl<DB: OutboxDatabase> BatchContext<DB> {
    /// The transaction the whole batch's writes belong to; see [`Context::tx`].
    ///
    /// # Errors
    ///
    /// As for [`Context::tx`].
    pub async fn tx(&self) -> Result<TransactionGuard<DB>> {
        self.inner.tx.lock(&self.inner.outbox).await
    }

    /// Publishes a follow-up event through the outbox in the batch's
    /// transaction, with correlation, causation and trace context taken from
    /// `cause` (one of [`envelopes`](Self::envelopes)). Usable with a guard
    /// from [`tx`](Self::tx) held, as [`Context::publish`] is.
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
    /// As for [`Context::publish`].
    pub async fn publish_caused_by<E: Event>(&self, cause: &Envelope, event: &E) -> Result<Uuid> {
        let meta = Metadata::caused_by(cause);
        let entry = self.inner.outbox.entry(event, &meta)?;
        let id = entry.event_id;
        self.inner.tx.publish(&self.inner.outbox, entry).await?;
        Ok(id)
    }

    /// Takes the transaction back once the handler returned `Ok`; see
    /// [`Context::finish`].
    pub(crate) async fn finish(&self) -> Result<Option<sqlx::Transaction<'static, DB>>> {
        self.inner.tx.finish(&self.inner.outbox).await
    }

    /// Takes the transaction back after the handler failed, for a rollback.
    pub(crate) fn abandon(&self) -> Option<sqlx::Transaction<'static, DB>> {
        self.inner.tx.abandon()
    }
}
