//! [`OutboxAdmin`]: what an operator sees and does — backlog status, partition
//! owners, parked (`failed`) rows and releasing them.

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Row};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::table::TableName;

/// Operator view of a PostgreSQL outbox.
///
/// ```no_run
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
    pool: PgPool,
    table: TableName,
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
}

impl OutboxAdmin {
    /// The operator view of `table`.
    pub fn new(pool: PgPool, table: TableName) -> Self {
        OutboxAdmin { pool, table }
    }

    fn err(&self, e: sqlx::Error) -> Error {
        Error::from_table_query(e, &self.table)
    }

    /// Up to `limit` parked rows, oldest first.
    ///
    /// # Errors
    ///
    /// [`Error::NotMigrated`] or [`Error::Database`].
    pub async fn failed(&self, limit: i64) -> Result<Vec<FailedRow>> {
        let sql = format!(
            "SELECT id, event_id, destination, partition_key, event_type, attempts, last_error, created_at \
             FROM {} WHERE state = 'failed' ORDER BY id LIMIT $1",
            self.table.quoted()
        );
        let rows = sqlx::query(&sql)
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        rows.iter()
            .map(|r| {
                Ok(FailedRow {
                    id: r.try_get("id")?,
                    event_id: r.try_get("event_id")?,
                    destination: r.try_get("destination")?,
                    partition_key: r.try_get("partition_key")?,
                    event_type: r.try_get("event_type")?,
                    attempts: r.try_get("attempts")?,
                    last_error: r.try_get("last_error")?,
                    created_at: r.try_get("created_at")?,
                })
            })
            .collect::<std::result::Result<_, sqlx::Error>>()
            .map_err(Error::Database)
    }

    /// Puts parked rows back to `pending` with a fresh attempt budget; `ids`
    /// empty means all. Returns how many.
    ///
    /// # Errors
    ///
    /// [`Error::NotMigrated`] or [`Error::Database`].
    pub async fn retry(&self, ids: &[i64]) -> Result<u64> {
        let sql = format!(
            "UPDATE {} SET state = 'pending', attempts = 0, next_attempt_at = NULL \
             WHERE state = 'failed' AND (cardinality($1::int8[]) = 0 OR id = ANY($1))",
            self.table.quoted()
        );
        self.execute(&sql, ids).await
    }

    /// Removes parked rows for good (they will not be published), releasing the
    /// events of their keys that waited behind them; `ids` empty means all.
    ///
    /// # Errors
    ///
    /// [`Error::NotMigrated`] or [`Error::Database`].
    pub async fn skip(&self, ids: &[i64]) -> Result<u64> {
        let sql = format!(
            "DELETE FROM {} WHERE state = 'failed' AND (cardinality($1::int8[]) = 0 OR id = ANY($1))",
            self.table.quoted()
        );
        self.execute(&sql, ids).await
    }

    async fn execute(&self, sql: &str, ids: &[i64]) -> Result<u64> {
        let done = sqlx::query(sql)
            .bind(ids)
            .execute(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        Ok(done.rows_affected())
    }

    /// Backlog, parked rows and partition owners.
    ///
    /// # Errors
    ///
    /// [`Error::NotMigrated`] or [`Error::Database`].
    pub async fn status(&self) -> Result<Status> {
        let t = self.table.quoted();
        let p = self.table.with_suffix("_partitions");
        let r = self.table.with_suffix("_relays");
        let counts = sqlx::query(&format!(
            "SELECT count(*) FILTER (WHERE state = 'pending') AS pending, \
                    count(*) FILTER (WHERE state = 'failed') AS failed, \
                    count(*) FILTER (WHERE state = 'published') AS published, \
                    coalesce(extract(epoch FROM now() - min(created_at) FILTER (WHERE state = 'pending')), 0)::float8 AS oldest \
             FROM {t}"
        ))
        .fetch_one(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        let relays = sqlx::query(&format!(
            "SELECT r.relay_id, r.name, extract(epoch FROM now() - r.heartbeat_at)::float8 AS age, \
                    (SELECT count(*) FROM {p} p WHERE p.owner = r.relay_id AND p.lease_expires_at > now()) AS owned \
             FROM {r} r ORDER BY r.relay_id"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        let unowned: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM {p} WHERE owner IS NULL OR lease_expires_at IS NULL OR lease_expires_at <= now()"
        ))
        .fetch_one(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        Ok(Status {
            pending: counts.try_get("pending")?,
            oldest_pending_seconds: counts.try_get("oldest")?,
            failed: counts.try_get("failed")?,
            published: counts.try_get("published")?,
            relays: relays
                .iter()
                .map(|row| {
                    Ok((
                        row.try_get("relay_id")?,
                        row.try_get("name")?,
                        row.try_get("age")?,
                        row.try_get("owned")?,
                    ))
                })
                .collect::<std::result::Result<_, sqlx::Error>>()?,
            unowned_partitions: unowned,
        })
    }
}
