//! [`connect`]: a [`Backend`] from a database URL, chosen by its scheme —
//! `postgres://…`, `mysql://…` (or `mariadb://…`), `sqlite://path.db`.

use std::sync::Arc;

use super::Backend;
use crate::error::{Error, Result};

/// Whether a SQLite database file that does not exist yet may be created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Create {
    /// Create it (what a migration wants); elsewhere a missing file is
    /// usually a mistake.
    IfMissing,
    /// Leave it to the URL (`?mode=rwc` creates).
    AsUrlSays,
}

/// Connects to the database `url` names, with a pool of a few connections
/// (8; 4 on SQLite, which has one writer) that waits at most 10 s for one.
/// A SQLite database is opened in WAL mode (the relay's polling never
/// blocks the service's writes) with `eventbus::sqlite::DEFAULT_BUSY_TIMEOUT`.
///
/// # Errors
///
/// [`Error::Config`] for a URL of another scheme, or of a database whose
/// feature is not compiled in; [`Error::Database`] if it cannot connect.
pub async fn connect(url: &str, create: Create) -> Result<Arc<dyn Backend>> {
    let scheme = url.split_once(':').map_or("", |(s, _)| s);
    match scheme {
        "postgres" | "postgresql" => postgres(url).await,
        "mysql" | "mariadb" => mysql(url).await,
        "sqlite" => sqlite(url, create).await,
        _ => Err(Error::Config(
            "unsupported database URL: use postgres://…, mysql://… or sqlite://path.db".into(),
        )),
    }
}

/// How long a caller waits for a pooled connection.
#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
const ACQUIRE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

#[cfg(feature = "postgres")]
async fn postgres(url: &str) -> Result<Arc<dyn Backend>> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect(url)
        .await?;
    Ok(Arc::new(super::Pooled(pool)))
}

#[cfg(feature = "mysql")]
async fn mysql(url: &str) -> Result<Arc<dyn Backend>> {
    let pool = sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect(&url.replacen("mariadb:", "mysql:", 1))
        .await?;
    Ok(Arc::new(super::Pooled(pool)))
}

#[cfg(feature = "sqlite")]
async fn sqlite(url: &str, create: Create) -> Result<Arc<dyn Backend>> {
    use std::str::FromStr;

    use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};

    let mut options = SqliteConnectOptions::from_str(url)
        .map_err(|e| Error::Config(format!("invalid SQLite URL: {e}")))?
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(crate::sqlite::DEFAULT_BUSY_TIMEOUT);
    if create == Create::IfMissing {
        options = options.create_if_missing(true);
    }
    let pool = SqlitePoolOptions::new()
        .max_connections(4)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_with(options)
        .await?;
    Ok(Arc::new(super::Pooled(pool)))
}

/// The refusal for a URL whose database is not compiled in.
#[cfg(not(all(feature = "postgres", feature = "mysql", feature = "sqlite")))]
fn not_compiled(database: &str, feature: &str) -> Error {
    Error::Config(format!(
        "{database} support is not compiled in: build eventbus with its `{feature}` feature"
    ))
}

#[cfg(not(feature = "postgres"))]
async fn postgres(_url: &str) -> Result<Arc<dyn Backend>> {
    Err(not_compiled("PostgreSQL", "postgres"))
}

#[cfg(not(feature = "mysql"))]
async fn mysql(_url: &str) -> Result<Arc<dyn Backend>> {
    Err(not_compiled("MySQL", "mysql"))
}

#[cfg(not(feature = "sqlite"))]
async fn sqlite(_url: &str, _create: Create) -> Result<Arc<dyn Backend>> {
    Err(not_compiled("SQLite", "sqlite"))
}
