//! The consumer over real RabbitMQ and PostgreSQL: the scenarios shared with
//! the Kafka and SQS suites (`eventbus_tests::consumer`) — effectively once
//! under redeliveries and a crash, the cost of the weaker modes under a
//! crash, dead letters and re-driving, the in-flight bound, point-to-point
//! versus publish-subscribe groups, batch handlers and the rate limit — the
//! inbox suite shared with MySQL and SQLite, and what only RabbitMQ has: the
//! broker's prefetch, single active consumer, reconnecting.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventbus::consumer::{Consumer, Context, DeliveryMode};
use eventbus::transport::rabbitmq::RabbitPublisher;
use eventbus::transport::Subscriber;
use eventbus::{Envelope, Event};
use eventbus_tests::consumer::{
    create_effects, envelope, publish, record, run, scalar, wait_count,
};
use eventbus_tests::rabbitmq::{self, delete_exchange, delete_group};
use eventbus_tests::relay::{
    assert_per_key_order, publish_steps, spawn_relay, steps, test_config, Step,
};
use eventbus_tests::{amqp_url, unique_name, TestDb};
use sqlx::Postgres;

// The shared scenarios this binary runs: its row in `tests/src/matrix.rs`.
eventbus_tests::matrix!(consumer_rabbitmq);

// ---------------------------------------------------------------- helpers

async fn publisher() -> Arc<RabbitPublisher> {
    Arc::new(
        RabbitPublisher::connect(&amqp_url().await)
            .await
            .expect("connect to RabbitMQ"),
    )
}

/// Names for one test: a destination (exchange) and a group prefix.
fn names(tag: &str) -> (String, String) {
    let prefix = format!("{}.", unique_name(tag));
    (format!("{prefix}{}", Step::DESTINATION), prefix)
}

// ------------------------------------------------------------------ tests

/// Without a consumer: with prefetch 5 and no acknowledgement the broker
/// delivers 5 messages, then nothing until one is acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_broker_delivers_no_more_than_the_prefetch_unacknowledged() {
    let url = amqp_url().await;
    let (exchange, prefix) = names("prefetch");
    let group = format!("{prefix}raw");
    let mut subscriber = rabbitmq::subscriber(&url, &group, &[&exchange], 5).await;
    let publisher = publisher().await;
    let envelopes: Vec<Envelope> = steps(20, 20).iter().map(envelope).collect();
    publish(&*publisher, &exchange, &envelopes).await;
    let mut held = Vec::new();
    for _ in 0..5 {
        let m = tokio::time::timeout(Duration::from_secs(10), subscriber.next())
            .await
            .expect("a message within 10 s")
            .expect("open")
            .expect("received");
        held.push(m);
    }
    let sixth = tokio::time::timeout(Duration::from_secs(1), subscriber.next()).await;
    assert!(
        sixth.is_err(),
        "a sixth message arrived with 5 unacknowledged: {sixth:?}"
    );
    held.pop().expect("held").settle.ack().await.expect("ack");
    let sixth = tokio::time::timeout(Duration::from_secs(10), subscriber.next()).await;
    assert!(
        matches!(sixth, Ok(Some(Ok(_)))),
        "one acknowledgement lets one more in: {sixth:?}"
    );
    drop(sixth);
    drop(held);
    subscriber.close().await.expect("close");
    delete_group(&group).await;
    delete_exchange(&exchange).await;
}

/// Two consumers in one group on a single-active-consumer queue, events from
/// the real relay: one consumer handles at a time; when it leaves halfway the
/// other takes over; per key, the order of handling is the order of publication.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn single_active_consumer_keeps_per_key_order() {
    let started = Instant::now();
    let db = TestDb::migrated().await;
    create_effects(&db.pool).await;
    let url = amqp_url().await;
    let (exchange, prefix) = names("sac");
    let group = format!("{prefix}ordered");
    let handled: Arc<Mutex<Vec<(&'static str, Step)>>> = Arc::new(Mutex::new(Vec::new()));
    let publisher = publisher().await;
    let make = |member: &'static str, subscriber: Box<dyn Subscriber>| {
        let handled = Arc::clone(&handled);
        Consumer::builder(&group)
            .mode(DeliveryMode::AtLeastOnce)
            // Fewer than the prefetch: at the hand-over, delivered messages
            // still wait in the leaving subscriber's buffer.
            .max_in_flight(4)
            .on(move |ctx: Context<Postgres>, step: Step| {
                let handled = Arc::clone(&handled);
                async move {
                    // A little work, so that messages queue up in the lanes.
                    if step.seq.is_multiple_of(10) {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    handled.lock().expect("lock").push((member, step.clone()));
                    record(&ctx, member, &step).await
                }
            })
            .build(db.pool.clone(), subscriber, publisher.clone())
            .expect("consumer")
    };
    let subscribe = || async {
        Box::new(
            rabbitmq::subscriber_builder(&url, &group, &[&exchange], 50)
                .single_active_consumer(true)
                .connect()
                .await
                .expect("subscribe"),
        ) as Box<dyn Subscriber>
    };
    let first = run(make("first", subscribe().await));
    let second = run(make("second", subscribe().await));

    let events = steps(4_000, 40);
    publish_steps(&db.pool, &events, 500).await;
    let relay = spawn_relay(&db.pool, publisher.clone(), test_config(&prefix));
    wait_count(
        &db.pool,
        "SELECT count(*) FROM effects",
        1_500,
        Duration::from_secs(120),
    )
    .await;
    // The active consumer leaves; the standby takes over where it stopped.
    let (active, standby) = {
        let h = handled.lock().expect("lock");
        assert!(
            h.iter().all(|(m, _)| *m == h[0].0),
            "two consumers handled at once"
        );
        if h[0].0 == "first" {
            (first, second)
        } else {
            (second, first)
        }
    };
    active.stop().await;
    wait_count(
        &db.pool,
        "SELECT count(DISTINCT (key, seq)) FROM effects",
        4_000,
        Duration::from_secs(120),
    )
    .await;
    relay.stop().await;
    standby.stop().await;

    let handled = handled.lock().expect("lock").clone();
    let members: Vec<&str> = handled.iter().map(|(m, _)| *m).collect();
    let switches = members.windows(2).filter(|w| w[0] != w[1]).count();
    assert_eq!(switches, 1, "one consumer, then the other — never both");
    let steps_in_order: Vec<Step> = handled.into_iter().map(|(_, s)| s).collect();
    let duplicates = assert_per_key_order(&steps_in_order);
    assert_eq!(steps_in_order.len() - duplicates, 4_000);
    println!(
        "single active consumer: 4,000 in order with one hand-over, {duplicates} repeats, {:?}",
        started.elapsed()
    );
    delete_group(&group).await;
    delete_exchange(&exchange).await;
}

