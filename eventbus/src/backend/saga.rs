//! The saga table's statements, written once for the three databases: its
//! columns are text and integers (times in milliseconds since the epoch), so
//! only placeholders, quoting, row locks and MySQL's binary text differ.
//!
//! A step reads its instance with a row lock (`FOR UPDATE`; on SQLite the
//! step's transaction already holds the database's write lock, taken by
//! its inbox row), so two steps of one instance run one after the other.
//! The update also checks the version it read: a step that lost its lock
//! some other way changes nothing and fails.
//!
//! On MySQL a locking read of a row that does not exist locks the gap where
//! it would go (repeatable read), and two steps starting two new instances
//! in one gap then deadlock on their inserts. So a step that may start an
//! instance looks first without a lock there, and locks only a row that is
//! there; a new instance's insert meets a concurrent one on the primary key
//! instead (and the step is retried). Steps that cannot start one take the
//! locking read: they insert nothing into the gap.

use sqlx::{Executor, FromRow, IntoArguments};

use crate::backend::sql::{composed, Bind, SqlDatabase};
use crate::error::{Error, Result};
use crate::saga::{Row, SagaCount, SagaQuery, SagaStatus, StoredInstance};
use crate::table::TableName;

fn failed(table: &TableName) -> impl Fn(sqlx::Error) -> Error + '_ {
    move |e| Error::from_table_query(e, table)
}

/// The columns of [`Row`], text read as text.
fn columns<DB: SqlDatabase>() -> String {
    let d = DB::DIALECT;
    format!(
        "{}, {}, state, status, version, timeouts, started_at, updated_at, completed_at",
        d.text("saga"),
        d.text("instance_id"),
    )
}

/// Reads one instance, locked when `lock`.
pub(crate) async fn select<'c, DB, E>(
    executor: E,
    table: &TableName,
    saga: &str,
    instance_id: &str,
    lock: bool,
) -> Result<Option<StoredInstance>>
where
    DB: SqlDatabase,
    E: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    String: Bind<DB>,
    for<'r> Row: FromRow<'r, DB::Row>,
{
    let d = DB::DIALECT;
    let sql = format!(
        "SELECT {c} FROM {t} WHERE saga = {a} AND instance_id = {b}{lock}",
        c = columns::<DB>(),
        t = d.table(table),
        a = d.param(1),
        b = d.param(2),
        lock = if lock { d.for_update() } else { "" },
    );
    let row: Option<Row> = sqlx::query_as(composed(&sql))
        .bind(saga.to_owned())
        .bind(instance_id.to_owned())
        .fetch_optional(executor)
        .await
        .map_err(failed(table))?;
    Ok(row.map(StoredInstance::from_row))
}

/// Inserts a new instance; `false` if its id is taken.
pub(crate) async fn insert<DB>(
    conn: &mut DB::Connection,
    table: &TableName,
    instance: &StoredInstance,
) -> Result<bool>
where
    DB: SqlDatabase,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    String: Bind<DB>,
    i64: Bind<DB>,
    Option<i64>: Bind<DB>,
{
    let d = DB::DIALECT;
    let params: Vec<String> = (1..=9).map(|n| d.param(n)).collect();
    let sql = format!(
        "INSERT INTO {t} (saga, instance_id, state, status, version, timeouts, started_at, \
         updated_at, completed_at) VALUES ({p})",
        t = d.table(table),
        p = params.join(", "),
    );
    // A plain insert: a taken id fails with a unique violation, which ends
    // the transaction on PostgreSQL; the caller rolls back either way.
    let done = sqlx::query(composed(&sql))
        .bind(instance.saga.clone())
        .bind(instance.instance_id.clone())
        .bind(instance.state.clone())
        .bind(instance.status.as_str().to_owned())
        .bind(instance.version)
        .bind(instance.timeouts_json())
        .bind(instance.started_at)
        .bind(instance.updated_at)
        .bind(instance.completed_at)
        .execute(&mut *conn)
        .await;
    match done {
        Ok(_) => Ok(true),
        Err(sqlx::Error::Database(db)) if db.is_unique_violation() => Ok(false),
        Err(e) => Err(failed(table)(e)),
    }
}

