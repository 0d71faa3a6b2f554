//! The MySQL [`RelayStore`]: the same lease table and fenced writes as on
//! PostgreSQL, claiming with `FOR UPDATE SKIP LOCKED`, and polling (MySQL has
//! no notifications).
//!
//! Commit order needs no snapshot rule here: writers take their partition's
//! write lock before inserting, so within a partition ids are committed in
//! id order (`docs/adr/0004-mysql-commit-order.md`).
//!
//! Fencing is two statements in one short `READ COMMITTED` transaction: a
//! plain read of the leases this relay holds, then the row write restricted
//! to those partitions. The lease table never appears in a statement that
//! writes or locks outbox rows: InnoDB would take shared locks on the lease
//! rows it joins, in row order, and deadlock with a heartbeat renewing them
//! in partition order.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use sqlx::mysql::MySqlRow;
use sqlx::{MySql, MySqlPool, Transaction};
use tokio::sync::Notify;
use uuid::Uuid;

use super::{begin_read_committed, int_list, micros, NOW};
use crate::backend::dialect::Dialect;
use crate::backend::relay::{relay_id, relay_ids, sizes, snapshot, RelaySql};
use crate::backend::row::Lenient;
use crate::error::{Error, Result};
use crate::outbox::OutboxRecord;
use crate::relay::{leases, ClaimLimits, Lease, Rejection, RelayStore, Retention, Snapshot};
use crate::table::TableName;

/// The longest error text stored in `last_error`, in characters.
const MAX_ERROR_CHARS: usize = 2_000;

/// The longest relay name stored (`VARCHAR(255)`), in characters.
const MAX_NAME_CHARS: usize = 255;

/// The relay's view of a MySQL or MariaDB outbox table.
///
/// Any number of relays may share the outbox: they divide its partitions
/// through leases, as on PostgreSQL. New rows are found by polling
/// ([`RelayConfig::poll_interval`](crate::relay::RelayConfig::poll_interval)).
///
/// ```no_run
/// # #[cfg(feature = "rabbitmq")]
/// # async fn demo() -> eventbus::Result<()> {
/// use std::sync::Arc;
/// use eventbus::relay::{MySqlRelayStore, Relay, RelayConfig};
/// use eventbus::transport::rabbitmq::RabbitPublisher;
///
/// let pool = sqlx::MySqlPool::connect("mysql://app@127.0.0.1:3306/shop").await?;
/// eventbus::migrate(&pool).await?;
/// let config = RelayConfig::default();
/// let store = MySqlRelayStore::new(pool, config.table.clone());
/// let publisher = RabbitPublisher::connect("amqp://guest:guest@127.0.0.1:5672/%2f").await?;
/// let relay = Relay::new(Arc::new(store), Arc::new(publisher), config)?;
/// relay.run(async { let _ = tokio::signal::ctrl_c().await; }).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct MySqlRelayStore {
    pool: MySqlPool,
    table: TableName,
    sql: Arc<RelaySql<Own>>,
}

/// MySQL's own relay statements (see [`RelaySql`] for the shared ones).
/// Lists of partitions are bound as one comma-separated string
/// (`FIND_IN_SET`), lists of rows as one JSON array (`JSON_TABLE`): MySQL has
/// no array parameters.
#[derive(Debug)]
struct Own {
    claim: String,
    payloads: String,
    claimable_count: String,
    claimable: String,
    delete: String,
    mark_published: String,
    reject: String,
    stats: String,
    acquire: String,
    held: String,
    owned: String,
    heartbeat: String,
    delete_published: String,
}

