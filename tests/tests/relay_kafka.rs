//! The relay against real PostgreSQL and the Kafka-protocol broker: the
//! shared relay suite (`eventbus_tests::suites::relay`, also run on MySQL) —
//! volume and per-key order, commit-order safety, poison events, metrics and
//! status, plain-SQL rows, retention — and the CloudEvents Kafka binding.

use std::sync::Arc;
use std::time::Duration;

use eventbus::transport::kafka::rdkafka::message::Message;
use eventbus::transport::kafka::{envelope_from_message, KafkaPublisher};
use eventbus::{Event, Outbox};
use eventbus_tests::kafka::{header, publisher_with_topic, read_all};
use eventbus_tests::relay::{spawn_relay, test_config, Step};
use eventbus_tests::{kafka_brokers, unique_name, TestDb};

// The shared scenarios this binary runs: its row in `tests/src/matrix.rs`.
eventbus_tests::matrix!(relay_kafka);

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
async fn relayed_messages_follow_the_cloudevents_kafka_binding() {
    let db = TestDb::migrated().await;
    let (publisher, prefix, topic, brokers) = setup("binding").await;
    let outbox = Outbox::new("urn:test:orders");
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
