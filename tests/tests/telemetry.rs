//! Telemetry end to end, against real PostgreSQL and both brokers: one trace
//! from a business transaction through relays and brokers to every consumer
//! (an in-memory OpenTelemetry exporter collects the spans), a third-party
//! producer's `traceparent` continued, and the Prometheus metrics of a run.
//!
//! The exporter is process-global: each scenario finds its own spans by trace
//! id.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use eventbus::consumer::{Consumer, Context, RetryPolicy};
use eventbus::telemetry::{attributes as attr, Exposition, TraceContext};
use eventbus::transport::kafka::rdkafka;
use eventbus::transport::rabbitmq::lapin;
use eventbus::transport::rabbitmq::RabbitPublisher;
use eventbus::{BoxError, Envelope, Event, Metadata, Outbox, OutgoingMessage, Publisher};
use eventbus_tests::consumer::{run, wait_until, Broker};
use eventbus_tests::relay::{spawn_relay, test_config, wait_drained};
use eventbus_tests::{kafka, rabbitmq, unique_name, TestDb};
use opentelemetry::trace::{
    FutureExt as _, Span as _, SpanId, SpanKind, Status, TraceContextExt as _, TraceId, Tracer as _,
};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use serde::{Deserialize, Serialize};
use sqlx::Postgres;

// ---------------------------------------------------------------- events

/// What service A publishes and service B handles.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema, Event)]
#[event(type = "com.example.telemetry.order.placed", version = 1, destination = "orders", key = order_id)]
struct OrderPlaced {
    order_id: String,
    #[serde(default)]
    pad: String,
}

/// What service B publishes in reply and service C handles.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema, Event)]
#[event(type = "com.example.telemetry.payment.requested", version = 1, destination = "payments", key = order_id)]
struct PaymentRequested {
    order_id: String,
}

// ---------------------------------------------------------------- tracing

/// The in-memory exporter behind the global tracer provider, installed once.
fn exporter() -> &'static InMemorySpanExporter {
    static EXPORTER: OnceLock<InMemorySpanExporter> = OnceLock::new();
    EXPORTER.get_or_init(|| {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        opentelemetry::global::set_tracer_provider(provider);
        exporter
    })
}

/// The finished spans of `trace`.
fn spans_of(trace: TraceId) -> Vec<SpanData> {
    exporter()
        .get_finished_spans()
        .expect("read the exported spans")
        .into_iter()
        .filter(|s| s.span_context.trace_id() == trace)
        .collect()
}

/// Waits until `trace` has `n` finished spans; returns them.
async fn wait_for_spans(trace: TraceId, n: usize) -> Vec<SpanData> {
    wait_until(
        &format!("{n} spans of trace {trace}"),
        Duration::from_secs(30),
        || spans_of(trace).len() >= n,
    )
    .await;
    // A stray extra span (a repeated send) must show up in the assertions.
    tokio::time::sleep(Duration::from_millis(300)).await;
    spans_of(trace)
}

fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.as_str().into_owned())
}

fn expect_attribute(span: &SpanData, key: &str, expected: &str) {
    assert_eq!(
        attribute(span, key).as_deref(),
        Some(expected),
        "attribute {key} of span `{}`: {:?}",
        span.name,
        span.attributes
    );
}

/// The one span of `spans` named `name`.
fn named<'a>(spans: &'a [SpanData], name: &str) -> &'a SpanData {
    let found: Vec<&SpanData> = spans.iter().filter(|s| s.name == name).collect();
    assert_eq!(
        found.len(),
        1,
        "spans named `{name}` among {:?}",
        spans.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    found[0]
}

fn assert_child(child: &SpanData, parent: &SpanData) {
    assert_eq!(
        child.parent_span_id,
        parent.span_context.span_id(),
        "`{}` is not a child of `{}`",
        child.name,
        parent.name
    );
}

// ---------------------------------------------------------------- services

