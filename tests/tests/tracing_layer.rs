//! An application that traces with `tracing` and exports through a
//! `tracing-opentelemetry` layer, and uses eventbus with the `otel` feature:
//! its request span is the parent of eventbus's `publish`, the trace goes on
//! through the relay and RabbitMQ to a consumer, and every span is exported
//! exactly once (no second `process` span made from eventbus's log span, no
//! orphan in a trace of its own).
//!
//! The subscriber and the tracer provider are process-global, so this suite
//! is a test binary of its own.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use eventbus::consumer::{Consumer, Context};
use eventbus::telemetry::TraceContext;
use eventbus::transport::rabbitmq::RabbitPublisher;
use eventbus::{BoxError, Event, Outbox, Publisher};
use eventbus_tests::consumer::{run, wait_until, Broker};
use eventbus_tests::relay::{spawn_relay, test_config};
use eventbus_tests::{unique_name, TestDb};
use opentelemetry::trace::{SpanKind, TraceContextExt as _, TraceId, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use serde::{Deserialize, Serialize};
use sqlx::Postgres;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::{Layer as _, SubscriberExt as _};
use tracing_subscriber::util::SubscriberInitExt as _;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema, Event)]
#[event(type = "com.example.tracing.order.placed", version = 1, destination = "orders", key = order_id)]
struct OrderPlaced {
    order_id: String,
}

/// Installs what an application does: an SDK provider (in-memory exporter
/// here) as the global provider, and a `tracing` subscriber whose
/// OpenTelemetry layer exports `tracing` spans through the same provider.
fn exporter() -> &'static InMemorySpanExporter {
    static EXPORTER: OnceLock<InMemorySpanExporter> = OnceLock::new();
    EXPORTER.get_or_init(|| {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        opentelemetry::global::set_tracer_provider(provider.clone());
        // lapin traces its own I/O loop; everything else is kept, eventbus's
        // spans at every level included.
        let filter = Targets::new()
            .with_default(LevelFilter::TRACE)
            .with_target("lapin", LevelFilter::OFF);
        tracing_subscriber::registry()
            .with(
                tracing_opentelemetry::layer()
                    .with_tracer(provider.tracer("shop"))
                    .with_filter(filter),
            )
            .init();
        exporter
    })
}

fn all_spans() -> Vec<SpanData> {
    exporter()
        .get_finished_spans()
        .expect("read the exported spans")
}

/// The one span of `spans` named `name`.
fn named<'a>(spans: &'a [SpanData], name: &str) -> &'a SpanData {
    let found: Vec<&SpanData> = spans.iter().filter(|s| s.name == name).collect();
    assert_eq!(
        found.len(),
        1,
        "spans named `{name}` among {:?}",
        spans
            .iter()
            .map(|s| (&s.name, s.span_context.trace_id()))
            .collect::<Vec<_>>()
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tracing_opentelemetry_application_gets_one_trace_without_duplicates() {
    exporter();
    let broker = Broker::rabbitmq().await;
    let Broker::RabbitMq(url) = &broker else {
        unreachable!("asked for RabbitMQ")
    };
    let publisher: Arc<dyn Publisher> = Arc::new(
        RabbitPublisher::connect(url)
            .await
            .expect("connect to RabbitMQ"),
    );
    let prefix = format!("{}.", unique_name("tel_layer"));
    let orders = format!("{prefix}{}", OrderPlaced::DESTINATION);
    let (db_a, db_b) = (TestDb::migrated().await, TestDb::migrated().await);
    let group = unique_name("tel_layer_b");
    let subscriber = broker.subscriber(&group, &orders, 16).await;

    // The consumer's handler opens a `tracing` span of its own, as
    // application code does; it must land under eventbus's `process` span.
    let seen: Arc<Mutex<Vec<Option<TraceContext>>>> = Arc::default();
    let in_handler = Arc::clone(&seen);
    let consumer = Consumer::builder(&group)
        .on(move |ctx: Context<Postgres>, _: OrderPlaced| {
            let in_handler = Arc::clone(&in_handler);
            async move {
                async {
                    in_handler.lock().expect("seen").push(ctx.trace_context());
                }
                .instrument(tracing::info_span!("charge card"))
                .await;
                Ok::<_, BoxError>(())
            }
        })
        .build(db_b.pool.clone(), subscriber, Arc::clone(&publisher))
        .expect("consumer");
    let consumer = run(consumer);

    // The application's request span is a `tracing` span.
    let request = tracing::info_span!("POST /orders");
    let trace = request.context().span().span_context().trace_id();
    assert_ne!(
        trace,
        TraceId::INVALID,
        "the layer gives the request a trace"
    );
    let outbox = Outbox::new("urn:test:shop");
    async {
        let mut tx = db_a.pool.begin().await.expect("begin");
        outbox
            .publish(
                &mut tx,
                &OrderPlaced {
                    order_id: unique_name("order"),
                },
            )
            .await
            .expect("publish");
        tx.commit().await.expect("commit");
    }
    .instrument(request.clone())
    .await;
    drop(request);

    let relay = spawn_relay(&db_a.pool, Arc::clone(&publisher), test_config(&prefix));
    wait_until(
        "the consumer handled the order",
        Duration::from_secs(60),
        || !seen.lock().expect("seen").is_empty(),
    )
    .await;
    // Counted in every trace: a span lost to a trace of its own must fail
    // the assertions below, not time out here.
    wait_until("five spans exported", Duration::from_secs(30), || {
        all_spans().len() >= 5
    })
    .await;
    relay.stop().await;
    consumer.stop().await;
    // A late duplicate (a second span for the same message) must show.
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Every span the run exported, in any trace: the request's trace holds
    // them all, once each.
    let spans = all_spans();
    let names: Vec<(&str, TraceId)> = spans
        .iter()
        .map(|s| (s.name.as_ref(), s.span_context.trace_id()))
        .collect();
    assert!(
        spans.iter().all(|s| s.span_context.trace_id() == trace),
        "a span outside the request's trace: {names:?}"
    );
    assert_eq!(spans.len(), 5, "exported spans: {names:?}");
    let root = named(&spans, "POST /orders");
    let publish = named(&spans, "publish orders");
    let send = named(&spans, &format!("send {orders}"));
    let process = named(&spans, &format!("process {orders}"));
    let charge = named(&spans, "charge card");
    assert_child(publish, root);
    assert_child(send, publish);
    assert_child(process, send);
    assert_child(charge, process);
    assert_eq!(publish.span_kind, SpanKind::Producer);
    assert_eq!(send.span_kind, SpanKind::Producer);
    assert_eq!(process.span_kind, SpanKind::Consumer);

    // The handler ran in the exported `process` span.
    let seen = seen.lock().expect("seen").clone();
    assert_eq!(seen.len(), 1, "handled once");
    let in_handler = seen[0].as_ref().expect("the handler's trace context");
    assert_eq!(
        in_handler.span_id(),
        process.span_context.span_id().to_string()
    );

    broker.clean_up(&[&group], &[&orders]).await;
}
