//! The consumer over a real Kafka-protocol broker and PostgreSQL: effectively
//! once under redeliveries and a crash, what the weaker modes cost under a
//! crash, per-key order with concurrent partitions, dead letters and
//! re-driving, the in-flight bound, point-to-point versus publish-subscribe
//! groups, batch handlers, the rate limit, and a rebalance in the middle of a
//! batch.

use std::collections::HashSet;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventbus::consumer::{dead_letter, BatchContext, Consumer, Context, DeliveryMode, RetryPolicy};
use eventbus::transport::kafka::rdkafka;
use eventbus::transport::kafka::{envelope_from_message, KafkaPublisher};
use eventbus::transport::{Settle, Subscriber};
use eventbus::{Envelope, Event};
use eventbus_tests::consumer::{
    batch_handler_scenario, create_effects, envelope, publish, rate_limit_scenario, record,
    record_batch, run, scalar, wait_count, wait_until, Broker, Counting, Gauge, ALL_EFFECTS,
    DISTINCT_EFFECTS, REPEATED_EFFECTS,
};
use eventbus_tests::kafka::{
    self, committed_total, header, java_partition, one_per_batch_publisher, read_all,
};
use eventbus_tests::relay::{
    assert_per_key_order, publish_steps, spawn_relay, steps, test_config, wait_drained, Step,
};
use eventbus_tests::{kafka_brokers, unique_name, TestDb};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sqlx::Postgres;
use tokio::io::{AsyncBufReadExt, BufReader};

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

/// The `consumer_worker` binary, consuming in a process of its own.
struct Worker {
    child: tokio::process::Child,
}

