//! The relay against real PostgreSQL and RabbitMQ: the shared relay suite
//! (`eventbus_tests::suites::relay`, also run on MySQL and SQLite) — the
//! store, volume and per-key order, three relays with one killed — and the
//! CloudEvents AMQP binding of relayed messages.

use std::sync::Arc;
use std::time::Duration;

use eventbus::transport::rabbitmq::lapin::types::AMQPValue;
use eventbus::transport::rabbitmq::RabbitPublisher;
use eventbus::{Event, Outbox};
use eventbus_tests::rabbitmq::TestQueue;
use eventbus_tests::relay::{spawn_relay, test_config, Step};
use eventbus_tests::{amqp_url, unique_name, TestDb};

// The shared scenarios this binary runs: its row in `tests/src/matrix.rs`.
eventbus_tests::matrix!(relay_rabbitmq);

async fn setup(tag: &str) -> (Arc<RabbitPublisher>, String, TestQueue) {
    let prefix = format!("{}.", unique_name(tag));
    let exchange = format!("{prefix}{}", Step::DESTINATION);
    let queue = TestQueue::bind_all(&exchange).await;
    let publisher = RabbitPublisher::connect(&amqp_url().await)
        .await
        .expect("connect to RabbitMQ");
    (Arc::new(publisher), prefix, queue)
}

fn header(
    props: &eventbus::transport::rabbitmq::lapin::BasicProperties,
    name: &str,
) -> Option<String> {
    let headers = props.headers().as_ref()?;
    match headers.inner().get(name)? {
        AMQPValue::LongString(s) => Some(s.to_string()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn relayed_messages_follow_the_cloudevents_amqp_binding() {
    let db = TestDb::migrated().await;
    let (publisher, prefix, mut queue) = setup("binding").await;
    let outbox = Outbox::new("urn:test:orders");
    let meta = eventbus::Metadata {
        causation_id: Some("cause-1".into()),
        traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
        tracestate: Some("vendor=1".into()),
        ..eventbus::Metadata::default()
    };
    let event = Step {
        key: "order-9".into(),
        seq: 4,
        pad: String::new(),
    };
    let mut tx = db.pool.begin().await.expect("begin");
    let id = outbox
        .publish_with(&mut tx, &event, &meta)
        .await
        .expect("publish");
    tx.commit().await.expect("commit");

    let relay = spawn_relay(&db.pool, publisher, test_config(&prefix));
    let deliveries = queue.read(1, Duration::from_secs(20)).await;
    let d = &deliveries[0];
    let p = &d.properties;
    assert_eq!(
        d.routing_key.as_str(),
        Step::TYPE,
        "routing key = event type"
    );
    assert_eq!(header(p, "ce-specversion").as_deref(), Some("1.0"));
    assert_eq!(header(p, "ce-id"), Some(id.to_string()));
    assert_eq!(header(p, "ce-source").as_deref(), Some("urn:test:orders"));
    assert_eq!(header(p, "ce-type").as_deref(), Some(Step::TYPE));
    assert_eq!(header(p, "ce-partitionkey").as_deref(), Some("order-9"));
    assert_eq!(header(p, "ce-causationid").as_deref(), Some("cause-1"));
    assert_eq!(header(p, "ce-dataschema"), Some(Step::dataschema()));
    assert_eq!(header(p, "traceparent"), meta.traceparent);
    assert_eq!(header(p, "tracestate"), meta.tracestate);
    assert_eq!(
        p.content_type().as_ref().map(|s| s.as_str()),
        Some("application/json")
    );
    assert_eq!(
        p.message_id().as_ref().map(|s| s.to_string()),
        Some(id.to_string())
    );
    assert_eq!(*p.delivery_mode(), Some(2), "persistent");
    let envelope =
        eventbus::transport::rabbitmq::envelope_from_delivery(p, &d.data).expect("a CloudEvent");
    let decoded: Step = serde_json::from_slice(&envelope.data).expect("payload");
    assert_eq!(decoded, event);
    relay.stop().await;
    queue.delete().await;
}
