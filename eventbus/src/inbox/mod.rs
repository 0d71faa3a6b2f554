//! The inbox: effectively-once processing of incoming events. The inbox row and
//! the handler's own writes commit in one database transaction, so a redelivered
//! duplicate changes nothing. Rows are keyed by [`InboxKey`].

mod attempts;
mod key;
mod parked;

use std::time::Duration;

use futures::future::BoxFuture;

use crate::envelope::Envelope;
use crate::error::{Error, Result};
use crate::table::TableName;

pub use attempts::{AttemptsDatabase, Savepoint, ATTEMPTS_SUFFIX};
pub use key::{InboxKey, UUID_SCOPE};
pub use parked::{
    message_key, ParkRequest, Parked, ParkedDatabase, ParkedState, Reschedule, PARKED_SUFFIX,
    UNFINISHED_ATTEMPT,
};

/// The default inbox table name.
pub const DEFAULT_TABLE: &str = "eventbus_inbox";

pub use crate::error::BoxError;

/// Records processed message ids per consumer.
///
/// A message is recorded under its [`InboxKey`]: its id alone when the id is
/// a UUID (every event eventbus relays), so the relay that sent it and its
/// `--source` make no difference; otherwise its CloudEvents source and id.
///
/// ```no_run
/// # #[cfg(feature = "postgres")]
/// # async fn demo(pool: sqlx::PgPool, envelope: eventbus::Envelope) -> eventbus::Result<()> {
/// use eventbus::{Inbox, Processed};
///
/// let inbox = Inbox::new("billing");
/// let outcome = inbox
///     .process(&pool, &envelope, |tx| Box::pin(async move {
///         sqlx::query("UPDATE accounts SET balance = balance - 10 WHERE id = 1")
///             .execute(&mut **tx)
///             .await?;
///         Ok::<_, sqlx::Error>(())
///     }))
///     .await?;
/// match outcome {
///     Processed::Handled(()) => println!("applied"),
///     Processed::Duplicate => println!("seen before: nothing done"),
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Inbox {
    table: TableName,
    consumer: String,
}

/// What [`Inbox::begin`] found.
#[derive(Debug)]
#[must_use = "commit the transaction for the message to count as processed"]
pub enum Delivery<DB: sqlx::Database> {
    /// First time seen: do the work in this transaction, then commit it.
    New(sqlx::Transaction<'static, DB>),
    /// Already processed by this consumer: do nothing.
    Duplicate,
}

/// What [`Inbox::process`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Processed<T> {
    /// The handler ran and its writes committed with the inbox row.
    Handled(T),
    /// The message had been processed before; the handler did not run.
    Duplicate,
}

/// A database the inbox can live in, with its durable attempt counts
/// ([`AttemptsDatabase`]) and parked messages ([`ParkedDatabase`]). Implemented for each compiled-in backend.
#[async_trait::async_trait]
pub trait InboxDatabase: sqlx::Database + AttemptsDatabase + ParkedDatabase {
    /// Inserts the inbox row of `envelope` for `consumer`, keyed by
    /// [`InboxKey::of`], unless present; `true` if it was inserted. Waits for
    /// a concurrent insert of the same message to commit or roll back. A row
    /// under the message's [`InboxKey::legacy`] key, written by an earlier
    /// version, also makes it a duplicate.
    async fn try_record(
        conn: &mut Self::Connection,
        table: &TableName,
        consumer: &str,
        envelope: &Envelope,
    ) -> Result<bool>;

    /// Inserts the inbox rows of `envelopes` that are not present, as
    /// [`try_record`](Self::try_record) does for one: one flag per envelope,
    /// in input order, `true` where its row was inserted. An id that occurs
    /// twice in `envelopes` is inserted once, and only its first occurrence
    /// reports `true` (the same message under two sources counts as a
    /// repeat where [`InboxKey`] says so). Batch handlers record their whole
    /// batch with it.
    ///
    /// The default calls `try_record` for each envelope; a backend that can
    /// insert many rows in one statement should override it.
    async fn try_record_many(
        conn: &mut Self::Connection,
        table: &TableName,
        consumer: &str,
        envelopes: &[&Envelope],
    ) -> Result<Vec<bool>> {
        let mut fresh = Vec::with_capacity(envelopes.len());
        for envelope in envelopes {
            fresh.push(Self::try_record(&mut *conn, table, consumer, envelope).await?);
        }
        Ok(fresh)
    }

