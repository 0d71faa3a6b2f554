//! Where saga instances live: one row per instance in the saga table
//! (`eventbus_sagas` by default, created by the migrations), read and
//! written through [`SagaDatabase`]; [`Sagas`] is the table as users see
//! it: start an instance in their own transaction, load one, list them.

// Without a database backend nothing reads or writes the table.
#![cfg_attr(
    not(any(feature = "postgres", feature = "mysql", feature = "sqlite")),
    allow(dead_code)
)]

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::Saga;
use crate::error::{Error, Result};
use crate::inbox::InboxDatabase;
use crate::outbox::ScheduledDatabase;
use crate::table::TableName;

/// The default saga table name.
pub const DEFAULT_TABLE: &str = "eventbus_sagas";

/// The default saga table.
pub(crate) fn default_table() -> TableName {
    TableName::parse(DEFAULT_TABLE).expect("the default saga table name is valid")
}

/// The longest correlation id an instance can have, in bytes (the key
/// column's width on MySQL).
pub const MAX_INSTANCE_ID: usize = 255;

/// Whether an instance still takes events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SagaStatus {
    /// Started and not completed: its events are handled.
    Active,
    /// Completed: its events follow the
    /// [completed-instance rule](super::SagaDefinition::when_completed), its
    /// timeouts are cancelled.
    Completed,
}

impl SagaStatus {
    /// The word stored in the `status` column.
    pub fn as_str(self) -> &'static str {
        match self {
            SagaStatus::Active => "active",
            SagaStatus::Completed => "completed",
        }
    }

    /// The status the `status` column holds (anything but `completed` reads
    /// as active).
    pub(crate) fn parse(status: &str) -> Self {
        if status == "completed" {
            SagaStatus::Completed
        } else {
            SagaStatus::Active
        }
    }
}

impl std::fmt::Display for SagaStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A timeout an instance waits for: a scheduled event whose id is kept with
/// the instance until it arrives, is cancelled, or the saga completes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingTimeout {
    /// The scheduled event's id (its CloudEvents `id` when it arrives).
    pub id: Uuid,
    /// Its CloudEvents type.
    #[serde(rename = "type")]
    pub event_type: String,
    /// When it is due, in milliseconds since the epoch.
    pub due_ms: i64,
}

impl PendingTimeout {
    /// When it is due.
    pub fn due(&self) -> DateTime<Utc> {
        time(self.due_ms)
    }
}

/// One instance as stored, its state as JSON: what inspection shows.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct SagaRecord {
    /// The saga's name ([`Saga::NAME`]).
    pub saga: String,
    /// The instance's correlation id.
    pub instance_id: String,
    /// Its state, as the saga's state type serialized it.
    pub state: serde_json::Value,
    /// Active or completed.
    pub status: SagaStatus,
    /// How many steps changed it (1 once started).
    pub version: i64,
    /// The timeouts it waits for.
    pub timeouts: Vec<PendingTimeout>,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// When a step last changed it.
    pub updated_at: DateTime<Utc>,
    /// When it completed.
    pub completed_at: Option<DateTime<Utc>>,
}

/// A typed instance: [`Sagas::load`] decodes the state as the saga's type.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct SagaInstance<S> {
    /// The instance's correlation id.
    pub instance_id: String,
    /// Its state.
    pub state: S,
    /// Active or completed.
    pub status: SagaStatus,
    /// How many steps changed it.
    pub version: i64,
    /// The timeouts it waits for.
    pub timeouts: Vec<PendingTimeout>,
}

/// Which instances [`Sagas::list`] returns: newest change first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SagaQuery {
    saga: Option<String>,
    status: Option<SagaStatus>,
    limit: Option<u32>,
}

impl SagaQuery {
    /// Every instance of every saga, at most 100.
    pub fn new() -> Self {
        Self::default()
    }

    /// Only instances of saga `name`.
    pub fn saga(mut self, name: impl Into<String>) -> Self {
        self.saga = Some(name.into());
        self
    }