/// Writes `instance` if the stored one is at version `expected`.
pub(crate) async fn update<DB>(
    conn: &mut DB::Connection,
    table: &TableName,
    instance: &StoredInstance,
    expected: i64,
) -> Result<bool>
where
    DB: SqlDatabase,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    String: Bind<DB>,
    i64: Bind<DB>,
    Option<i64>: Bind<DB>,
{
    let d = DB::DIALECT;
    let p = |n| d.param(n);
    let sql = format!(
        "UPDATE {t} SET state = {}, status = {}, version = {}, timeouts = {}, updated_at = {}, \
         completed_at = {} WHERE saga = {} AND instance_id = {} AND version = {}",
        p(1),
        p(2),
        p(3),
        p(4),
        p(5),
        p(6),
        p(7),
        p(8),
        p(9),
        t = d.table(table),
    );
    let done = sqlx::query(composed(&sql))
        .bind(instance.state.clone())
        .bind(instance.status.as_str().to_owned())
        .bind(instance.version)
        .bind(instance.timeouts_json())
        .bind(instance.updated_at)
        .bind(instance.completed_at)
        .bind(instance.saga.clone())
        .bind(instance.instance_id.clone())
        .bind(expected)
        .execute(&mut *conn)
        .await
        .map_err(failed(table))?;
    Ok(DB::rows_affected(&done) == 1)
}

/// Instances as `query` asks, newest change first.
pub(crate) async fn list<DB>(
    pool: &sqlx::Pool<DB>,
    table: &TableName,
    query: &SagaQuery,
) -> Result<Vec<StoredInstance>>
where
    DB: SqlDatabase,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    String: Bind<DB>,
    i64: Bind<DB>,
    for<'r> Row: FromRow<'r, DB::Row>,
{
    let d = DB::DIALECT;
    let mut conditions = Vec::new();
    let mut n = 0;
    let mut param = || {
        n += 1;
        d.param(n)
    };
    if query.saga_name().is_some() {
        conditions.push(format!("saga = {}", param()));
    }
    if query.status_filter().is_some() {
        conditions.push(format!("status = {}", param()));
    }
    let limit = param();
    let filter = if conditions.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conditions.join(" AND "))
    };
    let sql = format!(
        "SELECT {c} FROM {t}{filter} ORDER BY updated_at DESC, saga, instance_id LIMIT {limit}",
        c = columns::<DB>(),
        t = d.table(table),
    );
    let mut select = sqlx::query_as::<_, Row>(composed(&sql));
    if let Some(saga) = query.saga_name() {
        select = select.bind(saga.to_owned());
    }
    if let Some(status) = query.status_filter() {
        select = select.bind(status.as_str().to_owned());
    }
    let rows = select
        .bind(query.row_limit())
        .fetch_all(pool)
        .await
        .map_err(failed(table))?;
    Ok(rows.into_iter().map(StoredInstance::from_row).collect())
}

/// A count row: saga, status, instances, pending timeouts, oldest start.
type CountRow = (String, String, i64, Option<i64>);

/// Instances per saga and status, with their oldest start; timeouts counted
/// from the rows (a short list per instance).
pub(crate) async fn counts<DB>(pool: &sqlx::Pool<DB>, table: &TableName) -> Result<Vec<SagaCount>>
where
    DB: SqlDatabase,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'r> CountRow: FromRow<'r, DB::Row>,
    for<'r> (String, String, String): FromRow<'r, DB::Row>,
{
    let d = DB::DIALECT;
    let sql = format!(
        "SELECT {saga}, status, count(*), min(started_at) FROM {t} GROUP BY saga, status \
         ORDER BY saga, status",
        saga = d.text("saga"),
        t = d.table(table),
    );
    let rows: Vec<CountRow> = sqlx::query_as(composed(&sql))
        .fetch_all(pool)
        .await
        .map_err(failed(table))?;
    // Only active instances wait for timeouts.
    let sql = format!(
        "SELECT {saga}, status, timeouts FROM {t} WHERE status = 'active' AND timeouts <> '[]'",
        saga = d.text("saga"),
        t = d.table(table),
    );
    let waiting: Vec<(String, String, String)> = sqlx::query_as(composed(&sql))
        .fetch_all(pool)
        .await
        .map_err(failed(table))?;
    Ok(rows
        .into_iter()
        .map(|(saga, status, instances, oldest)| {
            let pending_timeouts = waiting
                .iter()
                .filter(|(s, st, _)| *s == saga && *st == status)
                .map(|(_, _, t)| {
                    serde_json::from_str::<Vec<serde_json::Value>>(t).map_or(0, |v| v.len() as u64)
                })
                .sum();
            SagaCount {
                status: SagaStatus::parse(&status),
                saga,
                instances: u64::try_from(instances).unwrap_or(0),
                pending_timeouts,
                oldest_started_at: oldest.map(crate::saga::time),
            }
        })
        .collect())
}

