//! How work flows to consumers on any [`Broker`]: a slow handler under an
//! in-flight bound (backpressure), and competing consumers in one group
//! (point-to-point) next to a second group that gets everything
//! (publish-subscribe).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use eventbus::consumer::{Consumer, Context, DeliveryMode};
use eventbus::Envelope;
use sqlx::Postgres;

use super::{
    create_effects, envelope, publish, record, run, scalar, wait_count, wait_until, Broker,
    Counting, Gauge,
};
use crate::relay::{steps, Step};
use crate::{unique_name, TestDb};

/// What one run of a slow handler saw.
#[derive(Debug, Clone, Copy)]
pub struct SlowRun {
    /// The subscriber's in-flight bound (Kafka's and SQS's buffer, RabbitMQ's
    /// prefetch).
    pub subscriber_bound: usize,
    /// The consumer's `max_in_flight`.
    pub consumer_bound: usize,
    /// The most messages handed out and not settled at once.
    pub unsettled: usize,
    /// The most handlers running at once.
    pub busy: usize,
    /// Until every event was handled.
    pub took: Duration,
}

/// Runs 240 events over 48 keys (on Kafka: 12 partitions, room for 12
/// handlers at once) through a handler that sleeps 50 ms, with the
/// subscriber's and the consumer's in-flight bounds as given.
async fn slow_run(broker: &Broker, subscriber_bound: usize, consumer_bound: usize) -> SlowRun {
    let db = TestDb::migrated().await;
    let (destination, publisher) = broker.destination("slow", 12).await;
    let events = steps(240, 48);
    let unsettled = Arc::new(Gauge::default());
    let busy = Arc::new(Gauge::default());
    let handled = Arc::new(AtomicUsize::new(0));
    let group = unique_name("slow_group");
    let subscriber = Counting {
        inner: broker
            .subscriber(&group, &destination, subscriber_bound)
            .await,
        unsettled: Arc::clone(&unsettled),
    };
    let envelopes: Vec<Envelope> = events.iter().map(envelope).collect();
    publish(publisher.as_ref(), &destination, &envelopes).await;

    let consumer = Consumer::builder(group.clone())
        .max_in_flight(consumer_bound)
        .on({
            let busy = Arc::clone(&busy);
            let handled = Arc::clone(&handled);
            move |_ctx: Context<Postgres>, _step: Step| {
                let busy = Arc::clone(&busy);
                let handled = Arc::clone(&handled);
                async move {
                    busy.up();
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    busy.down();
                    handled.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                }
            }
        })
        .build(db.pool.clone(), Box::new(subscriber), publisher.clone())
        .expect("consumer");
    let running = run(consumer);
    let took = wait_until("every event handled", Duration::from_secs(180), || {
        handled.load(Ordering::SeqCst) >= events.len()
    })
    .await;
    running.stop().await;
    assert_eq!(unsettled.now(), 0, "everything settled once stopped");
    broker.clean_up(&[&group], &[&destination]).await;
    SlowRun {
        subscriber_bound,
        consumer_bound,
        unsettled: unsettled.max(),
        busy: busy.max(),
        took,
    }
}

/// A handler that sleeps 50 ms, with work for 12 at once: a bound of 5 —
/// the consumer's, or the subscriber's — keeps at most 5 messages unsettled
/// and at most 5 handlers running, and the bound is used, not undercut (at
/// least 4 at once: the slots are spread over partitions and keys, not
/// filled from one lane's run of fetched messages).
pub async fn backpressure_scenario(broker: &Broker) -> Vec<SlowRun> {
    let mut runs = Vec::new();
    for (subscriber_bound, consumer_bound) in [(64, 5), (5, 64)] {
        let run = slow_run(broker, subscriber_bound, consumer_bound).await;
        eprintln!("slow handler on {}: {run:?}", broker.name());
        assert!(run.unsettled <= 5, "at most 5 unsettled: {run:?}");
        assert!(run.busy <= 5, "at most 5 handlers at once: {run:?}");
        assert!(run.busy >= 4, "up to 5 lanes are handled at once: {run:?}");
        runs.push(run);
    }
    runs
}

