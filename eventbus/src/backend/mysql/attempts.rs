//! The MySQL attempt counts: its counting upsert; the other statements are
//! shared (`backend::attempts`).

use crate::backend::sql::composed;
use sqlx::{MySql, MySqlConnection};

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
    conn: &mut MySqlConnection,
    inbox: &TableName,
    consumer: &str,
    envelope: &Envelope,
) -> Result<u32> {
    // MySQL has no RETURNING: `LAST_INSERT_ID(expr)` hands the new
    // count back in the statement's result, so one statement still
    // does. A fresh row evaluates no expression and reports 0: the
    // first attempt.
    let sql = format!(
        "INSERT INTO {a} (consumer, source, message_id, attempts) VALUES (?, ?, ?, 1) \
         ON DUPLICATE KEY UPDATE attempts = LAST_INSERT_ID(attempts + 1), \
         updated_at = {NOW}",
        a = Dialect::MYSQL.object(inbox, ATTEMPTS_SUFFIX)
    );
    let key = InboxKey::of(envelope);
    let done = sqlx::query(composed(&sql))
        .bind(consumer)
        .bind(key.source)
        .bind(key.message_id)
        .execute(conn)
        .await
        .map_err(|e| Error::from_table_query(e, inbox))?;
    let n = i64::try_from(done.last_insert_id()).unwrap_or(i64::MAX);
    Ok(count(n.max(1)))
}

attempts_database!(MySql, Dialect::MYSQL, record = record);
