//! The Kafka transport against a real Kafka-protocol broker (`KAFKA_BROKERS`):
//! pipelined batches in per-key order, the CloudEvents Kafka binding, and the
//! sorting of failures into "broker unavailable" and "message rejected".

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use eventbus::transport::kafka::rdkafka::message::Message;
use eventbus::transport::kafka::{envelope_from_message, KafkaPublisher};
use eventbus::transport::Delivered;
use eventbus::{Envelope, OutgoingMessage, PublishError, Publisher};
use eventbus_tests::kafka::{
    header, java_partition, partition_count, publisher_builder, publisher_with_topic, read_all,
};
use eventbus_tests::{kafka_brokers, unique_name};

const READ_TIMEOUT: Duration = Duration::from_secs(30);

fn message(topic: &str, key: &str, data: &serde_json::Value) -> OutgoingMessage {
    let mut envelope = Envelope::new(
        "urn:eventbus:test",
        "com.example.test.happened",
        serde_json::to_vec(data).expect("serialize"),
    );
    envelope.partition_key = Some(key.to_owned());
    OutgoingMessage {
        destination: topic.to_owned(),
        envelope,
    }
}

fn all_ok(results: Vec<Result<Delivered, PublishError>>) -> Vec<Delivered> {
    results
        .into_iter()
        .enumerate()
        .map(|(i, r)| r.unwrap_or_else(|e| panic!("message {i} not acknowledged: {e}")))
        .collect()
}

#[tokio::test]
async fn a_batch_across_many_keys_arrives_complete_and_in_order_per_key() {
    let brokers = kafka_brokers().await;
    let topic = unique_name("kafka_batch");
    let publisher = publisher_with_topic(&brokers, &topic, 4).await;

    const KEYS: usize = 50;
    const PER_KEY: usize = 20;
    let messages: Vec<OutgoingMessage> = (0..KEYS * PER_KEY)
        .map(|i| {
            let key = format!("key-{}", i % KEYS);
            message(
                &topic,
                &key,
                &serde_json::json!({ "key": key, "seq": i / KEYS }),
            )
        })
        .collect();

    let delivered = all_ok(publisher.publish_batch(&messages).await);
    assert_eq!(delivered.len(), messages.len());
    assert!(delivered.iter().all(|d| d.offset.is_some()));

    let read = read_all(&brokers, &topic, messages.len(), READ_TIMEOUT).await;
    assert_eq!(read.len(), messages.len(), "messages read back");

    let mut seqs: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut partitions: BTreeMap<String, i32> = BTreeMap::new();
    for m in &read {
        let key = String::from_utf8(m.key().expect("key").to_vec()).expect("UTF-8 key");
        let data: serde_json::Value =
            serde_json::from_slice(m.payload().expect("payload")).expect("JSON payload");
        assert_eq!(data["key"], key.as_str(), "key and payload belong together");
        seqs.entry(key.clone())
            .or_default()
            .push(data["seq"].as_u64().expect("seq"));
        let first = *partitions.entry(key.clone()).or_insert(m.partition());
        assert_eq!(first, m.partition(), "key {key} spread over partitions");
    }
    assert_eq!(seqs.len(), KEYS);
    let in_order: Vec<u64> = (0..PER_KEY as u64).collect();
    for (key, got) in &seqs {
        assert_eq!(got, &in_order, "order of key {key}");
    }
    // murmur2 partitioning: the Java client would put every key in the same place.
    for (key, partition) in &partitions {
        assert_eq!(
            *partition,
            java_partition(key.as_bytes(), 4),
            "partition of {key}"
        );
    }
    // Delivery reports name the partition the message really landed in.
    for (m, d) in messages.iter().zip(&delivered) {
        let key = m.envelope.partition_key.as_deref().expect("key");
        assert_eq!(
            d.partition,
            Some(partitions[key]),
            "reported partition of {key}"
        );
    }
}

