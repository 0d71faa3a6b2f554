//! The inbox recognises a redelivery whoever relayed it (issue 16, item 7;
//! `docs/adr/0007-event-source-and-inbox-key.md`): a row without a `source`
//! takes the relay's `--source`, so two relays configured differently (or one
//! reconfigured) send the same event under two sources, and the inbox must
//! still see one event.
//!
//! End to end on PostgreSQL and RabbitMQ: relay A publishes a row, its
//! acknowledgement is lost (the row is pending again, same event id), relay B
//! with another source publishes it again; one consumer's inbox takes both
//! deliveries and the effect happens once. A row written by `Outbox` carries
//! its writer's source, whichever relay sends it. Then the same at the inbox alone
//! on PostgreSQL, MySQL/MariaDB and SQLite, one message at a time and in
//! batches; foreign events whose ids are not UUIDs stay keyed per source, as
//! CloudEvents says; and an inbox row recorded under the old key still counts.

use std::sync::Arc;
use std::time::Duration;

use eventbus::inbox::InboxDatabase;
use eventbus::outbox::OutboxRecord;
use eventbus::relay::Retention;
use eventbus::transport::rabbitmq::{envelope_from_delivery, RabbitPublisher};
use eventbus::{Envelope, Event, Inbox, Metadata, Outbox, Processed, TableName};
use eventbus_tests::mysql::TestMySql;
use eventbus_tests::rabbitmq::TestQueue;
use eventbus_tests::relay::{spawn_relay, test_config, Step};
use eventbus_tests::sqlite::TestSqlite;
use eventbus_tests::{amqp_url, unique_name, TestDatabase, TestDb};
use sqlx::types::chrono::Utc;
use uuid::Uuid;

/// The table the test handlers write their one effect per message to.
const EFFECTS: &str =
    "CREATE TABLE source_effects (event_id VARCHAR(64) NOT NULL, source VARCHAR(255) NOT NULL)";

/// Runs the effect of `envelope` through consumer `consumer`'s inbox.
async fn handle<D: TestDatabase>(db: &D, consumer: &str, envelope: &Envelope) -> Processed<()> {
    let sql = format!(
        "INSERT INTO source_effects (event_id, source) VALUES ('{}', '{}')",
        envelope.id, envelope.source
    );
    Inbox::new(consumer)
        .process(db.pool(), envelope, |tx| {
            Box::pin(async move { D::execute_in(&mut **tx, &sql).await.map(|_| ()) })
        })
        .await
        .expect("process")
}

/// The effects written for event `id`.
async fn effects<D: TestDatabase>(db: &D, id: &str) -> i64 {
    db.scalar(&format!(
        "SELECT count(*) FROM source_effects WHERE event_id = '{id}'"
    ))
    .await
}

/// A row as a plain-SQL writer leaves it: no `source`.
fn sourceless_row() -> OutboxRecord {
    OutboxRecord {
        id: 1,
        event_id: Uuid::new_v4(),
        source: None,
        destination: "steps".into(),
        partition_key: "k-1".into(),
        partition: 0,
        event_type: Step::TYPE.into(),
        schema_version: 1,
        subject: None,
        headers: serde_json::json!({}),
        payload: r#"{"key":"k-1","seq":1}"#.into(),
        created_at: Utc::now(),
        attempts: 0,
        defect: None,
    }
}

// ------------------------------------------------------------ end to end

