//! The attempt counts' statements shared by the three backends: all but the
//! counting upsert differ only in spelling, so one macro implements
//! [`AttemptsDatabase`](crate::inbox::AttemptsDatabase) for each, around the
//! backend's own `record` (invoked from each backend's `attempts.rs`); the
//! databases with `RETURNING` share that too ([`record_returning`]).

#[cfg(any(feature = "postgres", feature = "sqlite"))]
use sqlx::{Decode, Executor, IntoArguments, Type};

use crate::backend::dialect::Dialect;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
use crate::backend::sql::{composed, Bind, SqlDatabase};
#[cfg(any(feature = "postgres", feature = "sqlite"))]
use crate::envelope::Envelope;
use crate::error::Error;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
use crate::inbox::{InboxKey, ATTEMPTS_SUFFIX};
use crate::table::TableName;

/// Counts one more attempt with one upsert that returns the count
/// (PostgreSQL, SQLite; see `AttemptsDatabase::record_attempt`).
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub(crate) async fn record_returning<DB>(
    conn: &mut DB::Connection,
    inbox: &TableName,
    consumer: &str,
    envelope: &Envelope,
) -> crate::Result<u32>
where
    DB: SqlDatabase,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
    i64: for<'r> Decode<'r, DB> + Type<DB>,
    String: Bind<DB>,
{
    let d = DB::DIALECT;
    let sql = format!(
        "INSERT INTO {a} AS a (consumer, source, message_id, attempts) \
         VALUES ({}, {}, {}, 1) ON CONFLICT (consumer, source, message_id) \
         DO UPDATE SET attempts = a.attempts + 1, updated_at = {now} \
         RETURNING CAST(attempts AS BIGINT)",
        d.param(1),
        d.param(2),
        d.param(3),
        a = d.object(inbox, ATTEMPTS_SUFFIX),
        now = d.now(),
    );
    let key = InboxKey::of(envelope);
    let n: i64 = sqlx::query_scalar(composed(&sql))
        .bind(consumer.to_owned())
        .bind(key.source.to_owned())
        .bind(key.message_id.to_owned())
        .fetch_one(conn)
        .await
        .map_err(failed(inbox))?;
    Ok(crate::backend::count(n))
}

/// The row of one message: `consumer`, `source` and `message_id` bound as
/// parameters `first` to `first + 2`.
pub(crate) fn key_filter(dialect: Dialect, first: usize) -> String {
    format!(
        "consumer = {} AND source = {} AND message_id = {}",
        dialect.param(first),
        dialect.param(first + 1),
        dialect.param(first + 2)
    )
}

/// The error of a statement on the attempts table of `inbox`.
pub(crate) fn failed(inbox: &TableName) -> impl Fn(sqlx::Error) -> Error + '_ {
    move |e| Error::from_table_query(e, inbox)
}

/// Implements `AttemptsDatabase` for `$db`, spelled in `$dialect`, counting
/// with the backend's `$record(conn, inbox, consumer, envelope)`.
macro_rules! attempts_database {
    ($db:ty, $dialect:expr, record = $record:path) => {
        #[async_trait::async_trait]
        impl $crate::inbox::AttemptsDatabase for $db {
            async fn savepoint(
                conn: &mut <$db as sqlx::Database>::Connection,
                step: $crate::inbox::Savepoint,
            ) -> $crate::Result<()> {
                sqlx::query(step.sql())
                    .execute(conn)
                    .await
                    .map_err(|e| $crate::Error::from(e))?;
                Ok(())
            }

            async fn record_attempt(
                conn: &mut <$db as sqlx::Database>::Connection,
                inbox: &$crate::TableName,
                consumer: &str,
                envelope: &$crate::Envelope,
            ) -> $crate::Result<u32> {
                $record(conn, inbox, consumer, envelope).await
            }

            async fn uncount_attempt(
                conn: &mut <$db as sqlx::Database>::Connection,
                inbox: &$crate::TableName,
                consumer: &str,
                envelope: &$crate::Envelope,
            ) -> $crate::Result<()> {
                let sql = format!(
                    "UPDATE {a} SET attempts = attempts - 1 WHERE {key}",
                    a = $dialect.object(inbox, $crate::inbox::ATTEMPTS_SUFFIX),
                    key = $crate::backend::attempts::key_filter($dialect, 1),
                );
                let key = $crate::inbox::InboxKey::of(envelope);
                sqlx::query($crate::backend::sql::composed(&sql))
                    .bind(consumer)
                    .bind(key.source)
                    .bind(key.message_id)
                    .execute(conn)
                    .await
                    .map_err($crate::backend::attempts::failed(inbox))?;
                Ok(())
            }

            async fn note_failure(
                pool: &sqlx::Pool<Self>,
                inbox: &$crate::TableName,
                consumer: &str,
                envelope: &$crate::Envelope,
                reason: &str,
            ) -> $crate::Result<()> {
                let sql = format!(
                    "UPDATE {a} SET last_error = {r} WHERE {key}",
                    a = $dialect.object(inbox, $crate::inbox::ATTEMPTS_SUFFIX),
                    r = $dialect.param(1),
                    key = $crate::backend::attempts::key_filter($dialect, 2),
                );
                let key = $crate::inbox::InboxKey::of(envelope);
                sqlx::query($crate::backend::sql::composed(&sql))
                    .bind(reason)
                    .bind(consumer)
                    .bind(key.source)
                    .bind(key.message_id)
                    .execute(pool)
                    .await
                    .map_err($crate::backend::attempts::failed(inbox))?;
                Ok(())
            }

            async fn last_failure(
                pool: &sqlx::Pool<Self>,
                inbox: &$crate::TableName,
                consumer: &str,
                envelope: &$crate::Envelope,
            ) -> $crate::Result<Option<String>> {
                let sql = format!(
                    "SELECT last_error FROM {a} WHERE {key}",
                    a = $dialect.object(inbox, $crate::inbox::ATTEMPTS_SUFFIX),
                    key = $crate::backend::attempts::key_filter($dialect, 1),
                );
                let key = $crate::inbox::InboxKey::of(envelope);
                let row: Option<Option<String>> =
                    sqlx::query_scalar($crate::backend::sql::composed(&sql))
                        .bind(consumer)
                        .bind(key.source)
                        .bind(key.message_id)
                        .fetch_optional(pool)
                        .await
                        .map_err($crate::backend::attempts::failed(inbox))?;
                Ok(row.flatten())
            }

            async fn forget_attempts(
                conn: &mut <$db as sqlx::Database>::Connection,
                inbox: &$crate::TableName,
                consumer: &str,
                envelope: &$crate::Envelope,
            ) -> $crate::Result<()> {
                let sql = format!(
                    "DELETE FROM {a} WHERE {key}",
                    a = $dialect.object(inbox, $crate::inbox::ATTEMPTS_SUFFIX),
                    key = $crate::backend::attempts::key_filter($dialect, 1),
                );
                let key = $crate::inbox::InboxKey::of(envelope);
                sqlx::query($crate::backend::sql::composed(&sql))
                    .bind(consumer)
                    .bind(key.source)
                    .bind(key.message_id)
                    .execute(conn)
                    .await
                    .map_err($crate::backend::attempts::failed(inbox))?;
                Ok(())
            }
        }
    };
}

pub(crate) use attempts_database;