impl Worker {
    async fn start(
        db: &TestDb,
        brokers: &str,
        group: &str,
        topic: &str,
        mode: &str,
        handler_sleep_ms: u64,
    ) -> Self {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_consumer_worker"))
            .arg(&db.url)
            .arg(format!("kafka://{brokers}"))
            .args([group, topic, mode, "64"])
            .arg(handler_sleep_ms.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start consumer_worker");
        let stdout = child.stdout.take().expect("worker stdout");
        let mut lines = BufReader::new(stdout).lines();
        let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("worker starts within 30 s")
            .expect("read worker stdout");
        assert_eq!(first.as_deref(), Some("ready"), "worker start-up line");
        // Keep the pipe open (and drained) for as long as the worker lives.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Worker { child }
    }

    /// SIGKILL: no clean-up, no commit, no leaving the group.
    async fn kill(mut self) {
        self.child.start_kill().expect("SIGKILL the worker");
        self.child.wait().await.expect("reap the worker");
    }
}

/// What a crash run left in the `effects` table.
#[derive(Debug)]
struct CrashOutcome {
    events: i64,
    /// Effects when the first worker was killed.
    at_kill: i64,
    /// Effects in all.
    total: i64,
    /// Distinct (key, seq) with an effect.
    distinct: i64,
    /// (key, seq) with more than one effect.
    repeated: i64,
    /// How long the second worker took until the group had committed everything.
    recovery: Duration,
}

/// Publishes `count` steps over `keys` keys through the outbox and the relay to
/// a 4-partition topic, publishes again a copy of every `redeliver_every`-th
/// (same ids, directly with the publisher), then runs the worker in `mode`,
/// SIGKILLs it once `kill_at` effects exist, restarts it and waits until the
/// group has committed every message of the topic.
async fn crash_run(
    tag: &str,
    count: u64,
    keys: u64,
    redeliver_every: Option<usize>,
    mode: &str,
    handler_sleep_ms: u64,
    kill_at: i64,
) -> (TestDb, CrashOutcome) {
    let db = TestDb::migrated().await;
    create_effects(&db.pool).await;
    let brokers = kafka_brokers().await;
    let prefix = format!("{}.", unique_name(tag));
    let topic = format!("{prefix}{}", Step::DESTINATION);
    let publisher = Arc::new(one_per_batch_publisher(&brokers, &topic, 4).await);

    let events = steps(count, keys);
    publish_steps(&db.pool, &events, 1_000).await;
    let relay = spawn_relay(&db.pool, publisher.clone(), test_config(&prefix));
    wait_drained(&db.pool, Duration::from_secs(120)).await;
    relay.stop().await;

    let mut messages = i64::try_from(count).expect("count fits");
    if let Some(every) = redeliver_every {
        let sent = read_all(&brokers, &topic, events.len(), Duration::from_secs(60)).await;
        assert_eq!(sent.len(), events.len(), "the relay published every event");
        let copies: Vec<Envelope> = sent
            .iter()
            .step_by(every)
            .map(|m| envelope_from_message(m).expect("the relay writes CloudEvents"))
            .collect();
        publish(&*publisher, &topic, &copies).await;
        messages += i64::try_from(copies.len()).expect("copies fit");
    }

    let group = unique_name(&format!("{tag}_group"));
    let worker = Worker::start(&db, &brokers, &group, &topic, mode, handler_sleep_ms).await;
    wait_count(&db.pool, ALL_EFFECTS, kill_at, Duration::from_secs(180)).await;
    worker.kill().await;
    let at_kill = scalar(&db.pool, ALL_EFFECTS).await;

    let worker = Worker::start(&db, &brokers, &group, &topic, mode, handler_sleep_ms).await;
    let recovery =
        wait_committed(&brokers, &group, &topic, messages, Duration::from_secs(180)).await;
    worker.kill().await;

    let outcome = CrashOutcome {
        events: i64::try_from(count).expect("count fits"),
        at_kill,
        total: scalar(&db.pool, ALL_EFFECTS).await,
        distinct: scalar(&db.pool, DISTINCT_EFFECTS).await,
        repeated: scalar(&db.pool, REPEATED_EFFECTS).await,
        recovery,
    };
    eprintln!(
        "{tag}: {outcome:?}; the second worker caught up in {:?}",
        outcome.recovery
    );
    (db, outcome)
}

// ------------------------------------------------------------------ tests

/// 20,000 events over 200 keys, produced by the relay, plus a second copy of
/// every tenth (same ids, 2,000 redeliveries). The worker process is SIGKILLed
/// when about a third of the effects exist and started again. Every (key, seq)
/// ends with exactly one effect: the inbox absorbs the injected copies and the
/// messages handled but not yet committed before the crash.
///
/// Observed on tansu: killed at ~6,700 effects; the second worker caught up
/// (all 22,000 messages committed) ~15 s later, with exactly 20,000 effects.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn effectively_once_under_redeliveries_and_a_crash() {
    let started = Instant::now();
    let (db, outcome) = crash_run(
        "eo_crash",
        20_000,
        200,
        Some(10),
        "effectively-once",
        0,
        20_000 / 3,
    )
    .await;
    assert!(
        outcome.at_kill < outcome.events,
        "the worker was killed mid-run: {outcome:?}"
    );
    assert_eq!(
        outcome.distinct, outcome.events,
        "every event has an effect"
    );
    assert_eq!(outcome.repeated, 0, "no event has two effects");
    assert_eq!(
        outcome.total, outcome.events,
        "exactly one effect per event"
    );
    let inbox = scalar(&db.pool, "SELECT count(*) FROM eventbus_inbox").await;
    assert_eq!(inbox, outcome.events, "one inbox row per event id");
    eprintln!("effectively once: {:?} in all", started.elapsed());
}

/// At least once with a SIGKILL: nothing is missing, and the messages handled
/// after the last offset commit before the crash are handled again (offsets
/// are committed in the background, every second in these tests, so the
/// second worker starts behind the first one's work).
///
/// Observed on tansu: killed at ~2,050 effects, ~1,100 of 6,000 events got a
/// second effect (the first worker's last second of work), none was missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn at_least_once_repeats_but_loses_nothing_under_a_crash() {
    let (_db, outcome) =
        crash_run("alo_crash", 6_000, 60, None, "at-least-once", 0, 6_000 / 3).await;
    assert!(
        outcome.at_kill < outcome.events,
        "killed mid-run: {outcome:?}"
    );
    assert_eq!(
        outcome.distinct, outcome.events,
        "at least once: no event may be missing ({outcome:?})"
    );
    assert!(
        outcome.repeated > 0,
        "the crash came between handling and committing, so some events must \
         have been handled twice ({outcome:?})"
    );
}

