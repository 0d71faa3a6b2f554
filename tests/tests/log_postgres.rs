//! The log relay's decoding held to a real server: a private PostgreSQL 15
//! cluster with `wal_level = logical`, the outbox's publication, a
//! `pgoutput` slot, and writes of every kind the outbox sees. What the slot
//! holds, decoded as the relay decodes it, must be the committed rows, whole,
//! in commit order — not id order — with nothing rolled back and no update.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use eventbus::backend::postgres::log::{
    ensure_publication, peek_outbox_records, slot_status, SlotLock,
};
use eventbus::{Metadata, Outbox, OutboxRecord, TableName};
use eventbus_tests::postgres_cluster::{ClusterOptions, PostgresCluster};
use eventbus_tests::suites::outbox::order;
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Row};
use uuid::Uuid;

const SLOT: &str = "log_test";

/// A row as the table holds it, for comparing with what the log carried.
#[derive(Debug, PartialEq)]
struct Stored {
    event_id: Uuid,
    source: Option<String>,
    destination: String,
    partition_key: String,
    event_type: String,
    schema_version: i32,
    subject: Option<String>,
    headers: serde_json::Value,
    payload: serde_json::Value,
    created_at: DateTime<Utc>,
}

impl From<&OutboxRecord> for Stored {
    fn from(r: &OutboxRecord) -> Self {
        Stored {
            event_id: r.event_id,
            source: r.source.clone(),
            destination: r.destination.clone(),
            partition_key: r.partition_key.clone(),
            event_type: r.event_type.clone(),
            schema_version: r.schema_version,
            subject: r.subject.clone(),
            headers: r.headers.clone(),
            payload: serde_json::from_str(&r.payload).expect("the payload the log carried is JSON"),
            created_at: r.created_at,
        }
    }
}

async fn stored(pool: &PgPool) -> HashMap<i64, Stored> {
    sqlx::query(
        "SELECT id, event_id, source, destination, partition_key, event_type, schema_version, \
                subject, headers, payload, created_at FROM eventbus_outbox",
    )
    .fetch_all(pool)
    .await
    .expect("read the outbox")
    .iter()
    .map(|row| {
        (
            row.get("id"),
            Stored {
                event_id: row.get("event_id"),
                source: row.get("source"),
                destination: row.get("destination"),
                partition_key: row.get("partition_key"),
                event_type: row.get("event_type"),
                schema_version: row.get("schema_version"),
                subject: row.get("subject"),
                headers: row.get("headers"),
                payload: row.get("payload"),
                created_at: row.get("created_at"),
            },
        )
    })
    .collect()
}