/// Waits until `group` has acknowledged every one of `messages` on
/// `destination`; panics after `timeout`.
async fn wait_acknowledged(
    broker: &Broker,
    group: &str,
    destination: &str,
    messages: i64,
    timeout: Duration,
) {
    let start = Instant::now();
    loop {
        let backlog = broker.backlog(group, destination, messages).await;
        if backlog == 0 {
            return;
        }
        assert!(
            start.elapsed() < timeout,
            "{group} left {backlog} of {messages} messages within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Two consumers of one group share the work (each handles some — on RabbitMQ
/// and SQS at least 30% — and together every event exactly once); a consumer
/// of another group gets every event.
/// 1,000 events over 40 keys, published over ~10 s, so that work is left for
/// both members of the shared group whenever they join. Returns how long it
/// took from the consumers' start.
pub async fn groups_scenario(broker: &Broker) -> Duration {
    let db = TestDb::migrated().await;
    create_effects(&db.pool).await;
    let shared = unique_name("shared");
    let other = unique_name("other");
    let (destination, publisher) = broker
        .destination_for_groups("groups", 4, &[&shared, &other])
        .await;

    // No inbox where the broker hands each message of a group to one member
    // once: a second delivery would show up as a second effect. Kafka hands
    // what was handled but not yet committed to the new owner of a partition
    // when the second member joins (at least once), so there the inbox
    // absorbs those repeats.
    let mode = match broker {
        Broker::Kafka(_) => DeliveryMode::EffectivelyOnce,
        Broker::RabbitMq(_) | Broker::Sqs(_) => DeliveryMode::AtLeastOnce,
    };
    let member = |group: &str, name: &'static str| {
        let group = group.to_owned();
        let pool = db.pool.clone();
        let publisher = publisher.clone();
        let source = broker.group_destination(&destination, &group);
        async move {
            let consumer = Consumer::builder(group.clone())
                .mode(mode)
                .on(move |ctx: Context<Postgres>, step: Step| async move {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    record(&ctx, name, &step).await
                })
                .build(
                    pool,
                    broker.subscriber(&group, &source, 64).await,
                    publisher,
                )
                .expect("consumer");
            run(consumer)
        }
    };
    let started = Instant::now();
    let a1 = member(&shared, "a1").await;
    let a2 = member(&shared, "a2").await;
    let b = member(&other, "b").await;

    let events = steps(1_000, 40);
    let envelopes: Vec<Envelope> = events.iter().map(envelope).collect();
    for round in envelopes.chunks(50) {
        publish(publisher.as_ref(), &destination, round).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let of = |members: &str| {
        format!(
            "SELECT count(*) FROM (SELECT DISTINCT key, seq FROM effects \
             WHERE member IN ({members})) d"
        )
    };
    wait_count(&db.pool, &of("'a1', 'a2'"), 1_000, Duration::from_secs(180)).await;
    wait_count(&db.pool, &of("'b'"), 1_000, Duration::from_secs(180)).await;
    for group in [&shared, &other] {
        let source = broker.group_destination(&destination, group);
        wait_acknowledged(broker, group, &source, 1_000, Duration::from_secs(60)).await;
    }
    let took = started.elapsed();
    let a1 = a1.stop().await;
    let a2 = a2.stop().await;
    b.stop().await;

    let count = |member: &'static str| {
        let pool = db.pool.clone();
        async move {
            scalar(
                &pool,
                &format!("SELECT count(*) FROM effects WHERE member = '{member}'"),
            )
            .await
        }
    };
    let (n1, n2, nb) = (count("a1").await, count("a2").await, count("b").await);
    eprintln!(
        "groups on {}: a1 {n1}, a2 {n2} (inbox repeats {} + {}), b {nb}, in {took:?}",
        broker.name(),
        a1.metrics().duplicates(),
        a2.metrics().duplicates()
    );
    // RabbitMQ and SQS hand out messages one by one, to whichever member
    // has room: both take a fair part. On Kafka a member's part is that of
    // the partitions it owns, after however long its join took.
    let fair = match broker {
        Broker::Kafka(_) => 1,
        Broker::RabbitMq(_) | Broker::Sqs(_) => 300,
    };
    assert!(
        n1 >= fair && n2 >= fair,
        "both members of a group get work (at least {fair} each): {n1} / {n2}"
    );
    assert_eq!(
        n1 + n2,
        1_000,
        "together, the shared group handles each event once"
    );
    assert_eq!(nb, 1_000, "the other group gets every event");
    let queues: Vec<String> = [&shared, &other]
        .iter()
        .map(|g| broker.group_destination(&destination, g))
        .collect();
    let mut destinations: Vec<&str> = queues.iter().map(String::as_str).collect();
    destinations.push(&destination);
    destinations.sort_unstable();
    destinations.dedup();
    broker.clean_up(&[&shared, &other], &destinations).await;
    took
}
