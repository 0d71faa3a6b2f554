//! [`TestDatabase`]: the databases the shared suites run on — PostgreSQL
//! ([`TestDb`]), SQLite ([`TestSqlite`]) and MySQL/MariaDB ([`TestMySql`]) —
//! and what a scenario needs of each, so a scenario is written once and each
//! backend's test file is a list of one-line calls.
//!
//! The trait speaks in operations (`scalar`, `effects`, `relay_store`, …)
//! rather than SQL where the dialects differ: placeholders (`$1`, `?1`, `?`),
//! DDL, JSON operators and reserved words (`key` in MySQL).

use crate::composed;
use std::future::Future;
use std::sync::Arc;

use eventbus::inbox::InboxDatabase;
use eventbus::migrate::MigrateDatabase;
use eventbus::outbox::{OutboxDatabase, ScheduledDatabase};
use eventbus::relay::{MySqlRelayStore, OutboxAdmin, PgRelayStore, RelayStore, SqliteRelayStore};
use eventbus::saga::SagaDatabase;
use eventbus::TableName;
use futures::future::BoxFuture;
use sqlx::{Executor, MySql, MySqlPool, PgPool, Postgres, Sqlite, SqlitePool};

use crate::mysql::TestMySql;
use crate::sqlite::TestSqlite;
use crate::TestDb;

/// How a backend keeps per-key order when transactions commit out of id order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitOrder {
    /// The relay holds back rows newer than the oldest open transaction
    /// (PostgreSQL's `pg_snapshot_xmin`), and says so in
    /// `held_back_seconds`.
    HoldBack,
    /// A writer waits for the older writer of the same partition (MySQL's
    /// write locks, SQLite's single writer): nothing is ever held back.
    WritersWait,
}

/// One side effect a test handler wrote: a row of the `effects` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Effect {
    /// The consumer that wrote it.
    pub member: String,
    /// The step's key.
    pub key: String,
    /// The step's sequence number.
    pub seq: i64,
    /// The CloudEvents id of the handled event.
    pub event_id: String,
}

/// A database created for one test, on one of the backends.
pub trait TestDatabase: Sized + Send + Sync + 'static {
    /// The sqlx database type.
    type DB: OutboxDatabase + ScheduledDatabase + InboxDatabase + MigrateDatabase + SagaDatabase;

    /// The backend's name, for messages.
    const NAME: &'static str;

    /// Partitions of a default outbox.
    const PARTITIONS: u32;

    /// How commit order is kept.
    const COMMIT_ORDER: CommitOrder;

    /// Whether payloads come back as the exact bytes written (`false` on
    /// PostgreSQL, whose `jsonb` normalises them).
    const KEEPS_PAYLOAD_BYTES: bool = true;

    /// Creates an empty database.
    fn create() -> impl Future<Output = Self> + Send;

    /// Creates a database with the eventbus tables migrated.
    fn migrated() -> impl Future<Output = Self> + Send {
        async {
            let db = Self::create().await;
            eventbus::migrate(db.pool()).await.expect("migrate");
            db
        }
    }

    /// The test's pool.
    fn pool(&self) -> &sqlx::Pool<Self::DB>;

    /// The database's URL, for child processes.
    fn url(&self) -> &str;

    /// Another pool on the same database, as another process would open it.
    fn connect(&self) -> impl Future<Output = sqlx::Pool<Self::DB>> + Send;

    /// The relay store of the default outbox in `pool`.
    fn relay_store(pool: &sqlx::Pool<Self::DB>) -> Arc<dyn RelayStore>;

    /// The operator view of the default outbox, where the backend has one.
    fn admin(pool: &sqlx::Pool<Self::DB>) -> Option<OutboxAdmin>;

    /// The SQL of bind parameter `n` (1-based): `$n`, `?n` or `?`.
    fn param(n: usize) -> String;

    /// Runs `sql` (no parameters); returns the rows affected.
    fn execute(&self, sql: &str) -> impl Future<Output = sqlx::Result<u64>> + Send;

    /// The integer the single-value query `sql` returns; panics on error.
    fn scalar(&self, sql: &str) -> impl Future<Output = i64> + Send;

    /// Runs `sql` (no parameters) on `conn`, e.g. inside a handler's
    /// transaction; returns the rows affected.
    fn execute_in<'c>(
        conn: &'c mut <Self::DB as sqlx::Database>::Connection,
        sql: &'c str,
    ) -> BoxFuture<'c, sqlx::Result<u64>>;

    /// The integer the single-value query `sql` returns on `conn`, e.g.
    /// inside an open transaction; panics on error.
    fn scalar_in<'c>(
        conn: &'c mut <Self::DB as sqlx::Database>::Connection,
        sql: &'c str,
    ) -> BoxFuture<'c, i64>;

    /// `name` quoted as a column name, for reserved words such as
    /// `partition`: `"name"`, or `` `name` `` on MySQL.
    fn quoted(name: &str) -> String {
        format!("\"{name}\"")
    }

    /// A point in time long past (2001-01-01, UTC) as a literal of the
    /// backend's timestamp columns.
    const LONG_AGO: &'static str;

    /// A point in time in the year 10000 as a literal of the backend's
    /// timestamp columns: past what RFC 3339 can write.
    const YEAR_10000: &'static str;

    /// Whether the timestamp columns take [`Self::YEAR_10000`]: PostgreSQL's
    /// `timestamptz` goes on to the year 294276, MySQL's `DATETIME` and
    /// SQLite's date functions stop at 9999.
    const HOLDS_YEAR_10000: bool = false;

    /// SQL for the JSON text `{"note":"<0x80>"}`, whose string holds a byte
    /// that is not UTF-8, sent as a writer that never checks its encoding
    /// would send it.
    const NON_UTF8_JSON: &'static str;

    /// Whether text columns keep bytes that are not UTF-8 (SQLite checks
    /// nothing; PostgreSQL and MySQL refuse them).
    const HOLDS_NON_UTF8: bool = false;

    /// The first column of every row of `sql`, as text (`NULL` as `None`).
    fn texts(&self, sql: &str) -> impl Future<Output = Vec<Option<String>>> + Send;

    /// SQL reading JSON column `column` as text.
    fn json_text(column: &str) -> String {
        column.to_owned()
    }

    /// The outbox partition of `key`.
    fn partition_of(&self, key: &str) -> impl Future<Output = i32> + Send;

    /// Creates the `effects` table test handlers write to.
    fn create_effects(&self) -> impl Future<Output = ()> + Send;

    /// Inserts `rows` (key, seq, event id) into `effects` for `member`, in
    /// order, on `conn` (a handler's transaction).
    fn insert_effects<'c>(
        conn: &'c mut <Self::DB as sqlx::Database>::Connection,
        member: &'c str,
        rows: &'c [(String, i64, String)],
    ) -> BoxFuture<'c, sqlx::Result<()>>;

    /// Every effect, in the order written.
    fn effects(&self) -> impl Future<Output = Vec<Effect>> + Send;
}

