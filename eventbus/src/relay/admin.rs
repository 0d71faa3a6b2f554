//! [`OutboxAdmin`]: what an operator sees and does — backlog status, partition
//! owners, parked (`failed`) rows and releasing them — through [`AdminStore`],
//! implemented by each database backend.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::error::Result;
#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
use crate::table::TableName;

/// Operator view of an outbox, on any of the databases.
///
/// ```no_run
/// # #[cfg(feature = "postgres")]
/// # async fn demo(pool: sqlx::PgPool) -> eventbus::Result<()> {
/// use eventbus::relay::OutboxAdmin;
///
/// let admin = OutboxAdmin::new(pool, eventbus::TableName::parse("eventbus_outbox")?);
/// for row in admin.failed(100).await? {
///     println!("{} {} {}: {}", row.id, row.event_type, row.partition_key, row.last_error.unwrap_or_default());
/// }
/// admin.retry(&[]).await?; // release every parked row for another round of attempts
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct OutboxAdmin {
    store: Arc<dyn AdminStore>,
}

/// The operator's statements on one outbox table, one impl per database
/// backend. [`OutboxAdmin`] is the public face of it.
#[async_trait::async_trait]
pub trait AdminStore: Send + Sync + std::fmt::Debug + 'static {
    /// Up to `limit` parked rows, oldest first.
    async fn failed(&self, limit: i64) -> Result<Vec<FailedRow>>;

    /// Puts parked rows back to `pending` with a fresh attempt budget; `ids`
    /// empty means all. Returns how many.
    async fn retry(&self, ids: &[i64]) -> Result<u64>;

    /// Deletes parked rows; `ids` empty means all. Returns how many.
    async fn skip(&self, ids: &[i64]) -> Result<u64>;

    /// Backlog, parked rows and partition owners.
    async fn status(&self) -> Result<Status>;
}

/// A row parked as `failed`.
#[derive(Debug, Clone, PartialEq)]
pub struct FailedRow {
    /// Outbox row id.
    pub id: i64,
    /// CloudEvents id.
    pub event_id: Uuid,
    /// Logical destination.
    pub destination: String,
    /// Ordering key (later events of this key wait for this row).
    pub partition_key: String,
    /// CloudEvents type.
    pub event_type: String,
    /// Attempts made.
    pub attempts: i32,
    /// The last error.
    pub last_error: Option<String>,
    /// When the row was written.
    pub created_at: DateTime<Utc>,
}

/// Backlog and ownership at a glance.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    /// Rows waiting to be published.
    pub pending: i64,
    /// Age of the oldest pending row in seconds (0 when none).
    pub oldest_pending_seconds: f64,
    /// Rows parked as `failed`.
    pub failed: i64,
    /// Rows kept as `published` (retention mode).
    pub published: i64,
    /// Live relays: (id, name, seconds since last heartbeat, partitions owned).
    pub relays: Vec<(Uuid, String, f64, i64)>,
    /// Partitions with no valid lease.
    pub unowned_partitions: i64,
    /// Scheduled events waiting ([`crate::outbox::schedule`]).
    pub scheduled: i64,
    /// When the earliest scheduled event is due.
    pub next_scheduled_due: Option<DateTime<Utc>>,
}

impl OutboxAdmin {
    /// The operator view of `table` in a PostgreSQL database.
    #[cfg(feature = "postgres")]
    pub fn new(pool: sqlx::PgPool, table: TableName) -> Self {
        Self::with_store(Arc::new(crate::backend::Admin::new(pool, table)))
    }

    /// The operator view of `table` in a MySQL or MariaDB database.
    ///
    /// ```no_run
    /// # async fn demo(pool: sqlx::MySqlPool) -> eventbus::Result<()> {
    /// let admin = eventbus::relay::OutboxAdmin::mysql(pool, eventbus::TableName::default_outbox());
    /// println!("{} pending", admin.status().await?.pending);
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "mysql")]
    pub fn mysql(pool: sqlx::MySqlPool, table: TableName) -> Self {
        Self::with_store(Arc::new(crate::backend::Admin::new(pool, table)))
    }

    /// The operator view of `table` in a SQLite database.
    ///
    /// ```no_run
    /// # async fn demo(pool: sqlx::SqlitePool) -> eventbus::Result<()> {
    /// let admin = eventbus::relay::OutboxAdmin::sqlite(pool, eventbus::TableName::default_outbox());
    /// println!("{} parked", admin.status().await?.failed);
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "sqlite")]
    pub fn sqlite(pool: sqlx::SqlitePool, table: TableName) -> Self {
        Self::with_store(Arc::new(crate::backend::Admin::new(pool, table)))
    }

    /// The operator view over any [`AdminStore`].
    pub fn with_store(store: Arc<dyn AdminStore>) -> Self {
        OutboxAdmin { store }
    }

    /// Up to `limit` parked rows, oldest first.
    ///
    /// # Errors
    ///
    /// [`crate::Error::NotMigrated`] or [`crate::Error::Database`].
    pub async fn failed(&self, limit: i64) -> Result<Vec<FailedRow>> {
        self.store.failed(limit).await
    }

    /// Puts parked rows back to `pending` with a fresh attempt budget; `ids`
    /// empty means all. Returns how many.
    ///
    /// # Errors
    ///
    /// [`crate::Error::NotMigrated`] or [`crate::Error::Database`].
    pub async fn retry(&self, ids: &[i64]) -> Result<u64> {
        self.store.retry(ids).await
    }

    /// Removes parked rows for good (they will not be published), releasing the
    /// events of their keys that waited behind them; `ids` empty means all.
    ///
    /// # Errors
    ///
    /// [`crate::Error::NotMigrated`] or [`crate::Error::Database`].
    pub async fn skip(&self, ids: &[i64]) -> Result<u64> {
        self.store.skip(ids).await
    }

    /// Backlog, parked rows and partition owners.
    ///
    /// # Errors
    ///
    /// [`crate::Error::NotMigrated`] or [`crate::Error::Database`].
    pub async fn status(&self) -> Result<Status> {
        self.store.status().await
    }
}
