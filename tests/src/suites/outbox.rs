//! The outbox suite, on any database: atomicity with business data, 10,000
//! events with one `publish_all`, the plain-SQL table contract, the size
//! limit, errors before migration, and concurrent migrations. Rows are read
//! back the way the relay reads them (through the backend's relay store), so
//! the store's decoding is checked too.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use eventbus::{Envelope, Error, Inbox, Metadata, Outbox, OutboxRecord};
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use crate::backend::TestDatabase;

/// The event of the outbox suite.
#[derive(
    eventbus::Event, Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, PartialEq,
)]
#[event(
    type = "com.example.order.placed",
    version = 2,
    destination = "orders",
    key = order_id
)]
pub struct OrderPlaced {
    /// Ordering key.
    pub order_id: String,
    /// Amount.
    pub amount_cents: i64,
    /// Free text.
    pub note: String,
}

/// Order `i` of a batch: key `o-0000i`, an amount of `100 + i` cents.
pub fn order(i: usize) -> OrderPlaced {
    OrderPlaced {
        order_id: format!("o-{i:05}"),
        amount_cents: 100 + i as i64,
        note: String::new(),
    }
}

async fn create_orders_table<D: TestDatabase>(db: &D) {
    db.execute("CREATE TABLE orders (id VARCHAR(64) PRIMARY KEY, amount_cents BIGINT NOT NULL)")
        .await
        .expect("create orders");
}

