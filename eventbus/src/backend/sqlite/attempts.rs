//! The SQLite attempt counts: its counting upsert; the other statements are
//! shared (`backend::attempts`).

use sqlx::{Sqlite, SqliteConnection};

use super::NOW;
use crate::backend::attempts::attempts_database;
use crate::backend::count;
use crate::backend::dialect::Dialect;
use crate::envelope::Envelope;
use crate::error::{Error, Result};
use crate::inbox::{InboxKey, ATTEMPTS_SUFFIX};
use crate::table::TableName;

/// Counts one more attempt (see `AttemptsDatabase::record_attempt`).
async fn record(
    conn: &mut SqliteConnection,
    inbox: &TableName,
    consumer: &str,
    envelope: &Envelope,
) -> Result<u32> {
    let sql = format!(
        "INSERT INTO {a} (consumer, source, message_id, attempts) \
         VALUES (?1, ?2, ?3, 1) ON CONFLICT (consumer, source, message_id) \
         DO UPDATE SET attempts = attempts + 1, updated_at = {NOW} \
         RETURNING attempts",
        a = Dialect::SQLITE.object(inbox, ATTEMPTS_SUFFIX)
    );
    let key = InboxKey::of(envelope);
    let n: i64 = sqlx::query_scalar(&sql)
        .bind(consumer)
        .bind(key.source)
        .bind(key.message_id)
        .fetch_one(conn)
        .await
        .map_err(|e| Error::from_table_query(e, inbox))?;
    Ok(count(n))
}

attempts_database!(Sqlite, Dialect::SQLITE, record = record);
