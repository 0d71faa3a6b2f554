//! The metrics facade, against real PostgreSQL and RabbitMQ: an application
//! installs its own `metrics` recorder, runs two relays and two consumers in
//! one process, and finds every one of them in its recorder, told apart by
//! their labels (`relay`/`outbox` for relays, `group` for consumers).
//!
//! Also: the names follow Prometheus's conventions.
//!
//! The recorder is process-global, as an application's is: this suite has a
//! binary of its own so that no other suite's relays and consumers record
//! into it.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use eventbus::consumer::{Consumer, Context};
use eventbus::relay::RelayConfig;
use eventbus::transport::rabbitmq::RabbitPublisher;
use eventbus::{BoxError, Event, Outbox, Publisher};
use eventbus_tests::consumer::{run, wait_until, Broker};
use eventbus_tests::relay::{spawn_relay, test_config, wait_drained};
use eventbus_tests::{unique_name, TestDb};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use metrics_util::MetricKind;
use serde::{Deserialize, Serialize};
use sqlx::Postgres;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema, Event)]
#[event(type = "com.example.facade.order.placed", version = 1, destination = "orders", key = order_id)]
struct OrderPlaced {
    order_id: String,
}

/// The application's recorder, installed once as the global one.
fn recorder() -> &'static Snapshotter {
    static SNAPSHOTTER: OnceLock<Snapshotter> = OnceLock::new();
    SNAPSHOTTER.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::set_global_recorder(recorder)
            .expect("this suite's binary installs no other recorder");
        snapshotter
    })
}

/// One metric series as the recorder holds it: name and sorted labels.
type Series = (String, BTreeMap<String, String>);

/// Everything recorded, by series (histograms drained: read once).
fn recorded() -> BTreeMap<Series, (MetricKind, DebugValue)> {
    recorder()
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let kind = key.kind();
            let key = key.key();
            let labels = key
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            ((key.name().to_owned(), labels), (kind, value))
        })
        .collect()
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn value<'a>(
    all: &'a BTreeMap<Series, (MetricKind, DebugValue)>,
    name: &str,
    pairs: &[(&str, &str)],
) -> &'a DebugValue {
    let series = (name.to_owned(), labels(pairs));
    match all.get(&series) {
        Some((_, value)) => value,
        None => panic!(
            "the application's recorder has no {series:?}; it has:\n{:#?}",
            all.keys().collect::<Vec<_>>()
        ),
    }
}

async fn write_orders(pool: &sqlx::PgPool, ids: &[&str]) {
    let outbox = Outbox::new("urn:test:facade");
    let mut tx = pool.begin().await.expect("begin");
    for id in ids {
        let event = OrderPlaced {
            order_id: (*id).to_owned(),
        };
        outbox.publish(&mut tx, &event).await.expect("publish");
    }
    tx.commit().await.expect("commit");
}

fn consumer(group: &str) -> eventbus::consumer::ConsumerBuilder<Postgres> {
    Consumer::builder(group.to_owned())
        .on(|_ctx: Context<Postgres>, _order: OrderPlaced| async { Ok::<_, BoxError>(()) })
}

