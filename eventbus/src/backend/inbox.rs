//! The inbox insert of the databases that can skip a conflicting row
//! (`INSERT … ON CONFLICT DO NOTHING`: PostgreSQL, SQLite).

use crate::backend::sql::composed;
use std::collections::HashSet;

use sqlx::{Executor, IntoArguments};

use crate::backend::sql::{Bind, SqlDatabase};
use crate::envelope::Envelope;
use crate::error::{Error, Result};
use crate::inbox::InboxKey;
use crate::table::TableName;

/// Records `envelope` as seen by `consumer` in inbox `table`; `false` if it
/// was seen before (see `InboxDatabase::try_record`).
///
/// A concurrent delivery of the same message waits for the first: on
/// PostgreSQL on the unique index until the first transaction ends, on
/// SQLite for the database's write lock (this is the transaction's first
/// statement and a write). Then it either conflicts (a duplicate) or inserts
/// (the first rolled back): exactly one handler's writes survive. A row
/// under the legacy key (parameter 5, `NULL` when there is none) was
/// committed before the upgrade, so a plain look-up finds it.
pub(crate) async fn insert_unless_seen<DB>(
    conn: &mut DB::Connection,
    table: &TableName,
    consumer: &str,
    envelope: &Envelope,
) -> Result<bool>
where
    DB: SqlDatabase,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    String: Bind<DB>,
    Option<String>: Bind<DB>,
{
    let p = |n| DB::DIALECT.param(n);
    let sql = format!(
        "INSERT INTO {t} (consumer, source, message_id, event_type) \
         SELECT {}, {}, {}, {} WHERE NOT EXISTS (SELECT 1 FROM {t} \
         WHERE consumer = {} AND source = {} AND message_id = {}) \
         ON CONFLICT DO NOTHING",
        p(1),
        p(2),
        p(3),
        p(4),
        p(1),
        p(5),
        p(3),
        t = DB::DIALECT.table(table),
    );
    let key = InboxKey::of(envelope);
    let done = sqlx::query(composed(&sql))
        .bind(consumer.to_owned())
        .bind(key.source.to_owned())
        .bind(key.message_id.to_owned())
        .bind(envelope.event_type.clone())
        .bind(InboxKey::legacy(envelope).map(|k| k.source.to_owned()))
        .execute(conn)
        .await
        .map_err(|e| Error::from_table_query(e, table))?;
    Ok(DB::rows_affected(&done) == 1)
}

/// Which of a batch's `keys` are fresh, given the keys the batch's insert
/// returned as `inserted`. A repeat of a key within the batch is not fresh:
/// only its first occurrence takes the inserted row.
pub(crate) fn fresh(keys: &[InboxKey<'_>], inserted: Vec<(String, String)>) -> Vec<bool> {
    let mut inserted: HashSet<(String, String)> = inserted.into_iter().collect();
    keys.iter()
        .map(|k| inserted.remove(&(k.source.to_owned(), k.message_id.to_owned())))
        .collect()
}