/// At most once with a SIGKILL: each offset is committed before its handler
/// runs, so the second worker never repeats an event; the ones whose handler
/// (sleeping 20 ms) was running at the crash are lost — at most one per
/// partition.
///
/// Observed on tansu: 4 of 1,200 events lost (one per partition), none
/// repeated. (Before `Settle::ack_durably`, when at-most-once acknowledged by
/// storing the offset for the next background commit, a crash repeated up to
/// a commit interval of work.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn at_most_once_loses_but_never_repeats_under_a_crash() {
    let (_db, outcome) =
        crash_run("amo_crash", 1_200, 40, None, "at-most-once", 20, 1_200 / 3).await;
    assert!(
        outcome.at_kill < outcome.events,
        "killed mid-run: {outcome:?}"
    );
    assert_eq!(
        outcome.repeated, 0,
        "at most once: no event may be handled twice ({outcome:?})"
    );
    assert_eq!(outcome.total, outcome.distinct);
    let lost = outcome.events - outcome.distinct;
    assert!(
        lost <= 4,
        "only handlers in flight at the crash (one per partition) may be lost: {outcome:?}"
    );
}

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

/// ~1% poison among 2,000 events: 10 raw bodies that are not CloudEvents and
/// 10 events whose handler fails until "fixed". The consumer stays up and
/// handles the other 99%; the 20 land on `<topic>.dlq` with reasons; after the
/// fix, re-driving handles the failing ones, and the malformed ones stay in
/// the dead-letter topic (skipped, and skipped again by a second run).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn poison_goes_to_the_dead_letter_topic_and_can_be_redriven() {
    let db = TestDb::migrated().await;
    create_effects(&db.pool).await;
    let (brokers, topic, publisher) = topic("poison", 4).await;
    let dlq = dead_letter::destination_of(&topic);

    let mut good = Vec::new();
    let mut failing = Vec::new();
    let mut malformed = 0;
    for (i, mut step) in steps(2_000, 40).into_iter().enumerate() {
        match i % 200 {
            17 => malformed += 1,
            117 => {
                step.pad = "fail".into();
                failing.push(envelope(&step));
            }
            _ => good.push(envelope(&step)),
        }
    }
    assert_eq!((good.len(), failing.len(), malformed), (1_980, 10, 10));
    let mut all = good.clone();
    all.extend(failing.iter().cloned());
    publish(&*publisher, &topic, &all).await;
    let raw: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("batch.num.messages", "1")
        .create()
        .expect("raw producer");
    for i in 0..malformed {
        let key = format!("key-{i}");
        raw.send(
            FutureRecord::<String, [u8]>::to(&topic)
                .key(&key)
                .payload(b"{not a CloudEvent"),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("produce a malformed message");
    }

    let broken = Arc::new(AtomicBool::new(true));
    let group = unique_name("poison_group");
    let build = |subscriber| {
        let broken = Arc::clone(&broken);
        Consumer::builder(group.clone())
            .retry(RetryPolicy {
                immediate: 1,
                immediate_delay: Duration::from_millis(10),
                delayed: 1,
                delayed_initial: Duration::from_millis(100),
                delayed_max: Duration::from_millis(100),
            })
            .on(move |ctx: Context<Postgres>, step: Step| {
                let broken = Arc::clone(&broken);
                async move {
                    if step.pad == "fail" && broken.load(Ordering::SeqCst) {
                        return Err("the marker says fail".into());
                    }
                    record(&ctx, "", &step).await
                }
            })
            .build(db.pool.clone(), subscriber, publisher.clone())
            .expect("consumer")
    };
    let running = run(build(
        kafka::subscriber(&brokers, &group, &[&topic], 64).await,
    ));
    let took = wait_until(
        "99% handled, 1% dead-lettered",
        Duration::from_secs(180),
        || {
            let m = running.consumer.metrics();
            m.handled() >= 1_980 && m.dead_lettered() >= 20
        },
    )
    .await;
    assert!(running.is_running(), "poison must not stop the consumer");
    let m = running.consumer.metrics();
    assert_eq!((m.handled(), m.dead_lettered()), (1_980, 20));
    eprintln!("poison: 1,980 handled and 20 dead-lettered in {took:?}");

    let letters = read_all(&brokers, &dlq, 21, Duration::from_secs(10)).await;
    assert_eq!(letters.len(), 20, "exactly the poison is dead-lettered");
    let reasons: Vec<String> = letters
        .iter()
        .map(|m| header(m, "ce_deadletterreason").expect("every dead letter says why"))
        .collect();
    let undecodable = reasons
        .iter()
        .filter(|r| r.contains("not a CloudEvent"))
        .count();
    let failed = reasons
        .iter()
        .filter(|r| r.contains("the marker says fail"))
        .count();
    assert_eq!((undecodable, failed), (10, 10), "{reasons:#?}");
    for letter in &letters {
        assert_eq!(
            header(letter, "ce_deadletterorigin").as_deref(),
            Some(topic.as_str())
        );
        assert_eq!(
            header(letter, "ce_deadlettergroup").as_deref(),
            Some(group.as_str())
        );
    }
    let failed_attempts: Vec<String> = letters
        .iter()
        .filter(|m| header(*m, "ce_type").as_deref() == Some(Step::TYPE))
        .map(|m| header(m, "ce_deadletterattempts").expect("attempts"))
        .collect();
    assert_eq!(
        failed_attempts,
        vec!["3".to_owned(); 10],
        "1 + 1 immediate + 1 delayed"
    );

    // The fix; then the dead letters go back to their origin.
    broken.store(false, Ordering::SeqCst);
    let redrive_group = unique_name("redrive");
    let mut redriver = kafka::subscriber(&brokers, &redrive_group, &[&dlq], 64).await;
    let (redriven, skipped) = dead_letter::redrive(
        redriver.as_mut(),
        publisher.as_ref(),
        Duration::from_secs(15),
    )
    .await
    .expect("re-drive");
    assert_eq!(
        (redriven, skipped),
        (10, 10),
        "failing ones re-driven, malformed skipped"
    );
    wait_count(&db.pool, DISTINCT_EFFECTS, 1_990, Duration::from_secs(60)).await;
    assert_eq!(running.consumer.metrics().handled(), 1_990);

    // The malformed letters were given back, and the group's committed offset
    // did not pass them: a second run meets them again. Re-driven letters
    // behind the first malformed one of their partition come again too, and
    // the consumer's inbox absorbs them.
    let duplicates_before = running.consumer.metrics().duplicates();
    let mut redriver = kafka::subscriber(&brokers, &redrive_group, &[&dlq], 64).await;
    let (again, skipped_again) = dead_letter::redrive(
        redriver.as_mut(),
        publisher.as_ref(),
        Duration::from_secs(15),
    )
    .await
    .expect("second re-drive");
    assert_eq!(
        skipped_again, 10,
        "the malformed letters stay in the dead-letter topic"
    );
    wait_until(
        "re-driven repeats absorbed by the inbox",
        Duration::from_secs(60),
        || running.consumer.metrics().duplicates() >= duplicates_before + again,
    )
    .await;
    let consumer = running.stop().await;
    eprintln!(
        "poison: second re-drive repeated {again} letters; metrics {:?}",
        consumer.metrics()
    );
    assert_eq!(
        scalar(&db.pool, ALL_EFFECTS).await,
        1_990,
        "one effect per good event"
    );
    assert_eq!(scalar(&db.pool, REPEATED_EFFECTS).await, 0);
}

