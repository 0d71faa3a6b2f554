//! One folder per database: everything eventbus writes in SQL for
//! PostgreSQL (`postgres`), MySQL/MariaDB (`mysql`) and SQLite (`sqlite`),
//! each behind the feature of that name — the outbox insert, the inbox and
//! its attempt counts, the migrations, the relay store and the operator
//! view — plus what the three share, and [`Backend`], the one object a program holds when it learns the
//! database from a URL ([`connect`]).
//!
//! The traits they implement live with their concern and hold no SQL:
//! [`OutboxDatabase`](crate::outbox::OutboxDatabase),
//! [`InboxDatabase`](crate::inbox::InboxDatabase),
//! [`AttemptsDatabase`](crate::inbox::AttemptsDatabase),
//! [`ParkedDatabase`](crate::inbox::ParkedDatabase),
//! [`ScheduledDatabase`](crate::outbox::ScheduledDatabase),
//! [`MigrateDatabase`](crate::migrate::MigrateDatabase) and
//! [`RelayStore`].

#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
mod admin;
#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
pub(crate) mod attempts;
#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
pub(crate) mod dialect;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
mod inbox;
#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
mod migrate;
#[cfg(any(feature = "mysql", feature = "sqlite"))]
mod outbox;
#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
mod parked;
#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
pub(crate) mod relay;
#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
pub(crate) mod row;
#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
mod saga;
#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
mod scheduled;
#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
pub(crate) mod sql;

#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
pub(crate) use admin::Admin;

#[cfg(feature = "mysql")]
pub mod mysql;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "sqlite")]
pub mod sqlite;

/// A count read from the database that does not fit `u32` is as good as
/// used up.
#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
pub(crate) fn count(n: i64) -> u32 {
    u32::try_from(n.max(0)).unwrap_or(u32::MAX)
}

mod connect;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::error::Result;
use crate::inbox::{Inbox, ParkRequest, Parked, ParkedState};
use crate::migrate::Migrator;
use crate::relay::{OutboxAdmin, RelayStore};
use crate::saga::{SagaCount, SagaQuery, SagaRecord, Sagas};
use crate::table::TableName;

pub use connect::{connect, Create};

/// Which database a [`Backend`] works on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DatabaseKind {
    /// PostgreSQL.
    Postgres,
    /// MySQL 8 or MariaDB 10.6+.
    MySql,
    /// SQLite (one partition, one relay per file).
    Sqlite,
}

impl fmt::Display for DatabaseKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DatabaseKind::Postgres => "PostgreSQL",
            DatabaseKind::MySql => "MySQL",
            DatabaseKind::Sqlite => "SQLite",
        })
    }
}

/// A connected database, whichever it is: what a program that only learns
/// the database from a URL at run time (the `outbox-relay` sidecar) needs of
/// it, behind one object-safe trait. Get one from [`connect`].
///
/// ```no_run
/// # async fn demo() -> eventbus::Result<()> {
/// use eventbus::backend::{connect, Create};
///
/// let backend = connect("sqlite://shop.db", Create::IfMissing).await?;
/// backend.migrate(&eventbus::Migrator::new()).await?;
/// let status = backend.admin(eventbus::TableName::default_outbox()).status().await?;
/// println!("{} on {}", status.pending, backend.kind());
/// # Ok(()) }
/// ```
#[async_trait::async_trait]
pub trait Backend: Send + Sync + fmt::Debug + 'static {
    /// The database this is.
    fn kind(&self) -> DatabaseKind;

    /// The relay store of outbox `table`.
    fn relay_store(&self, table: TableName) -> Arc<dyn RelayStore>;

    /// The operator view of outbox `table`.
    fn admin(&self, table: TableName) -> OutboxAdmin;

    /// Applies `migrator`'s migrations.
    ///
    /// # Errors
    ///
    /// [`crate::Error::Database`] if a statement fails.
    async fn migrate(&self, migrator: &Migrator) -> Result<()>;

    /// Deletes `inbox`'s rows older than `older_than`, as [`Inbox::cleanup`].
    ///
    /// # Errors
    ///
    /// [`crate::Error::Database`].
    async fn cleanup_inbox(&self, inbox: &Inbox, older_than: Duration, batch: i64) -> Result<u64>;

    /// Parks a message, as [`ParkedDatabase::park`](crate::inbox::ParkedDatabase::park).
    ///
    /// # Errors
    ///
    /// [`crate::Error::Database`].
    async fn park(&self, inbox: &TableName, request: &ParkRequest<'_>) -> Result<bool>;

    /// Parked messages, as
    /// [`ParkedDatabase::list_parked`](crate::inbox::ParkedDatabase::list_parked).
    ///
    /// # Errors
    ///
    /// [`crate::Error::Database`].
    async fn list_parked(
        &self,
        inbox: &TableName,
        consumer: Option<&str>,
        state: Option<ParkedState>,
        limit: i64,
    ) -> Result<Vec<Parked>>;

    /// One parked message, as
    /// [`ParkedDatabase::parked_by_id`](crate::inbox::ParkedDatabase::parked_by_id).
    ///
    /// # Errors
    ///
    /// [`crate::Error::Database`].
    async fn parked_by_id(&self, inbox: &TableName, id: i64) -> Result<Option<Parked>>;

    /// Sends dead messages back to their group, as
    /// [`ParkedDatabase::replay_dead`](crate::inbox::ParkedDatabase::replay_dead).
    ///
    /// # Errors
    ///
    /// [`crate::Error::Database`].
    async fn replay_dead(
        &self,
        inbox: &TableName,
        consumer: &str,
        ids: Option<&[i64]>,
        now: DateTime<Utc>,
    ) -> Result<u64>;

    /// Saga instances per saga and status, as [`Sagas::counts`].
    ///
    /// # Errors
    ///
    /// [`crate::Error::Database`].
    async fn saga_counts(&self, sagas: &Sagas) -> Result<Vec<SagaCount>>;

    /// Saga instances, as [`Sagas::list`].
    ///
    /// # Errors
    ///
    /// [`crate::Error::Database`].
    async fn list_sagas(&self, sagas: &Sagas, query: &SagaQuery) -> Result<Vec<SagaRecord>>;

    /// One saga instance, as [`Sagas::record`].
    ///
    /// # Errors
    ///
    /// [`crate::Error::Database`].
    async fn saga_record(
        &self,
        sagas: &Sagas,
        saga: &str,
        instance_id: &str,
    ) -> Result<Option<SagaRecord>>;
}

