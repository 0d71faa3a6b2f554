//! The SQLite outbox against real database files: the shared outbox suite
//! (`eventbus_tests::suites::outbox`, also run on PostgreSQL and MySQL), and
//! what only SQLite has — timestamps as text in one fixed form, its `CHECK`
//! constraints, WAL mode, attached databases as schemas, and the busy timeout.

use eventbus_tests::composed;
use std::time::Duration;

use eventbus::{Error, Metadata, Migrator, Outbox};
use eventbus_tests::sqlite::TestSqlite;
use eventbus_tests::suites::outbox::{self, claim_all, order};
use sqlx::types::chrono;
use sqlx::{Row, SqlitePool};
use uuid::Uuid;

// The shared scenarios this binary runs: its row in `tests/src/matrix.rs`.
eventbus_tests::matrix!(outbox_sqlite);

/// The fixed timestamp form eventbus writes on SQLite.
fn is_eventbus_timestamp(text: &str) -> bool {
    text.len() == 24
        && text.ends_with('Z')
        && chrono::DateTime::parse_from_rfc3339(text).is_ok()
        && text.as_bytes()[10] == b'T'
        && text.as_bytes()[19] == b'.'
}

async fn count(pool: &SqlitePool, table: &str) -> i64 {
    sqlx::query_scalar(composed(format!("SELECT count(*) FROM {table}")))
        .fetch_one(pool)
        .await
        .expect("count rows")
}