/// Runs 240 events over 48 keys on 12 partitions through a handler that
/// sleeps 50 ms, with the subscriber's and the consumer's in-flight bounds as
/// given; returns the most unsettled messages and the most concurrent handlers
/// seen.
async fn slow_run(subscriber_bound: usize, consumer_bound: usize) -> (usize, usize, Duration) {
    let db = TestDb::migrated().await;
    let (brokers, topic, publisher) = topic("slow", 12).await;
    let events = steps(240, 48);
    let partitions: HashSet<i32> = (0..48)
        .map(|k| java_partition(format!("key-{k}").as_bytes(), 12))
        .collect();
    assert!(
        partitions.len() >= 8,
        "keys spread over most partitions: {partitions:?}"
    );
    let envelopes: Vec<Envelope> = events.iter().map(envelope).collect();
    publish(&*publisher, &topic, &envelopes).await;

    let unsettled = Arc::new(Gauge::default());
    let busy = Arc::new(Gauge::default());
    let handled = Arc::new(AtomicUsize::new(0));
    let group = unique_name("slow_group");
    let subscriber = Counting {
        inner: kafka::subscriber(&brokers, &group, &[&topic], subscriber_bound).await,
        unsettled: Arc::clone(&unsettled),
    };
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
    (unsettled.max(), busy.max(), took)
}

