//! An outbox row as the log carries it, read into an [`OutboxRecord`].
//!
//! The same leniency as a claimed row (`backend::row`): a value the relay
//! cannot read marks the record with a [`defect`](OutboxRecord::defect), and
//! the relay parks it with the reason instead of stopping on it. Only a row
//! without a readable `id` is an error: nothing could park it.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::pgoutput::{Datum, Row};
use super::value::{ValueError, PG_EPOCH_UNIX_MICROS};
use crate::outbox::OutboxRecord;

/// The outbox columns the publication sends, in the table's order. Not
/// `partition`: PostgreSQL 15 publishes no generated column, and the log
/// relay keys events on `partition_key` alone (the partition is a function
/// of it). Not `txid`, `state` or the retry columns: an insert's are the
/// defaults.
pub(crate) const PUBLISHED_COLUMNS: &[&str] = &[
    "id",
    "event_id",
    "source",
    "destination",
    "partition_key",
    "event_type",
    "schema_version",
    "subject",
    "headers",
    "payload",
    "created_at",
    "attempts",
];

/// Why a logged insert cannot become a record at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum RecordError {
    /// The row has no `id` the relay can read.
    #[error("an outbox insert without a readable id: {0}")]
    NoId(String),
}

/// Reads `row`, an insert into the outbox table. Its `partition` is 0 (see
/// [`PUBLISHED_COLUMNS`]).
///
/// # Errors
///
/// [`RecordError::NoId`] when `id` is missing, NULL or not an `int8`.
pub(crate) fn outbox_record(row: &Row<'_, '_>) -> Result<OutboxRecord, RecordError> {
    let id = match row.get("id").map(Datum::int8) {
        Some(Ok(Some(id))) => id,
        Some(Ok(None)) => return Err(RecordError::NoId("NULL".into())),
        Some(Err(e)) => return Err(RecordError::NoId(e.to_string())),
        None => return Err(RecordError::NoId("no such column in the relation".into())),
    };
    let mut r = Reader {
        row,
        problems: Vec::new(),
    };
    let event_id = r
        .value("event_id", Datum::uuid)
        .map(Uuid::from_bytes)
        .unwrap_or_else(Uuid::nil);
    let source = r.optional("source", Datum::text).map(str::to_owned);
    let destination = r.text("destination");
    let partition_key = r.text("partition_key");
    let event_type = r.text("event_type");
    let schema_version = r.value("schema_version", Datum::int4).unwrap_or(1);
    let subject = r.optional("subject", Datum::text).map(str::to_owned);
    let headers = match r.value("headers", Datum::jsonb) {
        Some(text) => serde_json::from_str(text).unwrap_or_else(|e| {
            r.note("headers", e);
            serde_json::Value::Null
        }),
        None => serde_json::Value::Null,
    };
    // jsonb prints a space after `,` and `:`; the relay sends the compact
    // form, as a claimed row's.
    let payload = r
        .value("payload", Datum::jsonb)
        .map(super::super::relay::compact)
        .unwrap_or_default();
    let created_at = r
        .value("created_at", Datum::timestamptz)
        .and_then(|micros| {
            let time = micros
                .checked_add(PG_EPOCH_UNIX_MICROS)
                .and_then(DateTime::<Utc>::from_timestamp_micros);
            if time.is_none() {
                r.note(
                    "created_at",
                    format!("{micros} µs since 2000 is out of range"),
                );
            }
            time
        })
        .unwrap_or(DateTime::<Utc>::UNIX_EPOCH);
    let attempts = r.value("attempts", Datum::int4).unwrap_or(0);
    let defect = (!r.problems.is_empty()).then(|| r.problems.join("; "));
    Ok(OutboxRecord {
        id,
        event_id,
        source,
        destination,
        partition_key,
        partition: 0,
        event_type,
        schema_version,
        subject,
        headers,
        payload,
        created_at,
        attempts,
        defect,
    })
}

/// One row being read; collects what did not decode.
struct Reader<'x, 'r, 'a> {
    row: &'x Row<'r, 'a>,
    problems: Vec<String>,
}

impl<'a> Reader<'_, '_, 'a> {
    fn note(&mut self, column: &str, problem: impl std::fmt::Display) {
        self.problems.push(format!("column `{column}`: {problem}"));
    }

