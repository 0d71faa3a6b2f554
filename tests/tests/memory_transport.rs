//! The in-memory transport behaves like our Kafka transport: per-key order
//! across partitions, publish-subscribe between groups, competing members
//! within a group with rebalances, releases that come round again without
//! committing past them, the in-flight bound, the size limit — and the real
//! consumer over it (with PostgreSQL) applies each event once despite
//! duplicates and rebalances.

use eventbus_tests::composed;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use eventbus::consumer::{dead_letter, Consumer, Context, DeliveryMode};
use eventbus::transport::memory::{MemoryBroker, MemoryPublisher, MemorySubscriber};
use eventbus::transport::{Delivered, Received, Subscriber};
use eventbus::{BoxError, Envelope, Event, OutgoingMessage, PublishError, Publisher};
use eventbus_tests::consumer::{run, Running};
use eventbus_tests::kafka::java_partition;
use eventbus_tests::relay::{steps, Step};
use eventbus_tests::TestDb;
use sqlx::{PgPool, Postgres};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

// ---------------------------------------------------------------- helpers

/// How long a test waits for something that should happen at once.
const PROMPTLY: Duration = Duration::from_secs(5);

const TOPIC: &str = "steps";

/// The CloudEvent the outbox would make of `step`.
fn envelope(step: &Step) -> Envelope {
    let data = serde_json::to_vec(step).expect("a Step serializes");
    let mut e = Envelope::new("urn:test:memory", Step::TYPE, data);
    e.partition_key = Some(step.key.clone());
    e.subject = Some(step.key.clone());
    e.dataschema = Some(Step::dataschema());
    e
}

/// Publishes `envelopes` to `topic` in one batch; every one must be accepted.
async fn publish(
    publisher: &MemoryPublisher,
    topic: &str,
    envelopes: &[Envelope],
) -> Vec<Delivered> {
    let batch: Vec<OutgoingMessage> = envelopes
        .iter()
        .map(|e| OutgoingMessage {
            destination: topic.to_owned(),
            envelope: e.clone(),
        })
        .collect();
    publisher
        .publish_batch(&batch)
        .await
        .into_iter()
        .zip(&batch)
        .map(|(result, m)| {
            result.unwrap_or_else(|e| panic!("publishing {} failed: {e}", m.envelope.id))
        })
        .collect()
}

/// Publishes `count` steps over `keys` keys to `topic`; returns their envelopes.
async fn publish_steps(broker: &MemoryBroker, topic: &str, count: u64, keys: u64) -> Vec<Envelope> {
    let envelopes: Vec<Envelope> = steps(count, keys).iter().map(envelope).collect();
    publish(&broker.publisher(), topic, &envelopes).await;
    envelopes
}

/// What a test remembers of a received message.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    id: String,
    key: String,
    seq: u64,
    lane: u64,
    redelivered: bool,
}

fn seen(message: &Received) -> Seen {
    let envelope = message
        .envelope
        .as_ref()
        .expect("the broker keeps CloudEvents");
    let step: Step = serde_json::from_slice(&envelope.data).expect("a Step");
    Seen {
        id: envelope.id.clone(),
        key: step.key,
        seq: step.seq,
        lane: message.lane,
        redelivered: message.redelivered,
    }
}

/// The next message; fails the test unless one comes promptly.
async fn receive(subscriber: &mut MemorySubscriber) -> Received {
    tokio::time::timeout(PROMPTLY, subscriber.next())
        .await
        .expect("a message within 5 s")
        .expect("the subscription is open")
        .expect("no receive error")
}

/// Fails the test if a message comes within `wait`.
async fn nothing_within(subscriber: &mut MemorySubscriber, wait: Duration) {
    if let Ok(message) = tokio::time::timeout(wait, subscriber.next()).await {
        panic!("expected no message, got {message:?}");
    }
}

/// Waits until `done()` holds; fails the test with `what` after `timeout`.
async fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < timeout, "{what}: not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A group member reading and acknowledging in a task until stopped.
struct Member {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Vec<Seen>>,
}

