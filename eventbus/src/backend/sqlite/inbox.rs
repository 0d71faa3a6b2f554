//! The SQLite inbox: `INSERT … ON CONFLICT DO NOTHING` on (consumer, [`InboxKey`]),
//! one row at a time or a batch in one statement; SQLite's single write lock
//! makes a concurrent delivery wait for the first.

use crate::backend::sql::composed;
use std::time::Duration;

use sqlx::{Sqlite, SqliteConnection, SqlitePool};

use super::{json_array, now_shifted, shift};
use crate::backend::inbox::{fresh, insert_unless_seen};
use crate::envelope::Envelope;
use crate::error::{Error, Result};
use crate::inbox::{InboxDatabase, InboxKey};
use crate::table::TableName;

#[async_trait::async_trait]
impl InboxDatabase for Sqlite {
    async fn try_record(
        conn: &mut SqliteConnection,
        table: &TableName,
        consumer: &str,
        envelope: &Envelope,
    ) -> Result<bool> {
        insert_unless_seen::<Sqlite>(conn, table, consumer, envelope).await
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
        // parameter limit. The `WHERE` (needed anyway) is also SQLite's
        // required disambiguation between a join's ON and the upsert's ON
        // CONFLICT. Element 3 is the legacy key's source, or null.
        let sql = format!(
            "INSERT INTO {t} (consumer, source, message_id, event_type) \
             SELECT ?1, value ->> 0, value ->> 1, value ->> 2 FROM json_each(?2) \
             WHERE NOT EXISTS (SELECT 1 FROM {t} o WHERE o.consumer = ?1 \
             AND o.source = value ->> 3 AND o.message_id = value ->> 1) \
             ON CONFLICT DO NOTHING RETURNING source, message_id",
            t = table.quoted()
        );
        let keys: Vec<InboxKey<'_>> = envelopes.iter().map(|e| InboxKey::of(e)).collect();
        let rows: Vec<(&str, &str, &str, Option<&str>)> = envelopes
            .iter()
            .zip(&keys)
            .map(|(e, k)| {
                let legacy = InboxKey::legacy(e).map(|l| l.source);
                (k.source, k.message_id, e.event_type.as_str(), legacy)
            })
            .collect();
        let inserted: Vec<(String, String)> = sqlx::query_as(composed(&sql))
            .bind(consumer)
            .bind(json_array(&rows))
            .fetch_all(conn)
            .await
            .map_err(|e| Error::from_table_query(e, table))?;
        Ok(fresh(&keys, inserted))
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
        let done = sqlx::query(composed(&sql))
            .bind(shift(older_than, -1))
            .bind(batch)
            .bind(consumer)
            .execute(pool)
            .await
            .map_err(|e| Error::from_table_query(e, table))?;
        Ok(done.rows_affected())
    }
}
