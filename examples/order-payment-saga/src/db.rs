//! Each service's database: SQLite files (the embedded default), or a
//! PostgreSQL or MySQL/MariaDB database per service, and what the saga needs
//! of each.
//!
//! Each service writes its SQL once, with `$1` placeholders, in a
//! `macro_rules!` that `for_each_database!` stamps out per database type
//! together with its [`Dialect`]: [`Dialect::sql`] turns the placeholders into
//! MySQL's `?`, and the few statements that differ (upserts, DDL) are chosen
//! by dialect.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use eventbus::inbox::InboxDatabase;
use eventbus::migrate::MigrateDatabase;
use eventbus::outbox::{OutboxDatabase, SCHEDULED_SUFFIX};
use eventbus::relay::{MySqlRelayStore, PgRelayStore, RelayStore, SqliteRelayStore};
use eventbus::saga::{SagaDatabase, Sagas};
use eventbus::{Event, TableName};
use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};
use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{AssertSqlSafe, MySql, MySqlPool, PgPool, Postgres, Sqlite, SqlitePool};

use crate::events::PaymentTimedOut;
use crate::inventory::InventoryDb;
use crate::order::OrderDb;
use crate::payment::PaymentDb;
use crate::Result;

/// Stamps out a service's SQL for every database the saga runs on, with the
/// database's dialect.
macro_rules! for_each_database {
    ($stamp:ident) => {
        $stamp!(sqlx::Postgres, $crate::db::Dialect::Postgres);
        $stamp!(sqlx::Sqlite, $crate::db::Dialect::Sqlite);
        $stamp!(sqlx::MySql, $crate::db::Dialect::MySql);
    };
}
pub(crate) use for_each_database;

/// The SQL dialect of a database the saga runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// PostgreSQL.
    Postgres,
    /// SQLite.
    Sqlite,
    /// MySQL or MariaDB.
    MySql,
}

impl Dialect {
    /// `sql`, written with `$1`, `$2`, … in order (each once), as this
    /// database takes it: unchanged, or with MySQL's `?`.
    ///
    /// The text is the saga's own, never input: values are bound. sqlx takes
    /// SQL other than `&'static str` only when asserted safe from injection,
    /// which is what this asserts.
    pub fn sql(self, sql: &str) -> AssertSqlSafe<String> {
        if self != Dialect::MySql {
            return AssertSqlSafe(sql.to_owned());
        }
        let mut out = String::with_capacity(sql.len());
        let mut chars = sql.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) {
                while chars.peek().is_some_and(char::is_ascii_digit) {
                    chars.next();
                }
                out.push('?');
            } else {
                out.push(c);
            }
        }
        AssertSqlSafe(out)
    }

    /// `INSERT … ON CONFLICT DO NOTHING` into `table (columns) VALUES (values)`.
    pub fn insert_if_absent(
        self,
        table: &str,
        columns: &str,
        values: &str,
    ) -> AssertSqlSafe<String> {
        let sql = match self {
            Dialect::MySql => format!("INSERT IGNORE INTO {table} ({columns}) VALUES ({values})"),
            Dialect::Postgres | Dialect::Sqlite => {
                format!("INSERT INTO {table} ({columns}) VALUES ({values}) ON CONFLICT DO NOTHING")
            }
        };
        self.sql(&sql)
    }
}

/// A database the whole saga runs on: the SDK's outbox (with its scheduled
/// table), inbox, saga table and migrations, plus each service's own tables.
#[async_trait::async_trait]
pub trait SagaDb:
    OutboxDatabase + InboxDatabase + SagaDatabase + MigrateDatabase + OrderDb + InventoryDb + PaymentDb
{
    /// The relay's view of this database's outbox.
    fn relay_store(pool: sqlx::Pool<Self>) -> Arc<dyn RelayStore>;

    /// Empties the outbox, its scheduled events, the inbox and the saga
    /// table, so a demo run starts clean even if an earlier one was
    /// interrupted with events or timeouts still pending.
    async fn reset(pool: &sqlx::Pool<Self>) -> sqlx::Result<()>;

    /// The orders whose payment timeout waits in the outbox's scheduled
    /// table (`docs/outbox-table.md`), one entry per waiting timeout.
    async fn waiting_payment_timeouts(pool: &sqlx::Pool<Self>) -> sqlx::Result<Vec<String>>;
}

/// The default outbox's scheduled table, where timeouts wait.
fn scheduled_table() -> TableName {
    let outbox = TableName::default_outbox();
    TableName::parse(&format!("{}{SCHEDULED_SUFFIX}", outbox.name()))
        .expect("the default outbox's scheduled table name is valid")
}

