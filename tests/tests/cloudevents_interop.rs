//! CloudEvents interoperability with an independent implementation, the
//! official CloudEvents Python SDK, over the real Kafka-protocol broker and
//! RabbitMQ (`tests/interop/cloudevents_interop.py` is its side):
//!
//! - what our publishers (the relay's) send, the SDK's Kafka and RabbitMQ
//!   bindings decode, with every attribute and the data as we sent them;
//! - what the SDK publishes in binary and structured mode (on AMQP also with
//!   its AMQP binding's `cloudEvents_` and `cloudEvents:` prefixes), our
//!   subscribers decode to the events it was given;
//! - a malformed structured message takes the path a malformed binary one
//!   does: dead-lettered once, with why and its raw body, and not redelivered.
//!
//! Needs `python3` with the packages `cloudevents`, `confluent-kafka` and
//! `pika` (`scripts/services.sh` installs them); without them every test
//! fails and says so.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use eventbus::consumer::{dead_letter, Consumer, Context};
use eventbus::envelope::dataschema_uri;
use eventbus::transport::kafka::KafkaPublisher;
use eventbus::transport::rabbitmq::RabbitPublisher;
use eventbus::transport::Subscriber;
use eventbus::{Envelope, Event, OutgoingMessage, Publisher};
use eventbus_tests::consumer::{
    create_effects, record, run, scalar, wait_until, Broker, ALL_EFFECTS,
};
use eventbus_tests::rabbitmq::TestQueue;
use eventbus_tests::relay::Step;
use eventbus_tests::{amqp_url, kafka, kafka_brokers, rabbitmq, unique_name, TestDb};
use serde_json::{json, Value};
use sqlx::Postgres;
use tokio::io::AsyncWriteExt;

// ---------------------------------------------------------------- the SDK

/// The Python side of the suite.
const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/interop/cloudevents_interop.py"
);

/// The script's exit status when the SDK or a broker client is missing.
const SDK_MISSING: i32 = 3;

/// How to provide the Python side, for failure messages.
const HOW_TO_INSTALL: &str = "install Python 3 and run `source scripts/services.sh && \
     ensure_python_interop` (it pip-installs cloudevents, confluent-kafka and pika)";

/// Runs the script with `args` and `input` on its standard input; returns its
/// output. Panics, saying how to provide them, when Python or the SDK is
/// missing, and with the script's own words when it fails.
async fn python(args: &[&str], input: &str) -> String {
    let mut child = tokio::process::Command::new("python3")
        .arg(SCRIPT)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run python3 ({e}): {HOW_TO_INSTALL}"));
    let mut stdin = child.stdin.take().expect("piped stdin");
    stdin
        .write_all(input.as_bytes())
        .await
        .expect("write the script's input");
    drop(stdin);
    let output = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("python3 {SCRIPT} {args:?} ran over 120 s"))
        .expect("the script's output");
    let stderr = String::from_utf8_lossy(&output.stderr);
    if output.status.code() == Some(SDK_MISSING) {
        panic!("{}; {HOW_TO_INSTALL}", stderr.trim_end());
    }
    assert!(
        output.status.success(),
        "python3 {SCRIPT} {args:?} failed ({}): {stderr}",
        output.status
    );
    String::from_utf8(output.stdout).expect("the script writes UTF-8")
}

/// An event as the script reads and writes it: attributes as strings, data
/// as JSON, text or hex.
fn to_sdk(e: &Envelope) -> String {
    let attributes: BTreeMap<&str, String> = e.attributes().into_iter().collect();
    let data = if e.is_json() {
        json!({ "json": serde_json::from_slice::<Value>(&e.data).expect("JSON data") })
    } else if let (true, Ok(text)) = (is_text(e), std::str::from_utf8(&e.data)) {
        json!({ "text": text })
    } else {
        json!({ "hex": e.data.iter().map(|b| format!("{b:02x}")).collect::<String>() })
    };
    json!({ "attributes": attributes, "data": data }).to_string()
}

fn is_text(e: &Envelope) -> bool {
    e.datacontenttype
        .as_deref()
        .is_some_and(|ct| ct.starts_with("text/"))
}

