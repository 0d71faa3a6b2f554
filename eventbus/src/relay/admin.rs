//! [`OutboxAdmin`]: what an operator sees and does — backlog status, partition
//! owners, parked (`failed`) rows and releasing them — on PostgreSQL and MySQL.

use chrono::{DateTime, Utc};
use sqlx::Row;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::table::TableName;

/// Operator view of a PostgreSQL or MySQL outbox.
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
    pool: AdminPool,
    table: TableName,
}

/// The database an [`OutboxAdmin`] works on.
#[derive(Debug, Clone)]
enum AdminPool {
    #[cfg(feature = "postgres")]
    Postgres(sqlx::PgPool),
    #[cfg(feature = "mysql")]
    MySql(sqlx::MySqlPool),
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
    /// The operator view of `table` in a PostgreSQL database.
    #[cfg(feature = "postgres")]
    pub fn new(pool: sqlx::PgPool, table: TableName) -> Self {
        OutboxAdmin {
            pool: AdminPool::Postgres(pool),
            table,
        }
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
        OutboxAdmin {
            pool: AdminPool::MySql(pool),
            table,
        }
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
        match &self.pool {
            #[cfg(feature = "postgres")]
            AdminPool::Postgres(pool) => self.failed_pg(pool, limit).await,
            #[cfg(feature = "mysql")]
            AdminPool::MySql(pool) => self.failed_mysql(pool, limit).await,
        }
    }

    /// Puts parked rows back to `pending` with a fresh attempt budget; `ids`
    /// empty means all. Returns how many.
    ///
    /// # Errors
    ///
    /// [`Error::NotMigrated`] or [`Error::Database`].
    pub async fn retry(&self, ids: &[i64]) -> Result<u64> {
        match &self.pool {
            #[cfg(feature = "postgres")]
            AdminPool::Postgres(pool) => {
                let sql = format!(
                    "UPDATE {} SET state = 'pending', attempts = 0, next_attempt_at = NULL \
                     WHERE state = 'failed' AND (cardinality($1::int8[]) = 0 OR id = ANY($1))",
                    self.table.quoted()
                );
                self.execute_pg(pool, &sql, ids).await
            }
            #[cfg(feature = "mysql")]
            AdminPool::MySql(pool) => {
                let sql = format!(
                    "UPDATE {} SET state = 'pending', attempts = 0, next_attempt_at = NULL \
                     WHERE state = 'failed' AND (? = '' OR FIND_IN_SET(id, ?))",
                    self.table.mysql_quoted()
                );
                self.execute_mysql(pool, &sql, ids).await
            }
        }
    }

    /// Removes parked rows for good (they will not be published), releasing the
    /// events of their keys that waited behind them; `ids` empty means all.
    ///
    /// # Errors
    ///
    /// [`Error::NotMigrated`] or [`Error::Database`].
    pub async fn skip(&self, ids: &[i64]) -> Result<u64> {
        match &self.pool {
            #[cfg(feature = "postgres")]
            AdminPool::Postgres(pool) => {
                let sql = format!(
                    "DELETE FROM {} WHERE state = 'failed' \
                     AND (cardinality($1::int8[]) = 0 OR id = ANY($1))",
                    self.table.quoted()
                );
                self.execute_pg(pool, &sql, ids).await
            }
            #[cfg(feature = "mysql")]
            AdminPool::MySql(pool) => {
                let sql = format!(
                    "DELETE FROM {} WHERE state = 'failed' AND (? = '' OR FIND_IN_SET(id, ?))",
                    self.table.mysql_quoted()
                );
                self.execute_mysql(pool, &sql, ids).await
            }
        }
    }

    /// Backlog, parked rows and partition owners.
    ///
    /// # Errors
    ///
    /// [`Error::NotMigrated`] or [`Error::Database`].
    pub async fn status(&self) -> Result<Status> {
        match &self.pool {
            #[cfg(feature = "postgres")]
            AdminPool::Postgres(pool) => self.status_pg(pool).await,
            #[cfg(feature = "mysql")]
            AdminPool::MySql(pool) => self.status_mysql(pool).await,
        }
    }
}