    /// `column` read by `read`; `None` (and noted) when the row lacks it.
    fn read<T>(
        &mut self,
        column: &str,
        read: impl FnOnce(Datum<'a>) -> Result<Option<T>, ValueError>,
    ) -> Option<Result<Option<T>, ValueError>> {
        let datum = self.row.get(column);
        if datum.is_none() {
            self.note(column, "not in the published row");
        }
        datum.map(read)
    }

    /// A value that may be NULL.
    fn optional<T>(
        &mut self,
        column: &str,
        read: impl FnOnce(Datum<'a>) -> Result<Option<T>, ValueError>,
    ) -> Option<T> {
        match self.read(column, read)? {
            Ok(value) => value,
            Err(e) => {
                self.note(column, e);
                None
            }
        }
    }

    /// A value the table declares `NOT NULL`.
    fn value<T>(
        &mut self,
        column: &str,
        read: impl FnOnce(Datum<'a>) -> Result<Option<T>, ValueError>,
    ) -> Option<T> {
        match self.read(column, read)? {
            Ok(Some(value)) => Some(value),
            Ok(None) => {
                self.note(column, "NULL");
                None
            }
            Err(e) => {
                self.note(column, e);
                None
            }
        }
    }

    fn text(&mut self, column: &str) -> String {
        self.value(column, Datum::text)
            .map(str::to_owned)
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::super::pgoutput::{Column, Relation, RelationCache};
    use super::*;

    const TEXT: u32 = 25;
    const INT8: u32 = 20;
    const INT4: u32 = 23;
    const UUID: u32 = 2950;
    const JSONB: u32 = 3802;
    const TIMESTAMPTZ: u32 = 1184;

    fn relation() -> Relation {
        let types = [
            INT8,
            UUID,
            TEXT,
            TEXT,
            TEXT,
            TEXT,
            INT4,
            TEXT,
            JSONB,
            JSONB,
            TIMESTAMPTZ,
            INT4,
        ];
        Relation {
            oid: 16384,
            namespace: "public".into(),
            name: "eventbus_outbox".into(),
            replica_identity: b'd',
            columns: PUBLISHED_COLUMNS
                .iter()
                .zip(types)
                .map(|(name, type_oid)| Column {
                    name: (*name).into(),
                    type_oid,
                    type_modifier: -1,
                    key: *name == "id",
                })
                .collect(),
        }
    }

    /// The binary values of one row, as the walsender sends them.
    fn binary_row(event_id: [u8; 16], payload: &str, micros: i64) -> Vec<Vec<u8>> {
        let jsonb = |text: &str| [&[1u8][..], text.as_bytes()].concat();
        vec![
            7i64.to_be_bytes().to_vec(),
            event_id.to_vec(),
            Vec::new(), // source: replaced by NULL below
            b"orders".to_vec(),
            b"o-1".to_vec(),
            b"com.example.order.placed".to_vec(),
            2i32.to_be_bytes().to_vec(),
            b"o-1".to_vec(),
            jsonb(r#"{"traceparent": "00-abc-def-01"}"#),
            jsonb(payload),
            micros.to_be_bytes().to_vec(),
            0i32.to_be_bytes().to_vec(),
        ]
    }

    fn read(values: &[Vec<u8>], nulls: &[usize]) -> Result<OutboxRecord, RecordError> {
        let mut cache = RelationCache::default();
        cache.insert(relation());
        let tuple: Vec<Datum<'_>> = values
            .iter()
            .enumerate()
            .map(|(i, v)| {
                if nulls.contains(&i) {
                    Datum::Null
                } else {
                    Datum::Binary(v)
                }
            })
            .collect();
        let row = cache.row(16384, &tuple).expect("the relation's columns");
        outbox_record(&row)
    }

    #[test]
    fn a_logged_insert_reads_as_the_claimed_row_would() {
        let event_id = *Uuid::now_v7().as_bytes();
        // 2026-12-07T00:00:00Z, in µs since 2000-01-01.
        let created = DateTime::parse_from_rfc3339("2026-12-07T00:00:00Z")
            .expect("a time")
            .with_timezone(&Utc);
        let micros = created.timestamp_micros() - PG_EPOCH_UNIX_MICROS;
        let r = read(
            &binary_row(event_id, r#"{"a": [1, 2], "s": "x, y"}"#, micros),
            &[2],
        )
        .expect("a record");
        assert_eq!(r.id, 7);
        assert_eq!(r.event_id, Uuid::from_bytes(event_id));
        assert_eq!(r.source, None);
        assert_eq!(r.destination, "orders");
        assert_eq!(r.partition_key, "o-1");
        assert_eq!(r.event_type, "com.example.order.placed");
        assert_eq!(r.schema_version, 2);
        assert_eq!(r.subject.as_deref(), Some("o-1"));
        assert_eq!(
            r.headers,
            serde_json::json!({"traceparent": "00-abc-def-01"})
        );
        assert_eq!(
            r.payload, r#"{"a":[1,2],"s":"x, y"}"#,
            "compact, strings untouched"
        );
        assert_eq!(r.created_at, created);
        assert_eq!(r.attempts, 0);
        assert_eq!(r.defect, None);
    }

    #[test]
    fn an_unreadable_value_marks_the_record_instead_of_failing() {
        let mut values = binary_row(*Uuid::nil().as_bytes(), "{}", 0);
        values[1] = b"short".to_vec(); // event_id: not 16 bytes
        values[9] = b"\x02{}".to_vec(); // payload: an unknown jsonb version
        let r = read(&values, &[2]).expect("still a record");
        let defect = r.defect.expect("marked");
        assert!(defect.contains("`event_id`"), "{defect}");
        assert!(defect.contains("`payload`"), "{defect}");
        assert_eq!(r.id, 7, "the id still reads, so the row can be parked");
    }

    #[test]
    fn a_null_in_a_not_null_column_is_a_defect_and_a_null_id_an_error() {
        let values = binary_row(*Uuid::nil().as_bytes(), "{}", 0);
        let r = read(&values, &[2, 3]).expect("a record");
        assert!(r.defect.expect("marked").contains("`destination`: NULL"));
        assert_eq!(read(&values, &[0]), Err(RecordError::NoId("NULL".into())));
    }
}