    /// Only instances in `status`.
    pub fn status(mut self, status: SagaStatus) -> Self {
        self.status = Some(status);
        self
    }

    /// At most `limit` instances (default 100).
    pub fn limit(mut self, limit: u32) -> Self {
        self.limit = Some(limit);
        self
    }

    pub(crate) fn saga_name(&self) -> Option<&str> {
        self.saga.as_deref()
    }

    pub(crate) fn status_filter(&self) -> Option<SagaStatus> {
        self.status
    }

    pub(crate) fn row_limit(&self) -> i64 {
        i64::from(self.limit.unwrap_or(100).max(1))
    }
}

/// How many instances a saga has, by status.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SagaCount {
    /// The saga's name.
    pub saga: String,
    /// Active or completed.
    pub status: SagaStatus,
    /// How many.
    pub instances: u64,
    /// How many timeouts they wait for, in all.
    pub pending_timeouts: u64,
    /// When the oldest of them started.
    pub oldest_started_at: Option<DateTime<Utc>>,
}

/// An instance row as the steps read and write it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[doc(hidden)]
pub struct StoredInstance {
    pub saga: String,
    pub instance_id: String,
    /// The state as JSON text.
    pub state: String,
    pub status: SagaStatus,
    pub version: i64,
    pub timeouts: Vec<PendingTimeout>,
    pub started_at: i64,
    pub updated_at: i64,
    pub completed_at: Option<i64>,
}

/// The columns of a saga row, in the order the statements read them.
pub(crate) type Row = (
    String,
    String,
    String,
    String,
    i64,
    String,
    i64,
    i64,
    Option<i64>,
);

impl StoredInstance {
    pub(crate) fn from_row(row: Row) -> Self {
        let (saga, instance_id, state, status, version, timeouts, started, updated, completed) =
            row;
        let timeouts = serde_json::from_str(&timeouts).unwrap_or_else(|e| {
            tracing::warn!(%saga, %instance_id, error = %e, "a saga row's timeouts are not a list of timeouts; read as none");
            Vec::new()
        });
        StoredInstance {
            saga,
            instance_id,
            state,
            status: SagaStatus::parse(&status),
            version,
            timeouts,
            started_at: started,
            updated_at: updated,
            completed_at: completed,
        }
    }

    pub(crate) fn timeouts_json(&self) -> String {
        serde_json::to_string(&self.timeouts).unwrap_or_else(|_| "[]".to_owned())
    }

    fn record(self) -> SagaRecord {
        let state =
            serde_json::from_str(&self.state).unwrap_or(serde_json::Value::String(self.state));
        SagaRecord {
            saga: self.saga,
            instance_id: self.instance_id,
            state,
            status: self.status,
            version: self.version,
            timeouts: self.timeouts,
            started_at: time(self.started_at),
            updated_at: time(self.updated_at),
            completed_at: self.completed_at.map(time),
        }
    }
}