/// Every pending row as the relay reads it: through the backend's relay store
/// holding every partition's lease. Waits (at most 20 s) until `expected` rows
/// are claimable: on PostgreSQL fresh rows are held back while any older
/// transaction of the server is open, e.g. another test's.
pub async fn claim_all<D: TestDatabase>(db: &D, expected: usize) -> Vec<OutboxRecord> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let rows = claim_once(db).await;
        if rows.len() >= expected || std::time::Instant::now() > deadline {
            return rows;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn claim_once<D: TestDatabase>(db: &D) -> Vec<OutboxRecord> {
    let store = D::relay_store(db.pool());
    let relay = Uuid::now_v7();
    let ttl = Duration::from_secs(30);
    let partitions = store.partitions().await.expect("partitions");
    store
        .heartbeat(relay, "test", ttl)
        .await
        .expect("heartbeat");
    let mut acquired: Vec<i32> = store
        .acquire(relay, &partitions, ttl)
        .await
        .expect("acquire")
        .iter()
        .map(|l| l.partition)
        .collect();
    acquired.sort_unstable();
    assert_eq!(acquired, partitions, "every partition is free");
    let rows = store
        .claim(
            relay,
            &partitions,
            eventbus::relay::ClaimLimits::rows(100_000),
            &[],
        )
        .await
        .expect("claim");
    store.deregister(relay).await.expect("deregister");
    rows
}

/// Milliseconds since the Unix epoch, now.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The payload read back is what was written: the same bytes where the
/// backend keeps them, the same JSON value elsewhere.
fn assert_payload<D: TestDatabase>(read: &[u8], written: &[u8], what: &str) {
    if D::KEEPS_PAYLOAD_BYTES {
        assert_eq!(read, written, "{what}: the payload bytes travel unchanged");
    } else {
        let read: serde_json::Value = serde_json::from_slice(read).expect("JSON read back");
        let written: serde_json::Value = serde_json::from_slice(written).expect("JSON written");
        assert_eq!(
            read, written,
            "{what}: the payload travels as the same JSON"
        );
    }
}

async fn count<D: TestDatabase>(db: &D, table: &str) -> i64 {
    db.scalar(&format!("SELECT count(*) FROM {table}")).await
}

/// The order row and its event commit together; the relay reads the row back
/// with every attribute and the payload bytes exactly as serialized.
pub async fn commit_writes_business_row_and_outbox_row_together<D: TestDatabase>() {
    let db = D::migrated().await;
    create_orders_table(&db).await;
    let outbox = Outbox::new("urn:service:orders");
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

    let mut tx = db.pool().begin().await.expect("begin");
    D::execute_in(
        &mut *tx,
        "INSERT INTO orders (id, amount_cents) VALUES ('o-1', 1250)",
    )
    .await
    .expect("insert order");
    let event_id = outbox
        .publish_with(&mut tx, &event, &meta)
        .await
        .expect("publish");
    tx.commit().await.expect("commit");

    assert_eq!(
        db.scalar("SELECT amount_cents FROM orders WHERE id = 'o-1'")
            .await,
        1250
    );
    assert_eq!(event_id.get_version_num(), 7, "event ids are UUIDv7");
    let row = |column: &str| format!("SELECT {column} FROM eventbus_outbox");
    assert_eq!(db.texts(&row("state")).await, [Some("pending".to_owned())]);
    assert_eq!(db.scalar(&row("attempts")).await, 0);
    assert_eq!(
        db.scalar(
            "SELECT count(*) FROM eventbus_outbox WHERE next_attempt_at IS NULL \
                   AND last_error IS NULL AND published_at IS NULL"
        )
        .await,
        1
    );

    let records = claim_all(&db, 1).await;
    assert_eq!(records.len(), 1);
    let r = &records[0];
    assert_eq!(r.event_id, event_id);
    assert_eq!(r.source.as_deref(), Some("urn:service:orders"));
    assert_eq!(r.destination, "orders");
    assert_eq!(r.partition_key, "o-1");
    assert_eq!(r.partition, db.partition_of("o-1").await);
    assert_eq!(r.event_type, "com.example.order.placed");
    assert_eq!(r.schema_version, 2);
    assert_eq!(r.subject.as_deref(), Some("o-1"));
    assert_eq!(r.attempts, 0);
    assert_eq!(
        r.headers,
        json!({
            "correlationid": "corr-1",
            "causationid": "cause-1",
            "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "tenant": "acme",
        })
    );
    let age_ms = now_ms() - r.created_at.timestamp_millis();
    assert!(
        (-1_000..60_000).contains(&age_ms),
        "created_at {}",
        r.created_at
    );
    let envelope = r.to_envelope("urn:relay").expect("a CloudEvent");
    assert_eq!(envelope.id, event_id.to_string());
    assert_eq!(envelope.source, "urn:service:orders");
    assert_eq!(envelope.correlation_id.as_deref(), Some("corr-1"));
    assert_eq!(envelope.schema_version(), Some(2));
    assert_payload::<D>(
        &envelope.data,
        &serde_json::to_vec(&event).expect("to json"),
        "the event",
    );
}

/// Rollback, or a transaction dropped without commit, writes neither the
/// business row nor the event.
pub async fn rollback_writes_neither_business_row_nor_outbox_row<D: TestDatabase>() {
    let db = D::migrated().await;
    create_orders_table(&db).await;
    let outbox = Outbox::new("urn:service:orders");

    let mut tx = db.pool().begin().await.expect("begin");
    D::execute_in(
        &mut *tx,
        "INSERT INTO orders (id, amount_cents) VALUES ('o-1', 5)",
    )
    .await
    .expect("insert order");
    outbox.publish(&mut tx, &order(1)).await.expect("publish");
    // Inside the transaction both are visible ...
    for table in ["orders", "eventbus_outbox"] {
        let sql = format!("SELECT count(*) FROM {table}");
        assert_eq!(
            D::scalar_in(&mut *tx, &sql).await,
            1,
            "{table} in the transaction"
        );
    }
    tx.rollback().await.expect("rollback");
    // ... and after the rollback neither exists.
    assert_eq!(count(&db, "orders").await, 0);
    assert_eq!(count(&db, "eventbus_outbox").await, 0);

    // Dropping the transaction without commit behaves the same.
    {
        let mut tx = db.pool().begin().await.expect("begin");
        D::execute_in(
            &mut *tx,
            "INSERT INTO orders (id, amount_cents) VALUES ('o-2', 5)",
        )
        .await
        .expect("insert order");
        outbox.publish(&mut tx, &order(2)).await.expect("publish");
    }
    assert_eq!(count(&db, "orders").await, 0);
    assert_eq!(count(&db, "eventbus_outbox").await, 0);
}

/// `publish_all` writes 10,000 events atomically (a rollback leaves none,
/// though more rows than one statement can bind), with consecutive ids in the
/// order of the events, each with its key, payload and metadata, and unique
/// event ids.
pub async fn publish_all_writes_ten_thousand_events_in_order_atomically<D: TestDatabase>() {
    let db = D::migrated().await;
    let events: Vec<OrderPlaced> = (0..10_000).map(order).collect();
    let meta = Metadata {
        correlation_id: Some("batch".into()),
        ..Metadata::default()
    };

    let mut tx = db.pool().begin().await.expect("begin");
    Outbox::new("urn:service:orders")
        .publish_all(&mut tx, &events, &meta)
        .await
        .expect("publish_all");
    tx.rollback().await.expect("rollback");
    assert_eq!(count(&db, "eventbus_outbox").await, 0);

    let started = std::time::Instant::now();
    let mut tx = db.pool().begin().await.expect("begin");
    let ids = Outbox::new("urn:service:orders")
        .publish_all(&mut tx, &events, &meta)
        .await
        .expect("publish_all");
    tx.commit().await.expect("commit");
    println!(
        "publish_all of 10,000 events on {}: {:?}",
        D::NAME,
        started.elapsed()
    );
    assert_eq!(ids.len(), 10_000);

    let records = claim_all(&db, 10_000).await;
    assert_eq!(records.len(), 10_000);
    for (i, r) in records.iter().enumerate() {
        if i > 0 {
            assert_eq!(r.id, records[i - 1].id + 1, "row {i}: ids are consecutive");
        }
        assert_eq!(r.event_id, ids[i], "row {i}: event id in publication order");
        assert_eq!(r.partition_key, events[i].order_id, "row {i}: key");
        assert_payload::<D>(
            r.payload.as_bytes(),
            &serde_json::to_vec(&events[i]).expect("json"),
            &format!("row {i}"),
        );
        assert_eq!(r.headers, json!({"correlationid": "batch"}));
    }
    let distinct: HashSet<Uuid> = ids.iter().copied().collect();
    assert_eq!(distinct.len(), 10_000, "event ids are unique");
}

/// The table contract: one plain `INSERT` naming destination, key, type and
/// payload is a valid CloudEvent (UUID id, current time, version 1, empty
/// headers, the relay's source), and a full insert carries every attribute.
pub async fn plain_sql_inserts_are_valid_cloudevents<D: TestDatabase>() {
    let db = D::migrated().await;
    db.execute(
        r#"INSERT INTO eventbus_outbox (destination, partition_key, event_type, payload)
           VALUES ('orders', 'o-42', 'com.example.order.placed',
                   '{"order_id": "o-42", "amount_cents": 990, "note": ""}')"#,
    )
    .await
    .expect("the minimal plain-SQL insert succeeds");
    let records = claim_all(&db, 1).await;
    assert_eq!(records.len(), 1);
    let record = &records[0];
    assert_eq!(record.partition, db.partition_of("o-42").await);
    assert_eq!(record.source, None);
    assert_eq!(record.subject, None);
    assert_eq!(record.schema_version, 1);
    assert_eq!(record.attempts, 0);
    assert_eq!(record.headers, json!({}));
    assert_eq!(
        db.texts("SELECT state FROM eventbus_outbox").await,
        [Some("pending".to_owned())]
    );
    let age_ms = now_ms() - record.created_at.timestamp_millis();
    assert!(
        (-1_000..60_000).contains(&age_ms),
        "created_at {} is now (UTC)",
        record.created_at
    );
    let envelope = record
        .to_envelope("urn:relay:default")
        .expect("a valid CloudEvent");
    assert_eq!(
        Uuid::parse_str(&envelope.id).expect("the id is a UUID"),
        record.event_id
    );
    assert_eq!(envelope.source, "urn:relay:default");
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
    assert_payload::<D>(
        &envelope.data,
        br#"{"order_id": "o-42", "amount_cents": 990, "note": ""}"#,
        "the minimal insert",
    );
    let data: OrderPlaced = serde_json::from_slice(&envelope.data).expect("payload decodes");
    assert_eq!(data.order_id, "o-42");
    assert_eq!(data.amount_cents, 990);
    // The structured JSON form round-trips: stock CloudEvents readers see the
    // same event (the payload as the same JSON: structured mode re-encodes it).
    let structured: serde_json::Value = serde_json::from_slice(&envelope.to_json()).expect("json");
    assert_eq!(structured["specversion"], "1.0");
    assert_eq!(structured["data"]["amount_cents"], 990);
    let mut back = Envelope::from_json(&envelope.to_json()).expect("round trip");
    let as_json =
        |bytes: &[u8]| serde_json::from_slice::<serde_json::Value>(bytes).expect("json payload");
    assert_eq!(as_json(&back.data), as_json(&envelope.data));
    back.data = envelope.data.clone();
    assert_eq!(back, envelope);
    db.execute("DELETE FROM eventbus_outbox")
        .await
        .expect("clear");

    let event_id = Uuid::now_v7();
    db.execute(&format!(
        r#"INSERT INTO eventbus_outbox
             (event_id, source, destination, partition_key, event_type, schema_version,
              subject, headers, payload)
           VALUES ('{event_id}', 'urn:service:legacy-php', 'orders', 'o-7',
                   'com.example.order.placed', 3, 'order/o-7',
                   '{{"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "correlationid": "c-9"}}',
                   '{{"order_id": "o-7"}}')"#
    ))
    .await
    .expect("the full plain-SQL insert succeeds");
    let records = claim_all(&db, 1).await;
    assert_eq!(records.len(), 1);
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

/// Rows the relay could not read are refused at insert: a malformed event
/// id, payload, headers or `created_at`, a partition chosen by the writer, an
/// unknown state. Returns each column with the database's message, for the
/// backend's own checks of the wording.
pub async fn rows_the_relay_could_not_read_are_refused_at_insert<D: TestDatabase>(
) -> Vec<(&'static str, String)> {
    let db = D::migrated().await;
    let cases = [
        ("event_id", "'not-a-uuid'"),
        ("payload", "'{not json'"),
        ("headers", "'[1, 2'"),
        ("partition", "3"),
        ("state", "'done'"),
        ("created_at", "'yesterday-ish'"),
    ];
    let mut refusals = Vec::new();
    for (column, value) in cases {
        let (payload, payload_value) = if column == "payload" {
            ("", "")
        } else {
            (", payload", ", '{}'")
        };
        let sql = format!(
            "INSERT INTO eventbus_outbox (destination, partition_key, event_type, {}{payload}) \
             VALUES ('d', 'k', 't', {value}{payload_value})",
            D::quoted(column)
        );
        match db.execute(&sql).await {
            Err(sqlx::Error::Database(e)) => refusals.push((column, e.message().to_owned())),
            other => panic!("{column} = {value} must be refused, got {other:?}"),
        }
    }
    assert_eq!(count(&db, "eventbus_outbox").await, 0);
    refusals
}

/// An event over the size limit is refused with the sizes, alone or in a
/// batch, and the transaction stays usable.
pub async fn oversized_event_is_rejected_and_nothing_is_written<D: TestDatabase>() {
    let db = D::migrated().await;
    let outbox = Outbox::new("urn:service:orders").max_event_bytes(100);
    let big = OrderPlaced {
        order_id: "o-big".into(),
        amount_cents: 1,
        note: "x".repeat(200),
    };
    let mut tx = db.pool().begin().await.expect("begin");
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
    assert_eq!(
        db.texts("SELECT partition_key FROM eventbus_outbox").await,
        [Some(order(3).order_id)]
    );
}

/// Before migration, publishing, the inbox and the relay store say which
/// table is missing and what to run.
pub async fn using_tables_before_migration_says_to_migrate<D: TestDatabase>() {
    let db = D::create().await;
    let mut tx = db.pool().begin().await.expect("begin");
    let err = Outbox::new("urn:service:orders")
        .publish(&mut tx, &order(1))
        .await
        .expect_err("no table yet");
    assert!(
        matches!(&err, Error::NotMigrated { table } if table == "eventbus_outbox"),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(message.contains("outbox-relay migrate"), "{message}");
    assert!(message.contains("eventbus_outbox"), "{message}");
    drop(tx);

    let envelope = Envelope::new("urn:a", "t", b"{}".to_vec());
    let err = Inbox::new("billing")
        .begin(db.pool(), &envelope)
        .await
        .expect_err("no inbox table yet");
    assert!(
        matches!(&err, Error::NotMigrated { table } if table == "eventbus_inbox"),
        "{err:?}"
    );
    let err = D::relay_store(db.pool())
        .partitions()
        .await
        .expect_err("no lease table yet");
    assert!(matches!(err, Error::NotMigrated { .. }), "{err:?}");
}

/// Eight migrators at once, each with its own pool as eight processes would:
/// all succeed, each component is recorded, the partitions exist, and the
/// tables work. Returns the database, for the backend's own checks of what
/// the migrations made.
pub async fn concurrent_migrations_are_idempotent<D: TestDatabase>() -> D {
    let db = D::create().await;
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
    eventbus::migrate(db.pool())
        .await
        .expect("migrate once more");
    assert_eq!(
        db.texts("SELECT DISTINCT component FROM eventbus_migrations ORDER BY component")
            .await,
        [
            Some("inbox:eventbus_inbox".to_owned()),
            Some("outbox:eventbus_outbox".to_owned()),
            Some("sagas:eventbus_sagas".to_owned())
        ]
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM eventbus_outbox_partitions")
            .await,
        i64::from(D::PARTITIONS)
    );
    let mut tx = db.pool().begin().await.expect("begin");
    Outbox::new("urn:service:orders")
        .publish(&mut tx, &order(1))
        .await
        .expect("publish");
    tx.commit().await.expect("commit");
    assert_eq!(count(&db, "eventbus_outbox").await, 1);
    db
}
