//! Volume with per-key order over RabbitMQ, Kafka and SQS, and commit order
//! with overlapping transactions.

use super::*;

/// `count` events over `keys` keys, published in transactions of `per_tx`
/// before the relay starts, relayed to RabbitMQ: every event arrives once,
/// in order per key, and the outbox is left empty. Returns how long the relay
/// took.
pub async fn volume_over_rabbitmq<D: TestDatabase>(
    count: u64,
    keys: u64,
    per_tx: usize,
) -> Duration {
    let db = D::migrated().await;
    let (publisher, prefix, mut queue) = rabbit("volume").await;
    let events = steps(count, keys);
    publish_steps(db.pool(), &events, per_tx).await;

    let started = Instant::now();
    let relay = relay_on(&db, publisher, test_config(&prefix));
    let received = decode_amqp(&queue.read(events.len(), Duration::from_secs(300)).await);
    let took = started.elapsed();
    wait_drained(&db, Duration::from_secs(30)).await;
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
    assert_eq!(relay.metrics.published_total(), count);
    assert_eq!(db.scalar(COUNT_ROWS).await, 0, "published rows are deleted");
    relay.stop().await;
    queue.delete().await;
    took
}

/// `count` events over `keys` keys relayed to a 4-partition Kafka topic: every
/// event exactly once, in order per key. Returns how long the relay took.
pub async fn volume_over_kafka<D: TestDatabase>(count: u64, keys: u64) -> Duration {
    let db = D::migrated().await;
    let (publisher, prefix, topic, brokers) = kafka("volume").await;
    let events = steps(count, keys);
    publish_steps(db.pool(), &events, 10_000).await;

    let started = Instant::now();
    let relay = relay_on(&db, publisher, test_config(&prefix));
    wait_drained(&db, Duration::from_secs(300)).await;
    let took = started.elapsed();
    let received =
        decode_kafka(&read_all(&brokers, &topic, events.len(), Duration::from_secs(120)).await);
    assert_eq!(
        received.len(),
        events.len(),
        "every event arrives exactly once"
    );
    assert_eq!(assert_per_key_order(&received), 0);
    assert_eq!(relay.metrics.published_total(), count);
    relay.stop().await;
    took
}

/// `count` events over `keys` keys relayed into an SQS FIFO queue on the
/// local SQS-compatible server: every event exactly once, in order per key,
/// and the outbox left empty. (Counts stay small on SQS: the local server,
/// moto, walks a queue's whole message list for every receive and delete.)
/// Returns how long relaying and reading took.
pub async fn volume_over_sqs<D: TestDatabase>(count: u64, keys: u64) -> Duration {
    let db = D::migrated().await;
    let prefix = format!("{}.", unique_name("volume"));
    let destination = format!("{prefix}{}", Step::DESTINATION);
    let events = steps(count, keys);
    publish_steps(db.pool(), &events, 1_000).await;

    let publisher = Arc::new(crate::sqs::publisher(true).await);
    let started = Instant::now();
    let relay = relay_on(&db, publisher, test_config(&prefix));
    let mut subscriber = crate::sqs::subscriber(&[&destination], true, 100).await;
    let received: Vec<Step> =
        crate::sqs::read_all(subscriber.as_mut(), events.len(), Duration::from_secs(300))
            .await
            .iter()
            .map(|(e, _)| serde_json::from_slice(&e.data).expect("a Step"))
            .collect();
    let took = started.elapsed();
    wait_drained(&db, Duration::from_secs(30)).await;
    assert_eq!(received.len(), events.len(), "each event once");
    assert_eq!(assert_per_key_order(&received), 0, "no duplicates");
    assert_eq!(relay.metrics.published_total(), count);
    assert_eq!(db.scalar(COUNT_ROWS).await, 0, "published rows are deleted");
    relay.stop().await;
    subscriber.close().await.expect("close");
    crate::sqs::delete_queues(&[&destination], &[], true).await;
    took
}

/// Two overlapping transactions on one key: the older writes first (lower
/// id) but commits last, while the newer tries to publish and commit in the
/// meantime. The newer event must not go out before the older: on
/// PostgreSQL the relay holds it back (and says so in `held_back_seconds`);
/// on MySQL and SQLite the newer writer waits for the older one. Either way
/// the consumer sees them in order.
pub async fn an_older_transaction_committing_last_is_still_delivered_first<D: TestDatabase>() {
    let db = D::migrated().await;
    let (publisher, prefix, topic, brokers) = kafka("commit_order").await;
    let outbox = Outbox::new("urn:test:relay");
    let (first, second) = (step("k", 1), step("k", 2));

    let mut older = db.pool().begin().await.expect("begin");
    outbox
        .publish(&mut older, &first)
        .await
        .expect("publish first");
    let newer = tokio::spawn({
        let pool = db.pool().clone();
        let second = second.clone();
        async move {
            let mut newer = pool.begin().await.expect("begin");
            Outbox::new("urn:test:relay")
                .publish(&mut newer, &second)
                .await
                .expect("publish second");
            newer.commit().await.expect("commit newer");
        }
    });

    let relay = relay_on(&db, publisher, test_config(&prefix));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let early = read_all(&brokers, &topic, 1, Duration::from_secs(1)).await;
    assert!(
        early.is_empty(),
        "the newer event must wait for the older transaction"
    );
    match D::COMMIT_ORDER {
        CommitOrder::HoldBack => {
            assert!(newer.is_finished(), "the newer transaction committed");
            let held = relay.metrics.snapshot().held_back_seconds;
            assert!(held >= 1.0, "held-back time is exposed (got {held})");
            assert!(relay
                .metrics
                .render_prometheus()
                .contains("eventbus_relay_held_back_seconds"));
        }
        CommitOrder::WritersWait => {
            assert!(
                !newer.is_finished(),
                "the newer writer waits for the older transaction of its partition"
            );
            assert_eq!(relay.metrics.snapshot().held_back_seconds, 0.0);
        }
    }

    older.commit().await.expect("commit older");
    tokio::time::timeout(Duration::from_secs(20), newer)
        .await
        .expect("the newer transaction finishes once the older committed")
        .expect("newer transaction task");
    wait_drained(&db, Duration::from_secs(20)).await;
    let received = decode_kafka(&read_all(&brokers, &topic, 2, Duration::from_secs(20)).await);
    assert_eq!(
        received,
        vec![first, second],
        "consumer sees them in id order"
    );
    relay.stop().await;
}
