//! The outbox insert of the databases without array parameters (MySQL,
//! SQLite): multi-row `INSERT … VALUES (…), (…)` statements.

use crate::backend::sql::composed;
use sqlx::{Encode, Executor, IntoArguments, Type};

use crate::backend::sql::{Bind, SqlDatabase};
use crate::error::{Error, Result};
use crate::outbox::OutboxEntry;
use crate::table::TableName;

/// Columns written per row.
pub(crate) const COLUMNS: usize = 10;

/// Inserts `entries` into outbox `table` with one multi-row statement.
/// Statements of one row or of `full` rows (a full chunk) are kept prepared;
/// odd batch sizes would only crowd the connection's statement cache.
pub(crate) async fn insert_rows<DB>(
    conn: &mut DB::Connection,
    table: &TableName,
    entries: &[OutboxEntry],
    full: usize,
) -> Result<()>
where
    DB: SqlDatabase + sqlx::database::HasStatementCache,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'a> &'a str: Encode<'a, DB> + Type<DB>,
    for<'a> Option<&'a str>: Encode<'a, DB> + Type<DB>,
    i32: Bind<DB>,
    String: Bind<DB>,
{
    // Plain `?`, bound in order: both databases take it, and numbered
    // parameters would repeat from row to row.
    let row = format!("({})", ["?"; COLUMNS].join(", "));
    let values = vec![row.as_str(); entries.len()].join(", ");
    let sql = format!(
        "INSERT INTO {table} (event_id, source, destination, partition_key, event_type, \
         schema_version, subject, headers, payload, created_at) VALUES {values}",
        table = DB::DIALECT.table(table)
    );
    let mut query = sqlx::query(composed(&sql));
    for e in entries {
        query = query
            .bind(DB::uuid(e.event_id))
            .bind(e.source.as_deref())
            .bind(e.destination.as_str())
            .bind(e.partition_key.as_str())
            .bind(e.event_type.as_str())
            .bind(e.schema_version)
            .bind(e.subject.as_deref())
            .bind(e.headers.to_string())
            .bind(e.payload.as_str())
            .bind(DB::time(&e.created_at));
    }
    let persistent = entries.len() == 1 || entries.len() == full;
    query
        .persistent(persistent)
        .execute(conn)
        .await
        .map_err(|e| Error::from_table_query(e, table))?;
    Ok(())
}
