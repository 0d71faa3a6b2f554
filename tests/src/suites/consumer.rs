//! The consumer suite, on any database: effectively once through the inbox
//! when events are delivered again (single and batch handlers, follow-up events
//! written to the outbox in the handler's transaction), batch handlers with
//! poison, and the rate limit. A crash of the consumer process, on any
//! database and broker, is in [`crate::consumer`] (`effectively_once_scenario`).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventbus::consumer::{dead_letter, BatchContext, Consumer, Context, RetryPolicy};
use eventbus::transport::rabbitmq::RabbitPublisher;
use eventbus::{BoxError, Envelope, Event};
use serde::{Deserialize, Serialize};

use crate::backend::{Effect, TestDatabase};
use crate::consumer::{envelope, publish, run, wait_until, BatchRun, Broker};
use crate::relay::{assert_per_key_order, steps, Step};
use crate::{amqp_url, rabbitmq, unique_name};

// ------------------------------------------------------------ effects

/// Totals of an `effects` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EffectCounts {
    /// Rows.
    pub total: usize,
    /// Distinct (key, seq).
    pub distinct: usize,
    /// (key, seq) with more than one row.
    pub repeated: usize,
    /// (key, seq) with exactly one row.
    pub once: usize,
}

impl EffectCounts {
    /// Counts `effects`.
    pub fn of(effects: &[Effect]) -> Self {
        let mut per_step: HashMap<(&str, i64), usize> = HashMap::new();
        for e in effects {
            *per_step.entry((e.key.as_str(), e.seq)).or_default() += 1;
        }
        EffectCounts {
            total: effects.len(),
            distinct: per_step.len(),
            repeated: per_step.values().filter(|n| **n > 1).count(),
            once: per_step.values().filter(|n| **n == 1).count(),
        }
    }
}

/// The steps of `effects`, in the order they were written.
pub fn steps_of(effects: &[Effect]) -> Vec<Step> {
    effects
        .iter()
        .map(|e| Step {
            key: e.key.clone(),
            seq: u64::try_from(e.seq).unwrap_or(u64::MAX),
            pad: String::new(),
        })
        .collect()
}

/// The side effect of handling `step`: a row in the handler's transaction.
///
/// # Errors
///
/// The database's, or a `seq` beyond `i64`.
pub async fn record<D: TestDatabase>(
    ctx: &Context<D::DB>,
    member: &str,
    step: &Step,
) -> Result<(), BoxError> {
    let rows = [(
        step.key.clone(),
        i64::try_from(step.seq)?,
        ctx.envelope().id.clone(),
    )];
    let mut tx = ctx.tx().await?;
    D::insert_effects(&mut **tx, member, &rows).await?;
    Ok(())
}

/// The side effects of a batch: one row per step, in the batch's order, in
/// the batch's transaction.
///
/// # Errors
///
/// The database's, or a `seq` beyond `i64`.
pub async fn record_batch<D: TestDatabase>(
    ctx: &BatchContext<D::DB>,
    member: &str,
    steps: &[Step],
) -> Result<(), BoxError> {
    let rows = steps
        .iter()
        .zip(ctx.envelopes())
        .map(|(s, e)| Ok((s.key.clone(), i64::try_from(s.seq)?, e.id.clone())))
        .collect::<Result<Vec<_>, BoxError>>()?;
    let mut tx = ctx.tx().await?;
    D::insert_effects(&mut **tx, member, &rows).await?;
    Ok(())
}

