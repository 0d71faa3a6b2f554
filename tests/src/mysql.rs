//! MySQL and MariaDB test databases: `CREATE DATABASE eventbus_test_<unique>`
//! on the server of `MYSQL_URL` per test, dropped when the test ends.

use crate::composed;
use sqlx::mysql::MySqlPoolOptions;
use sqlx::{Connection, Executor, MySqlConnection, MySqlPool};

use crate::{mysql_url, replace_db_name, unique_name};

/// A MySQL database created for one test and dropped when this value is
/// dropped.
#[derive(Debug)]
pub struct TestMySql {
    /// Pool connected to the fresh database.
    pub pool: MySqlPool,
    /// Its URL (for child processes such as `outbox-relay`).
    pub url: String,
    name: String,
    admin_url: String,
}

impl TestMySql {
    /// Creates an empty database.
    pub async fn new() -> Self {
        let admin_url = mysql_url().await;
        let name = unique_name("eventbus_test");
        let mut admin = MySqlConnection::connect(&admin_url)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to MySQL at MYSQL_URL: {e}"));
        admin
            .execute(composed(format!("CREATE DATABASE `{name}`")))
            .await
            .expect("create test database");
        let _ = admin.close().await;
        let url = replace_db_name(&admin_url, &name);
        let pool = open(&url).await;
        TestMySql {
            pool,
            url,
            name,
            admin_url,
        }
    }

    /// Creates a database with the eventbus tables migrated.
    pub async fn migrated() -> Self {
        let db = Self::new().await;
        eventbus::migrate(&db.pool).await.expect("migrate");
        db
    }

    /// Another pool on the same database, as a second process would open it.
    pub async fn connect(&self) -> MySqlPool {
        open(&self.url).await
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

async fn open(url: &str) -> MySqlPool {
    MySqlPoolOptions::new()
        .max_connections(10)
        .connect(url)
        .await
        .unwrap_or_else(|e| panic!("connect to the MySQL test database: {e}"))
}

impl Drop for TestMySql {
    fn drop(&mut self) {
        drop_database(&self.admin_url, &self.name);
    }
}

/// Drops database `name`, ending its sessions first (a pool or relay of the
/// test may still hold a connection in it), blocking until done. The work
/// runs on a thread and runtime of its own, as in [`crate::drop_databases`].
pub fn drop_database(admin_url: &str, name: &str) {
    let admin_url = admin_url.to_owned();
    let name = name.to_owned();
    let _ = std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async move {
            let Ok(mut admin) = MySqlConnection::connect(&admin_url).await else {
                return;
            };
            let sessions: Vec<i64> = sqlx::query_scalar(
                "SELECT CAST(ID AS SIGNED) FROM information_schema.PROCESSLIST WHERE DB = ?",
            )
            .bind(&name)
            .fetch_all(&mut admin)
            .await
            .unwrap_or_default();
            for id in sessions {
                let _ = admin.execute(composed(format!("KILL {id}"))).await;
            }
            let _ = admin
                .execute(composed(format!("DROP DATABASE IF EXISTS `{name}`")))
                .await;
            let _ = admin.close().await;
        });
    })
    .join();
}