#[tokio::test]
async fn messages_follow_the_cloudevents_kafka_binding() {
    let brokers = kafka_brokers().await;
    let topic = unique_name("kafka_binding");
    let publisher = publisher_with_topic(&brokers, &topic, 2).await;

    let mut json = message(
        &topic,
        "order-7",
        &serde_json::json!({ "order_id": "order-7" }),
    );
    let e = &mut json.envelope;
    e.subject = Some("order-7".into());
    e.dataschema = Some(eventbus::envelope::dataschema_uri(&e.event_type, 2));
    e.traceparent = Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());
    e.tracestate = Some("congo=t61rcWkgMzE".into());
    e.correlation_id = Some("corr-1".into());
    e.causation_id = Some("cause-1".into());
    e.extensions.insert("tenant".into(), "acme".into());

    let mut text = message(&topic, "order-7", &serde_json::Value::Null);
    text.envelope.datacontenttype = Some("text/plain; charset=utf-8".into());
    text.envelope.data = b"plain words".to_vec();

    all_ok(publisher.publish_batch(&[json.clone(), text.clone()]).await);
    let read = read_all(&brokers, &topic, 2, READ_TIMEOUT).await;
    assert_eq!(read.len(), 2, "messages read back");
    let (first, second) = (&read[0], &read[1]);

    let sent = &json.envelope;
    assert_eq!(
        first.key(),
        Some("order-7".as_bytes()),
        "key = partition key"
    );
    assert_eq!(first.payload(), Some(sent.data.as_slice()), "value = data");
    for (name, value) in [
        ("ce_specversion", "1.0"),
        ("ce_id", sent.id.as_str()),
        ("ce_source", "urn:eventbus:test"),
        ("ce_type", "com.example.test.happened"),
        ("ce_partitionkey", "order-7"),
        ("ce_subject", "order-7"),
        ("ce_correlationid", "corr-1"),
        ("ce_tenant", "acme"),
        ("content-type", "application/json"),
        (
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
        ("tracestate", "congo=t61rcWkgMzE"),
    ] {
        assert_eq!(header(first, name).as_deref(), Some(value), "header {name}");
    }
    assert!(header(first, "ce_time").is_some(), "header ce_time");
    assert_eq!(
        header(first, "ce_datacontenttype"),
        None,
        "the binding carries the content type in `content-type` only"
    );

    let decoded = envelope_from_message(first).expect("decode the JSON event");
    assert_eq!(decoded.time, sent.time, "time survives to the nanosecond");
    assert_eq!(&decoded, sent);

    assert_eq!(
        header(second, "content-type").as_deref(),
        Some("text/plain; charset=utf-8")
    );
    let decoded = envelope_from_message(second).expect("decode the text event");
    assert_eq!(decoded, text.envelope);
}

#[tokio::test]
async fn an_oversized_message_is_rejected_while_the_rest_of_its_batch_is_delivered() {
    let brokers = kafka_brokers().await;
    let topic = unique_name("kafka_oversized");
    publisher_with_topic(&brokers, &topic, 1).await;
    let publisher = publisher_builder(&brokers)
        .set("message.max.bytes", "10000")
        .build()
        .expect("publisher");

    let mut big = message(&topic, "big", &serde_json::Value::Null);
    big.envelope.data = vec![b'x'; 20_000];
    big.envelope.datacontenttype = Some("application/octet-stream".into());
    let batch = [
        message(&topic, "small-1", &serde_json::json!({ "n": 1 })),
        big,
        message(&topic, "small-2", &serde_json::json!({ "n": 2 })),
    ];

    let results = publisher.publish_batch(&batch).await;
    assert_eq!(results.len(), 3);
    assert!(results[0].is_ok(), "first: {:?}", results[0]);
    assert!(
        matches!(&results[1], Err(PublishError::Rejected(_))),
        "oversized: {:?}",
        results[1]
    );
    assert!(results[2].is_ok(), "third: {:?}", results[2]);

    let read = read_all(&brokers, &topic, 2, READ_TIMEOUT).await;
    let keys: Vec<&[u8]> = read.iter().filter_map(|m| m.key()).collect();
    assert_eq!(keys, [b"small-1".as_slice(), b"small-2".as_slice()]);
}