/// Waits until `effects` has at least `target` rows (`distinct`: distinct
/// steps); panics with the last count after `timeout`. Returns how long it took.
pub async fn wait_effects<D: TestDatabase>(
    db: &D,
    target: usize,
    distinct: bool,
    timeout: Duration,
) -> Duration {
    let start = Instant::now();
    loop {
        let n = if distinct {
            EffectCounts::of(&db.effects().await).distinct
        } else {
            usize::try_from(db.scalar("SELECT count(*) FROM effects").await).unwrap_or(0)
        };
        if n >= target {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < timeout,
            "{n} of {target} effects within {timeout:?} on {}",
            D::NAME
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// ------------------------------------------------------------ redeliveries

/// The follow-up a handler publishes for each step it handles.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema, eventbus::Event)]
#[event(type = "com.example.test.step.recorded", destination = "recorded", key = key)]
pub struct Recorded {
    /// The step's key.
    pub key: String,
    /// The step's sequence number.
    pub seq: u64,
}

/// 200 steps, then the first 50 of them again (same CloudEvents ids).
fn deliveries() -> Vec<Envelope> {
    let mut envelopes: Vec<Envelope> = steps(200, 10).iter().map(envelope).collect();
    let again: Vec<Envelope> = envelopes[..50].to_vec();
    envelopes.extend(again);
    envelopes
}

/// Every step has one effect, one inbox row and one follow-up in the outbox,
/// caused by the step's event.
async fn assert_each_step_counted_once<D: TestDatabase>(db: &D, envelopes: &[Envelope]) {
    let counts = EffectCounts::of(&db.effects().await);
    assert_eq!(counts.total, 200);
    assert_eq!(counts.distinct, 200);
    assert_eq!(db.scalar("SELECT count(*) FROM eventbus_inbox").await, 200);
    let headers = db
        .texts(&format!(
            "SELECT {} FROM eventbus_outbox WHERE event_type = '{}' ORDER BY id",
            D::json_text("headers"),
            Recorded::TYPE
        ))
        .await;
    let causes: Vec<String> = headers
        .iter()
        .map(|h| {
            let h: serde_json::Value =
                serde_json::from_str(h.as_deref().unwrap_or("null")).expect("headers are JSON");
            h["causationid"]
                .as_str()
                .expect("a follow-up names its cause")
                .to_owned()
        })
        .collect();
    let distinct: HashSet<&String> = causes.iter().collect();
    assert_eq!(causes.len(), 200, "one follow-up per step");
    assert_eq!(distinct.len(), 200, "each caused by a different event");
    let ids: HashSet<&str> = envelopes.iter().map(|e| e.id.as_str()).collect();
    assert!(causes.iter().all(|c| ids.contains(c.as_str())));
}

/// A consumer group's queue bound to a fresh exchange, with a subscriber and
/// a publisher: (exchange, group, publisher, subscriber).
async fn rabbit_group(
    tag: &str,
) -> (
    String,
    String,
    Arc<RabbitPublisher>,
    Box<dyn eventbus::transport::Subscriber>,
) {
    let url = amqp_url().await;
    let prefix = format!("{}.", unique_name(tag));
    let exchange = format!("{prefix}{}", Step::DESTINATION);
    let group = format!("{prefix}billing");
    // The group's queue exists before anything is published.
    let subscriber = rabbitmq::subscriber(&url, &group, &[&exchange], 64).await;
    let publisher = Arc::new(
        RabbitPublisher::connect(&url)
            .await
            .expect("connect to RabbitMQ"),
    );
    (exchange, group, publisher, subscriber)
}

/// A single handler over RabbitMQ receives 200 steps and 50 of them again:
/// 200 handled, 50 duplicates; each step has one effect, one inbox row and
/// one follow-up event in the outbox, written in the handler's transaction.
pub async fn redelivered_events_change_nothing<D: TestDatabase>() {
    let db = D::migrated().await;
    db.create_effects().await;
    let (exchange, group, publisher, subscriber) = rabbit_group("redelivered").await;
    let consumer = Consumer::<D::DB>::builder(group.clone())
        .on(|ctx: Context<D::DB>, step: Step| async move {
            record::<D>(&ctx, "", &step).await?;
            ctx.publish(&Recorded {
                key: step.key,
                seq: step.seq,
            })
            .await?;
            Ok(())
        })
        .build(db.pool().clone(), subscriber, publisher.clone())
        .expect("consumer");
    let running = run(consumer);

    let envelopes = deliveries();
    publish(&*publisher, &exchange, &envelopes).await;
    wait_until(
        "200 handled and 50 duplicates",
        Duration::from_secs(60),
        || {
            let m = running.consumer.metrics();
            m.handled() == 200 && m.duplicates() == 50
        },
    )
    .await;
    running.stop().await;
    assert_each_step_counted_once(&db, &envelopes).await;
    rabbitmq::delete_group(&group).await;
    rabbitmq::delete_exchange(&exchange).await;
}

/// The same with a batch handler (batches of up to 32): the inbox takes a
/// batch's ids in one go and the handler sees only the fresh ones.
pub async fn batch_handlers_skip_redelivered_events<D: TestDatabase>() {
    let db = D::migrated().await;
    db.create_effects().await;
    let (exchange, group, publisher, subscriber) = rabbit_group("redelivered_batch").await;
    let consumer = Consumer::<D::DB>::builder(group.clone())
        .on_batch(
            32,
            |ctx: BatchContext<D::DB>, batch: Vec<Step>| async move {
                record_batch::<D>(&ctx, "", &batch).await?;
                let causes = ctx.envelopes().to_vec();
                for (cause, step) in causes.iter().zip(batch) {
                    ctx.publish_caused_by(
                        cause,
                        &Recorded {
                            key: step.key,
                            seq: step.seq,
                        },
                    )
                    .await?;
                }
                Ok(())
            },
        )
        .build(db.pool().clone(), subscriber, publisher.clone())
        .expect("consumer");
    let running = run(consumer);

    let envelopes = deliveries();
    publish(&*publisher, &exchange, &envelopes).await;
    wait_until("all 250 settled", Duration::from_secs(60), || {
        let m = running.consumer.metrics();
        m.handled() + m.duplicates() >= 250
    })
    .await;
    wait_effects(&db, 200, false, Duration::from_secs(10)).await;
    running.stop().await;
    assert_each_step_counted_once(&db, &envelopes).await;
    rabbitmq::delete_group(&group).await;
    rabbitmq::delete_exchange(&exchange).await;
}

// ------------------------------------------------------------ batches, rate

/// A batch handler on `broker` and database `D`: 2,000 steps over 20 keys on
/// a 4-partition topic (Kafka) or an exchange (RabbitMQ), with a copy of every
/// tenth step published again (same id: 200 redeliveries, half right behind
/// their original, half later), and one poison step whose batches fail.
///
/// Asserts: every good step has exactly one effect and one inbox row; the
/// handler was called far fewer times than there are messages; per key, the
/// effects were written in publication order; the failing batch was split
/// until the poison step stood alone, and only it went to the dead-letter
/// destination, with the handler's error as the reason after the retry
/// policy's three attempts.
pub async fn batch_handler<D: TestDatabase>(broker: &Broker) -> BatchRun {
    let db = D::migrated().await;
    db.create_effects().await;
    let (destination, publisher) = broker.destination("batch", 4).await;
    let group = unique_name("batch_group");
    let subscriber = broker.subscriber(&group, &destination, 200).await;
    let dead_letters = broker
        .dead_letters(&destination, &group, publisher.as_ref())
        .await;

    let mut events = steps(2_000, 20);
    let poison = 777;
    events[poison].pad = "poison".into();
    let originals: Vec<Envelope> = events.iter().map(envelope).collect();
    // Half the copies right behind their original (one lane, so most likely
    // in the same batch: the inbox statement must take the id once), half
    // after the 200 (a later batch of the lane).
    let mut stream = Vec::with_capacity(2_200);
    for chunk in originals.chunks(200) {
        for (i, e) in chunk.iter().enumerate() {
            stream.push(e.clone());
            if i % 20 == 0 {
                stream.push(e.clone());
            }
        }
        stream.extend(chunk.iter().skip(10).step_by(20).cloned());
    }
    assert_eq!(stream.len(), 2_200);
    assert_eq!(
        stream
            .iter()
            .filter(|e| e.id == originals[poison].id)
            .count(),
        1,
        "the poison step has no copy"
    );
    publish(publisher.as_ref(), &destination, &stream).await;

    let calls = Arc::new(AtomicUsize::new(0));
    let consumer = Consumer::builder(group.clone())
        .max_in_flight(200)
        .retry(RetryPolicy {
            immediate: 1,
            immediate_delay: Duration::from_millis(10),
            delayed: 1,
            delayed_initial: Duration::from_millis(50),
            delayed_max: Duration::from_millis(50),
        })
        .batch_linger(Duration::from_millis(20))
        .on_batch(100, {
            let calls = Arc::clone(&calls);
            move |ctx: BatchContext<D::DB>, steps: Vec<Step>| {
                calls.fetch_add(1, Ordering::SeqCst);
                async move {
                    if steps.iter().any(|s| s.pad == "poison") {
                        return Err("a poison step in the batch".into());
                    }
                    record_batch::<D>(&ctx, "", &steps).await
                }
            }
        })
        .build(db.pool().clone(), subscriber, publisher.clone())
        .expect("consumer");
    let running = run(consumer);
    let took = wait_until("every message settled", Duration::from_secs(180), || {
        let m = running.consumer.metrics();
        m.handled() + m.duplicates() + m.dead_lettered() >= stream.len() as u64
    })
    .await;
    // Let a stray repeat arrive before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        running.is_running(),
        "the poison must not stop the consumer"
    );
    let consumer = running.stop().await;
    let m = consumer.metrics();

    assert_eq!(m.handled(), 1_999, "every good step handled once");
    assert_eq!(m.dead_lettered(), 1, "only the poison step dead-lettered");
    assert!(m.duplicates() >= 200, "the copies are duplicates: {m:?}");
    let effects = db.effects().await;
    let counts = EffectCounts::of(&effects);
    assert_eq!(counts.total, 1_999, "one effect each");
    assert_eq!(counts.distinct, 1_999);
    assert_eq!(counts.repeated, 0);
    let poison_effects = effects
        .iter()
        .filter(|e| e.event_id == originals[poison].id)
        .count();
    assert_eq!(poison_effects, 0, "the failing step took no effect");
    assert_eq!(
        db.scalar("SELECT count(*) FROM eventbus_inbox").await,
        1_999,
        "one inbox row per handled step; the poison step's rolled back"
    );
    assert_eq!(assert_per_key_order(&steps_of(&effects)), 0);

    let handler_calls = calls.load(Ordering::SeqCst);
    assert!(
        handler_calls * 4 <= stream.len(),
        "batches: {handler_calls} handler calls for {} messages",
        stream.len()
    );
    assert!(m.largest_batch() > 1, "{m:?}");
    assert!(m.batch_splits() >= 1, "the poison's batch was split: {m:?}");
    assert!(m.batches() < stream.len() as u64 / 4, "{m:?}");

    let letters = dead_letters.read(1).await;
    let letter = &letters[0];
    let (origin, original) = dead_letter::original(letter).expect("a dead letter of an event");
    assert_eq!(origin, destination);
    assert_eq!(original.id, originals[poison].id, "the poison step itself");
    assert_eq!(letter.extensions[dead_letter::GROUP], group);
    let reason = &letter.extensions[dead_letter::REASON];
    assert!(reason.contains("a poison step in the batch"), "{reason}");
    assert_eq!(
        letter.extensions[dead_letter::ATTEMPTS],
        "3",
        "alone, it went through the retry policy: 1 + 1 immediate + 1 delayed"
    );
    broker.clean_up(&[&group], &[&destination]).await;
    BatchRun {
        messages: stream.len(),
        handler_calls,
        batches: m.batches(),
        largest_batch: m.largest_batch(),
        splits: m.batch_splits(),
        took,
    }
}

/// `rate_limit(50)` on `broker` and database `D`: 100 steps, all published
/// before the consumer starts, take at least 1.8 s from the first handler call
/// to the last (99 gaps of 20 ms), and no second sees more than 60 handler
/// calls — where without the limit the backlog would go in a burst. Returns
/// the span.
pub async fn rate_limit<D: TestDatabase>(broker: &Broker) -> Duration {
    let db = D::migrated().await;
    db.create_effects().await;
    let (destination, publisher) = broker.destination("rate", 4).await;
    let group = unique_name("rate_group");
    let subscriber = broker.subscriber(&group, &destination, 64).await;
    let envelopes: Vec<Envelope> = steps(100, 10).iter().map(envelope).collect();
    publish(publisher.as_ref(), &destination, &envelopes).await;

    let starts = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let consumer = Consumer::<D::DB>::builder(group.clone())
        .rate_limit(50)
        .on({
            let starts = Arc::clone(&starts);
            move |ctx: Context<D::DB>, step: Step| {
                starts.lock().expect("starts").push(Instant::now());
                async move { record::<D>(&ctx, "", &step).await }
            }
        })
        .build(db.pool().clone(), subscriber, publisher.clone())
        .expect("consumer");
    let running = run(consumer);
    wait_effects(&db, 100, false, Duration::from_secs(120)).await;
    running.stop().await;

    let mut starts = starts.lock().expect("starts").clone();
    starts.sort();
    assert_eq!(starts.len(), 100, "one handler call per event");
    let span = starts[99] - starts[0];
    assert!(
        span >= Duration::from_millis(1_800),
        "100 events at 50 per second took only {span:?}"
    );
    let busiest = starts
        .iter()
        .enumerate()
        .map(|(i, t)| starts[i..].partition_point(|u| *u < *t + Duration::from_secs(1)))
        .max()
        .unwrap_or(0);
    assert!(
        busiest <= 60,
        "{busiest} handler calls within one second under a limit of 50"
    );
    broker.clean_up(&[&group], &[&destination]).await;
    span
}
