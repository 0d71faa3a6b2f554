//! The scheduled table's statements, written once for the three databases:
//! its columns are plain text and integers (times in milliseconds since the
//! epoch, as in the parked table), so only placeholders and quoting differ.
//!
//! Moving due events keeps two rules. They go through the database's own
//! outbox insert ([`OutboxDatabase::insert_entries`]), so they enter their
//! key's commit order as any write does (on MySQL, under the partitions'
//! write locks). And the rows are read first and deleted by id after that
//! insert, in its transaction: a row cancelled or moved by someone else
//! meanwhile makes the count fall short, and the whole move rolls back, so
//! an event is moved once or not at all. Reading without a lock keeps the
//! lock order of every writer (outbox partitions first, then the scheduled
//! row a transaction cancels), so a move never deadlocks with them.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{Executor, FromRow, IntoArguments};
use uuid::Uuid;

use crate::backend::sql::{composed, Bind, SqlDatabase};
use crate::error::{Error, Result};
use crate::outbox::{OutboxDatabase, OutboxEntry, ScheduledStats, SCHEDULED_SUFFIX};
use crate::table::TableName;

/// Columns written per row.
const COLUMNS: usize = 11;

/// Rows per insert statement: 11,000 parameters, within every database's
/// limit (SQLite's is 32,766).
const ROWS_PER_STATEMENT: usize = 1_000;

/// A scheduled row as read back: id, event id, source, destination, key,
/// type, version, subject, headers, payload, due time.
type Row = (
    i64,
    String,
    Option<String>,
    String,
    String,
    String,
    i32,
    Option<String>,
    String,
    String,
    i64,
);