/// An event the script decoded, and the content mode it found it in.
fn from_sdk(line: &str) -> (Envelope, String) {
    let event: Value = serde_json::from_str(line).expect("the script writes JSON lines");
    let attributes = event["attributes"]
        .as_object()
        .expect("attributes")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().expect("string attributes").to_owned()))
        .collect();
    let data = match &event["data"] {
        Value::Null => Vec::new(),
        Value::Object(d) if d.contains_key("json") => serde_json::to_vec(&d["json"]).expect("JSON"),
        Value::Object(d) if d.contains_key("text") => {
            d["text"].as_str().expect("text").as_bytes().to_vec()
        }
        other => {
            let hex = other["hex"].as_str().expect("hex data");
            (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
                .collect()
        }
    };
    let envelope = Envelope::from_attributes(attributes, data)
        .unwrap_or_else(|e| panic!("the SDK's event is not one of ours: {e}: {line}"));
    let mode = event["mode"].as_str().expect("mode").to_owned();
    (envelope, mode)
}

/// Asserts `got` is `expected`: every attribute, and the data (as JSON
/// values for JSON data, whose spacing each side writes its own way).
fn assert_same(got: &Envelope, expected: &Envelope, what: &str) {
    let mut got_attributes = got.clone();
    let mut expected_attributes = expected.clone();
    got_attributes.data.clear();
    expected_attributes.data.clear();
    assert_eq!(got_attributes, expected_attributes, "{what}: attributes");
    if expected.is_json() {
        let value = |e: &Envelope| serde_json::from_slice::<Value>(&e.data).expect("JSON data");
        assert_eq!(value(got), value(expected), "{what}: data");
    } else {
        assert_eq!(got.data, expected.data, "{what}: data");
    }
}

// ---------------------------------------------------------------- events

/// Three events with fresh ids: JSON data with every attribute (`dataschema`
/// naming schema version 2, trace context, our extensions), bytes with no
/// optional attribute but `time`, and text. Each has a `time`: the SDK's
/// `CloudEvent` makes one up (now) for an event that has none.
fn events(tag: &str) -> Vec<Envelope> {
    let id = |n: u32| format!("{tag}-{n}-{}", uuid::Uuid::now_v7());
    let mut full = Envelope::new(
        "urn:svc:orders",
        "com.example.order.placed",
        br#"{"order_id":"o-1","amount":5,"lines":[{"sku":"a","qty":2}]}"#.to_vec(),
    );
    full.id = id(1);
    // Milliseconds: what the AMQP binding's timestamps carry.
    full.time = "2026-12-07T01:02:03.456Z".parse().ok();
    full.subject = Some("o-1".into());
    full.dataschema = Some(dataschema_uri("com.example.order.placed", 2));
    full.partition_key = Some("o-1".into());
    full.traceparent = Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());
    full.tracestate = Some("congo=t61rcWkgMzE".into());
    full.correlation_id = Some("c-1".into());
    full.causation_id = Some("e-0".into());
    full.extensions.insert("tenant".into(), "acme".into());

    let mut bytes = Envelope::new(
        "/sensors/7",
        "com.example.reading.taken",
        vec![0, 159, 146, 150, 255],
    );
    bytes.id = id(2);
    bytes.time = "2026-12-07T01:02:03Z".parse().ok();
    bytes.datacontenttype = Some("application/octet-stream".into());

    let mut text = Envelope::new(
        "urn:svc:mail",
        "com.example.mail.sent",
        b"hello, world".to_vec(),
    );
    text.id = id(3);
    text.time = "2026-12-07T01:02:04Z".parse().ok();
    text.datacontenttype = Some("text/plain".into());
    text.subject = Some("m-1".into());
    vec![full, bytes, text]
}

async fn publish(publisher: &dyn Publisher, destination: &str, events: &[Envelope]) {
    let batch: Vec<OutgoingMessage> = events
        .iter()
        .map(|e| OutgoingMessage {
            destination: destination.to_owned(),
            envelope: e.clone(),
        })
        .collect();
    for outcome in publisher.publish_batch(&batch).await {
        outcome.unwrap_or_else(|e| panic!("publish to {destination}: {e}"));
    }
}

/// Checks the SDK's decoding of `events` (the script's output) against them.
fn assert_read_by_sdk(output: &str, events: &[Envelope], binding: &str) {
    let decoded: Vec<(Envelope, String)> = output.lines().map(from_sdk).collect();
    assert_eq!(decoded.len(), events.len(), "{binding}: {output}");
    for (expected, (got, mode)) in events.iter().zip(&decoded) {
        assert_eq!(mode, "binary", "{binding}: we publish in binary mode");
        assert_same(got, expected, &format!("{binding}, {}", expected.id));
    }
}

