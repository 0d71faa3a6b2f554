//! The PostgreSQL attempt counts: its counting upsert; the other statements are
//! shared (`backend::attempts`).

use sqlx::{PgConnection, Postgres};

use crate::backend::attempts::attempts_database;
use crate::backend::count;
use crate::backend::dialect::Dialect;
use crate::envelope::Envelope;
use crate::error::{Error, Result};
use crate::inbox::{InboxKey, ATTEMPTS_SUFFIX};
use crate::table::TableName;

/// Counts one more attempt (see `AttemptsDatabase::record_attempt`).
async fn record(
    conn: &mut PgConnection,
    inbox: &TableName,
    consumer: &str,
    envelope: &Envelope,
) -> Result<u32> {
    let sql = format!(
        "INSERT INTO {a} AS a (consumer, source, message_id, attempts) \
         VALUES ($1, $2, $3, 1) ON CONFLICT (consumer, source, message_id) \
         DO UPDATE SET attempts = a.attempts + 1, updated_at = now() \
         RETURNING attempts",
        a = Dialect::POSTGRES.object(inbox, ATTEMPTS_SUFFIX)
    );
    let key = InboxKey::of(envelope);
    let n: i32 = sqlx::query_scalar(&sql)
        .bind(consumer)
        .bind(key.source)
        .bind(key.message_id)
        .fetch_one(conn)
        .await
        .map_err(|e| Error::from_table_query(e, inbox))?;
    Ok(count(n.into()))
}

attempts_database!(Postgres, Dialect::POSTGRES, record = record);
