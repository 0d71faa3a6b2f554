//! Schema evolution end to end, on real RabbitMQ and PostgreSQL: older
//! messages upcast for the current handler, newer ones set aside until an
//! upgraded consumer takes them, and payloads checked against their schema
//! before they reach the outbox.

use std::sync::Arc;
use std::time::{Duration, Instant};

use eventbus::consumer::{dead_letter, Consumer, Context, NewerVersions, RetryPolicy};
use eventbus::schema::{UpcastError, Upcasters};
use eventbus::transport::rabbitmq::RabbitPublisher;
use eventbus::transport::Subscriber;
use eventbus::{BoxError, Envelope, Error, Event, Metadata, Outbox};
use eventbus_tests::consumer::{publish, run, scalar, wait_count, wait_until};
use eventbus_tests::rabbitmq::{self, delete_exchange, delete_group};
use eventbus_tests::{amqp_url, unique_name, TestDb};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{json, Value};
use sqlx::{PgPool, Postgres};

// ------------------------------------------------------------------ events

/// One event type at four versions, as four deployments of a service wrote it.
const TYPE: &str = "com.example.evolution.order.placed";

mod v1 {
    use super::*;

    /// The first shape.
    #[derive(Event, Serialize, Deserialize, schemars::JsonSchema)]
    #[event(type = "com.example.evolution.order.placed", version = 1, destination = "orders", key = order_id)]
    pub(crate) struct OrderPlaced {
        pub(crate) order_id: String,
        pub(crate) amount_cents: i64,
    }
}

mod v2 {
    use super::*;

    /// `amount_cents` renamed to `amount`: not backward compatible, hence
    /// the upcaster from v1.
    #[derive(Event, Serialize, Deserialize, schemars::JsonSchema)]
    #[event(type = "com.example.evolution.order.placed", version = 2, destination = "orders", key = order_id)]
    pub(crate) struct OrderPlaced {
        pub(crate) order_id: String,
        pub(crate) amount: i64,
    }
}

mod v3 {
    use super::*;

    /// A required `currency`: older messages get one from the upcaster of v2.
    #[derive(Event, Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, PartialEq)]
    #[event(type = "com.example.evolution.order.placed", version = 3, destination = "orders", key = order_id)]
    pub(crate) struct OrderPlaced {
        pub(crate) order_id: String,
        pub(crate) amount: i64,
        pub(crate) currency: String,
    }
}

mod v4 {
    use super::*;

    /// A required `channel`, which v3 consumers know nothing of.
    #[derive(Event, Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, PartialEq)]
    #[event(type = "com.example.evolution.order.placed", version = 4, destination = "orders", key = order_id)]
    pub(crate) struct OrderPlaced {
        pub(crate) order_id: String,
        pub(crate) amount: i64,
        pub(crate) currency: String,
        pub(crate) channel: String,
    }
}

/// v1 → v2: `amount_cents` becomes `amount`.
fn v1_to_v2(mut v: Value) -> Result<Value, BoxError> {
    let cents = v
        .as_object_mut()
        .and_then(|o| o.remove("amount_cents"))
        .ok_or("a v1 order without amount_cents")?;
    v["amount"] = cents;
    Ok(v)
}

/// v2 → v3: orders before v3 were all in euros.
fn v2_to_v3(mut v: Value) -> Result<Value, BoxError> {
    v["currency"] = json!("EUR");
    Ok(v)
}

/// v3 → v4: orders before v4 all came from the web shop.
fn v3_to_v4(mut v: Value) -> Result<Value, BoxError> {
    v["channel"] = json!("web");
    Ok(v)
}

/// The CloudEvent a producer at `E`'s version would send.
fn envelope<E: Event>(event: &E) -> Envelope {
    let data = serde_json::to_vec(event).expect("the event serializes");
    let mut e = Envelope::new("urn:test:schema-evolution", E::TYPE, data);
    e.partition_key = Some(event.partition_key());
    e.subject = event.subject();
    e.dataschema = Some(E::dataschema());
    e
}

// ------------------------------------------------------------------ helpers

/// What handlers write: one row per order handled, with the version of the
/// handler's type and the message id.
async fn create_orders(pool: &PgPool) {
    sqlx::query(
        "CREATE TABLE orders (id bigserial PRIMARY KEY, order_id text NOT NULL, \
         amount bigint NOT NULL, currency text NOT NULL, channel text, \
         handler_version int NOT NULL, event_id text NOT NULL)",
    )
    .execute(pool)
    .await
    .expect("create orders");
}

