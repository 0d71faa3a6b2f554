//! The SQLite outbox against real database files: atomicity with business data,
//! batched publishing beyond one statement, the plain-SQL table contract,
//! limits, errors and concurrent migrations.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use eventbus::relay::{RelayStore, SqliteRelayStore};
use eventbus::{Error, Metadata, Migrator, Outbox, OutboxRecord, TableName};
use eventbus_tests::sqlite::TestSqlite;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sqlx::types::chrono;
use sqlx::{Row, SqlitePool};
use uuid::Uuid;

#[derive(
    eventbus::Event, Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, PartialEq,
)]
#[event(
    type = "com.example.order.placed",
    version = 2,
    destination = "orders",
    key = order_id
)]
struct OrderPlaced {
    order_id: String,
    amount_cents: i64,
    note: String,
}

fn order(i: usize) -> OrderPlaced {
    OrderPlaced {
        order_id: format!("o-{i:05}"),
        amount_cents: 100 + i as i64,
        note: String::new(),
    }
}

/// The fixed timestamp form eventbus writes on SQLite.
fn is_eventbus_timestamp(text: &str) -> bool {
    text.len() == 24
        && text.ends_with('Z')
        && chrono::DateTime::parse_from_rfc3339(text).is_ok()
        && text.as_bytes()[10] == b'T'
        && text.as_bytes()[19] == b'.'
}

async fn create_orders_table(pool: &SqlitePool) {
    sqlx::query("CREATE TABLE orders (id TEXT PRIMARY KEY, amount_cents INTEGER NOT NULL)")
        .execute(pool)
        .await
        .expect("create orders");
}

async fn count(pool: &SqlitePool, table: &str) -> i64 {
    sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
        .fetch_one(pool)
        .await
        .expect("count rows")
}

/// Every pending row as the relay reads it: through `SqliteRelayStore` holding
/// the partition lease, so the test exercises the store's decoding too.
async fn claim_all(pool: &SqlitePool) -> Vec<OutboxRecord> {
    let store = SqliteRelayStore::new(
        pool.clone(),
        TableName::parse("eventbus_outbox").expect("valid"),
    );
    let relay = Uuid::now_v7();
    let ttl = Duration::from_secs(30);
    assert_eq!(store.partitions().await.expect("partitions"), [0]);
    store
        .heartbeat(relay, "test", ttl)
        .await
        .expect("heartbeat");
    assert_eq!(
        store.acquire(relay, &[0], ttl).await.expect("acquire"),
        [0],
        "the only partition is free"
    );
    let rows = store.claim(relay, &[0], 100_000).await.expect("claim");
    store.deregister(relay).await.expect("deregister");
    rows
}