fn statements(table: &TableName) -> RelaySql<Own> {
    RelaySql::new(Dialect::MYSQL, table, |names| {
        let t = &names.outbox;
        let p = &names.partitions;
        let r = &names.relays;
        // A row may be touched only in the partitions this relay holds
        // (`held`, read just before, bound as a list).
        let fence = "FIND_IN_SET(o.`partition`, ?)";
        // Publishable rows of the listed partitions: due, and not behind a
        // failed or retrying row of their key.
        let publishable = format!(
            "o.state = 'pending' AND FIND_IN_SET(o.`partition`, ?) \
             AND (o.next_attempt_at IS NULL OR o.next_attempt_at <= {NOW}) \
             AND NOT EXISTS (SELECT 1 FROM {t} b WHERE b.blocks_key = 1 \
                 AND b.`partition` = o.`partition` AND b.partition_key = o.partition_key \
                 AND b.id < o.id)"
        );
        let ids = "JSON_TABLE(?, '$[*]' COLUMNS (id BIGINT PATH '$')) j";
        Own {
            // Payloads are measured here and loaded by `payloads` afterwards,
            // only those within the claim's byte budget.
            claim: format!(
                "SELECT o.id, o.event_id, o.source, o.destination, o.partition_key, \
                        o.`partition`, o.event_type, o.schema_version, o.subject, o.headers, \
                        '' AS payload, CAST(LENGTH(o.payload) AS SIGNED) AS size, o.created_at, o.attempts \
                 FROM {t} o \
                 WHERE {publishable} \
                 ORDER BY o.id LIMIT ? \
                 FOR UPDATE SKIP LOCKED"
            ),
            payloads: format!("SELECT o.id, o.payload FROM {t} o JOIN {ids} ON o.id = j.id"),
            claimable_count: format!(
                "SELECT COUNT(*) FROM {t} o WHERE {publishable} AND o.id <= ?"
            ),
            claimable: format!(
                "SELECT o.id, o.`partition`, o.partition_key FROM {t} o \
                 WHERE {publishable} AND o.id <= ?"
            ),
            delete: format!("DELETE o FROM {t} o JOIN {ids} ON o.id = j.id WHERE {fence}"),
            mark_published: format!(
                "UPDATE {t} o JOIN {ids} ON o.id = j.id \
                 SET o.state = 'published', o.published_at = {NOW} WHERE {fence}"
            ),
            reject: format!(
                "UPDATE {t} o JOIN JSON_TABLE(?, '$[*]' COLUMNS ( \
                     id BIGINT PATH '$[0]', park INT PATH '$[1]', \
                     delay_us BIGINT PATH '$[2]', err VARCHAR({MAX_ERROR_CHARS}) PATH '$[3]')) u \
                   ON o.id = u.id \
                 SET o.attempts = o.attempts + 1, \
                     o.state = IF(u.park = 1, 'failed', 'pending'), \
                     o.next_attempt_at = IF(u.park = 1, NULL, {NOW} + INTERVAL u.delay_us MICROSECOND), \
                     o.last_error = u.err \
                 WHERE {fence}"
            ),
            stats: format!(
                "SELECT o.`partition` AS `partition`, COUNT(*) AS n, \
                        TIMESTAMPDIFF(MICROSECOND, MIN(o.created_at), {NOW}) AS oldest_us \
                 FROM {t} o WHERE o.state = 'pending' AND FIND_IN_SET(o.`partition`, ?) \
                 GROUP BY o.`partition`"
            ),
            // Our own rows count too: a lease we still hold but had lost track
            // of comes back extended, never with an unknown remaining time.
            acquire: format!(
                "UPDATE {p} SET owner = ?, epoch = epoch + 1, \
                        lease_expires_at = {NOW} + INTERVAL ? MICROSECOND \
                 WHERE FIND_IN_SET(`partition`, ?) AND (owner IS NULL OR owner = ? \
                       OR lease_expires_at IS NULL OR lease_expires_at < {NOW})"
            ),
            held: format!(
                "SELECT `partition`, epoch FROM {p} WHERE owner = ? AND lease_expires_at > {NOW} \
                 ORDER BY `partition`"
            ),
            owned: format!(
                "SELECT `partition`, epoch FROM {p} WHERE owner = ? AND FIND_IN_SET(`partition`, ?) \
                 ORDER BY `partition`"
            ),
            heartbeat: format!(
                "INSERT INTO {r} (relay_id, name) VALUES (?, ?) \
                 ON DUPLICATE KEY UPDATE heartbeat_at = {NOW}, name = ?"
            ),
            delete_published: format!(
                "DELETE FROM {t} WHERE state = 'published' \
                 AND published_at < {NOW} - INTERVAL ? MICROSECOND LIMIT ?"
            ),
        }
    })
}

impl MySqlRelayStore {
    /// The relay store for `table` in `pool`'s database.
    ///
    /// ```no_run
    /// # async fn demo() -> eventbus::Result<()> {
    /// use eventbus::relay::MySqlRelayStore;
    /// use eventbus::TableName;
    ///
    /// let pool = sqlx::MySqlPool::connect("mysql://app@127.0.0.1:3306/shop").await?;
    /// let store = MySqlRelayStore::new(pool, TableName::parse("eventbus_outbox")?);
    /// # let _ = store;
    /// # Ok(()) }
    /// ```
    pub fn new(pool: MySqlPool, table: TableName) -> Self {
        let sql = Arc::new(statements(&table));
        MySqlRelayStore { pool, table, sql }
    }

