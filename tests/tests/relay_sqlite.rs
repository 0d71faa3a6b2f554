//! The relay over a SQLite outbox: the store's claiming, fencing, retries and
//! retention against a real file, then real relays publishing to RabbitMQ —
//! volume with per-key order, and a second relay on the same file standing by.

use std::sync::Arc;
use std::time::{Duration, Instant};

use eventbus::relay::{Rejection, RelayMetrics, RelayStore, Retention, SqliteRelayStore};
use eventbus::transport::rabbitmq::RabbitPublisher;
use eventbus::{Event, Metadata, Outbox, TableName};
use eventbus_tests::rabbitmq::TestQueue;
use eventbus_tests::relay::{
    assert_per_key_order, pending, publish_steps, spawn_relay_on, steps, test_config, wait_drained,
    Step,
};
use eventbus_tests::sqlite::TestSqlite;
use eventbus_tests::{amqp_url, unique_name};
use sqlx::SqlitePool;
use uuid::Uuid;

fn store(pool: &SqlitePool) -> SqliteRelayStore {
    SqliteRelayStore::new(
        pool.clone(),
        TableName::parse("eventbus_outbox").expect("valid"),
    )
}

fn step(key: &str, seq: u64) -> Step {
    Step {
        key: key.into(),
        seq,
        pad: String::new(),
    }
}

/// The (key, seq) of claimed rows, in claim order.
async fn claim(store: &SqliteRelayStore, relay: Uuid) -> Vec<(i64, String, u64)> {
    store
        .claim(relay, &[0], 100)
        .await
        .expect("claim")
        .iter()
        .map(|r| {
            let s: Step = serde_json::from_str(&r.payload).expect("a Step");
            (r.id, s.key, s.seq)
        })
        .collect()
}

fn keys(rows: &[(i64, String, u64)]) -> Vec<String> {
    rows.iter().map(|(_, k, s)| format!("{k}{s}")).collect()
}

fn rejection(id: i64, park: bool, retry_in: Duration) -> Rejection {
    Rejection {
        id,
        park,
        retry_in,
        error: "broker said no".into(),
    }
}