/// Deletes up to `batch` instances completed before `before_ms`.
pub(crate) async fn delete_completed<DB>(
    pool: &sqlx::Pool<DB>,
    table: &TableName,
    before_ms: i64,
    batch: i64,
) -> Result<u64>
where
    DB: SqlDatabase,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    i64: Bind<DB>,
{
    let d = DB::DIALECT;
    let t = d.table(table);
    // Keyed by (saga, instance_id), not id: the generic limited delete
    // does not fit, so each database gets its own form.
    let sql = if d.has_returning() {
        format!(
            "DELETE FROM {t} WHERE (saga, instance_id) IN (SELECT saga, instance_id FROM {t} \
             WHERE status = 'completed' AND completed_at < {a} LIMIT {b})",
            a = d.param(1),
            b = d.param(2),
        )
    } else {
        format!(
            "DELETE FROM {t} WHERE status = 'completed' AND completed_at < {a} LIMIT {b}",
            a = d.param(1),
            b = d.param(2),
        )
    };
    let done = sqlx::query(composed(&sql))
        .bind(before_ms)
        .bind(batch)
        .execute(pool)
        .await
        .map_err(failed(table))?;
    Ok(DB::rows_affected(&done))
}

/// Implements [`SagaDatabase`](crate::saga::SagaDatabase) for a backend with
/// the functions above.
macro_rules! saga_database {
    ($db:ty, probe_first = $probe:expr) => {
        #[async_trait::async_trait]
        impl crate::saga::SagaDatabase for $db {
            async fn lock_instance(
                conn: &mut <$db as sqlx::Database>::Connection,
                table: &TableName,
                saga: &str,
                instance_id: &str,
            ) -> Result<Option<StoredInstance>> {
                select::<$db, _>(&mut *conn, table, saga, instance_id, true).await
            }

            async fn lock_to_start(
                conn: &mut <$db as sqlx::Database>::Connection,
                table: &TableName,
                saga: &str,
                instance_id: &str,
            ) -> Result<Option<StoredInstance>> {
                if $probe
                    && select::<$db, _>(&mut *conn, table, saga, instance_id, false)
                        .await?
                        .is_none()
                {
                    return Ok(None);
                }
                select::<$db, _>(&mut *conn, table, saga, instance_id, true).await
            }

            async fn insert_instance(
                conn: &mut <$db as sqlx::Database>::Connection,
                table: &TableName,
                instance: &StoredInstance,
            ) -> Result<bool> {
                insert::<$db>(conn, table, instance).await
            }

            async fn update_instance(
                conn: &mut <$db as sqlx::Database>::Connection,
                table: &TableName,
                instance: &StoredInstance,
                expected: i64,
            ) -> Result<bool> {
                update::<$db>(conn, table, instance, expected).await
            }

            async fn instance(
                pool: &sqlx::Pool<$db>,
                table: &TableName,
                saga: &str,
                instance_id: &str,
            ) -> Result<Option<StoredInstance>> {
                select::<$db, _>(pool, table, saga, instance_id, false).await
            }

            async fn instances(
                pool: &sqlx::Pool<$db>,
                table: &TableName,
                query: &SagaQuery,
            ) -> Result<Vec<StoredInstance>> {
                list::<$db>(pool, table, query).await
            }

            async fn counts(pool: &sqlx::Pool<$db>, table: &TableName) -> Result<Vec<SagaCount>> {
                counts::<$db>(pool, table).await
            }

            async fn delete_completed(
                pool: &sqlx::Pool<$db>,
                table: &TableName,
                before_ms: i64,
                batch: i64,
            ) -> Result<u64> {
                delete_completed::<$db>(pool, table, before_ms, batch).await
            }
        }
    };
}

#[cfg(feature = "postgres")]
saga_database!(sqlx::Postgres, probe_first = false);
#[cfg(feature = "mysql")]
saga_database!(sqlx::MySql, probe_first = true);
#[cfg(feature = "sqlite")]
saga_database!(sqlx::Sqlite, probe_first = false);