#[cfg(feature = "postgres")]
impl OutboxAdmin {
    async fn failed_pg(&self, pool: &sqlx::PgPool, limit: i64) -> Result<Vec<FailedRow>> {
        let sql = format!(
            "SELECT id, event_id, destination, partition_key, event_type, attempts, last_error, created_at \
             FROM {} WHERE state = 'failed' ORDER BY id LIMIT $1",
            self.table.quoted()
        );
        let rows = sqlx::query(&sql)
            .bind(limit)
            .fetch_all(pool)
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

    async fn execute_pg(&self, pool: &sqlx::PgPool, sql: &str, ids: &[i64]) -> Result<u64> {
        let done = sqlx::query(sql)
            .bind(ids)
            .execute(pool)
            .await
            .map_err(|e| self.err(e))?;
        Ok(done.rows_affected())
    }

    async fn status_pg(&self, pool: &sqlx::PgPool) -> Result<Status> {
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
        .fetch_one(pool)
        .await
        .map_err(|e| self.err(e))?;
        let relays = sqlx::query(&format!(
            "SELECT r.relay_id, r.name, extract(epoch FROM now() - r.heartbeat_at)::float8 AS age, \
                    (SELECT count(*) FROM {p} p WHERE p.owner = r.relay_id AND p.lease_expires_at > now()) AS owned \
             FROM {r} r ORDER BY r.relay_id"
        ))
        .fetch_all(pool)
        .await
        .map_err(|e| self.err(e))?;
        let unowned: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM {p} WHERE owner IS NULL OR lease_expires_at IS NULL OR lease_expires_at <= now()"
        ))
        .fetch_one(pool)
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

#[cfg(feature = "mysql")]
impl OutboxAdmin {
    async fn failed_mysql(&self, pool: &sqlx::MySqlPool, limit: i64) -> Result<Vec<FailedRow>> {
        let sql = format!(
            "SELECT id, event_id, destination, partition_key, event_type, attempts, last_error, created_at \
             FROM {} WHERE state = 'failed' ORDER BY id LIMIT ?",
            self.table.mysql_quoted()
        );
        let rows = sqlx::query(&sql)
            .bind(limit)
            .fetch_all(pool)
            .await
            .map_err(|e| self.err(e))?;
        rows.iter()
            .map(|r| {
                let event_id: String = r.try_get("event_id")?;
                Ok(FailedRow {
                    id: r.try_get("id")?,
                    event_id: Uuid::parse_str(&event_id).map_err(|e| {
                        sqlx::Error::ColumnDecode {
                            index: "event_id".into(),
                            source: Box::new(e),
                        }
                    })?,
                    destination: r.try_get("destination")?,
                    partition_key: crate::mysql::text(r, "partition_key")?,
                    event_type: r.try_get("event_type")?,
                    attempts: r.try_get("attempts")?,
                    last_error: r.try_get("last_error")?,
                    created_at: r.try_get("created_at")?,
                })
            })
            .collect::<std::result::Result<_, sqlx::Error>>()
            .map_err(Error::Database)
    }

    /// Runs `sql`, which matches ids with `? = '' OR FIND_IN_SET(id, ?)`.
    async fn execute_mysql(&self, pool: &sqlx::MySqlPool, sql: &str, ids: &[i64]) -> Result<u64> {
        let list = ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
        let done = sqlx::query(sql)
            .bind(&list)
            .bind(&list)
            .execute(pool)
            .await
            .map_err(|e| self.err(e))?;
        Ok(done.rows_affected())
    }

    async fn status_mysql(&self, pool: &sqlx::MySqlPool) -> Result<Status> {
        use crate::mysql::NOW;
        let t = self.table.mysql_quoted();
        let p = self.table.mysql_with_suffix("_partitions");
        let r = self.table.mysql_with_suffix("_relays");
        // SUM() is DECIMAL in MySQL: cast back to BIGINT.
        let counts = sqlx::query(&format!(
            "SELECT CAST(COALESCE(SUM(state = 'pending'), 0) AS SIGNED) AS pending, \
                    CAST(COALESCE(SUM(state = 'failed'), 0) AS SIGNED) AS failed, \
                    CAST(COALESCE(SUM(state = 'published'), 0) AS SIGNED) AS published, \
                    TIMESTAMPDIFF(MICROSECOND, \
                        MIN(CASE WHEN state = 'pending' THEN created_at END), {NOW}) AS oldest_us \
             FROM {t}"
        ))
        .fetch_one(pool)
        .await
        .map_err(|e| self.err(e))?;
        let relays = sqlx::query(&format!(
            "SELECT r.relay_id, r.name, TIMESTAMPDIFF(MICROSECOND, r.heartbeat_at, {NOW}) AS age_us, \
                    (SELECT COUNT(*) FROM {p} p WHERE p.owner = r.relay_id \
                        AND p.lease_expires_at > {NOW}) AS owned \
             FROM {r} r ORDER BY r.relay_id"
        ))
        .fetch_all(pool)
        .await
        .map_err(|e| self.err(e))?;
        let unowned: i64 = sqlx::query_scalar(&format!(
            "SELECT COUNT(*) FROM {p} \
             WHERE owner IS NULL OR lease_expires_at IS NULL OR lease_expires_at <= {NOW}"
        ))
        .fetch_one(pool)
        .await
        .map_err(|e| self.err(e))?;
        let seconds = |us: Option<i64>| us.unwrap_or(0).max(0) as f64 / 1e6;
        Ok(Status {
            pending: counts.try_get("pending")?,
            oldest_pending_seconds: seconds(counts.try_get("oldest_us")?),
            failed: counts.try_get("failed")?,
            published: counts.try_get("published")?,
            relays: relays
                .iter()
                .map(|row| {
                    let id: String = row.try_get("relay_id")?;
                    let id = Uuid::parse_str(&id).map_err(|e| sqlx::Error::ColumnDecode {
                        index: "relay_id".into(),
                        source: Box::new(e),
                    })?;
                    Ok((
                        id,
                        row.try_get("name")?,
                        seconds(row.try_get("age_us")?),
                        row.try_get("owned")?,
                    ))
                })
                .collect::<std::result::Result<_, sqlx::Error>>()?,
            unowned_partitions: unowned,
        })
    }
}
