//! The relay against real PostgreSQL and an SQS-compatible server (moto):
//! volume and per-key order into a FIFO queue, and the wire format of relayed
//! messages (CloudEvents JSON body, attributes, group and deduplication ids).

use std::sync::Arc;
use std::time::Duration;

use eventbus::transport::sqs::aws_sdk_sqs::types::MessageSystemAttributeName;
use eventbus::transport::sqs::{queue_name, STRUCTURED_CONTENT_TYPE};
use eventbus::{Event, Outbox};
use eventbus_tests::relay::{spawn_relay, test_config, wait_drained, Step};
use eventbus_tests::sqs;
use eventbus_tests::{unique_name, TestDb};

// The shared scenarios this binary runs: its row in `tests/src/matrix.rs`.
eventbus_tests::matrix!(relay_sqs);

/// A prefix for one test's destinations, and the destination of [`Step`].
fn names(tag: &str) -> (String, String) {
    let prefix = format!("{}.", unique_name(tag));
    let destination = format!("{prefix}{}", Step::DESTINATION);
    (prefix, destination)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn relayed_messages_carry_the_event_as_cloudevents_json_with_attributes() {
    let db = TestDb::migrated().await;
    let (prefix, destination) = names("wire");
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

    let publisher = Arc::new(sqs::publisher(true).await);
    let relay = spawn_relay(&db.pool, publisher.clone(), test_config(&prefix));
    wait_drained(&db.pool, Duration::from_secs(30)).await;
    relay.stop().await;

    // Read the raw message, as a consumer in another language would.
    let queue = queue_name(&destination, true).expect("valid");
    let client = publisher.client();
    let url = client
        .get_queue_url()
        .queue_name(&queue)
        .send()
        .await
        .expect("queue url")
        .queue_url()
        .expect("a url")
        .to_owned();
    let received = client
        .receive_message()
        .queue_url(&url)
        .wait_time_seconds(5)
        .message_attribute_names("All")
        .message_system_attribute_names(MessageSystemAttributeName::All)
        .send()
        .await
        .expect("receive");
    let messages = received.messages();
    assert_eq!(messages.len(), 1);
    let m = &messages[0];
    let attribute = |name: &str| {
        m.message_attributes()
            .and_then(|a| a.get(name))
            .and_then(|v| v.string_value())
            .map(str::to_owned)
    };
    let system =
        |name: MessageSystemAttributeName| m.attributes().and_then(|a| a.get(&name)).cloned();
    assert_eq!(
        attribute("content-type").as_deref(),
        Some(STRUCTURED_CONTENT_TYPE)
    );
    assert_eq!(attribute("ce-specversion").as_deref(), Some("1.0"));
    assert_eq!(attribute("ce-id"), Some(id.to_string()));
    assert_eq!(attribute("ce-source").as_deref(), Some("urn:test:orders"));
    assert_eq!(attribute("ce-type").as_deref(), Some(Step::TYPE));
    assert_eq!(attribute("ce-partitionkey").as_deref(), Some("order-9"));
    assert_eq!(attribute("ce-dataschema"), Some(Step::dataschema()));
    assert_eq!(attribute("traceparent"), meta.traceparent);
    assert_eq!(attribute("tracestate"), meta.tracestate);
    assert_eq!(
        system(MessageSystemAttributeName::MessageGroupId).as_deref(),
        Some("order-9"),
        "the partition key is the message group"
    );
    assert_eq!(
        system(MessageSystemAttributeName::MessageDeduplicationId),
        Some(id.to_string()),
        "the event id is the deduplication id"
    );
    // The body is the CloudEvents JSON event format: any CloudEvents SDK reads it.
    let body: serde_json::Value =
        serde_json::from_str(m.body().expect("a body")).expect("JSON body");
    assert_eq!(body["specversion"], "1.0");
    assert_eq!(body["id"], id.to_string());
    assert_eq!(body["type"], Step::TYPE);
    assert_eq!(body["causationid"], "cause-1");
    assert_eq!(body["partitionkey"], "order-9");
    let decoded: Step = serde_json::from_value(body["data"].clone()).expect("data is the Step");
    assert_eq!(decoded, event);
    let envelope = eventbus::transport::sqs::envelope_from_message(m).expect("a CloudEvent");
    assert_eq!(envelope.id, id.to_string());
    assert_eq!(envelope.causation_id.as_deref(), Some("cause-1"));
    if let Some(handle) = m.receipt_handle() {
        client
            .delete_message()
            .queue_url(&url)
            .receipt_handle(handle)
            .send()
            .await
            .expect("delete");
    }
    sqs::delete_queues(&[&destination], &[], true).await;
}
