//! The relay suite, on any database: the store's claiming and fencing, volume
//! with per-key order over RabbitMQ, Kafka and SQS, commit order with overlapping
//! transactions, poison events, rows from other writers that are not events,
//! metrics and status, plain-SQL rows, retention, several relays sharing
//! the outbox while one of them dies, and in-process wake-ups.

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

// ------------------------------------------------------------ the store

/// The (id, key, seq) of claimed rows, in claim order.
async fn claim(store: &dyn RelayStore, relay: Uuid, partitions: &[i32]) -> Vec<(i64, String, u64)> {
    store
        .claim(relay, partitions, ClaimLimits::rows(100))
        .await
        .expect("claim")
        .iter()
        .map(|r| {
            let s: Step = serde_json::from_str(&r.payload).expect("a Step");
            (r.id, s.key, s.seq)
        })
        .collect()
}

/// Claims until something comes back (at most 20 s): on PostgreSQL a fresh
/// row is held back while any older transaction of the server is open.
async fn claim_fresh(
    store: &dyn RelayStore,
    relay: Uuid,
    partitions: &[i32],
) -> Vec<(i64, String, u64)> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let rows = claim(store, relay, partitions).await;
        if !rows.is_empty() || Instant::now() > deadline {
            return rows;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `partitions` in ascending order (PostgreSQL returns them in row order).
fn sorted(leases: &[Lease]) -> Vec<i32> {
    let mut partitions: Vec<i32> = leases.iter().map(|l| l.partition).collect();
    partitions.sort_unstable();
    partitions
}

fn names(rows: &[(i64, String, u64)]) -> Vec<String> {
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

/// The relay store against a real database: membership, leases that cannot
/// be taken while held and can once expired, claiming in id order behind
/// failed and retrying rows of the same key only, every row write fenced on
/// the lease, retries due only when due, parking, statistics, retention.
pub async fn store_claims_in_order_behind_failures_and_fences_every_write<D: TestDatabase>() {
    let db = D::migrated().await;
    publish_steps(
        db.pool(),
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
    let store = D::relay_store(db.pool());
    let all = store.partitions().await.expect("partitions");
    assert_eq!(all.len(), D::PARTITIONS as usize);
    let ttl = Duration::from_secs(30);
    let (r1, r2) = (Uuid::now_v7(), Uuid::now_v7());
    assert_eq!(store.heartbeat(r1, "one", ttl).await.expect("hb"), [r1]);
    assert_eq!(store.heartbeat(r2, "two", ttl).await.expect("hb"), [r1, r2]);
    let first = store.acquire(r1, &all, ttl).await.expect("acquire");
    assert_eq!(sorted(&first), all);
    assert!(
        store
            .acquire(r2, &all, ttl)
            .await
            .expect("acquire")
            .is_empty(),
        "a held lease cannot be taken"
    );
    let rows = claim_fresh(store.as_ref(), r1, &all).await;
    assert_eq!(names(&rows), ["a0", "b0", "a1", "b1", "a2"], "id order");
    assert!(
        store
            .claim(r2, &all, ClaimLimits::rows(100))
            .await
            .expect("claim")
            .is_empty(),
        "nothing is claimed without the lease"
    );
    let id = |name: &str| {
        rows.iter()
            .find(|(_, k, s)| format!("{k}{s}") == name)
            .map(|(id, _, _)| *id)
            .expect("row present")
    };

    // A retrying row holds back the later rows of its key only.
    store
        .reject(
            r1,
            &first,
            &[rejection(id("a0"), false, Duration::from_secs(3600))],
        )
        .await
        .expect("reject");
    assert_eq!(names(&claim(store.as_ref(), r1, &all).await), ["b0", "b1"]);

    // Writes are fenced: a relay without the lease changes nothing.
    assert_eq!(
        store
            .acknowledge(r2, &first, &[id("b0")], Retention::Delete)
            .await
            .expect("ack"),
        0
    );
    store
        .reject(r2, &first, &[rejection(id("b1"), true, Duration::ZERO)])
        .await
        .expect("fenced reject");
    assert_eq!(names(&claim(store.as_ref(), r1, &all).await), ["b0", "b1"]);

    // Acknowledged rows leave: deleted, or kept as published.
    assert_eq!(
        store
            .acknowledge(r1, &first, &[id("b0")], Retention::Delete)
            .await
            .expect("ack"),
        1
    );
    let keep = Retention::Keep(Duration::from_secs(3600));
    assert_eq!(
        store
            .acknowledge(r1, &first, &[id("b1")], keep)
            .await
            .expect("ack"),
        1
    );
    assert!(claim(store.as_ref(), r1, &all).await.is_empty());

    // Parking keeps the key blocked; statistics see it.
    store
        .reject(r1, &first, &[rejection(id("a0"), true, Duration::ZERO)])
        .await
        .expect("park");
    let row = |column: &str| {
        format!(
            "SELECT {column} FROM eventbus_outbox WHERE id = {}",
            id("a0")
        )
    };
    assert_eq!(
        db.texts(&row("state")).await,
        [Some("failed".to_owned())],
        "parked"
    );
    assert_eq!(db.scalar(&row("attempts")).await, 2);
    assert_eq!(
        db.texts(&row("last_error")).await,
        [Some("broker said no".to_owned())]
    );
    let snap = store.stats(&all).await.expect("stats");
    assert_eq!(snap.backlog.values().sum::<u64>(), 2, "a1 and a2 wait");
    assert_eq!(snap.parked_rows, 1);
    assert_eq!(snap.held_back_seconds, 0.0);
    assert!(
        (0.0..60.0).contains(&snap.oldest_pending_seconds),
        "{}",
        snap.oldest_pending_seconds
    );

    // A retry is claimed again once it is due, not before.
    publish_steps(db.pool(), &[step("c", 0)], 1).await;
    let c0 = claim_fresh(store.as_ref(), r1, &all).await;
    assert_eq!(names(&c0), ["c0"]);
    store
        .reject(
            r1,
            &first,
            &[rejection(c0[0].0, false, Duration::from_millis(400))],
        )
        .await
        .expect("reject");
    assert!(
        claim(store.as_ref(), r1, &all).await.is_empty(),
        "not due yet"
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    let again = store
        .claim(r1, &all, ClaimLimits::rows(100))
        .await
        .expect("claim");
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

    // Releasing hands the partitions over; an expired lease can be taken.
    store.release(r1, &all).await.expect("release");
    assert_eq!(
        sorted(
            &store
                .acquire(r2, &all, Duration::from_millis(300))
                .await
                .expect("acquire")
        ),
        all
    );
    assert!(store.renew(r1, &all, ttl).await.expect("renew").is_empty());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let again = store.acquire(r1, &all, ttl).await.expect("take over");
    assert_eq!(sorted(&again), all, "an expired lease is free");
    assert!(store.renew(r2, &all, ttl).await.expect("renew").is_empty());
    assert_eq!(
        sorted(&store.renew(r1, &all, ttl).await.expect("renew")),
        all
    );

    // Writes are fenced on the tenure too: r1 holds the partitions again, but
    // a write from its first tenure (a batch claimed before it lost them)
    // changes nothing.
    assert!(
        again.iter().all(|l| first
            .iter()
            .any(|f| f.partition == l.partition && f.epoch < l.epoch)),
        "every acquisition starts a new epoch: {first:?} then {again:?}"
    );
    assert_eq!(
        store
            .acknowledge(r1, &again, &[c0[0].0], Retention::Delete)
            .await
            .expect("ack the retried row"),
        1
    );
    publish_steps(db.pool(), &[step("d", 0)], 1).await;
    let d0 = claim_fresh(store.as_ref(), r1, &all).await;
    assert_eq!(names(&d0), ["d0"]);
    assert_eq!(
        store
            .acknowledge(r1, &first, &[d0[0].0], Retention::Delete)
            .await
            .expect("stale ack"),
        0,
        "an acknowledgement from an earlier tenure is refused"
    );
    store
        .reject(r1, &first, &[rejection(d0[0].0, true, Duration::ZERO)])
        .await
        .expect("stale reject");
    assert_eq!(names(&claim(store.as_ref(), r1, &all).await), ["d0"]);
    assert_eq!(
        store
            .acknowledge(r1, &again, &[d0[0].0], Retention::Delete)
            .await
            .expect("ack"),
        1
    );

    store.deregister(r1).await.expect("deregister");
    assert_eq!(store.heartbeat(r2, "two", ttl).await.expect("hb"), [r2]);
}

// ------------------------------------------------------------ volume

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

// ------------------------------------------------------------ commit order

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

// ------------------------------------------------------------ failures

/// Keys that land in the same outbox partition as `key`.
async fn keys_in_same_partition<D: TestDatabase>(db: &D, key: &str, n: usize) -> Vec<String> {
    let target = db.partition_of(key).await;
    let mut out = Vec::new();
    let mut i = 0;
    while out.len() < n {
        let candidate = format!("other-{i}");
        if db.partition_of(&candidate).await == target {
            out.push(candidate);
        }
        i += 1;
    }
    out
}

/// An event the broker refuses (too large) is retried, then parked as
/// `failed`; it blocks the later events of its own key only, other keys of
/// its partition flow; `failed skip` releases the key.
pub async fn a_poisoned_event_is_parked_and_blocks_only_its_key<D: TestDatabase>() {
    let db = D::migrated().await;
    let admin = D::admin(db.pool()).expect("this backend has an operator view");
    let brokers = kafka_brokers().await;
    let prefix = format!("{}.", unique_name("poison"));
    let topic = format!("{prefix}{}", Step::DESTINATION);
    // The broker side accepts at most 20 kB per message.
    let publisher = publisher_builder(&brokers)
        .set("message.max.bytes", "20000")
        .build()
        .expect("publisher");
    publisher.ensure_destination(&topic).await.expect("topic");

    let others = keys_in_same_partition(&db, "poisoned", 3).await;
    let padded = |key: &str, seq: u64, pad: usize| Step {
        key: key.into(),
        seq,
        pad: "x".repeat(pad),
    };
    let mut events = vec![
        padded("poisoned", 1, 0),
        padded("poisoned", 2, 50_000),
        padded("poisoned", 3, 0),
    ];
    for (i, k) in others.iter().enumerate() {
        events.push(padded(k, i as u64, 0));
    }
    publish_steps(db.pool(), &events, 1).await;

    let mut config = test_config(&prefix);
    config.max_attempts = 3;
    config.retry_initial = Duration::from_millis(100);
    let relay = relay_on(&db, Arc::new(publisher), config);

    // The poisoned event fails three times and is parked; its successor waits.
    let deadline = Instant::now() + Duration::from_secs(30);
    let parked = loop {
        let failed = admin.failed(10).await.expect("failed rows");
        if !failed.is_empty() {
            break failed;
        }
        assert!(Instant::now() < deadline, "poisoned event never parked");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].partition_key, "poisoned");
    assert_eq!(parked[0].attempts, 3);
    assert!(
        parked[0]
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("rejected"),
        "{:?}",
        parked[0].last_error
    );

    // Other keys of the same partition flowed; the poisoned key's successor did not.
    let arrived =
        decode_kafka(&read_all(&brokers, &topic, 1 + others.len(), Duration::from_secs(20)).await);
    assert_eq!(arrived.len(), 1 + others.len());
    assert!(arrived.iter().all(|s| !(s.key == "poisoned" && s.seq == 3)));
    for k in &others {
        assert!(
            arrived.iter().any(|s| &s.key == k),
            "key {k} of the same partition must flow"
        );
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(pending(&db).await, 1, "seq 3 waits behind the parked event");

    // `failed skip` releases the key.
    assert_eq!(admin.skip(&[parked[0].id]).await.expect("skip"), 1);
    wait_drained(&db, Duration::from_secs(20)).await;
    let all =
        decode_kafka(&read_all(&brokers, &topic, 2 + others.len(), Duration::from_secs(20)).await);
    let poisoned: Vec<u64> = all
        .iter()
        .filter(|s| s.key == "poisoned")
        .map(|s| s.seq)
        .collect();
    assert_eq!(poisoned, vec![1, 3]);
    assert_eq!(relay.metrics.parked_total(), 1);
    relay.stop().await;
}

/// A plain-SQL insert of step `seq` of `key` into the default outbox, as a
/// service in another language writes it, with `columns` set to the given
/// SQL values (replacing the defaults of destination, key, type and payload).
fn plain_insert(key: &str, seq: u64, columns: &[(&str, &str)]) -> String {
    let mut values: Vec<(&str, String)> = vec![
        ("destination", format!("'{}'", Step::DESTINATION)),
        ("partition_key", format!("'{key}'")),
        ("event_type", format!("'{}'", Step::TYPE)),
        ("payload", format!(r#"'{{"key":"{key}","seq":{seq}}}'"#)),
    ];
    for (column, value) in columns {
        match values.iter_mut().find(|(c, _)| c == column) {
            Some(slot) => slot.1 = (*value).to_owned(),
            None => values.push((column, (*value).to_owned())),
        }
    }
    let (names, values): (Vec<&str>, Vec<String>) = values.into_iter().unzip();
    format!(
        "INSERT INTO eventbus_outbox ({}) VALUES ({})",
        names.join(", "),
        values.join(", ")
    )
}

/// A row another writer inserts by plain SQL: step `seq` of `key`, with one
/// column set besides (see [`plain_insert`]), and what the relay's reason
/// for parking it says, if the relay is to park it.
struct Written {
    key: &'static str,
    seq: u64,
    column: Option<(&'static str, &'static str)>,
    reason: Option<&'static str>,
}

impl Written {
    /// A valid event.
    fn valid(key: &'static str, seq: u64) -> Self {
        Written {
            key,
            seq,
            column: None,
            reason: None,
        }
    }

    /// A row with `column` set to a value that makes it no event.
    fn parked(
        key: &'static str,
        seq: u64,
        column: (&'static str, &'static str),
        reason: &'static str,
    ) -> Self {
        Written {
            key,
            seq,
            column: Some(column),
            reason: Some(reason),
        }
    }

    /// Inserts it; panics if the database refuses.
    async fn insert<D: TestDatabase>(&self, db: &D) {
        let columns: Vec<(&str, &str)> = self.column.into_iter().collect();
        db.execute(&plain_insert(self.key, self.seq, &columns))
            .await
            .unwrap_or_else(|e| panic!("{} takes {}/{}: {e}", D::NAME, self.key, self.seq));
    }
}

/// Releases the parked row `id` as `outbox-relay failed skip` does: through
/// the operator view, or on SQLite (which has none) with the statement it runs.
async fn skip_parked<D: TestDatabase>(db: &D, id: i64) {
    let skipped = match D::admin(db.pool()) {
        Some(admin) => admin.skip(&[id]).await.expect("skip"),
        None => db
            .execute(&format!(
                "DELETE FROM eventbus_outbox WHERE state = 'failed' AND id = {id}"
            ))
            .await
            .expect("skip"),
    };
    assert_eq!(skipped, 1, "row {id} was parked");
}

/// Waits until `n` rows are parked; panics if more are, or after `timeout`.
async fn wait_parked<D: TestDatabase>(db: &D, n: i64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let parked = db.scalar(COUNT_PARKED).await;
        assert!(parked <= n, "{parked} rows parked, expected {n}");
        if parked == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{parked} of {n} rows parked after {timeout:?} on {}",
            D::NAME
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What other writers can put in the outbox that is not an event.
///
/// Rows the database refuses: a payload or headers that are not JSON, a
/// payload that is not UTF-8 (where text must be UTF-8), a `created_at` in
/// the year 10000 (where timestamps stop at 9999). The insert fails with the
/// database's error and nothing is written.
///
/// Rows the database takes but that cannot become a CloudEvent: a header
/// whose value is an object, headers that are not an object, an empty event
/// type, a header name that is not a CloudEvents attribute name, and (on
/// PostgreSQL) a `created_at` in the year 10000. A running relay parks each
/// at the first attempt with a `last_error` naming the problem — also in the
/// operator's `failed` listing — and keeps going: valid rows of other keys,
/// before and after them, are delivered; the valid row behind a parked one
/// of its key waits, and goes once the parked row is skipped.
pub async fn rows_from_other_writers_that_are_not_events_are_parked_with_a_reason<
    D: TestDatabase,
>() {
    let db = D::migrated().await;

    let mut refused = vec![
        (
            "a payload that is not JSON",
            plain_insert(
                "refused",
                1,
                &[("payload", r#"'{"key":"refused","seq":1'"#)],
            ),
        ),
        (
            "headers that are not JSON",
            plain_insert("refused", 2, &[("headers", r#"'{"traceparent":'"#)]),
        ),
    ];
    if !D::HOLDS_NON_UTF8 {
        refused.push((
            "a payload that is not UTF-8",
            plain_insert("refused", 3, &[("payload", D::NON_UTF8_JSON)]),
        ));
    }
    if !D::HOLDS_YEAR_10000 {
        refused.push((
            "a created_at in the year 10000",
            plain_insert("refused", 4, &[("created_at", D::YEAR_10000)]),
        ));
    }
    for (what, sql) in &refused {
        match db.execute(sql).await {
            Err(sqlx::Error::Database(_)) => {}
            other => panic!("{} must refuse {what}, got {other:?}: {sql}", D::NAME),
        }
    }
    assert_eq!(db.scalar(COUNT_ROWS).await, 0, "nothing was written");

    let mut rows = vec![
        Written::valid("kept", 1),
        Written::parked(
            "kept",
            2,
            ("headers", r#"'{"traceparent": {"version": "00"}}'"#),
            "CloudEvent attribute `traceparent` is invalid: outbox header values must be strings",
        ),
        Written::valid("kept", 3),
        Written::parked(
            "not-an-object",
            1,
            ("headers", r#"'["traceparent", "00-abc"]'"#),
            "CloudEvent attribute `headers` is invalid: outbox `headers` must be a JSON object",
        ),
        Written::parked(
            "no-type",
            1,
            ("event_type", "''"),
            "CloudEvent attribute `type` is invalid: must not be empty",
        ),
        Written::parked(
            "bad-name",
            1,
            ("headers", r#"'{"Trace-Parent": "00-abc"}'"#),
            "CloudEvent attribute `trace-parent` is invalid: \
             attribute names must be lowercase ASCII letters and digits",
        ),
    ];
    if D::HOLDS_YEAR_10000 {
        rows.push(Written::parked(
            "year-10000",
            1,
            ("created_at", D::YEAR_10000),
            "CloudEvent attribute `time` is invalid: created_at +10000-01-01 00:00:00 UTC \
             is outside the years 0000 to 9999 that RFC 3339 can write",
        ));
    }
    rows.push(Written::valid("other", 1));
    for row in &rows {
        row.insert(&db).await;
    }
    let reasons: Vec<(String, String)> = rows
        .iter()
        .filter_map(|row| {
            row.reason
                .map(|r| (row.key.to_owned(), format!("cannot build CloudEvent: {r}")))
        })
        .collect();
    let parked = i64::try_from(reasons.len()).expect("a handful");

    let (publisher, prefix, mut queue) = rabbit("not_events").await;
    let relay = relay_on(&db, publisher, test_config(&prefix));
    wait_parked(&db, parked, Duration::from_secs(30)).await;
    let delivered = decode_amqp(&queue.read(2, Duration::from_secs(30)).await);
    let mut seen: Vec<(String, u64)> = delivered.iter().map(|s| (s.key.clone(), s.seq)).collect();
    seen.sort();
    assert_eq!(
        seen,
        [("kept".to_owned(), 1), ("other".to_owned(), 1)],
        "the valid rows ahead of and beside the parked ones"
    );

    // Each parked row says why, at its first attempt, to the operator too.
    let column =
        |c: &str| format!("SELECT {c} FROM eventbus_outbox WHERE state = 'failed' ORDER BY id");
    let keys: Vec<String> = db
        .texts(&column("partition_key"))
        .await
        .into_iter()
        .flatten()
        .collect();
    let errors: Vec<String> = db
        .texts(&column("last_error"))
        .await
        .into_iter()
        .flatten()
        .collect();
    let listed: Vec<(String, String)> = keys.into_iter().zip(errors).collect();
    assert_eq!(listed, reasons, "parked rows and their reasons");
    assert_eq!(
        db.scalar("SELECT count(*) FROM eventbus_outbox WHERE state = 'failed' AND attempts = 1")
            .await,
        parked,
        "parked at the first attempt: retrying cannot help"
    );
    if let Some(admin) = D::admin(db.pool()) {
        let failed: Vec<(String, Option<String>)> = admin
            .failed(100)
            .await
            .expect("failed rows")
            .into_iter()
            .map(|r| (r.partition_key, r.last_error))
            .collect();
        let expected: Vec<(String, Option<String>)> = reasons
            .iter()
            .map(|(k, r)| (k.clone(), Some(r.clone())))
            .collect();
        assert_eq!(failed, expected, "the operator's `failed` listing");
    }

    // The relay keeps going: a row written now is delivered ...
    Written::valid("other", 2).insert(&db).await;
    let after = decode_amqp(&queue.read(1, Duration::from_secs(30)).await);
    assert_eq!((after[0].key.as_str(), after[0].seq), ("other", 2));
    // ... while the valid row behind the parked one of its key waits ...
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(pending(&db).await, 1, "kept/3 waits behind kept/2");
    queue.assert_empty(Duration::from_millis(200)).await;
    // ... until that one is skipped.
    let id = db
        .scalar("SELECT id FROM eventbus_outbox WHERE state = 'failed' AND partition_key = 'kept'")
        .await;
    skip_parked(&db, id).await;
    let released = decode_amqp(&queue.read(1, Duration::from_secs(30)).await);
    assert_eq!((released[0].key.as_str(), released[0].seq), ("kept", 3));
    wait_drained(&db, Duration::from_secs(10)).await;
    queue.assert_empty(Duration::from_millis(500)).await;

    assert_eq!(relay.metrics.published_total(), 4);
    assert_eq!(
        relay.metrics.parked_total(),
        u64::try_from(parked).expect("positive")
    );
    assert_eq!(
        db.scalar(COUNT_ROWS).await,
        parked - 1,
        "the other parked rows stay for the operator"
    );
    relay.stop().await;
    queue.delete().await;
}

/// Rows the database takes but the relay store cannot even read into an
/// [`eventbus::OutboxRecord`]: headers with a number beyond `f64` (valid
/// JSON, which `serde_json` refuses), and on SQLite a payload that is not
/// UTF-8. Each must be parked with a reason naming its column while the
/// other keys flow — rather than fail every claim of its partition, which
/// stops the relay for every key there.
///
/// Fails today (reported, not fixed here): the stores decode the claimed
/// rows in one go, a row that does not decode fails the whole claim, and
/// the relay retries that claim forever. The backend files mark it ignored.
pub async fn rows_the_relay_cannot_decode_are_parked_instead_of_stopping_it<D: TestDatabase>() {
    let db = D::migrated().await;
    let mut rows = vec![
        Written::valid("before", 1),
        Written::parked(
            "huge-number",
            1,
            ("headers", r#"'{"amount": 1e400}'"#),
            "headers",
        ),
    ];
    if D::HOLDS_NON_UTF8 {
        rows.push(Written::parked(
            "not-utf8",
            1,
            ("payload", D::NON_UTF8_JSON),
            "payload",
        ));
    }
    rows.push(Written::valid("after", 1));
    for row in &rows {
        row.insert(&db).await;
    }
    let (publisher, prefix, mut queue) = rabbit("undecodable").await;
    let relay = relay_on(&db, publisher, test_config(&prefix));
    let delivered = decode_amqp(&queue.try_read(2, Duration::from_secs(30)).await);
    let mut keys: Vec<&str> = delivered.iter().map(|s| s.key.as_str()).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["after", "before"], "the valid rows around them");
    let bad: Vec<(&str, &str)> = rows
        .iter()
        .filter_map(|row| row.reason.map(|column| (row.key, column)))
        .collect();
    wait_parked(
        &db,
        i64::try_from(bad.len()).expect("a few"),
        Duration::from_secs(30),
    )
    .await;
    let errors = db
        .texts("SELECT last_error FROM eventbus_outbox WHERE state = 'failed' ORDER BY id")
        .await;
    for ((key, column), error) in bad.iter().zip(&errors) {
        let error = error.as_deref().unwrap_or_default();
        assert!(
            error.contains(column),
            "{key}: the reason names `{column}`: {error}"
        );
    }
    relay.stop().await;
    queue.delete().await;
}

/// An event for a destination the broker does not have, with creating
/// destinations turned off: the broker refuses it (RabbitMQ `NOT_FOUND`), it
/// is retried, then parked with the broker's reason; events for the
/// destination that exists, before and after it, are delivered.
pub async fn an_event_for_a_missing_destination_is_parked_with_the_reason<D: TestDatabase>() {
    let db = D::migrated().await;
    let (_, prefix, mut queue) = rabbit("missing_destination").await;
    let publisher = RabbitPublisher::builder(amqp_url().await)
        .declare_exchanges(false)
        .connect()
        .await
        .expect("connect to RabbitMQ");
    for row in [
        Written::valid("before", 1),
        Written::parked("lost", 1, ("destination", "'nowhere'"), "NOT_FOUND"),
        Written::valid("after", 1),
    ] {
        row.insert(&db).await;
    }
    let mut config = test_config(&prefix);
    config.create_destinations = false;
    config.max_attempts = 2;
    config.retry_initial = Duration::from_millis(100);
    let relay = relay_on(&db, Arc::new(publisher), config);

    // The broker closes the channel over the missing exchange, failing what
    // was in flight with it; the relay sends that again, so an event may
    // arrive twice (at-least-once, which a consumer's inbox absorbs).
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut keys: Vec<String> = Vec::new();
    while keys.len() < 2 && Instant::now() < deadline {
        for step in decode_amqp(&queue.try_read(1, Duration::from_millis(500)).await) {
            if !keys.contains(&step.key) {
                keys.push(step.key);
            }
        }
    }
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["after", "before"],
        "the events for the existing destination"
    );
    wait_parked(&db, 1, Duration::from_secs(30)).await;
    let errors = db
        .texts("SELECT last_error FROM eventbus_outbox WHERE state = 'failed'")
        .await;
    let error = errors[0].as_deref().unwrap_or_default();
    assert!(
        error.contains("NOT_FOUND") && error.contains("nowhere"),
        "the reason names the missing exchange: {error}"
    );
    let attempts = db
        .scalar("SELECT max(attempts) FROM eventbus_outbox WHERE state = 'failed'")
        .await;
    assert_eq!(attempts, 2, "parked after its attempts, not at once");
    relay.stop().await;
    queue.delete().await;
}

// ------------------------------------------------------------ operations

/// The backlog gauge shows pending work, then zero; the Prometheus text has
/// the counters; `status` sees one relay owning every partition while it
/// runs, and none (every partition unowned) after it stopped.
pub async fn metrics_and_status_report_the_backlog_falling_to_zero<D: TestDatabase>() {
    let db = D::migrated().await;
    let admin = D::admin(db.pool()).expect("this backend has an operator view");
    let (publisher, prefix, _topic, _brokers) = kafka("metrics").await;
    publish_steps(db.pool(), &steps(5_000, 50), 5_000).await;
    assert_eq!(admin.status().await.expect("status").pending, 5_000);

    let mut config = test_config(&prefix);
    config.batch_size = 100; // slow enough to watch the backlog fall
    let relay = relay_on(&db, publisher, config);
    // The backlog gauge first shows pending work …
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut saw_backlog = false;
    while Instant::now() < deadline && !saw_backlog {
        let snap = relay.metrics.snapshot();
        saw_backlog = snap.backlog.values().sum::<u64>() > 0;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(saw_backlog, "the backlog gauge showed pending rows");
    // … then zero.
    wait_drained(&db, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let text = relay.metrics.render_prometheus();
    assert_eq!(
        metric(&text, "eventbus_outbox_pending_rows"),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "eventbus_relay_published_total"),
        Some(5000.0),
        "{text}"
    );
    assert!(
        text.contains("eventbus_relay_publish_latency_seconds_count"),
        "{text}"
    );
    let status = admin.status().await.expect("status");
    assert_eq!(status.pending, 0);
    assert_eq!(status.relays.len(), 1);
    assert_eq!(
        status.relays[0].3,
        i64::from(D::PARTITIONS),
        "one relay owns every partition"
    );
    relay.stop().await;
    let status = admin.status().await.expect("status");
    assert!(status.relays.is_empty(), "a stopped relay deregisters");
    assert_eq!(
        status.unowned_partitions,
        i64::from(D::PARTITIONS),
        "and releases its partitions"
    );
}

/// A relay running in the process that publishes hears of the write at once
/// ([`RelayConfig::in_process_wakeups`]): with a 10 s poll, an event published
/// and committed while the relay idles reaches the broker well before the
/// poll would have found it. With `wakeups` off (the control) it waits for
/// the poll, which shows the test measures the wake-up and not something
/// else that claims early. Returns the time from commit to delivery.
pub async fn an_event_published_in_process_is_relayed_without_waiting_for_the_poll<
    D: TestDatabase,
>(
    wakeups: bool,
) -> Duration {
    const POLL: Duration = Duration::from_secs(10);
    let db = D::migrated().await;
    let (publisher, prefix, mut queue) = rabbit("in_process_wakeup").await;
    let mut config = test_config(&prefix);
    config.poll_interval = POLL;
    config.in_process_wakeups = wakeups;
    let relay = relay_on(&db, publisher, config);
    // Acquiring partitions wakes the relay for a claim; once that is done it
    // idles for the poll interval.
    let deadline = Instant::now() + Duration::from_secs(20);
    while relay.metrics.snapshot().owned_partitions != D::PARTITIONS as usize {
        assert!(Instant::now() < deadline, "the relay took no partition");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut tx = db.pool().begin().await.expect("begin");
    Outbox::new("urn:test:relay")
        .publish(&mut tx, &step("k-1", 1))
        .await
        .expect("publish");
    tx.commit().await.expect("commit");
    let committed = Instant::now();
    let delivered = queue.read(1, POLL * 2).await;
    let took = committed.elapsed();
    assert_eq!(decode_amqp(&delivered), vec![step("k-1", 1)]);
    if wakeups {
        assert!(
            took < POLL / 3,
            "on {}, an event published in the process took {took:?} to be relayed \
             with in-process wake-ups: not well under the {POLL:?} poll",
            D::NAME
        );
    } else {
        assert!(
            took > POLL / 2,
            "on {}, an event took {took:?} to be relayed with in-process wake-ups off: \
             something else woke the relay before its {POLL:?} poll",
            D::NAME
        );
    }
    relay.stop().await;
    took
}

/// What a service in another language does — one `INSERT` naming
/// destination, key, type and payload, every other column defaulted — is
/// relayed as a CloudEvent with the relay's configured source, a UUID id and
/// schema version 1, the payload intact.
pub async fn a_row_inserted_by_plain_sql_is_relayed_with_the_configured_source<D: TestDatabase>() {
    let db = D::migrated().await;
    let (publisher, prefix, topic, brokers) = kafka("plain_sql").await;
    db.execute(
        "INSERT INTO eventbus_outbox (destination, partition_key, event_type, payload) \
         VALUES ('steps', 'k-1', 'com.example.test.step', '{\"key\":\"k-1\",\"seq\":7}')",
    )
    .await
    .expect("plain insert");
    let mut config = test_config(&prefix);
    config.default_source = "urn:service:legacy-billing".into();
    let relay = relay_on(&db, publisher, config);
    let messages = read_all(&brokers, &topic, 1, Duration::from_secs(20)).await;
    assert_eq!(messages.len(), 1);
    let envelope = envelope_from_message(&messages[0]).expect("a CloudEvent");
    assert_eq!(envelope.source, "urn:service:legacy-billing");
    assert_eq!(envelope.partition_key.as_deref(), Some("k-1"));
    assert!(
        Uuid::parse_str(&envelope.id).is_ok(),
        "defaulted id is a UUID"
    );
    assert_eq!(envelope.schema_version(), Some(1));
    let step: Step = serde_json::from_slice(&envelope.data).expect("payload");
    assert_eq!(step.seq, 7, "payload intact");
    relay.stop().await;
}

/// Retention mode: published rows are kept, marked `published`, then deleted
/// by the relay once older than the window.
pub async fn retention_mode_keeps_published_rows_then_cleans_them_up<D: TestDatabase>() {
    let db = D::migrated().await;
    let (publisher, prefix, topic, brokers) = kafka("retention").await;
    publish_steps(db.pool(), &steps(300, 10), 300).await;
    let mut config = test_config(&prefix);
    config.retention = Retention::Keep(Duration::from_secs(2));
    let relay = relay_on(&db, publisher, config);
    wait_drained(&db, Duration::from_secs(20)).await;
    let kept = db
        .scalar(
            "SELECT count(*) FROM eventbus_outbox \
             WHERE state = 'published' AND published_at IS NOT NULL",
        )
        .await;
    assert_eq!(kept, 300, "published rows are kept, marked published");
    assert_eq!(
        read_all(&brokers, &topic, 300, Duration::from_secs(20))
            .await
            .len(),
        300
    );
    // After the retention window the relay deletes them in batches.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = db.scalar(COUNT_ROWS).await;
        if left == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{left} published rows never cleaned up"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    relay.stop().await;
}

// ------------------------------------------------------------ several relays

async fn wait_owns(metrics: &RelayMetrics, what: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while metrics.snapshot().owned_partitions == 0 {
        assert!(
            Instant::now() < deadline,
            "{what} owns no partition after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What [`three_relays_one_killed_lose_nothing_and_keep_order`] saw.
#[derive(Debug)]
pub struct KillRun {
    /// Events published.
    pub events: usize,
    /// Events relayed when the relay was killed.
    pub relayed_at_kill: i64,
    /// Messages received (events and duplicates).
    pub received: usize,
    /// Events received twice: the killed relay's unacknowledged batch.
    pub duplicates: usize,
    /// From the first relay's start until the outbox was empty.
    pub took: Duration,
}

/// Three relays, each with its own pool as three processes would have, share
/// the outbox while events keep arriving in bursts; once a third has been
/// relayed one relay is killed (its task aborted mid-work: no batch finished,
/// no lease released) and a new one starts 3 s later. Every event arrives,
/// nothing else does, per key in order; at most the killed relay's batch
/// (500) arrives twice; the relays alive at the end share the partitions.
pub async fn three_relays_one_killed_lose_nothing_and_keep_order<D: TestDatabase>(
    count: u64,
    keys: u64,
) -> KillRun {
    const BATCH: u32 = 500;
    let db = D::migrated().await;
    let (publisher, prefix, mut queue) = rabbit("kill3").await;
    let config = || RelayConfig {
        batch_size: BATCH,
        ..test_config(&prefix)
    };
    let start = |pool: sqlx::Pool<D::DB>, name: &str| {
        let mut config = config();
        config.name = name.to_owned();
        spawn_relay_on(D::relay_store(&pool), publisher.clone(), config)
    };

    let events = steps(count, keys);
    let burst = (events.len() / 6).max(1);
    let (before, during) = events.split_at(burst);
    publish_steps(db.pool(), before, 1_000).await;
    let inserted = Arc::new(AtomicUsize::new(before.len()));

    let started = Instant::now();
    let a = start(db.connect().await, "relay-a");
    let b = start(db.connect().await, "relay-b");
    let c = start(db.connect().await, "relay-c");
    for (r, name) in [(&a, "relay-a"), (&b, "relay-b"), (&c, "relay-c")] {
        wait_owns(&r.metrics, name, Duration::from_secs(30)).await;
    }
    let feeder = tokio::spawn({
        let pool = db.pool().clone();
        let during = during.to_vec();
        let inserted = inserted.clone();
        async move {
            // One transaction per burst, so every relay has full batches to
            // publish right after each commit.
            for chunk in during.chunks(burst) {
                publish_steps(&pool, chunk, chunk.len()).await;
                inserted.fetch_add(chunk.len(), Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(1_000)).await;
            }
        }
    });

    // Kill relay-a once a third is relayed, just after a burst landed: mid-batch.
    let deadline = Instant::now() + Duration::from_secs(180);
    let third = i64::try_from(events.len() / 3).unwrap_or(i64::MAX);
    loop {
        let relayed = inserted.load(Ordering::SeqCst) as i64 - pending(&db).await;
        if relayed >= third {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {relayed} events relayed after 180 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seen = inserted.load(Ordering::SeqCst);
    while inserted.load(Ordering::SeqCst) == seen && !feeder.is_finished() {
        assert!(Instant::now() < deadline, "the feeder stopped early");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    let a_published = a.metrics.published_total();
    let a_owned = a.metrics.snapshot().owned_partitions;
    a.abort().await;
    let relayed_at_kill = inserted.load(Ordering::SeqCst) as i64 - pending(&db).await;
    assert!(
        a_owned > 0 && a_published > 0,
        "the killed relay was working: {a_owned} partitions, {a_published} published"
    );

    // A new relay (a new id) about 3 s later.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let a2 = start(db.connect().await, "relay-a2");
    feeder.await.expect("feeder task");
    wait_drained(&db, Duration::from_secs(240)).await;
    let took = started.elapsed();

    // Everything arrived, in order per key; at most the killed relay's
    // in-flight batch twice.
    let mut received = Vec::with_capacity(events.len());
    loop {
        let batch = decode_amqp(&queue.try_read(1_000, Duration::from_secs(3)).await);
        if batch.is_empty() {
            break;
        }
        received.extend(batch);
    }
    let want: HashSet<(&str, u64)> = events.iter().map(|s| (s.key.as_str(), s.seq)).collect();
    let got: HashSet<(&str, u64)> = received.iter().map(|s| (s.key.as_str(), s.seq)).collect();
    let missing = want.difference(&got).count();
    assert_eq!(
        missing,
        0,
        "{missing} of {} events never arrived ({} messages received)",
        want.len(),
        received.len()
    );
    assert!(got.is_subset(&want), "events nobody published arrived");
    let duplicates = assert_per_key_order(&received);
    assert_eq!(received.len(), want.len() + duplicates);
    assert!(
        duplicates <= BATCH as usize,
        "{duplicates} duplicates: more than one batch ({BATCH}) was sent twice"
    );

    // The live relays share the partitions, the new one included.
    wait_owns(&a2.metrics, "relay-a2", Duration::from_secs(30)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let owned: usize = [&b, &c, &a2]
            .iter()
            .map(|r| r.metrics.snapshot().owned_partitions)
            .sum();
        if owned == D::PARTITIONS as usize {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the live relays own {owned} of {} partitions",
            D::PARTITIONS
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let total = a_published
        + b.metrics.published_total()
        + c.metrics.published_total()
        + a2.metrics.published_total();
    assert!(
        total >= count,
        "the relays' counters add up to only {total} of {count} events"
    );
    for r in [b, c, a2] {
        r.stop().await;
    }
    queue.delete().await;
    KillRun {
        events: events.len(),
        relayed_at_kill,
        received: received.len(),
        duplicates,
        took,
    }
}
