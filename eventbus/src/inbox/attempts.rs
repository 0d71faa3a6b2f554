//! Durable attempt counts: the `<inbox>_attempts` table, one row per message a
//! consumer group has started handling and not yet finished (handled or
//! dead-lettered), keyed like the inbox ([`InboxKey`]).
//!
//! An effectively-once consumer counts every attempt here, in a short
//! transaction of its own, *before* its handler runs. A message whose handler
//! kills the process (abort, out of memory) leaves its count behind, so the
//! next process to receive it knows how often it was tried and dead-letters it
//! once the retry policy's attempts are used up, instead of running it again
//! forever.

use crate::envelope::Envelope;
#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
use crate::error::Error;
use crate::error::Result;
use crate::table::TableName;

#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
use super::InboxKey;

/// The suffix of the attempts table's name: `eventbus_inbox_attempts` next to
/// `eventbus_inbox`.
pub const ATTEMPTS_SUFFIX: &str = "_attempts";

/// A database that keeps durable attempt counts next to the inbox (table
/// `<inbox>_attempts`, created by the migrations). Implemented for each
/// compiled-in backend.
#[async_trait::async_trait]
pub trait AttemptsDatabase: sqlx::Database {
    /// Counts one more attempt at `envelope` by `consumer`, in one statement
    /// on `conn` (which commits by itself unless `conn` is in a transaction:
    /// a batch counts its messages in one), and returns the attempts recorded
    /// so far, this one included.
    async fn record_attempt(
        conn: &mut Self::Connection,
        inbox: &TableName,
        consumer: &str,
        envelope: &Envelope,
    ) -> Result<u32>;

    /// Takes back one attempt at `envelope` counted by
    /// [`record_attempt`](Self::record_attempt) that will not run yet (the
    /// consumer waits to run it alone).
    async fn uncount_attempt(
        conn: &mut Self::Connection,
        inbox: &TableName,
        consumer: &str,
        envelope: &Envelope,
    ) -> Result<()>;

    /// Notes why the latest attempt at `envelope` failed.
    async fn note_failure(
        pool: &sqlx::Pool<Self>,
        inbox: &TableName,
        consumer: &str,
        envelope: &Envelope,
        reason: &str,
    ) -> Result<()>;

    /// The last failure noted for `envelope`, if any.
    async fn last_failure(
        pool: &sqlx::Pool<Self>,
        inbox: &TableName,
        consumer: &str,
        envelope: &Envelope,
    ) -> Result<Option<String>>;

    /// Deletes the count of `envelope` on `conn` (inside the transaction that
    /// records it in the inbox, so both commit together).
    async fn forget_attempts(
        conn: &mut Self::Connection,
        inbox: &TableName,
        consumer: &str,
        envelope: &Envelope,
    ) -> Result<()>;
}

/// A count that does not fit `u32` is as good as used up.
#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
fn count(n: i64) -> u32 {
    u32::try_from(n.max(0)).unwrap_or(u32::MAX)
}

#[cfg(feature = "postgres")]
mod postgres {
    use sqlx::{PgConnection, PgPool, Postgres};

    use super::{count, AttemptsDatabase, Envelope, Error, InboxKey, Result, TableName};

    #[async_trait::async_trait]
    impl AttemptsDatabase for Postgres {
        async fn record_attempt(
            conn: &mut PgConnection,
            inbox: &TableName,
            consumer: &str,
            envelope: &Envelope,
        ) -> Result<u32> {
            let sql = format!(
                "INSERT INTO {a} AS a (consumer, source, message_id, attempts) \
                 VALUES ($1, $2, $3, 1) ON CONFLICT (consumer, source, message_id) \
                 DO UPDATE SET attempts = a.attempts + 1, updated_at = now() \
                 RETURNING attempts",
                a = inbox.with_suffix(super::ATTEMPTS_SUFFIX)
            );
            let key = InboxKey::of(envelope);
            let n: i32 = sqlx::query_scalar(&sql)
                .bind(consumer)
                .bind(key.source)
                .bind(key.message_id)
                .fetch_one(conn)
                .await
                .map_err(|e| Error::from_table_query(e, inbox))?;
            Ok(count(n.into()))
        }