pub(crate) fn time(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

pub(crate) fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// A database sagas can live in: the inbox (a duplicate changes nothing),
/// the outbox with its scheduled table (events and timeouts), and the saga
/// table. Implemented for each compiled-in backend.
#[async_trait::async_trait]
pub trait SagaDatabase: InboxDatabase + ScheduledDatabase {
    /// Reads instance `instance_id` of saga `saga` on `conn` and locks it
    /// until the transaction ends, so concurrent steps of one instance run
    /// one after the other.
    async fn lock_instance(
        conn: &mut Self::Connection,
        table: &TableName,
        saga: &str,
        instance_id: &str,
    ) -> Result<Option<StoredInstance>>;

    /// Like [`lock_instance`](Self::lock_instance), for a step that may
    /// start the instance: it may report an instance committed a moment ago
    /// as absent, since the step's insert then fails on the primary key and
    /// the step is retried (MySQL uses this to avoid gap locks).
    async fn lock_to_start(
        conn: &mut Self::Connection,
        table: &TableName,
        saga: &str,
        instance_id: &str,
    ) -> Result<Option<StoredInstance>>;

    /// Inserts a new instance; `false` if one with its id exists.
    async fn insert_instance(
        conn: &mut Self::Connection,
        table: &TableName,
        instance: &StoredInstance,
    ) -> Result<bool>;

    /// Writes `instance` over the stored one if that is still at version
    /// `expected`; whether it was.
    async fn update_instance(
        conn: &mut Self::Connection,
        table: &TableName,
        instance: &StoredInstance,
        expected: i64,
    ) -> Result<bool>;

    /// Instance `instance_id` of saga `saga`, without a lock.
    async fn instance(
        pool: &sqlx::Pool<Self>,
        table: &TableName,
        saga: &str,
        instance_id: &str,
    ) -> Result<Option<StoredInstance>>;

    /// Instances as `query` asks, newest change first.
    async fn instances(
        pool: &sqlx::Pool<Self>,
        table: &TableName,
        query: &SagaQuery,
    ) -> Result<Vec<StoredInstance>>;

    /// Instances per saga and status.
    async fn counts(pool: &sqlx::Pool<Self>, table: &TableName) -> Result<Vec<SagaCount>>;

    /// Deletes up to `batch` instances completed before `before_ms`;
    /// returns how many.
    async fn delete_completed(
        pool: &sqlx::Pool<Self>,
        table: &TableName,
        before_ms: i64,
        batch: i64,
    ) -> Result<u64>;
}

/// The saga table: start an instance in your own transaction, read
/// instances, clean up completed ones.
///
/// ```no_run
/// # #[cfg(feature = "postgres")]
/// # async fn demo(pool: sqlx::PgPool) -> eventbus::Result<()> {
/// use eventbus::saga::{Saga, Sagas};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct Shipping { parcels: u32 }
/// impl Saga for Shipping { const NAME: &'static str = "shipping"; }
///
/// let sagas = Sagas::new();
/// let mut tx = pool.begin().await?;
/// // ... the business writes that start it ...
/// sagas.start(&mut tx, "order-1", &Shipping { parcels: 2 }).await?;
/// tx.commit().await?;
///
/// let shipping = sagas.load::<Shipping, _>(&pool, "order-1").await?.expect("started");
/// assert_eq!(shipping.state.parcels, 2);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sagas {
    table: TableName,
}

impl Default for Sagas {
    fn default() -> Self {
        Self::new()
    }
}

impl Sagas {
    /// The default table, `eventbus_sagas`.
    pub fn new() -> Self {
        Sagas {
            table: default_table(),
        }
    }

    /// Another table (validated; `schema.table` allowed), created by
    /// [`Migrator::saga_table`](crate::Migrator::saga_table).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for an invalid name.
    pub fn table(mut self, name: &str) -> Result<Self> {
        self.table = TableName::parse(name)?;
        Ok(self)
    }

    /// The table's name.
    pub fn table_name(&self) -> &TableName {
        &self.table
    }

    /// Starts instance `instance_id` of `S` with `state` inside `tx`: it
    /// exists once `tx` commits, together with the caller's writes. Returns
    /// `false`, writing nothing, if the instance exists (active or
    /// completed).
    ///
    /// # Errors
    ///
    /// [`Error::Saga`] for an empty or too long id, [`Error::Serialize`] if
    /// the state does not serialize, or a database error.
    pub async fn start<S, DB>(
        &self,
        tx: &mut sqlx::Transaction<'_, DB>,
        instance_id: &str,
        state: &S,
    ) -> Result<bool>
    where
        S: Saga,
        DB: SagaDatabase,
    {
        check_instance_id::<S>(instance_id)?;
        let now = now_ms();
        let instance = StoredInstance {
            saga: S::NAME.to_owned(),
            instance_id: instance_id.to_owned(),
            state: state_json(state)?,
            status: SagaStatus::Active,
            version: 1,
            timeouts: Vec::new(),
            started_at: now,
            updated_at: now,
            completed_at: None,
        };
        DB::insert_instance(&mut **tx, &self.table, &instance).await
    }