// `Backend` stays object-safe: the sidecar holds an `Arc<dyn Backend>`.
const _: fn(Arc<dyn Backend>) = |_| {};

/// A database type with everything a [`Backend`] offers: each backend module
/// implements it for its sqlx database, and [`Pooled`] turns a pool of it
/// into a [`Backend`].
#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
pub(crate) trait BackendDatabase:
    crate::migrate::MigrateDatabase + crate::inbox::InboxDatabase + crate::saga::SagaDatabase
{
    /// The database this is.
    const KIND: DatabaseKind;

    /// The relay store of outbox `table` in `pool`.
    fn relay_store(pool: sqlx::Pool<Self>, table: TableName) -> Arc<dyn RelayStore>;

    /// The operator view of outbox `table` in `pool`.
    fn admin(pool: sqlx::Pool<Self>, table: TableName) -> OutboxAdmin;
}

/// A pool of one of the databases, as a [`Backend`].
#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
#[derive(Debug)]
pub(crate) struct Pooled<DB: sqlx::Database>(pub(crate) sqlx::Pool<DB>);

#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
#[async_trait::async_trait]
impl<DB: BackendDatabase> Backend for Pooled<DB> {
    fn kind(&self) -> DatabaseKind {
        DB::KIND
    }

    fn relay_store(&self, table: TableName) -> Arc<dyn RelayStore> {
        DB::relay_store(self.0.clone(), table)
    }

    fn admin(&self, table: TableName) -> OutboxAdmin {
        DB::admin(self.0.clone(), table)
    }

    async fn migrate(&self, migrator: &Migrator) -> Result<()> {
        migrator.run(&self.0).await
    }

    async fn cleanup_inbox(&self, inbox: &Inbox, older_than: Duration, batch: i64) -> Result<u64> {
        inbox.cleanup(&self.0, older_than, batch).await
    }

    async fn park(&self, inbox: &TableName, request: &ParkRequest<'_>) -> Result<bool> {
        DB::park(&self.0, inbox, request).await
    }

    async fn list_parked(
        &self,
        inbox: &TableName,
        consumer: Option<&str>,
        state: Option<ParkedState>,
        limit: i64,
    ) -> Result<Vec<Parked>> {
        DB::list_parked(&self.0, inbox, consumer, state, limit).await
    }

    async fn parked_by_id(&self, inbox: &TableName, id: i64) -> Result<Option<Parked>> {
        DB::parked_by_id(&self.0, inbox, id).await
    }

    async fn replay_dead(
        &self,
        inbox: &TableName,
        consumer: &str,
        ids: Option<&[i64]>,
        now: DateTime<Utc>,
    ) -> Result<u64> {
        DB::replay_dead(&self.0, inbox, consumer, ids, now).await
    }

    async fn saga_counts(&self, sagas: &Sagas) -> Result<Vec<SagaCount>> {
        sagas.counts(&self.0).await
    }

    async fn list_sagas(&self, sagas: &Sagas, query: &SagaQuery) -> Result<Vec<SagaRecord>> {
        sagas.list(&self.0, query).await
    }

    async fn saga_record(
        &self,
        sagas: &Sagas,
        saga: &str,
        instance_id: &str,
    ) -> Result<Option<SagaRecord>> {
        sagas.record(&self.0, saga, instance_id).await
    }
}
