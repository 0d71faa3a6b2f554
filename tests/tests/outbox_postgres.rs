//! The PostgreSQL outbox against a real database: the shared outbox suite
//! (`eventbus_tests::suites::outbox`, also run on MySQL and SQLite), and what
//! only PostgreSQL has — one `INSERT` statement per `publish_all`, the
//! partition computed by `hashtext`, the `NOTIFY` on commit, and
//! schema-qualified tables.

use eventbus_tests::composed;
use std::time::Duration;

use eventbus::{Error, Metadata, Migrator, Outbox};
use eventbus_tests::suites::outbox::{self, order, OrderPlaced};
use eventbus_tests::TestDb;
use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::PgPool;

// The shared scenarios this binary runs: its row in `tests/src/matrix.rs`.
eventbus_tests::matrix!(outbox_postgres);

async fn count(pool: &PgPool, table: &str) -> i64 {
    sqlx::query_scalar(composed(format!("SELECT count(*) FROM {table}")))
        .fetch_one(pool)
        .await
        .expect("count rows")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_migrations_are_idempotent() {
    let db = outbox::concurrent_migrations_are_idempotent::<TestDb>().await;
    assert_eq!(
        migrations(&db.pool).await,
        vec![
            ("inbox:eventbus_inbox".to_owned(), 1),
            ("inbox:eventbus_inbox".to_owned(), 2),
            ("inbox:eventbus_inbox".to_owned(), 3),
            ("outbox:eventbus_outbox".to_owned(), 1),
            ("outbox:eventbus_outbox".to_owned(), 2),
            ("outbox:eventbus_outbox".to_owned(), 3),
            ("sagas:eventbus_sagas".to_owned(), 1),
        ]
    );
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT tablename::text FROM pg_tables WHERE tablename LIKE 'eventbus%' ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .expect("tables");
    assert_eq!(
        tables,
        [
            "eventbus_inbox",
            "eventbus_inbox_attempts",
            "eventbus_inbox_parked",
            "eventbus_migrations",
            "eventbus_outbox",
            "eventbus_outbox_partitions",
            "eventbus_outbox_relays",
            "eventbus_outbox_scheduled",
            "eventbus_sagas"
        ]
    );
    let triggers: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'eventbus_outbox'::regclass \
         AND NOT tgisinternal",
    )
    .fetch_one(&db.pool)
    .await
    .expect("triggers");
    assert_eq!(triggers, 1);
}

/// 10,000 events, one `INSERT` statement, one transaction (the suite's
/// `publish_all_writes_ten_thousand_events_in_order_atomically` checks the
/// rows themselves).
#[tokio::test]
async fn publish_all_uses_one_statement_in_one_transaction() {
    let db = TestDb::migrated().await;
    // A statement-level trigger of our own counts the INSERT statements.
    sqlx::raw_sql(
        "CREATE TABLE statements (n int NOT NULL);
         INSERT INTO statements VALUES (0);
         CREATE FUNCTION count_statement() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN UPDATE statements SET n = n + 1; RETURN NULL; END $$;
         CREATE TRIGGER count_statement AFTER INSERT ON eventbus_outbox
             FOR EACH STATEMENT EXECUTE FUNCTION count_statement();",
    )
    .execute(&db.pool)
    .await
    .expect("statement counter");

    let events: Vec<OrderPlaced> = (0..10_000).map(order).collect();
    let meta = Metadata {
        correlation_id: Some("batch".into()),
        ..Metadata::default()
    };
    let mut tx = db.pool.begin().await.expect("begin");
    let ids = Outbox::new("urn:service:orders")
        .publish_all(&mut tx, &events, &meta)
        .await
        .expect("publish_all");
    tx.commit().await.expect("commit");
    assert_eq!(ids.len(), 10_000);

    let statements: i32 = sqlx::query_scalar("SELECT n FROM statements")
        .fetch_one(&db.pool)
        .await
        .expect("statement count");
    assert_eq!(statements, 1, "publish_all must use one INSERT statement");

    let txids: Vec<String> = sqlx::query_scalar("SELECT DISTINCT txid::text FROM eventbus_outbox")
        .fetch_all(&db.pool)
        .await
        .expect("read outbox");
    assert_eq!(txids.len(), 1, "all rows come from one transaction");
    assert_eq!(count(&db.pool, "eventbus_outbox").await, 10_000);
}