fn millis(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

fn time(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

fn failed(table: &TableName) -> impl Fn(sqlx::Error) -> Error + '_ {
    move |e| Error::from_table_query(e, table)
}

/// The outbox entry a due row becomes: published as of its due time. A row
/// written by other means with headers that are not JSON keeps them as a
/// JSON string, which the relay parks with its reason instead of dropping.
fn entry(row: Row) -> OutboxEntry {
    let (
        _,
        event_id,
        source,
        destination,
        key,
        event_type,
        version,
        subject,
        headers,
        payload,
        due,
    ) = row;
    let event_id = Uuid::parse_str(&event_id).unwrap_or_else(|_| {
        tracing::warn!(%event_id, "a scheduled row's event id is not a UUID; it is relayed under a new one");
        Uuid::now_v7()
    });
    OutboxEntry {
        event_id,
        source,
        destination,
        partition_key: key,
        event_type,
        schema_version: version,
        subject,
        headers: serde_json::from_str(&headers).unwrap_or(Value::String(headers)),
        payload,
        created_at: time(due),
    }
}

/// Inserts `entries`, due at `due`, into the scheduled table of `table`.
pub(crate) async fn insert<DB>(
    conn: &mut DB::Connection,
    table: &TableName,
    entries: &[OutboxEntry],
    due: DateTime<Utc>,
) -> Result<()>
where
    DB: SqlDatabase + sqlx::database::HasStatementCache,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    String: Bind<DB>,
    Option<String>: Bind<DB>,
    i32: Bind<DB>,
    i64: Bind<DB>,
{
    let d = DB::DIALECT;
    for chunk in entries.chunks(ROWS_PER_STATEMENT) {
        let rows: Vec<String> = (0..chunk.len())
            .map(|r| {
                let params: Vec<String> = (1..=COLUMNS).map(|c| d.param(r * COLUMNS + c)).collect();
                format!("({})", params.join(", "))
            })
            .collect();
        let sql = format!(
            "INSERT INTO {t} (event_id, source, destination, partition_key, event_type, \
             schema_version, subject, headers, payload, created_at, due_at) VALUES {v}",
            t = d.object(table, SCHEDULED_SUFFIX),
            v = rows.join(", "),
        );
        let mut query = sqlx::query(composed(&sql));
        for e in chunk {
            query = query
                .bind(e.event_id.to_string())
                .bind(e.source.clone())
                .bind(e.destination.clone())
                .bind(e.partition_key.clone())
                .bind(e.event_type.clone())
                .bind(e.schema_version)
                .bind(e.subject.clone())
                .bind(e.headers.to_string())
                .bind(e.payload.clone())
                .bind(millis(e.created_at))
                .bind(millis(due));
        }
        query
            .persistent(chunk.len() == 1)
            .execute(&mut *conn)
            .await
            .map_err(failed(table))?;
    }
    Ok(())
}

/// Deletes the scheduled event `event_id`; whether it was there.
pub(crate) async fn cancel<DB>(
    conn: &mut DB::Connection,
    table: &TableName,
    event_id: Uuid,
) -> Result<bool>
where
    DB: SqlDatabase,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    String: Bind<DB>,
{
    let d = DB::DIALECT;
    let sql = format!(
        "DELETE FROM {t} WHERE event_id = {p}",
        t = d.object(table, SCHEDULED_SUFFIX),
        p = d.param(1)
    );
    let done = sqlx::query(composed(&sql))
        .bind(event_id.to_string())
        .execute(&mut *conn)
        .await
        .map_err(failed(table))?;
    Ok(DB::rows_affected(&done) > 0)
}

/// Moves up to `limit` events due at `now` into the outbox, earliest first.
pub(crate) async fn release_due<DB>(
    pool: &sqlx::Pool<DB>,
    table: &TableName,
    now: DateTime<Utc>,
    limit: u32,
) -> Result<u64>
where
    DB: SqlDatabase + OutboxDatabase + sqlx::database::HasStatementCache,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    i64: Bind<DB>,
    for<'r> Row: FromRow<'r, DB::Row>,
{
    let d = DB::DIALECT;
    let scheduled = d.object(table, SCHEDULED_SUFFIX);
    let select = format!(
        "SELECT id, event_id, source, destination, partition_key, event_type, schema_version, \
         subject, headers, payload, due_at FROM {scheduled} WHERE due_at <= {a} \
         ORDER BY due_at, id LIMIT {b}",
        a = d.param(1),
        b = d.param(2),
    );
    let rows: Vec<Row> = sqlx::query_as(composed(&select))
        .bind(millis(now))
        .bind(i64::from(limit.max(1)))
        .fetch_all(pool)
        .await
        .map_err(failed(table))?;
    if rows.is_empty() {
        return Ok(0);
    }
    let ids: Vec<i64> = rows.iter().map(|r| r.0).collect();
    let entries: Vec<OutboxEntry> = rows.into_iter().map(entry).collect();
    let mut tx = DB::begin(pool).await.map_err(failed(table))?;
    DB::insert_entries(&mut *tx, table, &entries).await?;
    let placeholders: Vec<String> = (1..=ids.len()).map(|n| d.param(n)).collect();
    let delete = format!(
        "DELETE FROM {scheduled} WHERE id IN ({})",
        placeholders.join(", ")
    );
    let mut query = sqlx::query(composed(&delete));
    for id in &ids {
        query = query.bind(*id);
    }
    let done = query
        .persistent(false)
        .execute(&mut *tx)
        .await
        .map_err(failed(table))?;
    let moved = DB::rows_affected(&done);
    if moved != ids.len() as u64 {
        // Cancelled or moved by another relay since they were read: none of
        // this move stands; the next round reads again.
        tx.rollback().await.map_err(failed(table))?;
        return Ok(0);
    }
    tx.commit().await.map_err(failed(table))?;
    Ok(moved)
}

/// What waits in the scheduled table.
pub(crate) async fn stats<DB>(pool: &sqlx::Pool<DB>, table: &TableName) -> Result<ScheduledStats>
where
    DB: SqlDatabase,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'r> (i64, Option<i64>): FromRow<'r, DB::Row>,
{
    let sql = format!(
        "SELECT count(*), min(due_at) FROM {t}",
        t = DB::DIALECT.object(table, SCHEDULED_SUFFIX)
    );
    let (rows, next): (i64, Option<i64>) = sqlx::query_as(composed(&sql))
        .fetch_one(pool)
        .await
        .map_err(failed(table))?;
    Ok(ScheduledStats {
        rows: u64::try_from(rows).unwrap_or(0),
        next_due: next.map(time),
    })
}

/// Implements [`ScheduledDatabase`](crate::outbox::ScheduledDatabase) for a
/// backend with the functions above.
macro_rules! scheduled_database {
    ($db:ty) => {
        #[async_trait::async_trait]
        impl crate::outbox::ScheduledDatabase for $db {
            async fn insert_scheduled(
                conn: &mut <$db as sqlx::Database>::Connection,
                table: &TableName,
                entries: &[OutboxEntry],
                due: DateTime<Utc>,
            ) -> Result<()> {
                insert::<$db>(conn, table, entries, due).await
            }

            async fn cancel_scheduled(
                conn: &mut <$db as sqlx::Database>::Connection,
                table: &TableName,
                event_id: Uuid,
            ) -> Result<bool> {
                cancel::<$db>(conn, table, event_id).await
            }

            async fn release_due(
                pool: &sqlx::Pool<$db>,
                table: &TableName,
                now: DateTime<Utc>,
                limit: u32,
            ) -> Result<u64> {
                release_due::<$db>(pool, table, now, limit).await
            }

            async fn scheduled_stats(
                pool: &sqlx::Pool<$db>,
                table: &TableName,
            ) -> Result<ScheduledStats> {
                stats::<$db>(pool, table).await
            }
        }
    };
}

#[cfg(feature = "postgres")]
scheduled_database!(sqlx::Postgres);
#[cfg(feature = "mysql")]
scheduled_database!(sqlx::MySql);
#[cfg(feature = "sqlite")]
scheduled_database!(sqlx::Sqlite);
