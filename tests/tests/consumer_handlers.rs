//! The consumer surviving its handlers, over real RabbitMQ and PostgreSQL: a
//! handler (single-event or batch) that panics, one that outlives its
//! timeout, and one that holds the transaction while it publishes a
//! follow-up event. In each case the other messages keep flowing, the bad one
//! is retried per the policy and then dead-lettered with why, and a failed
//! attempt leaves nothing in the database.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use eventbus::consumer::{dead_letter, BatchContext, Consumer, Context, RetryPolicy};
use eventbus::{Envelope, Publisher};
use eventbus_tests::consumer::{
    create_effects, envelope, publish, record, record_batch, run, scalar, wait_until, Broker,
    DeadLetters, Running, ALL_EFFECTS, DISTINCT_EFFECTS,
};
use eventbus_tests::relay::{steps, Step};
use eventbus_tests::suites::consumer::Recorded;
use eventbus_tests::{unique_name, TestDb};
use sqlx::Postgres;

// ---------------------------------------------------------------- helpers

/// Three attempts, quickly: the first, one immediate retry, one delayed.
fn three_quick_attempts() -> RetryPolicy {
    RetryPolicy {
        immediate: 1,
        immediate_delay: Duration::from_millis(10),
        delayed: 1,
        delayed_initial: Duration::from_millis(50),
        delayed_max: Duration::from_millis(50),
    }
}

/// A fresh database with the `effects` table, a RabbitMQ exchange with the
/// group's queue bound and a reader of its dead letters, all made before
/// anything is published.
struct Setup {
    broker: Broker,
    db: TestDb,
    destination: String,
    group: String,
    publisher: Arc<dyn Publisher>,
    subscriber: Option<Box<dyn eventbus::transport::Subscriber>>,
    dead_letters: Option<DeadLetters>,
}

impl Setup {
    async fn new(tag: &str) -> Self {
        let broker = Broker::rabbitmq().await;
        let db = TestDb::migrated().await;
        create_effects(&db.pool).await;
        let (destination, publisher) = broker.destination(tag, 4).await;
        let group = unique_name(&format!("{tag}_group"));
        let subscriber = broker.subscriber(&group, &destination, 64).await;
        let dead_letters = broker
            .dead_letters(&destination, &group, publisher.as_ref())
            .await;
        Setup {
            broker,
            db,
            destination,
            group,
            publisher,
            subscriber: Some(subscriber),
            dead_letters: Some(dead_letters),
        }
    }

    fn subscriber(&mut self) -> Box<dyn eventbus::transport::Subscriber> {
        self.subscriber.take().expect("one consumer per setup")
    }

    async fn publish(&self, envelopes: &[Envelope]) {
        publish(self.publisher.as_ref(), &self.destination, envelopes).await;
    }

    /// Inbox rows of the group: one per message handled.
    async fn inbox_rows(&self) -> i64 {
        scalar(
            &self.db.pool,
            &format!(
                "SELECT count(*) FROM eventbus_inbox WHERE consumer = '{}'",
                self.group
            ),
        )
        .await
    }

    /// Effects of the event `id`.
    async fn effects_of(&self, id: &str) -> i64 {
        scalar(
            &self.db.pool,
            &format!("SELECT count(*) FROM effects WHERE event_id = '{id}'"),
        )
        .await
    }

    /// The one dead letter expected: it is `original`'s, after `attempts`
    /// attempts, and its reason contains each of `reason_parts`.
    async fn assert_one_dead_letter(
        &mut self,
        original: &Envelope,
        attempts: &str,
        reason_parts: &[&str],
    ) {
        let letters = self.dead_letters.take().expect("read once").read(1).await;
        let letter = &letters[0];
        let reason = &letter.extensions[dead_letter::REASON];
        for part in reason_parts {
            assert!(
                reason.contains(part),
                "`{part}` not in the reason: {reason}"
            );
        }
        assert_eq!(letter.extensions[dead_letter::ATTEMPTS], attempts);
        assert_eq!(letter.extensions[dead_letter::GROUP], self.group);
        let (origin, dead) = dead_letter::original(letter).expect("a dead letter of an event");
        assert_eq!(origin, self.destination);
        assert_eq!(dead.id, original.id);
    }

    async fn finish(self, running: Running) {
        assert!(running.is_running(), "the consumer is still running");
        running.stop().await;
        self.broker
            .clean_up(&[&self.group], &[&self.destination])
            .await;
    }
}

/// Waits until the consumer handled `handled` messages and dead-lettered
/// `dead`; then checks it did no more than that.
async fn wait_for(running: &Running, handled: u64, dead: u64) {
    let took = wait_until(
        &format!("{handled} handled and {dead} dead-lettered"),
        Duration::from_secs(60),
        || {
            let m = running.consumer.metrics();
            m.handled() >= handled && m.dead_lettered() >= dead
        },
    )
    .await;
    let m = running.consumer.metrics();
    assert_eq!((m.handled(), m.dead_lettered()), (handled, dead), "{m:?}");
    eprintln!("{handled} handled and {dead} dead-lettered in {took:?}");
}

