//! The SQLite [`RelayStore`]: one partition leased by one relay at a time,
//! fenced acknowledgement, and polling (SQLite has no notifications).
//!
//! Commit order needs no snapshot rule here: SQLite has one writer at a time,
//! and an `AUTOINCREMENT` id is assigned under the write lock that its
//! transaction holds until it ends, so ids become visible in commit order
//! (`docs/adr/0003-sqlite-outbox.md`).

use crate::backend::sql::composed;
use sqlx::sqlite::SqliteRow;
use sqlx::{Sqlite, SqlitePool};
use uuid::Uuid;

use super::{json_array, parse_timestamp, shift, NOW};
use crate::backend::dialect::Dialect;
use crate::backend::relay::{load_measured, RelaySql, SqlRelay, SqlStore};
use crate::backend::row::Lenient;
use crate::backend::sql::hyphenated;
use crate::error::Result;
use crate::outbox::OutboxRecord;
use crate::relay::{ClaimLimits, Lease, Rejection, Retention};
use crate::table::TableName;

/// The relay's view of a SQLite outbox table.
///
/// A SQLite outbox has a single partition, so **one relay per database** does
/// the work. Start a second one on the same file and it stands by: it
/// heartbeats, finds the partition leased, and takes over once the first
/// stops or its lease expires. New rows are found by polling
/// ([`RelayConfig::poll_interval`](crate::relay::RelayConfig::poll_interval)),
/// and at once when this process writes them
/// ([`RelayConfig::in_process_wakeups`](crate::relay::RelayConfig::in_process_wakeups)).
///
/// ```no_run
/// # #[cfg(feature = "rabbitmq")]
/// # async fn demo() -> eventbus::Result<()> {
/// use std::sync::Arc;
/// use eventbus::relay::{Relay, RelayConfig, SqliteRelayStore};
/// use eventbus::transport::rabbitmq::RabbitPublisher;
///
/// let pool = sqlx::SqlitePool::connect_with(eventbus::sqlite::connect_options("shop.db")).await?;
/// eventbus::migrate(&pool).await?;
/// let config = RelayConfig::default();
/// let store = SqliteRelayStore::new(pool, config.table.clone());
/// let publisher = RabbitPublisher::connect("amqp://guest:guest@127.0.0.1:5672/%2f").await?;
/// let relay = Relay::new(Arc::new(store), Arc::new(publisher), config)?;
/// relay.run(async { let _ = tokio::signal::ctrl_c().await; }).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct SqliteRelayStore {
    store: SqlStore<Sqlite, Own>,
}

/// SQLite's own relay statements (see [`RelaySql`] for the shared ones).
/// Lists of ids and partitions are bound as one JSON array and read with
/// `json_each`.
#[derive(Debug)]
pub(crate) struct Own {
    claim: String,
    payloads: String,
    delete: String,
    mark_published: String,
    reject: String,
}

fn statements(table: &TableName) -> RelaySql<Own> {
    // Ids become visible in commit order: nothing is ever held back.
    RelaySql::new(Dialect::SQLITE, table, "NULL", |names| {
        let t = &names.outbox;
        let p = &names.partitions;
        let list = |n: u8| format!("(SELECT value FROM json_each(?{n}))");
        // A row may be touched only while this relay (?2) holds its partition.
        let fence = format!(
            "EXISTS (SELECT 1 FROM {p} l WHERE l.\"partition\" = o.\"partition\" \
             AND l.owner = ?2 AND l.lease_expires_at > {NOW})"
        );
        // Writes also check the tenure: ?3 holds the relay's leases as a JSON
        // array of `[partition, epoch]`.
        let tenure = format!(
            "{fence} AND EXISTS (SELECT 1 FROM {p} l, json_each(?3) h \
             WHERE l.\"partition\" = o.\"partition\" AND h.value ->> 0 = l.\"partition\" \
               AND h.value ->> 1 = l.epoch)"
        );
        Own {
            // Payloads are measured here (`octet_length` of a column reads
            // its length, not its content) and loaded by `payloads`
            // afterwards, only those within the claim's byte budget.
            claim: format!(
                "SELECT o.id, o.event_id, o.source, o.destination, o.partition_key, \
                        o.\"partition\", o.event_type, o.schema_version, o.subject, o.headers, \
                        '' AS payload, octet_length(o.payload) AS size, \
                        strftime('%Y-%m-%dT%H:%M:%fZ', o.created_at) AS created_at, o.attempts \
                 FROM {t} o \
                 WHERE o.state = 'pending' AND o.\"partition\" IN {partitions} \
                   AND (o.next_attempt_at IS NULL OR o.next_attempt_at <= {NOW}) \
                   AND o.id NOT IN {skip} \
                   AND NOT EXISTS (SELECT 1 FROM {t} b \
                       WHERE b.partition_key = o.partition_key \
                         AND b.\"partition\" = o.\"partition\" AND b.id < o.id \
                         AND (b.state = 'failed' OR (b.state = 'pending' AND b.attempts > 0))) \
                   AND {fence} \
                 ORDER BY o.id LIMIT ?3",
                partitions = list(1),
                skip = list(4),
            ),
            payloads: format!(
                "SELECT o.id, CAST(o.payload AS BLOB) AS payload FROM {t} o WHERE o.id IN {ids}",
                ids = list(1)
            ),
            delete: format!(
                "DELETE FROM {t} AS o WHERE o.id IN {ids} AND {tenure}",
                ids = list(1)
            ),
            mark_published: format!(
                "UPDATE {t} AS o SET state = 'published', published_at = {NOW} \
                 WHERE o.id IN {ids} AND {tenure}",
                ids = list(1)
            ),
            reject: format!(
                "UPDATE {t} AS o SET attempts = o.attempts + 1, \
                        state = CASE WHEN u.park THEN 'failed' ELSE 'pending' END, \
                        next_attempt_at = CASE WHEN u.park THEN NULL \
                            ELSE strftime('%Y-%m-%dT%H:%M:%fZ', 'now', u.delay) END, \
                        last_error = u.err \
                 FROM (SELECT value ->> 0 AS id, value ->> 1 AS park, value ->> 2 AS delay, \
                              value ->> 3 AS err FROM json_each(?1)) AS u \
                 WHERE o.id = u.id AND {tenure}"
            ),
        }
    })
}