/// Relay A publishes two rows — one written by plain SQL without a source,
/// one by `Outbox::publish` — and its acknowledgement is lost: the rows are
/// pending again, as the relay taking the partition over finds them. Relay B,
/// configured with another source, publishes them again. One consumer takes
/// all four deliveries through its inbox: one effect per event.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_relays_with_different_sources_and_one_redelivery_have_one_effect() {
    let db = TestDb::migrated().await;
    db.execute(EFFECTS).await.expect("effects table");
    let prefix = format!("{}.", unique_name("inbox_source"));
    let mut queue = TestQueue::bind_all(&format!("{prefix}{}", Step::DESTINATION)).await;
    let publisher = || async {
        Arc::new(
            RabbitPublisher::connect(&amqp_url().await)
                .await
                .expect("connect to RabbitMQ"),
        )
    };
    // What a service in another language writes: every column but `source`.
    let plain_id = Uuid::new_v4().to_string();
    db.execute(&format!(
        "INSERT INTO eventbus_outbox (event_id, destination, partition_key, event_type, payload) \
         VALUES ('{plain_id}', '{}', 'k-1', '{}', '{{\"key\":\"k-1\",\"seq\":1}}')",
        Step::DESTINATION,
        Step::TYPE
    ))
    .await
    .expect("plain-SQL insert");
    let mut tx = db.pool.begin().await.expect("begin");
    let step = Step {
        key: "k-2".into(),
        seq: 1,
        pad: String::new(),
    };
    let rust_id = Outbox::new("urn:service:orders")
        .publish(&mut tx, &step)
        .await
        .expect("publish")
        .to_string();
    tx.commit().await.expect("commit");

    // Rows are kept once published, so the lost acknowledgement is one
    // statement: the rows are pending again, same event ids.
    let relay = |source: &str| {
        let mut config = test_config(&prefix);
        config.default_source = source.to_owned();
        config.retention = Retention::Keep(Duration::from_secs(3600));
        config
    };
    let relay_a = spawn_relay(&db.pool, publisher().await, relay("urn:relay:a"));
    let mut deliveries = queue.read(2, Duration::from_secs(20)).await;
    relay_a.stop().await;
    let reset = db
        .execute("UPDATE eventbus_outbox SET state = 'pending', published_at = NULL")
        .await
        .expect("the acknowledgement is lost");
    assert_eq!(reset, 2);
    let relay_b = spawn_relay(&db.pool, publisher().await, relay("urn:relay:b"));
    deliveries.extend(queue.read(2, Duration::from_secs(20)).await);
    relay_b.stop().await;
    queue.delete().await;

    let envelopes: Vec<Envelope> = deliveries
        .iter()
        .map(|d| envelope_from_delivery(&d.properties, &d.data).expect("a CloudEvent"))
        .collect();
    let mut sent: Vec<(&str, &str)> = envelopes
        .iter()
        .map(|e| (e.id.as_str(), e.source.as_str()))
        .collect();
    sent.sort_unstable();
    let mut expected = vec![
        (plain_id.as_str(), "urn:relay:a"),
        (plain_id.as_str(), "urn:relay:b"),
        (rust_id.as_str(), "urn:service:orders"),
        (rust_id.as_str(), "urn:service:orders"),
    ];
    expected.sort_unstable();
    assert_eq!(
        sent, expected,
        "each event twice; the source-less one under each relay's source, \
         the other under its writer's"
    );

    let mut outcomes = Vec::new();
    for envelope in &envelopes {
        outcomes.push(handle(&db, "billing", envelope).await);
    }
    for id in [&plain_id, &rust_id] {
        assert_eq!(
            effects(&db, id).await,
            1,
            "one event, one effect, whichever relay sent it (outcomes {outcomes:?})"
        );
    }
    let handled = outcomes
        .iter()
        .filter(|o| **o == Processed::Handled(()))
        .count();
    assert_eq!(handled, 2, "{outcomes:?}");
}

/// `Outbox::new(source)` stores the source in every row it writes, prepared
/// entries without one included; an empty source writes nothing.
#[tokio::test]
async fn the_writer_s_source_is_stored_in_the_row() {
    let db = TestSqlite::migrated().await;
    let outbox = Outbox::new("urn:service:orders");
    let step = Step {
        key: "k-1".into(),
        seq: 1,
        pad: String::new(),
    };
    let mut entry = outbox.entry(&step, &Metadata::default()).expect("entry");
    assert_eq!(entry.source.as_deref(), Some("urn:service:orders"));
    entry.source = None;
    let mut tx = db.pool.begin().await.expect("begin");
    outbox.publish(&mut tx, &step).await.expect("publish");
    outbox
        .publish_entries(&mut tx, &[entry])
        .await
        .expect("publish_entries");
    let err = Outbox::new("")
        .publish(&mut tx, &step)
        .await
        .expect_err("an empty source");
    assert!(matches!(err, eventbus::Error::Config(_)), "{err}");
    tx.commit().await.expect("commit");
    assert_eq!(
        db.texts("SELECT source FROM eventbus_outbox ORDER BY id")
            .await,
        [
            Some("urn:service:orders".to_owned()),
            Some("urn:service:orders".to_owned())
        ]
    );
}

// ------------------------------------------------------------ at the inbox

/// The same row relayed under two sources is one message to the inbox, one at
/// a time and in batches (also within one batch).
async fn one_row_relayed_under_two_sources_is_one_message<D: TestDatabase>() {
    let db = D::migrated().await;
    db.execute(EFFECTS).await.expect("effects table");
    let row = sourceless_row();
    let a = row.to_envelope("urn:relay:a").expect("envelope of relay A");
    let b = row.to_envelope("urn:relay:b").expect("envelope of relay B");
    assert_ne!(a.source, b.source);

    let outcomes = [
        handle(&db, "billing", &a).await,
        handle(&db, "billing", &b).await,
        handle(&db, "billing", &a).await,
    ];
    assert_eq!(
        outcomes,
        [
            Processed::Handled(()),
            Processed::Duplicate,
            Processed::Duplicate
        ],
        "{}",
        D::NAME
    );
    assert_eq!(effects(&db, &a.id).await, 1, "{}", D::NAME);

    let table = TableName::default_inbox();
    let mut tx = db.pool().begin().await.expect("begin");
    let fresh = <D::DB as InboxDatabase>::try_record_many(&mut *tx, &table, "batch", &[&a, &b, &a])
        .await
        .expect("record a batch");
    assert_eq!(fresh, [true, false, false], "{}: within a batch", D::NAME);
    let fresh = <D::DB as InboxDatabase>::try_record_many(&mut *tx, &table, "billing", &[&b])
        .await
        .expect("record a batch");
    assert_eq!(fresh, [false], "{}: a batch after one", D::NAME);
    tx.commit().await.expect("commit");
}

