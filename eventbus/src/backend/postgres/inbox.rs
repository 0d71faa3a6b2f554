//! The PostgreSQL inbox: `INSERT … ON CONFLICT DO NOTHING` on (consumer,
//! [`InboxKey`]), one row at a time or a batch in one statement.

use crate::backend::sql::composed;
use std::time::Duration;

use sqlx::{PgConnection, PgPool, Postgres};

use crate::backend::inbox::{fresh, insert_unless_seen};
use crate::envelope::Envelope;
use crate::error::{Error, Result};
use crate::inbox::{InboxDatabase, InboxKey};
use crate::table::TableName;

#[async_trait::async_trait]
impl InboxDatabase for Postgres {
    async fn try_record(
        conn: &mut PgConnection,
        table: &TableName,
        consumer: &str,
        envelope: &Envelope,
    ) -> Result<bool> {
        insert_unless_seen::<Postgres>(conn, table, consumer, envelope).await
    }

    async fn try_record_many(
        conn: &mut PgConnection,
        table: &TableName,
        consumer: &str,
        envelopes: &[&Envelope],
    ) -> Result<Vec<bool>> {
        if envelopes.is_empty() {
            return Ok(Vec::new());
        }
        // One statement for the batch. Rows go in in key order, so two
        // transactions recording overlapping batches wait for each other in
        // the same order instead of deadlocking on the unique index.
        let sql = format!(
            "INSERT INTO {t} (consumer, source, message_id, event_type) \
             SELECT $1, u.s, u.m, u.t \
             FROM UNNEST($2::text[], $3::text[], $4::text[], $5::text[]) AS u(s, m, t, l) \
             WHERE NOT EXISTS (SELECT 1 FROM {t} o \
             WHERE o.consumer = $1 AND o.source = u.l AND o.message_id = u.m) \
             ORDER BY u.s, u.m \
             ON CONFLICT DO NOTHING RETURNING source, message_id",
            t = table.quoted()
        );
        let keys: Vec<InboxKey<'_>> = envelopes.iter().map(|e| InboxKey::of(e)).collect();
        let sources: Vec<&str> = keys.iter().map(|k| k.source).collect();
        let ids: Vec<&str> = keys.iter().map(|k| k.message_id).collect();
        let types: Vec<&str> = envelopes.iter().map(|e| e.event_type.as_str()).collect();
        let legacy: Vec<Option<&str>> = envelopes
            .iter()
            .map(|e| InboxKey::legacy(e).map(|k| k.source))
            .collect();
        let inserted: Vec<(String, String)> = sqlx::query_as(composed(&sql))
            .bind(consumer)
            .bind(&sources)
            .bind(&ids)
            .bind(&types)
            .bind(&legacy)
            .fetch_all(conn)
            .await
            .map_err(|e| Error::from_table_query(e, table))?;
        Ok(fresh(&keys, inserted))
    }

    async fn delete_older_than(
        pool: &PgPool,
        table: &TableName,
        consumer: &str,
        older_than: Duration,
        batch: i64,
    ) -> Result<u64> {
        let sql = format!(
            "DELETE FROM {t} WHERE ctid IN (SELECT ctid FROM {t} \
             WHERE consumer = $3 AND received_at < now() - make_interval(secs => $1) LIMIT $2)",
            t = table.quoted()
        );
        let done = sqlx::query(composed(&sql))
            .bind(older_than.as_secs_f64())
            .bind(batch)
            .bind(consumer)
            .execute(pool)
            .await
            .map_err(|e| Error::from_table_query(e, table))?;
        Ok(done.rows_affected())
    }
}