impl Member {
    fn spawn(mut subscriber: MemorySubscriber) -> Self {
        let (stop, mut stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let mut seen_all = Vec::new();
            loop {
                let message = tokio::select! {
                    m = subscriber.next() => m,
                    _ = &mut stopped => break,
                };
                let message = message.expect("open").expect("no receive error");
                seen_all.push(seen(&message));
                message
                    .settle
                    .ack()
                    .await
                    .expect("the acknowledgement counts");
                // Let the other members run between messages.
                tokio::task::yield_now().await;
            }
            subscriber.close().await.expect("close");
            seen_all
        });
        Member { stop, task }
    }

    async fn stop(self) -> Vec<Seen> {
        let _ = self.stop.send(());
        self.task.await.expect("member task")
    }
}

fn ids<'a>(seen: impl IntoIterator<Item = &'a Seen>) -> Vec<String> {
    seen.into_iter().map(|s| s.id.clone()).collect()
}

/// The partition of a step's key, as Kafka's Java client would pick it.
fn partition_of(key: &str, partitions: i32) -> i32 {
    java_partition(key.as_bytes(), partitions)
}

// ------------------------------------------------------------ transport

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn per_key_order_holds_across_partitions_with_concurrent_publishers() {
    const PUBLISHERS: u64 = 4;
    const KEYS: u64 = 8;
    const SEQS: u64 = 50;
    let total = usize::try_from(PUBLISHERS * KEYS * SEQS).expect("fits");
    let broker = MemoryBroker::new();
    let mut subscriber = broker.subscribe("reader", &[TOPIC]);

    // The reader runs while the publishers publish.
    let reader = tokio::spawn(async move {
        let mut all = Vec::with_capacity(total);
        while all.len() < total {
            let message = receive(&mut subscriber).await;
            all.push(seen(&message));
            message.settle.ack().await.expect("ack");
        }
        all
    });
    let publishers: Vec<JoinHandle<Vec<(String, Delivered)>>> = (0..PUBLISHERS)
        .map(|p| {
            let publisher = broker.publisher();
            tokio::spawn(async move {
                let mut delivered = Vec::new();
                for seq in 0..SEQS {
                    // One batch per round, every key of this publisher in it.
                    let batch: Vec<Envelope> = (0..KEYS)
                        .map(|k| {
                            envelope(&Step {
                                key: format!("p{p}-k{k}"),
                                seq,
                                pad: String::new(),
                            })
                        })
                        .collect();
                    let keys = batch
                        .iter()
                        .map(|e| e.partition_key.clone().expect("keyed"));
                    delivered.extend(keys.zip(publish(&publisher, TOPIC, &batch).await));
                    tokio::task::yield_now().await;
                }
                delivered
            })
        })
        .collect();
    let mut delivered: Vec<(String, Delivered)> = Vec::new();
    for publisher in publishers {
        delivered.extend(publisher.await.expect("publisher task"));
    }
    let received = tokio::time::timeout(Duration::from_secs(60), reader)
        .await
        .expect("the reader gets everything within 60 s")
        .expect("reader task");

    // Each key went to Kafka's partition for it, at rising offsets.
    let mut last_offset: HashMap<String, i64> = HashMap::new();
    for (key, d) in &delivered {
        assert_eq!(d.partition, Some(partition_of(key, 4)), "key {key}");
        let offset = d.offset.expect("an offset");
        if let Some(last) = last_offset.insert(key.clone(), offset) {
            assert!(offset > last, "offsets of {key} rise");
        }
    }
    // Everything once, each key in order on one lane.
    let distinct: BTreeSet<String> = ids(&received).into_iter().collect();
    assert_eq!(distinct.len(), total, "no duplicates, no loss");
    let mut per_key: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    let mut lanes: BTreeMap<&str, BTreeSet<u64>> = BTreeMap::new();
    for s in &received {
        per_key.entry(&s.key).or_default().push(s.seq);
        lanes.entry(&s.key).or_default().insert(s.lane);
        assert!(!s.redelivered);
    }
    let in_order: Vec<u64> = (0..SEQS).collect();
    for (key, seqs) in &per_key {
        assert_eq!(seqs, &in_order, "order of {key}");
        assert_eq!(lanes[key].len(), 1, "{key} stays on one lane");
    }
    let partitions: BTreeSet<i32> = per_key.keys().map(|k| partition_of(k, 4)).collect();
    let all_lanes: BTreeSet<u64> = lanes.values().flatten().copied().collect();
    assert_eq!(all_lanes.len(), partitions.len(), "one lane per partition");
    assert_eq!(broker.pending("reader", TOPIC), 0);
    assert_eq!(
        broker.committed("reader", TOPIC).iter().sum::<i64>(),
        i64::try_from(total).expect("fits")
    );
}

