//! The PostgreSQL inbox: `INSERT … ON CONFLICT DO NOTHING` on (consumer, id).

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
