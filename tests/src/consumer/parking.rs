//! Parking on any [`Broker`]: what a consumer sets aside in its parked table
//! (`<inbox>_parked`) keeps its key's order while the other keys flow, and a
//! dead letter the broker refuses ends in the table instead of looping.
//!
//! - [`newer_version_keeps_key_order_scenario`]: m5 of a newer schema version,
//!   then m6 and m7 of the same key: no effect of m6 before m5.
//! - [`delayed_retry_scenario`]: a key waiting for its delayed retry while
//!   1,000 messages of other keys go through the same lane.
//! - [`refused_dead_letter_scenario`]: the group's dead-letter destination
//!   refuses (a deleted queue, an oversized letter); the letter is kept in
//!   the table, handled once, and the queue flows.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use eventbus::consumer::{dead_letter, Consumer, Context, NewerVersions, RetryPolicy};
use eventbus::{BoxError, Envelope, Event, Publisher};
use serde::{Deserialize, Serialize};
use sqlx::{PgPool, Postgres};

use super::{
    create_effects, envelope, publish, record, run, scalar, wait_count, wait_until, Broker,
};
use crate::relay::Step;
use crate::{rabbitmq, unique_name, TestDb};

/// [`Step`] as an upgraded producer writes it: schema version 2, the same
/// fields. Only an upgraded consumer knows it.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema, eventbus::Event)]
#[event(type = "com.example.test.step", version = 2, destination = "steps", key = key)]
pub struct StepV2 {
    /// Ordering key.
    pub key: String,
    /// Position within the key.
    pub seq: u64,
    /// Padding.
    #[serde(default)]
    pub pad: String,
}

/// `step` as a message of schema version 2.
fn newer(step: &Step) -> Envelope {
    let mut e = envelope(step);
    e.dataschema = Some(StepV2::dataschema());
    e
}

/// The `seq`s of `key`'s effects, in the order they were written.
async fn seqs_of(pool: &PgPool, key: &str) -> Vec<i64> {
    sqlx::query_scalar("SELECT seq FROM effects WHERE key = $1 ORDER BY id")
        .bind(key)
        .fetch_all(pool)
        .await
        .expect("read effects")
}

/// Rows of `group` in the parked table, as `(state, key, holds)`, oldest first.
async fn parked_rows(pool: &PgPool, group: &str) -> Vec<(String, String, i64)> {
    sqlx::query_as(
        "SELECT state, message_key, holds_key FROM eventbus_inbox_parked \
         WHERE consumer = $1 ORDER BY id",
    )
    .bind(group)
    .fetch_all(pool)
    .await
    .expect("read the parked table")
}

/// Effects of keys other than `key`.
fn others(key: &str) -> String {
    format!("SELECT count(*) FROM effects WHERE key <> '{key}'")
}

/// A v1 consumer receives m5 of key `k` in schema version 2, then m6 and m7
/// (version 1), with 20 messages of other keys around them. It parks m5 (its
/// key held), parks m6 and m7 behind it, and handles the other keys: no
/// effect of `k` at all. Upgraded (a member of the same group that knows
/// version 2), the group handles m5, m6, m7 in that order, each once.
pub async fn newer_version_keeps_key_order_scenario(broker: &Broker) {
    let (destination, publisher) = broker.destination("gate_order", 2).await;
    let group = unique_name("gate_order");
    let subscribe = || broker.subscriber(&group, &destination, 16);
    newer_version_keeps_key_order(&group, &destination, publisher, subscribe).await;
    broker.clean_up(&[&group], &[&destination]).await;
}