async fn record(
    ctx: &Context<Postgres>,
    handler_version: u32,
    order_id: &str,
    amount: i64,
    currency: &str,
    channel: Option<&str>,
) -> Result<(), BoxError> {
    let mut tx = ctx.tx().await?;
    sqlx::query(
        "INSERT INTO orders (order_id, amount, currency, channel, handler_version, event_id) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(order_id)
    .bind(amount)
    .bind(currency)
    .bind(channel)
    .bind(i32::try_from(handler_version)?)
    .bind(&ctx.envelope().id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

type Row = (String, i64, String, Option<String>, i32, String);

async fn orders(pool: &PgPool) -> Vec<Row> {
    sqlx::query_as(
        "SELECT order_id, amount, currency, channel, handler_version, event_id \
         FROM orders ORDER BY order_id",
    )
    .fetch_all(pool)
    .await
    .expect("read orders")
}

async fn publisher() -> Arc<RabbitPublisher> {
    Arc::new(
        RabbitPublisher::connect(&amqp_url().await)
            .await
            .expect("connect to RabbitMQ"),
    )
}

/// An exchange and a group for one test.
fn names(tag: &str) -> (String, String) {
    let exchange = format!("{}.orders", unique_name(tag));
    let group = format!("{exchange}.billing");
    (exchange, group)
}

/// The next dead letter within `wait`, acknowledged.
async fn next_dead_letter(dlq: &mut Box<dyn Subscriber>, wait: Duration) -> Option<Envelope> {
    let received = tokio::time::timeout(wait, dlq.next()).await.ok()??;
    let received = received.expect("receive a dead letter");
    let envelope = received.envelope.expect("a dead letter is a CloudEvent");
    received.settle.ack().await.expect("ack the dead letter");
    Some(envelope)
}

/// The handler of a consumer deployed with v3.
async fn handle_v3(ctx: Context<Postgres>, order: v3::OrderPlaced) -> Result<(), BoxError> {
    record(
        &ctx,
        3,
        &order.order_id,
        order.amount,
        &order.currency,
        None,
    )
    .await
}

// ------------------------------------------------------------------ tests

/// v1, v2 and v3 messages on one exchange reach one handler written for v3:
/// the v1 payload goes through both steps, the v2 payload through the last,
/// the v3 payload through none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_and_v2_messages_reach_a_v3_handler_upcast() {
    let db = TestDb::migrated().await;
    create_orders(&db.pool).await;
    let url = amqp_url().await;
    let (exchange, group) = names("evo_upcast");
    let dlq_group = format!("{group}.dlq");
    let subscriber = rabbitmq::subscriber(&url, &group, &[&exchange], 16).await;
    let mut dlq = rabbitmq::subscriber(
        &url,
        &dlq_group,
        &[&dead_letter::destination_of(&exchange, &group)],
        8,
    )
    .await;
    let publisher = publisher().await;

    let consumer = Consumer::builder(&group)
        .retry(RetryPolicy::none())
        .on(handle_v3)
        .upcast::<v3::OrderPlaced>(1, v1_to_v2)
        .upcast::<v3::OrderPlaced>(2, v2_to_v3)
        .build(db.pool.clone(), subscriber, publisher.clone())
        .expect("consumer");
    let running = run(consumer);

    let messages = [
        envelope(&v1::OrderPlaced {
            order_id: "o-1".into(),
            amount_cents: 990,
        }),
        envelope(&v2::OrderPlaced {
            order_id: "o-2".into(),
            amount: 1250,
        }),
        envelope(&v3::OrderPlaced {
            order_id: "o-3".into(),
            amount: 70,
            currency: "SEK".into(),
        }),
    ];
    assert_eq!(
        messages
            .iter()
            .map(|m| m.schema_version())
            .collect::<Vec<_>>(),
        vec![Some(1), Some(2), Some(3)]
    );
    publish(&*publisher, &exchange, &messages).await;
    wait_count(
        &db.pool,
        "SELECT count(*) FROM orders",
        3,
        Duration::from_secs(30),
    )
    .await;

    let ids: Vec<String> = messages.iter().map(|m| m.id.clone()).collect();
    assert_eq!(
        orders(&db.pool).await,
        vec![
            ("o-1".into(), 990, "EUR".into(), None, 3, ids[0].clone()),
            ("o-2".into(), 1250, "EUR".into(), None, 3, ids[1].clone()),
            ("o-3".into(), 70, "SEK".into(), None, 3, ids[2].clone()),
        ]
    );
    let consumer = running.stop().await;
    assert_eq!(consumer.metrics().handled(), 3);
    assert_eq!(consumer.metrics().dead_lettered(), 0);
    assert!(
        next_dead_letter(&mut dlq, Duration::from_millis(300))
            .await
            .is_none(),
        "nothing is dead-lettered"
    );
    let _ = dlq.close().await;
    delete_group(&group).await;
    delete_group(&dlq_group).await;
    delete_exchange(&exchange).await;
    delete_group(&dead_letter::destination_of(&exchange, &group)).await;
    delete_exchange(&dead_letter::destination_of(&exchange, &group)).await;
}

/// A consumer whose chain has a gap (v2 → v3 only) handles v2 messages and
/// dead-letters a v1 message at once, with the missing step as the reason:
/// never handled, never dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_in_the_upcaster_chain_dead_letters_with_the_reason() {
    let db = TestDb::migrated().await;
    create_orders(&db.pool).await;
    let url = amqp_url().await;
    let (exchange, group) = names("evo_gap");
    let dlq_group = format!("{group}.dlq");
    let subscriber = rabbitmq::subscriber(&url, &group, &[&exchange], 16).await;
    let mut dlq = rabbitmq::subscriber(
        &url,
        &dlq_group,
        &[&dead_letter::destination_of(&exchange, &group)],
        8,
    )
    .await;
    let publisher = publisher().await;

    let mut upcasters = Upcasters::new();
    upcasters
        .register::<v3::OrderPlaced>(2, v2_to_v3)
        .expect("a valid step");
    let consumer = Consumer::builder(&group)
        .on(handle_v3)
        .upcasters(upcasters)
        .build(db.pool.clone(), subscriber, publisher.clone())
        .expect("consumer");
    let running = run(consumer);

    let old = envelope(&v1::OrderPlaced {
        order_id: "o-1".into(),
        amount_cents: 990,
    });
    let newer = envelope(&v2::OrderPlaced {
        order_id: "o-2".into(),
        amount: 5,
    });
    publish(&*publisher, &exchange, &[old.clone(), newer.clone()]).await;

    let dead = next_dead_letter(&mut dlq, Duration::from_secs(30))
        .await
        .expect("the v1 message is dead-lettered");
    assert_eq!(dead.id, old.id);
    let expected = UpcastError::MissingStep {
        event_type: TYPE.into(),
        from: 1,
        to: 3,
        missing: 1,
    }
    .to_string();
    assert_eq!(
        dead.extensions.get(dead_letter::REASON),
        Some(&expected),
        "the reason names the missing step"
    );
    assert_eq!(
        expected,
        format!("cannot upcast `{TYPE}` from v1 to v3: no upcaster from v1 to v2")
    );
    assert_eq!(dead.data, old.data, "the original payload, untouched");
    wait_count(
        &db.pool,
        "SELECT count(*) FROM orders",
        1,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(
        orders(&db.pool).await,
        vec![("o-2".into(), 5, "EUR".into(), None, 3, newer.id.clone())]
    );
    let consumer = running.stop().await;
    assert_eq!(consumer.metrics().dead_lettered(), 1);
    assert_eq!(consumer.metrics().retries(), 0, "a gap is not retried");
    let _ = dlq.close().await;
    delete_group(&group).await;
    delete_group(&dlq_group).await;
    delete_exchange(&exchange).await;
    delete_group(&dead_letter::destination_of(&exchange, &group)).await;
    delete_exchange(&dead_letter::destination_of(&exchange, &group)).await;
}

/// A rolling deploy where the producer went first: a v3 consumer receives a
/// v4 message. It does not handle it and does not dead-letter it: it parks it
/// and looks at it again and again. Once the consumer is upgraded (a new member of the
/// same group with a v4 handler), the message is handled — exactly once, as
/// the inbox and the effects show.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_version_waits_for_the_upgraded_consumer() {
    let db = TestDb::migrated().await;
    create_orders(&db.pool).await;
    let url = amqp_url().await;
    let (exchange, group) = names("evo_gate");
    let dlq_group = format!("{group}.dlq");
    let subscriber = rabbitmq::subscriber(&url, &group, &[&exchange], 16).await;
    let mut dlq = rabbitmq::subscriber(
        &url,
        &dlq_group,
        &[&dead_letter::destination_of(&exchange, &group)],
        8,
    )
    .await;
    let publisher = publisher().await;

    let old_consumer = Consumer::builder(&group)
        .on(handle_v3)
        .newer_versions(NewerVersions::Park {
            delay: Duration::from_millis(200),
        })
        .build(db.pool.clone(), subscriber, publisher.clone())
        .expect("v3 consumer");
    let old_running = run(old_consumer);

    let current = envelope(&v3::OrderPlaced {
        order_id: "o-3".into(),
        amount: 30,
        currency: "EUR".into(),
    });
    let newer = envelope(&v4::OrderPlaced {
        order_id: "o-4".into(),
        amount: 40,
        currency: "SEK".into(),
        channel: "store".into(),
    });
    publish(&*publisher, &exchange, &[current.clone(), newer.clone()]).await;

    // It is looked at several times, and parked again each time.
    let metrics = Arc::clone(&old_running.consumer);
    wait_until(
        "the v4 message is set aside three times",
        Duration::from_secs(30),
        || metrics.metrics().version_gated() >= 3,
    )
    .await;
    wait_count(
        &db.pool,
        "SELECT count(*) FROM orders",
        1,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(
        orders(&db.pool).await,
        vec![("o-3".into(), 30, "EUR".into(), None, 3, current.id.clone())],
        "the v3 consumer handles only the v3 message"
    );
    let prometheus = metrics.metrics().render_prometheus();
    assert!(
        prometheus.contains("eventbus_consumer_version_gated_total{group="),
        "{prometheus}"
    );
    let old_consumer = old_running.stop().await;
    let gated = old_consumer.metrics().version_gated();
    assert!(gated >= 3);
    assert_eq!(old_consumer.metrics().handled(), 1);
    assert_eq!(old_consumer.metrics().dead_lettered(), 0);
    assert_eq!(
        old_consumer.metrics().parked(),
        1,
        "parked once, looked at again and again"
    );
    assert!(
        next_dead_letter(&mut dlq, Duration::from_millis(300))
            .await
            .is_none(),
        "the v3 consumer dead-letters nothing"
    );
    let inbox_of_newer = format!(
        "SELECT count(*) FROM eventbus_inbox WHERE consumer = '{group}' AND message_id = '{}'",
        newer.id
    );
    assert_eq!(
        scalar(&db.pool, &inbox_of_newer).await,
        0,
        "the inbox has not seen it"
    );

    // The upgrade: a v4 member of the same group.
    let subscriber = rabbitmq::subscriber(&url, &group, &[&exchange], 16).await;
    let upgraded = Consumer::builder(&group)
        .on(
            |ctx: Context<Postgres>, order: v4::OrderPlaced| async move {
                record(
                    &ctx,
                    4,
                    &order.order_id,
                    order.amount,
                    &order.currency,
                    Some(&order.channel),
                )
                .await
            },
        )
        .upcast::<v4::OrderPlaced>(1, v1_to_v2)
        .upcast::<v4::OrderPlaced>(2, v2_to_v3)
        .upcast::<v4::OrderPlaced>(3, v3_to_v4)
        .build(db.pool.clone(), subscriber, publisher.clone())
        .expect("v4 consumer");
    let upgraded = run(upgraded);
    let took = Instant::now();
    wait_count(
        &db.pool,
        "SELECT count(*) FROM orders",
        2,
        Duration::from_secs(30),
    )
    .await;
    println!(
        "the upgraded consumer handled the v4 message after {:?}",
        took.elapsed()
    );
    // Let any stray redelivery arrive before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let upgraded = upgraded.stop().await;

    assert_eq!(
        orders(&db.pool).await,
        vec![
            ("o-3".into(), 30, "EUR".into(), None, 3, current.id.clone()),
            (
                "o-4".into(),
                40,
                "SEK".into(),
                Some("store".into()),
                4,
                newer.id.clone()
            ),
        ],
        "each message handled exactly once, the v4 one by the v4 handler"
    );
    assert_eq!(scalar(&db.pool, &inbox_of_newer).await, 1);
    assert_eq!(
        scalar(
            &db.pool,
            &format!("SELECT count(*) FROM eventbus_inbox WHERE consumer = '{group}'")
        )
        .await,
        2
    );
    assert_eq!(upgraded.metrics().handled(), 1);
    assert_eq!(upgraded.metrics().version_gated(), 0);
    assert_eq!(upgraded.metrics().dead_lettered(), 0);
    assert!(
        next_dead_letter(&mut dlq, Duration::from_millis(300))
            .await
            .is_none(),
        "nothing is dead-lettered"
    );
    let _ = dlq.close().await;
    delete_group(&group).await;
    delete_group(&dlq_group).await;
    delete_exchange(&exchange).await;
    delete_group(&dead_letter::destination_of(&exchange, &group)).await;
    delete_exchange(&dead_letter::destination_of(&exchange, &group)).await;
}

// ------------------------------------------------------------------ publish-time validation

fn as_text<S: Serializer>(amount: &i64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&amount.to_string())
}

/// Its schema says `amount` is an integer; its `Serialize` writes a string.
#[derive(Event, Serialize, Deserialize, schemars::JsonSchema)]
#[event(type = "com.example.evolution.refund.issued", destination = "refunds", key = refund_id)]
struct RefundIssued {
    refund_id: String,
    #[serde(serialize_with = "as_text")]
    amount: i64,
}

/// A constraint serde knows nothing of.
#[derive(Event, Serialize, Deserialize, schemars::JsonSchema)]
#[event(type = "com.example.evolution.seat.booked", destination = "seats", key = seat)]
struct SeatBooked {
    seat: String,
    #[schemars(range(min = 1, max = 8))]
    passengers: u8,
}

async fn outbox_rows(pool: &PgPool) -> i64 {
    scalar(pool, "SELECT count(*) FROM eventbus_outbox").await
}

/// An invalid payload is refused with `Error::InvalidPayload`, naming the
/// field, and nothing reaches the outbox — alone or in a batch with valid
/// events. Validation is on by default in debug builds, and can be turned off.
#[tokio::test]
async fn publish_time_validation_rejects_invalid_payloads_and_writes_nothing() {
    let db = TestDb::migrated().await;
    // On by default in debug builds, which is how the suite is built.
    let outbox = if cfg!(debug_assertions) {
        Outbox::new("urn:test:schema-evolution")
    } else {
        Outbox::new("urn:test:schema-evolution").validate_payloads(true)
    };

    let mut tx = db.pool.begin().await.expect("begin");
    let err = outbox
        .publish(
            &mut tx,
            &RefundIssued {
                refund_id: "r-1".into(),
                amount: 500,
            },
        )
        .await
        .expect_err("a string where the schema says integer");
    let Error::InvalidPayload(invalid) = &err else {
        panic!("expected Error::InvalidPayload, got {err:?}");
    };
    assert_eq!(invalid.event_type, "com.example.evolution.refund.issued");
    assert_eq!(invalid.version, 1);
    assert_eq!(invalid.violations.len(), 1);
    assert_eq!(invalid.violations[0].path, "$.amount");
    assert_eq!(
        err.to_string(),
        "payload of event `com.example.evolution.refund.issued` v1 does not match its schema: \
         $.amount: expected integer, found string"
    );

    // One invalid event fails the whole batch, before anything is written.
    let seats = [
        SeatBooked {
            seat: "1A".into(),
            passengers: 2,
        },
        SeatBooked {
            seat: "1B".into(),
            passengers: 9,
        },
    ];
    let err = outbox
        .publish_all(&mut tx, &seats, &Metadata::default())
        .await
        .expect_err("9 passengers is above the maximum");
    assert!(
        matches!(&err, Error::InvalidPayload(v) if v.violations[0].path == "$.passengers"),
        "{err:?}"
    );
    tx.commit().await.expect("commit");
    assert_eq!(outbox_rows(&db.pool).await, 0, "nothing was written");

    // Valid events pass.
    let mut tx = db.pool.begin().await.expect("begin");
    outbox
        .publish(&mut tx, &seats[0])
        .await
        .expect("a valid event is written");
    tx.commit().await.expect("commit");
    assert_eq!(outbox_rows(&db.pool).await, 1);

    // Turned off, the outbox writes what serde writes.
    let unchecked = Outbox::new("urn:test:schema-evolution").validate_payloads(false);
    let mut tx = db.pool.begin().await.expect("begin");
    unchecked
        .publish(&mut tx, &seats[1])
        .await
        .expect("not validated");
    tx.commit().await.expect("commit");
    assert_eq!(outbox_rows(&db.pool).await, 2);
}