#[tokio::test]
async fn partition_is_computed_by_the_database_and_cannot_be_written() {
    let db = TestDb::migrated().await;
    let keys: Vec<String> = (0..200).map(|i| format!("key-{i}")).collect();
    sqlx::query(
        "INSERT INTO eventbus_outbox (destination, partition_key, event_type, payload) \
         SELECT 'd', k, 't', '{}' FROM UNNEST($1::text[]) AS k",
    )
    .bind(&keys)
    .execute(&db.pool)
    .await
    .expect("insert");
    sqlx::query(
        "INSERT INTO eventbus_outbox (destination, partition_key, event_type, payload) \
         VALUES ('d', 'key-0', 't', '{}')",
    )
    .execute(&db.pool)
    .await
    .expect("insert same key again");

    // Same key, same partition; the documented formula; several partitions in use.
    let mismatched: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM eventbus_outbox \
         WHERE partition <> (hashtext(partition_key) & 2147483647) % 64",
    )
    .fetch_one(&db.pool)
    .await
    .expect("check formula");
    assert_eq!(mismatched, 0);
    let per_key: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT partition) FROM eventbus_outbox WHERE partition_key = 'key-0'",
    )
    .fetch_one(&db.pool)
    .await
    .expect("same key");
    assert_eq!(per_key, 1);
    let used: i64 = sqlx::query_scalar("SELECT count(DISTINCT partition) FROM eventbus_outbox")
        .fetch_one(&db.pool)
        .await
        .expect("partitions used");
    assert!(
        used > 40,
        "200 keys should spread over most of 64 partitions, got {used}"
    );

    let err = sqlx::query(
        "INSERT INTO eventbus_outbox (destination, partition_key, partition, event_type, payload) \
         VALUES ('d', 'k', 3, 't', '{}')",
    )
    .execute(&db.pool)
    .await
    .expect_err("writers cannot choose the partition");
    assert!(err.to_string().contains("partition"), "{err}");

    let err = sqlx::query(
        "INSERT INTO eventbus_outbox (destination, partition_key, event_type, payload, state) \
         VALUES ('d', 'k', 't', '{}', 'done')",
    )
    .execute(&db.pool)
    .await
    .expect_err("unknown states are refused");
    assert!(err.to_string().contains("check constraint"), "{err}");
}

#[tokio::test]
async fn committed_insert_notifies_the_relay_channel() {
    let db = TestDb::migrated().await;
    let mut listener = PgListener::connect(&db.url).await.expect("listener");
    listener.listen("eventbus_outbox").await.expect("listen");

    // A rolled-back publish sends nothing.
    let mut tx = db.pool.begin().await.expect("begin");
    Outbox::new("urn:service:orders")
        .publish(&mut tx, &order(1))
        .await
        .expect("publish");
    tx.rollback().await.expect("rollback");
    let nothing = tokio::time::timeout(Duration::from_millis(300), listener.recv()).await;
    assert!(
        nothing.is_err(),
        "no notification for a rolled-back publish"
    );

    let mut tx = db.pool.begin().await.expect("begin");
    Outbox::new("urn:service:orders")
        .publish(&mut tx, &order(2))
        .await
        .expect("publish");
    tx.commit().await.expect("commit");
    let note = tokio::time::timeout(Duration::from_secs(5), listener.recv())
        .await
        .expect("a notification within 5 s")
        .expect("listener");
    assert_eq!(note.channel(), "eventbus_outbox");
}

