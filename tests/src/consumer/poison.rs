//! Poison on any [`Broker`]: messages that are not CloudEvents and events
//! whose handler fails go to the dead-letter destination with why, and
//! `dead_letter::redrive` puts the failing ones back once fixed.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use eventbus::consumer::{dead_letter, Consumer, Context, RetryPolicy};
use eventbus::Envelope;
use sqlx::Postgres;

use super::{
    create_effects, envelope, publish, record, run, scalar, wait_count, wait_until, Broker,
    ALL_EFFECTS, DISTINCT_EFFECTS, REPEATED_EFFECTS,
};
use crate::relay::{steps, Step};
use crate::{unique_name, TestDb};

/// The body of the `n`-th message that is not a CloudEvent.
fn raw_body(n: usize) -> String {
    format!("this is not a CloudEvent #{n}")
}

/// 1% poison among 2,000 events (1,000 on SQS, whose local server is slow):
/// in every 200, one raw body that is not a CloudEvent and one event whose
/// handler fails until "fixed". The consumer stays up and handles the other
/// 99%; the poison lands on `<destination>.<group>.dlq`, each letter with its origin,
/// the group, and the reason (for failing events after the retry policy's
/// three attempts). After the fix, re-driving handles the failing events once
/// each and skips the malformed ones, which stay in the dead-letter
/// destination: a second re-drive skips them again (what it re-drives besides
/// — Kafka letters behind a skipped one — the inbox absorbs).
pub async fn poison_scenario(broker: &Broker) {
    let db = TestDb::migrated().await;
    create_effects(&db.pool).await;
    let (destination, publisher) = broker.destination("poison", 4).await;
    let group = unique_name("poison_group");
    // The group's queue and the dead-letter reader exist before anything is
    // published: RabbitMQ drops what no queue is bound for.
    let subscriber = broker.subscriber(&group, &destination, 64).await;
    let mut dead_letters = broker
        .dead_letters(&destination, &group, publisher.as_ref())
        .await;

    let count = match broker {
        Broker::Sqs(_) => 1_000,
        Broker::Kafka(_) | Broker::RabbitMq(_) => 2_000,
    };
    let mut good = Vec::new();
    let mut failing: Vec<Envelope> = Vec::new();
    let mut malformed = 0;
    // 41 keys, so that the failing events (one in every 200) have keys of
    // their own: on a FIFO queue (SQS) a reader holding one dead letter of a
    // key sees no later letter of that key until it settles the first, so
    // the letters can be inspected and left in place only when their keys
    // differ.
    for (i, mut step) in steps(count, 41).into_iter().enumerate() {
        match i % 200 {
            17 => malformed += 1,
            117 => {
                step.pad = "fail".into();
                failing.push(envelope(&step));
            }
            _ => good.push(envelope(&step)),
        }
    }
    let poison = usize::try_from(count / 200).expect("fits");
    assert_eq!((failing.len(), malformed), (poison, poison));
    let poison_u64 = u64::try_from(poison).expect("fits");
    let handled_good = u64::try_from(good.len()).expect("fits");
    let handled_all = handled_good + u64::try_from(poison).expect("fits");
    let mut all = good;
    all.extend(failing.iter().cloned());
    publish(publisher.as_ref(), &destination, &all).await;
    for n in 0..malformed {
        broker
            .publish_raw(&destination, &format!("key-{n}"), raw_body(n).as_bytes())
            .await;
    }

    let broken = Arc::new(AtomicBool::new(true));
    let consumer = Consumer::builder(group.clone())
        .retry(RetryPolicy {
            immediate: 1,
            immediate_delay: Duration::from_millis(10),
            delayed: 1,
            delayed_initial: Duration::from_millis(100),
            delayed_max: Duration::from_millis(100),
        })
        .on({
            let broken = Arc::clone(&broken);
            move |ctx: Context<Postgres>, step: Step| {
                let broken = Arc::clone(&broken);
                async move {
                    if step.pad == "fail" && broken.load(Ordering::SeqCst) {
                        return Err("the marker says fail".into());
                    }
                    record(&ctx, "", &step).await
                }
            }
        })
        .build(db.pool.clone(), subscriber, publisher.clone())
        .expect("consumer");
    let running = run(consumer);
    let dead = u64::try_from(2 * poison).expect("fits");
    let took = wait_until(
        "99% handled, 1% dead-lettered",
        Duration::from_secs(180),
        || {
            let m = running.consumer.metrics();
            m.handled() >= handled_good && m.dead_lettered() >= dead
        },
    )
    .await;
    assert!(running.is_running(), "poison must not stop the consumer");
    let m = running.consumer.metrics();
    assert_eq!((m.handled(), m.dead_lettered()), (handled_good, dead));
    eprintln!(
        "poison on {}: {handled_good} handled and {dead} dead-lettered in {took:?}",
        broker.name()
    );

    // The dead-letter destination holds exactly the poison, with reason,
    // attempts, origin and group.
    let letters = dead_letters.peek(2 * poison).await;
    let failing_ids: HashSet<&str> = failing.iter().map(|e| e.id.as_str()).collect();
    let mut undecodable = 0;
    let mut failed = HashSet::new();
    for letter in &letters {
        let reason = &letter.extensions[dead_letter::REASON];
        assert_eq!(letter.extensions[dead_letter::ORIGIN], destination);
        assert_eq!(letter.extensions[dead_letter::GROUP], group);
        if letter.event_type == dead_letter::UNDECODABLE_TYPE {
            assert!(reason.contains("not a CloudEvent"), "{reason}");
            assert!(
                String::from_utf8_lossy(&letter.data).starts_with("this is not a CloudEvent #"),
                "the raw body is kept: {:?}",
                String::from_utf8_lossy(&letter.data)
            );
            undecodable += 1;
        } else {
            assert!(reason.contains("the marker says fail"), "{reason}");
            assert_eq!(
                letter.extensions[dead_letter::ATTEMPTS],
                "3",
                "1 + 1 immediate + 1 delayed"
            );
            let (origin, original) =
                dead_letter::original(letter).expect("a dead letter of an event");
            assert_eq!(origin, destination);
            failed.insert(original.id);
        }
    }
    assert_eq!(undecodable, poison, "every malformed message dead-lettered");
    assert_eq!(
        failed.iter().map(String::as_str).collect::<HashSet<_>>(),
        failing_ids,
        "exactly the failing events were dead-lettered"
    );

    // The fix; then the dead letters go back to their origin.
    broken.store(false, Ordering::SeqCst);
    let (redriven, skipped) = dead_letters.redrive(publisher.as_ref()).await;
    assert_eq!(
        (redriven, skipped),
        (poison_u64, poison_u64),
        "failing ones re-driven, malformed skipped"
    );
    let target = i64::try_from(handled_all).expect("fits");
    wait_count(&db.pool, DISTINCT_EFFECTS, target, Duration::from_secs(60)).await;
    assert_eq!(running.consumer.metrics().handled(), handled_all);

    // The malformed letters were given back: a second run meets them again.
    // (On Kafka, re-driven letters behind the first malformed one of their
    // partition come again too, as the group's committed offset did not pass
    // it; the consumer's inbox absorbs them.)
    let duplicates_before = running.consumer.metrics().duplicates();
    let (again, skipped_again) = dead_letters.redrive(publisher.as_ref()).await;
    assert_eq!(
        skipped_again, poison_u64,
        "the malformed letters stay in the dead-letter destination"
    );
    wait_until(
        "re-driven repeats absorbed by the inbox",
        Duration::from_secs(60),
        || running.consumer.metrics().duplicates() >= duplicates_before + again,
    )
    .await;
    let consumer = running.stop().await;
    eprintln!(
        "poison on {}: second re-drive repeated {again} letters; metrics {:?}",
        broker.name(),
        consumer.metrics()
    );
    assert_eq!(consumer.metrics().handled(), handled_all);
    assert_eq!(
        scalar(&db.pool, ALL_EFFECTS).await,
        target,
        "one effect per good event"
    );
    assert_eq!(scalar(&db.pool, REPEATED_EFFECTS).await, 0);
    broker.clean_up(&[&group], &[&destination]).await;
}
