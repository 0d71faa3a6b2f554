//! Destinations through the relay, on real PostgreSQL, RabbitMQ and Kafka:
//! an event type no queue binds is dropped (counted) or parked as its
//! destination's policy says, strict mode parks rows for destinations not
//! allowed and dead-letter destinations are never published to, and Kafka
//! topics the relay creates take the cluster's defaults unless told.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use eventbus::relay::{FailedRow, OutboxAdmin, RelayConfig};
use eventbus::transport::kafka::rdkafka;
use eventbus::transport::rabbitmq::lapin::options::ExchangeDeclareOptions;
use eventbus::transport::rabbitmq::lapin::types::FieldTable;
use eventbus::transport::rabbitmq::lapin::ExchangeKind;
use eventbus::transport::rabbitmq::{RabbitPublisher, Unroutable};
use eventbus::{Envelope, Event, Metadata, Outbox, OutgoingMessage, PublishError, Publisher};
use eventbus_tests::kafka::{consumer_config, publisher_builder};
use eventbus_tests::rabbitmq::{self, delete_exchange, TestQueue};
use eventbus_tests::relay::{spawn_relay, test_config, wait_drained, Step};
use eventbus_tests::{amqp_url, kafka_brokers, unique_name, TestDb};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

const READ_TIMEOUT: Duration = Duration::from_secs(20);

/// The type a test queue binds: [`Step`]'s own.
const BOUND_TYPE: &str = Step::TYPE;

/// A type no queue binds.
const UNBOUND_TYPE: &str = "com.example.test.nobody-listens";

/// Writes one row per `(destination, type, seq)` for `key`, each in its own
/// transaction, in the order given.
async fn write(db: &TestDb, key: &str, rows: &[(&str, &str, u64)]) {
    let outbox = Outbox::new("urn:test:destinations");
    for &(destination, event_type, seq) in rows {
        let step = Step {
            key: key.into(),
            seq,
            pad: String::new(),
        };
        let mut entry = outbox.entry(&step, &Metadata::default()).expect("entry");
        entry.destination = destination.into();
        entry.event_type = event_type.into();
        let mut tx = db.pool.begin().await.expect("begin");
        outbox
            .publish_entries(&mut tx, &[entry])
            .await
            .expect("write the outbox row");
        tx.commit().await.expect("commit");
    }
}

fn admin(db: &TestDb) -> OutboxAdmin {
    OutboxAdmin::new(db.pool.clone(), RelayConfig::default().table)
}

