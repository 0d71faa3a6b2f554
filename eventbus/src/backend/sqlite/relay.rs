//! The SQLite [`RelayStore`]: one partition leased by one relay at a time,
//! fenced acknowledgement, and polling (SQLite has no notifications).
//!
//! Commit order needs no snapshot rule here: SQLite has one writer at a time,
//! and an `AUTOINCREMENT` id is assigned under the write lock that its
//! transaction holds until it ends, so ids become visible in commit order
//! (`docs/adr/0003-sqlite-outbox.md`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::SqliteRow;
use sqlx::SqlitePool;
use tokio::sync::Notify;
use uuid::Uuid;

use super::{json_array, now_shifted, parse_timestamp, shift, NOW};
use crate::backend::dialect::Dialect;
use crate::backend::relay::{relay_id, relay_ids, sizes, snapshot, RelaySql};
use crate::backend::row::Lenient;
use crate::error::{Error, Result};
use crate::outbox::OutboxRecord;
use crate::relay::{leases, ClaimLimits, Lease, Rejection, RelayStore, Retention, Snapshot};
use crate::table::TableName;

/// The relay's view of a SQLite outbox table.
///
/// A SQLite outbox has a single partition, so **one relay per database** does
/// the work. Start a second one on the same file and it stands by: it
/// heartbeats, finds the partition leased, and takes over once the first
/// stops or its lease expires. New rows are found by polling
/// ([`RelayConfig::poll_interval`](crate::relay::RelayConfig::poll_interval)).
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
    pool: SqlitePool,
    table: TableName,
    sql: Arc<RelaySql<Own>>,
}

/// SQLite's own relay statements (see [`RelaySql`] for the shared ones).
/// Lists of ids and partitions are bound as one JSON array and read with
/// `json_each`.
#[derive(Debug)]
struct Own {
    claim: String,
    payloads: String,
    delete: String,
    mark_published: String,
    reject: String,
    stats: String,
    acquire: String,
    heartbeat: String,
    delete_published: String,
}

