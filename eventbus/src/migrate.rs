//! Embedded, idempotent database migrations for the outbox, relay, inbox and
//! saga tables: [`migrate`] with defaults, or a configured [`Migrator`].
//!
//! PostgreSQL, MySQL/MariaDB and SQLite get the same tables and columns in their
//! own types (`docs/outbox-table.md`); SQLite's outbox has a single partition.

use crate::error::Result;
use crate::table::TableName;

/// The default number of logical partitions of the outbox. Fixed at migration
/// time: it decides which relay owns which keys.
pub const DEFAULT_PARTITIONS: u32 = 64;

/// Creates or upgrades the eventbus tables with default names. Idempotent and
/// safe to run from several processes at once.
///
/// ```no_run
/// # #[cfg(feature = "postgres")]
/// # async fn demo() -> eventbus::Result<()> {
/// let pool = sqlx::PgPool::connect("postgres://postgres@127.0.0.1/app").await?;
/// eventbus::migrate(&pool).await?;
/// # Ok(()) }
/// ```
///
/// # Errors
///
/// [`crate::Error::Database`] if a statement fails.
pub async fn migrate<DB: MigrateDatabase>(pool: &sqlx::Pool<DB>) -> Result<()> {
    Migrator::new().run(pool).await
}

/// Migration settings: table names and the partition count.
#[derive(Debug, Clone)]
pub struct Migrator {
    pub(crate) outbox: TableName,
    pub(crate) inbox: TableName,
    pub(crate) sagas: TableName,
    pub(crate) partitions: u32,
}

impl Default for Migrator {
    fn default() -> Self {
        Self::new()
    }
}

impl Migrator {
    /// Default names (`eventbus_outbox`, `eventbus_inbox`, `eventbus_sagas`)
    /// and 64 partitions.
    pub fn new() -> Self {
        Migrator {
            outbox: crate::outbox::default_table(),
            inbox: crate::inbox::default_table(),
            sagas: crate::saga::default_table(),
            partitions: DEFAULT_PARTITIONS,
        }
    }

    /// The outbox table to create.
    ///
    /// # Errors
    ///
    /// [`crate::Error::Config`] for an invalid name.
    pub fn outbox_table(mut self, name: &str) -> Result<Self> {
        self.outbox = TableName::parse(name)?;
        Ok(self)
    }

    /// The inbox table to create.
    ///
    /// # Errors
    ///
    /// [`crate::Error::Config`] for an invalid name.
    pub fn inbox_table(mut self, name: &str) -> Result<Self> {
        self.inbox = TableName::parse(name)?;
        Ok(self)
    }

    /// The saga table to create ([`crate::saga`]).
    ///
    /// # Errors
    ///
    /// [`crate::Error::Config`] for an invalid name.
    pub fn saga_table(mut self, name: &str) -> Result<Self> {
        self.sagas = TableName::parse(name)?;
        Ok(self)
    }

    /// The number of logical partitions (1 to 4096) for a new outbox table. Has no
    /// effect on an existing table, nor on SQLite, whose outbox always has one
    /// partition (one relay per database file).
    ///
    /// # Errors
    ///
    /// [`crate::Error::Config`] outside 1..=4096.
    pub fn partitions(mut self, partitions: u32) -> Result<Self> {
        if !(1..=4096).contains(&partitions) {
            return Err(crate::Error::config(format!(
                "partitions must be between 1 and 4096, got {partitions}"
            )));
        }
        self.partitions = partitions;
        Ok(self)
    }

    /// Applies every migration not yet applied.
    ///
    /// # Errors
    ///
    /// [`crate::Error::Database`] if a statement fails; nothing is half-applied.
    pub async fn run<DB: MigrateDatabase>(&self, pool: &sqlx::Pool<DB>) -> Result<()> {
        DB::apply(pool, self).await
    }
}

/// A database eventbus can create its tables in.
#[async_trait::async_trait]
pub trait MigrateDatabase: sqlx::Database {
    /// Applies the pending migrations described by `migrator`.
    async fn apply(pool: &sqlx::Pool<Self>, migrator: &Migrator) -> Result<()>;
}