fn panic_on(sql: &str, e: impl std::fmt::Display) -> ! {
    panic!("{sql}: {e}")
}

/// The items every backend's impl writes alike, for a test database with
/// `pool` and `url` fields: those two, and running SQL without parameters on
/// the pool or on a connection.
macro_rules! plain_sql_on_own_pool {
    () => {
        fn pool(&self) -> &sqlx::Pool<Self::DB> {
            &self.pool
        }

        fn url(&self) -> &str {
            &self.url
        }

        async fn execute(&self, sql: &str) -> sqlx::Result<u64> {
            Ok(self.pool.execute(composed(sql)).await?.rows_affected())
        }

        fn execute_in<'c>(
            conn: &'c mut <Self::DB as sqlx::Database>::Connection,
            sql: &'c str,
        ) -> BoxFuture<'c, sqlx::Result<u64>> {
            Box::pin(async move { Ok(conn.execute(composed(sql)).await?.rows_affected()) })
        }

        fn scalar_in<'c>(
            conn: &'c mut <Self::DB as sqlx::Database>::Connection,
            sql: &'c str,
        ) -> BoxFuture<'c, i64> {
            Box::pin(async move {
                sqlx::query_scalar(composed(sql))
                    .fetch_one(conn)
                    .await
                    .unwrap_or_else(|e| panic_on(sql, e))
            })
        }
    };
}

impl TestDatabase for TestDb {
    type DB = Postgres;
    const NAME: &'static str = "PostgreSQL";
    const PARTITIONS: u32 = 64;
    const COMMIT_ORDER: CommitOrder = CommitOrder::HoldBack;
    const KEEPS_PAYLOAD_BYTES: bool = false;

    async fn create() -> Self {
        TestDb::new().await
    }

    plain_sql_on_own_pool!();

    async fn connect(&self) -> PgPool {
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(8)
            .connect(&self.url)
            .await
            .expect("connect to the test database")
    }

    fn relay_store(pool: &PgPool) -> Arc<dyn RelayStore> {
        Arc::new(PgRelayStore::new(pool.clone(), TableName::default_outbox()))
    }

    fn admin(pool: &PgPool) -> Option<OutboxAdmin> {
        Some(OutboxAdmin::new(pool.clone(), TableName::default_outbox()))
    }

    fn param(n: usize) -> String {
        format!("${n}")
    }