/// [`newer_version_keeps_key_order_scenario`] for group `group` on
/// `destination`, whatever the broker: `subscribe` makes a member's
/// subscriber (it is called before anything is published).
pub async fn newer_version_keeps_key_order<F, S>(
    group: &str,
    destination: &str,
    publisher: Arc<dyn Publisher>,
    subscribe: S,
) where
    S: Fn() -> F,
    F: std::future::Future<Output = Box<dyn eventbus::transport::Subscriber>>,
{
    let db = TestDb::migrated().await;
    create_effects(&db.pool).await;
    let old = Consumer::builder(group)
        .on(|ctx: Context<Postgres>, step: Step| async move { record(&ctx, "old", &step).await })
        .newer_versions(NewerVersions::Park {
            delay: Duration::from_millis(300),
        })
        .parked_poll_interval(Duration::from_millis(100))
        .build(db.pool.clone(), subscribe().await, publisher.clone())
        .expect("the v1 consumer");
    let old = run(old);

    let step = |key: &str, seq: u64| Step {
        key: key.into(),
        seq,
        pad: String::new(),
    };
    let mut messages = vec![newer(&step("k", 5)), envelope(&step("k", 6))];
    messages.extend((0..10).map(|i| envelope(&step(&format!("other-{}", i % 4), i))));
    messages.push(envelope(&step("k", 7)));
    messages.extend((10..20).map(|i| envelope(&step(&format!("other-{}", i % 4), i))));
    publish(publisher.as_ref(), destination, &messages).await;

    wait_count(&db.pool, &others("k"), 20, Duration::from_secs(60)).await;
    let metrics = Arc::clone(&old.consumer);
    wait_until("m5, m6 and m7 parked", Duration::from_secs(30), || {
        metrics.metrics().parked() >= 3
    })
    .await;
    // Time for a wrongly handled m6 or m7 to show.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        seqs_of(&db.pool, "k").await,
        Vec::<i64>::new(),
        "nothing of key k is handled while m5 waits for a consumer that knows it"
    );
    let states: Vec<String> = parked_rows(&db.pool, group)
        .await
        .into_iter()
        .map(|(state, _, _)| state)
        .collect();
    assert_eq!(states, ["newer", "waiting", "waiting"]);
    let old = old.stop().await;
    assert!(old.metrics().version_gated() >= 1);
    assert_eq!(old.metrics().dead_lettered(), 0);

    // The upgrade: a member of the same group that knows version 2.
    let upgraded = Consumer::builder(group)
        .on(|ctx: Context<Postgres>, s: StepV2| async move {
            let step = Step {
                key: s.key,
                seq: s.seq,
                pad: s.pad,
            };
            record(&ctx, "upgraded", &step).await
        })
        .upcast::<StepV2>(1, Ok)
        .parked_poll_interval(Duration::from_millis(100))
        .build(db.pool.clone(), subscribe().await, publisher.clone())
        .expect("the v2 consumer");
    let upgraded = run(upgraded);
    wait_count(
        &db.pool,
        "SELECT count(*) FROM effects WHERE key = 'k'",
        3,
        Duration::from_secs(60),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    upgraded.stop().await;
    assert_eq!(seqs_of(&db.pool, "k").await, [5, 6, 7], "the key's order");
    assert_eq!(parked_rows(&db.pool, group).await, []);
    assert_eq!(scalar(&db.pool, &others("k")).await, 20, "each other once");
}