#[tokio::test]
async fn commit_writes_business_row_and_outbox_row_together() {
    let db = TestSqlite::migrated().await;
    create_orders_table(&db.pool).await;
    let outbox = Outbox::new().source("urn:service:orders");
    let event = OrderPlaced {
        order_id: "o-1".into(),
        amount_cents: 1250,
        note: "gift \"wrap\" ✓".into(),
    };
    let meta = Metadata {
        correlation_id: Some("corr-1".into()),
        causation_id: Some("cause-1".into()),
        traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
        tracestate: None,
        extensions: BTreeMap::from([("tenant".to_owned(), "acme".to_owned())]),
    };

    let mut tx = db.pool.begin().await.expect("begin");
    sqlx::query("INSERT INTO orders (id, amount_cents) VALUES (?1, ?2)")
        .bind(&event.order_id)
        .bind(event.amount_cents)
        .execute(&mut *tx)
        .await
        .expect("insert order");
    let event_id = outbox
        .publish_with(&mut tx, &event, &meta)
        .await
        .expect("publish");
    tx.commit().await.expect("commit");

    let amount: i64 = sqlx::query_scalar("SELECT amount_cents FROM orders WHERE id = 'o-1'")
        .fetch_one(&db.pool)
        .await
        .expect("the order exists");
    assert_eq!(amount, 1250);

    let row = sqlx::query(
        "SELECT event_id, source, destination, partition_key, \"partition\", event_type, \
         schema_version, subject, headers, payload, created_at, state, attempts, \
         next_attempt_at, last_error, published_at FROM eventbus_outbox",
    )
    .fetch_one(&db.pool)
    .await
    .expect("exactly one outbox row");
    assert_eq!(row.get::<String, _>("event_id"), event_id.to_string());
    assert_eq!(event_id.get_version_num(), 7, "event ids are UUIDv7");
    assert_eq!(
        row.get::<Option<String>, _>("source").as_deref(),
        Some("urn:service:orders")
    );
    assert_eq!(row.get::<String, _>("destination"), "orders");
    assert_eq!(row.get::<String, _>("partition_key"), "o-1");
    assert_eq!(row.get::<i32, _>("partition"), 0, "one partition on SQLite");
    assert_eq!(
        row.get::<String, _>("event_type"),
        "com.example.order.placed"
    );
    assert_eq!(row.get::<i32, _>("schema_version"), 2);
    assert_eq!(
        row.get::<Option<String>, _>("subject").as_deref(),
        Some("o-1")
    );
    let headers: Value =
        serde_json::from_str(&row.get::<String, _>("headers")).expect("headers are JSON");
    assert_eq!(
        headers,
        json!({
            "correlationid": "corr-1",
            "causationid": "cause-1",
            "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "tenant": "acme",
        })
    );
    // TEXT keeps the exact bytes the publisher serialized.
    assert_eq!(
        row.get::<String, _>("payload"),
        serde_json::to_string(&event).expect("to json")
    );
    let created_at: String = row.get("created_at");
    assert!(is_eventbus_timestamp(&created_at), "{created_at}");
    assert_eq!(row.get::<String, _>("state"), "pending");
    assert_eq!(row.get::<i32, _>("attempts"), 0);
    assert!(row.get::<Option<String>, _>("next_attempt_at").is_none());
    assert!(row.get::<Option<String>, _>("last_error").is_none());
    assert!(row.get::<Option<String>, _>("published_at").is_none());

    // The relay reads it back as the same CloudEvent.
    let records = claim_all(&db.pool).await;
    assert_eq!(records.len(), 1);
    let envelope = records[0].to_envelope("urn:relay").expect("a CloudEvent");
    assert_eq!(envelope.id, event_id.to_string());
    assert_eq!(envelope.source, "urn:service:orders");
    assert_eq!(envelope.correlation_id.as_deref(), Some("corr-1"));
    assert_eq!(envelope.schema_version(), Some(2));
    assert_eq!(
        envelope.data,
        serde_json::to_vec(&event).expect("to json"),
        "the payload bytes travel unchanged"
    );
}

#[tokio::test]
async fn rollback_writes_neither_business_row_nor_outbox_row() {
    let db = TestSqlite::migrated().await;
    create_orders_table(&db.pool).await;
    let outbox = Outbox::new();

    let mut tx = db.pool.begin().await.expect("begin");
    sqlx::query("INSERT INTO orders (id, amount_cents) VALUES ('o-1', 5)")
        .execute(&mut *tx)
        .await
        .expect("insert order");
    outbox.publish(&mut tx, &order(1)).await.expect("publish");
    // Inside the transaction both are visible...
    let inside: i64 = sqlx::query_scalar("SELECT count(*) FROM eventbus_outbox")
        .fetch_one(&mut *tx)
        .await
        .expect("count");
    assert_eq!(inside, 1);
    tx.rollback().await.expect("rollback");
    // ...and after rollback neither exists.
    assert_eq!(count(&db.pool, "orders").await, 0);
    assert_eq!(count(&db.pool, "eventbus_outbox").await, 0);

    // Dropping the transaction without commit behaves the same.
    {
        let mut tx = db.pool.begin().await.expect("begin");
        sqlx::query("INSERT INTO orders (id, amount_cents) VALUES ('o-2', 5)")
            .execute(&mut *tx)
            .await
            .expect("insert order");
        outbox.publish(&mut tx, &order(2)).await.expect("publish");
    }
    assert_eq!(count(&db.pool, "orders").await, 0);
    assert_eq!(count(&db.pool, "eventbus_outbox").await, 0);
}

