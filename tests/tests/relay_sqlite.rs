//! The relay over a SQLite outbox: the shared relay suite
//! (`eventbus_tests::suites::relay`) — the store's claiming, fencing, retries
//! and retention against a real file, volume with per-key order to RabbitMQ and SQS —
//! and what only SQLite has: a second relay on the same file standing by.

use std::sync::Arc;
use std::time::{Duration, Instant};

use eventbus::relay::{RelayMetrics, SqliteRelayStore};
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

// The shared scenarios this binary runs: its row in `tests/src/matrix.rs`.
eventbus_tests::matrix!(relay_sqlite);

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
    let outbox = Outbox::new("urn:test:relay");
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
