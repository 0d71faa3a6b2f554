//! The operator's view of an outbox table, [`AdminStore`], written once for
//! every database: counts by state, the age of the oldest pending row, the
//! relays and their leases, and the parked rows an operator retries or
//! skips. What differs between databases — ages, UUIDs, timestamps, lists of
//! ids — comes from [`SqlDatabase`] and its [`Dialect`](super::dialect::Dialect).

use crate::backend::sql::composed;
use sqlx::{ColumnIndex, Decode, Executor, IntoArguments, Row, Type};

use crate::backend::sql::{Bind, SqlDatabase};
use crate::error::{Error, Result};
use crate::relay::{AdminStore, FailedRow, Status};
use crate::table::TableName;

/// The operator's statements on one outbox table of `DB`.
#[derive(Debug, Clone)]
pub(crate) struct Admin<DB: sqlx::Database> {
    pool: sqlx::Pool<DB>,
    table: TableName,
}

impl<DB: sqlx::Database> Admin<DB> {
    /// The view of `table` in `pool`.
    pub(crate) fn new(pool: sqlx::Pool<DB>, table: TableName) -> Self {
        Admin { pool, table }
    }

    fn err(&self, e: sqlx::Error) -> Error {
        Error::from_table_query(e, &self.table)
    }
}

impl<DB> Admin<DB>
where
    DB: SqlDatabase,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
{
    /// Runs `statement` (a statement on parked rows ending in its `WHERE`
    /// clause) on the rows `ids`, or on every parked row when `ids` is empty.
    async fn on_parked(&self, statement: String, ids: &[i64]) -> Result<u64> {
        let sql = if ids.is_empty() {
            statement
        } else {
            format!("{statement} AND {}", DB::DIALECT.in_list("id", 1))
        };
        let mut query = sqlx::query(composed(&sql));
        if !ids.is_empty() {
            query = query.bind(DB::list(ids));
        }
        let done = query.execute(&self.pool).await.map_err(|e| self.err(e))?;
        Ok(DB::rows_affected(&done))
    }
}

#[async_trait::async_trait]
impl<DB> AdminStore for Admin<DB>
where
    DB: SqlDatabase + crate::outbox::ScheduledDatabase,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'c> &'c str: ColumnIndex<DB::Row>,
    usize: ColumnIndex<DB::Row>,
    i32: for<'r> Decode<'r, DB> + Type<DB>,
    i64: for<'r> Decode<'r, DB> + Bind<DB>,
    f64: for<'r> Decode<'r, DB> + Type<DB>,
    String: for<'r> Decode<'r, DB> + Type<DB>,
{
    async fn failed(&self, limit: i64) -> Result<Vec<FailedRow>> {
        let d = DB::DIALECT;
        let sql = format!(
            "SELECT id, event_id, destination, partition_key, event_type, attempts, last_error, \
                    {created_at} AS created_at \
             FROM {t} WHERE state = 'failed' ORDER BY id LIMIT {limit}",
            created_at = d.read_time("created_at"),
            t = d.table(&self.table),
            limit = d.param(1),
        );
        let rows = sqlx::query(composed(&sql))
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        rows.iter()
            .map(|r| {
                Ok(FailedRow {
                    id: r.try_get("id")?,
                    event_id: DB::uuid_at(r, "event_id")?,
                    destination: r.try_get("destination")?,
                    partition_key: DB::text_at(r, "partition_key")?,
                    event_type: r.try_get("event_type")?,
                    attempts: r.try_get("attempts")?,
                    last_error: r.try_get("last_error")?,
                    created_at: DB::time_at(r, "created_at")?,
                })
            })
            .collect::<std::result::Result<_, sqlx::Error>>()
            .map_err(Error::Database)
    }

    async fn retry(&self, ids: &[i64]) -> Result<u64> {
        let statement = format!(
            "UPDATE {} SET state = 'pending', attempts = 0, next_attempt_at = NULL \
             WHERE state = 'failed'",
            DB::DIALECT.table(&self.table)
        );
        self.on_parked(statement, ids).await
    }

    async fn skip(&self, ids: &[i64]) -> Result<u64> {
        let statement = format!(
            "DELETE FROM {} WHERE state = 'failed'",
            DB::DIALECT.table(&self.table)
        );
        self.on_parked(statement, ids).await
    }

    async fn status(&self) -> Result<Status> {
        let d = DB::DIALECT;
        let t = d.table(&self.table);
        let p = d.object(&self.table, "_partitions");
        let r = d.object(&self.table, "_relays");
        let now = d.now();
        // `count` is a 64-bit integer everywhere (MySQL's `SUM` is not).
        let counts = sqlx::query(composed(format!(
            "SELECT count(CASE WHEN state = 'pending' THEN 1 END) AS pending, \
                    count(CASE WHEN state = 'failed' THEN 1 END) AS failed, \
                    count(CASE WHEN state = 'published' THEN 1 END) AS published, \
                    coalesce({oldest}, 0.0) AS oldest \
             FROM {t}",
            oldest = d.age("min(CASE WHEN state = 'pending' THEN created_at END)"),
        )))
        .fetch_one(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        let relays = sqlx::query(composed(format!(
            "SELECT r.relay_id, r.name, {age} AS age, \
                    (SELECT count(*) FROM {p} l WHERE l.owner = r.relay_id \
                        AND l.lease_expires_at > {now}) AS owned \
             FROM {r} r ORDER BY r.relay_id",
            age = d.age("r.heartbeat_at"),
        )))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        let unowned: i64 = sqlx::query_scalar(composed(format!(
            "SELECT count(*) FROM {p} \
             WHERE owner IS NULL OR lease_expires_at IS NULL OR lease_expires_at <= {now}"
        )))
        .fetch_one(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        let scheduled = DB::scheduled_stats(&self.pool, &self.table).await?;
        // Clocks of client and server may disagree by a little: never negative.
        Ok(Status {
            pending: counts.try_get("pending")?,
            oldest_pending_seconds: counts.try_get::<f64, _>("oldest")?.max(0.0),
            failed: counts.try_get("failed")?,
            published: counts.try_get("published")?,
            relays: relays
                .iter()
                .map(|row| {
                    Ok((
                        DB::uuid_at(row, "relay_id")?,
                        row.try_get("name")?,
                        row.try_get::<f64, _>("age")?.max(0.0),
                        row.try_get("owned")?,
                    ))
                })
                .collect::<std::result::Result<_, sqlx::Error>>()?,
            unowned_partitions: unowned,
            scheduled: i64::try_from(scheduled.rows).unwrap_or(i64::MAX),
            next_scheduled_due: scheduled.next_due,
        })
    }
}
