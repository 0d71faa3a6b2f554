//! Broker outages under a running relay: the `fault_*` tests take the broker
//! away for 20 s while an in-process relay works — RabbitMQ through a TCP
//! proxy that refuses and cuts connections, and a private Kafka-protocol
//! broker (tansu) frozen with SIGSTOP — and check that the relay pauses
//! without burning attempts, then delivers everything in order.
//! `scripts/test` runs them one at a time after the rest.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use eventbus::transport::rabbitmq::lapin::message::Delivery;
use eventbus::transport::rabbitmq::{envelope_from_delivery, RabbitPublisher};
use eventbus::{Event, Publisher};
use eventbus_tests::harness::{free_port, log_dir, metric, report_logs};
use eventbus_tests::kafka::{publisher_builder, read_steps, start_tansu};
use eventbus_tests::rabbitmq::{delete_exchange, TcpProxy, TestQueue};
use eventbus_tests::relay::{
    assert_delivered, pending, publish_steps, spawn_relay, steps, test_config, RunningRelay, Step,
};
use eventbus_tests::{unique_name, TestDb};
use sqlx::PgPool;

/// How long the fault tests keep the broker away.
const OUTAGE: Duration = Duration::from_secs(20);

fn decode_delivery(d: &Delivery) -> Step {
    let envelope = envelope_from_delivery(&d.properties, &d.data)
        .unwrap_or_else(|e| panic!("not a CloudEvent: {e}"));
    serde_json::from_slice(&envelope.data).unwrap_or_else(|e| panic!("not a Step: {e}"))
}

/// Reads `queue` until at least `at_least` messages arrived and then nothing
/// more for `quiet`, or until `timeout`.
async fn read_queue(
    queue: &mut TestQueue,
    at_least: usize,
    quiet: Duration,
    timeout: Duration,
) -> Vec<Step> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::with_capacity(at_least);
    loop {
        let batch = queue.try_read(1_000, quiet).await;
        let silent = batch.is_empty();
        out.extend(batch.iter().map(decode_delivery));
        if (silent && out.len() >= at_least) || Instant::now() >= deadline {
            return out;
        }
    }
}

/// Samples the outbox every 50 ms and remembers the highest `attempts` and the
/// most `failed` rows ever seen.
struct AttemptWatch {
    max_attempts: Arc<AtomicI64>,
    max_failed: Arc<AtomicI64>,
    samples: Arc<AtomicI64>,
    task: tokio::task::JoinHandle<()>,
}