#[tokio::test]
async fn store_claims_in_order_behind_failures_and_fences_every_write() {
    let db = TestSqlite::migrated().await;
    publish_steps(
        &db.pool,
        &[
            step("a", 0),
            step("b", 0),
            step("a", 1),
            step("b", 1),
            step("a", 2),
        ],
        5,
    )
    .await;
    let store = store(&db.pool);
    let ttl = Duration::from_secs(30);
    let (r1, r2) = (Uuid::now_v7(), Uuid::now_v7());
    assert_eq!(store.heartbeat(r1, "one", ttl).await.expect("hb"), [r1]);
    assert_eq!(store.heartbeat(r2, "two", ttl).await.expect("hb"), [r1, r2]);
    assert_eq!(store.acquire(r1, &[0], ttl).await.expect("acquire"), [0]);
    assert!(
        store
            .acquire(r2, &[0], ttl)
            .await
            .expect("acquire")
            .is_empty(),
        "a held lease cannot be taken"
    );
    assert!(
        store.claim(r2, &[0], 100).await.expect("claim").is_empty(),
        "nothing is claimed without the lease"
    );

    let rows = claim(&store, r1).await;
    assert_eq!(keys(&rows), ["a0", "b0", "a1", "b1", "a2"], "id order");
    let id = |name: &str| {
        rows.iter()
            .find(|(_, k, s)| format!("{k}{s}") == name)
            .map(|(id, _, _)| *id)
            .expect("row present")
    };

    // A retrying row holds back the later rows of its key only.
    store
        .reject(r1, &[rejection(id("a0"), false, Duration::from_secs(3600))])
        .await
        .expect("reject");
    assert_eq!(keys(&claim(&store, r1).await), ["b0", "b1"]);

    // Writes are fenced: a relay without the lease changes nothing.
    assert_eq!(
        store
            .acknowledge(r2, &[id("b0")], Retention::Delete)
            .await
            .expect("ack"),
        0
    );
    store
        .reject(r2, &[rejection(id("b1"), true, Duration::ZERO)])
        .await
        .expect("fenced reject");
    assert_eq!(keys(&claim(&store, r1).await), ["b0", "b1"]);

    // Acknowledged rows leave: deleted, or kept as published.
    assert_eq!(
        store
            .acknowledge(r1, &[id("b0")], Retention::Delete)
            .await
            .expect("ack"),
        1
    );
    let keep = Retention::Keep(Duration::from_secs(3600));
    assert_eq!(
        store.acknowledge(r1, &[id("b1")], keep).await.expect("ack"),
        1
    );
    assert!(claim(&store, r1).await.is_empty());

    // Parking keeps the key blocked; statistics see it.
    store
        .reject(r1, &[rejection(id("a0"), true, Duration::ZERO)])
        .await
        .expect("park");
    let (state, attempts, error): (String, i32, Option<String>) =
        sqlx::query_as("SELECT state, attempts, last_error FROM eventbus_outbox WHERE id = ?1")
            .bind(id("a0"))
            .fetch_one(&db.pool)
            .await
            .expect("parked row");
    assert_eq!((state.as_str(), attempts), ("failed", 2));
    assert_eq!(error.as_deref(), Some("broker said no"));
    let snap = store.stats(&[0]).await.expect("stats");
    assert_eq!(snap.backlog.get(&0), Some(&2), "a1 and a2 wait");
    assert_eq!(snap.parked_rows, 1);
    assert_eq!(snap.held_back_seconds, 0.0);
    assert!(
        (0.0..60.0).contains(&snap.oldest_pending_seconds),
        "{}",
        snap.oldest_pending_seconds
    );

    // A retry is claimed again once it is due, not before.
    publish_steps(&db.pool, &[step("c", 0)], 1).await;
    let c0 = claim(&store, r1).await;
    assert_eq!(keys(&c0), ["c0"]);
    store
        .reject(r1, &[rejection(c0[0].0, false, Duration::from_millis(400))])
        .await
        .expect("reject");
    assert!(claim(&store, r1).await.is_empty(), "not due yet");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let again = store.claim(r1, &[0], 100).await.expect("claim");
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].attempts, 1);

    // Retention: kept rows go once older than the window, in batches.
    assert_eq!(
        store
            .delete_published(Duration::from_secs(3600), 100)
            .await
            .expect("cleanup"),
        0
    );
    assert_eq!(
        store
            .delete_published(Duration::ZERO, 100)
            .await
            .expect("cleanup"),
        1
    );

    // Releasing hands the partition over; an expired lease can be taken.
    store.release(r1, &[0]).await.expect("release");
    assert_eq!(
        store
            .acquire(r2, &[0], Duration::from_millis(300))
            .await
            .expect("acquire"),
        [0]
    );
    assert!(store.renew(r1, &[0], ttl).await.expect("renew").is_empty());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        store.acquire(r1, &[0], ttl).await.expect("take over"),
        [0],
        "an expired lease is free"
    );
    assert!(store.renew(r2, &[0], ttl).await.expect("renew").is_empty());
    assert_eq!(store.renew(r1, &[0], ttl).await.expect("renew"), [0]);

    store.deregister(r1).await.expect("deregister");
    assert_eq!(store.heartbeat(r2, "two", ttl).await.expect("hb"), [r2]);
}

async fn setup(tag: &str) -> (Arc<RabbitPublisher>, String, TestQueue) {
    let prefix = format!("{}.", unique_name(tag));
    let exchange = format!("{prefix}{}", Step::DESTINATION);
    let queue = TestQueue::bind_all(&exchange).await;
    let publisher = RabbitPublisher::connect(&amqp_url().await)
        .await
        .expect("connect to RabbitMQ");
    (Arc::new(publisher), prefix, queue)
}