/// Runs `eventbus::migrate` from `n` tasks at once, each with its own connection.
async fn migrate_concurrently(url: &str, n: usize, migrator: &Migrator) {
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(n));
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let url = url.to_owned();
            let barrier = barrier.clone();
            let migrator = migrator.clone();
            tokio::spawn(async move {
                let pool = PgPoolOptions::new()
                    .max_connections(1)
                    .connect(&url)
                    .await
                    .expect("connect");
                barrier.wait().await;
                let result = migrator.run(&pool).await;
                pool.close().await;
                result
            })
        })
        .collect();
    for (i, task) in futures::future::join_all(tasks)
        .await
        .into_iter()
        .enumerate()
    {
        task.expect("task")
            .unwrap_or_else(|e| panic!("migration {i} failed: {e}"));
    }
}

async fn migrations(pool: &PgPool) -> Vec<(String, i32)> {
    sqlx::query_as("SELECT component, version FROM eventbus_migrations ORDER BY component, version")
        .fetch_all(pool)
        .await
        .expect("read migrations")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn schema_qualified_tables_migrate_publish_and_notify() {
    let db = TestDb::new().await;
    sqlx::query("CREATE SCHEMA svc")
        .execute(&db.pool)
        .await
        .expect("create schema");
    let migrator = Migrator::new()
        .outbox_table("svc.outbox")
        .expect("valid name")
        .inbox_table("svc.inbox")
        .expect("valid name")
        .saga_table("svc.sagas")
        .expect("valid name")
        .partitions(8)
        .expect("valid partitions");
    migrate_concurrently(&db.url, 4, &migrator).await;
    migrator.run(&db.pool).await.expect("migrate once more");
    assert_eq!(
        migrations(&db.pool).await,
        vec![
            ("inbox:svc.inbox".to_owned(), 1),
            ("inbox:svc.inbox".to_owned(), 2),
            ("inbox:svc.inbox".to_owned(), 3),
            ("outbox:svc.outbox".to_owned(), 1),
            ("outbox:svc.outbox".to_owned(), 2),
            ("outbox:svc.outbox".to_owned(), 3),
            ("sagas:svc.sagas".to_owned(), 1),
        ]
    );
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT tablename::text FROM pg_tables WHERE schemaname = 'svc' ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .expect("tables");
    assert_eq!(
        tables,
        [
            "inbox",
            "inbox_attempts",
            "inbox_parked",
            "outbox",
            "outbox_partitions",
            "outbox_relays",
            "outbox_scheduled",
            "sagas"
        ]
    );
    assert_eq!(count(&db.pool, "svc.outbox_partitions").await, 8);
    // Nothing leaked into the default schema besides the migrations ledger.
    let public: Vec<String> = sqlx::query_scalar(
        "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .expect("public tables");
    assert_eq!(public, ["eventbus_migrations"]);

    let mut listener = PgListener::connect(&db.url).await.expect("listener");
    listener.listen("svc_outbox").await.expect("listen");
    let outbox = Outbox::new("urn:service:orders")
        .table("svc.outbox")
        .expect("valid name");
    let mut tx = db.pool.begin().await.expect("begin");
    outbox
        .publish_all(&mut tx, &[order(1), order(2)], &Metadata::default())
        .await
        .expect("publish into svc.outbox");
    tx.commit().await.expect("commit");
    let note = tokio::time::timeout(Duration::from_secs(5), listener.recv())
        .await
        .expect("a notification within 5 s")
        .expect("listener");
    assert_eq!(note.channel(), "svc_outbox");

    let partitions: Vec<i32> = sqlx::query_scalar("SELECT partition FROM svc.outbox ORDER BY id")
        .fetch_all(&db.pool)
        .await
        .expect("read");
    assert_eq!(partitions.len(), 2);
    assert!(
        partitions.iter().all(|p| (0..8).contains(p)),
        "{partitions:?}"
    );

    // The default-named outbox was not created, and says so.
    let mut tx = db.pool.begin().await.expect("begin");
    let err = Outbox::new("urn:service:orders")
        .publish(&mut tx, &order(3))
        .await
        .expect_err("eventbus_outbox does not exist");
    assert!(matches!(err, Error::NotMigrated { .. }), "{err:?}");
}