/// Two relays (one outbox each) publish 3 and 2 events to one exchange; two
/// consumer groups each handle all 5. The application's recorder holds the
/// figures of each relay and each group under its own labels.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_application_recorder_sees_relays_and_consumers_apart() {
    recorder();
    let broker = Broker::rabbitmq().await;
    let Broker::RabbitMq(url) = &broker else {
        unreachable!("Broker::rabbitmq")
    };
    let publisher: Arc<dyn Publisher> = Arc::new(
        RabbitPublisher::connect(url)
            .await
            .expect("connect to RabbitMQ"),
    );
    let prefix = format!("{}.", unique_name("facade"));
    let orders = format!("{prefix}{}", OrderPlaced::DESTINATION);
    let (billing, shipping) = (
        unique_name("facade_billing"),
        unique_name("facade_shipping"),
    );

    // Consumers first: their queues must be bound before the relays publish.
    let inbox_billing = TestDb::migrated().await;
    let inbox_shipping = TestDb::migrated().await;
    let subscriber = broker.subscriber(&billing, &orders, 16).await;
    let billing_run = run(consumer(&billing)
        .build(
            inbox_billing.pool.clone(),
            subscriber,
            Arc::clone(&publisher),
        )
        .expect("billing consumer"));
    let subscriber = broker.subscriber(&shipping, &orders, 16).await;
    let shipping_run = run(consumer(&shipping)
        .build(
            inbox_shipping.pool.clone(),
            subscriber,
            Arc::clone(&publisher),
        )
        .expect("shipping consumer"));

    let (outbox_a, outbox_b) = (TestDb::migrated().await, TestDb::migrated().await);
    write_orders(&outbox_a.pool, &["a-1", "a-2", "a-3"]).await;
    write_orders(&outbox_b.pool, &["b-1", "b-2"]).await;
    let (name_a, name_b) = (unique_name("relay_a"), unique_name("relay_b"));
    let config = |name: &str| RelayConfig {
        name: name.to_owned(),
        ..test_config(&prefix)
    };
    let relay_a = spawn_relay(&outbox_a.pool, Arc::clone(&publisher), config(&name_a));
    let relay_b = spawn_relay(&outbox_b.pool, Arc::clone(&publisher), config(&name_b));
    wait_drained(&outbox_a.pool, Duration::from_secs(60)).await;
    wait_drained(&outbox_b.pool, Duration::from_secs(60)).await;
    wait_until(
        "both groups handle all five",
        Duration::from_secs(60),
        || {
            billing_run.consumer.metrics().handled() == 5
                && shipping_run.consumer.metrics().handled() == 5
        },
    )
    .await;
    wait_until(
        "both relays saw their backlog drained",
        Duration::from_secs(10),
        || {
            [&relay_a, &relay_b].iter().all(|r| {
                let snap = r.metrics.snapshot();
                snap.owned_partitions > 0 && snap.backlog.values().sum::<u64>() == 0
            })
        },
    )
    .await;
    // Stopped, so that nothing records while the recorder is read.
    relay_a.stop().await;
    relay_b.stop().await;
    billing_run.stop().await;
    shipping_run.stop().await;

    let all = recorded();
    let outbox = "eventbus_outbox";
    // The relays, apart.
    for (name, published) in [(&name_a, 3), (&name_b, 2)] {
        let relay = [("relay", name.as_str()), ("outbox", outbox)];
        assert_eq!(
            value(&all, "eventbus_relay_published_total", &relay),
            &DebugValue::Counter(published),
            "{name}"
        );
        match value(&all, "eventbus_relay_outbox_wait_seconds", &relay) {
            DebugValue::Histogram(waits) => assert_eq!(waits.len() as u64, published, "{name}"),
            other => panic!("outbox wait of {name} is {other:?}"),
        }
        assert_eq!(
            value(&all, "eventbus_outbox_pending_rows", &relay),
            &DebugValue::Gauge(0.0.into()),
            "{name}"
        );
        assert_eq!(
            value(&all, "eventbus_relay_broker_up", &relay),
            &DebugValue::Gauge(1.0.into()),
            "{name}"
        );
    }
    // The consumers, apart.
    for group in [&billing, &shipping] {
        let group_label = [("group", group.as_str())];
        assert_eq!(
            value(&all, "eventbus_consumer_handled_total", &group_label),
            &DebugValue::Counter(5),
            "{group}"
        );
        assert_eq!(
            value(&all, "eventbus_consumer_duplicates_total", &group_label),
            &DebugValue::Counter(0),
            "{group}"
        );
        match value(
            &all,
            "eventbus_consumer_handling_duration_seconds",
            &group_label,
        ) {
            DebugValue::Histogram(took) => {
                assert_eq!(took.len(), 5, "{group}");
                assert!(took.iter().all(|t| t.0 >= 0.0 && t.0 < 60.0), "{took:?}");
            }
            other => panic!("handling time of {group} is {other:?}"),
        }
    }
    // One series per relay and per group: none unlabelled, none merged.
    let published: Vec<_> = all
        .keys()
        .filter(|(name, _)| name == "eventbus_relay_published_total")
        .collect();
    assert_eq!(published.len(), 2, "{published:?}");
    let handled: Vec<_> = all
        .keys()
        .filter(|(name, _)| name == "eventbus_consumer_handled_total")
        .collect();
    assert_eq!(handled.len(), 2, "{handled:?}");
    // Counters where the text rendering has counters (`_total`), and only there.
    for ((name, _), (kind, _)) in &all {
        assert_eq!(
            name.ends_with("_total"),
            *kind == MetricKind::Counter,
            "{name} is a {kind:?}"
        );
    }

    broker.clean_up(&[&billing, &shipping], &[&orders]).await;
}

/// The names follow Prometheus's conventions: a counter's name, and only a
/// counter's, ends in `_total`; a duration is in seconds (`_seconds`); and
/// every relay series carries the `relay` and `outbox` labels that keep two
/// relays of one process apart.
#[test]
fn metric_names_follow_prometheus_conventions() {
    let relay = eventbus::relay::RelayMetrics::new("r", "eventbus_outbox").render_prometheus();
    let consumer = eventbus::consumer::ConsumerMetrics::new("g").render_prometheus();
    for text in [&relay, &consumer] {
        for line in text.lines() {
            if let Some(declared) = line.strip_prefix("# TYPE ") {
                let (name, kind) = declared.split_once(' ').expect("# TYPE name kind");
                assert_eq!(
                    name.ends_with("_total"),
                    kind == "counter",
                    "{name} is a {kind}"
                );
                assert!(
                    !name.contains("_ms") && !name.contains("milli"),
                    "{name}: durations in seconds"
                );
            } else if !line.starts_with('#') {
                let labelled = line.starts_with("eventbus_consumer_")
                    && line.contains("{group=\"g\"")
                    || line.contains("{relay=\"r\",outbox=\"eventbus_outbox\"");
                assert!(labelled, "unlabelled sample: {line}");
            }
        }
    }
}