/// The connection dies under a subscriber (a proxy cuts it): messages
/// delivered and not acknowledged come back, marked redelivered; settling them
/// on the dead channel fails instead of hanging; the subscriber reconnects by
/// itself. Then a consumer through the same proxy, cut three times while
/// handling 2,000 events, still ends with each effect exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_subscriber_reconnects_and_unacknowledged_messages_come_back() {
    let started = Instant::now();
    let (proxy, proxied) = rabbitmq::TcpProxy::for_amqp().await;
    let (exchange, prefix) = names("reconnect");
    let group = format!("{prefix}g");
    let mut subscriber = rabbitmq::subscriber(&proxied, &group, &[&exchange], 10).await;
    let publisher = publisher().await;
    let envelopes: Vec<Envelope> = steps(5, 5).iter().map(envelope).collect();
    publish(&*publisher, &exchange, &envelopes).await;
    let mut held = Vec::new();
    for _ in 0..5 {
        let m = tokio::time::timeout(Duration::from_secs(10), subscriber.next())
            .await
            .expect("a message within 10 s")
            .expect("open")
            .expect("received");
        assert!(!m.redelivered);
        held.push(m);
    }
    proxy.cut().await;
    // The subscriber notices the loss (an acknowledgement sent at the very
    // moment of the cut may still look sent: the broker requeues it anyway).
    let noticed = tokio::time::timeout(Duration::from_secs(10), subscriber.next()).await;
    match noticed {
        Ok(Some(Err(e))) => assert!(e.is_transient(), "{e}"),
        other => panic!("expected the lost connection to be reported: {other:?}"),
    }
    let first = held.pop().expect("held");
    let settled = tokio::time::timeout(Duration::from_secs(5), first.settle.ack()).await;
    assert!(
        matches!(settled, Ok(Err(_))),
        "acknowledging on a dead channel fails at once: {settled:?}"
    );
    let mut again = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while again.len() < 5 {
        assert!(Instant::now() < deadline, "{} of 5 came back", again.len());
        match tokio::time::timeout(Duration::from_secs(10), subscriber.next()).await {
            Ok(Some(Ok(m))) => {
                assert!(
                    m.redelivered,
                    "a message unacknowledged on the dead connection"
                );
                again.insert(m.envelope.as_ref().expect("event").id.clone());
                m.settle.ack().await.expect("ack on the new channel");
            }
            Ok(Some(Err(e))) => assert!(e.is_transient(), "{e}"),
            other => panic!("subscription ended: {other:?}"),
        }
    }
    let ids: HashSet<String> = envelopes.iter().map(|e| e.id.clone()).collect();
    assert_eq!(again, ids);
    drop(held);
    subscriber.close().await.expect("close");

    // A consumer through cuts: nothing lost, nothing applied twice.
    let db = TestDb::migrated().await;
    create_effects(&db.pool).await;
    let consumer = Consumer::builder(&group)
        .on(|ctx: Context<Postgres>, step: Step| async move { record(&ctx, "", &step).await })
        .build(
            db.pool.clone(),
            rabbitmq::subscriber(&proxied, &group, &[&exchange], 50).await,
            publisher.clone(),
        )
        .expect("consumer");
    let running = run(consumer);
    let through_cuts = Instant::now();
    let envelopes: Vec<Envelope> = steps(2_000, 50).iter().map(envelope).collect();
    publish(&*publisher, &exchange, &envelopes).await;
    for n in [300, 900, 1_500] {
        wait_count(
            &db.pool,
            "SELECT count(*) FROM effects",
            n,
            Duration::from_secs(60),
        )
        .await;
        proxy.cut().await;
    }
    wait_count(
        &db.pool,
        "SELECT count(*) FROM effects",
        2_000,
        Duration::from_secs(60),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let consumer = running.stop().await;
    // About 3 s on a quiet machine (25 s seen under a load of 11 on 2 cores);
    // an acknowledgement stuck on a dead channel until the broker timeout
    // (30 s) would hold its lane at least that long.
    assert!(
        through_cuts.elapsed() < Duration::from_secs(30),
        "{:?}",
        through_cuts.elapsed()
    );
    assert_eq!(
        scalar(&db.pool, "SELECT count(*) FROM effects").await,
        2_000
    );
    assert_eq!(
        scalar(&db.pool, "SELECT count(DISTINCT event_id) FROM effects").await,
        2_000
    );
    println!(
        "through 3 cuts: 2,000 effects once, {} redeliveries absorbed by the inbox, {:?}",
        consumer.metrics().duplicates(),
        started.elapsed()
    );
    delete_group(&group).await;
    delete_exchange(&exchange).await;
}
