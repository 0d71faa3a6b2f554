//! MySQL and MariaDB support shared by the outbox, inbox, migrations and relay
//! store: how eventbus lays out its tables there, how it keeps commit order, and
//! [`partition_of`], the partition of a key.
//!
//! Supported servers: MySQL 8.0.16 or later and MariaDB 10.6 or later (both
//! need `FOR UPDATE SKIP LOCKED`, `JSON_TABLE`, expression defaults and
//! enforced `CHECK` constraints); the suites run on MariaDB 10.11.
//!
//! # Tables and types
//!
//! The tables have the same columns as on PostgreSQL (`docs/outbox-table.md`),
//! with these types:
//!
//! - timestamps are `DATETIME(6)` in **UTC** (defaults and every relay
//!   statement use `UTC_TIMESTAMP(6)`, whatever the session's `time_zone`);
//! - `headers` and `payload` are `LONGTEXT` with a `JSON_VALID` check, not
//!   MySQL's `JSON` type, which re-serializes documents: the relay sends the
//!   payload bytes exactly as they were written (MariaDB's `JSON` is this
//!   same `LONGTEXT` with a check);
//! - ids (`event_id`, relay ids) are hyphenated UUID text, `CHAR(36)`;
//! - the columns compared as identities — `partition_key`, and the inbox's
//!   `consumer`, `source` and `message_id` — use `utf8mb4_bin`, so they
//!   compare byte for byte (`Key` and `key` are two keys). sqlx reports
//!   binary-collated columns as binary: read them as `Vec<u8>`, or
//!   `CAST(… AS CHAR)`.
//!
//! # Partitions
//!
//! A row's partition is a stored generated column, `CRC32(partition_key) % P`,
//! with `P` fixed at migration (64 by default). [`partition_of`] computes the
//! same value in Rust.
//!
//! # Commit order
//!
//! `AUTO_INCREMENT` ids are handed out at insert time, not at commit time, and
//! MySQL has no snapshot horizon like PostgreSQL's `pg_snapshot_xmin` to hold
//! back rows of still-open transactions. eventbus keeps ids in commit order
//! *per partition* instead: a writer locks the partition's row of the
//! `<outbox>_write_locks` table (`SELECT … FOR UPDATE`, in partition order)
//! before inserting, and holds it until it commits. Writers of one partition
//! take turns; writers of different partitions do not wait for each other.
//! [`Outbox::publish`](crate::Outbox::publish) does this, and a `BEFORE INSERT`
//! trigger takes the same lock for single-row `INSERT`s written with plain
//! SQL. `docs/adr/0004-mysql-commit-order.md` has the reasoning and the
//! limits.
//!
//! # Opening the database
//!
//! The pool is yours; sqlx's defaults suit eventbus (it sets the session
//! `time_zone` to UTC and `utf8mb4`). The relay runs its statements at
//! `READ COMMITTED` in short transactions of its own, so the session's default
//! isolation level does not matter.
//!
//! ```no_run
//! # async fn demo() -> eventbus::Result<()> {
//! let pool = sqlx::mysql::MySqlPoolOptions::new()
//!     .max_connections(8)
//!     .connect("mysql://app@127.0.0.1:3306/shop")
//!     .await?;
//! eventbus::migrate(&pool).await?;
//! # Ok(()) }
//! ```

mod attempts;
mod inbox;
mod migrate;
mod outbox;
mod relay;

pub use relay::MySqlRelayStore;

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use sqlx::mysql::{MySqlQueryResult, MySqlRow};
use sqlx::{MySql, MySqlPool, Transaction};
use uuid::Uuid;

use crate::backend::dialect::Dialect;
use crate::backend::sql::{hyphenated, uuid_text, SqlDatabase, Towards};
use crate::table::TableName;

/// The suffix of the table whose rows writers lock, one per partition, to
/// commit each partition's outbox rows in id order: `<outbox>_write_locks`.
pub const WRITE_LOCKS_SUFFIX: &str = "_write_locks";

/// The partition of `key` in an outbox of `partitions` partitions:
/// `CRC32(key) % partitions`, exactly what the outbox's generated `partition`
/// column holds.
///
/// ```
/// // MySQL: SELECT CRC32('order-1') % 64 → 47
/// assert_eq!(eventbus::mysql::partition_of("order-1", 64), 47);
/// assert_eq!(eventbus::mysql::partition_of("order-1", 1), 0);
/// ```
///
/// # Panics
///
/// If `partitions` is 0 (an outbox has at least one partition).
pub fn partition_of(key: &str, partitions: u32) -> i32 {
    assert!(partitions > 0, "an outbox has at least one partition");
    // A remainder of a u32 division by at most 4096 always fits an i32.
    i32::try_from(crc32(key.as_bytes()) % partitions).unwrap_or(i32::MAX)
}

/// CRC-32 (IEEE 802.3, reflected, the polynomial of MySQL's `CRC32()`).
pub(crate) fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc = CRC_TABLE[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

const CRC_TABLE: [u32; 256] = crc_table();

const fn crc_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
}

/// SQL for the current time in UTC with microseconds.
pub(crate) const NOW: &str = "UTC_TIMESTAMP(6)";