/// Receives `n` messages with `subscriber`, acknowledging each; their
/// events and lanes by id. Panics on a message that does not decode.
async fn receive(subscriber: &mut dyn Subscriber, n: usize) -> BTreeMap<String, (Envelope, u64)> {
    let mut got = BTreeMap::new();
    while got.len() < n {
        let message = tokio::time::timeout(Duration::from_secs(60), subscriber.next())
            .await
            .unwrap_or_else(|_| panic!("received {} of {n} messages in 60 s", got.len()))
            .expect("the subscription is open")
            .expect("a message");
        let envelope = message
            .envelope
            .unwrap_or_else(|e| panic!("we could not decode the SDK's message: {e}"));
        message.settle.ack().await.expect("acknowledge");
        got.insert(envelope.id.clone(), (envelope, message.lane));
    }
    got
}

fn assert_received(got: &BTreeMap<String, (Envelope, u64)>, sent: &[Envelope], mode: &str) {
    for expected in sent {
        let (received, _) = got
            .get(&expected.id)
            .unwrap_or_else(|| panic!("{mode}: {} not received", expected.id));
        assert_same(received, expected, mode);
    }
}

// ------------------------------------------------- the SDK reads our output

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_sdk_reads_what_we_publish_to_kafka() {
    let brokers = kafka_brokers().await;
    let topic = unique_name("interop_out");
    let publisher: KafkaPublisher = kafka::publisher_with_topic(&brokers, &topic, 1).await;
    let events = events("kafka-out");
    publish(&publisher, &topic, &events).await;
    let count = events.len().to_string();
    let output = python(&["read-kafka", &brokers, &topic, &count], "").await;
    assert_read_by_sdk(&output, &events, "Kafka binding");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_sdk_reads_what_we_publish_to_rabbitmq() {
    let url = amqp_url().await;
    let exchange = unique_name("interop_out");
    let queue = TestQueue::bind_all(&exchange).await;
    let publisher = RabbitPublisher::connect(&url).await.expect("publisher");
    let events = events("rabbitmq-out");
    publish(&publisher, &exchange, &events).await;
    let count = events.len().to_string();
    let output = python(&["read-rabbitmq", &url, &queue.name, &count], "").await;
    assert_read_by_sdk(&output, &events, "RabbitMQ binding");
    queue.delete().await;
    rabbitmq::delete_exchange(&exchange).await;
}

// --------------------------------------------- we read the SDK's messages

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn we_read_what_the_python_sdk_publishes_to_kafka_in_both_modes() {
    let brokers = kafka_brokers().await;
    let topic = unique_name("interop_in");
    kafka::publisher_with_topic(&brokers, &topic, 1).await;
    let mut subscriber = kafka::subscriber(&brokers, &unique_name("interop"), &[&topic], 16).await;
    for mode in ["binary", "structured"] {
        let sent = events(&format!("kafka-{mode}"));
        let input: String = sent.iter().map(|e| to_sdk(e) + "\n").collect();
        python(&["publish-kafka", &brokers, &topic, mode], &input).await;
        let got = receive(subscriber.as_mut(), sent.len()).await;
        assert_received(&got, &sent, &format!("Kafka, {mode} mode"));
    }
    subscriber.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn we_read_what_the_python_sdk_publishes_to_rabbitmq_in_both_modes_and_prefixes() {
    let url = amqp_url().await;
    let exchange = unique_name("interop_in");
    let group = unique_name("interop");
    // The group's queue is bound before the SDK publishes.
    let mut subscriber = rabbitmq::subscriber(&url, &group, &[&exchange], 16).await;
    let mut lanes_of_key = BTreeMap::new();
    for mode in [
        "binary",
        "structured",
        "amqp-binary",
        "amqp-binary-colon",
        "amqp-structured",
    ] {
        let sent = events(&format!("rabbitmq-{mode}"));
        let input: String = sent.iter().map(|e| to_sdk(e) + "\n").collect();
        python(&["publish-rabbitmq", &url, &exchange, mode], &input).await;
        let got = receive(subscriber.as_mut(), sent.len()).await;
        assert_received(&got, &sent, &format!("RabbitMQ, {mode}"));
        // The first event's partition key is in its body in structured mode:
        // its lane (per-key order) must not depend on the mode.
        lanes_of_key.insert(mode, got[&sent[0].id].1);
    }
    let first = lanes_of_key["binary"];
    assert!(
        lanes_of_key.values().all(|lane| *lane == first),
        "one key, one lane, whatever the mode: {lanes_of_key:?}"
    );
    subscriber.close().await.expect("close");
    rabbitmq::delete_group(&group).await;
    rabbitmq::delete_exchange(&exchange).await;
}

// ------------------------------------------ malformed structured messages

/// Structured-mode bodies that are not CloudEvents, and what the dead
/// letter's reason must say of each.
const MALFORMED: [(&str, &str); 2] = [
    (
        r#"{"specversion":"1.0","id":"bad-1","source":"/py","type":"com.example.test.step","data":"#,
        "not valid JSON",
    ),
    (
        r#"{"specversion":"1.0","id":"bad-2","type":"com.example.test.step","data":{}}"#,
        "`source` is required",
    ),
];

/// The SDK publishes one good event and the [`MALFORMED`] bodies, all as
/// `application/cloudevents+json`: the consumer handles the event, and
/// dead-letters each malformed message once — reason and raw body kept — as
/// it does a malformed binary message, and does not meet it again.
async fn malformed_structured_scenario(broker: &Broker) {
    let db = TestDb::migrated().await;
    create_effects(&db.pool).await;
    let (destination, publisher) = broker.destination("interop_bad", 1).await;
    let group = unique_name("interop_bad_group");
    let subscriber = broker.subscriber(&group, &destination, 16).await;
    let mut dead_letters = broker
        .dead_letters(&destination, &group, publisher.as_ref())
        .await;

    let step = Step {
        key: "key-1".into(),
        seq: 0,
        pad: String::new(),
    };
    let mut good = Envelope::new(
        "/py/steps",
        Step::TYPE,
        serde_json::to_vec(&step).expect("JSON"),
    );
    good.partition_key = Some(step.key.clone());
    good.dataschema = Some(Step::dataschema());
    let malformed: String = MALFORMED
        .iter()
        .map(|(body, _)| format!("{body}\n"))
        .collect();
    let content_type = "application/cloudevents+json";
    match broker {
        Broker::Kafka(brokers) => {
            python(
                &["publish-raw-kafka", brokers, &destination, content_type],
                &malformed,
            )
            .await;
            let input = to_sdk(&good);
            python(
                &["publish-kafka", brokers, &destination, "structured"],
                &input,
            )
            .await;
        }
        Broker::RabbitMq(url) => {
            let args = [
                "publish-raw-rabbitmq",
                url,
                &destination,
                Step::TYPE,
                content_type,
            ];
            python(&args, &malformed).await;
            let input = to_sdk(&good);
            python(
                &["publish-rabbitmq", url, &destination, "structured"],
                &input,
            )
            .await;
        }
        Broker::Sqs(_) => unreachable!("SQS has no content-type binding to test here"),
    }

    let consumer = Consumer::builder(group.clone())
        .on(|ctx: Context<Postgres>, step: Step| async move { record(&ctx, "", &step).await })
        .build(db.pool.clone(), subscriber, Arc::clone(&publisher))
        .expect("consumer");
    let running = run(consumer);
    let bad = u64::try_from(MALFORMED.len()).expect("fits");
    wait_until(
        "the event handled, the malformed dead-lettered",
        Duration::from_secs(60),
        || {
            let m = running.consumer.metrics();
            m.handled() >= 1 && m.dead_lettered() >= bad
        },
    )
    .await;
    let letters = dead_letters.peek(MALFORMED.len()).await;
    for (body, expected) in MALFORMED {
        let letter = letters
            .iter()
            .find(|l| l.data == body.as_bytes())
            .unwrap_or_else(|| panic!("no dead letter keeps the raw body {body}"));
        assert_eq!(letter.event_type, dead_letter::UNDECODABLE_TYPE);
        let reason = &letter.extensions[dead_letter::REASON];
        assert!(
            reason.contains("not a CloudEvent") && reason.contains(expected),
            "{reason}"
        );
    }
    // Settled, not redelivered: nothing more comes.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let consumer = running.stop().await;
    let m = consumer.metrics();
    assert_eq!((m.handled(), m.dead_lettered()), (1, bad), "{m:?}");
    assert_eq!(scalar(&db.pool, ALL_EFFECTS).await, 1);
    broker.clean_up(&[&group], &[&destination]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_structured_messages_are_dead_lettered_on_kafka() {
    malformed_structured_scenario(&Broker::kafka().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_structured_messages_are_dead_lettered_on_rabbitmq() {
    malformed_structured_scenario(&Broker::rabbitmq().await).await;
}
