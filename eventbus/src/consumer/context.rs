//! [`Context`]: what a handler gets besides its event — the envelope, the
//! attempt number, and the database transaction its writes (and follow-up
//! events) commit in.

use std::sync::Arc;

use tokio::sync::{Mutex, OwnedMappedMutexGuard, OwnedMutexGuard};
use uuid::Uuid;

use crate::envelope::Envelope;
use crate::error::{Error, Result};
use crate::event::Event;
use crate::outbox::{Metadata, Outbox, OutboxDatabase};

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
    /// Shared with the guards [`Context::tx`] hands out: an owned guard (unlike
    /// a borrowed one) is `Send` across the handler's `.await`s, which a
    /// borrowed `MappedMutexGuard` is not for a transaction type with a lifetime.
    tx: Arc<Mutex<Option<sqlx::Transaction<'static, DB>>>>,
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
    ) -> Self {
        Context {
            inner: Arc::new(Inner {
                envelope,
                attempt,
                outbox,
                tx: Arc::new(Mutex::new(Some(tx))),
            }),
        }
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
        let guard = Arc::clone(&self.inner.tx).lock_owned().await;
        OwnedMutexGuard::try_map(guard, Option::as_mut)
            .map_err(|_| Error::config("the handler's transaction is already finished"))
    }

    /// Publishes a follow-up event through the outbox in the handler's
    /// transaction, with correlation, causation and trace context taken from the
    /// message being handled.
    ///
    /// # Errors
    ///
    /// As for [`Outbox::publish`].
    pub async fn publish<E: Event>(&self, event: &E) -> Result<Uuid>
    where
        DB: OutboxDatabase,
    {
        let meta = Metadata::caused_by(&self.inner.envelope);
        let mut tx = self.tx().await?;
        self.inner.outbox.publish_with(&mut tx, event, &meta).await
    }

    /// Takes the transaction back once the handler is done.
    pub(crate) async fn finish(&self) -> Option<sqlx::Transaction<'static, DB>> {
        self.inner.tx.lock().await.take()
    }
}