impl AttemptWatch {
    fn start(pool: PgPool) -> Self {
        let max_attempts = Arc::new(AtomicI64::new(0));
        let max_failed = Arc::new(AtomicI64::new(0));
        let samples = Arc::new(AtomicI64::new(0));
        let task = tokio::spawn({
            let (max_attempts, max_failed, samples) =
                (max_attempts.clone(), max_failed.clone(), samples.clone());
            async move {
                loop {
                    let sample: Result<(i64, i64), _> = sqlx::query_as(
                        "SELECT coalesce(max(attempts), 0)::int8, \
                                count(*) FILTER (WHERE state = 'failed') \
                         FROM eventbus_outbox",
                    )
                    .fetch_one(&pool)
                    .await;
                    if let Ok((attempts, failed)) = sample {
                        max_attempts.fetch_max(attempts, Ordering::SeqCst);
                        max_failed.fetch_max(failed, Ordering::SeqCst);
                        samples.fetch_add(1, Ordering::SeqCst);
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        });
        AttemptWatch {
            max_attempts,
            max_failed,
            samples,
            task,
        }
    }

    fn assert_clean(&self, when: &str) {
        let attempts = self.max_attempts.load(Ordering::SeqCst);
        let failed = self.max_failed.load(Ordering::SeqCst);
        assert_eq!(
            attempts, 0,
            "a row got attempts = {attempts} {when}: the outage burned attempts"
        );
        assert_eq!(failed, 0, "{failed} rows were parked as failed {when}");
    }
}

impl Drop for AttemptWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Waits (up to 60 s) until the relay has had `n` events acknowledged and
/// reports the broker available.
async fn wait_published(relay: &RunningRelay, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while relay.metrics.published_total() < n || !relay.metrics.snapshot().broker_available {
        assert!(
            Instant::now() < deadline,
            "the relay published {} events within 60 s (broker_available = {})",
            relay.metrics.published_total(),
            relay.metrics.snapshot().broker_available
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// With the broker gone: publishes `during` to the outbox, then for [`OUTAGE`]
/// checks that no row gets an attempt, nothing is rejected, and the relay
/// notices the outage; afterwards nothing published during it may have left
/// the outbox.
async fn hold_outage(pool: &PgPool, relay: &RunningRelay, watch: &AttemptWatch, during: &[Step]) {
    publish_steps(pool, during, 500).await;
    let started = Instant::now();
    let mut noticed_after = None;
    while started.elapsed() < OUTAGE {
        let attempts: i64 =
            sqlx::query_scalar("SELECT coalesce(max(attempts), 0)::int8 FROM eventbus_outbox")
                .fetch_one(pool)
                .await
                .expect("max attempts");
        assert_eq!(
            attempts, 0,
            "a row got an attempt counted during the outage"
        );
        watch.assert_clean("during the outage");
        assert_eq!(
            relay.metrics.rejected_total(),
            0,
            "the relay rejected events during the outage"
        );
        if noticed_after.is_none() && !relay.metrics.snapshot().broker_available {
            noticed_after = Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let noticed_after = noticed_after.unwrap_or_else(|| {
        panic!("broker_available never became false during a {OUTAGE:?} outage")
    });
    assert!(
        !relay.metrics.snapshot().broker_available,
        "the relay reports the broker available while it is still gone"
    );
    let left = pending(pool).await;
    assert!(
        left >= during.len() as i64,
        "only {left} rows pending at the end of the outage, but {} were written during it",
        during.len()
    );
    eprintln!(
        "outage: relay noticed after {noticed_after:?}; {left} rows pending at its end; {} DB samples",
        watch.samples.load(Ordering::SeqCst)
    );
}

/// Waits until the outbox is empty after the broker came back; the failure
/// says what the relay reports.
async fn wait_recovered(pool: &PgPool, relay: &RunningRelay) {
    let timeout = Duration::from_secs(120);
    let back = Instant::now();
    loop {
        let left = pending(pool).await;
        if left == 0 {
            eprintln!(
                "recovered: outbox drained {:?} after the broker came back",
                back.elapsed()
            );
            return;
        }
        assert!(
            back.elapsed() < timeout,
            "the relay did not recover after the broker came back: {left} rows still pending \
             after {timeout:?}; published_total {}, broker_available {}, outages counted {:?} \
             (per-message errors: RUST_LOG=info,eventbus::relay=debug)",
            relay.metrics.published_total(),
            relay.metrics.snapshot().broker_available,
            metric(
                &relay.metrics.render_prometheus(),
                "eventbus_relay_broker_outages_total"
            )
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// After recovery: nothing was ever attempted or parked, the outbox is empty,
/// the relay counted the outage and sees the broker again.
async fn check_after_outage(pool: &PgPool, relay: &RunningRelay, watch: &AttemptWatch) {
    watch.assert_clean("at any time");
    assert_eq!(relay.metrics.rejected_total(), 0, "rejected_total");
    assert_eq!(relay.metrics.parked_total(), 0, "parked_total");
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM eventbus_outbox")
        .fetch_one(pool)
        .await
        .expect("count rows");
    assert_eq!(
        rows, 0,
        "published rows are deleted; none is left failed or pending"
    );
    let text = relay.metrics.render_prometheus();
    let outages = metric(&text, "eventbus_relay_broker_outages_total").expect("outage counter");
    assert!(outages >= 1.0, "the outage is counted: {text}");
    assert!(
        relay.metrics.snapshot().broker_available,
        "the relay reports the broker available again"
    );
    eprintln!(
        "after the outage: published_total {}, broker outages counted {outages}",
        relay.metrics.published_total()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fault_broker_outage_rabbitmq_pauses_without_burning_attempts() {
    init_logging();
    let db = TestDb::migrated().await;
    let prefix = format!("{}.", unique_name("outage_amqp"));
    let exchange = format!("{prefix}{}", Step::DESTINATION);
    let mut queue = TestQueue::bind_all(&exchange).await;
    let (proxy, proxied_url) = TcpProxy::for_amqp().await;
    let publisher = RabbitPublisher::connect(&proxied_url)
        .await
        .expect("connect to RabbitMQ through the proxy");

    let events = steps(3_000, 30);
    let (before, during) = events.split_at(2_000);
    publish_steps(&db.pool, before, 500).await;
    let watch = AttemptWatch::start(db.pool.clone());
    let mut config = test_config(&prefix);
    config.batch_size = 100;
    let relay = spawn_relay(&db.pool, Arc::new(publisher), config);

    // Take the broker away once some events have arrived.
    wait_published(&relay, 100).await;
    proxy.refuse();
    proxy.cut().await;
    eprintln!(
        "cut RabbitMQ after {} events",
        relay.metrics.published_total()
    );
    hold_outage(&db.pool, &relay, &watch, during).await;
    proxy.accept();

    wait_recovered(&db.pool, &relay).await;
    let received = read_queue(
        &mut queue,
        events.len(),
        Duration::from_secs(3),
        Duration::from_secs(120),
    )
    .await;
    let duplicates = assert_delivered(&events, &received);
    eprintln!(
        "RabbitMQ outage: {} messages, {duplicates} duplicates",
        received.len()
    );
    check_after_outage(&db.pool, &relay, &watch).await;

    relay.stop().await;
    queue.delete().await;
    delete_exchange(&exchange).await;
}

/// Sends the in-process relay's logs (`RUST_LOG`, default `info`) to the
/// test's output, shown when it fails.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fault_broker_outage_kafka_pauses_without_burning_attempts() {
    init_logging();
    let dir = log_dir("outage_kafka");
    let port = free_port();
    let tansu = start_tansu(port, port, &dir).await;
    let brokers = format!("127.0.0.1:{port}");
    let db = TestDb::migrated().await;
    let prefix = format!("{}.", unique_name("outage_kafka"));
    let topic = format!("{prefix}{}", Step::DESTINATION);
    let publisher = publisher_builder(&brokers)
        .set("message.timeout.ms", "5000")
        .partitions(4)
        .build()
        .expect("Kafka publisher");
    publisher
        .ensure_destination(&topic)
        .await
        .expect("create the topic on the private broker");

    let events = steps(3_000, 30);
    let (before, during) = events.split_at(2_000);
    publish_steps(&db.pool, before, 500).await;
    let watch = AttemptWatch::start(db.pool.clone());
    let mut config = test_config(&prefix);
    config.batch_size = 100;
    let relay = spawn_relay(&db.pool, Arc::new(publisher), config);

    // Freeze the broker once some events have arrived: it keeps its data and
    // its sockets, but answers nothing.
    wait_published(&relay, 100).await;
    tansu.signal("STOP");
    eprintln!(
        "stopped tansu after {} events",
        relay.metrics.published_total()
    );
    hold_outage(&db.pool, &relay, &watch, during).await;
    tansu.signal("CONT");

    wait_recovered(&db.pool, &relay).await;
    let received = read_steps(
        &brokers,
        &topic,
        events.len(),
        Duration::from_secs(5),
        Duration::from_secs(120),
    )
    .await;
    let duplicates = assert_delivered(&events, &received);
    eprintln!(
        "Kafka outage: {} messages, {duplicates} duplicates",
        received.len()
    );
    check_after_outage(&db.pool, &relay, &watch).await;

    relay.stop().await;
    report_logs(&[&tansu]);
}