/// One lane (a one-partition topic; a single-active-consumer queue): `slow`
/// #0 fails once and waits a minute for its delayed retry; `slow` #1 comes
/// right after it, then 1,000 messages of ten other keys. All 1,000 are
/// handled while `slow` waits, none of `slow` is; made due, `slow` #0 then
/// #1 are handled, in order.
pub async fn delayed_retry_scenario(broker: &Broker) {
    let db = TestDb::migrated().await;
    create_effects(&db.pool).await;
    let (destination, publisher) = broker.destination("delayed", 1).await;
    let group = unique_name("delayed");
    let subscriber = broker.one_lane_subscriber(&group, &destination, 64).await;
    let failures = Arc::new(AtomicU32::new(0));
    let consumer = Consumer::builder(&group)
        .on({
            let failures = Arc::clone(&failures);
            move |ctx: Context<Postgres>, step: Step| {
                let failures = Arc::clone(&failures);
                async move {
                    if step.key == "slow" && step.seq == 0 && failures.load(Ordering::SeqCst) == 0 {
                        failures.fetch_add(1, Ordering::SeqCst);
                        return Err::<(), BoxError>("not yet".into());
                    }
                    record(&ctx, "c", &step).await
                }
            }
        })
        .retry(RetryPolicy {
            immediate: 0,
            immediate_delay: Duration::from_millis(10),
            delayed: 2,
            delayed_initial: Duration::from_secs(120),
            delayed_max: Duration::from_secs(120),
        })
        .parked_poll_interval(Duration::from_millis(100))
        .build(db.pool.clone(), subscriber, publisher.clone())
        .expect("consumer");
    let running = run(consumer);

    let step = |key: String, seq: u64| Step {
        key,
        seq,
        pad: String::new(),
    };
    let mut messages = vec![
        envelope(&step("slow".into(), 0)),
        envelope(&step("slow".into(), 1)),
    ];
    messages.extend((0..1_000).map(|i| envelope(&step(format!("other-{}", i % 10), i / 10))));
    publish(publisher.as_ref(), &destination, &messages).await;

    // The retry is a minute away at least (jitter keeps half of the two):
    // the lane must not wait for it.
    let took = wait_count(&db.pool, &others("slow"), 1_000, Duration::from_secs(50)).await;
    println!("1,000 messages of other keys handled in {took:?} while `slow` waits");
    assert_eq!(seqs_of(&db.pool, "slow").await, Vec::<i64>::new());
    let parked = parked_rows(&db.pool, &group).await;
    assert_eq!(
        parked,
        [
            ("retry".to_owned(), "key:slow".to_owned(), 1),
            ("waiting".to_owned(), "key:slow".to_owned(), 1)
        ]
    );
    assert_eq!(failures.load(Ordering::SeqCst), 1);

    // Time passes: the retry is due.
    sqlx::query(
        "UPDATE eventbus_inbox_parked SET due_at = 0 WHERE consumer = $1 AND state = 'retry'",
    )
    .bind(&group)
    .execute(&db.pool)
    .await
    .expect("make the retry due");
    wait_count(
        &db.pool,
        "SELECT count(*) FROM effects WHERE key = 'slow'",
        2,
        Duration::from_secs(30),
    )
    .await;
    let consumer = running.stop().await;
    assert_eq!(seqs_of(&db.pool, "slow").await, [0, 1], "the key's order");
    assert_eq!(parked_rows(&db.pool, &group).await, []);
    assert_eq!(consumer.metrics().parked(), 2);
    assert_eq!(consumer.metrics().dead_lettered(), 0);
    assert_eq!(
        scalar(&db.pool, "SELECT count(*) FROM effects").await,
        1_002,
        "each message once"
    );
    broker.clean_up(&[&group], &[&destination]).await;
}

/// How the group's dead-letter destination refuses in
/// [`refused_dead_letter_scenario`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The group's dead-letter queue is deleted after the first letter: on
    /// RabbitMQ the next letter routes nowhere, on SQS it has no queue.
    QueueDeleted,
    /// The letter (the original plus its dead-letter attributes) is larger
    /// than the destination takes, though the original was not.
    Oversized,
}

/// The size of the poison's padding and of its failure's reason for `broker`
/// and `refusal`: the original fits, the letter does not.
fn poison_sizes(broker: &Broker, refusal: Refusal) -> (usize, usize) {
    match (refusal, broker) {
        (Refusal::QueueDeleted, _) => (0, 10),
        // Under the dead-letter publisher's 8,000-byte limit, not with the reason.
        (Refusal::Oversized, Broker::Kafka(_)) => (6_000, 3_000),
        // Under the dead-letter publisher's 262,144 bytes, not with the reason.
        (Refusal::Oversized, _) => (250_000, 20_000),
    }
}

/// The publisher the consumer dead-letters with: for an oversized letter, one
/// whose messages may not exceed a limit — on Kafka 8,000 bytes (a broker's
/// `message.max.bytes`, enforced by the client), on SQS the classic 262,144
/// (queues of today's SQS and its emulators take up to 1 MiB).
async fn dead_letter_publisher(
    broker: &Broker,
    refusal: Refusal,
    publisher: &Arc<dyn Publisher>,
) -> Arc<dyn Publisher> {
    match (refusal, broker) {
        (Refusal::Oversized, Broker::Kafka(brokers)) => Arc::new(
            crate::kafka::publisher_builder(brokers)
                .set("message.max.bytes", "8000")
                .build()
                .expect("a Kafka publisher"),
        ),
        (Refusal::Oversized, Broker::Sqs(_)) => Arc::new(
            crate::sqs::publisher_builder()
                .await
                .fifo(true)
                .max_message_size(262_144)
                .connect()
                .await
                .expect("an SQS publisher"),
        ),
        _ => Arc::clone(publisher),
    }
}