    async fn scalar(&self, sql: &str) -> i64 {
        use sqlx::Row;
        let row = sqlx::query(composed(sql))
            .fetch_one(&self.pool)
            .await
            .unwrap_or_else(|e| panic_on(sql, e));
        // PostgreSQL keeps `int4` and `int8` apart: take either.
        row.try_get::<i64, _>(0)
            .or_else(|_| row.try_get::<i32, _>(0).map(i64::from))
            .unwrap_or_else(|e| panic_on(sql, e))
    }

    async fn texts(&self, sql: &str) -> Vec<Option<String>> {
        sqlx::query_scalar(composed(sql))
            .fetch_all(&self.pool)
            .await
            .unwrap_or_else(|e| panic_on(sql, e))
    }

    fn json_text(column: &str) -> String {
        format!("{column}::text")
    }

    const LONG_AGO: &'static str = "'2001-01-01 00:00:00+00'";
    const YEAR_10000: &'static str = "'10000-01-01 00:00:00+00'";
    const HOLDS_YEAR_10000: bool = true;
    const NON_UTF8_JSON: &'static str = r#"E'{"note":"\x80"}'"#;

    async fn partition_of(&self, key: &str) -> i32 {
        sqlx::query_scalar("SELECT (hashtext($1) & 2147483647) % 64")
            .bind(key)
            .fetch_one(&self.pool)
            .await
            .expect("partition of key")
    }

    async fn create_effects(&self) {
        crate::consumer::create_effects(&self.pool).await;
    }

    fn insert_effects<'c>(
        conn: &'c mut sqlx::PgConnection,
        member: &'c str,
        rows: &'c [(String, i64, String)],
    ) -> BoxFuture<'c, sqlx::Result<()>> {
        Box::pin(async move {
            let keys: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
            let seqs: Vec<i64> = rows.iter().map(|r| r.1).collect();
            let ids: Vec<&str> = rows.iter().map(|r| r.2.as_str()).collect();
            sqlx::query(
                "INSERT INTO effects (member, key, seq, event_id) \
                 SELECT $1, k, s, e FROM UNNEST($2::text[], $3::bigint[], $4::text[]) \
                 WITH ORDINALITY AS u(k, s, e, n) ORDER BY n",
            )
            .bind(member)
            .bind(&keys)
            .bind(&seqs)
            .bind(&ids)
            .execute(conn)
            .await?;
            Ok(())
        })
    }

    async fn effects(&self) -> Vec<Effect> {
        let rows: Vec<(String, String, i64, String)> =
            sqlx::query_as("SELECT member, key, seq, event_id FROM effects ORDER BY id")
                .fetch_all(&self.pool)
                .await
                .expect("read effects");
        rows.into_iter().map(effect).collect()
    }
}

fn effect((member, key, seq, event_id): (String, String, i64, String)) -> Effect {
    Effect {
        member,
        key,
        seq,
        event_id,
    }
}

impl TestDatabase for TestSqlite {
    type DB = Sqlite;
    const NAME: &'static str = "SQLite";
    const PARTITIONS: u32 = 1;
    const COMMIT_ORDER: CommitOrder = CommitOrder::WritersWait;

    async fn create() -> Self {
        TestSqlite::new().await
    }

    plain_sql_on_own_pool!();

    async fn connect(&self) -> SqlitePool {
        TestSqlite::connect(self).await
    }

    fn relay_store(pool: &SqlitePool) -> Arc<dyn RelayStore> {
        Arc::new(SqliteRelayStore::new(
            pool.clone(),
            TableName::default_outbox(),
        ))
    }

    fn admin(pool: &SqlitePool) -> Option<OutboxAdmin> {
        Some(OutboxAdmin::sqlite(
            pool.clone(),
            TableName::default_outbox(),
        ))
    }

    fn param(n: usize) -> String {
        format!("?{n}")
    }

    async fn scalar(&self, sql: &str) -> i64 {
        sqlx::query_scalar(composed(sql))
            .fetch_one(&self.pool)
            .await
            .unwrap_or_else(|e| panic_on(sql, e))
    }

    async fn texts(&self, sql: &str) -> Vec<Option<String>> {
        sqlx::query_scalar(composed(sql))
            .fetch_all(&self.pool)
            .await
            .unwrap_or_else(|e| panic_on(sql, e))
    }

    async fn partition_of(&self, _key: &str) -> i32 {
        0
    }

    const LONG_AGO: &'static str = "'2001-01-01T00:00:00.000Z'";
    const YEAR_10000: &'static str = "'10000-01-01T00:00:00.000Z'";
    const NON_UTF8_JSON: &'static str = "CAST(x'7b226e6f7465223a2280227d' AS TEXT)";
    const HOLDS_NON_UTF8: bool = true;

    async fn create_effects(&self) {
        self.pool
            .execute(
                "CREATE TABLE effects (id INTEGER PRIMARY KEY AUTOINCREMENT, \
                 member TEXT NOT NULL DEFAULT '', key TEXT NOT NULL, seq INTEGER NOT NULL, \
                 event_id TEXT NOT NULL)",
            )
            .await
            .expect("create effects");
    }

