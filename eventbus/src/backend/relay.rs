//! What the three relay stores share: [`RelaySql`], the statements whose
//! shape is the same on every database, spelled by its [`Dialect`] next to
//! each store's own; and the reading of what those statements return.

#[cfg(any(feature = "mysql", feature = "sqlite"))]
use uuid::Uuid;

use crate::backend::dialect::Dialect;
#[cfg(any(feature = "mysql", feature = "sqlite"))]
use crate::error::{Error, Result};
use crate::relay::Snapshot;
use crate::table::TableName;

/// The quoted names a relay statement uses.
#[derive(Debug)]
pub(crate) struct Names {
    /// The outbox table.
    pub(crate) outbox: String,
    /// Its lease table, `<outbox>_partitions`.
    pub(crate) partitions: String,
    /// Its membership table, `<outbox>_relays`.
    pub(crate) relays: String,
    /// The `partition` column (a reserved word on MySQL).
    pub(crate) partition: String,
}

/// The relay's SQL for one outbox table, built once (names are validated
/// and quoted): the statements every database writes alike, and the
/// backend's `own`.
///
/// Parameters: `relay` is the relay's id, `partitions` a list of partitions
/// (bound as the dialect binds lists), `span` a duration (bound as the
/// dialect shifts times).
#[derive(Debug)]
pub(crate) struct RelaySql<Own> {
    /// The outbox's partitions, in order.
    pub(crate) partitions: String,
    /// How many rows are parked (`failed`).
    pub(crate) parked: String,
    /// (span, relay, partitions): extends the leases the relay holds.
    pub(crate) renew: String,
    /// (relay, partitions): gives up leases.
    pub(crate) release: String,
    /// (relay): gives up every lease.
    pub(crate) release_all: String,
    /// (relay): leaves the membership table.
    pub(crate) deregister: String,
    /// (span): the relays whose heartbeat is that recent.
    pub(crate) live: String,
    /// (span): forgets relays whose heartbeat is older.
    pub(crate) forget_dead: String,
    /// (span): how many published rows are older.
    pub(crate) expired_published: String,
    /// The backend's statements of its own shape.
    pub(crate) own: Own,
}

impl<Own> RelaySql<Own> {
    /// The statements for `table` in `dialect`, with the backend's `own`
    /// built from the same names.
    pub(crate) fn new(
        dialect: Dialect,
        table: &TableName,
        own: impl FnOnce(&Names) -> Own,
    ) -> Self {
        let names = Names {
            outbox: dialect.table(table),
            partitions: dialect.object(table, "_partitions"),
            relays: dialect.object(table, "_relays"),
            partition: dialect.column("partition"),
        };
        let Names {
            outbox: t,
            partitions: p,
            relays: r,
            partition: part,
        } = &names;
        let param = |n| dialect.param(n);
        // Where there is no `UPDATE … RETURNING` (MySQL), the store reads
        // the leases back.
        let returning = dialect.returning(&format!("{part}, epoch"));
        RelaySql {
            partitions: format!("SELECT {part} FROM {p} ORDER BY {part}"),
            parked: format!("SELECT count(*) FROM {t} WHERE state = 'failed'"),
            renew: format!(
                "UPDATE {p} SET lease_expires_at = {until} WHERE owner = {relay} AND {held}{returning}",
                until = dialect.later(1),
                relay = param(2),
                held = dialect.in_list(part, 3),
            ),
            release: format!(
                "UPDATE {p} SET owner = NULL, lease_expires_at = NULL \
                 WHERE owner = {relay} AND {held}",
                relay = param(1),
                held = dialect.in_list(part, 2),
            ),
            release_all: format!(
                "UPDATE {p} SET owner = NULL, lease_expires_at = NULL WHERE owner = {}",
                param(1)
            ),
            deregister: format!("DELETE FROM {r} WHERE relay_id = {}", param(1)),
            live: format!(
                "SELECT relay_id FROM {r} WHERE heartbeat_at > {} ORDER BY relay_id",
                dialect.ago(1)
            ),
            // Crashed relays never deregister: forget them once long dead.
            forget_dead: format!("DELETE FROM {r} WHERE heartbeat_at < {}", dialect.ago(1)),
            expired_published: format!(
                "SELECT count(*) FROM {t} WHERE state = 'published' AND published_at < {}",
                dialect.ago(1)
            ),
            own: own(&names),
        }
    }
}