#[tokio::test]
async fn publish_all_writes_ten_thousand_events_in_order_atomically() {
    let db = TestSqlite::migrated().await;
    let events: Vec<OrderPlaced> = (0..10_000).map(order).collect();
    let meta = Metadata {
        correlation_id: Some("batch".into()),
        ..Metadata::default()
    };

    // More rows than one statement can bind: a rollback still removes all of them.
    let mut tx = db.pool.begin().await.expect("begin");
    Outbox::new()
        .publish_all(&mut tx, &events, &meta)
        .await
        .expect("publish_all");
    tx.rollback().await.expect("rollback");
    assert_eq!(count(&db.pool, "eventbus_outbox").await, 0);

    let mut tx = db.pool.begin().await.expect("begin");
    let ids = Outbox::new()
        .publish_all(&mut tx, &events, &meta)
        .await
        .expect("publish_all");
    tx.commit().await.expect("commit");
    assert_eq!(ids.len(), 10_000);

    let rows = sqlx::query(
        "SELECT id, event_id, partition_key, payload, headers FROM eventbus_outbox ORDER BY id",
    )
    .fetch_all(&db.pool)
    .await
    .expect("read outbox");
    assert_eq!(rows.len(), 10_000);
    let first_id: i64 = rows[0].get("id");
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(
            row.get::<i64, _>("id"),
            first_id + i as i64,
            "row {i}: ids are consecutive"
        );
        assert_eq!(
            row.get::<String, _>("event_id"),
            ids[i].to_string(),
            "row {i}: event id"
        );
        assert_eq!(
            row.get::<String, _>("partition_key"),
            events[i].order_id,
            "row {i}: key"
        );
        assert_eq!(
            row.get::<String, _>("payload"),
            serde_json::to_string(&events[i]).expect("json"),
            "row {i}: payload"
        );
        assert_eq!(
            serde_json::from_str::<Value>(&row.get::<String, _>("headers")).expect("json"),
            json!({"correlationid": "batch"})
        );
    }
    let distinct: std::collections::HashSet<Uuid> = ids.iter().copied().collect();
    assert_eq!(distinct.len(), 10_000, "event ids are unique");
}

#[tokio::test]
async fn plain_sql_minimal_insert_is_a_valid_cloudevent() {
    let db = TestSqlite::migrated().await;
    sqlx::query(
        r#"INSERT INTO eventbus_outbox (destination, partition_key, event_type, payload)
           VALUES ('orders', 'o-42', 'com.example.order.placed',
                   '{"order_id": "o-42", "amount_cents": 990, "note": ""}')"#,
    )
    .execute(&db.pool)
    .await
    .expect("the minimal plain-SQL insert succeeds");

    let defaults = sqlx::query(
        "SELECT event_id, created_at, state, headers, schema_version FROM eventbus_outbox",
    )
    .fetch_one(&db.pool)
    .await
    .expect("one row");
    let event_id: String = defaults.get("event_id");
    let parsed = Uuid::parse_str(&event_id).expect("the default event_id is a UUID");
    assert_eq!(parsed.get_version_num(), 4, "{event_id}");
    assert_eq!(
        event_id,
        parsed.hyphenated().to_string(),
        "lowercase, hyphenated"
    );
    let created_at: String = defaults.get("created_at");
    assert!(is_eventbus_timestamp(&created_at), "{created_at}");
    assert_eq!(defaults.get::<String, _>("state"), "pending");
    assert_eq!(defaults.get::<String, _>("headers"), "{}");
    assert_eq!(defaults.get::<i32, _>("schema_version"), 1);

    let records = claim_all(&db.pool).await;
    assert_eq!(records.len(), 1);
    let record = &records[0];
    assert_eq!(record.event_id, parsed);
    assert_eq!(record.partition, 0);
    assert_eq!(record.source, None);
    assert_eq!(record.subject, None);
    assert_eq!(record.headers, json!({}));
    assert_eq!(record.attempts, 0);
    let age_ms = (chrono::Utc::now() - record.created_at).num_milliseconds();
    assert!(
        (0..60_000).contains(&age_ms),
        "created_at {} is now",
        record.created_at
    );

    let envelope = record
        .to_envelope("urn:relay:default")
        .expect("a valid CloudEvent");
    assert_eq!(envelope.source, "urn:relay:default");
    assert_eq!(envelope.id, event_id);
    assert_eq!(envelope.event_type, "com.example.order.placed");
    assert_eq!(envelope.schema_version(), Some(1));
    assert_eq!(envelope.partition_key.as_deref(), Some("o-42"));
    assert_eq!(envelope.time, Some(record.created_at));
    // SQLite stores the text as written: consumers get the writer's bytes.
    assert_eq!(
        envelope.data,
        br#"{"order_id": "o-42", "amount_cents": 990, "note": ""}"#.to_vec()
    );
    let data: OrderPlaced = serde_json::from_slice(&envelope.data).expect("payload decodes");
    assert_eq!(data.amount_cents, 990);
}

