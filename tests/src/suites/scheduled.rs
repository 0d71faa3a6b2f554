//! Scheduled events on any database, relayed to RabbitMQ: never published
//! before their time and once after it, across a relay restart; a cancelled
//! one never; scheduled events enter their key's order when they come due;
//! 10,000 due at the same second all arrive, in order per key.

use std::time::Duration;

use chrono::Utc;
use eventbus::{Metadata, Outbox};

use super::relay::{decode_amqp, rabbit, relay_on, step};
use crate::backend::TestDatabase;
use crate::relay::{assert_per_key_order, test_config, Step};

const COUNT_SCHEDULED: &str = "SELECT count(*) FROM eventbus_outbox_scheduled";

/// The outbox entries of `events`.
fn entries(outbox: &Outbox, events: &[Step]) -> Vec<eventbus::OutboxEntry> {
    events
        .iter()
        .map(|e| outbox.entry(e, &Metadata::default()))
        .collect::<eventbus::Result<Vec<_>>>()
        .expect("entries")
}

/// Key `k`: step 0 published now, step 1 scheduled 4 s ahead, step 9
/// scheduled and then cancelled, step 2 published once step 1 has come due
/// (left the scheduled table). The relay is stopped and another started
/// before step 1 is due. Nothing of step 1 arrives before its time; then it
/// arrives once, under its own id, between 0 and 2 in the key's order; step
/// 9 never arrives. Status and metrics count the
/// waiting event and its release.
pub async fn a_scheduled_event_waits_for_its_time_and_goes_once<D: TestDatabase>() {
    let db = D::migrated().await;
    let (publisher, prefix, mut queue) = rabbit("scheduled").await;
    let outbox = Outbox::new("urn:service:scheduler");
    let due = Utc::now() + chrono::Duration::seconds(4);

    let mut tx = db.pool().begin().await.expect("begin");
    outbox
        .publish(&mut tx, &step("k", 0))
        .await
        .expect("publish step 0");
    let scheduled = outbox
        .publish_at(&mut tx, &step("k", 1), due)
        .await
        .expect("schedule step 1");
    let doomed = outbox
        .publish_after(&mut tx, &step("k", 9), Duration::from_secs(2))
        .await
        .expect("schedule step 9");
    tx.commit().await.expect("commit");

    let mut tx = db.pool().begin().await.expect("begin");
    assert!(
        outbox.cancel(&mut tx, doomed).await.expect("cancel"),
        "step 9 was waiting"
    );
    assert!(
        !outbox.cancel(&mut tx, doomed).await.expect("cancel again"),
        "gone once cancelled"
    );
    tx.commit().await.expect("commit the cancel");
    assert_eq!(
        db.scalar(COUNT_SCHEDULED).await,
        1,
        "step 1 waits, step 9 is gone"
    );
    if let Some(admin) = D::admin(db.pool()) {
        let status = admin.status().await.expect("status");
        assert_eq!(status.scheduled, 1);
        let next = status.next_scheduled_due.expect("a next due time");
        assert!(
            (next - due).num_milliseconds().abs() <= 1,
            "next due {next}, scheduled for {due}"
        );
    }

    let first = relay_on(&db, publisher.clone(), test_config(&prefix));
    let early = decode_amqp(&queue.read(1, Duration::from_secs(20)).await);
    assert_eq!(early, [step("k", 0)], "the immediate event goes at once");
    first.stop().await;
    let second = relay_on(&db, publisher.clone(), test_config(&prefix));
    // Until just before its time nothing more may arrive.
    let quiet = (due - Utc::now() - chrono::Duration::milliseconds(300))
        .to_std()
        .expect("the relay restart took less than 3.7 s");
    queue.assert_empty(quiet).await;
    let deliveries = queue.read(1, Duration::from_secs(20)).await;
    let arrived = Utc::now();
    assert!(arrived >= due, "arrived at {arrived}, due at {due}");
    let envelope = eventbus::transport::rabbitmq::envelope_from_delivery(
        &deliveries[0].properties,
        &deliveries[0].data,
    )
    .expect("a CloudEvent");
    assert_eq!(decode_amqp(&deliveries), [step("k", 1)]);
    assert_eq!(
        envelope.id,
        scheduled.to_string(),
        "the scheduled event keeps its id"
    );
    // Published once step 1 came due (it left the scheduled table): after it.
    assert_eq!(db.scalar(COUNT_SCHEDULED).await, 0);
    let mut tx = db.pool().begin().await.expect("begin");
    outbox
        .publish(&mut tx, &step("k", 2))
        .await
        .expect("publish step 2");
    tx.commit().await.expect("commit");
    let later = decode_amqp(&queue.read(1, Duration::from_secs(20)).await);
    assert_eq!(
        later,
        [step("k", 2)],
        "the key goes on after the scheduled step"
    );
    queue.assert_empty(Duration::from_secs(1)).await;
    assert_eq!(db.scalar(COUNT_SCHEDULED).await, 0);
    assert_eq!(second.metrics.scheduled_released_total(), 1);
    second.stop().await;
    queue.delete().await;
}