/// The group's dead-letter destination refuses a letter: it is kept in the
/// parked table (state dead, its key not held, the refusal in its reason),
/// the handler ran once, nothing is given back to the broker, and the
/// messages after it — of its key and others — are handled.
pub async fn refused_dead_letter_scenario(broker: &Broker, refusal: Refusal) {
    let db = TestDb::migrated().await;
    create_effects(&db.pool).await;
    let (destination, publisher) = broker.destination("refused", 1).await;
    let group = unique_name("refused");
    let subscriber = broker.one_lane_subscriber(&group, &destination, 16).await;
    let (pad, reason_len) = poison_sizes(broker, refusal);
    let calls = Arc::new(AtomicU32::new(0));
    let consumer = Consumer::builder(&group)
        .on({
            let calls = Arc::clone(&calls);
            move |ctx: Context<Postgres>, step: Step| {
                let calls = Arc::clone(&calls);
                async move {
                    if step.pad.starts_with("poison") {
                        calls.fetch_add(1, Ordering::SeqCst);
                        return Err::<(), BoxError>("x".repeat(reason_len).into());
                    }
                    record(&ctx, "c", &step).await
                }
            }
        })
        .retry(RetryPolicy::none())
        .build(
            db.pool.clone(),
            subscriber,
            dead_letter_publisher(broker, refusal, &publisher).await,
        )
        .expect("consumer");
    let running = run(consumer);
    let step = |key: &str, seq: u64, pad: String| Step {
        key: key.into(),
        seq,
        pad,
    };
    let poison = |seq: u64| step("p", seq, format!("poison{}", "-".repeat(pad)));
    let dlq = dead_letter::destination_of(&destination, &group);

    if refusal == Refusal::QueueDeleted {
        // A first letter declares the group's dead-letter queue; then it goes.
        publish(publisher.as_ref(), &destination, &[envelope(&poison(0))]).await;
        let metrics = Arc::clone(&running.consumer);
        wait_until("the first dead letter", Duration::from_secs(30), || {
            metrics.metrics().dead_lettered() == 1
        })
        .await;
        match broker {
            Broker::RabbitMq(_) => {
                assert_eq!(
                    rabbitmq::queue_depth(&dlq).await,
                    Some(1),
                    "kept on the broker"
                );
                rabbitmq::delete_group(&dlq).await;
            }
            Broker::Sqs(_) => crate::sqs::delete_queues(&[&dlq], &[], true).await,
            Broker::Kafka(_) => panic!("a Kafka topic is not deleted under a running test"),
        }
    }
    let refused = poison(1);
    let mut messages = vec![envelope(&refused)];
    messages.extend((0..20).map(|i| {
        envelope(&step(
            if i % 2 == 0 { "p" } else { "q" },
            10 + i,
            String::new(),
        ))
    }));
    publish(publisher.as_ref(), &destination, &messages).await;

    wait_count(
        &db.pool,
        "SELECT count(*) FROM effects",
        20,
        Duration::from_secs(60),
    )
    .await;
    let letters = usize::from(refusal == Refusal::QueueDeleted) + 1;
    let metrics = Arc::clone(&running.consumer);
    wait_until("the refused letter kept", Duration::from_secs(30), || {
        metrics.metrics().dead_lettered() == letters as u64
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let consumer = running.stop().await;
    let kept: Vec<(String, String, i64, i64, String)> = sqlx::query_as(
        "SELECT state, message_key, holds_key, attempts, reason FROM eventbus_inbox_parked \
         WHERE consumer = $1",
    )
    .bind(&group)
    .fetch_all(&db.pool)
    .await
    .expect("read the parked table");
    assert_eq!(kept.len(), 1, "{kept:?}");
    let (state, key, holds, attempts, reason) = &kept[0];
    assert_eq!(
        (state.as_str(), key.as_str(), *holds, *attempts),
        ("dead", "key:p", 0, 1)
    );
    assert!(
        reason.contains("dead-letter destination refused it"),
        "{reason}"
    );
    assert_eq!(
        calls.load(Ordering::SeqCst) as usize,
        letters,
        "each poison handled once: no loop"
    );
    assert_eq!(consumer.metrics().released(), 0, "nothing given back");
    assert_eq!(consumer.metrics().handled(), 20);
    assert_eq!(
        scalar(&db.pool, "SELECT count(DISTINCT seq) FROM effects").await,
        20
    );
    if let Broker::RabbitMq(_) = broker {
        rabbitmq::delete_exchange(&dlq).await;
    }
    broker.clean_up(&[&group], &[&destination]).await;
}
