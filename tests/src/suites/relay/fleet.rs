//! Several relays sharing the outbox while one of them dies.

use super::*;

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
    let duplicates = assert_killed_relay_run(&events, &received, BATCH);

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

/// The broker a relay sends to in [`a_relay_killed_mid_drain_loses_nothing`].
#[derive(Debug, Clone, Copy)]
pub enum Sink {
    /// A durable RabbitMQ queue bound to the destination.
    RabbitMq,
    /// A 4-partition Kafka topic.
    Kafka,
    /// An SQS FIFO queue on the local SQS-compatible server.
    Sqs,
}

/// A publisher to `sink` and what reads everything it received, duplicates
/// included, once the outbox is drained.
enum Reader {
    RabbitMq(Box<crate::rabbitmq::TestQueue>),
    Kafka { brokers: String, topic: String },
    Sqs(Box<dyn eventbus::transport::Subscriber>, String),
}

impl Sink {
    async fn open(self, tag: &str) -> (Arc<dyn Publisher>, String, Reader) {
        match self {
            Sink::RabbitMq => {
                let (publisher, prefix, queue) = rabbit(tag).await;
                (publisher, prefix, Reader::RabbitMq(Box::new(queue)))
            }
            Sink::Kafka => {
                let (publisher, prefix, topic, brokers) = kafka(tag).await;
                (publisher, prefix, Reader::Kafka { brokers, topic })
            }
            Sink::Sqs => {
                let prefix = format!("{}.", unique_name(tag));
                let destination = format!("{prefix}{}", Step::DESTINATION);
                let publisher = Arc::new(crate::sqs::publisher(true).await);
                let subscriber = crate::sqs::subscriber(&[&destination], true, 100).await;
                (publisher, prefix, Reader::Sqs(subscriber, destination))
            }
        }
    }
}

impl Reader {
    /// Everything that arrived: at least `at_least` messages, then until
    /// nothing more comes for a few seconds.
    async fn read(self, at_least: usize) -> Vec<Step> {
        let timeout = Duration::from_secs(300);
        match self {
            Reader::RabbitMq(mut queue) => {
                let mut received = decode_amqp(&queue.read(at_least, timeout).await);
                loop {
                    let more = decode_amqp(&queue.try_read(1_000, Duration::from_secs(3)).await);
                    if more.is_empty() {
                        break;
                    }
                    received.extend(more);
                }
                queue.delete().await;
                received
            }
            Reader::Kafka { brokers, topic } => {
                crate::kafka::read_steps(
                    &brokers,
                    &topic,
                    at_least,
                    Duration::from_secs(3),
                    timeout,
                )
                .await
            }
            Reader::Sqs(mut subscriber, destination) => {
                let received = crate::sqs::read_all(subscriber.as_mut(), at_least, timeout)
                    .await
                    .iter()
                    .map(|(e, _)| serde_json::from_slice(&e.data).expect("a Step"))
                    .collect();
                subscriber.close().await.expect("close");
                crate::sqs::delete_queues(&[&destination], &[], true).await;
                received
            }
        }
    }
}

/// A pipelined relay (the default) drains a backlog of `count` events over
/// `keys` keys into `sink` in batches of `batch`; once a third is published
/// it is killed (its task aborted: the batch in flight is not finished, the
/// batch sent before it may not be deleted yet, no lease is released) and a
/// new relay takes over when the leases expire. Every event arrives, per key
/// in order; at most the two batches the killed relay had sent and not
/// deleted arrive twice (none on SQS FIFO queues, which drop a repeated
/// message id).
pub async fn a_relay_killed_mid_drain_loses_nothing<D: TestDatabase>(
    sink: Sink,
    count: u64,
    keys: u64,
    batch: u32,
) -> KillRun {
    let db = D::migrated().await;
    let (publisher, prefix, reader) = sink.open("kill1").await;
    let config = || RelayConfig {
        batch_size: batch,
        ..test_config(&prefix)
    };
    assert!(config().pipeline, "the default relay is pipelined");
    let events = steps(count, keys);
    publish_steps(db.pool(), &events, 1_000).await;

    // Each relay with a pool of its own, as a process has: the killed one's
    // connections close with it, and their open transactions roll back.
    let start = |pool: sqlx::Pool<D::DB>| {
        spawn_relay_on(D::relay_store(&pool), publisher.clone(), config())
    };
    let started = Instant::now();
    let first = start(db.connect().await);
    let third = count / 3;
    let deadline = Instant::now() + Duration::from_secs(180);
    while first.metrics.published_total() < third {
        assert!(
            Instant::now() < deadline,
            "only {} of {count} events published after 180 s",
            first.metrics.published_total()
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    first.abort().await;
    let relayed_at_kill = i64::try_from(count).unwrap_or(i64::MAX) - pending(&db).await;
    assert!(
        relayed_at_kill < i64::try_from(count).unwrap_or(i64::MAX),
        "the relay was killed mid-drain ({relayed_at_kill} of {count} gone)"
    );

    let second = start(db.connect().await);
    wait_drained(&db, Duration::from_secs(240)).await;
    let took = started.elapsed();
    let received = reader.read(events.len()).await;
    second.stop().await;

    let duplicates = assert_killed_relay_run(&events, &received, batch);
    KillRun {
        events: events.len(),
        relayed_at_kill,
        received: received.len(),
        duplicates,
        took,
    }
}

/// The verdict on a run with a killed relay: every event of `events` in
/// `received`, nothing else, per key in order, and at most the two batches
/// of `batch` rows a pipelined relay has sent and not yet deleted (one in
/// flight, one whose delete ran in the background; ADR 14) twice. Returns
/// the duplicates.
fn assert_killed_relay_run(events: &[Step], received: &[Step], batch: u32) -> usize {
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
    let duplicates = assert_per_key_order(received);
    assert_eq!(received.len(), want.len() + duplicates);
    assert!(
        duplicates <= 2 * batch as usize,
        "{duplicates} duplicates: more than the two batches ({batch} rows each) a \
         pipelined relay has sent and not yet deleted were sent twice"
    );
    duplicates
}