        async fn uncount_attempt(
            conn: &mut PgConnection,
            inbox: &TableName,
            consumer: &str,
            envelope: &Envelope,
        ) -> Result<()> {
            let sql = format!(
                "UPDATE {a} SET attempts = attempts - 1 \
                 WHERE consumer = $1 AND source = $2 AND message_id = $3",
                a = inbox.with_suffix(super::ATTEMPTS_SUFFIX)
            );
            let key = InboxKey::of(envelope);
            sqlx::query(&sql)
                .bind(consumer)
                .bind(key.source)
                .bind(key.message_id)
                .execute(conn)
                .await
                .map_err(|e| Error::from_table_query(e, inbox))?;
            Ok(())
        }

        async fn note_failure(
            pool: &PgPool,
            inbox: &TableName,
            consumer: &str,
            envelope: &Envelope,
            reason: &str,
        ) -> Result<()> {
            let sql = format!(
                "UPDATE {a} SET last_error = $4 \
                 WHERE consumer = $1 AND source = $2 AND message_id = $3",
                a = inbox.with_suffix(super::ATTEMPTS_SUFFIX)
            );
            let key = InboxKey::of(envelope);
            sqlx::query(&sql)
                .bind(consumer)
                .bind(key.source)
                .bind(key.message_id)
                .bind(reason)
                .execute(pool)
                .await
                .map_err(|e| Error::from_table_query(e, inbox))?;
            Ok(())
        }

        async fn last_failure(
            pool: &PgPool,
            inbox: &TableName,
            consumer: &str,
            envelope: &Envelope,
        ) -> Result<Option<String>> {
            let sql = format!(
                "SELECT last_error FROM {a} \
                 WHERE consumer = $1 AND source = $2 AND message_id = $3",
                a = inbox.with_suffix(super::ATTEMPTS_SUFFIX)
            );
            let key = InboxKey::of(envelope);
            let row: Option<Option<String>> = sqlx::query_scalar(&sql)
                .bind(consumer)
                .bind(key.source)
                .bind(key.message_id)
                .fetch_optional(pool)
                .await
                .map_err(|e| Error::from_table_query(e, inbox))?;
            Ok(row.flatten())
        }

        async fn forget_attempts(
            conn: &mut PgConnection,
            inbox: &TableName,
            consumer: &str,
            envelope: &Envelope,
        ) -> Result<()> {
            let sql = format!(
                "DELETE FROM {a} WHERE consumer = $1 AND source = $2 AND message_id = $3",
                a = inbox.with_suffix(super::ATTEMPTS_SUFFIX)
            );
            let key = InboxKey::of(envelope);
            sqlx::query(&sql)
                .bind(consumer)
                .bind(key.source)
                .bind(key.message_id)
                .execute(conn)
                .await
                .map_err(|e| Error::from_table_query(e, inbox))?;
            Ok(())
        }
    }
}

#[cfg(feature = "sqlite")]
mod sqlite {
    use sqlx::{Sqlite, SqliteConnection, SqlitePool};

    use super::{count, AttemptsDatabase, Envelope, Error, InboxKey, Result, TableName};
    use crate::sqlite::NOW;

    #[async_trait::async_trait]
    impl AttemptsDatabase for Sqlite {
        async fn record_attempt(
            conn: &mut SqliteConnection,
            inbox: &TableName,
            consumer: &str,
            envelope: &Envelope,
        ) -> Result<u32> {
            let sql = format!(
                "INSERT INTO {a} (consumer, source, message_id, attempts) \
                 VALUES (?1, ?2, ?3, 1) ON CONFLICT (consumer, source, message_id) \
                 DO UPDATE SET attempts = attempts + 1, updated_at = {NOW} \
                 RETURNING attempts",
                a = inbox.with_suffix(super::ATTEMPTS_SUFFIX)
            );
            let key = InboxKey::of(envelope);
            let n: i64 = sqlx::query_scalar(&sql)
                .bind(consumer)
                .bind(key.source)
                .bind(key.message_id)
                .fetch_one(conn)
                .await
                .map_err(|e| Error::from_table_query(e, inbox))?;
            Ok(count(n))
        }

