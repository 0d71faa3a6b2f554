//! The PostgreSQL inbox: `INSERT … ON CONFLICT DO NOTHING` on (consumer,
//! source, id), one row at a time or a batch in one statement.

use std::collections::HashSet;
use std::time::Duration;

use sqlx::{PgConnection, PgPool, Postgres};

use super::InboxDatabase;
use crate::envelope::Envelope;
use crate::error::{Error, Result};
use crate::table::TableName;

#[async_trait::async_trait]
impl InboxDatabase for Postgres {
    async fn try_record(
        conn: &mut PgConnection,
        table: &TableName,
        consumer: &str,
        envelope: &Envelope,
    ) -> Result<bool> {
        // A concurrent delivery of the same id blocks on the unique index until the
        // first transaction ends: then it either conflicts (duplicate) or inserts
        // (the first rolled back). Exactly one handler's writes survive.
        let sql = format!(
            "INSERT INTO {} (consumer, source, message_id, event_type) VALUES ($1, $2, $3, $4) \
             ON CONFLICT DO NOTHING",
            table.quoted()
        );
        let done = sqlx::query(&sql)
            .bind(consumer)
            .bind(&envelope.source)
            .bind(&envelope.id)
            .bind(&envelope.event_type)
            .execute(conn)
            .await
            .map_err(|e| Error::from_table_query(e, table))?;
        Ok(done.rows_affected() == 1)
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
            "INSERT INTO {} (consumer, source, message_id, event_type) \
             SELECT $1, s, m, t FROM UNNEST($2::text[], $3::text[], $4::text[]) AS u(s, m, t) \
             ORDER BY s, m \
             ON CONFLICT DO NOTHING RETURNING source, message_id",
            table.quoted()
        );
        let sources: Vec<&str> = envelopes.iter().map(|e| e.source.as_str()).collect();
        let ids: Vec<&str> = envelopes.iter().map(|e| e.id.as_str()).collect();
        let types: Vec<&str> = envelopes.iter().map(|e| e.event_type.as_str()).collect();
        let inserted: Vec<(String, String)> = sqlx::query_as(&sql)
            .bind(consumer)
            .bind(&sources)
            .bind(&ids)
            .bind(&types)
            .fetch_all(conn)
            .await
            .map_err(|e| Error::from_table_query(e, table))?;
        let mut inserted: HashSet<(String, String)> = inserted.into_iter().collect();
        // `remove`: a repeat of an id within the batch is not fresh.
        Ok(envelopes
            .iter()
            .map(|e| inserted.remove(&(e.source.clone(), e.id.clone())))
            .collect())
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
        let done = sqlx::query(&sql)
            .bind(older_than.as_secs_f64())
            .bind(batch)
            .bind(consumer)
            .execute(pool)
            .await
            .map_err(|e| Error::from_table_query(e, table))?;
        Ok(done.rows_affected())
    }
}
