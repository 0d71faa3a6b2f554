//! An outbox row as any writer may leave it (rows inserted by plain SQL from
//! other languages included): the relay turns it into a CloudEvent or a
//! clear error, never a panic, and the event it builds is valid on the wire.
#![no_main]

use arbitrary::Arbitrary;
use chrono::DateTime;
use eventbus::outbox::OutboxRecord;
use eventbus::Envelope;
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Row {
    id: i64,
    event_id: u128,
    source: Option<String>,
    destination: String,
    partition_key: String,
    partition: i32,
    event_type: String,
    schema_version: i32,
    subject: Option<String>,
    /// JSON text of the `headers` column.
    headers: String,
    payload: String,
    created_at_secs: i64,
    attempts: i32,
    default_source: String,
}

fuzz_target!(|row: Row| {
    let Ok(headers) = serde_json::from_str(&row.headers) else {
        return;
    };
    let Some(created_at) = DateTime::from_timestamp(row.created_at_secs, 0) else {
        return;
    };
    let record = OutboxRecord {
        id: row.id,
        event_id: uuid::Uuid::from_u128(row.event_id),
        source: row.source,
        destination: row.destination,
        partition_key: row.partition_key,
        partition: row.partition,
        event_type: row.event_type,
        schema_version: row.schema_version,
        subject: row.subject,
        headers,
        payload: row.payload,
        created_at,
        attempts: row.attempts,
        defect: None,
    };
    if let Ok(envelope) = record.to_envelope(&row.default_source) {
        // What the relay sends must be readable by our own consumers.
        let decoded = Envelope::from_json(&envelope.to_json())
            .expect("an event built from a row must decode");
        assert_eq!(decoded, envelope, "row → event → JSON → event changed it");
    }
});
