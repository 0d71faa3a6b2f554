//! The database behind `--database-url`: PostgreSQL, MySQL/MariaDB
//! (`mysql://…`), or a SQLite file (`sqlite://path.db`), chosen by the URL's
//! scheme.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use eventbus::relay::{MySqlRelayStore, OutboxAdmin, PgRelayStore, RelayStore, SqliteRelayStore};
use eventbus::{Error, Migrator, Result, TableName};
use sqlx::mysql::MySqlPoolOptions;
use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{MySqlPool, PgPool, SqlitePool};

/// A connected database holding the outbox.
#[derive(Debug)]
pub(crate) enum Database {
    Postgres(PgPool),
    MySql(MySqlPool),
    Sqlite(SqlitePool),
}

/// Whether a SQLite database file that does not exist yet may be created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Create {
    /// Only `migrate` creates the file; elsewhere a missing file is a mistake.
    IfMissing,
    /// Leave it to the URL (`?mode=rwc` creates).
    AsUrlSays,
}

impl Database {
    /// Connects to the database `url` names.
    pub(crate) async fn connect(url: &str, create: Create) -> Result<Self> {
        let scheme = url.split_once(':').map_or("", |(s, _)| s);
        match scheme {
            "postgres" | "postgresql" => Ok(Database::Postgres(
                PgPoolOptions::new()
                    .max_connections(8)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect(url)
                    .await?,
            )),
            "mysql" | "mariadb" => Ok(Database::MySql(
                MySqlPoolOptions::new()
                    .max_connections(8)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect(&url.replacen("mariadb:", "mysql:", 1))
                    .await?,
            )),
            "sqlite" => {
                let mut options = SqliteConnectOptions::from_str(url)
                    .map_err(|e| Error::Config(format!("invalid SQLite URL: {e}")))?
                    // WAL: the relay's polling never blocks the service's writes.
                    .journal_mode(SqliteJournalMode::Wal)
                    .busy_timeout(eventbus::sqlite::DEFAULT_BUSY_TIMEOUT);
                if create == Create::IfMissing {
                    options = options.create_if_missing(true);
                }
                Ok(Database::Sqlite(
                    SqlitePoolOptions::new()
                        .max_connections(4)
                        .acquire_timeout(Duration::from_secs(10))
                        .connect_with(options)
                        .await?,
                ))
            }
            _ => Err(Error::Config(
                "unsupported database URL: use postgres://…, mysql://… or sqlite://path.db".into(),
            )),
        }
    }

    /// The relay store for `table`.
    pub(crate) fn relay_store(&self, table: TableName) -> Arc<dyn RelayStore> {
        match self {
            Database::Postgres(pool) => Arc::new(PgRelayStore::new(pool.clone(), table)),
            Database::MySql(pool) => Arc::new(MySqlRelayStore::new(pool.clone(), table)),
            Database::Sqlite(pool) => Arc::new(SqliteRelayStore::new(pool.clone(), table)),
        }
    }

    /// Applies `migrator`'s migrations.
    pub(crate) async fn migrate(&self, migrator: &Migrator) -> Result<()> {
        match self {
            Database::Postgres(pool) => migrator.run(pool).await,
            Database::MySql(pool) => migrator.run(pool).await,
            Database::Sqlite(pool) => migrator.run(pool).await,
        }
    }

    /// The operator view of `table`, for `status` and `failed`, which exist
    /// on PostgreSQL and MySQL only.
    pub(crate) fn admin(self, table: TableName, command: &str) -> Result<OutboxAdmin> {
        match self {
            Database::Postgres(pool) => Ok(OutboxAdmin::new(pool, table)),
            Database::MySql(pool) => Ok(OutboxAdmin::mysql(pool, table)),
            Database::Sqlite(_) => Err(Error::Config(format!(
                "`outbox-relay {command}` supports PostgreSQL and MySQL only; on SQLite, query \
                 the outbox table with plain SQL (see docs/outbox-table.md)"
            ))),
        }
    }
}