    fn err(&self, e: sqlx::Error) -> Error {
        Error::from_table_query(e, &self.table)
    }

    async fn begin(&self) -> Result<Transaction<'static, MySql>> {
        begin_read_committed(&self.pool)
            .await
            .map_err(|e| self.err(e))
    }

    /// Runs the lease `update` and returns which of `partitions` this relay
    /// owns afterwards, in one transaction: MySQL has no `UPDATE … RETURNING`.
    async fn update_leases(
        &self,
        relay: Uuid,
        partitions: &[i32],
        update: sqlx::query::Query<'_, MySql, sqlx::mysql::MySqlArguments>,
    ) -> Result<Vec<Lease>> {
        let mut tx = self.begin().await?;
        update.execute(&mut *tx).await.map_err(|e| self.err(e))?;
        let owned: Vec<(i32, i64)> = sqlx::query_as(&self.sql.own.owned)
            .bind(relay_id(relay))
            .bind(int_list(partitions))
            .fetch_all(&mut *tx)
            .await
            .map_err(|e| self.err(e))?;
        tx.commit().await.map_err(|e| self.err(e))?;
        Ok(leases(owned))
    }

    /// Loads the payloads of `claimed` (whose sizes are `sizes`, in order)
    /// that are within `limits`; marks the others with their size.
    async fn load_payloads(
        &self,
        tx: &mut Transaction<'static, MySql>,
        claimed: &mut [OutboxRecord],
        sizes: &[u64],
        limits: ClaimLimits,
    ) -> Result<()> {
        let wanted = limits.wanted(claimed, sizes);
        let payloads: HashMap<i64, Vec<u8>> = if wanted.is_empty() {
            HashMap::new()
        } else {
            // Serializing integers cannot fail.
            let ids = serde_json::to_string(&wanted).unwrap_or_else(|_| "[]".to_owned());
            sqlx::query_as::<_, (i64, Vec<u8>)>(&self.sql.own.payloads)
                .bind(ids)
                .fetch_all(&mut **tx)
                .await
                .map_err(|e| self.err(e))?
                .into_iter()
                .collect()
        };
        limits.fill(claimed, sizes, payloads);
        Ok(())
    }

    /// The leases `relay` holds right now, read without locking in `tx`.
    async fn held(&self, tx: &mut Transaction<'static, MySql>, relay: Uuid) -> Result<Vec<Lease>> {
        sqlx::query_as(&self.sql.own.held)
            .bind(relay_id(relay))
            .fetch_all(&mut **tx)
            .await
            .map(leases)
            .map_err(|e| self.err(e))
    }

    /// Runs the fenced row write `sql` for `rows` (a JSON array) at `READ
    /// COMMITTED`, on the rows of partitions `relay` holds; returns the rows
    /// affected.
    async fn fenced_write(
        &self,
        sql: &str,
        rows: String,
        relay: Uuid,
        leases: &[Lease],
    ) -> Result<u64> {
        let mut tx = self.begin().await?;
        // Only partitions still held in the tenure the rows were claimed in.
        let held: Vec<i32> = self
            .held(&mut tx, relay)
            .await?
            .into_iter()
            .filter(|lease| leases.contains(lease))
            .map(|lease| lease.partition)
            .collect();
        if held.is_empty() {
            tx.commit().await.map_err(|e| self.err(e))?;
            return Ok(0);
        }
        let done = sqlx::query(sql)
            .bind(rows)
            .bind(int_list(&held))
            .execute(&mut *tx)
            .await
            .map_err(|e| self.err(e))?;
        tx.commit().await.map_err(|e| self.err(e))?;
        Ok(done.rows_affected())
    }
}

/// A claimed row: text read from its bytes (whatever the collation), JSON
/// parsed here, a non-strict session's zero date noted rather than fatal.
fn record(row: &MySqlRow) -> std::result::Result<OutboxRecord, sqlx::Error> {
    let mut r = Lenient::new(row);
    let created_at = r.get("created_at").unwrap_or_default();
    r.text_record(created_at)
}

