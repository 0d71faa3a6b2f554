//! The PostgreSQL outbox writer: one `INSERT … SELECT FROM UNNEST(…)` per call,
//! whatever the number of events.

use crate::backend::sql::composed;
use sqlx::{PgConnection, Postgres};

use crate::error::{Error, Result};
use crate::outbox::{OutboxDatabase, OutboxEntry};
use crate::table::TableName;

#[async_trait::async_trait]
impl OutboxDatabase for Postgres {
    // The outbox trigger's `NOTIFY` wakes the relays once the writer commits.
    const NOTIFIES_RELAYS: bool = true;

    async fn insert_entries(
        conn: &mut PgConnection,
        table: &TableName,
        entries: &[OutboxEntry],
    ) -> Result<()> {
        let n = entries.len();
        let mut event_ids = Vec::with_capacity(n);
        let mut sources = Vec::with_capacity(n);
        let mut destinations = Vec::with_capacity(n);
        let mut keys = Vec::with_capacity(n);
        let mut types = Vec::with_capacity(n);
        let mut versions = Vec::with_capacity(n);
        let mut subjects = Vec::with_capacity(n);
        let mut headers = Vec::with_capacity(n);
        let mut payloads = Vec::with_capacity(n);
        let mut times = Vec::with_capacity(n);
        for e in entries {
            event_ids.push(e.event_id);
            sources.push(e.source.as_deref());
            destinations.push(e.destination.as_str());
            keys.push(e.partition_key.as_str());
            types.push(e.event_type.as_str());
            versions.push(e.schema_version);
            subjects.push(e.subject.as_deref());
            headers.push(e.headers.to_string());
            payloads.push(e.payload.as_str());
            times.push(e.created_at);
        }
        // Arrays in, one statement out: the same prepared statement serves one
        // event or ten thousand.
        let sql = format!(
            "INSERT INTO {table} (event_id, source, destination, partition_key, event_type, \
             schema_version, subject, headers, payload, created_at) \
             SELECT i, s, d, k, t, v, sub, h::jsonb, p::jsonb, c \
             FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], \
             $6::int4[], $7::text[], $8::text[], $9::text[], $10::timestamptz[]) \
             AS u(i, s, d, k, t, v, sub, h, p, c)",
            table = table.quoted()
        );
        sqlx::query(composed(&sql))
            .bind(&event_ids)
            .bind(&sources)
            .bind(&destinations)
            .bind(&keys)
            .bind(&types)
            .bind(&versions)
            .bind(&subjects)
            .bind(&headers)
            .bind(&payloads)
            .bind(&times)
            .execute(conn)
            .await
            .map_err(|e| Error::from_table_query(e, table))?;
        Ok(())
    }
}