macro_rules! saga_db {
    ($db:ty, $store:ident, $quoted:path) => {
        #[async_trait::async_trait]
        impl SagaDb for $db {
            fn relay_store(pool: sqlx::Pool<Self>) -> Arc<dyn RelayStore> {
                Arc::new($store::new(pool, TableName::default_outbox()))
            }

            async fn reset(pool: &sqlx::Pool<Self>) -> sqlx::Result<()> {
                let outbox = TableName::default_outbox();
                let inbox = TableName::default_inbox();
                let sagas = Sagas::new().table_name().clone();
                for table in [outbox, scheduled_table(), inbox, sagas] {
                    sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DELETE FROM {}",
                        $quoted(&table)
                    )))
                    .execute(pool)
                    .await?;
                }
                Ok(())
            }

            async fn waiting_payment_timeouts(
                pool: &sqlx::Pool<Self>,
            ) -> sqlx::Result<Vec<String>> {
                let sql = format!(
                    "SELECT partition_key FROM {} WHERE event_type = '{}'",
                    $quoted(&scheduled_table()),
                    PaymentTimedOut::TYPE,
                );
                sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                    .fetch_all(pool)
                    .await
            }
        }
    };
}
saga_db!(Postgres, PgRelayStore, TableName::quoted);
saga_db!(Sqlite, SqliteRelayStore, TableName::quoted);
saga_db!(MySql, MySqlRelayStore, eventbus::mysql::quoted);

/// Where the services keep their data.
#[derive(Debug, Clone)]
pub enum Storage {
    /// One SQLite file per service in this directory.
    Sqlite(PathBuf),
    /// One PostgreSQL database per service, named `<database>_<service>` after
    /// the database in this URL, created when missing.
    Postgres(String),
    /// One MySQL/MariaDB database per service, named `<database>_<service>`
    /// after the database in this URL (`saga` without one), created when
    /// missing.
    MySql(String),
}

impl Storage {
    /// Reads `--database-url`: `postgres://…`, `mysql://…`, or
    /// `sqlite://<dir>` for SQLite files in `<dir>`.
    pub fn parse(url: &str) -> Result<Storage> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Storage::Postgres(url.to_owned()))
        } else if url.starts_with("mysql://") || url.starts_with("mariadb://") {
            Ok(Storage::MySql(url.replacen("mariadb://", "mysql://", 1)))
        } else if let Some(dir) = url.strip_prefix("sqlite://") {
            Ok(Storage::Sqlite(PathBuf::from(dir)))
        } else {
            Err(crate::Error::Usage(format!(
                "unsupported --database-url `{}`: use postgres://…, mysql://… or sqlite://<directory>",
                crate::redact(url)
            )))
        }
    }

    /// What to show in logs: the URL without its password.
    pub fn describe(&self) -> String {
        match self {
            Storage::Sqlite(dir) => format!("SQLite files in {}", dir.display()),
            Storage::Postgres(url) | Storage::MySql(url) => crate::redact(url),
        }
    }
}

/// Opens (creating if needed) the SQLite file of `service` in `dir`: WAL so
/// readers never wait for the writer, and a busy timeout so concurrent writers
/// queue instead of failing.
pub async fn sqlite(dir: &Path, service: &str) -> Result<SqlitePool> {
    std::fs::create_dir_all(dir).map_err(|e| {
        crate::Error::Usage(format!(
            "cannot create data directory {}: {e}",
            dir.display()
        ))
    })?;
    let options = SqliteConnectOptions::new()
        .filename(dir.join(format!("{service}.db")))
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(10));
    Ok(SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await?)
}

/// Connects to `<database>_<service>` next to the database `url` names,
/// creating it first if it does not exist.
pub async fn postgres(url: &str, service: &str) -> Result<PgPool> {
    let options = sqlx::postgres::PgConnectOptions::from_str(url)?;
    let base = options.get_database().unwrap_or("postgres").to_owned();
    let name = format!("{base}_{service}");
    // The base database itself need not exist: creating goes through the
    // server's maintenance database.
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(options.clone().database("postgres"))
        .await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&admin)
            .await?;
    if !exists {
        // Identifiers cannot be bound; the name is ours (base name + service),
        // quoted so any characters in the user's database name stay literal.
        let create = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
        if let Err(e) = sqlx::query(AssertSqlSafe(create.as_str()))
            .execute(&admin)
            .await
        {
            // Another service process may have created it a moment ago.
            let raced = e
                .as_database_error()
                .and_then(|d| d.code())
                .is_some_and(|c| c == "42P04" || c == "23505");
            if !raced {
                return Err(e.into());
            }
        }
    }
    admin.close().await;
    Ok(PgPoolOptions::new()
        .max_connections(8)
        .connect_with(options.database(&name))
        .await?)
}

/// Connects to `<database>_<service>` on the MySQL/MariaDB server `url` names
/// (`saga_<service>` when the URL names no database), creating it first if it
/// does not exist.
pub async fn mysql(url: &str, service: &str) -> Result<MySqlPool> {
    let options = MySqlConnectOptions::from_str(url)?;
    let base = options.get_database().unwrap_or("saga").to_owned();
    let name = format!("{base}_{service}");
    let admin = MySqlPoolOptions::new()
        .max_connections(1)
        .connect_with(options.clone().database("information_schema"))
        .await?;
    // Identifiers cannot be bound; the name is ours (base name + service),
    // quoted so any characters in the user's database name stay literal.
    let create = format!(
        "CREATE DATABASE IF NOT EXISTS `{}` CHARACTER SET utf8mb4",
        name.replace('`', "``")
    );
    sqlx::raw_sql(AssertSqlSafe(create.as_str()))
        .execute(&admin)
        .await?;
    admin.close().await;
    Ok(MySqlPoolOptions::new()
        .max_connections(8)
        .connect_with(options.database(&name))
        .await?)
}