/// A publisher for `broker` whose destinations `destinations` exist (Kafka
/// does not create topics on first use).
async fn publisher(broker: &Broker, destinations: &[&str]) -> Arc<dyn Publisher> {
    let publisher: Arc<dyn Publisher> = match broker {
        Broker::Kafka(brokers) => Arc::new(
            kafka::publisher_builder(brokers)
                .set("batch.num.messages", "1")
                .partitions(2)
                .build()
                .expect("Kafka publisher"),
        ),
        Broker::RabbitMq(url) => Arc::new(
            RabbitPublisher::connect(url)
                .await
                .expect("connect to RabbitMQ"),
        ),
        other => panic!("the telemetry suite runs on Kafka and RabbitMQ, not {other:?}"),
    };
    if let Broker::Kafka(_) = broker {
        for destination in destinations {
            publisher
                .ensure_destination(destination)
                .await
                .unwrap_or_else(|e| panic!("create topic {destination}: {e}"));
        }
    }
    publisher
}

fn system(broker: &Broker) -> &'static str {
    match broker {
        Broker::Kafka(_) => "kafka",
        Broker::RabbitMq(_) => "rabbitmq",
        other => panic!("the telemetry suite runs on Kafka and RabbitMQ, not {other:?}"),
    }
}

/// What service C saw: the envelope and the trace context its handler ran in.
type Seen = Arc<Mutex<Vec<(Envelope, Option<TraceContext>)>>>;

/// Service B: handles `OrderPlaced` and publishes `PaymentRequested` from the
/// handler, through its own outbox.
fn service_b(
    db: &TestDb,
    group: &str,
    subscriber: Box<dyn eventbus::transport::Subscriber>,
    dead_letters: Arc<dyn Publisher>,
) -> Consumer<Postgres> {
    Consumer::builder(group)
        .outbox(Outbox::new("urn:test:service-b"))
        .on(|ctx: Context<Postgres>, order: OrderPlaced| async move {
            ctx.publish(&PaymentRequested {
                order_id: order.order_id,
            })
            .await?;
            Ok::<_, BoxError>(())
        })
        .build(db.pool.clone(), subscriber, dead_letters)
        .expect("consumer B")
}

/// Service C: records what it handles.
fn service_c(
    db: &TestDb,
    group: &str,
    subscriber: Box<dyn eventbus::transport::Subscriber>,
    dead_letters: Arc<dyn Publisher>,
    seen: Seen,
) -> Consumer<Postgres> {
    Consumer::builder(group)
        .on(move |ctx: Context<Postgres>, _: PaymentRequested| {
            let seen = Arc::clone(&seen);
            async move {
                let entry = (ctx.envelope().clone(), ctx.trace_context());
                seen.lock().expect("seen").push(entry);
                Ok::<_, BoxError>(())
            }
        })
        .build(db.pool.clone(), subscriber, dead_letters)
        .expect("consumer C")
}

// ---------------------------------------------------------------- one trace