fn decode(
    queue_deliveries: &[eventbus::transport::rabbitmq::lapin::message::Delivery],
) -> Vec<Step> {
    queue_deliveries
        .iter()
        .map(|d| serde_json::from_slice(&d.data).expect("a Step"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn relays_5000_events_over_100_keys_in_order() {
    let db = TestSqlite::migrated().await;
    let (publisher, prefix, mut queue) = setup("sqlite_volume").await;
    let events = steps(5_000, 100);
    publish_steps(&db.pool, &events, 500).await;

    let relay = spawn_relay_on(Arc::new(store(&db.pool)), publisher, test_config(&prefix));
    let received = decode(&queue.read(events.len(), Duration::from_secs(120)).await);
    wait_drained(&db.pool, Duration::from_secs(30)).await;
    assert_eq!(
        assert_per_key_order(&received),
        0,
        "no duplicates without faults"
    );
    let mut got: Vec<(String, u64)> = received.iter().map(|s| (s.key.clone(), s.seq)).collect();
    let mut sent: Vec<(String, u64)> = events.iter().map(|s| (s.key.clone(), s.seq)).collect();
    got.sort();
    sent.sort();
    assert_eq!(got, sent, "every event arrived");
    queue.assert_empty(Duration::from_millis(500)).await;
    assert_eq!(relay.metrics.published_total(), 5_000);
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM eventbus_outbox")
        .fetch_one(&db.pool)
        .await
        .expect("count");
    assert_eq!(rows, 0, "published rows are deleted");
    relay.stop().await;
    queue.delete().await;
}

async fn wait_owns(metrics: &RelayMetrics, partitions: usize, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while metrics.snapshot().owned_partitions != partitions {
        assert!(
            Instant::now() < deadline,
            "relay owns {} partitions, not {partitions}, after {timeout:?}",
            metrics.snapshot().owned_partitions
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_relay_on_the_same_file_stands_by_then_takes_over() {
    let db = TestSqlite::migrated().await;
    let (publisher, prefix, mut queue) = setup("sqlite_standby").await;

    // Two relays as two processes would run them: each with its own pool.
    let first_pool = db.connect().await;
    let first = spawn_relay_on(
        Arc::new(store(&first_pool)),
        publisher.clone(),
        test_config(&prefix),
    );
    wait_owns(&first.metrics, 1, Duration::from_secs(10)).await;
    let second_pool = db.connect().await;
    let second = spawn_relay_on(
        Arc::new(store(&second_pool)),
        publisher.clone(),
        test_config(&prefix),
    );

    // Publish while both run.
    let events = steps(2_000, 50);
    publish_steps(&db.pool, &events, 100).await;
    let received = decode(&queue.read(events.len(), Duration::from_secs(60)).await);
    wait_drained(&db.pool, Duration::from_secs(30)).await;
    queue.assert_empty(Duration::from_secs(1)).await;
    assert_eq!(assert_per_key_order(&received), 0, "no duplicates");
    assert_eq!(first.metrics.published_total(), 2_000);
    assert_eq!(
        second.metrics.published_total(),
        0,
        "the second relay stood by"
    );
    assert_eq!(second.metrics.snapshot().owned_partitions, 0);

    // The first stops (releasing its lease): the second takes over.
    first.stop().await;
    wait_owns(&second.metrics, 1, Duration::from_secs(10)).await;
    let more: Vec<Step> = (0..300)
        .map(|i| step(&format!("key-{}", i % 50), 100 + i / 50))
        .collect();
    let outbox = Outbox::new().source("urn:test:relay");
    let mut tx = db.pool.begin().await.expect("begin");
    outbox
        .publish_all(&mut tx, &more, &Metadata::default())
        .await
        .expect("publish");
    tx.commit().await.expect("commit");
    let after = decode(&queue.read(more.len(), Duration::from_secs(30)).await);
    wait_drained(&db.pool, Duration::from_secs(10)).await;
    let mut all = received;
    all.extend(after);
    assert_eq!(
        assert_per_key_order(&all),
        0,
        "order holds across the handover"
    );
    assert_eq!(second.metrics.published_total(), 300);
    assert_eq!(pending(&db.pool).await, 0);
    second.stop().await;
    queue.delete().await;
}
