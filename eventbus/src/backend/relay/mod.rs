//! What the three relay stores share. [`RelaySql`] holds the statements of
//! the same shape everywhere; [`SqlRelay`] is what a backend writes itself
//! (claiming, fenced acknowledgement, wake-ups), and every [`SqlRelay`] is a
//! [`RelayStore`] through the one implementation here, which runs the
//! membership, lease, statistics and retention statements for all of them.

#[cfg(any(feature = "mysql", feature = "sqlite"))]
mod claim;
mod statements;

#[cfg(any(feature = "mysql", feature = "sqlite"))]
pub(crate) use claim::load_measured;
pub(crate) use statements::RelaySql;

use crate::backend::sql::composed;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use sqlx::{ColumnIndex, Decode, Executor, IntoArguments, Row, Type};
use tokio::sync::Notify;
use uuid::Uuid;

use crate::backend::sql::{Bind, SqlDatabase, Towards};
use crate::error::{Error, Result};
use crate::outbox::{OutboxRecord, ScheduledDatabase, ScheduledStats};
use crate::relay::{leases, ClaimLimits, Lease, Rejection, RelayStore, Retention, Snapshot};
use crate::table::TableName;

/// A relay store's connection and statements: the pool, the outbox table
/// (named in errors) and its SQL, shared and `Own`.
#[derive(Debug)]
pub(crate) struct SqlStore<DB: sqlx::Database, Own> {
    pub(crate) pool: sqlx::Pool<DB>,
    pub(crate) table: TableName,
    pub(crate) sql: Arc<RelaySql<Own>>,
}

impl<DB: sqlx::Database, Own> Clone for SqlStore<DB, Own> {
    fn clone(&self) -> Self {
        SqlStore {
            pool: self.pool.clone(),
            table: self.table.clone(),
            sql: Arc::clone(&self.sql),
        }
    }
}

impl<DB: sqlx::Database, Own> SqlStore<DB, Own> {
    /// The store of `table` in `pool`, running `sql`.
    pub(crate) fn new(pool: sqlx::Pool<DB>, table: TableName, sql: RelaySql<Own>) -> Self {
        SqlStore {
            pool,
            table,
            sql: Arc::new(sql),
        }
    }

    /// A failed statement on the outbox table.
    pub(crate) fn err(&self, e: sqlx::Error) -> Error {
        Error::from_table_query(e, &self.table)
    }
}

impl<DB: SqlDatabase, Own> SqlStore<DB, Own> {
    /// Begins a transaction as the database's fenced writes want it
    /// ([`SqlDatabase::begin`]: MySQL at `READ COMMITTED`).
    pub(crate) async fn begin(&self) -> Result<sqlx::Transaction<'static, DB>> {
        DB::begin(&self.pool).await.map_err(|e| self.err(e))
    }
}

/// What one database's relay store writes itself; the rest of
/// [`RelayStore`] comes with it.
#[async_trait::async_trait]
pub(crate) trait SqlRelay: Send + Sync + Debug + 'static {
    /// The database.
    type Db: SqlDatabase;
    /// The backend's own statements.
    type Own: Send + Sync + Debug + 'static;

    /// The connection and statements.
    fn store(&self) -> &SqlStore<Self::Db, Self::Own>;

    /// As [`RelayStore::claim`].
    async fn claim(
        &self,
        relay: Uuid,
        partitions: &[i32],
        limits: ClaimLimits,
        skip: &[i64],
    ) -> Result<Vec<OutboxRecord>>;

    /// As [`RelayStore::acknowledge`].
    async fn acknowledge(
        &self,
        relay: Uuid,
        leases: &[Lease],
        ids: &[i64],
        retention: Retention,
    ) -> Result<u64>;

    /// As [`RelayStore::reject`].
    async fn reject(&self, relay: Uuid, leases: &[Lease], rejections: &[Rejection]) -> Result<()>;

    /// As [`RelayStore::listen`]; by default the database cannot notify and
    /// the relay polls every `poll_interval`.
    async fn listen(&self, _notify: Arc<Notify>) -> Result<()> {
        Ok(())
    }
}