    /// Deletes up to `batch` entries of `consumer` older than `older_than`;
    /// returns how many.
    async fn delete_older_than(
        pool: &sqlx::Pool<Self>,
        table: &TableName,
        consumer: &str,
        older_than: Duration,
        batch: i64,
    ) -> Result<u64>;
}

impl Inbox {
    /// The inbox of consumer (group) `consumer`, in table `eventbus_inbox`.
    pub fn new(consumer: impl Into<String>) -> Self {
        Inbox {
            table: default_table(),
            consumer: consumer.into(),
        }
    }

    /// Uses another table (validated; `schema.table` allowed).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for an invalid name.
    pub fn table(mut self, table: &str) -> Result<Self> {
        self.table = TableName::parse(table)?;
        Ok(self)
    }

    /// The consumer name ids are recorded under.
    pub fn consumer(&self) -> &str {
        &self.consumer
    }

    /// Starts processing `envelope`: opens a transaction and records the message.
    /// Commit the returned transaction after the handler's writes; dropping it
    /// rolls back and the message counts as unprocessed.
    ///
    /// # Errors
    ///
    /// [`Error::NotMigrated`] or [`Error::Database`].
    pub async fn begin<DB: InboxDatabase>(
        &self,
        pool: &sqlx::Pool<DB>,
        envelope: &Envelope,
    ) -> Result<Delivery<DB>> {
        let mut tx = pool.begin().await?;
        if DB::try_record(&mut *tx, &self.table, &self.consumer, envelope).await? {
            Ok(Delivery::New(tx))
        } else {
            tx.rollback().await?;
            Ok(Delivery::Duplicate)
        }
    }

    /// Runs `handler` for `envelope` effectively once: the handler's writes and the
    /// inbox row commit together; a duplicate skips the handler; a handler error
    /// rolls everything back.
    ///
    /// # Errors
    ///
    /// [`Error::Handler`] with the handler's error (nothing committed), or a
    /// database error.
    pub async fn process<DB, T, E, F>(
        &self,
        pool: &sqlx::Pool<DB>,
        envelope: &Envelope,
        handler: F,
    ) -> Result<Processed<T>>
    where
        DB: InboxDatabase,
        E: Into<BoxError>,
        F: for<'t> FnOnce(&'t mut sqlx::Transaction<'static, DB>) -> BoxFuture<'t, Result<T, E>>,
    {
        match self.begin(pool, envelope).await? {
            Delivery::Duplicate => Ok(Processed::Duplicate),
            Delivery::New(mut tx) => match handler(&mut tx).await {
                Ok(value) => {
                    tx.commit().await?;
                    Ok(Processed::Handled(value))
                }
                Err(e) => {
                    tx.rollback().await?;
                    Err(Error::Handler(e.into()))
                }
            },
        }
    }

    /// Deletes this consumer's entries older than `older_than`, `batch` rows per
    /// statement, until none are left. Returns the number deleted.
    ///
    /// Keep `older_than` well above the longest time a broker may redeliver a
    /// message, or old duplicates will be processed again. Consumers can run
    /// it in the background with `ConsumerBuilder::inbox_retention`.
    ///
    /// # Errors
    ///
    /// [`Error::Database`].
    pub async fn cleanup<DB: InboxDatabase>(
        &self,
        pool: &sqlx::Pool<DB>,
        older_than: Duration,
        batch: i64,
    ) -> Result<u64> {
        let mut total = 0;
        loop {
            let n =
                DB::delete_older_than(pool, &self.table, &self.consumer, older_than, batch.max(1))
                    .await?;
            total += n;
            if n < batch.max(1) as u64 {
                return Ok(total);
            }
        }
    }
}

pub(crate) fn default_table() -> TableName {
    TableName::from_static(DEFAULT_TABLE)
}

impl TableName {
    /// The default inbox table, `eventbus_inbox` ([`DEFAULT_TABLE`]).
    pub fn default_inbox() -> Self {
        default_table()
    }
}