        async fn uncount_attempt(
            conn: &mut SqliteConnection,
            inbox: &TableName,
            consumer: &str,
            envelope: &Envelope,
        ) -> Result<()> {
            let sql = format!(
                "UPDATE {a} SET attempts = attempts - 1 \
                 WHERE consumer = ?1 AND source = ?2 AND message_id = ?3",
                a = inbox.with_suffix(super::ATTEMPTS_SUFFIX)
            );
            let key = InboxKey::of(envelope);
            sqlx::query(&sql)
                .bind(consumer)
                .bind(key.source)
                .bind(key.message_id)
                .execute(conn)
                .await
                .map_err(|e| Error::from_table_query(e, inbox))?;
            Ok(())
        }

        async fn note_failure(
            pool: &SqlitePool,
            inbox: &TableName,
            consumer: &str,
            envelope: &Envelope,
            reason: &str,
        ) -> Result<()> {
            let sql = format!(
                "UPDATE {a} SET last_error = ?4 \
                 WHERE consumer = ?1 AND source = ?2 AND message_id = ?3",
                a = inbox.with_suffix(super::ATTEMPTS_SUFFIX)
            );
            let key = InboxKey::of(envelope);
            sqlx::query(&sql)
                .bind(consumer)
                .bind(key.source)
                .bind(key.message_id)
                .bind(reason)
                .execute(pool)
                .await
                .map_err(|e| Error::from_table_query(e, inbox))?;
            Ok(())
        }

        async fn last_failure(
            pool: &SqlitePool,
            inbox: &TableName,
            consumer: &str,
            envelope: &Envelope,
        ) -> Result<Option<String>> {
            let sql = format!(
                "SELECT last_error FROM {a} \
                 WHERE consumer = ?1 AND source = ?2 AND message_id = ?3",
                a = inbox.with_suffix(super::ATTEMPTS_SUFFIX)
            );
            let key = InboxKey::of(envelope);
            let row: Option<Option<String>> = sqlx::query_scalar(&sql)
                .bind(consumer)
                .bind(key.source)
                .bind(key.message_id)
                .fetch_optional(pool)
                .await
                .map_err(|e| Error::from_table_query(e, inbox))?;
            Ok(row.flatten())
        }

        async fn forget_attempts(
            conn: &mut SqliteConnection,
            inbox: &TableName,
            consumer: &str,
            envelope: &Envelope,
        ) -> Result<()> {
            let sql = format!(
                "DELETE FROM {a} WHERE consumer = ?1 AND source = ?2 AND message_id = ?3",
                a = inbox.with_suffix(super::ATTEMPTS_SUFFIX)
            );
            let key = InboxKey::of(envelope);
            sqlx::query(&sql)
                .bind(consumer)
                .bind(key.source)
                .bind(key.message_id)
                .execute(conn)
                .await
                .map_err(|e| Error::from_table_query(e, inbox))?;
            Ok(())
        }
    }
}

#[cfg(feature = "mysql")]
mod mysql {
    use sqlx::{MySql, MySqlConnection, MySqlPool};

    use super::{count, AttemptsDatabase, Envelope, Error, InboxKey, Result, TableName};
    use crate::mysql::NOW;

