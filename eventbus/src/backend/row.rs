//! Reading claimed outbox rows leniently. Other writers can leave values the
//! database accepts but we cannot decode: JSON numbers beyond `f64` or nested
//! past serde_json's limit, bytes that are not UTF-8 in a SQLite `TEXT`
//! column, an `event_id` that is not a UUID. Failing on one would fail the
//! claim of its whole batch, again and again, and stop its partition for
//! good; instead the row is read as far as it goes and marked with the
//! problem ([`OutboxRecord::defect`]), and the relay parks it with that reason.

#[cfg(any(feature = "mysql", feature = "sqlite"))]
use chrono::{DateTime, Utc};
#[cfg(any(feature = "mysql", feature = "sqlite"))]
use serde_json::Value;
use sqlx::{ColumnIndex, Decode, Row, Type};
#[cfg(any(feature = "mysql", feature = "sqlite"))]
use uuid::Uuid;

use crate::outbox::OutboxRecord;

/// One row being read; collects what did not decode.
pub(crate) struct Lenient<'r, R> {
    row: &'r R,
    problems: Vec<String>,
}

impl<'r, R> Lenient<'r, R>
where
    R: Row,
    &'static str: ColumnIndex<R>,
{
    pub(crate) fn new(row: &'r R) -> Self {
        Lenient {
            row,
            problems: Vec::new(),
        }
    }

    /// A column the database's types guarantee (ids, counters, partitions):
    /// failing to decode it is a real error.
    pub(crate) fn required<T>(&self, column: &'static str) -> Result<T, sqlx::Error>
    where
        T: Decode<'r, R::Database> + Type<R::Database>,
    {
        self.row.try_get(column)
    }

    /// A column decoded as `T`, or `None` with the problem noted.
    pub(crate) fn get<T>(&mut self, column: &'static str) -> Option<T>
    where
        T: Decode<'r, R::Database> + Type<R::Database>,
    {
        match self.row.try_get(column) {
            Ok(value) => Some(value),
            Err(e) => {
                self.problems.push(format!("{column}: {}", cause(&e)));
                None
            }
        }
    }

    /// A text column, from its bytes: text that is not UTF-8 is noted (and
    /// kept with replacement characters, so the row can still be keyed).
    #[cfg(any(feature = "mysql", feature = "sqlite"))]
    pub(crate) fn text(&mut self, column: &'static str) -> String
    where
        Vec<u8>: Decode<'r, R::Database> + Type<R::Database>,
    {
        let Some(bytes) = self.get::<Vec<u8>>(column) else {
            return String::new();
        };
        match String::from_utf8(bytes) {
            Ok(text) => text,
            Err(e) => {
                self.problems
                    .push(format!("{column}: not UTF-8 ({})", e.utf8_error()));
                String::from_utf8_lossy(e.as_bytes()).into_owned()
            }
        }
    }

    /// A nullable text column, as [`text`](Self::text).
    #[cfg(any(feature = "mysql", feature = "sqlite"))]
    pub(crate) fn optional_text(&mut self, column: &'static str) -> Option<String>
    where
        Option<Vec<u8>>: Decode<'r, R::Database> + Type<R::Database>,
    {
        let bytes = self.get::<Option<Vec<u8>>>(column)??;
        match String::from_utf8(bytes) {
            Ok(text) => Some(text),
            Err(e) => {
                self.problems
                    .push(format!("{column}: not UTF-8 ({})", e.utf8_error()));
                None
            }
        }
    }

    /// A text column holding JSON.
    #[cfg(any(feature = "mysql", feature = "sqlite"))]
    pub(crate) fn json(&mut self, column: &'static str) -> Value
    where
        Vec<u8>: Decode<'r, R::Database> + Type<R::Database>,
    {
        let text = self.text(column);
        self.parse_json(column, &text)
    }

    /// JSON text read some other way, parsed with the problem noted.
    #[cfg(any(feature = "mysql", feature = "sqlite"))]
    pub(crate) fn parse_json(&mut self, column: &'static str, text: &str) -> Value {
        match serde_json::from_str(text) {
            Ok(value) => value,
            Err(e) => {
                self.problems.push(format!("{column}: {e}"));
                Value::Null
            }
        }
    }

    /// A text column holding a UUID.
    #[cfg(any(feature = "mysql", feature = "sqlite"))]
    pub(crate) fn uuid(&mut self, column: &'static str) -> Uuid
    where
        Vec<u8>: Decode<'r, R::Database> + Type<R::Database>,
    {
        let text = self.text(column);
        match Uuid::parse_str(&text) {
            Ok(id) => id,
            Err(e) => {
                self.problems
                    .push(format!("{column} `{text}` is not a UUID: {e}"));
                Uuid::nil()
            }
        }
    }

    /// Notes a problem found while converting a value read some other way.
    #[cfg(feature = "sqlite")]
    pub(crate) fn note(&mut self, column: &'static str, problem: impl std::fmt::Display) {
        self.problems.push(format!("{column}: {problem}"));
    }

    /// The whole record of a row whose text columns are read from their
    /// bytes (MySQL, SQLite), with `created_at` as the caller decoded it.
    #[cfg(any(feature = "mysql", feature = "sqlite"))]
    pub(crate) fn text_record(
        mut self,
        created_at: DateTime<Utc>,
    ) -> Result<OutboxRecord, sqlx::Error>
    where
        i64: Decode<'r, R::Database> + Type<R::Database>,
        i32: Decode<'r, R::Database> + Type<R::Database>,
        Vec<u8>: Decode<'r, R::Database> + Type<R::Database>,
        Option<Vec<u8>>: Decode<'r, R::Database> + Type<R::Database>,
    {
        let record = OutboxRecord {
            id: self.required("id")?,
            event_id: self.uuid("event_id"),
            source: self.optional_text("source"),
            destination: self.text("destination"),
            partition_key: self.text("partition_key"),
            partition: self.required("partition")?,
            event_type: self.text("event_type"),
            schema_version: self.required("schema_version")?,
            subject: self.optional_text("subject"),
            headers: self.json("headers"),
            // The bytes the writer stored: no re-encoding needed.
            payload: self.text("payload"),
            created_at,
            attempts: self.required("attempts")?,
            defect: None,
        };
        Ok(self.finish(record))
    }

    /// Marks `record` with what did not decode, if anything.
    pub(crate) fn finish(self, mut record: OutboxRecord) -> OutboxRecord {
        if !self.problems.is_empty() {
            record.defect = Some(self.problems.join("; "));
        }
        record
    }
}

/// The innermost reason of a decoding error, without sqlx's column wrapper.
fn cause(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::ColumnDecode { source, .. } => source.to_string(),
        other => other.to_string(),
    }
}
