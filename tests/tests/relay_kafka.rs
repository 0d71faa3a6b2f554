//! The relay against real PostgreSQL and the Kafka-protocol broker: volume and
//! per-key order, commit-order safety, poison events, binding headers, metrics.

use std::sync::Arc;
use std::time::Duration;

use eventbus::relay::OutboxAdmin;
use eventbus::transport::kafka::rdkafka::message::{Message, OwnedMessage};
use eventbus::transport::kafka::{envelope_from_message, KafkaPublisher};
use eventbus::{Event, Outbox, Publisher, TableName};
use eventbus_tests::kafka::{header, publisher_builder, publisher_with_topic, read_all};
use eventbus_tests::relay::{
    assert_per_key_order, publish_steps, spawn_relay, steps, test_config, wait_drained, Step,
};
use eventbus_tests::{kafka_brokers, unique_name, TestDb};

fn decode(messages: &[OwnedMessage]) -> Vec<Step> {
    messages
        .iter()
        .map(|m| serde_json::from_slice(m.payload().expect("payload")).expect("a Step"))
        .collect()
}

/// Creates the test's topic (4 partitions) and returns the relay's publisher,
/// the destination prefix and the topic.
async fn setup(tag: &str) -> (Arc<KafkaPublisher>, String, String, String) {
    let brokers = kafka_brokers().await;
    let prefix = format!("{}.", unique_name(tag));
    let topic = format!("{prefix}{}", Step::DESTINATION);
    let publisher = publisher_with_topic(&brokers, &topic, 4).await;
    (Arc::new(publisher), prefix, topic, brokers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn relays_100k_events_over_1000_keys_in_order() {
    let db = TestDb::migrated().await;
    let (publisher, prefix, topic, brokers) = setup("volume").await;
    let events = steps(100_000, 1_000);
    publish_steps(&db.pool, &events, 10_000).await;

    let relay = spawn_relay(&db.pool, publisher, test_config(&prefix));
    wait_drained(&db.pool, Duration::from_secs(180)).await;
    let received =
        decode(&read_all(&brokers, &topic, events.len(), Duration::from_secs(120)).await);
    assert_eq!(
        received.len(),
        events.len(),
        "every event arrives exactly once"
    );
    let duplicates = assert_per_key_order(&received);
    assert_eq!(duplicates, 0);
    assert_eq!(relay.metrics.published_total(), 100_000);
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_older_transaction_committing_last_is_still_delivered_first() {
    let db = TestDb::migrated().await;
    let (publisher, prefix, topic, brokers) = setup("commit_order").await;
    let outbox = Outbox::new();
    let first = Step {
        key: "k".into(),
        seq: 1,
        pad: String::new(),
    };
    let second = Step {
        key: "k".into(),
        seq: 2,
        pad: String::new(),
    };

    // The older transaction writes first (lower id) but commits last.
    let mut older = db.pool.begin().await.expect("begin");
    outbox
        .publish(&mut older, &first)
        .await
        .expect("publish first");
    let mut newer = db.pool.begin().await.expect("begin");
    outbox
        .publish(&mut newer, &second)
        .await
        .expect("publish second");
    newer.commit().await.expect("commit newer");

    let relay = spawn_relay(&db.pool, publisher, test_config(&prefix));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let early = read_all(&brokers, &topic, 1, Duration::from_secs(1)).await;
    assert!(
        early.is_empty(),
        "the newer event must wait for the older transaction"
    );
    let held = relay.metrics.snapshot().held_back_seconds;
    assert!(held >= 1.0, "held-back time is exposed (got {held})");
    assert!(relay
        .metrics
        .render_prometheus()
        .contains("eventbus_relay_held_back_seconds"));

    older.commit().await.expect("commit older");
    wait_drained(&db.pool, Duration::from_secs(20)).await;
    let received = decode(&read_all(&brokers, &topic, 2, Duration::from_secs(20)).await);
    assert_eq!(
        received,
        vec![first, second],
        "consumer sees them in id order"
    );
    relay.stop().await;
}

/// Keys that land in the same outbox partition as `key`.
async fn keys_in_same_partition(pool: &sqlx::PgPool, key: &str, n: usize) -> Vec<String> {
    let target: i32 = sqlx::query_scalar("SELECT (hashtext($1) & 2147483647) % 64")
        .bind(key)
        .fetch_one(pool)
        .await
        .expect("partition of key");
    let mut out = Vec::new();
    let mut i = 0;
    while out.len() < n {
        let candidate = format!("other-{i}");
        let p: i32 = sqlx::query_scalar("SELECT (hashtext($1) & 2147483647) % 64")
            .bind(&candidate)
            .fetch_one(pool)
            .await
            .expect("partition of key");
        if p == target {
            out.push(candidate);
        }
        i += 1;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_poisoned_event_is_parked_and_blocks_only_its_key() {
    let db = TestDb::migrated().await;
    let brokers = kafka_brokers().await;
    let prefix = format!("{}.", unique_name("poison"));
    let topic = format!("{prefix}{}", Step::DESTINATION);
    // The broker side accepts at most 20 kB per message.
    let publisher = publisher_builder(&brokers)
        .set("message.max.bytes", "20000")
        .build()
        .expect("publisher");
    publisher.ensure_destination(&topic).await.expect("topic");

    let others = keys_in_same_partition(&db.pool, "poisoned", 3).await;
    let step = |key: &str, seq: u64, pad: usize| Step {
        key: key.into(),
        seq,
        pad: "x".repeat(pad),
    };
    let mut events = vec![
        step("poisoned", 1, 0),
        step("poisoned", 2, 50_000),
        step("poisoned", 3, 0),
    ];
    for (i, k) in others.iter().enumerate() {
        events.push(step(k, i as u64, 0));
    }
    publish_steps(&db.pool, &events, 1).await;

    let mut config = test_config(&prefix);
    config.max_attempts = 3;
    config.retry_initial = Duration::from_millis(100);
    let relay = spawn_relay(&db.pool, Arc::new(publisher), config);

    // The poisoned event fails three times and is parked; its successor waits.
    let admin = OutboxAdmin::new(
        db.pool.clone(),
        TableName::parse("eventbus_outbox").expect("name"),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let parked = loop {
        let failed = admin.failed(10).await.expect("failed rows");
        if !failed.is_empty() {
            break failed;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "poisoned event never parked"
        );
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
        decode(&read_all(&brokers, &topic, 1 + others.len(), Duration::from_secs(20)).await);
    assert_eq!(arrived.len(), 1 + others.len());
    assert!(arrived.iter().all(|s| !(s.key == "poisoned" && s.seq == 3)));
    for k in &others {
        assert!(
            arrived.iter().any(|s| &s.key == k),
            "key {k} of the same partition must flow"
        );
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        eventbus_tests::relay::pending(&db.pool).await,
        1,
        "seq 3 waits behind the parked event"
    );

    // `failed skip` releases the key.
    assert_eq!(admin.skip(&[parked[0].id]).await.expect("skip"), 1);
    wait_drained(&db.pool, Duration::from_secs(20)).await;
    let all = decode(&read_all(&brokers, &topic, 2 + others.len(), Duration::from_secs(20)).await);
    let poisoned: Vec<u64> = all
        .iter()
        .filter(|s| s.key == "poisoned")
        .map(|s| s.seq)
        .collect();
    assert_eq!(poisoned, vec![1, 3]);
    assert_eq!(relay.metrics.parked_total(), 1);
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn relayed_messages_follow_the_cloudevents_kafka_binding() {
    let db = TestDb::migrated().await;
    let (publisher, prefix, topic, brokers) = setup("binding").await;
    let outbox = Outbox::new().source("urn:test:orders");
    let meta = eventbus::Metadata {
        correlation_id: Some("corr-1".into()),
        traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
        ..eventbus::Metadata::default()
    };
    let event = Step {
        key: "order-7".into(),
        seq: 1,
        pad: String::new(),
    };
    let mut tx = db.pool.begin().await.expect("begin");
    let id = outbox
        .publish_with(&mut tx, &event, &meta)
        .await
        .expect("publish");
    tx.commit().await.expect("commit");

    let relay = spawn_relay(&db.pool, publisher, test_config(&prefix));
    let messages = read_all(&brokers, &topic, 1, Duration::from_secs(20)).await;
    assert_eq!(messages.len(), 1);
    let m = &messages[0];
    assert_eq!(m.key(), Some("order-7".as_bytes()));
    assert_eq!(header(m, "ce_specversion").as_deref(), Some("1.0"));
    assert_eq!(header(m, "ce_id"), Some(id.to_string()));
    assert_eq!(header(m, "ce_source").as_deref(), Some("urn:test:orders"));
    assert_eq!(header(m, "ce_type").as_deref(), Some(Step::TYPE));
    assert_eq!(header(m, "ce_subject").as_deref(), Some("order-7"));
    assert_eq!(header(m, "ce_partitionkey").as_deref(), Some("order-7"));
    assert_eq!(header(m, "ce_dataschema"), Some(Step::dataschema()));
    assert_eq!(header(m, "ce_correlationid").as_deref(), Some("corr-1"));
    assert_eq!(
        header(m, "content-type").as_deref(),
        Some("application/json")
    );
    assert_eq!(header(m, "traceparent"), meta.traceparent);
    assert!(header(m, "ce_time").is_some());
    let envelope = envelope_from_message(m).expect("a CloudEvent");
    assert_eq!(envelope.schema_version(), Some(1));
    let decoded: Step = serde_json::from_slice(&envelope.data).expect("payload");
    assert_eq!(decoded, event);
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_and_status_report_the_backlog_falling_to_zero() {
    let db = TestDb::migrated().await;
    let (publisher, prefix, _topic, _brokers) = setup("metrics").await;
    publish_steps(&db.pool, &steps(5_000, 50), 5_000).await;
    let admin = OutboxAdmin::new(
        db.pool.clone(),
        TableName::parse("eventbus_outbox").expect("name"),
    );
    assert_eq!(admin.status().await.expect("status").pending, 5_000);

    let mut config = test_config(&prefix);
    config.batch_size = 100; // slow enough to watch the backlog fall
    let relay = spawn_relay(&db.pool, publisher, config);
    // The backlog gauge first shows pending work …
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut saw_backlog = false;
    while std::time::Instant::now() < deadline && !saw_backlog {
        let snap = relay.metrics.snapshot();
        saw_backlog = snap.backlog.values().sum::<u64>() > 0;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(saw_backlog, "the backlog gauge showed pending rows");
    // … then zero.
    wait_drained(&db.pool, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let text = relay.metrics.render_prometheus();
    assert!(text.contains("eventbus_outbox_backlog_total 0"), "{text}");
    assert!(
        text.contains("eventbus_relay_published_total 5000"),
        "{text}"
    );
    assert!(
        text.contains("eventbus_relay_publish_latency_seconds_count"),
        "{text}"
    );
    let status = admin.status().await.expect("status");
    assert_eq!(status.pending, 0);
    assert_eq!(status.relays.len(), 1);
    assert_eq!(status.relays[0].3, 64, "one relay owns all 64 partitions");
    relay.stop().await;
    let status = admin.status().await.expect("status");
    assert!(status.relays.is_empty(), "a stopped relay deregisters");
    assert_eq!(status.unowned_partitions, 64, "and releases its partitions");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_row_inserted_by_plain_sql_is_relayed_with_the_configured_source() {
    let db = TestDb::migrated().await;
    let (publisher, prefix, topic, brokers) = setup("plain_sql").await;
    // What a service in another language does: one INSERT, every other column defaulted.
    sqlx::query(
        "INSERT INTO eventbus_outbox (destination, partition_key, event_type, payload) \
         VALUES ('steps', 'k-1', 'com.example.test.step', '{\"key\":\"k-1\",\"seq\":7}')",
    )
    .execute(&db.pool)
    .await
    .expect("plain insert");
    let mut config = test_config(&prefix);
    config.default_source = "urn:service:legacy-billing".into();
    let relay = spawn_relay(&db.pool, publisher, config);
    let messages = read_all(&brokers, &topic, 1, Duration::from_secs(20)).await;
    assert_eq!(messages.len(), 1);
    let envelope = envelope_from_message(&messages[0]).expect("a CloudEvent");
    assert_eq!(envelope.source, "urn:service:legacy-billing");
    assert_eq!(envelope.partition_key.as_deref(), Some("k-1"));
    assert!(
        uuid::Uuid::parse_str(&envelope.id).is_ok(),
        "defaulted id is a UUID"
    );
    assert_eq!(envelope.schema_version(), Some(1));
    let step: Step = serde_json::from_slice(&envelope.data).expect("payload");
    assert_eq!(step.seq, 7);
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retention_mode_keeps_published_rows_then_cleans_them_up() {
    let db = TestDb::migrated().await;
    let (publisher, prefix, topic, brokers) = setup("retention").await;
    publish_steps(&db.pool, &steps(300, 10), 300).await;
    let mut config = test_config(&prefix);
    config.retention = eventbus::relay::Retention::Keep(Duration::from_secs(2));
    let relay = spawn_relay(&db.pool, publisher, config);
    wait_drained(&db.pool, Duration::from_secs(20)).await;
    let kept: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM eventbus_outbox WHERE state = 'published' AND published_at IS NOT NULL",
    )
    .fetch_one(&db.pool)
    .await
    .expect("count kept");
    assert_eq!(kept, 300, "published rows are kept, marked published");
    assert_eq!(
        read_all(&brokers, &topic, 300, Duration::from_secs(20))
            .await
            .len(),
        300
    );
    // After the retention window the relay deletes them in batches.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM eventbus_outbox")
            .fetch_one(&db.pool)
            .await
            .expect("count rows");
        if left == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{left} published rows never cleaned up"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    relay.stop().await;
}