// ------------------------------------------------------------------ panics

/// 1,000 steps over 20 keys; the handler of one of them writes its effect and
/// then panics, on every attempt. The panic is caught: that step is tried
/// three times (the policy), its effect and inbox row rolled back each time,
/// then dead-lettered with the panic message as the reason; the 999 others
/// (its own key's later steps among them) are handled once each, and the
/// consumer keeps running.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_panicking_handler_is_dead_lettered_and_the_consumer_survives() {
    let mut setup = Setup::new("panic").await;
    let mut events = steps(1_000, 20);
    events[500].pad = "panic".into();
    let envelopes: Vec<Envelope> = events.iter().map(envelope).collect();
    let poisoned = envelopes[500].clone();
    setup.publish(&envelopes).await;

    let panics = Arc::new(AtomicU32::new(0));
    let consumer = Consumer::builder(setup.group.clone())
        .retry(three_quick_attempts())
        .on({
            let panics = Arc::clone(&panics);
            move |ctx: Context<Postgres>, step: Step| {
                let panics = Arc::clone(&panics);
                async move {
                    record(&ctx, "", &step).await?;
                    if step.pad == "panic" {
                        panics.fetch_add(1, Ordering::SeqCst);
                        panic!("poisoned step {}/{}", step.key, step.seq);
                    }
                    Ok(())
                }
            }
        })
        .build(
            setup.db.pool.clone(),
            setup.subscriber(),
            setup.publisher.clone(),
        )
        .expect("consumer");
    let running = run(consumer);
    wait_for(&running, 999, 1).await;

    assert_eq!(
        panics.load(Ordering::SeqCst),
        3,
        "three attempts, each panicked"
    );
    setup
        .assert_one_dead_letter(&poisoned, "3", &["panicked", "poisoned step key-0/25"])
        .await;
    assert_eq!(scalar(&setup.db.pool, ALL_EFFECTS).await, 999);
    assert_eq!(scalar(&setup.db.pool, DISTINCT_EFFECTS).await, 999);
    assert_eq!(
        setup.effects_of(&poisoned.id).await,
        0,
        "the panicking attempts' writes were rolled back"
    );
    assert_eq!(
        setup.inbox_rows().await,
        999,
        "the poisoned message is not recorded as handled"
    );
    setup.finish(running).await;
}

/// A batch handler that panics whenever its batch holds the poisoned step:
/// the batch is split until that step stands alone, which is tried three
/// times and dead-lettered with the panic message; every other step of the
/// 600 is handled once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_panicking_batch_handler_is_split_and_the_poison_dead_lettered() {
    let mut setup = Setup::new("batch_panic").await;
    let mut events = steps(600, 6);
    events[300].pad = "panic".into();
    let envelopes: Vec<Envelope> = events.iter().map(envelope).collect();
    let poisoned = envelopes[300].clone();
    setup.publish(&envelopes).await;

    let consumer = Consumer::builder(setup.group.clone())
        .retry(three_quick_attempts())
        .on_batch(
            50,
            |ctx: BatchContext<Postgres>, steps: Vec<Step>| async move {
                record_batch(&ctx, "", &steps).await?;
                if let Some(bad) = steps.iter().find(|s| s.pad == "panic") {
                    panic!("poisoned step {}/{} in a batch", bad.key, bad.seq);
                }
                Ok(())
            },
        )
        .build(
            setup.db.pool.clone(),
            setup.subscriber(),
            setup.publisher.clone(),
        )
        .expect("consumer");
    let running = run(consumer);
    wait_for(&running, 599, 1).await;

    setup
        .assert_one_dead_letter(&poisoned, "3", &["panicked", "poisoned step key-0/50"])
        .await;
    assert_eq!(scalar(&setup.db.pool, ALL_EFFECTS).await, 599);
    assert_eq!(scalar(&setup.db.pool, DISTINCT_EFFECTS).await, 599);
    assert_eq!(setup.effects_of(&poisoned.id).await, 0);
    assert_eq!(setup.inbox_rows().await, 599);
    setup.finish(running).await;
}

// ---------------------------------------------------- the transaction and publish

