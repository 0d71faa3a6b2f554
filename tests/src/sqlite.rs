//! SQLite test databases: a fresh file in a temporary directory per test,
//! opened the way eventbus recommends (WAL, busy timeout).

use std::path::PathBuf;

use sqlx::sqlite::SqlitePoolOptions;
use sqlx::SqlitePool;
use tempfile::TempDir;

/// A SQLite database file created for one test; the directory holding it is
/// removed when this value is dropped.
#[derive(Debug)]
pub struct TestSqlite {
    /// Pool connected to the file.
    pub pool: SqlitePool,
    /// The database file.
    pub path: PathBuf,
    /// Its sqlx URL (`sqlite://…`), for child processes such as `outbox-relay`.
    pub url: String,
    dir: TempDir,
}

impl TestSqlite {
    /// Creates an empty database file.
    pub async fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("eventbus-sqlite-")
            .tempdir()
            .expect("create a temporary directory");
        let path = dir.path().join("test.db");
        let url = format!("sqlite://{}", path.display());
        let pool = open(&path).await;
        TestSqlite {
            pool,
            path,
            url,
            dir,
        }
    }

    /// Creates a database with the eventbus tables migrated.
    pub async fn migrated() -> Self {
        let db = Self::new().await;
        eventbus::migrate(&db.pool).await.expect("migrate");
        db
    }

    /// Another pool on the same file, as a second process would open it.
    pub async fn connect(&self) -> SqlitePool {
        open(&self.path).await
    }

    /// The temporary directory holding the file.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

async fn open(path: &std::path::Path) -> SqlitePool {
    SqlitePoolOptions::new()
        .max_connections(8)
        .connect_with(eventbus::sqlite::connect_options(path))
        .await
        .unwrap_or_else(|e| panic!("open SQLite database {}: {e}", path.display()))
}
