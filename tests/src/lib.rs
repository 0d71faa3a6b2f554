//! Helpers for the eventbus integration suites: finding the real services, a
//! fresh database per test (PostgreSQL, MySQL, or a SQLite file), unique broker
//! names, and the suites written once for every database ([`suites`], over
//! [`TestDatabase`]).
//!
//! Services come from environment variables (`DATABASE_URL`, `MYSQL_URL`, `AMQP_URL`,
//! `KAFKA_BROKERS`, `SQS_ENDPOINT`). When one is unset and a Docker engine is configured, the
//! service runs in a container started with testcontainers and reused by every test process
//! ([`services`]); otherwise the test fails and says how to provide it.

use std::sync::atomic::{AtomicU64, Ordering};

use sqlx::{Connection, Executor, PgConnection, PgPool};

pub mod backend;
pub mod consumer;
pub mod failing_publisher;
pub mod failing_store;
pub mod harness;
pub mod history;
pub mod kafka;
pub mod matrix;
pub mod mysql;
pub mod postgres_cluster;
pub mod rabbit_node;
pub mod rabbitmq;
pub mod relay;
pub mod relay_cli;
pub mod saga;
pub mod services;
pub mod soak;
pub mod sqlite;
pub mod sqs;
pub mod suites;
pub mod tls;

pub use backend::{CommitOrder, Effect, TestDatabase};
pub use services::{amqp_url, database_url, kafka_brokers, mysql_url, sqs_endpoint};

/// SQL text a test composed (names from [`unique_name`] or the suite's own
/// tables, never data from outside the test), handed to sqlx, which takes
/// only `&'static str` unless the text is asserted safe from injection.
pub fn composed(text: impl Into<String>) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(text.into())
}

/// A name unique to this process and call, for databases, topics, exchanges, queues.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let rand = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}_{}_{n}", &rand[..10])
}

/// A database created for one test and dropped when this value is dropped.
#[derive(Debug)]
pub struct TestDb {
    /// Pool connected to the fresh database.
    pub pool: PgPool,
    /// Its URL (for child processes such as `outbox-relay`).
    pub url: String,
    name: String,
    admin_url: String,
}

impl TestDb {
    /// Creates an empty database.
    pub async fn new() -> Self {
        let admin_url = database_url().await;
        let name = unique_name("eventbus_test");
        let mut admin = PgConnection::connect(&admin_url)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to PostgreSQL at DATABASE_URL: {e}"));
        admin
            .execute(composed(format!("CREATE DATABASE \"{name}\"")))
            .await
            .expect("create test database");
        let url = replace_db_name(&admin_url, &name);
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(20)
            .connect(&url)
            .await
            .expect("connect to test database");
        TestDb {
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
}

impl Drop for TestDb {
    fn drop(&mut self) {
        drop_databases(&self.admin_url, std::slice::from_ref(&self.name));
    }
}

/// Drops the databases `names` (ending their sessions), blocking until done.
/// Safe to call from `Drop` inside a test's runtime: the work runs on a thread
/// and runtime of its own, since the test's (maybe single-threaded) runtime is
/// blocked here.
pub fn drop_databases(admin_url: &str, names: &[String]) {
    let admin_url = admin_url.to_owned();
    let names = names.to_vec();
    let _ = std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async move {
            if let Ok(mut admin) = PgConnection::connect(&admin_url).await {
                for name in names {
                    let _ = admin
                        .execute(composed(format!(
                            "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                        )))
                        .await;
                }
            }
        });
    })
    .join();
}

/// `url` with its database path replaced by `name`.
pub fn replace_db_name(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let base = match base[scheme_end..].find('/') {
        Some(slash) => &base[..scheme_end + slash],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}
