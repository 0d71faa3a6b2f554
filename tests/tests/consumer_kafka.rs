//! The consumer over a real Kafka-protocol broker and PostgreSQL: the
//! scenarios shared with the RabbitMQ and SQS suites
//! (`eventbus_tests::consumer`) — effectively once under redeliveries and a
//! crash, what the weaker modes cost under a crash, dead letters and
//! re-driving, the in-flight bound, point-to-point versus publish-subscribe
//! groups, batch handlers and the rate limit — and what only Kafka has:
//! per-key order with concurrent partitions, a released message coming round
//! again, and a rebalance in the middle of a batch.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventbus::consumer::{BatchContext, Consumer, Context, DeliveryMode};
use eventbus::transport::kafka::KafkaPublisher;
use eventbus::transport::{Settle, Subscriber};
use eventbus::{Envelope, Event};
use eventbus_tests::consumer::{
    create_effects, envelope, publish, record_batch, run, scalar, wait_count, wait_until, Gauge,
    ALL_EFFECTS, DISTINCT_EFFECTS, REPEATED_EFFECTS,
};
use eventbus_tests::kafka::{self, committed_total, java_partition, one_per_batch_publisher};
use eventbus_tests::relay::{assert_per_key_order, steps, Step};
use eventbus_tests::{kafka_brokers, unique_name, TestDb};
use sqlx::Postgres;

// The shared scenarios this binary runs: its row in `tests/src/matrix.rs`.
eventbus_tests::matrix!(consumer_kafka);

// ---------------------------------------------------------------- helpers

/// A fresh topic with `partitions` partitions and a publisher for it.
async fn topic(tag: &str, partitions: u32) -> (String, String, Arc<KafkaPublisher>) {
    let brokers = kafka_brokers().await;
    let topic = format!("{}.{}", unique_name(tag), Step::DESTINATION);
    let publisher = one_per_batch_publisher(&brokers, &topic, partitions).await;
    (brokers, topic, Arc::new(publisher))
}