#[tokio::test]
async fn every_group_gets_every_message_from_the_beginning() {
    let broker = MemoryBroker::new();
    let mut billing = broker.subscribe("billing", &[TOPIC]);
    let published: BTreeSet<String> = publish_steps(&broker, TOPIC, 200, 7)
        .await
        .into_iter()
        .map(|e| e.id)
        .collect();
    // Shipping subscribes after the messages were published: it starts at the
    // beginning all the same.
    let mut shipping = broker.subscribe("shipping", &[TOPIC]);
    for (group, subscriber) in [("billing", &mut billing), ("shipping", &mut shipping)] {
        let mut got = BTreeSet::new();
        for _ in 0..200 {
            let message = receive(subscriber).await;
            assert!(got.insert(seen(&message).id), "{group}: no duplicate");
            message.settle.ack().await.expect("ack");
        }
        assert_eq!(got, published, "{group} got every message");
        nothing_within(subscriber, Duration::from_millis(100)).await;
        assert_eq!(broker.pending(group, TOPIC), 0);
    }
    assert_eq!(
        broker.pending("audit", TOPIC),
        200,
        "a group that never read it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_of_one_group_split_the_work() {
    let broker = MemoryBroker::new();
    let one = broker.subscribe("billing", &[TOPIC]);
    let two = broker.subscribe("billing", &[TOPIC]);
    let (a, b) = (one.assignment(), two.assignment());
    assert_eq!(
        a.len() + b.len(),
        4,
        "every partition assigned: {a:?} {b:?}"
    );
    assert!(a.iter().all(|p| !b.contains(p)), "disjoint: {a:?} {b:?}");
    let (one, two) = (Member::spawn(one), Member::spawn(two));
    let published: BTreeSet<String> = publish_steps(&broker, TOPIC, 1_000, 50)
        .await
        .into_iter()
        .map(|e| e.id)
        .collect();
    wait_until("everything acknowledged", Duration::from_secs(30), || {
        broker.pending("billing", TOPIC) == 0
    })
    .await;
    let (one, two) = (one.stop().await, two.stop().await);
    assert!(
        !one.is_empty() && !two.is_empty(),
        "both worked: {} and {}",
        one.len(),
        two.len()
    );
    let all: Vec<String> = ids(one.iter().chain(&two));
    let distinct: BTreeSet<String> = all.iter().cloned().collect();
    assert_eq!(all.len(), distinct.len(), "no message handled twice");
    assert_eq!(distinct, published, "no message lost");
    assert!(one.iter().chain(&two).all(|s| !s.redelivered));
    let lanes_one: BTreeSet<u64> = one.iter().map(|s| s.lane).collect();
    assert!(
        two.iter().all(|s| !lanes_one.contains(&s.lane)),
        "partitions are not shared"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_joining_mid_stream_takes_over_partitions() {
    let broker = MemoryBroker::new();
    let mut first = broker.subscribe("billing", &[TOPIC]);
    let published: BTreeSet<String> = publish_steps(&broker, TOPIC, 400, 40)
        .await
        .into_iter()
        .map(|e| e.id)
        .collect();
    let mut acknowledged: Vec<String> = Vec::new();
    for _ in 0..100 {
        let message = receive(&mut first).await;
        acknowledged.push(seen(&message).id);
        message.settle.ack().await.expect("ack");
    }
    let mut held = Vec::new();
    for _ in 0..12 {
        held.push(receive(&mut first).await);
    }

    let second = broker.subscribe("billing", &[TOPIC]);
    let moved: BTreeSet<i32> = second.assignment().into_iter().map(|(_, p)| p).collect();
    assert_eq!(moved.len(), 2, "the newcomer takes half the partitions");
    assert_eq!(first.assignment().len(), 2);
    // Settle handles of moved partitions no longer count; the others do.
    let mut moved_away = BTreeSet::new();
    for message in held {
        let s = seen(&message);
        let was_moved = moved.contains(&partition_of(&s.key, 4));
        match message.settle.ack().await {
            Ok(()) => {
                assert!(!was_moved, "{} of a moved partition acknowledged", s.id);
                acknowledged.push(s.id);
            }
            Err(e) => {
                assert!(was_moved, "{} of a kept partition refused: {e}", s.id);
                moved_away.insert(s.id);
            }
        }
    }
    assert!(
        !moved_away.is_empty(),
        "some held messages were in moved partitions"
    );

    let (first, second) = (Member::spawn(first), Member::spawn(second));
    wait_until("everything acknowledged", Duration::from_secs(30), || {
        broker.pending("billing", TOPIC) == 0
    })
    .await;
    let (first, second) = (first.stop().await, second.stop().await);
    assert!(!first.is_empty() && !second.is_empty());
    for s in &second {
        assert_eq!(s.redelivered, moved_away.contains(&s.id), "{s:?}");
    }
    assert!(
        moved_away
            .iter()
            .all(|id| second.iter().any(|s| &s.id == id)),
        "the newcomer got the moved messages"
    );
    acknowledged.extend(ids(first.iter().chain(&second)));
    let distinct: BTreeSet<String> = acknowledged.iter().cloned().collect();
    assert_eq!(
        acknowledged.len(),
        distinct.len(),
        "no message acknowledged twice"
    );
    assert_eq!(distinct, published, "no message lost");
}

#[tokio::test]
async fn unsettled_messages_of_a_dropped_member_come_round_again() {
    let broker = MemoryBroker::new();
    let mut gone = broker.subscribe("billing", &[TOPIC]);
    let mut stays = broker.subscribe("billing", &[TOPIC]);
    let published: BTreeSet<String> = publish_steps(&broker, TOPIC, 200, 20)
        .await
        .into_iter()
        .map(|e| e.id)
        .collect();
    let mut acknowledged = BTreeSet::new();
    for _ in 0..10 {
        let message = receive(&mut gone).await;
        acknowledged.insert(seen(&message).id);
        message.settle.ack().await.expect("ack");
    }
    // Handed out, still being handled when the member dies.
    let mut unsettled = Vec::new();
    for _ in 0..10 {
        unsettled.push(receive(&mut gone).await);
    }
    let unsettled_ids: BTreeSet<String> = unsettled.iter().map(|m| seen(m).id).collect();
    drop(gone);
    assert_eq!(
        stays.assignment().len(),
        4,
        "the survivor owns every partition"
    );

    let mut got = Vec::new();
    for _ in 0..190 {
        let message = receive(&mut stays).await;
        got.push(seen(&message));
        message.settle.ack().await.expect("ack");
    }
    nothing_within(&mut stays, Duration::from_millis(100)).await;
    for s in &got {
        assert!(
            !acknowledged.contains(&s.id),
            "{} was acknowledged before",
            s.id
        );
        assert_eq!(s.redelivered, unsettled_ids.contains(&s.id), "{s:?}");
    }
    let all: BTreeSet<String> = ids(&got).into_iter().chain(acknowledged).collect();
    assert_eq!(all, published, "nothing lost");
    assert_eq!(broker.pending("billing", TOPIC), 0);
    // The dead member's late acknowledgements change nothing.
    for message in unsettled {
        assert!(
            message.settle.ack().await.is_err(),
            "a late ack does not count"
        );
    }
    assert_eq!(broker.pending("billing", TOPIC), 0);
}

#[tokio::test]
async fn a_closed_member_leaves_the_group() {
    let broker = MemoryBroker::new();
    let mut closing = broker.subscribe("billing", &[TOPIC]);
    let mut stays = broker.subscribe("billing", &[TOPIC]);
    publish_steps(&broker, TOPIC, 40, 40).await;
    let held = receive(&mut closing).await;
    closing.close().await.expect("close");
    assert!(closing.next().await.is_none(), "closed");
    assert!(closing.assignment().is_empty());
    assert_eq!(stays.assignment().len(), 4);
    assert!(
        held.settle.ack().await.is_err(),
        "acks after close do not count"
    );
    for _ in 0..40 {
        receive(&mut stays).await.settle.ack().await.expect("ack");
    }
    assert_eq!(broker.pending("billing", TOPIC), 0);
}

#[tokio::test]
async fn a_released_message_comes_round_again_and_nothing_after_it_commits() {
    let broker = MemoryBroker::new().with_partitions(1);
    let mut subscriber = broker.subscribe("billing", &[TOPIC]);
    let published = publish_steps(&broker, TOPIC, 6, 1).await;
    let mut handed = Vec::new();
    for _ in 0..6 {
        handed.push(receive(&mut subscriber).await);
    }
    let seqs: Vec<u64> = handed.iter().map(|m| seen(m).seq).collect();
    assert_eq!(seqs, vec![0, 1, 2, 3, 4, 5]);
    let mut handed = handed.into_iter();
    let mut next = || handed.next().expect("handed out");
    next().settle.ack().await.expect("ack 0");
    next().settle.release().await.expect("release 1");
    next().settle.ack().await.expect("ack 2");
    next()
        .settle
        .ack()
        .await
        .expect("ack 3, handed out before the rewind");
    drop(next()); // 4: dropped unsettled, which counts as a release
    let five = next();
    assert_eq!(
        broker.committed("billing", TOPIC),
        vec![1],
        "nothing commits past 1"
    );
    assert_eq!(broker.pending("billing", TOPIC), 3, "1, 4 and 5");

    // 1 and 4 come round again, marked; 2 and 3 were acknowledged.
    let again = receive(&mut subscriber).await;
    assert_eq!((seen(&again).seq, again.redelivered), (1, true));
    assert_eq!(seen(&again).id, published[1].id);
    let four = receive(&mut subscriber).await;
    assert_eq!((seen(&four).seq, four.redelivered), (4, true));
    // 5 is still in flight from before: it comes again too, as a repeat.
    let five_again = receive(&mut subscriber).await;
    assert_eq!((seen(&five_again).seq, five_again.redelivered), (5, true));
    nothing_within(&mut subscriber, Duration::from_millis(100)).await;

    again.settle.ack().await.expect("ack 1");
    assert_eq!(broker.committed("billing", TOPIC), vec![4]);
    four.settle.ack().await.expect("ack 4");
    five.settle.ack().await.expect("ack 5");
    five_again
        .settle
        .ack()
        .await
        .expect("ack 5 again: it changes nothing");
    assert_eq!(broker.committed("billing", TOPIC), vec![6]);
    assert_eq!(broker.pending("billing", TOPIC), 0);
}

#[tokio::test]
async fn the_in_flight_bound_is_respected() {
    let broker = MemoryBroker::new();
    let mut subscriber = broker.subscribe("billing", &[TOPIC]).max_unacked(3);
    publish_steps(&broker, TOPIC, 10, 10).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(receive(&mut subscriber).await);
    }
    assert_eq!(subscriber.unsettled(), 3);
    nothing_within(&mut subscriber, Duration::from_millis(200)).await;

    // Each way of settling gives a slot back.
    held.pop().expect("held").settle.ack().await.expect("ack");
    held.push(receive(&mut subscriber).await);
    nothing_within(&mut subscriber, Duration::from_millis(100)).await;
    held.pop()
        .expect("held")
        .settle
        .release()
        .await
        .expect("release");
    held.push(receive(&mut subscriber).await);
    nothing_within(&mut subscriber, Duration::from_millis(100)).await;
    drop(held.pop());
    held.push(receive(&mut subscriber).await);
    assert_eq!(subscriber.unsettled(), 3);
    nothing_within(&mut subscriber, Duration::from_millis(100)).await;

    // A waiting `next` wakes when a slot is given back.
    let released = held.pop().expect("held");
    let waiting = tokio::spawn(async move {
        let message = receive(&mut subscriber).await;
        (subscriber, message)
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!waiting.is_finished(), "waits for a slot");
    released.settle.ack().await.expect("ack");
    let (subscriber, _message) = waiting.await.expect("woken");
    assert_eq!(subscriber.unsettled(), 3);
}

#[tokio::test]
async fn a_waiting_subscriber_wakes_on_publish() {
    let broker = MemoryBroker::new();
    // Subscribing creates the topic: the subscriber may come first.
    let mut subscriber = broker.subscribe("billing", &["orders"]);
    assert_eq!(broker.committed("billing", "orders"), vec![0, 0, 0, 0]);
    let waiting =
        tokio::spawn(async move { receive(&mut subscriber).await.envelope.map(|e| e.id) });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!waiting.is_finished(), "nothing to receive yet");
    let sent = publish_steps(&broker, "orders", 1, 1).await;
    let id = waiting.await.expect("woken").expect("a CloudEvent");
    assert_eq!(id, sent[0].id);
}

#[tokio::test]
async fn topics_are_created_on_first_use() {
    let broker = MemoryBroker::new().with_partitions(3);
    let publisher = broker.publisher();
    assert_eq!(publisher.system(), "memory");
    assert!(
        broker.committed("g", "fresh").is_empty(),
        "no such topic yet"
    );
    publish_steps(&broker, "fresh", 5, 5).await;
    assert_eq!(broker.published("fresh"), 5);
    assert_eq!(broker.committed("g", "fresh").len(), 3);
    publisher.ensure_destination("made").await.expect("created");
    publisher
        .ensure_destination("made")
        .await
        .expect("idempotent");
    assert_eq!(broker.committed("g", "made").len(), 3);
    assert!(matches!(
        publisher.ensure_destination("").await,
        Err(PublishError::Rejected(_))
    ));
}

#[tokio::test]
async fn oversized_messages_are_rejected() {
    let step = Step {
        key: "k".into(),
        seq: 0,
        pad: "x".repeat(1_000),
    };
    let fits = envelope(&step);
    let size = fits.to_json().len();
    let broker = MemoryBroker::new().with_max_message_bytes(size);
    let mut subscriber = broker.subscribe("billing", &[TOPIC]);
    let mut too_big = envelope(&step);
    too_big.subject = Some("one byte more".into());
    assert!(too_big.to_json().len() > size);
    let after = envelope(&Step {
        seq: 1,
        ..step.clone()
    });
    let other_key = envelope(&Step {
        key: "other".into(),
        seq: 0,
        pad: String::new(),
    });
    let batch: Vec<OutgoingMessage> = [&fits, &too_big, &after, &other_key]
        .into_iter()
        .map(|e| OutgoingMessage {
            destination: TOPIC.into(),
            envelope: e.clone(),
        })
        .collect();
    let results = broker.publisher().publish_batch(&batch).await;
    assert!(
        results[0].is_ok(),
        "exactly the limit fits: {:?}",
        results[0]
    );
    assert!(
        matches!(results[1], Err(PublishError::Rejected(_))),
        "{:?}",
        results[1]
    );
    assert!(
        matches!(results[2], Err(PublishError::NotSent(_))),
        "{:?}",
        results[2]
    );
    assert!(results[3].is_ok(), "other keys go on: {:?}", results[3]);
    let stored: Vec<String> = broker.messages(TOPIC).into_iter().map(|e| e.id).collect();
    assert_eq!(stored, vec![fits.id.clone(), other_key.id.clone()]);
    for _ in 0..2 {
        let message = receive(&mut subscriber).await;
        assert_ne!(seen(&message).id, too_big.id);
        message.settle.ack().await.expect("ack");
    }
    nothing_within(&mut subscriber, Duration::from_millis(100)).await;

    // The default limit is 1 MiB.
    let broker = MemoryBroker::new();
    let huge = envelope(&Step {
        pad: "x".repeat(1024 * 1024),
        ..step
    });
    let results = publish_one(&broker.publisher(), &huge).await;
    assert!(
        matches!(results, Err(PublishError::Rejected(_))),
        "{results:?}"
    );
    assert_eq!(broker.published(TOPIC), 0);
}

async fn publish_one(
    publisher: &MemoryPublisher,
    envelope: &Envelope,
) -> Result<Delivered, PublishError> {
    let message = OutgoingMessage {
        destination: TOPIC.into(),
        envelope: envelope.clone(),
    };
    publisher
        .publish_batch(std::slice::from_ref(&message))
        .await
        .into_iter()
        .next()
        .expect("one result per message")
}

// ------------------------------------------------- the consumer over it

async fn create_effects(pool: &PgPool) {
    sqlx::query(
        "CREATE TABLE effects (id bigserial PRIMARY KEY, key text NOT NULL, seq bigint NOT NULL, \
         event_id text NOT NULL)",
    )
    .execute(pool)
    .await
    .expect("create effects");
}

/// The side effect of handling a step: a row in the handler's transaction.
async fn record(ctx: &Context<Postgres>, step: &Step, pause: Duration) -> Result<(), BoxError> {
    let mut tx = ctx.tx().await?;
    sqlx::query("INSERT INTO effects (key, seq, event_id) VALUES ($1, $2, $3)")
        .bind(&step.key)
        .bind(i64::try_from(step.seq)?)
        .bind(&ctx.envelope().id)
        .execute(&mut **tx)
        .await?;
    tokio::time::sleep(pause).await;
    Ok(())
}

async fn scalar(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(composed(sql))
        .fetch_one(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Starts an effectively-once consumer of `group` that records each step,
/// pausing `pause` per event.
fn start(db: &TestDb, broker: &MemoryBroker, group: &str, pause: Duration) -> Running {
    let consumer =
        Consumer::builder(group)
            .mode(DeliveryMode::EffectivelyOnce)
            .on(move |ctx: Context<Postgres>, step: Step| async move {
                record(&ctx, &step, pause).await
            })
            .build(
                db.pool.clone(),
                Box::new(broker.subscribe(group, &[TOPIC])),
                Arc::new(broker.publisher()),
            )
            .expect("a handler is registered");
    run(consumer)
}

/// Publishes `count` steps over `keys` keys, then publishes every
/// `copy_every`-th again (same event, same id); returns how many copies.
async fn publish_with_duplicates(
    broker: &MemoryBroker,
    count: u64,
    keys: u64,
    copy_every: usize,
) -> u64 {
    let originals = publish_steps(broker, TOPIC, count, keys).await;
    let copies: Vec<Envelope> = originals.iter().step_by(copy_every).cloned().collect();
    publish(&broker.publisher(), TOPIC, &copies).await;
    copies.len() as u64
}

async fn wait_acknowledged(broker: &MemoryBroker, group: &str, timeout: Duration) {
    let start = Instant::now();
    while broker.pending(group, TOPIC) > 0 {
        assert!(
            start.elapsed() < timeout,
            "group {group} left {} messages unacknowledged after {timeout:?}",
            broker.pending(group, TOPIC)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const ALL_EFFECTS: &str = "SELECT count(*) FROM effects";
const DISTINCT_EFFECTS: &str = "SELECT count(*) FROM (SELECT DISTINCT key, seq FROM effects) d";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_consumer_applies_each_event_once_despite_duplicates() {
    let db = TestDb::migrated().await;
    create_effects(&db.pool).await;
    let broker = MemoryBroker::new();
    let copies = publish_with_duplicates(&broker, 200, 10, 5).await;
    assert_eq!(copies, 40);
    assert_eq!(broker.published(TOPIC), 240);

    let running = start(&db, &broker, "billing", Duration::ZERO);
    wait_acknowledged(&broker, "billing", Duration::from_secs(60)).await;
    let consumer = running.stop().await;

    assert_eq!(
        scalar(&db.pool, ALL_EFFECTS).await,
        200,
        "each side effect once"
    );
    assert_eq!(scalar(&db.pool, DISTINCT_EFFECTS).await, 200);
    assert_eq!(consumer.metrics().handled(), 200);
    assert_eq!(
        consumer.metrics().duplicates(),
        40,
        "the copies were recognised"
    );
    assert_eq!(
        broker.published(&dead_letter::destination_of(TOPIC, "billing")),
        0,
        "no dead letters"
    );
    // One lane per partition, handled in order: each key's effects in order.
    let rows: Vec<(String, i64)> = sqlx::query_as("SELECT key, seq FROM effects ORDER BY id")
        .fetch_all(&db.pool)
        .await
        .expect("read effects");
    let mut last: HashMap<String, i64> = HashMap::new();
    for (key, seq) in rows {
        let before = last.insert(key.clone(), seq);
        assert_eq!(
            before.map_or(0, |b| b + 1),
            seq,
            "effects of {key} in order"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_of_one_group_apply_each_event_once_across_rebalances() {
    let db = TestDb::migrated().await;
    create_effects(&db.pool).await;
    let broker = MemoryBroker::new();
    let copies = publish_with_duplicates(&broker, 300, 12, 4).await;

    // A slow handler keeps messages in flight across the rebalances.
    let pause = Duration::from_millis(3);
    let first = start(&db, &broker, "billing", pause);
    wait_until_effects(&db.pool, 60).await;
    let second = start(&db, &broker, "billing", pause);
    wait_until_effects(&db.pool, 150).await;
    // The first leaves mid-stream: the second takes over everything.
    let first = first.stop().await;
    wait_acknowledged(&broker, "billing", Duration::from_secs(60)).await;
    let second = second.stop().await;

    assert_eq!(
        scalar(&db.pool, ALL_EFFECTS).await,
        300,
        "each side effect once"
    );
    assert_eq!(scalar(&db.pool, DISTINCT_EFFECTS).await, 300);
    let (m1, m2) = (first.metrics(), second.metrics());
    assert!(m1.handled() > 0 && m2.handled() > 0, "both handled some");
    assert_eq!(m1.handled() + m2.handled(), 300);
    assert!(
        m1.duplicates() + m2.duplicates() >= copies,
        "the copies were recognised"
    );
    assert_eq!(
        broker.published(&dead_letter::destination_of(TOPIC, "billing")),
        0,
        "no dead letters"
    );
}

async fn wait_until_effects(pool: &PgPool, n: i64) {
    let start = Instant::now();
    while scalar(pool, ALL_EFFECTS).await < n {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{n} effects within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Version gating keeps a key's order on the in-memory broker too: m5 (a
/// newer version) parked, m6 and m7 parked behind it, other keys handled; the
/// upgraded member handles m5, m6, m7 in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_newer_version_holds_its_key_not_the_partition() {
    let broker = MemoryBroker::new().with_partitions(2);
    let group = eventbus_tests::unique_name("gate_order");
    let subscribe = || {
        let subscriber: Box<dyn eventbus::transport::Subscriber> =
            Box::new(broker.subscribe(&group, &[TOPIC]));
        std::future::ready(subscriber)
    };
    eventbus_tests::consumer::newer_version_keeps_key_order(
        &group,
        TOPIC,
        Arc::new(broker.publisher()),
        subscribe,
    )
    .await;
}