    fn insert_effects<'c>(
        conn: &'c mut sqlx::SqliteConnection,
        member: &'c str,
        rows: &'c [(String, i64, String)],
    ) -> BoxFuture<'c, sqlx::Result<()>> {
        Box::pin(async move {
            for (key, seq, event_id) in rows {
                sqlx::query(
                    "INSERT INTO effects (member, key, seq, event_id) VALUES (?1, ?2, ?3, ?4)",
                )
                .bind(member)
                .bind(key)
                .bind(seq)
                .bind(event_id)
                .execute(&mut *conn)
                .await?;
            }
            Ok(())
        })
    }

    async fn effects(&self) -> Vec<Effect> {
        let rows: Vec<(String, String, i64, String)> =
            sqlx::query_as("SELECT member, key, seq, event_id FROM effects ORDER BY id")
                .fetch_all(&self.pool)
                .await
                .expect("read effects");
        rows.into_iter().map(effect).collect()
    }
}

impl TestDatabase for TestMySql {
    type DB = MySql;
    const NAME: &'static str = "MySQL";
    const PARTITIONS: u32 = 64;
    const COMMIT_ORDER: CommitOrder = CommitOrder::WritersWait;

    async fn create() -> Self {
        TestMySql::new().await
    }

    plain_sql_on_own_pool!();

    async fn connect(&self) -> MySqlPool {
        TestMySql::connect(self).await
    }

    fn relay_store(pool: &MySqlPool) -> Arc<dyn RelayStore> {
        Arc::new(MySqlRelayStore::new(
            pool.clone(),
            TableName::default_outbox(),
        ))
    }

    fn admin(pool: &MySqlPool) -> Option<OutboxAdmin> {
        Some(OutboxAdmin::mysql(
            pool.clone(),
            TableName::default_outbox(),
        ))
    }

    fn param(_n: usize) -> String {
        "?".to_owned()
    }

    fn quoted(name: &str) -> String {
        format!("`{name}`")
    }

    async fn scalar(&self, sql: &str) -> i64 {
        sqlx::query_scalar(composed(sql))
            .fetch_one(&self.pool)
            .await
            .unwrap_or_else(|e| panic_on(sql, e))
    }

    async fn texts(&self, sql: &str) -> Vec<Option<String>> {
        // Bytes: sqlx will not decode binary-collated text as `String`.
        let rows: Vec<Option<Vec<u8>>> = sqlx::query_scalar(composed(sql))
            .fetch_all(&self.pool)
            .await
            .unwrap_or_else(|e| panic_on(sql, e));
        rows.into_iter()
            .map(|r| r.map(|b| String::from_utf8(b).expect("UTF-8 text")))
            .collect()
    }

    async fn partition_of(&self, key: &str) -> i32 {
        eventbus::mysql::partition_of(key, Self::PARTITIONS)
    }

    const LONG_AGO: &'static str = "'2001-01-01 00:00:00'";
    const YEAR_10000: &'static str = "'10000-01-01 00:00:00'";
    const NON_UTF8_JSON: &'static str = "x'7b226e6f7465223a2280227d'";

    async fn create_effects(&self) {
        // `key` is a reserved word in MySQL: quoted here and in every
        // statement of this backend.
        self.pool
            .execute(
                "CREATE TABLE effects (id BIGINT AUTO_INCREMENT PRIMARY KEY, \
                 member VARCHAR(255) NOT NULL DEFAULT '', `key` VARCHAR(255) NOT NULL, \
                 seq BIGINT NOT NULL, event_id VARCHAR(255) NOT NULL)",
            )
            .await
            .expect("create effects");
    }

    fn insert_effects<'c>(
        conn: &'c mut sqlx::MySqlConnection,
        member: &'c str,
        rows: &'c [(String, i64, String)],
    ) -> BoxFuture<'c, sqlx::Result<()>> {
        Box::pin(async move {
            if rows.is_empty() {
                return Ok(());
            }
            let values = vec!["(?, ?, ?, ?)"; rows.len()].join(", ");
            let sql = format!("INSERT INTO effects (member, `key`, seq, event_id) VALUES {values}");
            let mut query = sqlx::query(composed(&sql));
            for (key, seq, event_id) in rows {
                query = query.bind(member).bind(key).bind(seq).bind(event_id);
            }
            query.persistent(rows.len() == 1).execute(conn).await?;
            Ok(())
        })
    }

    async fn effects(&self) -> Vec<Effect> {
        let rows: Vec<(String, String, i64, String)> =
            sqlx::query_as("SELECT member, `key`, seq, event_id FROM effects ORDER BY id")
                .fetch_all(&self.pool)
                .await
                .expect("read effects");
        rows.into_iter().map(effect).collect()
    }
}
