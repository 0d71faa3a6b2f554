//! [`SqlDatabase`]: how each database binds and reads the values eventbus's
//! shared statements use — UUIDs, lists, spans of time, timestamps — so the
//! code that runs a statement is written once for all three databases. The
//! SQL text itself comes from [`Dialect`].
//!
//! Generic code over `DB: SqlDatabase` also needs sqlx's executor bounds,
//! which a trait cannot imply, so each `impl` that runs statements states
//! them once in its `where` clause:
//!
//! ```text
//! for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
//! DB::Arguments: sqlx::IntoArguments<DB>,
//! ```
//!
//! plus the `Decode`/`Type` bounds of the columns it reads.

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use sqlx::{Database, Encode, Pool, Transaction, Type};
use uuid::Uuid;

use crate::backend::dialect::Dialect;

/// Statement text eventbus composed itself, handed to sqlx.
///
/// sqlx takes `&'static str` as SQL and anything else only when asserted safe
/// from injection. eventbus's dynamic text is its own SQL around table names
/// that [`TableName`](crate::TableName) validated and the dialect quoted,
/// plus placeholders and counts it generated: values are always bound, never
/// written into the text. Every such statement passes through here, so that
/// rule is stated (and can be audited) in one place.
pub(crate) fn composed(text: impl Into<String>) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(text.into())
}

/// A value a statement can bind on `DB`.
pub(crate) trait Bind<DB: Database>:
    for<'q> Encode<'q, DB> + Type<DB> + Send + 'static
{
}

impl<DB: Database, T> Bind<DB> for T where T: for<'q> Encode<'q, DB> + Type<DB> + Send + 'static {}

/// Which way a bound span moves the current time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Towards {
    /// Back: [`Dialect::ago`].
    Past,
    /// Forward: [`Dialect::later`].
    Future,
}

/// One database's way of binding and reading the values the shared
/// statements use.
pub(crate) trait SqlDatabase: Database {
    /// How its SQL is spelled.
    const DIALECT: Dialect;

    /// A UUID as bound: native on PostgreSQL, hyphenated text elsewhere.
    type Uuid: Bind<Self>;
    /// A list of integers, as [`Dialect::in_list`] reads it.
    type List: Bind<Self>;
    /// A list of partitions, as [`Dialect::in_list`] reads it.
    type Partitions: Bind<Self>;
    /// A span of time, as [`Dialect::ago`] and [`Dialect::later`] read it.
    type Span: Bind<Self>;
    /// A point in time, as the timestamp columns hold it.
    type Time: Bind<Self>;

    /// `id` as bound.
    fn uuid(id: Uuid) -> Self::Uuid;

    /// `values` as one parameter.
    fn list(values: &[i64]) -> Self::List;

    /// `partitions` as one parameter.
    fn partitions(partitions: &[i32]) -> Self::Partitions;

    /// `span` as one parameter, moving the time `towards` the past or the
    /// future (SQLite binds the sign; the others write it in the SQL).
    fn span(span: Duration, towards: Towards) -> Self::Span;

    /// `time` as bound.
    // PostgreSQL's outbox binds arrays of its own; the others use this.
    #[cfg_attr(not(any(feature = "mysql", feature = "sqlite")), allow(dead_code))]
    fn time(time: &DateTime<Utc>) -> Self::Time;

    /// How many rows a statement changed.
    fn rows_affected(done: &Self::QueryResult) -> u64;

    /// The UUID in `column` of `row`.
    fn uuid_at(row: &Self::Row, column: &str) -> Result<Uuid, sqlx::Error>;

    /// The text in `column` of `row`, whatever its collation.
    fn text_at(row: &Self::Row, column: &str) -> Result<String, sqlx::Error>;

    /// The point in time in `column` of `row`, selected with
    /// [`Dialect::read_time`].
    fn time_at(row: &Self::Row, column: &str) -> Result<DateTime<Utc>, sqlx::Error>;

    /// A relay's name as stored: whole, or cut to what the column holds.
    fn stored_name(name: &str) -> &str {
        name
    }

    /// Begins a transaction for statements that read the lease table to fence
    /// their writes (MySQL: at `READ COMMITTED`).
    fn begin(pool: &Pool<Self>) -> BoxFuture<'_, Result<Transaction<'static, Self>, sqlx::Error>> {
        Box::pin(pool.begin())
    }
}

/// A column that did not decode.
#[cfg(any(feature = "mysql", feature = "sqlite"))]
pub(crate) fn decode_error(
    column: &str,
    e: impl std::error::Error + Send + Sync + 'static,
) -> sqlx::Error {
    sqlx::Error::ColumnDecode {
        index: column.to_owned(),
        source: Box::new(e),
    }
}

/// A UUID stored as hyphenated text (MySQL, SQLite), from `column` of `row`.
#[cfg(any(feature = "mysql", feature = "sqlite"))]
pub(crate) fn uuid_text<R>(row: &R, column: &str) -> Result<Uuid, sqlx::Error>
where
    R: sqlx::Row,
    for<'c> &'c str: sqlx::ColumnIndex<R>,
    String: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let id: String = row.try_get(column)?;
    Uuid::parse_str(&id).map_err(|e| decode_error(column, e))
}

/// A UUID bound as hyphenated text (MySQL, SQLite).
#[cfg(any(feature = "mysql", feature = "sqlite"))]
pub(crate) fn hyphenated(id: Uuid) -> String {
    id.hyphenated().to_string()
}

/// A JSON array of `values`, bound as one parameter where the database has
/// no array parameters.
#[cfg(any(feature = "mysql", feature = "sqlite"))]
pub(crate) fn json_array<T: serde::Serialize>(values: &[T]) -> String {
    // Serializing integers, strings and tuples of them cannot fail.
    serde_json::to_string(values).unwrap_or_else(|_| "[]".to_owned())
}