/// With 12 partitions there is room for 12 handlers at once; a bound of 5 —
/// the consumer's, or the subscriber's — keeps at most 5 messages unsettled.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_handler_never_holds_more_than_n_unacknowledged() {
    for (subscriber_bound, consumer_bound) in [(64, 5), (5, 64)] {
        let (unsettled, busy, took) = slow_run(subscriber_bound, consumer_bound).await;
        eprintln!(
            "subscriber bound {subscriber_bound}, consumer bound {consumer_bound}: \
             at most {unsettled} unsettled, {busy} handlers at once; 240 handled in {took:?}"
        );
        assert!(unsettled <= 5, "at most 5 unsettled, saw {unsettled}");
        assert!(busy <= 5, "at most 5 handlers at once, saw {busy}");
        // The slots are spread over the partitions, not filled from one
        // partition's run of fetched messages.
        assert!(
            busy >= 4,
            "up to 5 partitions are handled at once (saw {busy})"
        );
    }
}

/// Two consumers of one group share the partitions (each handles some; together
/// every event exactly once); a consumer of another group gets every event.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn point_to_point_and_publish_subscribe() {
    let db = TestDb::migrated().await;
    create_effects(&db.pool).await;
    let (brokers, topic, publisher) = topic("groups", 4).await;
    let shared = unique_name("shared");
    let other = unique_name("other");

    let member = |group: &str, name: &'static str| {
        let group = group.to_owned();
        let pool = db.pool.clone();
        let brokers = brokers.clone();
        let topic = topic.clone();
        let publisher = publisher.clone();
        async move {
            let consumer = Consumer::builder(group.clone())
                .on(move |ctx: Context<Postgres>, step: Step| async move {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    record(&ctx, name, &step).await
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
    let started = Instant::now();
    let a1 = member(&shared, "a1").await;
    let a2 = member(&shared, "a2").await;
    let b = member(&other, "b").await;

    // Published over ~10 s, so that work is left for both members of the
    // shared group whenever their joins complete.
    let events = steps(1_000, 40);
    let envelopes: Vec<Envelope> = events.iter().map(envelope).collect();
    for round in envelopes.chunks(50) {
        publish(&*publisher, &topic, round).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let of = |members: &str| {
        format!("SELECT count(*) FROM (SELECT DISTINCT key, seq FROM effects WHERE member IN ({members})) d")
    };
    wait_count(&db.pool, &of("'a1', 'a2'"), 1_000, Duration::from_secs(180)).await;
    wait_count(&db.pool, &of("'b'"), 1_000, Duration::from_secs(180)).await;
    wait_committed(&brokers, &shared, &topic, 1_000, Duration::from_secs(60)).await;
    wait_committed(&brokers, &other, &topic, 1_000, Duration::from_secs(60)).await;
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
        "groups: a1 {n1}, a2 {n2} (inbox repeats {} + {}), b {nb}, in {took:?}",
        a1.metrics().duplicates(),
        a2.metrics().duplicates()
    );
    assert!(
        n1 > 0 && n2 > 0,
        "both members of a group get work: {n1} / {n2}"
    );
    assert_eq!(
        n1 + n2,
        1_000,
        "together, the shared group handles each event once"
    );
    assert_eq!(nb, 1_000, "the other group gets every event");
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

/// A batch handler on 4 partitions: 2,000 events and 200 injected copies,
/// one poison event. Every effect exactly once, written by far fewer handler
/// calls than there are messages, per key in order; the poison event's batch
/// is split until it stands alone, and only it is dead-lettered, with the
/// reason. (The scenario, shared with RabbitMQ, says exactly what it checks.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batch_handler_applies_each_event_once_in_few_transactions_and_splits_out_poison() {
    let outcome = batch_handler_scenario(&Broker::kafka().await).await;
    eprintln!("batch handler on Kafka: {outcome:?}");
}

/// `rate_limit(50)`: 100 waiting events are handled over at least 1.8 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rate_limit_spreads_a_backlog_over_time() {
    let span = rate_limit_scenario(&Broker::kafka().await).await;
    eprintln!("rate limit 50/s on Kafka: 100 handler calls over {span:?}");
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