/// One plain-SQL insert in `tx`; returns its id.
async fn plain_insert(tx: &mut sqlx::PgConnection, key: &str, payload: &str) -> i64 {
    sqlx::query_scalar(
        "INSERT INTO eventbus_outbox (destination, partition_key, event_type, payload, headers) \
         VALUES ('orders', $1, 'com.example.legacy', $2::jsonb, '{\"n\": 1.5, \"ok\": true}') \
         RETURNING id",
    )
    .bind(key)
    .bind(payload)
    .fetch_one(tx)
    .await
    .expect("plain insert")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_carries_committed_outbox_rows_whole_and_in_commit_order() {
    let (_cluster, pool) = logical_cluster().await;
    eventbus::migrate::migrate(&pool).await.expect("migrate");
    let table = TableName::parse("eventbus_outbox").expect("valid");
    let publication = ensure_publication(&pool, &table)
        .await
        .expect("publication");
    assert_eq!(publication, "eventbus_outbox_log");
    assert_eq!(
        ensure_publication(&pool, &table).await.expect("again"),
        publication,
        "idempotent"
    );
    let columns: Vec<String> = sqlx::query_scalar(
        "SELECT unnest(attnames)::text FROM pg_publication_tables WHERE pubname = $1",
    )
    .bind(&publication)
    .fetch_all(&pool)
    .await
    .expect("published columns");
    assert!(!columns.contains(&"partition".to_owned()) && !columns.contains(&"txid".to_owned()));
    assert_eq!(columns.len(), 12, "{columns:?}");
    sqlx::query("SELECT pg_create_logical_replication_slot($1, 'pgoutput')")
        .bind(SLOT)
        .execute(&pool)
        .await
        .expect("slot");

    let outbox = Outbox::new("urn:test:log");
    let mut commit_order: Vec<i64> = Vec::new();
    let ids_of = |pool: PgPool, ids: Vec<Uuid>| async move {
        let mut out = Vec::new();
        for id in ids {
            out.push(
                sqlx::query_scalar::<_, i64>("SELECT id FROM eventbus_outbox WHERE event_id = $1")
                    .bind(id)
                    .fetch_one(&pool)
                    .await
                    .expect("id of a published event"),
            );
        }
        out
    };

    // `Outbox::publish` and `publish_all`.
    let mut tx = pool.begin().await.expect("begin");
    let one = outbox.publish(&mut tx, &order(1)).await.expect("publish");
    let meta = Metadata {
        correlation_id: Some("c-1".into()),
        traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
        ..Metadata::default()
    };
    let many = outbox
        .publish_all(&mut tx, &[order(2), order(3), order(2)], &meta)
        .await
        .expect("publish_all");
    tx.commit().await.expect("commit");
    commit_order.extend(ids_of(pool.clone(), [vec![one], many].concat()).await);

    // Two transactions committed in the other order than their ids.
    let mut early = pool.begin().await.expect("begin");
    let early_id = plain_insert(&mut early, "k-late", r#"{"s": "a, b: c", "n": [1, 2]}"#).await;
    let mut late = pool.begin().await.expect("begin");
    let late_id = plain_insert(&mut late, "k-late", r#"{"second": true}"#).await;
    assert!(early_id < late_id);
    late.commit().await.expect("commit the later id first");
    early.commit().await.expect("commit the earlier id second");
    commit_order.extend([late_id, early_id]);

    // Rolled back: a whole transaction, and a savepoint inside a committed one.
    let mut rolled = pool.begin().await.expect("begin");
    plain_insert(&mut rolled, "k-gone", "{}").await;
    rolled.rollback().await.expect("rollback");
    let mut tx = pool.begin().await.expect("begin");
    let kept = plain_insert(&mut tx, "k-kept", r#"{"kept": 1}"#).await;
    sqlx::query("SAVEPOINT s")
        .execute(&mut *tx)
        .await
        .expect("savepoint");
    plain_insert(&mut tx, "k-gone", "{}").await;
    sqlx::query("ROLLBACK TO SAVEPOINT s")
        .execute(&mut *tx)
        .await
        .expect("rollback to savepoint");
    tx.commit().await.expect("commit");
    commit_order.push(kept);

    // A 5 MB payload (TOASTed in the table, whole in the log), and a
    // relay's update of a row, which is no event.
    let mut tx = pool.begin().await.expect("begin");
    let big: i64 = sqlx::query_scalar(
        "INSERT INTO eventbus_outbox (destination, partition_key, event_type, payload) \
         VALUES ('orders', 'k-big', 'com.example.big', jsonb_build_object('pad', repeat('x', 5000000))) \
         RETURNING id",
    )
    .fetch_one(&mut *tx)
    .await
    .expect("big insert");
    tx.commit().await.expect("commit");
    commit_order.push(big);
    sqlx::query("UPDATE eventbus_outbox SET attempts = 1, last_error = 'x' WHERE id = $1")
        .bind(kept)
        .execute(&pool)
        .await
        .expect("update");

    let logged = peek_outbox_records(&pool, SLOT, &publication, &table)
        .await
        .expect("peek the slot");
    let ids: Vec<i64> = logged.iter().map(|r| r.id).collect();
    assert_eq!(
        ids, commit_order,
        "the log's order is commit order, rolled-back rows absent"
    );
    let table_rows = stored(&pool).await;
    for record in &logged {
        assert_eq!(record.defect, None, "row {} read whole", record.id);
        assert_eq!(record.attempts, 0, "the insert's image, not the update's");
        assert!(
            !record.payload.contains(": ") || record.payload.contains("a, b: c"),
            "compact outside strings: {}",
            &record.payload[..record.payload.len().min(80)]
        );
        let expected = table_rows.get(&record.id).expect("a row the table holds");
        assert_eq!(&Stored::from(record), expected, "row {}", record.id);
    }
    let big_record = logged.iter().find(|r| r.id == big).expect("the big row");
    assert!(big_record.payload.len() > 5_000_000);

    // Peeking leaves the slot where it was.
    let again = peek_outbox_records(&pool, SLOT, &publication, &table)
        .await
        .expect("peek again");
    assert_eq!(again.len(), logged.len());
}

#[tokio::test]
async fn the_publication_needs_a_table_name_postgresql_can_keep() {
    let table = TableName::parse(&format!("{}.{}", "s".repeat(30), "t".repeat(30))).expect("valid");
    let pool = PgPoolOptions::new()
        .connect_lazy("postgres://postgres@127.0.0.1:1/none")
        .expect("lazy pool");
    let err = ensure_publication(&pool, &table)
        .await
        .expect_err("too long a name");
    assert!(err.to_string().contains("longer than PostgreSQL"), "{err}");
}

async fn logical_cluster() -> (PostgresCluster, PgPool) {
    let cluster = PostgresCluster::start_with(ClusterOptions::default().logical())
        .await
        .expect("a private PostgreSQL cluster with wal_level = logical (needs the server binaries under /usr/lib/postgresql)");
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect(&cluster.url())
        .await
        .expect("connect to the private cluster");
    (cluster, pool)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_reports_the_wal_it_holds_back_until_it_is_confirmed() {
    let (_cluster, pool) = logical_cluster().await;
    eventbus::migrate::migrate(&pool).await.expect("migrate");
    assert_eq!(
        slot_status(&pool, SLOT).await.expect("status"),
        None,
        "no slot yet"
    );
    sqlx::query("SELECT pg_create_logical_replication_slot($1, 'pgoutput')")
        .bind(SLOT)
        .execute(&pool)
        .await
        .expect("slot");
    let fresh = slot_status(&pool, SLOT)
        .await
        .expect("status")
        .expect("the slot");
    assert!(!fresh.active && fresh.active_pid.is_none(), "{fresh:?}");
    assert_eq!(fresh.wal_status.as_deref(), Some("reserved"));
    assert_eq!(
        fresh.safe_wal_size, None,
        "max_slot_wal_keep_size is unlimited"
    );
    sqlx::query(
        "INSERT INTO eventbus_outbox (destination, partition_key, event_type, payload) \
         SELECT 'orders', 'k-' || g, 'com.example.bulk', jsonb_build_object('pad', repeat('x', 1000)) \
         FROM generate_series(1, 2000) g",
    )
    .execute(&pool)
    .await
    .expect("writes");
    let behind = slot_status(&pool, SLOT)
        .await
        .expect("status")
        .expect("the slot");
    assert!(
        behind.lag_bytes > 2_000_000 && behind.retained_bytes >= behind.lag_bytes,
        "2,000 rows of 1 kB are behind the slot: {behind:?}"
    );
    assert_eq!(
        behind.confirmed_flush, fresh.confirmed_flush,
        "nothing confirmed"
    );
    sqlx::query("SELECT pg_replication_slot_advance($1, pg_current_wal_lsn())")
        .bind(SLOT)
        .execute(&pool)
        .await
        .expect("advance");
    let caught_up = slot_status(&pool, SLOT)
        .await
        .expect("status")
        .expect("the slot");
    assert!(
        caught_up.confirmed_flush > behind.confirmed_flush,
        "{caught_up:?}"
    );
    assert!(
        caught_up.lag_bytes < 100_000,
        "confirmed to the end of the WAL (give or take the server's own writes): {caught_up:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_relay_holds_a_slot_and_the_next_takes_over_when_its_session_dies() {
    let (_cluster, pool) = logical_cluster().await;
    let mut holder = SlotLock::try_acquire(&pool, SLOT)
        .await
        .expect("try")
        .expect("the first contender holds the slot");
    assert!(
        SlotLock::try_acquire(&pool, SLOT)
            .await
            .expect("try")
            .is_none(),
        "a second contender stands by"
    );
    assert!(
        SlotLock::try_acquire(&pool, "another_slot")
            .await
            .expect("try")
            .is_some(),
        "another slot is another lock"
    );
    assert!(holder.alive().await);
    // The holder's session dies (its process killed, its connection cut).
    let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(holder.backend_pid())
        .fetch_one(&pool)
        .await
        .expect("terminate");
    assert!(killed);
    let started = std::time::Instant::now();
    let next = loop {
        if let Some(lock) = SlotLock::try_acquire(&pool, SLOT).await.expect("try") {
            break lock;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "the lock outlived its session"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert!(
        !holder.alive().await,
        "the old holder knows it lost the slot"
    );
    next.release().await.expect("release");
    assert!(
        SlotLock::try_acquire(&pool, SLOT)
            .await
            .expect("try")
            .is_some(),
        "released, the slot is free"
    );
}