/// The backlog [`Snapshot`] of `partitions` from per-partition rows of
/// (partition, pending rows, age of the oldest in seconds, how long the
/// oldest held-back row has waited) and the count of parked rows.
pub(crate) fn snapshot(
    partitions: &[i32],
    rows: impl IntoIterator<Item = (i32, i64, Option<f64>, Option<f64>)>,
    parked: i64,
) -> Snapshot {
    let mut snap = Snapshot::default();
    for p in partitions {
        snap.backlog.insert(*p, 0);
    }
    for (partition, n, oldest, held) in rows {
        snap.backlog
            .insert(partition, u64::try_from(n).unwrap_or(0));
        snap.oldest_pending_seconds = snap.oldest_pending_seconds.max(oldest.unwrap_or(0.0));
        snap.held_back_seconds = snap.held_back_seconds.max(held.unwrap_or(0.0));
    }
    snap.parked_rows = u64::try_from(parked).unwrap_or(0);
    snap
}

/// A relay id as stored where UUIDs are hyphenated text (MySQL, SQLite).
#[cfg(any(feature = "mysql", feature = "sqlite"))]
pub(crate) fn relay_id(id: Uuid) -> String {
    id.hyphenated().to_string()
}

/// Relay ids read back from hyphenated text, sorted: every relay must see
/// the same order to compute the same assignment.
#[cfg(any(feature = "mysql", feature = "sqlite"))]
pub(crate) fn relay_ids(texts: &[String]) -> Result<Vec<Uuid>> {
    let mut ids = texts
        .iter()
        .map(|id| Uuid::parse_str(id).map_err(|e| Error::Database(decode_error("relay_id", e))))
        .collect::<Result<Vec<_>>>()?;
    ids.sort_unstable();
    Ok(ids)
}

/// A column that did not decode.
#[cfg(any(feature = "mysql", feature = "sqlite"))]
pub(crate) fn decode_error(
    column: &str,
    e: impl std::error::Error + Send + Sync + 'static,
) -> sqlx::Error {
    sqlx::Error::ColumnDecode {
        index: column.to_owned(),
        source: Box::new(e),
    }
}

/// A UUID stored as hyphenated text (MySQL, SQLite), from `column` of `row`.
#[cfg(any(feature = "mysql", feature = "sqlite"))]
pub(crate) fn uuid_text<R>(row: &R, column: &'static str) -> std::result::Result<Uuid, sqlx::Error>
where
    R: sqlx::Row,
    &'static str: sqlx::ColumnIndex<R>,
    String: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let id: String = row.try_get(column)?;
    Uuid::parse_str(&id).map_err(|e| decode_error(column, e))
}

/// The payload sizes (column `size`) of claimed rows, in claim order
/// (MySQL, SQLite: measured in the claim, loaded afterwards).
#[cfg(any(feature = "mysql", feature = "sqlite"))]
pub(crate) fn sizes<R>(rows: &[R]) -> Result<Vec<u64>>
where
    R: sqlx::Row,
    &'static str: sqlx::ColumnIndex<R>,
    Option<i64>: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    rows.iter()
        .map(|row| row.try_get::<Option<i64>, _>("size"))
        .map(|size| size.map(|s| u64::try_from(s.unwrap_or(0)).unwrap_or(0)))
        .collect::<std::result::Result<Vec<u64>, _>>()
        .map_err(Error::Database)
}