#[tokio::test]
async fn plain_sql_full_insert_carries_every_attribute() {
    let db = TestSqlite::migrated().await;
    let event_id = Uuid::now_v7();
    sqlx::query(
        r#"INSERT INTO eventbus_outbox
             (event_id, source, destination, partition_key, event_type, schema_version,
              subject, headers, payload, created_at)
           VALUES (?1, 'urn:service:legacy-php', 'orders', 'o-7', 'com.example.order.placed', 3,
                   'order/o-7',
                   json_object('traceparent', '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01',
                               'correlationid', 'c-9'),
                   '{"order_id": "o-7"}', '2024-05-01T12:00:00.250+02:00')"#,
    )
    .bind(event_id.to_string())
    .execute(&db.pool)
    .await
    .expect("the full plain-SQL insert succeeds");

    let records = claim_all(&db.pool).await;
    assert_eq!(records.len(), 1);
    // Any time SQLite understands is read back in UTC.
    assert_eq!(
        records[0].created_at,
        chrono::DateTime::parse_from_rfc3339("2024-05-01T10:00:00.250Z")
            .expect("valid")
            .with_timezone(&chrono::Utc)
    );
    let envelope = records[0]
        .to_envelope("urn:relay:default")
        .expect("valid CloudEvent");
    assert_eq!(envelope.id, event_id.to_string());
    assert_eq!(envelope.source, "urn:service:legacy-php");
    assert_eq!(envelope.subject.as_deref(), Some("order/o-7"));
    assert_eq!(envelope.schema_version(), Some(3));
    assert_eq!(
        envelope.traceparent.as_deref(),
        Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    );
    assert_eq!(envelope.correlation_id.as_deref(), Some("c-9"));
}

#[tokio::test]
async fn rows_the_relay_could_not_read_are_refused_at_insert() {
    let db = TestSqlite::migrated().await;
    let cases = [
        ("event_id", "'not-a-uuid'", "event_id"),
        ("payload", "'{not json'", "json_valid(payload)"),
        ("headers", "'[1, 2'", "json_valid(headers)"),
        ("\"partition\"", "3", "partition"),
        ("state", "'done'", "state"),
        ("created_at", "'yesterday-ish'", "created_at"),
    ];
    for (column, value, expected) in cases {
        let payload = if column == "payload" { "" } else { ", payload" };
        let payload_value = if column == "payload" { "" } else { ", '{}'" };
        let sql = format!(
            "INSERT INTO eventbus_outbox (destination, partition_key, event_type, {column}{payload}) \
             VALUES ('d', 'k', 't', {value}{payload_value})"
        );
        let err = sqlx::query(&sql)
            .execute(&db.pool)
            .await
            .expect_err("a malformed row must be refused");
        let message = err.to_string();
        assert!(
            message.contains("CHECK constraint failed") && message.contains(expected),
            "{column} = {value}: {message}"
        );
    }
    assert_eq!(count(&db.pool, "eventbus_outbox").await, 0);
}

#[tokio::test]
async fn oversized_event_is_rejected_and_nothing_is_written() {
    let db = TestSqlite::migrated().await;
    let outbox = Outbox::new().max_event_bytes(100);
    let big = OrderPlaced {
        order_id: "o-big".into(),
        amount_cents: 1,
        note: "x".repeat(200),
    };
    let mut tx = db.pool.begin().await.expect("begin");
    let err = outbox
        .publish(&mut tx, &big)
        .await
        .expect_err("over the limit");
    match &err {
        Error::EventTooLarge {
            event_type,
            size,
            limit,
        } => {
            assert_eq!(event_type, "com.example.order.placed");
            assert_eq!(*size, serde_json::to_string(&big).expect("json").len());
            assert_eq!(*limit, 100);
        }
        other => panic!("expected EventTooLarge, got {other:?}"),
    }
    // In a batch, one oversized event stops the whole batch.
    let err = outbox
        .publish_all(
            &mut tx,
            &[order(1), big.clone(), order(2)],
            &Metadata::default(),
        )
        .await
        .expect_err("batch with an oversized event");
    assert!(matches!(err, Error::EventTooLarge { .. }), "{err:?}");
    // A small event still fits, and the transaction is still usable.
    outbox
        .publish(&mut tx, &order(3))
        .await
        .expect("small event");
    tx.commit().await.expect("commit");

    let keys: Vec<String> = sqlx::query_scalar("SELECT partition_key FROM eventbus_outbox")
        .fetch_all(&db.pool)
        .await
        .expect("read");
    assert_eq!(keys, vec![order(3).order_id]);
}