/// Truncates `text` to at most `max` characters.
#[cfg(feature = "mysql")]
pub(crate) fn truncate(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((end, _)) => &text[..end],
        None => text,
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

type Db<S> = <S as SqlRelay>::Db;

#[async_trait::async_trait]
impl<S> RelayStore for S
where
    S: SqlRelay,
    for<'c> &'c mut <Db<S> as sqlx::Database>::Connection: Executor<'c, Database = Db<S>>,
    <Db<S> as sqlx::Database>::Arguments: IntoArguments<Db<S>>,
    for<'c> &'c str: ColumnIndex<<Db<S> as sqlx::Database>::Row>,
    usize: ColumnIndex<<Db<S> as sqlx::Database>::Row>,
    i32: for<'r> Decode<'r, Db<S>> + Type<Db<S>>,
    i64: for<'r> Decode<'r, Db<S>> + Bind<Db<S>>,
    f64: for<'r> Decode<'r, Db<S>> + Type<Db<S>>,
    String: for<'r> Decode<'r, Db<S>> + Bind<Db<S>>,
    Db<S>: ScheduledDatabase,
{
    async fn partitions(&self) -> Result<Vec<i32>> {
        let store = self.store();
        sqlx::query_scalar(composed(&store.sql.partitions))
            .fetch_all(&store.pool)
            .await
            .map_err(|e| store.err(e))
    }

    async fn heartbeat(&self, relay: Uuid, name: &str, dead_after: Duration) -> Result<Vec<Uuid>> {
        let store = self.store();
        let name = Db::<S>::stored_name(name).to_owned();
        let mut heartbeat = sqlx::query(composed(&store.sql.heartbeat))
            .bind(Db::<S>::uuid(relay))
            .bind(name.clone());
        if !Db::<S>::DIALECT.reuses_params() {
            heartbeat = heartbeat.bind(name);
        }
        heartbeat
            .execute(&store.pool)
            .await
            .map_err(|e| store.err(e))?;
        sqlx::query(composed(&store.sql.forget_dead))
            .bind(Db::<S>::span(dead_after.saturating_mul(10), Towards::Past))
            .execute(&store.pool)
            .await
            .map_err(|e| store.err(e))?;
        let live = sqlx::query(composed(&store.sql.live))
            .bind(Db::<S>::span(dead_after, Towards::Past))
            .fetch_all(&store.pool)
            .await
            .map_err(|e| store.err(e))?;
        // Every relay must see the same order to compute the same assignment.
        let mut ids = live
            .iter()
            .map(|row| Db::<S>::uuid_at(row, "relay_id"))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        ids.sort_unstable();
        Ok(ids)
    }

    async fn renew(&self, relay: Uuid, partitions: &[i32], ttl: Duration) -> Result<Vec<Lease>> {
        if partitions.is_empty() {
            return Ok(Vec::new());
        }
        let store = self.store();
        let renew = sqlx::query(composed(&store.sql.renew))
            .bind(Db::<S>::span(ttl, Towards::Future))
            .bind(Db::<S>::uuid(relay))
            .bind(Db::<S>::partitions(partitions));
        update_leases(store, relay, partitions, renew).await
    }

    async fn acquire(&self, relay: Uuid, partitions: &[i32], ttl: Duration) -> Result<Vec<Lease>> {
        if partitions.is_empty() {
            return Ok(Vec::new());
        }
        let store = self.store();
        let mut acquire = sqlx::query(composed(&store.sql.acquire))
            .bind(Db::<S>::uuid(relay))
            .bind(Db::<S>::span(ttl, Towards::Future))
            .bind(Db::<S>::partitions(partitions));
        if !Db::<S>::DIALECT.has_returning() {
            // `OR owner = ?`: a lease held but lost track of (see `RelaySql`).
            acquire = acquire.bind(Db::<S>::uuid(relay));
        }
        update_leases(store, relay, partitions, acquire).await
    }

    async fn release(&self, relay: Uuid, partitions: &[i32]) -> Result<()> {
        if partitions.is_empty() {
            return Ok(());
        }
        let store = self.store();
        sqlx::query(composed(&store.sql.release))
            .bind(Db::<S>::uuid(relay))
            .bind(Db::<S>::partitions(partitions))
            .execute(&store.pool)
            .await
            .map_err(|e| store.err(e))?;
        Ok(())
    }

    async fn deregister(&self, relay: Uuid) -> Result<()> {
        let store = self.store();
        for statement in [&store.sql.release_all, &store.sql.deregister] {
            sqlx::query(composed(statement))
                .bind(Db::<S>::uuid(relay))
                .execute(&store.pool)
                .await
                .map_err(|e| store.err(e))?;
        }
        Ok(())
    }

    async fn claim(
        &self,
        relay: Uuid,
        partitions: &[i32],
        limits: ClaimLimits,
        skip: &[i64],
    ) -> Result<Vec<OutboxRecord>> {
        if partitions.is_empty() {
            return Ok(Vec::new());
        }
        SqlRelay::claim(self, relay, partitions, limits, skip).await
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
        SqlRelay::acknowledge(self, relay, leases, ids, retention).await
    }

    async fn reject(&self, relay: Uuid, leases: &[Lease], rejections: &[Rejection]) -> Result<()> {
        if rejections.is_empty() {
            return Ok(());
        }
        SqlRelay::reject(self, relay, leases, rejections).await
    }

    async fn stats(&self, partitions: &[i32]) -> Result<Snapshot> {
        let store = self.store();
        let rows: Vec<(i32, i64, Option<f64>, Option<f64>)> =
            sqlx::query_as(composed(&store.sql.stats))
                .bind(Db::<S>::partitions(partitions))
                .fetch_all(&store.pool)
                .await
                .map_err(|e| store.err(e))?;
        let parked: i64 = sqlx::query_scalar(composed(&store.sql.parked))
            .fetch_one(&store.pool)
            .await
            .map_err(|e| store.err(e))?;
        Ok(snapshot(partitions, rows, parked))
    }

    async fn delete_published(&self, keep: Duration, batch: i64) -> Result<u64> {
        let store = self.store();
        let mut tx = Db::<S>::begin(&store.pool)
            .await
            .map_err(|e| store.err(e))?;
        let done = sqlx::query(composed(&store.sql.delete_published))
            .bind(Db::<S>::span(keep, Towards::Past))
            .bind(batch)
            .execute(&mut *tx)
            .await
            .map_err(|e| store.err(e))?;
        tx.commit().await.map_err(|e| store.err(e))?;
        Ok(Db::<S>::rows_affected(&done))
    }

    async fn expired_published(&self, keep: Duration) -> Result<u64> {
        let store = self.store();
        let n: i64 = sqlx::query_scalar(composed(&store.sql.expired_published))
            .bind(Db::<S>::span(keep, Towards::Past))
            .fetch_one(&store.pool)
            .await
            .map_err(|e| store.err(e))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn release_due(&self, now: chrono::DateTime<chrono::Utc>, limit: u32) -> Result<u64> {
        let store = self.store();
        Db::<S>::release_due(&store.pool, &store.table, now, limit).await
    }

    async fn scheduled(&self) -> Result<ScheduledStats> {
        let store = self.store();
        Db::<S>::scheduled_stats(&store.pool, &store.table).await
    }

    async fn listen(&self, notify: Arc<Notify>) -> Result<()> {
        SqlRelay::listen(self, notify).await
    }
}

/// Runs the lease `update` and returns the leases it left `relay` with
/// among `partitions`: from its `RETURNING` clause, or where there is none
/// (MySQL) read back in the same transaction.
async fn update_leases<'q, DB, Own>(
    store: &SqlStore<DB, Own>,
    relay: Uuid,
    partitions: &[i32],
    update: sqlx::query::Query<'q, DB, DB::Arguments>,
) -> Result<Vec<Lease>>
where
    DB: SqlDatabase,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    usize: ColumnIndex<DB::Row>,
    i32: for<'r> Decode<'r, DB> + Type<DB>,
    i64: for<'r> Decode<'r, DB> + Type<DB>,
{
    let held: Vec<(i32, i64)> = if DB::DIALECT.has_returning() {
        let rows = update
            .fetch_all(&store.pool)
            .await
            .map_err(|e| store.err(e))?;
        rows.iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
            .collect::<std::result::Result<_, sqlx::Error>>()?
    } else {
        let mut tx = DB::begin(&store.pool).await.map_err(|e| store.err(e))?;
        update.execute(&mut *tx).await.map_err(|e| store.err(e))?;
        let owned = sqlx::query_as(composed(&store.sql.owned))
            .bind(DB::uuid(relay))
            .bind(DB::partitions(partitions))
            .fetch_all(&mut *tx)
            .await
            .map_err(|e| store.err(e))?;
        tx.commit().await.map_err(|e| store.err(e))?;
        owned
    };
    Ok(leases(held))
}

#[cfg(all(test, feature = "mysql"))]
mod tests {
    use super::truncate;

    #[test]
    fn names_are_truncated_at_a_character_boundary() {
        assert_eq!(truncate("héllo", 2), "hé");
        assert_eq!(truncate("hi", 5), "hi");
    }
}