/// 200 steps; each handler writes its effect and publishes a follow-up event,
/// half of them holding the guard of `ctx.tx()` while they call
/// `ctx.publish()`, half publishing first and then writing. The handlers of
/// one key fail on their first attempt after doing both. Every step ends
/// with exactly one effect and one follow-up in the outbox, caused by it:
/// the effect and the follow-up commit together or not at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tx_then_publish_in_one_handler_commits_both_together() {
    let mut setup = Setup::new("tx_publish").await;
    let events = steps(200, 10);
    let envelopes: Vec<Envelope> = events.iter().map(envelope).collect();
    setup.publish(&envelopes).await;

    let consumer = Consumer::builder(setup.group.clone())
        .retry(three_quick_attempts())
        .on(|ctx: Context<Postgres>, step: Step| async move {
            let follow_up = Recorded {
                key: step.key.clone(),
                seq: step.seq,
            };
            if step.seq.is_multiple_of(2) {
                let mut tx = ctx.tx().await?;
                sqlx::query(
                    "INSERT INTO effects (member, key, seq, event_id) VALUES ('', $1, $2, $3)",
                )
                .bind(&step.key)
                .bind(i64::try_from(step.seq)?)
                .bind(&ctx.envelope().id)
                .execute(&mut **tx)
                .await?;
                // The guard is still held here.
                ctx.publish(&follow_up).await?;
                sqlx::query("SELECT 1").execute(&mut **tx).await?;
            } else {
                ctx.publish(&follow_up).await?;
                record(&ctx, "", &step).await?;
            }
            if step.key == "key-3" && ctx.attempt() == 1 {
                return Err("failing after writing and publishing".into());
            }
            Ok(())
        })
        .build(
            setup.db.pool.clone(),
            setup.subscriber(),
            setup.publisher.clone(),
        )
        .expect("consumer");
    let running = run(consumer);
    wait_for(&running, 200, 0).await;

    let pool = &setup.db.pool;
    assert_eq!(scalar(pool, ALL_EFFECTS).await, 200);
    assert_eq!(scalar(pool, DISTINCT_EFFECTS).await, 200);
    assert_eq!(
        scalar(
            pool,
            "SELECT count(*) FROM eventbus_outbox WHERE event_type = 'com.example.test.step.recorded'"
        )
        .await,
        200,
        "one follow-up per step; none left by a failed attempt"
    );
    assert_eq!(
        scalar(
            pool,
            "SELECT count(*) FROM eventbus_outbox o JOIN effects e \
             ON o.headers->>'causationid' = e.event_id"
        )
        .await,
        200,
        "each follow-up is caused by the step whose effect committed with it"
    );
    setup.finish(running).await;
}

// ---------------------------------------------------------------- timeouts

/// `handler_timeout(300 ms)` over 300 steps: one step's handler writes its
/// effect and then sleeps 30 s on every attempt, another's only on its first
/// attempt. The first is cancelled three times (its writes rolled back) and
/// dead-lettered with the timeout as the reason; the second is handled on its
/// second attempt; the others flow, all within seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_handler_past_its_timeout_is_retried_then_dead_lettered() {
    let mut setup = Setup::new("timeout").await;
    let mut events = steps(300, 10);
    events[150].pad = "slow".into();
    events[161].pad = "slow-once".into();
    let envelopes: Vec<Envelope> = events.iter().map(envelope).collect();
    let slow = envelopes[150].clone();
    let slow_once = envelopes[161].clone();
    setup.publish(&envelopes).await;

    let slow_calls = Arc::new(AtomicU32::new(0));
    let consumer = Consumer::builder(setup.group.clone())
        .retry(three_quick_attempts())
        .handler_timeout(Duration::from_millis(300))
        .on({
            let slow_calls = Arc::clone(&slow_calls);
            move |ctx: Context<Postgres>, step: Step| {
                let slow_calls = Arc::clone(&slow_calls);
                async move {
                    record(&ctx, "", &step).await?;
                    let stall = match step.pad.as_str() {
                        "slow" => {
                            slow_calls.fetch_add(1, Ordering::SeqCst);
                            true
                        }
                        "slow-once" => ctx.attempt() == 1,
                        _ => false,
                    };
                    if stall {
                        tokio::time::sleep(Duration::from_secs(30)).await;
                    }
                    Ok(())
                }
            }
        })
        .build(
            setup.db.pool.clone(),
            setup.subscriber(),
            setup.publisher.clone(),
        )
        .expect("consumer");
    let running = run(consumer);
    wait_for(&running, 299, 1).await;

    assert_eq!(slow_calls.load(Ordering::SeqCst), 3, "three attempts");
    setup
        .assert_one_dead_letter(&slow, "3", &["timed out after 300ms"])
        .await;
    assert_eq!(scalar(&setup.db.pool, ALL_EFFECTS).await, 299);
    assert_eq!(scalar(&setup.db.pool, DISTINCT_EFFECTS).await, 299);
    assert_eq!(
        setup.effects_of(&slow.id).await,
        0,
        "the cancelled attempts' writes were rolled back"
    );
    assert_eq!(
        setup.effects_of(&slow_once.id).await,
        1,
        "handled once, on its second attempt"
    );
    assert_eq!(setup.inbox_rows().await, 299);
    setup.finish(running).await;
}
