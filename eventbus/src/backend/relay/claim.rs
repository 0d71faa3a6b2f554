//! Claims that measure payloads before loading them (MySQL, SQLite): the
//! claiming statement returns each row's payload size, not its payload; the
//! rows within the claim's byte budget are kept and only the payloads that
//! will be sent are loaded, in the claim's transaction.

use std::collections::HashMap;

use sqlx::{ColumnIndex, Decode, Executor, IntoArguments, Row, Type};

use crate::backend::sql::{composed, json_array, Bind};
use crate::outbox::OutboxRecord;
use crate::relay::ClaimLimits;

/// The payload sizes (column `size`) of claimed rows, in claim order.
fn sizes<R>(rows: &[R]) -> Result<Vec<u64>, sqlx::Error>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    Option<i64>: for<'r> Decode<'r, R::Database> + Type<R::Database>,
{
    rows.iter()
        .map(|row| row.try_get::<Option<i64>, _>("size"))
        .map(|size| size.map(|s| u64::try_from(s.unwrap_or(0)).unwrap_or(0)))
        .collect()
}

/// The claimed `rows` (read with `record`) that fit `limits`, with the
/// payloads they send loaded on `conn` by the statement `payloads`, whose one
/// parameter is the wanted ids as a JSON array.
pub(crate) async fn load_measured<DB>(
    conn: &mut DB::Connection,
    rows: &[DB::Row],
    limits: ClaimLimits,
    record: fn(&DB::Row) -> Result<OutboxRecord, sqlx::Error>,
    payloads: &str,
) -> Result<Vec<OutboxRecord>, sqlx::Error>
where
    DB: sqlx::Database,
    String: Bind<DB>,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    &'static str: ColumnIndex<DB::Row>,
    usize: ColumnIndex<DB::Row>,
    Option<i64>: for<'r> Decode<'r, DB> + Type<DB>,
    i64: for<'r> Decode<'r, DB> + Type<DB>,
    Vec<u8>: for<'r> Decode<'r, DB> + Type<DB>,
{
    let sizes = sizes(rows)?;
    let fitting = limits.fitting(sizes.iter().copied());
    let mut claimed = rows[..fitting]
        .iter()
        .map(record)
        .collect::<Result<Vec<_>, _>>()?;
    let wanted = limits.wanted(&claimed, &sizes);
    let loaded: HashMap<i64, Vec<u8>> = if wanted.is_empty() {
        HashMap::new()
    } else {
        sqlx::query_as::<_, (i64, Vec<u8>)>(composed(payloads))
            .bind(json_array(&wanted))
            .fetch_all(&mut *conn)
            .await?
            .into_iter()
            .collect()
    };
    limits.fill(&mut claimed, &sizes, loaded);
    Ok(claimed)
}