/// Service A publishes `OrderPlaced` inside a request span → relay A → broker
/// → B handles it and publishes `PaymentRequested` → relay B → broker → C.
/// Every span shares the request's trace id, in the chain
/// `request → publish → send → process → publish → send → process`.
async fn saga_is_one_trace(broker: Broker) {
    exporter();
    let prefix = format!("{}.", unique_name("tel_trace"));
    let orders = format!("{prefix}{}", OrderPlaced::DESTINATION);
    let payments = format!("{prefix}{}", PaymentRequested::DESTINATION);
    let publisher = publisher(&broker, &[&orders, &payments]).await;
    let (db_a, db_b, db_c) = (
        TestDb::migrated().await,
        TestDb::migrated().await,
        TestDb::migrated().await,
    );
    let (group_b, group_c) = (unique_name("tel_b"), unique_name("tel_c"));
    // Subscribed first: RabbitMQ keeps only what a queue is bound for.
    let sub_b = broker.subscriber(&group_b, &orders, 16).await;
    let sub_c = broker.subscriber(&group_c, &payments, 16).await;
    let seen: Seen = Arc::default();
    let b = run(service_b(&db_b, &group_b, sub_b, Arc::clone(&publisher)));
    let c = run(service_c(
        &db_c,
        &group_c,
        sub_c,
        Arc::clone(&publisher),
        Arc::clone(&seen),
    ));

    // The business transaction of service A, inside a request span.
    let tracer = opentelemetry::global::tracer("telemetry-test");
    let request = opentelemetry::Context::new().with_span(tracer.start("POST /orders"));
    let trace = request.span().span_context().trace_id();
    let order_id = unique_name("order");
    let outbox = Outbox::new("urn:test:service-a");
    let event_id = async {
        let mut tx = db_a.pool.begin().await.expect("begin");
        let id = outbox
            .publish(
                &mut tx,
                &OrderPlaced {
                    order_id: order_id.clone(),
                    pad: String::new(),
                },
            )
            .await
            .expect("publish in service A");
        tx.commit().await.expect("commit");
        id
    }
    .with_context(request.clone())
    .await;
    request.span().end();

    let relay_a = spawn_relay(&db_a.pool, Arc::clone(&publisher), test_config(&prefix));
    let relay_b = spawn_relay(&db_b.pool, Arc::clone(&publisher), test_config(&prefix));
    wait_until(
        "service C handled the payment request",
        Duration::from_secs(60),
        || !seen.lock().expect("seen").is_empty(),
    )
    .await;
    let spans = wait_for_spans(trace, 7).await;
    relay_a.stop().await;
    relay_b.stop().await;
    b.stop().await;
    c.stop().await;

    let names: Vec<&str> = spans.iter().map(|s| s.name.as_ref()).collect();
    assert_eq!(spans.len(), 7, "the whole saga is one trace: {names:?}");
    let root = named(&spans, "POST /orders");
    let publish_a = named(&spans, "publish orders");
    let send_a = named(&spans, &format!("send {orders}"));
    let process_b = named(&spans, &format!("process {orders}"));
    let publish_b = named(&spans, "publish payments");
    let send_b = named(&spans, &format!("send {payments}"));
    let process_c = named(&spans, &format!("process {payments}"));
    assert_child(publish_a, root);
    assert_child(send_a, publish_a);
    assert_child(process_b, send_a);
    assert_child(publish_b, process_b);
    assert_child(send_b, publish_b);
    assert_child(process_c, send_b);

    for span in [publish_a, send_a, publish_b, send_b] {
        assert_eq!(span.span_kind, SpanKind::Producer, "{}", span.name);
    }
    for span in [process_b, process_c] {
        assert_eq!(span.span_kind, SpanKind::Consumer, "{}", span.name);
    }
    for span in [publish_a, send_a, process_b, publish_b, send_b, process_c] {
        assert_eq!(span.status, Status::Unset, "`{}` succeeded", span.name);
        assert_eq!(span.instrumentation_scope.name(), "eventbus");
    }

    // Messaging semantic conventions.
    let system = system(&broker);
    let event_id = event_id.to_string();
    expect_attribute(publish_a, attr::OPERATION_TYPE, "create");
    expect_attribute(publish_a, attr::DESTINATION, "orders");
    expect_attribute(publish_a, attr::MESSAGE_ID, &event_id);
    expect_attribute(publish_a, attr::PARTITION_KEY, &order_id);
    expect_attribute(publish_a, attr::EVENT_TYPE, OrderPlaced::TYPE);
    for (span, operation) in [(send_a, "send"), (process_b, "process")] {
        expect_attribute(span, attr::MESSAGING_SYSTEM, system);
        expect_attribute(span, attr::DESTINATION, &orders);
        expect_attribute(span, attr::OPERATION_TYPE, operation);
        expect_attribute(span, attr::OPERATION_NAME, operation);
        expect_attribute(span, attr::MESSAGE_ID, &event_id);
    }
    expect_attribute(process_b, attr::CONSUMER_GROUP, &group_b);
    expect_attribute(process_c, attr::CONSUMER_GROUP, &group_c);
    expect_attribute(process_b, attr::OUTCOME, "handled");
    expect_attribute(process_b, attr::ATTEMPT, "1");
    let waited: i64 = attribute(send_a, attr::OUTBOX_WAIT_MS)
        .expect("the send span says how long the row waited")
        .parse()
        .expect("a number of milliseconds");
    assert!((0..60_000).contains(&waited), "outbox wait {waited} ms");
    match broker {
        Broker::Kafka(_) => {
            for span in [send_a, process_b] {
                expect_attribute(span, attr::KAFKA_KEY, &order_id);
                let partition = attribute(span, attr::PARTITION).expect("partition");
                assert!(["0", "1"].contains(&partition.as_str()), "{partition}");
            }
            // The consumer reads the offset the broker acknowledged to the relay.
            assert_eq!(
                attribute(send_a, attr::KAFKA_OFFSET),
                attribute(process_b, attr::KAFKA_OFFSET)
            );
            assert!(attribute(process_b, attr::BROKER_WAIT_MS).is_some());
        }
        Broker::RabbitMq(_) => {
            for span in [send_a, process_b] {
                expect_attribute(span, attr::RABBITMQ_ROUTING_KEY, OrderPlaced::TYPE);
            }
            assert!(attribute(process_b, attr::BROKER_WAIT_MS).is_some());
        }
        other => panic!("not a broker of this suite: {other:?}"),
    }

    // The message C got carries B's `send` span, in the envelope, and C's
    // handler ran in its `process` span.
    let seen = seen.lock().expect("seen").clone();
    assert_eq!(seen.len(), 1, "C handled the request once");
    let (envelope, in_handler) = &seen[0];
    let carried = TraceContext::of(envelope).expect("the message carries a trace context");
    assert_eq!(carried.trace_id(), trace.to_string());
    assert_eq!(carried.span_id(), send_b.span_context.span_id().to_string());
    let in_handler = in_handler.as_ref().expect("the handler's trace context");
    assert_eq!(
        in_handler.span_id(),
        process_c.span_context.span_id().to_string()
    );

    broker
        .clean_up(&[&group_b, &group_c], &[&orders, &payments])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn saga_is_one_trace_on_kafka() {
    saga_is_one_trace(Broker::kafka().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn saga_is_one_trace_on_rabbitmq() {
    saga_is_one_trace(Broker::rabbitmq().await).await;
}

// ---------------------------------------------------------------- third party

/// A CloudEvent in binary mode as another language's SDK sends it, with only
/// the plain `traceparent`/`tracestate` headers its OpenTelemetry
/// instrumentation adds (no `ce_traceparent`).
async fn send_third_party(broker: &Broker, destination: &str, traceparent: &str, id: &str) {
    let data = serde_json::to_vec(&OrderPlaced {
        order_id: id.to_owned(),
        pad: String::new(),
    })
    .expect("json");
    match broker {
        Broker::Kafka(brokers) => {
            use rdkafka::message::{Header, OwnedHeaders};
            use rdkafka::producer::{FutureProducer, FutureRecord};
            let producer: FutureProducer = rdkafka::ClientConfig::new()
                .set("bootstrap.servers", brokers)
                .create()
                .expect("a plain Kafka producer");
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: "ce_specversion",
                    value: Some("1.0"),
                })
                .insert(Header {
                    key: "ce_id",
                    value: Some(id),
                })
                .insert(Header {
                    key: "ce_source",
                    value: Some("urn:third-party"),
                })
                .insert(Header {
                    key: "ce_type",
                    value: Some(OrderPlaced::TYPE),
                })
                .insert(Header {
                    key: "content-type",
                    value: Some("application/json"),
                })
                .insert(Header {
                    key: "traceparent",
                    value: Some(traceparent),
                })
                .insert(Header {
                    key: "tracestate",
                    value: Some("vendor=1"),
                });
            let record = FutureRecord::to(destination)
                .payload(&data)
                .key(id)
                .headers(headers);
            producer
                .send(record, Duration::from_secs(10))
                .await
                .map_err(|(e, _)| e)
                .expect("the broker takes the third-party message");
        }
        Broker::RabbitMq(_) => {
            use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
            use lapin::types::{AMQPValue, FieldTable};
            let connection = rabbitmq::connect().await;
            let channel = connection.create_channel().await.expect("channel");
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .expect("confirms");
            let mut headers = FieldTable::default();
            for (k, v) in [
                ("ce-specversion", "1.0"),
                ("ce-id", id),
                ("ce-source", "urn:third-party"),
                ("ce-type", OrderPlaced::TYPE),
                ("traceparent", traceparent),
                ("tracestate", "vendor=1"),
            ] {
                headers.insert(k.into(), AMQPValue::LongString(v.into()));
            }
            let properties = lapin::BasicProperties::default()
                .with_content_type("application/json".into())
                .with_headers(headers);
            channel
                .basic_publish(
                    destination.into(),
                    OrderPlaced::TYPE.into(),
                    BasicPublishOptions::default(),
                    &data,
                    properties,
                )
                .await
                .expect("publish")
                .await
                .expect("the broker confirms the third-party message");
            let _ = connection.close(200, "done".into()).await;
        }
        other => panic!("not a broker of this suite: {other:?}"),
    }
}

/// A message from a producer we did not write, carrying only a plain
/// `traceparent`: our consumer's `process` span continues that trace, and so
/// does the event its handler publishes.
async fn third_party_trace_is_continued(broker: Broker) {
    exporter();
    let prefix = format!("{}.", unique_name("tel_third"));
    let orders = format!("{prefix}{}", OrderPlaced::DESTINATION);
    let publisher = publisher(&broker, &[&orders]).await;
    let db_b = TestDb::migrated().await;
    let group_b = unique_name("tel_third_b");
    let sub_b = broker.subscriber(&group_b, &orders, 16).await;
    let b = run(service_b(&db_b, &group_b, sub_b, Arc::clone(&publisher)));

    let theirs_trace = TraceId::from_bytes(*uuid::Uuid::new_v4().as_bytes());
    let theirs_span = SpanId::from_bytes(
        uuid::Uuid::new_v4().as_bytes()[..8]
            .try_into()
            .expect("8 bytes"),
    );
    let traceparent = format!("00-{theirs_trace}-{theirs_span}-01");
    let id = unique_name("third");
    send_third_party(&broker, &orders, &traceparent, &id).await;

    wait_until(
        "B handled the third-party event",
        Duration::from_secs(60),
        || b.consumer.metrics().handled() == 1,
    )
    .await;
    let spans = wait_for_spans(theirs_trace, 2).await;
    b.stop().await;

    let process = named(&spans, &format!("process {orders}"));
    let publish = named(&spans, "publish payments");
    assert_eq!(
        process.parent_span_id, theirs_span,
        "the process span is the child of the third party's span"
    );
    assert_child(publish, process);
    expect_attribute(process, attr::MESSAGE_ID, &id);
    expect_attribute(process, attr::MESSAGING_SYSTEM, system(&broker));
    assert_eq!(
        spans.len(),
        2,
        "{:?}",
        spans.iter().map(|s| &s.name).collect::<Vec<_>>()
    );

    // The follow-up event waits in B's outbox with the trace continued.
    let headers: serde_json::Value = sqlx::query_scalar("SELECT headers FROM eventbus_outbox")
        .fetch_one(&db_b.pool)
        .await
        .expect("the follow-up event");
    let stored = headers["traceparent"].as_str().expect("a traceparent");
    let stored = TraceContext::parse(stored, None).expect("valid");
    assert_eq!(stored.trace_id(), theirs_trace.to_string());
    assert_eq!(stored.span_id(), publish.span_context.span_id().to_string());
    assert_eq!(
        headers["tracestate"], "vendor=1",
        "their tracestate travels on"
    );
    broker.clean_up(&[&group_b], &[&orders]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn third_party_traceparent_is_continued_on_kafka() {
    third_party_trace_is_continued(Broker::kafka().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn third_party_traceparent_is_continued_on_rabbitmq() {
    third_party_trace_is_continued(Broker::rabbitmq().await).await;
}

// ---------------------------------------------------------------- metrics

/// The value of the sample `series` (name and labels, as rendered) in `text`.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no sample `{series}` in:\n{text}"))
        .parse()
        .unwrap_or_else(|e| panic!("sample `{series}` is not a number: {e}"))
}

/// A run with every kind of event in it — good ones, one retried, one that
/// fails for good, a redelivered copy, one too large for the relay — then the
/// relay's and the consumer's metrics, rendered together as `/metrics` would
/// serve them, count each and time them plausibly.
async fn metrics_after_a_run(broker: Broker) {
    let prefix = format!("{}.", unique_name("tel_metrics"));
    let orders = format!("{prefix}{}", OrderPlaced::DESTINATION);
    let publisher = publisher(&broker, &[&orders]).await;
    let db_a = TestDb::migrated().await;
    let db_b = TestDb::migrated().await;
    let group = unique_name("tel_metrics_b");
    let subscriber = broker.subscriber(&group, &orders, 16).await;
    let dead_letters = broker
        .dead_letters(&orders, &group, publisher.as_ref())
        .await;

    let failed_once = Arc::new(AtomicBool::new(false));
    let handled: Arc<Mutex<Vec<Envelope>>> = Arc::default();
    let consumer = Consumer::builder(group.clone())
        .retry(RetryPolicy {
            immediate: 1,
            immediate_delay: Duration::from_millis(10),
            delayed: 0,
            ..RetryPolicy::default()
        })
        .on({
            let failed_once = Arc::clone(&failed_once);
            let handled = Arc::clone(&handled);
            move |ctx: Context<Postgres>, order: OrderPlaced| {
                let failed_once = Arc::clone(&failed_once);
                let handled = Arc::clone(&handled);
                async move {
                    if order.order_id == "poison" {
                        return Err("this order can never be handled".into());
                    }
                    if order.order_id == "flaky" && !failed_once.swap(true, Ordering::SeqCst) {
                        return Err("the first attempt fails".into());
                    }
                    handled
                        .lock()
                        .expect("handled")
                        .push(ctx.envelope().clone());
                    Ok::<_, BoxError>(())
                }
            }
        })
        .build(db_b.pool.clone(), subscriber, Arc::clone(&publisher))
        .expect("consumer");
    let running = run(consumer);

    let outbox = Outbox::new("urn:test:service-a");
    let mut tx = db_a.pool.begin().await.expect("begin");
    for id in ["o-1", "o-2", "o-3", "flaky", "poison"] {
        let event = OrderPlaced {
            order_id: id.into(),
            pad: String::new(),
        };
        outbox
            .publish_with(&mut tx, &event, &Metadata::default())
            .await
            .expect("publish");
    }
    let too_large = OrderPlaced {
        order_id: "huge".into(),
        pad: "x".repeat(2_000),
    };
    outbox.publish(&mut tx, &too_large).await.expect("publish");
    tx.commit().await.expect("commit");

    let relay_name = unique_name("tel_relay");
    let config = eventbus::relay::RelayConfig {
        name: relay_name.clone(),
        // The large event is refused and, with one attempt, parked.
        max_message_bytes: 1_000,
        max_attempts: 1,
        ..test_config(&prefix)
    };
    let relay = spawn_relay(&db_a.pool, Arc::clone(&publisher), config);
    wait_drained(&db_a.pool, Duration::from_secs(60)).await;
    wait_until("four events handled", Duration::from_secs(60), || {
        handled.lock().expect("handled").len() == 4
    })
    .await;

    // A copy of a handled event, as a broker redelivers it: the inbox's work.
    let copy = handled.lock().expect("handled")[0].clone();
    let results = publisher
        .publish_batch(&[OutgoingMessage {
            destination: orders.clone(),
            envelope: copy,
        }])
        .await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    wait_until("the copy recognised", Duration::from_secs(60), || {
        let m = running.consumer.metrics();
        m.duplicates() == 1 && m.dead_lettered() == 1
    })
    .await;
    wait_until(
        "the relay's statistics refreshed",
        Duration::from_secs(10),
        || relay.metrics.snapshot().parked_rows == 1,
    )
    .await;

    let mut exposition = Exposition::new();
    relay.metrics.write_to(&mut exposition);
    running.consumer.metrics().write_to(&mut exposition);
    let text = exposition.render();
    eprintln!("{text}");

    // The relay: counts, labelled with its name and table.
    let r = format!("{{relay=\"{relay_name}\",outbox=\"eventbus_outbox\"}}");
    assert_eq!(
        sample(&text, &format!("eventbus_relay_published_total{r}")),
        5.0
    );
    assert_eq!(
        sample(&text, &format!("eventbus_relay_rejected_total{r}")),
        1.0,
        "the large one"
    );
    assert_eq!(
        sample(&text, &format!("eventbus_relay_parked_total{r}")),
        1.0
    );
    assert_eq!(
        sample(&text, &format!("eventbus_outbox_parked_rows{r}")),
        1.0
    );
    assert_eq!(
        sample(&text, &format!("eventbus_outbox_pending_rows{r}")),
        0.0
    );
    assert_eq!(
        sample(
            &text,
            &format!("eventbus_outbox_oldest_pending_age_seconds{r}")
        ),
        0.0
    );
    assert_eq!(sample(&text, &format!("eventbus_relay_broker_up{r}")), 1.0);
    // The relay: times and sizes.
    let batches = sample(
        &text,
        &format!("eventbus_relay_publish_latency_seconds_count{r}"),
    );
    assert!(batches >= 1.0, "{batches} batches");
    assert_eq!(
        sample(&text, &format!("eventbus_relay_batch_size_count{r}")),
        batches
    );
    assert_eq!(
        sample(&text, &format!("eventbus_relay_batch_size_sum{r}")),
        5.0
    );
    let latency = sample(
        &text,
        &format!("eventbus_relay_publish_latency_seconds_sum{r}"),
    ) / batches;
    assert!(
        latency > 0.0 && latency < 10.0,
        "publish latency {latency} s"
    );
    assert_eq!(
        sample(
            &text,
            &format!("eventbus_relay_outbox_wait_seconds_count{r}")
        ),
        5.0
    );
    let wait = sample(&text, &format!("eventbus_relay_outbox_wait_seconds_sum{r}")) / 5.0;
    assert!(wait > 0.0 && wait < 60.0, "outbox wait {wait} s");
    assert_eq!(
        sample(
            &text,
            &format!(
                "eventbus_relay_outbox_wait_seconds_bucket{{relay=\"{relay_name}\",outbox=\"eventbus_outbox\",le=\"+Inf\"}}"
            )
        ),
        5.0
    );

    // The consumer: counts.
    let g = format!("{{group=\"{group}\"}}");
    assert_eq!(
        sample(&text, &format!("eventbus_consumer_handled_total{g}")),
        4.0
    );
    assert_eq!(
        sample(&text, &format!("eventbus_consumer_duplicates_total{g}")),
        1.0
    );
    assert_eq!(
        sample(&text, &format!("eventbus_consumer_dead_lettered_total{g}")),
        1.0
    );
    assert_eq!(
        sample(&text, &format!("eventbus_consumer_retries_total{g}")),
        2.0,
        "the flaky one once, the poison once before it gave up"
    );
    // The consumer: times, one per message (the copy included).
    for histogram in [
        "eventbus_consumer_handling_duration_seconds",
        "eventbus_consumer_broker_wait_seconds",
        "eventbus_consumer_end_to_end_seconds",
    ] {
        let count = sample(&text, &format!("{histogram}_count{g}"));
        assert_eq!(count, 6.0, "{histogram}");
        let mean = sample(&text, &format!("{histogram}_sum{g}")) / count;
        assert!((0.0..60.0).contains(&mean), "{histogram}: mean {mean} s");
    }
    let handling = sample(
        &text,
        &format!("eventbus_consumer_handling_duration_seconds_sum{g}"),
    );
    assert!(handling > 0.0, "handlers take some time");

    relay.stop().await;
    running.stop().await;
    let letters = dead_letters.read(1).await;
    assert!(letters[0].data.windows(6).any(|w| w == b"poison"));
    broker.clean_up(&[&group], &[&orders]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_after_a_run_on_kafka() {
    metrics_after_a_run(Broker::kafka().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_after_a_run_on_rabbitmq() {
    metrics_after_a_run(Broker::rabbitmq().await).await;
}

/// The scenarios' spans come from the global tracer: pin that it is the
/// in-memory provider's (with a no-op tracer they would find nothing).
#[test]
fn the_global_tracer_exports_to_memory() {
    exporter();
    let span = opentelemetry::global::tracer("check").start("check");
    let trace = span.span_context().trace_id();
    drop(span);
    assert_eq!(spans_of(trace).len(), 1);
}

/// Every metric the Grafana dashboard queries is one the relay renders, and
/// `docs/observability.md` documents every metric the relay and the consumer
/// render.
#[test]
fn dashboard_and_docs_name_real_metrics() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("docs/grafana/outbox-relay.json"))
            .expect("read the dashboard"),
    )
    .expect("the dashboard is JSON");
    let relay = eventbus::relay::RelayMetrics::default().render_prometheus();
    let consumer = eventbus::consumer::ConsumerMetrics::new("g").render_prometheus();
    let families = |text: &str| -> Vec<String> {
        text.lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .map(str::to_owned)
            .collect()
    };
    let rendered = families(&relay);

    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 8, "a dashboard worth the name");
    let mut queried = 0;
    for target in panels
        .iter()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
    {
        let expr = target["expr"].as_str().expect("a PromQL expression");
        for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if !word.starts_with("eventbus_") {
                continue;
            }
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| word.strip_suffix(suffix))
                .filter(|f| rendered.iter().any(|r| r == f))
                .unwrap_or(word);
            assert!(
                rendered.iter().any(|r| r == family),
                "the dashboard queries `{word}`, which the relay does not render"
            );
            queried += 1;
        }
    }
    assert!(queried >= 12, "{queried} metric references");

    let docs = std::fs::read_to_string(root.join("docs/observability.md")).expect("read the docs");
    for family in rendered.iter().chain(&families(&consumer)) {
        assert!(
            docs.contains(&format!("`{family}")),
            "docs/observability.md misses `{family}`"
        );
    }
}
