//! SQLite support shared by the outbox, inbox, migrations and relay store:
//! [`connect_options`] for opening a database the way eventbus expects, and the
//! timestamp representation every eventbus table uses on SQLite.
//!
//! # Timestamps
//!
//! SQLite has no timestamp type. eventbus stores every point in time as `TEXT`
//! in one fixed RFC 3339 form, UTC with milliseconds:
//! `YYYY-MM-DDTHH:MM:SS.SSSZ` (what `strftime('%Y-%m-%dT%H:%M:%fZ', 'now')`
//! returns). One fixed width means text order is time order, so the relay
//! compares timestamps as plain strings and indexes stay usable; the text reads
//! as itself in any SQL shell. Writers of plain SQL may give `created_at` in any
//! form SQLite's date functions understand; the relay normalises it to UTC.
//!
//! # Opening the database
//!
//! The pool is yours. Open it in WAL mode (readers never block the single
//! writer, and a relay polling the outbox does not stall your transactions) with
//! a busy timeout (a writer waits for the write lock instead of failing with
//! `database is locked`). [`connect_options`] does both.

mod attempts;
mod inbox;
mod migrate;
mod outbox;
mod relay;

pub use relay::SqliteRelayStore;

use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqliteQueryResult, SqliteRow, SqliteSynchronous,
};
use sqlx::Row;
use uuid::Uuid;

use crate::backend::dialect::Dialect;
pub(crate) use crate::backend::sql::json_array;
use crate::backend::sql::{decode_error, hyphenated, uuid_text, SqlDatabase, Towards};

/// How long a connection waits for SQLite's write lock before giving up.
pub const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Options for opening the SQLite database at `path` as eventbus expects: created
/// if missing, WAL journal, `synchronous = FULL` (a committed event survives a
/// power cut), foreign keys on, and a [`DEFAULT_BUSY_TIMEOUT`] wait for the write
/// lock.
///
/// ```no_run
/// # async fn demo() -> eventbus::Result<()> {
/// let options = eventbus::sqlite::connect_options("shop.db");
/// let pool = sqlx::sqlite::SqlitePoolOptions::new()
///     .max_connections(8)
///     .connect_with(options)
///     .await?;
/// eventbus::migrate(&pool).await?;
/// # Ok(()) }
/// ```
pub fn connect_options(path: impl AsRef<Path>) -> SqliteConnectOptions {
    SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .foreign_keys(true)
        .busy_timeout(DEFAULT_BUSY_TIMEOUT)
}

/// SQL for the current time in the eventbus timestamp form.
pub(crate) const NOW: &str = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')";

/// SQL for the current time shifted by the SQLite modifier bound as parameter
/// `?{param}` (see [`shift`]).
pub(crate) fn now_shifted(param: u8) -> String {
    format!("strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?{param})")
}

/// A SQLite date modifier moving a time `d` forward (`sign` 1) or back (-1),
/// with millisecond precision, e.g. `+1.500 seconds`.
pub(crate) fn shift(d: Duration, sign: i8) -> String {
    let millis = d.as_millis();
    let sign = if sign < 0 { '-' } else { '+' };
    format!("{sign}{}.{:03} seconds", millis / 1000, millis % 1000)
}

/// `time` in the eventbus timestamp form.
pub(crate) fn timestamp(time: &DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Parses a timestamp read back in the eventbus form (claims normalise the
/// column with `strftime` first).
pub(crate) fn parse_timestamp(text: &str) -> Result<DateTime<Utc>, chrono::ParseError> {
    DateTime::parse_from_rfc3339(text).map(|t| t.with_timezone(&Utc))
}

/// UUIDs and timestamps as text, lists as JSON arrays, spans as signed date
/// modifiers.
impl SqlDatabase for sqlx::Sqlite {
    const DIALECT: Dialect = Dialect::SQLITE;
    type Uuid = String;
    type List = String;
    type Partitions = String;
    type Span = String;
    type Time = String;

    fn uuid(id: Uuid) -> String {
        hyphenated(id)
    }

    fn list(values: &[i64]) -> String {
        json_array(values)
    }

    fn partitions(partitions: &[i32]) -> String {
        json_array(partitions)
    }

    fn span(span: Duration, towards: Towards) -> String {
        shift(span, if towards == Towards::Past { -1 } else { 1 })
    }

    fn time(time: &DateTime<Utc>) -> String {
        timestamp(time)
    }

    fn rows_affected(done: &SqliteQueryResult) -> u64 {
        done.rows_affected()
    }

    fn uuid_at(row: &SqliteRow, column: &str) -> Result<Uuid, sqlx::Error> {
        uuid_text(row, column)
    }

    fn text_at(row: &SqliteRow, column: &str) -> Result<String, sqlx::Error> {
        row.try_get(column)
    }

    fn time_at(row: &SqliteRow, column: &str) -> Result<DateTime<Utc>, sqlx::Error> {
        let text: Option<String> = row.try_get(column)?;
        parse_timestamp(&text.unwrap_or_default()).map_err(|e| decode_error(column, e))
    }
}

impl crate::backend::BackendDatabase for sqlx::Sqlite {
    const KIND: crate::backend::DatabaseKind = crate::backend::DatabaseKind::Sqlite;

    fn relay_store(
        pool: sqlx::Pool<Self>,
        table: crate::TableName,
    ) -> std::sync::Arc<dyn crate::relay::RelayStore> {
        std::sync::Arc::new(SqliteRelayStore::new(pool, table))
    }

    fn admin(pool: sqlx::Pool<Self>, table: crate::TableName) -> crate::relay::OutboxAdmin {
        crate::relay::OutboxAdmin::sqlite(pool, table)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shifts_are_sqlite_modifiers_with_milliseconds() {
        assert_eq!(shift(Duration::from_millis(1500), 1), "+1.500 seconds");
        assert_eq!(shift(Duration::from_millis(250), -1), "-0.250 seconds");
        assert_eq!(shift(Duration::from_secs(5), -1), "-5.000 seconds");
        assert_eq!(shift(Duration::ZERO, 1), "+0.000 seconds");
    }

    #[test]
    fn timestamps_have_one_fixed_width_form() {
        let t = DateTime::parse_from_rfc3339("2024-05-01T12:00:00.123456+02:00")
            .expect("valid")
            .with_timezone(&Utc);
        assert_eq!(timestamp(&t), "2024-05-01T10:00:00.123Z");
        let whole = DateTime::parse_from_rfc3339("2024-05-01T10:00:00Z")
            .expect("valid")
            .with_timezone(&Utc);
        assert_eq!(timestamp(&whole), "2024-05-01T10:00:00.000Z");
        assert_eq!(
            parse_timestamp("2024-05-01T10:00:00.123Z").expect("parses"),
            t - chrono::Duration::microseconds(456)
        );
    }
}