/// `table` quoted for MySQL and MariaDB, e.g. `` `shop`.`eventbus_outbox` ``:
/// backticks, since their double quotes delimit strings unless the server
/// runs with `ANSI_QUOTES`.
///
/// ```
/// let t = eventbus::TableName::parse("shop.eventbus_outbox").unwrap();
/// assert_eq!(eventbus::mysql::quoted(&t), "`shop`.`eventbus_outbox`");
/// ```
pub fn quoted(table: &TableName) -> String {
    Dialect::MYSQL.table(table)
}

/// `d` in whole microseconds, for `INTERVAL ? MICROSECOND`.
pub(crate) fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// Begins a transaction at `READ COMMITTED` on a connection of `pool`.
///
/// The relay's statements read the lease table to fence their writes; at
/// MySQL's default `REPEATABLE READ` those reads would take shared locks and
/// gap locks that make writers and relays wait for each other. `SET
/// TRANSACTION` (without `SESSION`) applies to the next transaction only, so
/// the connection goes back to the pool unchanged.
pub(crate) async fn begin_read_committed(
    pool: &MySqlPool,
) -> Result<Transaction<'static, MySql>, sqlx::Error> {
    pool.begin_with("SET TRANSACTION ISOLATION LEVEL READ COMMITTED; START TRANSACTION")
        .await
}

/// Reads text column `column` of `row`, whatever its collation: sqlx
/// refuses to decode binary-collated text (`utf8mb4_bin`) as `String`.
pub(crate) fn text(row: &sqlx::mysql::MySqlRow, column: &str) -> Result<String, sqlx::Error> {
    use sqlx::Row;
    let bytes: Vec<u8> = row.try_get(column)?;
    String::from_utf8(bytes).map_err(|e| sqlx::Error::ColumnDecode {
        index: column.to_owned(),
        source: Box::new(e),
    })
}

/// A comma-separated list of integers, bound as one parameter and matched
/// with `FIND_IN_SET` (MySQL has no array parameters).
pub(crate) fn int_list<T: ToString>(values: &[T]) -> String {
    values
        .iter()
        .map(T::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// UUIDs as hyphenated text, lists as comma-separated text, spans in
/// microseconds, transactions that fence at `READ COMMITTED`.
impl SqlDatabase for MySql {
    const DIALECT: Dialect = Dialect::MYSQL;
    type Uuid = String;
    type List = String;
    type Partitions = String;
    type Span = i64;
    type Time = DateTime<Utc>;

    fn uuid(id: Uuid) -> String {
        hyphenated(id)
    }

    fn list(values: &[i64]) -> String {
        int_list(values)
    }

    fn partitions(partitions: &[i32]) -> String {
        int_list(partitions)
    }

    fn span(span: Duration, _towards: Towards) -> i64 {
        micros(span)
    }

    fn time(time: &DateTime<Utc>) -> DateTime<Utc> {
        *time
    }

    fn rows_affected(done: &MySqlQueryResult) -> u64 {
        done.rows_affected()
    }

    fn uuid_at(row: &MySqlRow, column: &str) -> Result<Uuid, sqlx::Error> {
        uuid_text(row, column)
    }

    fn text_at(row: &MySqlRow, column: &str) -> Result<String, sqlx::Error> {
        text(row, column)
    }

    fn time_at(row: &MySqlRow, column: &str) -> Result<DateTime<Utc>, sqlx::Error> {
        use sqlx::Row;
        row.try_get(column)
    }

    /// The relays table's `name` is a `VARCHAR(255)`.
    fn stored_name(name: &str) -> &str {
        crate::backend::relay::truncate(name, 255)
    }

    fn begin(pool: &MySqlPool) -> BoxFuture<'_, Result<Transaction<'static, MySql>, sqlx::Error>> {
        Box::pin(begin_read_committed(pool))
    }
}

impl crate::backend::BackendDatabase for sqlx::MySql {
    const KIND: crate::backend::DatabaseKind = crate::backend::DatabaseKind::MySql;

    fn relay_store(
        pool: sqlx::Pool<Self>,
        table: crate::TableName,
    ) -> std::sync::Arc<dyn crate::relay::RelayStore> {
        std::sync::Arc::new(MySqlRelayStore::new(pool, table))
    }

    fn admin(pool: sqlx::Pool<Self>, table: crate::TableName) -> crate::relay::OutboxAdmin {
        crate::relay::OutboxAdmin::mysql(pool, table)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_mysql() {
        // Values from `SELECT CRC32('…')` on MariaDB 10.11.
        assert_eq!(crc32(b""), 0);
        assert_eq!(crc32(b"MySQL"), 3_259_397_556);
        assert_eq!(crc32(b"k-1"), 3_392_644_870);
        assert_eq!(crc32("clé".as_bytes()), 113_715_828);
    }

    #[test]
    fn lists_are_comma_separated() {
        assert_eq!(int_list(&[0, 7, 63]), "0,7,63");
        assert_eq!(int_list::<i64>(&[]), "");
        assert_eq!(micros(Duration::from_millis(1500)), 1_500_000);
    }
}
