//! The SQLite outbox writer: multi-row `INSERT … VALUES (…), (…)` statements,
//! one per chunk of rows that fits SQLite's bound-parameter limit.

use sqlx::{Sqlite, SqliteConnection};

use crate::backend::outbox::{insert_rows, COLUMNS};
use crate::error::Result;
use crate::outbox::{OutboxDatabase, OutboxEntry};
use crate::table::TableName;

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
            insert_rows::<Sqlite>(conn, table, chunk, ROWS_PER_STATEMENT).await?;
        }
        Ok(())
    }
}