#[tokio::test]
async fn an_unreachable_broker_is_unavailable_not_a_rejection() {
    let topic = unique_name("kafka_unreachable");
    let publisher = KafkaPublisher::builder("127.0.0.1:1")
        .set("message.timeout.ms", "2000")
        .build()
        .expect("publisher");
    let batch = [
        message(&topic, "a", &serde_json::json!({ "n": 1 })),
        message(&topic, "b", &serde_json::json!({ "n": 2 })),
    ];

    let started = Instant::now();
    let results = publisher.publish_batch(&batch).await;
    assert_eq!(results.len(), 2);
    for result in &results {
        assert!(
            matches!(result, Err(PublishError::Unavailable(_))),
            "expected Unavailable, got {result:?}"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_missing_topic_is_rejected_not_unavailable() {
    let brokers = kafka_brokers().await;
    let topic = unique_name("kafka_missing");
    let publisher = publisher_builder(&brokers)
        .set("message.timeout.ms", "3000")
        .build()
        .expect("publisher");

    let results = publisher
        .publish_batch(&[message(&topic, "a", &serde_json::json!({ "n": 1 }))])
        .await;
    assert!(
        matches!(&results[0], Err(PublishError::Rejected(_))),
        "expected Rejected, got {:?}",
        results[0]
    );
}

#[tokio::test]
async fn ensure_destination_is_idempotent_and_uses_the_partition_count() {
    let brokers = kafka_brokers().await;
    let topic = unique_name("kafka_ensure");
    assert_eq!(partition_count(&brokers, &topic).await, None, "fresh topic");

    let publisher = publisher_builder(&brokers)
        .partitions(3)
        .build()
        .expect("publisher");
    publisher.ensure_destination(&topic).await.expect("create");
    publisher
        .ensure_destination(&topic)
        .await
        .expect("already exists is fine");
    assert_eq!(partition_count(&brokers, &topic).await, Some(3));

    // Another publisher with another count leaves the existing topic alone.
    let other = publisher_builder(&brokers)
        .partitions(5)
        .build()
        .expect("publisher");
    other.ensure_destination(&topic).await.expect("exists");
    assert_eq!(partition_count(&brokers, &topic).await, Some(3));

    all_ok(
        publisher
            .publish_batch(&[message(&topic, "k", &serde_json::json!({ "n": 1 }))])
            .await,
    );
}

#[tokio::test]
async fn a_full_local_queue_waits_instead_of_failing() {
    let brokers = kafka_brokers().await;
    let topic = unique_name("kafka_queue_full");
    publisher_with_topic(&brokers, &topic, 2).await;
    let publisher = publisher_builder(&brokers)
        .set("queue.buffering.max.messages", "10")
        .build()
        .expect("publisher");

    let messages: Vec<OutgoingMessage> = (0..300)
        .map(|i| {
            message(
                &topic,
                &format!("k{}", i % 3),
                &serde_json::json!({ "seq": i }),
            )
        })
        .collect();
    all_ok(publisher.publish_batch(&messages).await);

    let read = read_all(&brokers, &topic, messages.len(), READ_TIMEOUT).await;
    assert_eq!(read.len(), messages.len());
    let mut last: BTreeMap<Vec<u8>, i64> = BTreeMap::new();
    for m in &read {
        let data: serde_json::Value =
            serde_json::from_slice(m.payload().expect("payload")).expect("JSON");
        let seq = data["seq"].as_i64().expect("seq");
        let key = m.key().expect("key").to_vec();
        if let Some(previous) = last.insert(key, seq) {
            assert!(previous < seq, "{previous} before {seq}");
        }
    }
}

#[test]
fn the_publisher_does_not_show_credentials() {
    let publisher = KafkaPublisher::builder("127.0.0.1:1")
        .set("security.protocol", "sasl_plaintext")
        .set("sasl.mechanisms", "PLAIN")
        .set("sasl.username", "relay")
        .set("sasl.password", "correct-horse-battery-staple")
        .build()
        .expect("publisher");
    let shown = format!("{publisher:?}");
    assert!(!shown.contains("correct-horse"), "{shown}");
    assert!(shown.contains("relay"), "{shown}");
}