/// Drops from `claimed` (in id order) every row behind a row of its key that
/// the locking claim skipped: another session was changing that row, and
/// publishing past it could reorder the key. `claimable` lists the rows a
/// plain read finds publishable, up to the last claimed id.
fn behind_skipped(
    claimed: Vec<OutboxRecord>,
    claimable: &[(i64, i32, String)],
) -> Vec<OutboxRecord> {
    let taken: HashSet<i64> = claimed.iter().map(|r| r.id).collect();
    let mut first_skipped: HashMap<(i32, &str), i64> = HashMap::new();
    for (id, partition, key) in claimable {
        if !taken.contains(id) {
            let first = first_skipped
                .entry((*partition, key.as_str()))
                .or_insert(*id);
            *first = (*first).min(*id);
        }
    }
    if first_skipped.is_empty() {
        return claimed;
    }
    claimed
        .into_iter()
        .filter(|r| {
            first_skipped
                .get(&(r.partition, r.partition_key.as_str()))
                .is_none_or(|skipped| r.id < *skipped)
        })
        .collect()
}

/// Truncates `text` to at most `max` characters.
fn truncate(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((end, _)) => &text[..end],
        None => text,
    }
}

#[async_trait::async_trait]
impl RelayStore for MySqlRelayStore {
    async fn partitions(&self) -> Result<Vec<i32>> {
        sqlx::query_scalar(&self.sql.partitions)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.err(e))
    }

    async fn heartbeat(&self, relay: Uuid, name: &str, dead_after: Duration) -> Result<Vec<Uuid>> {
        let name = truncate(name, MAX_NAME_CHARS);
        sqlx::query(&self.sql.own.heartbeat)
            .bind(relay_id(relay))
            .bind(name)
            .bind(name)
            .execute(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        sqlx::query(&self.sql.forget_dead)
            .bind(micros(dead_after.saturating_mul(10)))
            .execute(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        let live: Vec<String> = sqlx::query_scalar(&self.sql.live)
            .bind(micros(dead_after))
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        relay_ids(&live)
    }

    async fn renew(&self, relay: Uuid, partitions: &[i32], ttl: Duration) -> Result<Vec<Lease>> {
        if partitions.is_empty() {
            return Ok(Vec::new());
        }
        let update = sqlx::query(&self.sql.renew)
            .bind(micros(ttl))
            .bind(relay_id(relay))
            .bind(int_list(partitions));
        self.update_leases(relay, partitions, update).await
    }

    async fn acquire(&self, relay: Uuid, partitions: &[i32], ttl: Duration) -> Result<Vec<Lease>> {
        if partitions.is_empty() {
            return Ok(Vec::new());
        }
        let update = sqlx::query(&self.sql.own.acquire)
            .bind(relay_id(relay))
            .bind(micros(ttl))
            .bind(int_list(partitions))
            .bind(relay_id(relay));
        self.update_leases(relay, partitions, update).await
    }

    async fn release(&self, relay: Uuid, partitions: &[i32]) -> Result<()> {
        if partitions.is_empty() {
            return Ok(());
        }
        sqlx::query(&self.sql.release)
            .bind(relay_id(relay))
            .bind(int_list(partitions))
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
        if partitions.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.begin().await?;
        let held = self.held(&mut tx, relay).await?;
        let partitions: Vec<i32> = partitions
            .iter()
            .copied()
            .filter(|p| held.iter().any(|lease| lease.partition == *p))
            .collect();
        if partitions.is_empty() {
            tx.commit().await.map_err(|e| self.err(e))?;
            return Ok(Vec::new());
        }
        let list = int_list(&partitions);
        // The locking read skips rows another session holds: uncommitted
        // inserts (a writer holds their partition's write lock, so nothing
        // older in that partition is left behind) and rows being changed by
        // someone else, e.g. a fenced-out relay's late acknowledgement.
        let rows = sqlx::query(&self.sql.own.claim)
            .bind(&list)
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
        self.load_payloads(&mut tx, &mut claimed, &sizes, limits)
            .await?;
        let Some(last) = claimed.last().map(|r| r.id) else {
            tx.commit().await.map_err(|e| self.err(e))?;
            return Ok(claimed);
        };
        // Was a committed row skipped? A plain read sees it; if so, its key
        // waits for the next round rather than going out of order.
        let publishable: i64 = sqlx::query_scalar(&self.sql.own.claimable_count)
            .bind(&list)
            .bind(last)
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| self.err(e))?;
        let claimed = if usize::try_from(publishable).is_ok_and(|n| n > claimed.len()) {
            let claimable: Vec<(i64, i32, Vec<u8>)> = sqlx::query_as(&self.sql.own.claimable)
                .bind(&list)
                .bind(last)
                .fetch_all(&mut *tx)
                .await
                .map_err(|e| self.err(e))?;
            let claimable: Vec<(i64, i32, String)> = claimable
                .into_iter()
                .map(|(id, p, key)| (id, p, String::from_utf8_lossy(&key).into_owned()))
                .collect();
            behind_skipped(claimed, &claimable)
        } else {
            claimed
        };
        // Committing right away releases the row locks: the leases, not these
        // locks, keep other relays away while the batch is published.
        tx.commit().await.map_err(|e| self.err(e))?;
        Ok(claimed)
    }

    async fn acknowledge(
        &self,
        relay: Uuid,
        leases: &[Lease],
        ids: &[i64],
        retention: Retention,
    ) -> Result<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        let sql = match retention {
            Retention::Delete => &self.sql.own.delete,
            Retention::Keep(_) => &self.sql.own.mark_published,
        };
        // Serializing integers cannot fail.
        let ids = serde_json::to_string(ids).unwrap_or_else(|_| "[]".to_owned());
        self.fenced_write(sql, ids, relay, leases).await
    }

    async fn reject(&self, relay: Uuid, leases: &[Lease], rejections: &[Rejection]) -> Result<()> {
        if rejections.is_empty() {
            return Ok(());
        }
        let rows: Vec<(i64, u8, i64, &str)> = rejections
            .iter()
            .map(|r| {
                (
                    r.id,
                    u8::from(r.park),
                    micros(r.retry_in),
                    truncate(&r.error, MAX_ERROR_CHARS),
                )
            })
            .collect();
        // Serializing integers and strings cannot fail.
        let rows = serde_json::to_string(&rows).unwrap_or_else(|_| "[]".to_owned());
        self.fenced_write(&self.sql.own.reject, rows, relay, leases)
            .await?;
        Ok(())
    }

    async fn stats(&self, partitions: &[i32]) -> Result<Snapshot> {
        let rows: Vec<(i32, i64, Option<i64>)> = sqlx::query_as(&self.sql.own.stats)
            .bind(int_list(partitions))
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        let parked: i64 = sqlx::query_scalar(&self.sql.parked)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        // Commit order is kept by writers waiting for each other, not by
        // holding committed rows back: nothing is ever held back here.
        let rows = rows.into_iter().map(|(p, n, oldest_us)| {
            let oldest = oldest_us.unwrap_or(0).max(0) as f64 / 1e6;
            (p, n, Some(oldest), None)
        });
        Ok(snapshot(partitions, rows, parked))
    }

    async fn delete_published(&self, keep: Duration, batch: i64) -> Result<u64> {
        let mut tx = self.begin().await?;
        let done = sqlx::query(&self.sql.own.delete_published)
            .bind(micros(keep))
            .bind(batch)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.err(e))?;
        tx.commit().await.map_err(|e| self.err(e))?;
        Ok(done.rows_affected())
    }

    async fn expired_published(&self, keep: Duration) -> Result<u64> {
        let n: i64 = sqlx::query_scalar(&self.sql.expired_published)
            .bind(micros(keep))
            .fetch_one(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn listen(&self, _notify: Arc<Notify>) -> Result<()> {
        // MySQL has no LISTEN/NOTIFY: the relay polls every `poll_interval`.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: i64, partition: i32, key: &str) -> OutboxRecord {
        OutboxRecord::sample(id, partition, key)
    }

    #[test]
    fn a_skipped_row_holds_back_only_its_own_key() {
        let claimed = vec![
            row(1, 0, "a"),
            row(3, 0, "b"),
            row(4, 0, "a"),
            row(5, 1, "a"),
        ];
        let claimable = vec![
            (1, 0, "a".to_owned()),
            (2, 0, "a".to_owned()), // skipped: held by another session
            (3, 0, "b".to_owned()),
            (4, 0, "a".to_owned()),
            (5, 1, "a".to_owned()),
        ];
        let kept: Vec<i64> = behind_skipped(claimed, &claimable)
            .iter()
            .map(|r| r.id)
            .collect();
        // Row 4 waits behind row 2; key "a" of partition 1 is another key.
        assert_eq!(kept, [1, 3, 5]);
    }

    #[test]
    fn nothing_skipped_keeps_the_whole_claim() {
        let claimed = vec![row(1, 0, "a"), row(2, 0, "a")];
        let claimable = vec![(1, 0, "a".to_owned()), (2, 0, "a".to_owned())];
        assert_eq!(behind_skipped(claimed, &claimable).len(), 2);
        assert_eq!(truncate("héllo", 2), "hé");
        assert_eq!(truncate("hi", 5), "hi");
    }
}
