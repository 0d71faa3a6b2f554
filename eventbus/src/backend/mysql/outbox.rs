//! The MySQL outbox writer: locks the write-lock rows of the partitions it
//! writes (in partition order), then inserts with multi-row `INSERT … VALUES`
//! statements, so ids are assigned and committed in the same order within a
//! partition (`docs/adr/0004-mysql-commit-order.md`).

use crate::backend::sql::composed;
use sqlx::{Executor, MySql, MySqlConnection};

use super::{crc32, WRITE_LOCKS_SUFFIX};
use crate::backend::dialect::Dialect;
use crate::backend::outbox::insert_rows;
use crate::error::{Error, Result};
use crate::outbox::{OutboxDatabase, OutboxEntry};
use crate::table::TableName;

/// Rows per statement: far below the 65,535 parameters of a prepared
/// statement, and one shape the statement cache keeps.
const ROWS_PER_STATEMENT: usize = 1_000;

/// Payload bytes per statement: well below the smallest default
/// `max_allowed_packet` (16 MiB on MariaDB), whatever the row count.
const BYTES_PER_STATEMENT: usize = 4 << 20;

#[async_trait::async_trait]
impl OutboxDatabase for MySql {
    async fn insert_entries(
        conn: &mut MySqlConnection,
        table: &TableName,
        entries: &[OutboxEntry],
    ) -> Result<()> {
        lock_partitions(conn, table, entries).await?;
        // Every chunk runs in the caller's transaction, so a batch larger than
        // one statement still commits or rolls back as a whole.
        let mut start = 0;
        while start < entries.len() {
            let mut end = start;
            let mut bytes = 0;
            while end < entries.len()
                && end - start < ROWS_PER_STATEMENT
                && (end == start || bytes + entries[end].payload.len() <= BYTES_PER_STATEMENT)
            {
                bytes += entries[end].payload.len();
                end += 1;
            }
            insert_rows::<MySql>(conn, table, &entries[start..end], ROWS_PER_STATEMENT).await?;
            start = end;
        }
        Ok(())
    }
}

/// Takes the write locks of the partitions `entries` go to, lowest first (two
/// writers sharing partitions then queue instead of deadlocking), held until
/// the caller's transaction ends. Ids handed out afterwards are higher than
/// every id already committed in those partitions, and later writers of them
/// wait for this transaction.
async fn lock_partitions(
    conn: &mut MySqlConnection,
    table: &TableName,
    entries: &[OutboxEntry],
) -> Result<()> {
    let locks = Dialect::MYSQL.object(table, WRITE_LOCKS_SUFFIX);
    let partitions: i64 = sqlx::query_scalar(composed(format!("SELECT COUNT(*) FROM {locks}")))
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| Error::from_table_query(e, table))?;
    let Ok(partitions) = u32::try_from(partitions) else {
        return Err(not_migrated(table));
    };
    if partitions == 0 {
        return Err(not_migrated(table));
    }
    let mut wanted: Vec<u32> = entries
        .iter()
        .map(|e| crc32(e.partition_key.as_bytes()) % partitions)
        .collect();
    wanted.sort_unstable();
    wanted.dedup();
    // The list is made of integers computed here, never of input text; as
    // literals (text protocol) the statement needs no preparing, whatever its
    // length. A primary-key `IN` list is read, and locked, in ascending order.
    let list = wanted
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let sql = format!(
        "SELECT `partition` FROM {locks} WHERE `partition` IN ({list}) \
         ORDER BY `partition` FOR UPDATE"
    );
    let locked = conn
        .fetch_all(composed(sql))
        .await
        .map_err(|e| Error::from_table_query(e, table))?;
    if locked.len() != wanted.len() {
        return Err(not_migrated(table));
    }
    Ok(())
}

/// The write-lock table lacks rows: the migration did not finish.
fn not_migrated(table: &TableName) -> Error {
    Error::NotMigrated {
        table: format!("{table}{WRITE_LOCKS_SUFFIX}"),
    }
}
