//! The relay suite, on any database: the store's claiming and fencing, volume
//! with per-key order over RabbitMQ, Kafka and SQS, commit order with overlapping
//! transactions, poison events, rows from other writers that are not events,
//! metrics and status, plain-SQL rows, retention, several relays sharing
//! the outbox while one of them dies, and in-process wake-ups.

mod failures;
mod fleet;
mod operations;
mod store;
mod volume;

pub use failures::*;
pub use fleet::*;
pub use operations::*;
pub use store::*;
pub use volume::*;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use eventbus::relay::{
    ClaimLimits, Lease, Rejection, RelayConfig, RelayMetrics, RelayStore, Retention,
};
use eventbus::transport::kafka::envelope_from_message;
use eventbus::transport::kafka::rdkafka::message::{Message, OwnedMessage};
use eventbus::transport::kafka::KafkaPublisher;
use eventbus::transport::rabbitmq::RabbitPublisher;
use eventbus::{Event, Outbox, Publisher};
use uuid::Uuid;

use crate::backend::{CommitOrder, TestDatabase};
use crate::harness::metric;
use crate::kafka::{publisher_builder, publisher_with_topic, read_all};
use crate::rabbitmq::TestQueue;
use crate::relay::{assert_per_key_order, publish_steps, spawn_relay_on, steps, test_config, Step};
use crate::{amqp_url, kafka_brokers, unique_name};

const COUNT_PENDING: &str = "SELECT count(*) FROM eventbus_outbox WHERE state = 'pending'";
const COUNT_ROWS: &str = "SELECT count(*) FROM eventbus_outbox";
const COUNT_PARKED: &str = "SELECT count(*) FROM eventbus_outbox WHERE state = 'failed'";

/// Rows waiting to be published.
pub async fn pending<D: TestDatabase>(db: &D) -> i64 {
    db.scalar(COUNT_PENDING).await
}

/// Waits until no row is pending; panics with the count left after `timeout`.
pub async fn wait_drained<D: TestDatabase>(db: &D, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let n = pending(db).await;
        if n == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{n} rows still pending after {timeout:?} on {}",
            D::NAME
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub(crate) fn step(key: &str, seq: u64) -> Step {
    Step {
        key: key.into(),
        seq,
        pad: String::new(),
    }
}

fn decode_kafka(messages: &[OwnedMessage]) -> Vec<Step> {
    messages
        .iter()
        .map(|m| serde_json::from_slice(m.payload().expect("payload")).expect("a Step"))
        .collect()
}

pub(crate) fn decode_amqp(
    deliveries: &[eventbus::transport::rabbitmq::lapin::message::Delivery],
) -> Vec<Step> {
    deliveries
        .iter()
        .map(|d| serde_json::from_slice(&d.data).expect("a Step"))
        .collect()
}

/// A fresh exchange (under a unique destination prefix) with a queue bound to
/// it, and a publisher.
pub(crate) async fn rabbit(tag: &str) -> (Arc<RabbitPublisher>, String, TestQueue) {
    let prefix = format!("{}.", unique_name(tag));
    let exchange = format!("{prefix}{}", Step::DESTINATION);
    let queue = TestQueue::bind_all(&exchange).await;
    let publisher = RabbitPublisher::connect(&amqp_url().await)
        .await
        .expect("connect to RabbitMQ");
    (Arc::new(publisher), prefix, queue)
}

/// A fresh topic of 4 partitions (under a unique destination prefix) and a
/// publisher: (publisher, prefix, topic, brokers).
async fn kafka(tag: &str) -> (Arc<KafkaPublisher>, String, String, String) {
    let brokers = kafka_brokers().await;
    let prefix = format!("{}.", unique_name(tag));
    let topic = format!("{prefix}{}", Step::DESTINATION);
    let publisher = publisher_with_topic(&brokers, &topic, 4).await;
    (Arc::new(publisher), prefix, topic, brokers)
}

/// Starts a relay on `db`'s own pool.
pub(crate) fn relay_on<D: TestDatabase>(
    db: &D,
    publisher: Arc<dyn Publisher>,
    config: RelayConfig,
) -> crate::relay::RunningRelay {
    spawn_relay_on(D::relay_store(db.pool()), publisher, config)
}
