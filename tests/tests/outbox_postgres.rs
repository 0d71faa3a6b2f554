//! The PostgreSQL outbox against a real database: atomicity with business data,
//! batched publishing, the plain-SQL table contract, limits, errors and migrations.

use std::collections::BTreeMap;
use std::time::Duration;

use eventbus::{Error, Metadata, Migrator, Outbox, OutboxRecord};
use eventbus_tests::TestDb;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sqlx::postgres::{PgListener, PgPoolOptions, PgRow};
use sqlx::{PgPool, Row};
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

async fn create_orders_table(pool: &PgPool) {
    sqlx::query("CREATE TABLE orders (id text PRIMARY KEY, amount_cents bigint NOT NULL)")
        .execute(pool)
        .await
        .expect("create orders");
}

async fn count(pool: &PgPool, table: &str) -> i64 {
    sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
        .fetch_one(pool)
        .await
        .expect("count rows")
}

/// The columns `OutboxRecord` has, with the payload as text.
const RECORD_COLUMNS: &str = "id, event_id, source, destination, partition_key, partition, \
     event_type, schema_version, subject, headers, payload::text AS payload, created_at, attempts";

fn record_from_row(row: &PgRow) -> OutboxRecord {
    OutboxRecord {
        id: row.get("id"),
        event_id: row.get("event_id"),
        source: row.get("source"),
        destination: row.get("destination"),
        partition_key: row.get("partition_key"),
        partition: row.get("partition"),
        event_type: row.get("event_type"),
        schema_version: row.get("schema_version"),
        subject: row.get("subject"),
        headers: row.get("headers"),
        payload: row.get("payload"),
        created_at: row.get("created_at"),
        attempts: row.get("attempts"),
    }
}

#[tokio::test]
async fn commit_writes_business_row_and_outbox_row_together() {
    let db = TestDb::migrated().await;
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
    sqlx::query("INSERT INTO orders (id, amount_cents) VALUES ($1, $2)")
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
        "SELECT event_id, source, destination, partition_key, partition, event_type, \
         schema_version, subject, headers, payload, state, attempts, next_attempt_at, \
         last_error, published_at FROM eventbus_outbox",
    )
    .fetch_one(&db.pool)
    .await
    .expect("exactly one outbox row");
    assert_eq!(row.get::<Uuid, _>("event_id"), event_id);
    assert_eq!(event_id.get_version_num(), 7, "event ids are UUIDv7");
    assert_eq!(
        row.get::<Option<String>, _>("source").as_deref(),
        Some("urn:service:orders")
    );
    assert_eq!(row.get::<String, _>("destination"), "orders");
    assert_eq!(row.get::<String, _>("partition_key"), "o-1");
    assert!((0..64).contains(&row.get::<i32, _>("partition")));
    assert_eq!(
        row.get::<String, _>("event_type"),
        "com.example.order.placed"
    );
    assert_eq!(row.get::<i32, _>("schema_version"), 2);
    assert_eq!(
        row.get::<Option<String>, _>("subject").as_deref(),
        Some("o-1")
    );
    assert_eq!(
        row.get::<Value, _>("headers"),
        json!({
            "correlationid": "corr-1",
            "causationid": "cause-1",
            "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "tenant": "acme",
        })
    );
    let payload: Value = row.get("payload");
    assert_eq!(payload, serde_json::to_value(&event).expect("to json"));
    let back: OrderPlaced = serde_json::from_value(payload).expect("payload decodes");
    assert_eq!(back, event);
    assert_eq!(row.get::<String, _>("state"), "pending");
    assert_eq!(row.get::<i32, _>("attempts"), 0);
    assert!(row
        .get::<Option<sqlx::types::chrono::DateTime<sqlx::types::chrono::Utc>>, _>(
            "next_attempt_at"
        )
        .is_none());
    assert!(row.get::<Option<String>, _>("last_error").is_none());
}

#[tokio::test]
async fn rollback_writes_neither_business_row_nor_outbox_row() {
    let db = TestDb::migrated().await;
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
async fn publish_all_writes_ten_thousand_events_in_order_with_one_statement() {
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
    let ids = Outbox::new()
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

    let rows = sqlx::query(
        "SELECT event_id, partition_key, payload, headers, txid::text AS txid \
         FROM eventbus_outbox ORDER BY id",
    )
    .fetch_all(&db.pool)
    .await
    .expect("read outbox");
    assert_eq!(rows.len(), 10_000);
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row.get::<Uuid, _>("event_id"), ids[i], "row {i}: event id");
        assert_eq!(
            row.get::<String, _>("partition_key"),
            events[i].order_id,
            "row {i}: key"
        );
        assert_eq!(
            row.get::<Value, _>("payload"),
            serde_json::to_value(&events[i]).expect("json"),
            "row {i}: payload"
        );
        assert_eq!(
            row.get::<Value, _>("headers"),
            json!({"correlationid": "batch"})
        );
    }
    let txids: std::collections::HashSet<String> =
        rows.iter().map(|r| r.get::<String, _>("txid")).collect();
    assert_eq!(txids.len(), 1, "all rows come from one transaction");
    let distinct: std::collections::HashSet<Uuid> = ids.iter().copied().collect();
    assert_eq!(distinct.len(), 10_000, "event ids are unique");
}

