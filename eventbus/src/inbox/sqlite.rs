//! The SQLite inbox: `INSERT … ON CONFLICT DO NOTHING` on (consumer, source, id),
//! one row at a time or a batch in one statement; SQLite's single write lock
//! makes a concurrent delivery wait for the first.

use std::collections::HashSet;
use std::time::Duration;

use sqlx::{Sqlite, SqliteConnection, SqlitePool};

use super::InboxDatabase;
use crate::envelope::Envelope;
use crate::error::{Error, Result};
use crate::sqlite::{json_array, now_shifted, shift};
use crate::table::TableName;

#[async_trait::async_trait]
impl InboxDatabase for Sqlite {
    async fn try_record(
        conn: &mut SqliteConnection,
        table: &TableName,
        consumer: &str,
        envelope: &Envelope,
    ) -> Result<bool> {
        // This is the transaction's first statement and a write: it takes the
        // database's write lock (waiting out the busy timeout behind a concurrent
        // delivery), so it sees every committed inbox row — a duplicate conflicts,
        // and a first delivery that rolled back left nothing behind.
        let sql = format!(
            "INSERT INTO {} (consumer, source, message_id, event_type) VALUES (?1, ?2, ?3, ?4) \
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
        conn: &mut SqliteConnection,
        table: &TableName,
        consumer: &str,
        envelopes: &[&Envelope],
    ) -> Result<Vec<bool>> {
        if envelopes.is_empty() {
            return Ok(Vec::new());
        }
        // The batch travels as one JSON array, so its size is not bounded by the
        // parameter limit. `WHERE true` is SQLite's required disambiguation
        // between a join's ON and the upsert's ON CONFLICT.
        let sql = format!(
            "INSERT INTO {} (consumer, source, message_id, event_type) \
             SELECT ?1, value ->> 0, value ->> 1, value ->> 2 FROM json_each(?2) WHERE true \
             ON CONFLICT DO NOTHING RETURNING source, message_id",
            table.quoted()
        );
        let rows: Vec<(&str, &str, &str)> = envelopes
            .iter()
            .map(|e| (e.source.as_str(), e.id.as_str(), e.event_type.as_str()))
            .collect();
        let inserted: Vec<(String, String)> = sqlx::query_as(&sql)
            .bind(consumer)
            .bind(json_array(&rows))
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
        pool: &SqlitePool,
        table: &TableName,
        consumer: &str,
        older_than: Duration,
        batch: i64,
    ) -> Result<u64> {
        let sql = format!(
            "DELETE FROM {t} WHERE rowid IN (SELECT rowid FROM {t} \
             WHERE consumer = ?3 AND received_at < {cutoff} LIMIT ?2)",
            t = table.quoted(),
            cutoff = now_shifted(1),
        );
        let done = sqlx::query(&sql)
            .bind(shift(older_than, -1))
            .bind(batch)
            .bind(consumer)
            .execute(pool)
            .await
            .map_err(|e| Error::from_table_query(e, table))?;
        Ok(done.rows_affected())
    }
}