fn statements(table: &TableName) -> RelaySql<Own> {
    RelaySql::new(Dialect::SQLITE, table, |names| {
        let t = &names.outbox;
        let p = &names.partitions;
        let r = &names.relays;
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
                   AND NOT EXISTS (SELECT 1 FROM {t} b \
                       WHERE b.partition_key = o.partition_key \
                         AND b.\"partition\" = o.\"partition\" AND b.id < o.id \
                         AND (b.state = 'failed' OR (b.state = 'pending' AND b.attempts > 0))) \
                   AND {fence} \
                 ORDER BY o.id LIMIT ?3",
                partitions = list(1),
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
            stats: format!(
                "SELECT o.\"partition\" AS \"partition\", count(*) AS n, \
                        (julianday('now') - min(julianday(o.created_at))) * 86400.0 AS oldest \
                 FROM {t} o WHERE o.state = 'pending' AND o.\"partition\" IN {partitions} \
                 GROUP BY o.\"partition\"",
                partitions = list(1)
            ),
            acquire: format!(
                "UPDATE {p} SET owner = ?1, epoch = epoch + 1, lease_expires_at = {until} \
                 WHERE \"partition\" IN {partitions} AND (owner IS NULL \
                       OR lease_expires_at IS NULL OR lease_expires_at < {NOW}) \
                 RETURNING \"partition\", epoch",
                until = now_shifted(3),
                partitions = list(2)
            ),
            heartbeat: format!(
                "INSERT INTO {r} (relay_id, name) VALUES (?1, ?2) \
                 ON CONFLICT (relay_id) DO UPDATE SET heartbeat_at = {NOW}, name = excluded.name"
            ),
            delete_published: format!(
                "DELETE FROM {t} WHERE id IN (SELECT id FROM {t} WHERE state = 'published' \
                 AND published_at < {before} LIMIT ?2)",
                before = now_shifted(1)
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
        let sql = Arc::new(statements(&table));
        SqliteRelayStore { pool, table, sql }
    }

    fn err(&self, e: sqlx::Error) -> Error {
        Error::from_table_query(e, &self.table)
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
impl RelayStore for SqliteRelayStore {
    async fn partitions(&self) -> Result<Vec<i32>> {
        sqlx::query_scalar(&self.sql.partitions)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.err(e))
    }

    async fn heartbeat(&self, relay: Uuid, name: &str, dead_after: Duration) -> Result<Vec<Uuid>> {
        sqlx::query(&self.sql.own.heartbeat)
            .bind(relay_id(relay))
            .bind(name)
            .execute(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        sqlx::query(&self.sql.forget_dead)
            .bind(shift(dead_after.saturating_mul(10), -1))
            .execute(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        let live: Vec<String> = sqlx::query_scalar(&self.sql.live)
            .bind(shift(dead_after, -1))
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        relay_ids(&live)
    }

    async fn renew(&self, relay: Uuid, partitions: &[i32], ttl: Duration) -> Result<Vec<Lease>> {
        sqlx::query_as::<_, (i32, i64)>(&self.sql.renew)
            .bind(shift(ttl, 1))
            .bind(relay_id(relay))
            .bind(json_array(partitions))
            .fetch_all(&self.pool)
            .await
            .map(leases)
            .map_err(|e| self.err(e))
    }

    async fn acquire(&self, relay: Uuid, partitions: &[i32], ttl: Duration) -> Result<Vec<Lease>> {
        sqlx::query_as::<_, (i32, i64)>(&self.sql.own.acquire)
            .bind(relay_id(relay))
            .bind(json_array(partitions))
            .bind(shift(ttl, 1))
            .fetch_all(&self.pool)
            .await
            .map(leases)
            .map_err(|e| self.err(e))
    }

    async fn release(&self, relay: Uuid, partitions: &[i32]) -> Result<()> {
        sqlx::query(&self.sql.release)
            .bind(relay_id(relay))
            .bind(json_array(partitions))
            .execute(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    async fn deregister(&self, relay: Uuid) -> Result<()> {
        sqlx::query(&self.sql.release_all)
            .bind(relay_id(relay))
            .execute(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        sqlx::query(&self.sql.deregister)
            .bind(relay_id(relay))
            .execute(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    async fn claim(
        &self,
        relay: Uuid,
        partitions: &[i32],
        limits: ClaimLimits,
    ) -> Result<Vec<OutboxRecord>> {
        // One read transaction: the payloads come from the same snapshot.
        let mut tx = self.pool.begin().await.map_err(|e| self.err(e))?;
        let rows = sqlx::query(&self.sql.own.claim)
            .bind(json_array(partitions))
            .bind(relay_id(relay))
            .bind(i64::from(limits.rows))
            .fetch_all(&mut *tx)
            .await
            .map_err(|e| self.err(e))?;
        let sizes = sizes(&rows)?;
        let fitting = limits.fitting(sizes.iter().copied());
        let mut claimed = rows[..fitting]
            .iter()
            .map(record)
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(Error::Database)?;
        let wanted = limits.wanted(&claimed, &sizes);
        let payloads: HashMap<i64, Vec<u8>> = if wanted.is_empty() {
            HashMap::new()
        } else {
            sqlx::query_as::<_, (i64, Vec<u8>)>(&self.sql.own.payloads)
                .bind(json_array(&wanted))
                .fetch_all(&mut *tx)
                .await
                .map_err(|e| self.err(e))?
                .into_iter()
                .collect()
        };
        tx.commit().await.map_err(|e| self.err(e))?;
        limits.fill(&mut claimed, &sizes, payloads);
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
            Retention::Delete => &self.sql.own.delete,
            Retention::Keep(_) => &self.sql.own.mark_published,
        };
        let done = sqlx::query(sql)
            .bind(json_array(ids))
            .bind(relay_id(relay))
            .bind(tenures(leases))
            .execute(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        Ok(done.rows_affected())
    }

    async fn reject(&self, relay: Uuid, leases: &[Lease], rejections: &[Rejection]) -> Result<()> {
        let rows: Vec<(i64, bool, String, &str)> = rejections
            .iter()
            .map(|r| (r.id, r.park, shift(r.retry_in, 1), r.error.as_str()))
            .collect();
        sqlx::query(&self.sql.own.reject)
            .bind(json_array(&rows))
            .bind(relay_id(relay))
            .bind(tenures(leases))
            .execute(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    async fn stats(&self, partitions: &[i32]) -> Result<Snapshot> {
        let rows: Vec<(i32, i64, Option<f64>)> = sqlx::query_as(&self.sql.own.stats)
            .bind(json_array(partitions))
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        let parked: i64 = sqlx::query_scalar(&self.sql.parked)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        // Ids become visible in commit order: nothing is ever held back.
        let rows = rows.into_iter().map(|(p, n, oldest)| (p, n, oldest, None));
        Ok(snapshot(partitions, rows, parked))
    }

    async fn delete_published(&self, keep: Duration, batch: i64) -> Result<u64> {
        let done = sqlx::query(&self.sql.own.delete_published)
            .bind(shift(keep, -1))
            .bind(batch)
            .execute(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        Ok(done.rows_affected())
    }

    async fn expired_published(&self, keep: Duration) -> Result<u64> {
        let n: i64 = sqlx::query_scalar(&self.sql.expired_published)
            .bind(shift(keep, -1))
            .fetch_one(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn listen(&self, _notify: Arc<Notify>) -> Result<()> {
        // SQLite cannot notify another connection, let alone another process:
        // the relay polls every `poll_interval`.
        Ok(())
    }
}