/// Waits until group `group` has committed all `messages` of the fresh `topic`.
async fn wait_committed(
    brokers: &str,
    group: &str,
    topic: &str,
    messages: i64,
    timeout: Duration,
) -> Duration {
    let start = Instant::now();
    loop {
        let committed = committed_total(brokers, group, topic).await;
        assert!(
            committed <= messages,
            "group {group} committed {committed} offsets of {topic}, which holds only {messages}"
        );
        if committed == messages {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < timeout,
            "group {group} committed {committed} of {messages} messages of {topic} within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

// ------------------------------------------------------------------ tests

/// 2,000 events over 16 keys on 4 partitions (several keys each), handled by
/// one in-process consumer: the events of each key are handled in order, and
/// more than one partition is in progress at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn per_key_order_with_4_partitions_and_concurrent_processing() {
    let db = TestDb::migrated().await;
    let (brokers, topic, publisher) = topic("order", 4).await;
    let events = steps(2_000, 16);
    let mut keys_per_partition = [0_usize; 4];
    for k in 0..16 {
        let partition = java_partition(format!("key-{k}").as_bytes(), 4);
        keys_per_partition[usize::try_from(partition).expect("partition")] += 1;
    }
    assert!(
        keys_per_partition.iter().all(|&n| n >= 2),
        "the test needs several keys per partition: {keys_per_partition:?}"
    );
    let envelopes: Vec<Envelope> = events.iter().map(envelope).collect();
    publish(&*publisher, &topic, &envelopes).await;

    let handled = Arc::new(Mutex::new(Vec::<Step>::new()));
    let busy = Arc::new(Gauge::default());
    let group = unique_name("order_group");
    let consumer = Consumer::builder(group.clone())
        .mode(DeliveryMode::AtLeastOnce)
        .on({
            let handled = Arc::clone(&handled);
            let busy = Arc::clone(&busy);
            move |_ctx: Context<Postgres>, step: Step| {
                let handled = Arc::clone(&handled);
                let busy = Arc::clone(&busy);
                async move {
                    busy.up();
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    handled.lock().expect("handled").push(step);
                    busy.down();
                    Ok(())
                }
            }
        })
        .build(
            db.pool.clone(),
            kafka::subscriber(&brokers, &group, &[&topic], 64).await,
            publisher.clone(),
        )
        .expect("consumer");
    let started = Instant::now();
    let running = run(consumer);
    let took = wait_until("every event handled", Duration::from_secs(180), || {
        let handled = handled.lock().expect("handled");
        handled
            .iter()
            .map(|s| (s.key.as_str(), s.seq))
            .collect::<HashSet<_>>()
            .len()
            == events.len()
    })
    .await;
    running.stop().await;

    let handled = handled.lock().expect("handled").clone();
    let repeats = assert_per_key_order(&handled);
    eprintln!(
        "per-key order: {} handled ({repeats} repeats) in {took:?} ({:?} with start-up), \
         at most {} handlers at once",
        handled.len(),
        started.elapsed(),
        busy.max()
    );
    assert!(
        busy.max() > 1,
        "partitions must be handled concurrently (at most {} at once)",
        busy.max()
    );
}

/// The next message of `subscriber`: its event id and settle handle.
async fn receive(subscriber: &mut dyn Subscriber) -> (String, Box<dyn Settle>) {
    let received = tokio::time::timeout(Duration::from_secs(60), subscriber.next())
        .await
        .expect("a message within 60 s")
        .expect("the subscription goes on")
        .expect("no receive error");
    let id = received.envelope.as_ref().expect("a CloudEvent").id.clone();
    (id, received.settle)
}

/// A released message comes round again, with the ones behind it, in order;
/// acknowledgements of later messages handed out before the release do not
/// count, and the group's committed offset never passes the released message.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_released_message_comes_round_again_and_nothing_commits_past_it() {
    let (brokers, topic, publisher) = topic("release", 1).await;
    let envelopes: Vec<Envelope> = steps(10, 1).iter().map(envelope).collect();
    publish(&*publisher, &topic, &envelopes).await;
    let ids: Vec<&str> = envelopes.iter().map(|e| e.id.as_str()).collect();
    let group = unique_name("release_group");
    let mut subscriber = kafka::subscriber(&brokers, &group, &[&topic], 64).await;
    let mut first = Vec::new();
    for _ in 0..5 {
        first.push(receive(subscriber.as_mut()).await);
    }
    let seen: Vec<&str> = first.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(seen, ids[..5], "in offset order");
    let mut settles = first.into_iter().map(|(_, settle)| settle);
    settles.next().expect("0").ack().await.expect("ack");
    settles
        .next()
        .expect("1")
        .ack_durably()
        .await
        .expect("ack and commit");
    assert_eq!(committed_total(&brokers, &group, &topic).await, 2);
    settles.next().expect("2").release().await.expect("release");
    let behind = settles.next().expect("3");
    assert!(
        behind.ack_durably().await.is_err(),
        "an acknowledgement behind a released message does not count"
    );
    assert_eq!(
        committed_total(&brokers, &group, &topic).await,
        2,
        "nothing is committed past the released message"
    );
    assert!(settles.next().expect("4").ack().await.is_err());

    let mut again = Vec::new();
    for _ in 2..10 {
        let (id, settle) = receive(subscriber.as_mut()).await;
        settle.ack().await.expect("ack");
        again.push(id);
    }
    assert_eq!(
        again,
        ids[2..],
        "the released message and everything behind it, in order"
    );
    subscriber.close().await.expect("close commits");
    assert_eq!(committed_total(&brokers, &group, &topic).await, 10);
}

/// Consumer A — a slow batch handler (1 s per batch of up to 16),
/// effectively once, on 4 partitions — is in the middle of a batch when
/// consumer B joins its group, and the partitions are shared out anew. A's
/// acknowledgements for partitions it lost count for nothing, B starts them
/// from the last committed offset, and the inbox makes whichever of A and B
/// commits second find the events done.
///
/// Afterwards: every event has exactly one effect and one inbox row, both
/// consumers took part, the group committed every offset and no more; and a
/// third consumer of the group, started after both stopped, receives nothing
/// of the old events — only one published for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rebalance_mid_batch_loses_nothing_and_applies_nothing_twice() {
    let started = Instant::now();
    let db = TestDb::migrated().await;
    create_effects(&db.pool).await;
    let (brokers, topic, publisher) = topic("rebalance", 4).await;
    let envelopes: Vec<Envelope> = steps(1_200, 40).iter().map(envelope).collect();
    publish(&*publisher, &topic, &envelopes).await;
    let group = unique_name("rebalance_group");

    let member = |name: &'static str, pause: Duration, busy: Arc<Gauge>| {
        let pool = db.pool.clone();
        let brokers = brokers.clone();
        let topic = topic.clone();
        let group = group.clone();
        let publisher = publisher.clone();
        async move {
            let consumer = Consumer::builder(group.clone())
                .max_in_flight(64)
                .on_batch(16, move |ctx: BatchContext<Postgres>, steps: Vec<Step>| {
                    let busy = Arc::clone(&busy);
                    async move {
                        busy.up();
                        tokio::time::sleep(pause).await;
                        let written = record_batch(&ctx, name, &steps).await;
                        busy.down();
                        written
                    }
                })
                .build(
                    pool,
                    kafka::subscriber(&brokers, &group, &[&topic], 64).await,
                    publisher,
                )
                .expect("consumer");
            run(consumer)
        }
    };
    let a_busy = Arc::new(Gauge::default());
    let a = member("a", Duration::from_secs(1), Arc::clone(&a_busy)).await;
    wait_count(&db.pool, ALL_EFFECTS, 100, Duration::from_secs(120)).await;
    wait_until(
        "A is in the middle of a batch",
        Duration::from_secs(10),
        || a_busy.now() > 0,
    )
    .await;
    let at_join = scalar(&db.pool, ALL_EFFECTS).await;
    let b = member("b", Duration::from_millis(20), Arc::new(Gauge::default())).await;
    wait_count(
        &db.pool,
        "SELECT count(*) FROM effects WHERE member = 'b'",
        1,
        Duration::from_secs(120),
    )
    .await;
    let moved_after = started.elapsed();
    wait_count(&db.pool, DISTINCT_EFFECTS, 1_200, Duration::from_secs(180)).await;
    wait_committed(&brokers, &group, &topic, 1_200, Duration::from_secs(60)).await;
    let a = a.stop().await;
    let b = b.stop().await;

    let of = |member: &'static str| {
        let pool = db.pool.clone();
        async move {
            scalar(
                &pool,
                &format!("SELECT count(*) FROM effects WHERE member = '{member}'"),
            )
            .await
        }
    };
    let (by_a, by_b) = (of("a").await, of("b").await);
    eprintln!(
        "rebalance: B joined at {at_join} effects and handled from {moved_after:?}; \
         A {by_a} effects ({} repeats absorbed), B {by_b} ({} absorbed)",
        a.metrics().duplicates(),
        b.metrics().duplicates()
    );
    assert!(at_join < 1_200, "B joined mid-run");
    assert!(
        by_a > 0 && by_b > 0,
        "the partitions moved: A {by_a}, B {by_b}"
    );
    assert_eq!(scalar(&db.pool, ALL_EFFECTS).await, 1_200, "none twice");
    assert_eq!(scalar(&db.pool, REPEATED_EFFECTS).await, 0);
    assert_eq!(
        scalar(&db.pool, "SELECT count(*) FROM eventbus_inbox").await,
        1_200
    );
    assert_eq!(committed_total(&brokers, &group, &topic).await, 1_200);

    // A newcomer to the group starts where A and B left off: at the end.
    let c = member("c", Duration::ZERO, Arc::new(Gauge::default())).await;
    let sentinel = envelope(&Step {
        key: "sentinel".into(),
        seq: 0,
        pad: String::new(),
    });
    publish(&*publisher, &topic, std::slice::from_ref(&sentinel)).await;
    wait_count(
        &db.pool,
        "SELECT count(*) FROM effects WHERE member = 'c'",
        1,
        Duration::from_secs(120),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let c = c.stop().await;
    assert_eq!(
        (c.metrics().handled(), c.metrics().duplicates()),
        (1, 0),
        "the newcomer got only the new event"
    );
    assert_eq!(
        scalar(
            &db.pool,
            &format!(
                "SELECT count(*) FROM effects WHERE member = 'c' AND event_id = '{}'",
                sentinel.id
            )
        )
        .await,
        1
    );
    assert_eq!(scalar(&db.pool, ALL_EFFECTS).await, 1_201);
    eprintln!("rebalance test took {:?}", started.elapsed());
}
