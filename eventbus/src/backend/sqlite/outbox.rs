//! The SQLite outbox writer: multi-row `INSERT … VALUES (…), (…)` statements,
//! one per chunk of rows that fits SQLite's bound-parameter limit.

use sqlx::{Sqlite, SqliteConnection};

use super::timestamp;
use crate::error::{Error, Result};
use crate::outbox::{OutboxDatabase, OutboxEntry};
use crate::table::TableName;

/// Columns written per row.
const COLUMNS: usize = 10;

/// SQLite's default `SQLITE_MAX_VARIABLE_NUMBER` since 3.32 (sqlx bundles a
/// newer SQLite).
const MAX_PARAMETERS: usize = 32_766;

/// Rows per statement: as many as the parameter limit allows.
const ROWS_PER_STATEMENT: usize = MAX_PARAMETERS / COLUMNS;

#[async_trait::async_trait]
impl OutboxDatabase for Sqlite {
    async fn insert_entries(
        conn: &mut SqliteConnection,
        table: &TableName,
        entries: &[OutboxEntry],
    ) -> Result<()> {
        // Every chunk runs in the caller's transaction, so a batch larger than one
        // statement still commits or rolls back as a whole.
        for chunk in entries.chunks(ROWS_PER_STATEMENT) {
            insert_chunk(conn, table, chunk).await?;
        }
        Ok(())
    }
}

async fn insert_chunk(
    conn: &mut SqliteConnection,
    table: &TableName,
    entries: &[OutboxEntry],
) -> Result<()> {
    let row = format!("({})", ["?"; COLUMNS].join(", "));
    let values = vec![row.as_str(); entries.len()].join(", ");
    let sql = format!(
        "INSERT INTO {table} (event_id, source, destination, partition_key, event_type, \
         schema_version, subject, headers, payload, created_at) VALUES {values}",
        table = table.quoted()
    );
    let mut query = sqlx::query(&sql);
    for e in entries {
        query = query
            .bind(e.event_id.hyphenated().to_string())
            .bind(e.source.as_deref())
            .bind(e.destination.as_str())
            .bind(e.partition_key.as_str())
            .bind(e.event_type.as_str())
            .bind(e.schema_version)
            .bind(e.subject.as_deref())
            .bind(e.headers.to_string())
            .bind(e.payload.as_str())
            .bind(timestamp(&e.created_at));
    }
    // Keep the common shapes (one event, a full chunk) prepared; odd batch sizes
    // would only crowd the connection's statement cache.
    let persistent = entries.len() == 1 || entries.len() == ROWS_PER_STATEMENT;
    query
        .persistent(persistent)
        .execute(conn)
        .await
        .map_err(|e| Error::from_table_query(e, table))?;
    Ok(())
}
