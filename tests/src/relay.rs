//! Running a relay inside a test and waiting for the outbox to drain, on
//! PostgreSQL, MySQL or SQLite.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use eventbus::outbox::OutboxDatabase;
use eventbus::relay::{PgRelayStore, Relay, RelayConfig, RelayMetrics, RelayStore};
use eventbus::Publisher;
use serde::{Deserialize, Serialize};
use sqlx::{MySqlPool, PgPool, SqlitePool};
use tokio::sync::oneshot;

/// The event the relay suites publish: `seq` counts up per `key`.
#[derive(
    Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema, eventbus::Event,
)]
#[event(type = "com.example.test.step", version = 1, destination = "steps", key = key)]
pub struct Step {
    /// Ordering key.
    pub key: String,
    /// Position within the key.
    pub seq: u64,
    /// Padding to reach a realistic size.
    #[serde(default)]
    pub pad: String,
}

/// `count` steps spread over `keys` keys, `seq` rising per key, in publication order.
pub fn steps(count: u64, keys: u64) -> Vec<Step> {
    (0..count)
        .map(|i| Step {
            key: format!("key-{}", i % keys),
            seq: i / keys,
            pad: String::new(),
        })
        .collect()
}

/// Publishes `events` through the default outbox in transactions of `per_tx`.
pub async fn publish_steps<DB: OutboxDatabase>(
    pool: &sqlx::Pool<DB>,
    events: &[Step],
    per_tx: usize,
) {
    let outbox = eventbus::Outbox::new("urn:test:relay");
    for chunk in events.chunks(per_tx.max(1)) {
        let mut tx = pool.begin().await.expect("begin");
        outbox
            .publish_all(&mut tx, chunk, &eventbus::Metadata::default())
            .await
            .expect("publish_all");
        tx.commit().await.expect("commit");
    }
}

/// A relay running in a task of the test.
#[derive(Debug)]
pub struct RunningRelay {
    /// Its live figures.
    pub metrics: Arc<RelayMetrics>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<eventbus::Result<()>>,
}

/// A relay config for tests: quick polling and heartbeats, and `prefix` in front
/// of every destination so each test has its own topics/exchanges.
pub fn test_config(prefix: &str) -> RelayConfig {
    RelayConfig {
        destination_prefix: prefix.to_owned(),
        poll_interval: Duration::from_millis(200),
        heartbeat_interval: Duration::from_millis(300),
        lease_ttl: Duration::from_secs(3),
        stats_interval: Duration::from_millis(300),
        ..RelayConfig::default()
    }
}

/// Starts a relay over the PostgreSQL `pool` publishing through `publisher`.
pub fn spawn_relay(
    pool: &PgPool,
    publisher: Arc<dyn Publisher>,
    config: RelayConfig,
) -> RunningRelay {
    let store = PgRelayStore::new(pool.clone(), config.table.clone());
    spawn_relay_on(Arc::new(store), publisher, config)
}

/// Starts a relay over any `store` (e.g. a `SqliteRelayStore`) publishing
/// through `publisher`.
pub fn spawn_relay_on(
    store: Arc<dyn RelayStore>,
    publisher: Arc<dyn Publisher>,
    config: RelayConfig,
) -> RunningRelay {
    let relay = Relay::new(store, publisher, config).expect("valid relay config");
    let metrics = relay.metrics();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        relay
            .run(async {
                let _ = stopped.await;
            })
            .await
    });
    RunningRelay {
        metrics,
        stop: Some(stop),
        task,
    }
}

impl RunningRelay {
    /// Aborts the relay's task, as a crash of its host would end it: no batch
    /// is finished, nothing is released; its background tasks stop with it.
    pub async fn abort(self) {
        self.task.abort();
        let _ = self.task.await;
    }

    /// Asks the relay to stop and waits for it.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(30), &mut self.task)
            .await
            .expect("relay stops within 30 s")
            .expect("relay task")
            .expect("relay ran without error");
    }
}

/// A pool whose default outbox (`eventbus_outbox`) a test can count.
pub trait OutboxPool: Sync {
    /// Rows in state `pending`.
    fn pending_rows(&self) -> impl Future<Output = i64> + Send;
}

const COUNT_PENDING: &str = "SELECT count(*) FROM eventbus_outbox WHERE state = 'pending'";

impl OutboxPool for PgPool {
    async fn pending_rows(&self) -> i64 {
        sqlx::query_scalar(COUNT_PENDING)
            .fetch_one(self)
            .await
            .expect("count pending")
    }
}

impl OutboxPool for MySqlPool {
    async fn pending_rows(&self) -> i64 {
        sqlx::query_scalar(COUNT_PENDING)
            .fetch_one(self)
            .await
            .expect("count pending")
    }
}

impl OutboxPool for SqlitePool {
    async fn pending_rows(&self) -> i64 {
        sqlx::query_scalar(COUNT_PENDING)
            .fetch_one(self)
            .await
            .expect("count pending")
    }
}

/// Pending rows in the default outbox.
pub async fn pending(pool: &impl OutboxPool) -> i64 {
    pool.pending_rows().await
}

/// Waits until no row is pending; panics with the count left after `timeout`.
pub async fn wait_drained(pool: &impl OutboxPool, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let n = pending(pool).await;
        if n == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{n} rows still pending after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Checks that, per key, the sequence numbers (first occurrences, duplicates
/// dropped) rise strictly; returns the number of duplicates seen.
pub fn assert_per_key_order(received: &[Step]) -> usize {
    use std::collections::{HashMap, HashSet};
    let mut last: HashMap<&str, u64> = HashMap::new();
    let mut seen: HashSet<(&str, u64)> = HashSet::new();
    let mut duplicates = 0;
    for s in received {
        if !seen.insert((s.key.as_str(), s.seq)) {
            duplicates += 1;
            continue;
        }
        if let Some(prev) = last.insert(s.key.as_str(), s.seq) {
            assert!(
                s.seq > prev,
                "key {} out of order: {} after {}",
                s.key,
                s.seq,
                prev
            );
        }
    }
    duplicates
}

/// Asserts that every event of `expected` arrived, nothing else did, and per
/// key the first arrivals are in order; returns the number of duplicates.
pub fn assert_delivered(expected: &[Step], received: &[Step]) -> usize {
    use std::collections::HashSet;
    let want: HashSet<(&str, u64)> = expected.iter().map(|s| (s.key.as_str(), s.seq)).collect();
    let got: HashSet<(&str, u64)> = received.iter().map(|s| (s.key.as_str(), s.seq)).collect();
    let mut missing: Vec<_> = want.difference(&got).collect();
    missing.sort();
    assert!(
        missing.is_empty(),
        "{} of {} events never arrived ({} messages received), e.g. {:?}",
        missing.len(),
        want.len(),
        received.len(),
        &missing[..missing.len().min(10)]
    );
    let unexpected: Vec<_> = got.difference(&want).take(10).collect();
    assert!(
        unexpected.is_empty(),
        "events nobody published arrived: {unexpected:?}"
    );
    let duplicates = assert_per_key_order(received);
    assert_eq!(received.len(), want.len() + duplicates);
    duplicates
}