#[tokio::test]
async fn plain_sql_insert_is_a_valid_cloudevent() {
    let db = TestDb::migrated().await;
    sqlx::query(
        r#"INSERT INTO eventbus_outbox (destination, partition_key, event_type, payload)
           VALUES ('orders', 'o-42', 'com.example.order.placed',
                   '{"order_id": "o-42", "amount_cents": 990, "note": ""}')"#,
    )
    .execute(&db.pool)
    .await
    .expect("the minimal plain-SQL insert succeeds");

    let row = sqlx::query(&format!(
        "SELECT {RECORD_COLUMNS}, state FROM eventbus_outbox"
    ))
    .fetch_one(&db.pool)
    .await
    .expect("one row");
    let record = record_from_row(&row);
    assert!(
        (0..64).contains(&record.partition),
        "partition {} outside 0..64",
        record.partition
    );
    assert_eq!(record.source, None);
    assert_eq!(record.schema_version, 1);
    assert_eq!(record.subject, None);
    assert_eq!(record.headers, json!({}));
    assert_eq!(record.attempts, 0);
    assert_eq!(row.get::<String, _>("state"), "pending");

    let envelope = record
        .to_envelope("urn:relay:default")
        .expect("a valid CloudEvent");
    assert_eq!(envelope.source, "urn:relay:default");
    let id = Uuid::parse_str(&envelope.id).expect("the id is a UUID");
    assert_eq!(id, record.event_id);
    assert_eq!(envelope.event_type, "com.example.order.placed");
    let dataschema = envelope.dataschema.as_deref().expect("dataschema");
    assert!(dataschema.ends_with(":v1"), "dataschema {dataschema}");
    assert_eq!(envelope.schema_version(), Some(1));
    assert_eq!(envelope.partition_key.as_deref(), Some("o-42"));
    assert_eq!(
        envelope.datacontenttype.as_deref(),
        Some("application/json")
    );
    assert_eq!(envelope.time, Some(record.created_at));
    let data: OrderPlaced = serde_json::from_slice(&envelope.data).expect("payload decodes");
    assert_eq!(data.order_id, "o-42");
    assert_eq!(data.amount_cents, 990);

    // The structured JSON form round-trips: stock CloudEvents readers see the same.
    let structured: Value = serde_json::from_slice(&envelope.to_json()).expect("json");
    assert_eq!(structured["specversion"], "1.0");
    assert_eq!(structured["data"]["amount_cents"], 990);
    // Structured mode re-encodes the payload (jsonb's `::text` has spaces), so
    // compare it as JSON and everything else exactly.
    let mut back = eventbus::Envelope::from_json(&envelope.to_json()).expect("round trip");
    let as_json = |bytes: &[u8]| serde_json::from_slice::<Value>(bytes).expect("json payload");
    assert_eq!(as_json(&back.data), as_json(&envelope.data));
    back.data = envelope.data.clone();
    assert_eq!(back, envelope);
}

#[tokio::test]
async fn plain_sql_full_insert_carries_every_attribute() {
    let db = TestDb::migrated().await;
    let event_id = Uuid::now_v7();
    sqlx::query(
        r#"INSERT INTO eventbus_outbox
             (event_id, source, destination, partition_key, event_type, schema_version,
              subject, headers, payload)
           VALUES ($1, 'urn:service:legacy-php', 'orders', 'o-7', 'com.example.order.placed', 3,
                   'order/o-7',
                   '{"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                     "correlationid": "c-9"}',
                   '{"order_id": "o-7"}')"#,
    )
    .bind(event_id)
    .execute(&db.pool)
    .await
    .expect("the full plain-SQL insert succeeds");

    let row = sqlx::query(&format!("SELECT {RECORD_COLUMNS} FROM eventbus_outbox"))
        .fetch_one(&db.pool)
        .await
        .expect("one row");
    let envelope = record_from_row(&row)
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
    Outbox::new()
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
    Outbox::new()
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

#[tokio::test]
async fn oversized_event_is_rejected_and_nothing_is_written() {
    let db = TestDb::migrated().await;
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
    assert!(err.to_string().contains("limit of 100 bytes"), "{err}");

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
async fn publishing_before_migration_says_to_migrate() {
    let db = TestDb::new().await;
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
    assert!(message.contains("eventbus_outbox"), "{message}");
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
async fn concurrent_migrations_are_idempotent() {
    let db = TestDb::new().await;
    migrate_concurrently(&db.url, 8, &Migrator::new()).await;
    eventbus::migrate(&db.pool)
        .await
        .expect("migrate once more");

    assert_eq!(
        migrations(&db.pool).await,
        vec![
            ("inbox:eventbus_inbox".to_owned(), 1),
            ("outbox:eventbus_outbox".to_owned(), 1),
            ("outbox:eventbus_outbox".to_owned(), 2)
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
            "eventbus_migrations",
            "eventbus_outbox",
            "eventbus_outbox_partitions",
            "eventbus_outbox_relays"
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
    assert_eq!(count(&db.pool, "eventbus_outbox_partitions").await, 64);

    // The migrated tables work.
    let mut tx = db.pool.begin().await.expect("begin");
    Outbox::new()
        .publish(&mut tx, &order(1))
        .await
        .expect("publish");
    tx.commit().await.expect("commit");
    assert_eq!(count(&db.pool, "eventbus_outbox").await, 1);
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
        .partitions(8)
        .expect("valid partitions");
    migrate_concurrently(&db.url, 4, &migrator).await;
    migrator.run(&db.pool).await.expect("migrate once more");
    assert_eq!(
        migrations(&db.pool).await,
        vec![
            ("inbox:svc.inbox".to_owned(), 1),
            ("outbox:svc.outbox".to_owned(), 1),
            ("outbox:svc.outbox".to_owned(), 2)
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
        ["inbox", "outbox", "outbox_partitions", "outbox_relays"]
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
    let outbox = Outbox::new().table("svc.outbox").expect("valid name");
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
    let err = Outbox::new()
        .publish(&mut tx, &order(3))
        .await
        .expect_err("eventbus_outbox does not exist");
    assert!(matches!(err, Error::NotMigrated { .. }), "{err:?}");
}
