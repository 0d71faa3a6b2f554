//! A relay whose task is aborted (its `run` future dropped, as when a host
//! process kills a task or a runtime shuts down) stops heartbeating, so its
//! lease expires and another relay takes its partitions over.
//!
//! Runs on a SQLite outbox and the in-memory broker: the behaviour under test
//! is the relay's own, the same on every backend.

use std::sync::Arc;
use std::time::Duration;

use eventbus::relay::{Relay, RelayConfig, SqliteRelayStore};
use eventbus::transport::memory::MemoryBroker;
use eventbus::{Metadata, Outbox, TableName};
use eventbus_tests::relay::{steps, Step};
use eventbus_tests::sqlite::TestSqlite;

fn config() -> RelayConfig {
    RelayConfig {
        poll_interval: Duration::from_millis(20),
        heartbeat_interval: Duration::from_millis(100),
        lease_ttl: Duration::from_millis(600),
        ..RelayConfig::default()
    }
}

async fn publish(db: &TestSqlite, events: &[Step]) {
    let mut tx = db.pool.begin().await.expect("begin");
    Outbox::new("urn:test:relay")
        .publish_all(&mut tx, events, &Metadata::default())
        .await
        .expect("publish_all");
    tx.commit().await.expect("commit");
}

async fn wait_published(broker: &MemoryBroker, count: usize, within: Duration) -> bool {
    let until = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < until {
        if broker.published("steps") >= count {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_relay_lets_another_take_over_its_partitions() {
    let db = TestSqlite::migrated().await;
    let broker = MemoryBroker::new();
    let store = || {
        Arc::new(SqliteRelayStore::new(
            db.pool.clone(),
            TableName::default_outbox(),
        ))
    };
    let events = steps(20, 4);

    let first = Relay::new(store(), Arc::new(broker.publisher()), config()).expect("relay");
    let running = tokio::spawn(async move { first.run(std::future::pending()).await });
    publish(&db, &events[..10]).await;
    assert!(
        wait_published(&broker, 10, Duration::from_secs(10)).await,
        "the first relay holds the partition and publishes"
    );

    running.abort();
    let _ = running.await;
    publish(&db, &events[10..]).await;

    let second = Relay::new(store(), Arc::new(broker.publisher()), config()).expect("relay");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        second
            .run(async {
                let _ = stopped.await;
            })
            .await
    });
    // The lease is 600 ms: a dead relay's heartbeat must not keep it alive.
    let taken_over = wait_published(&broker, 20, Duration::from_secs(5)).await;
    let _ = stop.send(());
    task.await.expect("relay task").expect("relay run");
    assert!(
        taken_over,
        "the second relay never got the partition: {} of 20 published",
        broker.published("steps")
    );
    let keys: Vec<String> = broker
        .messages("steps")
        .iter()
        .map(|e| e.id.clone())
        .collect();
    assert_eq!(
        keys.len(),
        20,
        "each event once (no batch was in flight at the abort)"
    );
}