/// Waits until `n` rows are parked; returns them.
async fn wait_parked(db: &TestDb, n: usize) -> Vec<FailedRow> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let failed = admin(db).failed(100).await.expect("parked rows");
        if failed.len() >= n {
            return failed;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {n} rows parked after 30 s: {failed:?}",
            failed.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn steps_of(envelopes: &[Envelope]) -> Vec<(String, u64)> {
    envelopes
        .iter()
        .map(|e| {
            let step: Step = serde_json::from_slice(&e.data).expect("a Step payload");
            (e.event_type.clone(), step.seq)
        })
        .collect()
}

/// Whether RabbitMQ has an exchange called `name`.
async fn exchange_exists(name: &str) -> bool {
    let connection = rabbitmq::connect().await;
    let channel = connection.create_channel().await.expect("open channel");
    let found = channel
        .exchange_declare(
            name.into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                passive: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .is_ok();
    let _ = connection.close(200, "test".into()).await;
    found
}

/// A config retrying quickly, parking after two attempts.
fn quick_config(prefix: &str) -> RelayConfig {
    RelayConfig {
        max_attempts: 2,
        retry_initial: Duration::from_millis(50),
        ..test_config(prefix)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_event_type_nobody_binds_is_dropped_counted_and_blocks_nothing() {
    let db = TestDb::migrated().await;
    let prefix = format!("{}.", unique_name("unroutable"));
    let exchange = format!("{prefix}{}", Step::DESTINATION);
    let mut queue = TestQueue::bind(&exchange, &[BOUND_TYPE]).await;
    // The default policy: drop.
    let publisher = RabbitPublisher::connect(&amqp_url().await)
        .await
        .expect("connect to RabbitMQ");

    // Key `k`: one event of a type nobody binds, then five of the bound type.
    let mut rows = vec![(Step::DESTINATION, UNBOUND_TYPE, 0)];
    rows.extend((1..=5).map(|seq| (Step::DESTINATION, BOUND_TYPE, seq)));
    write(&db, "k", &rows).await;

    let relay = spawn_relay(&db.pool, Arc::new(publisher), quick_config(&prefix));
    wait_drained(&db.pool, Duration::from_secs(30)).await;

    let received = steps_of(&queue.read_envelopes(5, READ_TIMEOUT).await);
    let expected: Vec<(String, u64)> = (1..=5).map(|seq| (BOUND_TYPE.to_owned(), seq)).collect();
    assert_eq!(received, expected, "all five, in order");
    queue.assert_empty(Duration::from_millis(500)).await;

    let metrics = relay.metrics.clone();
    relay.stop().await;
    assert_eq!(
        metrics.unroutable_total(),
        BTreeMap::from([(exchange.clone(), 1)]),
        "the unroutable event is counted, under its exchange"
    );
    let text = metrics.render_prometheus();
    assert!(
        text.lines()
            .any(|l| l.starts_with("eventbus_relay_unroutable_total{")
                && l.ends_with(&format!(",destination=\"{exchange}\"}} 1"))),
        "{text}"
    );
    assert_eq!(metrics.published_total(), 6);
    assert_eq!(metrics.rejected_total(), 0, "nothing rejected");
    let parked = admin(&db).failed(100).await.expect("parked rows");
    assert!(parked.is_empty(), "nothing parked: {parked:?}");

    queue.delete().await;
    delete_exchange(&exchange).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_park_policy_rejects_and_parks_an_unroutable_event() {
    let db = TestDb::migrated().await;
    let prefix = format!("{}.", unique_name("unroutable_park"));
    let exchange = format!("{prefix}{}", Step::DESTINATION);
    let mut queue = TestQueue::bind(&exchange, &[BOUND_TYPE]).await;
    // Drop by default, park for this exchange.
    let publisher = RabbitPublisher::builder(amqp_url().await)
        .unroutable_for(exchange.clone(), Unroutable::Park)
        .connect()
        .await
        .expect("connect to RabbitMQ");

    write(
        &db,
        "k",
        &[
            (Step::DESTINATION, UNBOUND_TYPE, 0),
            (Step::DESTINATION, BOUND_TYPE, 1),
            (Step::DESTINATION, BOUND_TYPE, 2),
        ],
    )
    .await;
    let relay = spawn_relay(&db.pool, Arc::new(publisher), quick_config(&prefix));

    let parked = wait_parked(&db, 1).await;
    assert_eq!(parked.len(), 1, "{parked:?}");
    assert_eq!(parked[0].event_type, UNBOUND_TYPE);
    assert_eq!(parked[0].attempts, 2, "retried, then parked");
    let reason = parked[0].last_error.as_deref().unwrap_or("");
    assert!(
        reason.contains("unroutable") && reason.contains(&exchange),
        "{reason}"
    );
    assert!(relay.metrics.unroutable_total().is_empty());

    // Released, the key's later events arrive, in order. The broker reports
    // an unroutable message after the ones sent with it: events 1 (and 2)
    // may have gone out before event 0 failed. They stayed pending and go
    // again after the skip, so the key ends 1, 2 (docs/relay.md, "What a
    // consumer can observe").
    assert_eq!(admin(&db).skip(&[parked[0].id]).await.expect("skip"), 1);
    wait_drained(&db.pool, Duration::from_secs(30)).await;
    let received = steps_of(&queue.try_read_envelopes(8, Duration::from_secs(3)).await);
    let (one, two) = ((BOUND_TYPE.to_owned(), 1), (BOUND_TYPE.to_owned(), 2));
    assert!(
        received.ends_with(&[one.clone(), two.clone()]),
        "the key does not end 1, 2: {received:?}"
    );
    assert!(
        received.len() <= 4 && received.iter().all(|s| *s == one || *s == two),
        "more than each event once before the skip and once after: {received:?}"
    );
    let first = |step| received.iter().position(|s| *s == step);
    assert!(first(one) < first(two), "2 went out before 1: {received:?}");
    relay.stop().await;
    queue.delete().await;
    delete_exchange(&exchange).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_publisher_reports_unroutable_messages_as_its_destination_policy_says() {
    let dropping = unique_name("rmq_drop");
    let parking = unique_name("rmq_park");
    let publisher = RabbitPublisher::builder(amqp_url().await)
        .unroutable_for(parking.clone(), Unroutable::Park)
        .connect()
        .await
        .expect("connect to RabbitMQ");
    let mut queue = TestQueue::bind(&dropping, &[BOUND_TYPE]).await;
    let message = |destination: &str, event_type: &str| {
        let mut envelope = Envelope::new("urn:test", event_type, b"{}".to_vec());
        envelope.partition_key = Some("k".into());
        OutgoingMessage {
            destination: destination.to_owned(),
            envelope,
        }
    };
    let batch = [
        message(&dropping, UNBOUND_TYPE),
        message(&dropping, BOUND_TYPE),
        message(&parking, UNBOUND_TYPE),
    ];
    let results = publisher.publish_batch(&batch).await;
    assert!(
        matches!(results[0], Ok(d) if d.unroutable),
        "{:?}",
        results[0]
    );
    assert!(
        matches!(results[1], Ok(d) if !d.unroutable),
        "{:?}",
        results[1]
    );
    assert!(
        matches!(&results[2], Err(PublishError::Rejected(r)) if r.contains("unroutable")),
        "{:?}",
        results[2]
    );
    let received = queue.read_envelopes(1, READ_TIMEOUT).await;
    assert_eq!(received[0].id, batch[1].envelope.id);
    queue.delete().await;
    delete_exchange(&dropping).await;
    delete_exchange(&parking).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn strict_mode_parks_rows_for_destinations_not_allowed_without_creating_them() {
    let db = TestDb::migrated().await;
    let prefix = format!("{}.", unique_name("strict"));
    let allowed = format!("{prefix}{}", Step::DESTINATION);
    let forbidden = format!("{prefix}payments");
    let mut queue = TestQueue::bind_all(&allowed).await;
    let publisher = RabbitPublisher::connect(&amqp_url().await)
        .await
        .expect("connect to RabbitMQ");

    write(
        &db,
        "a",
        &[
            (Step::DESTINATION, BOUND_TYPE, 1),
            ("payments", BOUND_TYPE, 2),
            (Step::DESTINATION, BOUND_TYPE, 3),
        ],
    )
    .await;
    write(&db, "b", &[(Step::DESTINATION, BOUND_TYPE, 1)]).await;
    let config = RelayConfig {
        allowed_destinations: Some([Step::DESTINATION.to_owned()].into()),
        ..quick_config(&prefix)
    };
    let relay = spawn_relay(&db.pool, Arc::new(publisher), config);

    let parked = wait_parked(&db, 1).await;
    assert_eq!(parked.len(), 1, "{parked:?}");
    assert_eq!(parked[0].destination, "payments");
    assert_eq!(parked[0].attempts, 1, "parked at once");
    let reason = parked[0].last_error.as_deref().unwrap_or("");
    assert!(
        reason.contains("`payments`") && reason.contains("allowed"),
        "{reason}"
    );

    // Key `b` flows; key `a` flows up to the parked row.
    let received = queue.read_envelopes(2, READ_TIMEOUT).await;
    let mut keys: Vec<&str> = received
        .iter()
        .map(|e| e.partition_key.as_deref().unwrap_or(""))
        .collect();
    keys.sort_unstable();
    assert_eq!(keys, ["a", "b"]);
    relay.stop().await;
    assert!(
        !exchange_exists(&forbidden).await,
        "`{forbidden}` must not be created"
    );
    queue.delete().await;
    delete_exchange(&allowed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_row_for_a_dead_letter_destination_is_parked_without_strict_mode() {
    let db = TestDb::migrated().await;
    let prefix = format!("{}.", unique_name("to_dlq"));
    let exchange = format!("{prefix}{}", Step::DESTINATION);
    let dead = eventbus::consumer::dead_letter::destination_of(&exchange, "billing");
    let mut queue = TestQueue::bind_all(&exchange).await;
    let publisher = RabbitPublisher::connect(&amqp_url().await)
        .await
        .expect("connect to RabbitMQ");

    let dead_logical =
        eventbus::consumer::dead_letter::destination_of(Step::DESTINATION, "billing");
    write(&db, "a", &[(dead_logical.as_str(), BOUND_TYPE, 1)]).await;
    write(&db, "b", &[(Step::DESTINATION, BOUND_TYPE, 1)]).await;
    let relay = spawn_relay(&db.pool, Arc::new(publisher), quick_config(&prefix));

    let parked = wait_parked(&db, 1).await;
    assert_eq!(parked.len(), 1, "{parked:?}");
    assert_eq!(parked[0].destination, dead_logical);
    assert_eq!(parked[0].attempts, 1, "parked at once");
    let reason = parked[0].last_error.as_deref().unwrap_or("");
    assert!(reason.contains("dead-letter"), "{reason}");

    let received = queue.read_envelopes(1, READ_TIMEOUT).await;
    assert_eq!(received[0].partition_key.as_deref(), Some("b"));
    relay.stop().await;
    assert!(
        !exchange_exists(&dead).await,
        "`{dead}` must not be created"
    );
    queue.delete().await;
    delete_exchange(&exchange).await;
}

/// Partition count and replicas per partition of `topic`, or `None` while
/// it does not exist.
async fn topic_layout(brokers: &str, topic: &str) -> Option<(usize, Vec<usize>)> {
    let config = consumer_config(brokers);
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = config.create().expect("create Kafka consumer");
        let metadata = consumer
            .fetch_metadata(Some(&topic), Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("metadata of Kafka topic `{topic}`: {e}"));
        metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
            .map(|t| {
                let replicas = t.partitions().iter().map(|p| p.replicas().len()).collect();
                (t.partitions().len(), replicas)
            })
    })
    .await
    .expect("Kafka metadata thread")
}

/// Waits for `topic` to show in the metadata.
async fn wait_layout(brokers: &str, topic: &str) -> (usize, Vec<usize>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(layout) = topic_layout(brokers, topic).await {
            return layout;
        }
        assert!(Instant::now() < deadline, "topic `{topic}` never appeared");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Relays one event to `topic`'s logical destination through `publisher`,
/// which creates the topic.
async fn relay_one(publisher: impl Publisher, prefix: &str) {
    let db = TestDb::migrated().await;
    write(&db, "k", &[(Step::DESTINATION, BOUND_TYPE, 1)]).await;
    let relay = spawn_relay(&db.pool, Arc::new(publisher), test_config(prefix));
    wait_drained(&db.pool, Duration::from_secs(30)).await;
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kafka_topics_the_relay_creates_take_the_cluster_defaults_unless_told() {
    let brokers = kafka_brokers().await;

    // What the cluster does when asked for its defaults (KIP-464).
    let reference = unique_name("defaults_reference");
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .expect("create Kafka admin client");
    let created = admin
        .create_topics(
            [&NewTopic::new(&reference, -1, TopicReplication::Fixed(-1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("CreateTopics answered");
    assert!(created.iter().all(Result::is_ok), "{created:?}");
    let defaults = wait_layout(&brokers, &reference).await;
    // Otherwise the old fixed count could not be told from the default.
    assert_ne!(defaults.0, 4, "the cluster's default partition count is 4");

    let prefix = format!("{}.", unique_name("topic_defaults"));
    let publisher = publisher_builder(&brokers).build().expect("publisher");
    relay_one(publisher, &prefix).await;
    let topic = format!("{prefix}{}", Step::DESTINATION);
    assert_eq!(
        wait_layout(&brokers, &topic).await,
        defaults,
        "partition count and replication factor are the cluster's"
    );

    let prefix = format!("{}.", unique_name("topic_explicit"));
    let publisher = publisher_builder(&brokers)
        .partitions(5)
        .replication_factor(1)
        .build()
        .expect("publisher");
    relay_one(publisher, &prefix).await;
    let topic = format!("{prefix}{}", Step::DESTINATION);
    assert_eq!(wait_layout(&brokers, &topic).await, (5, vec![1; 5]));
}
