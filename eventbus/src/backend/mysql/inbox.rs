//! The MySQL inbox: a plain `INSERT` on (consumer, [`InboxKey`]) whose
//! duplicate-key error means "seen before"; a batch is recorded row by row in
//! key order.

use crate::backend::sql::composed;
use std::collections::BTreeMap;
use std::time::Duration;

use sqlx::{MySql, MySqlConnection, MySqlPool};

use super::{micros, NOW};
use crate::backend::dialect::Dialect;
use crate::envelope::Envelope;
use crate::error::{Error, Result};
use crate::inbox::{InboxDatabase, InboxKey};
use crate::table::TableName;

#[async_trait::async_trait]
impl InboxDatabase for MySql {
    async fn try_record(
        conn: &mut MySqlConnection,
        table: &TableName,
        consumer: &str,
        envelope: &Envelope,
    ) -> Result<bool> {
        // A concurrent delivery of the same id waits on the primary key until
        // the first transaction ends: then it either fails as a duplicate or
        // inserts (the first rolled back). A failed statement does not end a
        // MySQL transaction, so the caller can still roll back cleanly.
        // Neither `INSERT IGNORE` (which also turns truncation into a warning)
        // nor `ON DUPLICATE KEY UPDATE` (whose affected-rows count cannot
        // tell a duplicate from an insert with sqlx's `CLIENT_FOUND_ROWS`)
        // would say which happened.
        let sql = format!(
            "INSERT INTO {} (consumer, source, message_id, event_type) VALUES (?, ?, ?, ?)",
            Dialect::MYSQL.table(table)
        );
        let key = InboxKey::of(envelope);
        let inserted = sqlx::query(composed(&sql))
            .bind(consumer)
            .bind(key.source)
            .bind(key.message_id)
            .bind(&envelope.event_type)
            .execute(&mut *conn)
            .await;
        match inserted {
            Ok(_) => {}
            Err(sqlx::Error::Database(db)) if db.is_unique_violation() => return Ok(false),
            Err(e) => return Err(Error::from_table_query(e, table)),
        }
        let Some(legacy) = InboxKey::legacy(envelope) else {
            return Ok(true);
        };
        // A row under the legacy key was committed before the upgrade: a plain
        // read finds it. It runs after the insert, as `INSERT … SELECT … WHERE
        // NOT EXISTS` would take gap locks that deadlock concurrent deliveries.
        // The new row it leaves for a duplicate only records it again.
        let sql = format!(
            "SELECT 1 FROM {} WHERE consumer = ? AND source = ? AND message_id = ?",
            Dialect::MYSQL.table(table)
        );
        let old: Option<i64> = sqlx::query_scalar(composed(&sql))
            .bind(consumer)
            .bind(legacy.source)
            .bind(legacy.message_id)
            .fetch_optional(conn)
            .await
            .map_err(|e| Error::from_table_query(e, table))?;
        Ok(old.is_none())
    }

    async fn try_record_many(
        conn: &mut MySqlConnection,
        table: &TableName,
        consumer: &str,
        envelopes: &[&Envelope],
    ) -> Result<Vec<bool>> {
        // MySQL cannot report which rows of one multi-row insert were new.
        // One insert per distinct id, in key order, so two transactions
        // recording overlapping batches wait for each other in the same order
        // instead of deadlocking on the primary key.
        let mut by_key: BTreeMap<InboxKey<'_>, &Envelope> = BTreeMap::new();
        for e in envelopes {
            by_key.entry(InboxKey::of(e)).or_insert(e);
        }
        let mut fresh: BTreeMap<InboxKey<'_>, bool> = BTreeMap::new();
        for (key, envelope) in by_key {
            let inserted = Self::try_record(&mut *conn, table, consumer, envelope).await?;
            fresh.insert(key, inserted);
        }
        // `remove`: a repeat of an id within the batch is not fresh.
        Ok(envelopes
            .iter()
            .map(|e| fresh.remove(&InboxKey::of(e)).unwrap_or(false))
            .collect())
    }

    async fn delete_older_than(
        pool: &MySqlPool,
        table: &TableName,
        consumer: &str,
        older_than: Duration,
        batch: i64,
    ) -> Result<u64> {
        let sql = format!(
            "DELETE FROM {} WHERE consumer = ? AND received_at < {NOW} - INTERVAL ? MICROSECOND \
             LIMIT ?",
            Dialect::MYSQL.table(table)
        );
        let done = sqlx::query(composed(&sql))
            .bind(consumer)
            .bind(micros(older_than))
            .bind(batch)
            .execute(pool)
            .await
            .map_err(|e| Error::from_table_query(e, table))?;
        Ok(done.rows_affected())
    }
}