    #[async_trait::async_trait]
    impl AttemptsDatabase for MySql {
        async fn record_attempt(
            conn: &mut MySqlConnection,
            inbox: &TableName,
            consumer: &str,
            envelope: &Envelope,
        ) -> Result<u32> {
            // MySQL has no RETURNING: `LAST_INSERT_ID(expr)` hands the new
            // count back in the statement's result, so one statement still
            // does. A fresh row evaluates no expression and reports 0: the
            // first attempt.
            let sql = format!(
                "INSERT INTO {a} (consumer, source, message_id, attempts) VALUES (?, ?, ?, 1) \
                 ON DUPLICATE KEY UPDATE attempts = LAST_INSERT_ID(attempts + 1), \
                 updated_at = {NOW}",
                a = inbox.mysql_with_suffix(super::ATTEMPTS_SUFFIX)
            );
            let key = InboxKey::of(envelope);
            let done = sqlx::query(&sql)
                .bind(consumer)
                .bind(key.source)
                .bind(key.message_id)
                .execute(conn)
                .await
                .map_err(|e| Error::from_table_query(e, inbox))?;
            let n = i64::try_from(done.last_insert_id()).unwrap_or(i64::MAX);
            Ok(count(n.max(1)))
        }

        async fn uncount_attempt(
            conn: &mut MySqlConnection,
            inbox: &TableName,
            consumer: &str,
            envelope: &Envelope,
        ) -> Result<()> {
            let sql = format!(
                "UPDATE {a} SET attempts = attempts - 1 \
                 WHERE consumer = ? AND source = ? AND message_id = ?",
                a = inbox.mysql_with_suffix(super::ATTEMPTS_SUFFIX)
            );
            let key = InboxKey::of(envelope);
            sqlx::query(&sql)
                .bind(consumer)
                .bind(key.source)
                .bind(key.message_id)
                .execute(conn)
                .await
                .map_err(|e| Error::from_table_query(e, inbox))?;
            Ok(())
        }

        async fn note_failure(
            pool: &MySqlPool,
            inbox: &TableName,
            consumer: &str,
            envelope: &Envelope,
            reason: &str,
        ) -> Result<()> {
            let sql = format!(
                "UPDATE {a} SET last_error = ? \
                 WHERE consumer = ? AND source = ? AND message_id = ?",
                a = inbox.mysql_with_suffix(super::ATTEMPTS_SUFFIX)
            );
            let key = InboxKey::of(envelope);
            sqlx::query(&sql)
                .bind(reason)
                .bind(consumer)
                .bind(key.source)
                .bind(key.message_id)
                .execute(pool)
                .await
                .map_err(|e| Error::from_table_query(e, inbox))?;
            Ok(())
        }

        async fn last_failure(
            pool: &MySqlPool,
            inbox: &TableName,
            consumer: &str,
            envelope: &Envelope,
        ) -> Result<Option<String>> {
            let sql = format!(
                "SELECT last_error FROM {a} \
                 WHERE consumer = ? AND source = ? AND message_id = ?",
                a = inbox.mysql_with_suffix(super::ATTEMPTS_SUFFIX)
            );
            let key = InboxKey::of(envelope);
            let row: Option<Option<String>> = sqlx::query_scalar(&sql)
                .bind(consumer)
                .bind(key.source)
                .bind(key.message_id)
                .fetch_optional(pool)
                .await
                .map_err(|e| Error::from_table_query(e, inbox))?;
            Ok(row.flatten())
        }

        async fn forget_attempts(
            conn: &mut MySqlConnection,
            inbox: &TableName,
            consumer: &str,
            envelope: &Envelope,
        ) -> Result<()> {
            let sql = format!(
                "DELETE FROM {a} WHERE consumer = ? AND source = ? AND message_id = ?",
                a = inbox.mysql_with_suffix(super::ATTEMPTS_SUFFIX)
            );
            let key = InboxKey::of(envelope);
            sqlx::query(&sql)
                .bind(consumer)
                .bind(key.source)
                .bind(key.message_id)
                .execute(conn)
                .await
                .map_err(|e| Error::from_table_query(e, inbox))?;
            Ok(())
        }
    }
}