/// 10,000 events over 100 keys scheduled in one transaction for the same
/// second: none arrives before it, then all do, each once, in order per key.
pub async fn ten_thousand_events_due_at_the_same_second_all_arrive<D: TestDatabase>() {
    let db = D::migrated().await;
    let (publisher, prefix, mut queue) = rabbit("scheduled_many").await;
    let outbox = Outbox::new("urn:service:scheduler");
    let events: Vec<Step> = (0..10_000u64)
        .map(|i| step(&format!("k{}", i % 100), i / 100))
        .collect();
    let entries = entries(&outbox, &events);
    let due = Utc::now() + chrono::Duration::seconds(3);
    let mut tx = db.pool().begin().await.expect("begin");
    outbox
        .schedule_entries(&mut tx, &entries, due)
        .await
        .expect("schedule");
    tx.commit().await.expect("commit");
    assert_eq!(db.scalar(COUNT_SCHEDULED).await, 10_000);

    let relay = relay_on(&db, publisher.clone(), test_config(&prefix));
    let quiet = (due - Utc::now() - chrono::Duration::milliseconds(300))
        .to_std()
        .unwrap_or_default();
    queue.assert_empty(quiet).await;
    let received = decode_amqp(&queue.read(events.len(), Duration::from_secs(180)).await);
    assert_eq!(assert_per_key_order(&received), 0, "no duplicates");
    let mut got: Vec<(String, u64)> = received.iter().map(|s| (s.key.clone(), s.seq)).collect();
    let mut sent: Vec<(String, u64)> = events.iter().map(|s| (s.key.clone(), s.seq)).collect();
    got.sort();
    sent.sort();
    assert_eq!(got, sent, "every scheduled event arrived");
    queue.assert_empty(Duration::from_millis(500)).await;
    assert_eq!(db.scalar(COUNT_SCHEDULED).await, 0);
    assert_eq!(relay.metrics.scheduled_released_total(), 10_000);
    relay.stop().await;
    queue.delete().await;
}

/// Two movers (as two relays would run them) and a transaction cancelling
/// events one by one race over 2,000 due events: every event ends either
/// moved into the outbox, once, or cancelled (its cancel returned `true`),
/// never both and never neither.
pub async fn cancelling_while_events_move_never_publishes_a_cancelled_one<D: TestDatabase>() {
    use eventbus::outbox::ScheduledDatabase;
    use eventbus::TableName;

    let db = D::migrated().await;
    let outbox = Outbox::new("urn:service:scheduler");
    let events: Vec<Step> = (0..2_000u64)
        .map(|i| step(&format!("k{}", i % 20), i / 20))
        .collect();
    let entries = entries(&outbox, &events);
    let ids: Vec<uuid::Uuid> = entries.iter().map(|e| e.event_id).collect();
    let mut tx = db.pool().begin().await.expect("begin");
    outbox
        .schedule_entries(&mut tx, &entries, Utc::now())
        .await
        .expect("schedule");
    tx.commit().await.expect("commit");

    let table = TableName::default_outbox();
    let movers: Vec<_> = (0..2)
        .map(|_| {
            let pool = db.pool().clone();
            let table = table.clone();
            tokio::spawn(async move {
                let mut moved = 0;
                let deadline = std::time::Instant::now() + Duration::from_secs(60);
                while std::time::Instant::now() < deadline {
                    match D::DB::release_due(&pool, &table, Utc::now(), 25).await {
                        Ok(n) => moved += n,
                        // A lost race (a deadlock victim, a busy SQLite) moves nothing.
                        Err(e) => eprintln!("a move failed: {e}"),
                    }
                    let left = D::DB::scheduled_stats(&pool, &table).await.map(|s| s.rows);
                    if left.is_ok_and(|n| n == 0) {
                        break;
                    }
                }
                moved
            })
        })
        .collect();
    let mut cancelled = Vec::new();
    for id in ids.iter().rev().step_by(3) {
        let mut tx = db.pool().begin().await.expect("begin");
        match outbox.cancel(&mut tx, *id).await {
            Ok(true) => {
                if tx.commit().await.is_ok() {
                    cancelled.push(*id);
                }
            }
            Ok(false) => {}
            Err(e) => eprintln!("a cancel failed: {e}"),
        }
    }
    let mut moved = 0;
    for m in movers {
        moved += m.await.expect("mover");
    }
    assert_eq!(db.scalar(COUNT_SCHEDULED).await, 0, "nothing left waiting");
    let in_outbox = db.scalar("SELECT count(*) FROM eventbus_outbox").await;
    assert_eq!(
        u64::try_from(in_outbox).expect("a count"),
        moved,
        "each move counted once"
    );
    assert_eq!(
        in_outbox + i64::try_from(cancelled.len()).expect("a count"),
        2_000,
        "every event moved or cancelled, none both ({} cancelled, {in_outbox} moved)",
        cancelled.len()
    );
    for id in &cancelled {
        let sql = format!("SELECT count(*) FROM eventbus_outbox WHERE event_id = '{id}'");
        assert_eq!(db.scalar(&sql).await, 0, "cancelled {id} was moved");
    }
    assert!(!cancelled.is_empty(), "the canceller won some races");
}