/// Events of other producers whose ids are not UUIDs are unique only per
/// source (CloudEvents): the same id from two sources is two events.
async fn ids_that_are_not_uuids_stay_per_source<D: TestDatabase>() {
    let db = D::migrated().await;
    db.execute(EFFECTS).await.expect("effects table");
    let from = |source: &str| {
        let mut e = Envelope::new(source, Step::TYPE, br#"{"key":"k","seq":1}"#.to_vec());
        e.id = "42".into();
        e
    };
    let outcomes = [
        handle(&db, "billing", &from("urn:legacy:a")).await,
        handle(&db, "billing", &from("urn:legacy:b")).await,
        handle(&db, "billing", &from("urn:legacy:a")).await,
    ];
    assert_eq!(
        outcomes,
        [
            Processed::Handled(()),
            Processed::Handled(()),
            Processed::Duplicate
        ],
        "{}",
        D::NAME
    );
    assert_eq!(effects(&db, "42").await, 2, "{}", D::NAME);

    let table = TableName::default_inbox();
    let mut tx = db.pool().begin().await.expect("begin");
    let (c, d) = (from("urn:legacy:c"), from("urn:legacy:d"));
    let fresh = <D::DB as InboxDatabase>::try_record_many(&mut *tx, &table, "batch", &[&c, &d])
        .await
        .expect("record a batch");
    assert_eq!(fresh, [true, true], "{}", D::NAME);
}

/// An inbox row written before the key changed — under (source, id) — still
/// makes a redelivery of its message a duplicate.
async fn an_inbox_row_under_the_old_key_still_counts<D: TestDatabase>() {
    let db = D::migrated().await;
    db.execute(EFFECTS).await.expect("effects table");
    let a = sourceless_row()
        .to_envelope("urn:relay:a")
        .expect("envelope");
    db.execute(&format!(
        "INSERT INTO eventbus_inbox (consumer, source, message_id, event_type) \
         VALUES ('billing', 'urn:relay:a', '{}', '{}')",
        a.id,
        Step::TYPE
    ))
    .await
    .expect("an inbox row of the previous version");
    assert_eq!(
        handle(&db, "billing", &a).await,
        Processed::Duplicate,
        "{}",
        D::NAME
    );
    let table = TableName::default_inbox();
    let mut tx = db.pool().begin().await.expect("begin");
    let fresh = <D::DB as InboxDatabase>::try_record_many(&mut *tx, &table, "billing", &[&a])
        .await
        .expect("record a batch");
    assert_eq!(fresh, [false], "{}: in a batch", D::NAME);
    assert_eq!(effects(&db, &a.id).await, 0, "{}", D::NAME);
}

#[tokio::test]
async fn postgres_one_row_relayed_under_two_sources_is_one_message() {
    one_row_relayed_under_two_sources_is_one_message::<TestDb>().await;
}

#[tokio::test]
async fn mysql_one_row_relayed_under_two_sources_is_one_message() {
    one_row_relayed_under_two_sources_is_one_message::<TestMySql>().await;
}

#[tokio::test]
async fn sqlite_one_row_relayed_under_two_sources_is_one_message() {
    one_row_relayed_under_two_sources_is_one_message::<TestSqlite>().await;
}

#[tokio::test]
async fn postgres_ids_that_are_not_uuids_stay_per_source() {
    ids_that_are_not_uuids_stay_per_source::<TestDb>().await;
}

#[tokio::test]
async fn mysql_ids_that_are_not_uuids_stay_per_source() {
    ids_that_are_not_uuids_stay_per_source::<TestMySql>().await;
}

#[tokio::test]
async fn sqlite_ids_that_are_not_uuids_stay_per_source() {
    ids_that_are_not_uuids_stay_per_source::<TestSqlite>().await;
}

#[tokio::test]
async fn postgres_an_inbox_row_under_the_old_key_still_counts() {
    an_inbox_row_under_the_old_key_still_counts::<TestDb>().await;
}

#[tokio::test]
async fn mysql_an_inbox_row_under_the_old_key_still_counts() {
    an_inbox_row_under_the_old_key_still_counts::<TestMySql>().await;
}

#[tokio::test]
async fn sqlite_an_inbox_row_under_the_old_key_still_counts() {
    an_inbox_row_under_the_old_key_still_counts::<TestSqlite>().await;
}
