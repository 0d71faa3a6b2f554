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

use crate::backend::sql::composed;
use sqlx::mysql::MySqlRow;
use sqlx::{MySql, MySqlPool, Transaction};
use uuid::Uuid;

use super::{int_list, micros, NOW};
use crate::backend::dialect::Dialect;
use crate::backend::relay::{load_measured, truncate, RelaySql, SqlRelay, SqlStore};
use crate::backend::row::Lenient;
use crate::backend::sql::{hyphenated, json_array};
use crate::error::Result;
use crate::outbox::OutboxRecord;
use crate::relay::{leases, ClaimLimits, Lease, Rejection, Retention};
use crate::table::TableName;

mod skipped;

use skipped::behind_skipped;

/// The longest error text stored in `last_error`, in characters.
const MAX_ERROR_CHARS: usize = 2_000;

/// The relay's view of a MySQL or MariaDB outbox table.
///
/// Any number of relays may share the outbox: they divide its partitions
/// through leases, as on PostgreSQL. New rows are found by polling
/// ([`RelayConfig::poll_interval`](crate::relay::RelayConfig::poll_interval)),
/// and at once when this process writes them
/// ([`RelayConfig::in_process_wakeups`](crate::relay::RelayConfig::in_process_wakeups)).
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
    store: SqlStore<MySql, Own>,
}

/// MySQL's own relay statements (see [`RelaySql`] for the shared ones).
/// Lists of partitions are bound as one comma-separated string
/// (`FIND_IN_SET`), lists of rows as one JSON array (`JSON_TABLE`): MySQL has
/// no array parameters.
#[derive(Debug)]
pub(crate) struct Own {
    claim: String,
    payloads: String,
    claimable_count: String,
    claimable: String,
    delete: String,
    mark_published: String,
    reject: String,
    held: String,
}

fn statements(table: &TableName) -> RelaySql<Own> {
    // Commit order is kept by writers waiting for each other, not by holding
    // committed rows back: nothing is ever held back here.
    RelaySql::new(Dialect::MYSQL, table, "NULL", |names| {
        let t = &names.outbox;
        let p = &names.partitions;
        // A row may be touched only in the partitions this relay holds
        // (`held`, read just before, bound as a list).
        let fence = "FIND_IN_SET(o.`partition`, ?)";
        // Publishable rows of the listed partitions: due, not among the ids
        // passed over (the relay's own batches in flight, a JSON array), and
        // not behind a failed or retrying row of their key.
        let publishable = format!(
            "o.state = 'pending' AND FIND_IN_SET(o.`partition`, ?) \
             AND o.id NOT IN (SELECT s.id FROM JSON_TABLE(?, '$[*]' COLUMNS (id BIGINT PATH '$')) s) \
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
            held: format!(
                "SELECT `partition`, epoch FROM {p} WHERE owner = ? AND lease_expires_at > {NOW} \
                 ORDER BY `partition`"
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
        let sql = statements(&table);
        MySqlRelayStore {
            store: SqlStore::new(pool, table, sql),
        }
    }

    /// The leases `relay` holds right now, read without locking in `tx`.
    async fn held(&self, tx: &mut Transaction<'static, MySql>, relay: Uuid) -> Result<Vec<Lease>> {
        sqlx::query_as(composed(&self.store.sql.own.held))
            .bind(hyphenated(relay))
            .fetch_all(&mut **tx)
            .await
            .map(leases)
            .map_err(|e| self.store.err(e))
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
        let mut tx = self.store.begin().await?;
        // Only partitions still held in the tenure the rows were claimed in.
        let held: Vec<i32> = self
            .held(&mut tx, relay)
            .await?
            .into_iter()
            .filter(|lease| leases.contains(lease))
            .map(|lease| lease.partition)
            .collect();
        if held.is_empty() {
            tx.commit().await.map_err(|e| self.store.err(e))?;
            return Ok(0);
        }
        let done = sqlx::query(composed(sql))
            .bind(rows)
            .bind(int_list(&held))
            .execute(&mut *tx)
            .await
            .map_err(|e| self.store.err(e))?;
        tx.commit().await.map_err(|e| self.store.err(e))?;
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

#[async_trait::async_trait]
impl SqlRelay for MySqlRelayStore {
    type Db = MySql;
    type Own = Own;

    fn store(&self) -> &SqlStore<MySql, Own> {
        &self.store
    }

    async fn claim(
        &self,
        relay: Uuid,
        partitions: &[i32],
        limits: ClaimLimits,
        skip: &[i64],
    ) -> Result<Vec<OutboxRecord>> {
        let mut tx = self.store.begin().await?;
        let held = self.held(&mut tx, relay).await?;
        let partitions: Vec<i32> = partitions
            .iter()
            .copied()
            .filter(|p| held.iter().any(|lease| lease.partition == *p))
            .collect();
        if partitions.is_empty() {
            tx.commit().await.map_err(|e| self.store.err(e))?;
            return Ok(Vec::new());
        }
        let list = int_list(&partitions);
        let skip = json_array(skip);
        // The locking read skips rows another session holds: uncommitted
        // inserts (a writer holds their partition's write lock, so nothing
        // older in that partition is left behind) and rows being changed by
        // someone else, e.g. a fenced-out relay's late acknowledgement.
        let rows = sqlx::query(composed(&self.store.sql.own.claim))
            .bind(&list)
            .bind(&skip)
            .bind(i64::from(limits.rows))
            .fetch_all(&mut *tx)
            .await
            .map_err(|e| self.store.err(e))?;
        let payloads = &self.store.sql.own.payloads;
        let claimed = load_measured::<MySql>(&mut tx, &rows, limits, record, payloads)
            .await
            .map_err(|e| self.store.err(e))?;
        let Some(last) = claimed.last().map(|r| r.id) else {
            tx.commit().await.map_err(|e| self.store.err(e))?;
            return Ok(claimed);
        };
        // Was a committed row skipped? A plain read sees it; if so, its key
        // waits for the next round rather than going out of order.
        let publishable: i64 = sqlx::query_scalar(composed(&self.store.sql.own.claimable_count))
            .bind(&list)
            .bind(&skip)
            .bind(last)
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| self.store.err(e))?;
        let claimed = if usize::try_from(publishable).is_ok_and(|n| n > claimed.len()) {
            let claimable: Vec<(i64, i32, Vec<u8>)> =
                sqlx::query_as(composed(&self.store.sql.own.claimable))
                    .bind(&list)
                    .bind(&skip)
                    .bind(last)
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(|e| self.store.err(e))?;
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
        self.fenced_write(sql, json_array(ids), relay, leases).await
    }

    async fn reject(&self, relay: Uuid, leases: &[Lease], rejections: &[Rejection]) -> Result<()> {
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
        self.fenced_write(&self.store.sql.own.reject, json_array(&rows), relay, leases)
            .await?;
        Ok(())
    }
}