/// Each refusal is a `CHECK` constraint naming what it checks.
#[tokio::test]
async fn rows_the_relay_could_not_read_are_refused_at_insert() {
    let refusals =
        outbox::rows_the_relay_could_not_read_are_refused_at_insert::<TestSqlite>().await;
    for (column, message) in refusals {
        let check = match column {
            "payload" | "headers" => format!("json_valid({column})"),
            other => other.to_owned(),
        };
        assert!(
            message.contains("CHECK constraint failed") && message.contains(&check),
            "{column}: {message}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_migrations_are_idempotent() {
    let db = outbox::concurrent_migrations_are_idempotent::<TestSqlite>().await;
    let migrations: Vec<(String, i32)> =
        sqlx::query_as("SELECT component, version FROM eventbus_migrations ORDER BY component")
            .fetch_all(&db.pool)
            .await
            .expect("read migrations");
    assert_eq!(
        migrations,
        vec![
            ("inbox:eventbus_inbox".to_owned(), 1),
            ("inbox:eventbus_inbox".to_owned(), 2),
            ("inbox:eventbus_inbox".to_owned(), 3),
            ("outbox:eventbus_outbox".to_owned(), 1),
            ("outbox:eventbus_outbox".to_owned(), 2),
            ("sagas:eventbus_sagas".to_owned(), 1),
        ]
    );
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_schema WHERE type = 'table' AND name LIKE 'eventbus%' ORDER BY 1",
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
    let partitions: Vec<i32> =
        sqlx::query_scalar("SELECT \"partition\" FROM eventbus_outbox_partitions")
            .fetch_all(&db.pool)
            .await
            .expect("partitions");
    assert_eq!(partitions, [0], "one partition: one relay per database");
    let journal: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&db.pool)
        .await
        .expect("journal mode");
    assert_eq!(journal, "wal");
}

/// What the table stores as SQLite text: timestamps in one fixed RFC 3339
/// form (UTC, milliseconds), whether eventbus or the default writes them;
/// a default event id that is a lowercase, hyphenated UUIDv4; default headers
/// `{}`. A `created_at` in any form SQLite's date functions read (here with
/// an offset) is read back in UTC, and `json_object` headers are attributes.
#[tokio::test]
async fn timestamps_ids_and_headers_are_stored_as_documented() {
    let db = TestSqlite::migrated().await;
    let mut tx = db.pool.begin().await.expect("begin");
    Outbox::new("urn:service:orders")
        .publish(&mut tx, &order(1))
        .await
        .expect("publish");
    tx.commit().await.expect("commit");
    sqlx::query(
        r#"INSERT INTO eventbus_outbox (destination, partition_key, event_type, payload)
           VALUES ('orders', 'o-42', 'com.example.order.placed', '{"order_id": "o-42"}')"#,
    )
    .execute(&db.pool)
    .await
    .expect("the minimal plain-SQL insert succeeds");
    let rows = sqlx::query("SELECT event_id, created_at, headers FROM eventbus_outbox ORDER BY id")
        .fetch_all(&db.pool)
        .await
        .expect("two rows");
    for row in &rows {
        let created_at: String = row.get("created_at");
        assert!(is_eventbus_timestamp(&created_at), "{created_at}");
    }
    let plain = &rows[1];
    let event_id: String = plain.get("event_id");
    let parsed = Uuid::parse_str(&event_id).expect("the default event_id is a UUID");
    assert_eq!(parsed.get_version_num(), 4, "{event_id}");
    assert_eq!(
        event_id,
        parsed.hyphenated().to_string(),
        "lowercase, hyphenated"
    );
    assert_eq!(plain.get::<String, _>("headers"), "{}");
    let records = claim_all(&db, 2).await;
    assert_eq!(records[1].event_id, parsed);
    let age_ms = (chrono::Utc::now() - records[1].created_at).num_milliseconds();
    assert!(
        (0..60_000).contains(&age_ms),
        "created_at {} is now",
        records[1].created_at
    );
    sqlx::query("DELETE FROM eventbus_outbox")
        .execute(&db.pool)
        .await
        .expect("clear");

    sqlx::query(
        r#"INSERT INTO eventbus_outbox
             (destination, partition_key, event_type, headers, payload, created_at)
           VALUES ('orders', 'o-7', 'com.example.order.placed',
                   json_object('traceparent', '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01',
                               'correlationid', 'c-9'),
                   '{"order_id": "o-7"}', '2024-05-01T12:00:00.250+02:00')"#,
    )
    .execute(&db.pool)
    .await
    .expect("the full plain-SQL insert succeeds");
    let records = claim_all(&db, 1).await;
    assert_eq!(records.len(), 1);
    assert_eq!(
        records[0].created_at,
        chrono::DateTime::parse_from_rfc3339("2024-05-01T10:00:00.250Z")
            .expect("valid")
            .with_timezone(&chrono::Utc)
    );
    let envelope = records[0]
        .to_envelope("urn:relay:default")
        .expect("valid CloudEvent");
    assert_eq!(
        envelope.traceparent.as_deref(),
        Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    );
    assert_eq!(envelope.correlation_id.as_deref(), Some("c-9"));
}

#[tokio::test]
async fn attached_schema_tables_migrate_and_publish() {
    let db = TestSqlite::new().await;
    // An attached database is SQLite's schema: `svc.outbox` lives in svc.db.
    let attached = db.dir().join("svc.db");
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(eventbus::sqlite::connect_options(&db.path))
        .await
        .expect("open");
    sqlx::query("ATTACH DATABASE ?1 AS svc")
        .bind(attached.display().to_string())
        .execute(&pool)
        .await
        .expect("attach");
    let migrator = Migrator::new()
        .outbox_table("svc.outbox")
        .expect("valid name")
        .inbox_table("svc.inbox")
        .expect("valid name")
        .saga_table("svc.sagas")
        .expect("valid name");
    migrator.run(&pool).await.expect("migrate");
    migrator.run(&pool).await.expect("migrate again");
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM svc.sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite%' ORDER BY 1",
    )
    .fetch_all(&pool)
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

    let outbox = Outbox::new("urn:service:orders")
        .table("svc.outbox")
        .expect("valid name");
    let mut tx = pool.begin().await.expect("begin");
    outbox
        .publish_all(&mut tx, &[order(1), order(2)], &Metadata::default())
        .await
        .expect("publish into svc.outbox");
    tx.commit().await.expect("commit");
    assert_eq!(count(&pool, "svc.outbox").await, 2);
    // outbox 1 and 2 (the scheduled table), inbox 1, 2 (the attempts table)
    // and 3 (the parked table), sagas 1
    assert_eq!(count(&pool, "main.eventbus_migrations").await, 6);
}

#[tokio::test]
async fn a_writer_locked_out_past_its_busy_timeout_gets_a_transient_error() {
    let db = TestSqlite::migrated().await;
    // Another connection holds the write lock...
    let mut holder = db.pool.begin_with("BEGIN IMMEDIATE").await.expect("lock");
    sqlx::query("INSERT INTO eventbus_inbox (consumer, source, message_id) VALUES ('c', 's', 'm')")
        .execute(&mut *holder)
        .await
        .expect("write");
    // ...longer than this writer is willing to wait.
    let impatient = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(
            eventbus::sqlite::connect_options(&db.path).busy_timeout(Duration::from_millis(100)),
        )
        .await
        .expect("open");
    let mut tx = impatient.begin().await.expect("begin");
    let err = Outbox::new("urn:service:orders")
        .publish(&mut tx, &order(1))
        .await
        .expect_err("the write lock is taken");
    assert!(matches!(err, Error::Database(_)), "{err:?}");
    assert!(err.is_transient(), "busy is worth retrying: {err}");
    drop(tx);
    holder.rollback().await.expect("release the lock");

    let mut tx = impatient.begin().await.expect("begin");
    Outbox::new("urn:service:orders")
        .publish(&mut tx, &order(1))
        .await
        .expect("the retry succeeds");
    tx.commit().await.expect("commit");
    assert_eq!(count(&db.pool, "eventbus_outbox").await, 1);
}