#[tokio::test]
async fn using_tables_before_migration_says_to_migrate() {
    let db = TestSqlite::new().await;
    let mut tx = db.pool.begin().await.expect("begin");
    let err = Outbox::new()
        .publish(&mut tx, &order(1))
        .await
        .expect_err("no table yet");
    match &err {
        Error::NotMigrated { table } => assert_eq!(table, "eventbus_outbox"),
        other => panic!("expected NotMigrated, got {other:?}"),
    }
    let message = err.to_string();
    assert!(message.contains("outbox-relay migrate"), "{message}");
    drop(tx);

    let envelope = eventbus::Envelope::new("urn:a", "t", b"{}".to_vec());
    let err = eventbus::Inbox::new("billing")
        .begin(&db.pool, &envelope)
        .await
        .expect_err("no inbox table yet");
    assert!(
        matches!(&err, Error::NotMigrated { table } if table == "eventbus_inbox"),
        "{err:?}"
    );

    let store = SqliteRelayStore::new(
        db.pool.clone(),
        TableName::parse("eventbus_outbox").expect("valid"),
    );
    let err = store.partitions().await.expect_err("no lease table yet");
    assert!(matches!(err, Error::NotMigrated { .. }), "{err:?}");
}

async fn migrations(pool: &SqlitePool) -> Vec<(String, i32)> {
    sqlx::query_as("SELECT component, version FROM eventbus_migrations ORDER BY component")
        .fetch_all(pool)
        .await
        .expect("read migrations")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_migrations_are_idempotent() {
    let db = TestSqlite::new().await;
    // Eight "processes", each with its own pool on the same file.
    let n = 8;
    let barrier = Arc::new(tokio::sync::Barrier::new(n));
    let mut tasks = Vec::new();
    for _ in 0..n {
        let pool = db.connect().await;
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let result = eventbus::migrate(&pool).await;
            pool.close().await;
            result
        }));
    }
    for (i, task) in futures::future::join_all(tasks)
        .await
        .into_iter()
        .enumerate()
    {
        task.expect("task")
            .unwrap_or_else(|e| panic!("migration {i} failed: {e}"));
    }
    eventbus::migrate(&db.pool)
        .await
        .expect("migrate once more");

    assert_eq!(
        migrations(&db.pool).await,
        vec![
            ("inbox:eventbus_inbox".to_owned(), 1),
            ("outbox:eventbus_outbox".to_owned(), 1)
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
            "eventbus_migrations",
            "eventbus_outbox",
            "eventbus_outbox_partitions",
            "eventbus_outbox_relays"
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

    // The migrated tables work.
    let mut tx = db.pool.begin().await.expect("begin");
    Outbox::new()
        .publish(&mut tx, &order(1))
        .await
        .expect("publish");
    tx.commit().await.expect("commit");
    assert_eq!(count(&db.pool, "eventbus_outbox").await, 1);
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
        ["inbox", "outbox", "outbox_partitions", "outbox_relays"]
    );

    let outbox = Outbox::new().table("svc.outbox").expect("valid name");
    let mut tx = pool.begin().await.expect("begin");
    outbox
        .publish_all(&mut tx, &[order(1), order(2)], &Metadata::default())
        .await
        .expect("publish into svc.outbox");
    tx.commit().await.expect("commit");
    assert_eq!(count(&pool, "svc.outbox").await, 2);
    assert_eq!(count(&pool, "main.eventbus_migrations").await, 2);
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
    let err = Outbox::new()
        .publish(&mut tx, &order(1))
        .await
        .expect_err("the write lock is taken");
    assert!(matches!(err, Error::Database(_)), "{err:?}");
    assert!(err.is_transient(), "busy is worth retrying: {err}");
    drop(tx);
    holder.rollback().await.expect("release the lock");

    let mut tx = impatient.begin().await.expect("begin");
    Outbox::new()
        .publish(&mut tx, &order(1))
        .await
        .expect("the retry succeeds");
    tx.commit().await.expect("commit");
    assert_eq!(count(&db.pool, "eventbus_outbox").await, 1);
}