    /// Instance `instance_id` of `S`, its state decoded.
    ///
    /// # Errors
    ///
    /// [`Error::Deserialize`] if the stored state does not decode as `S`, or
    /// a database error.
    pub async fn load<S, DB>(
        &self,
        pool: &sqlx::Pool<DB>,
        instance_id: &str,
    ) -> Result<Option<SagaInstance<S>>>
    where
        S: Saga,
        DB: SagaDatabase,
    {
        let Some(stored) = DB::instance(pool, &self.table, S::NAME, instance_id).await? else {
            return Ok(None);
        };
        Ok(Some(SagaInstance {
            state: decode_state::<S>(&stored.state)?,
            instance_id: stored.instance_id,
            status: stored.status,
            version: stored.version,
            timeouts: stored.timeouts,
        }))
    }

    /// Instance `instance_id` of saga `saga`, as stored.
    ///
    /// # Errors
    ///
    /// A database error.
    pub async fn record<DB: SagaDatabase>(
        &self,
        pool: &sqlx::Pool<DB>,
        saga: &str,
        instance_id: &str,
    ) -> Result<Option<SagaRecord>> {
        Ok(DB::instance(pool, &self.table, saga, instance_id)
            .await?
            .map(StoredInstance::record))
    }

    /// Instances as `query` asks, the most recently changed first.
    ///
    /// # Errors
    ///
    /// A database error.
    pub async fn list<DB: SagaDatabase>(
        &self,
        pool: &sqlx::Pool<DB>,
        query: &SagaQuery,
    ) -> Result<Vec<SagaRecord>> {
        Ok(DB::instances(pool, &self.table, query)
            .await?
            .into_iter()
            .map(StoredInstance::record)
            .collect())
    }

    /// How many instances each saga has, by status.
    ///
    /// # Errors
    ///
    /// A database error.
    pub async fn counts<DB: SagaDatabase>(&self, pool: &sqlx::Pool<DB>) -> Result<Vec<SagaCount>> {
        DB::counts(pool, &self.table).await
    }

    /// Deletes up to `batch` instances completed more than `older_than` ago;
    /// returns how many. An event for a deleted instance then meets the
    /// [missing-instance rule](super::SagaDefinition::when_missing), so keep
    /// completed instances longer than their events can be redelivered.
    ///
    /// # Errors
    ///
    /// A database error.
    pub async fn delete_completed<DB: SagaDatabase>(
        &self,
        pool: &sqlx::Pool<DB>,
        older_than: std::time::Duration,
        batch: u32,
    ) -> Result<u64> {
        let age = i64::try_from(older_than.as_millis()).unwrap_or(i64::MAX);
        DB::delete_completed(
            pool,
            &self.table,
            now_ms().saturating_sub(age),
            i64::from(batch.max(1)),
        )
        .await
    }
}

/// Refuses ids the table cannot key.
pub(crate) fn check_instance_id<S: Saga>(instance_id: &str) -> Result<()> {
    let reason = if instance_id.is_empty() {
        "the correlation id is empty".to_owned()
    } else if instance_id.len() > MAX_INSTANCE_ID {
        format!(
            "the correlation id is {} bytes, more than {MAX_INSTANCE_ID}",
            instance_id.len()
        )
    } else {
        return Ok(());
    };
    Err(Error::Saga {
        saga: S::NAME.to_owned(),
        instance: instance_id.chars().take(64).collect(),
        reason,
    })
}

pub(crate) fn state_json<S: Saga>(state: &S) -> Result<String> {
    serde_json::to_string(state).map_err(|source| Error::Serialize {
        event_type: format!("saga state of `{}`", S::NAME),
        source,
    })
}

pub(crate) fn decode_state<S: Saga>(state: &str) -> Result<S> {
    serde_json::from_str(state).map_err(|source| Error::Deserialize {
        event_type: format!("saga state of `{}`", S::NAME),
        source,
    })
}