/// The relay's leases as the JSON array of `[partition, epoch]` the fence reads.
fn tenures(leases: &[Lease]) -> String {
    let pairs: Vec<(i32, i64)> = leases.iter().map(|l| (l.partition, l.epoch)).collect();
    json_array(&pairs)
}

impl SqliteRelayStore {
    /// The relay store for `table` in `pool`'s database. Open the pool in WAL
    /// mode with a busy timeout ([`super::connect_options`]).
    pub fn new(pool: SqlitePool, table: TableName) -> Self {
        let sql = statements(&table);
        SqliteRelayStore {
            store: SqlStore::new(pool, table, sql),
        }
    }
}

/// A claimed row. SQLite checks little (`json_valid` lets bytes that are not
/// UTF-8 through, a column takes a value of any type), so every text column
/// is read leniently.
fn record(row: &SqliteRow) -> std::result::Result<OutboxRecord, sqlx::Error> {
    let mut r = Lenient::new(row);
    let created_at = r.text("created_at");
    let created_at = parse_timestamp(&created_at).unwrap_or_else(|e| {
        r.note(
            "created_at",
            format!("`{created_at}` is not a timestamp: {e}"),
        );
        chrono::DateTime::<chrono::Utc>::default()
    });
    r.text_record(created_at)
}

#[async_trait::async_trait]
impl SqlRelay for SqliteRelayStore {
    type Db = Sqlite;
    type Own = Own;

    fn store(&self) -> &SqlStore<Sqlite, Own> {
        &self.store
    }

    async fn claim(
        &self,
        relay: Uuid,
        partitions: &[i32],
        limits: ClaimLimits,
        skip: &[i64],
    ) -> Result<Vec<OutboxRecord>> {
        // One read transaction: the payloads come from the same snapshot.
        let mut tx = self.store.begin().await?;
        let rows = sqlx::query(composed(&self.store.sql.own.claim))
            .bind(json_array(partitions))
            .bind(hyphenated(relay))
            .bind(i64::from(limits.rows))
            .bind(json_array(skip))
            .fetch_all(&mut *tx)
            .await
            .map_err(|e| self.store.err(e))?;
        let payloads = &self.store.sql.own.payloads;
        let claimed = load_measured::<Sqlite>(&mut tx, &rows, limits, record, payloads)
            .await
            .map_err(|e| self.store.err(e))?;
        tx.commit().await.map_err(|e| self.store.err(e))?;
        Ok(claimed)
    }

    async fn acknowledge(
        &self,
        relay: Uuid,
        leases: &[Lease],
        ids: &[i64],
        retention: Retention,
    ) -> Result<u64> {
        let sql = match retention {
            Retention::Delete => &self.store.sql.own.delete,
            Retention::Keep(_) => &self.store.sql.own.mark_published,
        };
        let done = sqlx::query(composed(sql))
            .bind(json_array(ids))
            .bind(hyphenated(relay))
            .bind(tenures(leases))
            .execute(&self.store.pool)
            .await
            .map_err(|e| self.store.err(e))?;
        Ok(done.rows_affected())
    }

    async fn reject(&self, relay: Uuid, leases: &[Lease], rejections: &[Rejection]) -> Result<()> {
        let rows: Vec<(i64, bool, String, &str)> = rejections
            .iter()
            .map(|r| (r.id, r.park, shift(r.retry_in, 1), r.error.as_str()))
            .collect();
        sqlx::query(composed(&self.store.sql.own.reject))
            .bind(json_array(&rows))
            .bind(hyphenated(relay))
            .bind(tenures(leases))
            .execute(&self.store.pool)
            .await
            .map_err(|e| self.store.err(e))?;
        Ok(())
    }
}
