//! `Consumer<Sqlite>` over real RabbitMQ: the inbox on SQLite makes redelivered
//! events change nothing, for single and batch handlers, and follow-up events
//! land in the SQLite outbox in the handler's transaction.

use std::sync::Arc;
use std::time::{Duration, Instant};

use eventbus::consumer::{BatchContext, ConsumerBuilder, Context};
use eventbus::transport::rabbitmq::RabbitPublisher;
use eventbus::{Envelope, Event};
use eventbus_tests::consumer::{envelope, publish, run};
use eventbus_tests::rabbitmq::{self, delete_exchange, delete_group};
use eventbus_tests::relay::{steps, Step};
use eventbus_tests::sqlite::TestSqlite;
use eventbus_tests::{amqp_url, unique_name};
use serde::{Deserialize, Serialize};
use sqlx::{Sqlite, SqlitePool};

/// The follow-up a handler publishes for each step it handles.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema, eventbus::Event)]
#[event(type = "com.example.test.step.recorded", destination = "recorded", key = key)]
struct Recorded {
    key: String,
    seq: u64,
}

async fn scalar(pool: &SqlitePool, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Waits until `done` holds, or panics with `what` after `timeout`.
async fn wait_until(what: &str, timeout: Duration, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done().await {
        assert!(
            Instant::now() < deadline,
            "{what} not reached in {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

struct Setup {
    db: TestSqlite,
    exchange: String,
    group: String,
    publisher: Arc<RabbitPublisher>,
    subscriber: Box<dyn eventbus::transport::Subscriber>,
}

async fn setup(tag: &str) -> Setup {
    let db = TestSqlite::migrated().await;
    sqlx::query("CREATE TABLE effects (key TEXT NOT NULL, seq INTEGER NOT NULL)")
        .execute(&db.pool)
        .await
        .expect("create effects");
    let url = amqp_url().await;
    let prefix = format!("{}.", unique_name(tag));
    let exchange = format!("{prefix}{}", Step::DESTINATION);
    let group = format!("{prefix}billing");
    // The group's queue exists before anything is published.
    let subscriber = rabbitmq::subscriber(&url, &group, &[&exchange], 64).await;
    let publisher = Arc::new(
        RabbitPublisher::connect(&url)
            .await
            .expect("connect to RabbitMQ"),
    );
    Setup {
        db,
        exchange,
        group,
        publisher,
        subscriber,
    }
}

/// 200 steps, then the first 50 of them again (same CloudEvents ids).
fn deliveries() -> Vec<Envelope> {
    let mut envelopes: Vec<Envelope> = steps(200, 10).iter().map(envelope).collect();
    let again: Vec<Envelope> = envelopes[..50].to_vec();
    envelopes.extend(again);
    envelopes
}

/// Every step has one effect, one inbox row and one follow-up in the outbox,
/// caused by the step's event.
async fn assert_each_step_counted_once(pool: &SqlitePool, envelopes: &[Envelope]) {
    assert_eq!(scalar(pool, "SELECT count(*) FROM effects").await, 200);
    assert_eq!(
        scalar(
            pool,
            "SELECT count(*) FROM (SELECT DISTINCT key, seq FROM effects)"
        )
        .await,
        200
    );
    assert_eq!(
        scalar(pool, "SELECT count(*) FROM eventbus_inbox").await,
        200
    );
    let causes: Vec<String> = sqlx::query_scalar(
        "SELECT headers ->> 'causationid' FROM eventbus_outbox \
         WHERE event_type = 'com.example.test.step.recorded' ORDER BY id",
    )
    .fetch_all(pool)
    .await
    .expect("follow-ups");
    let mut causes_sorted = causes.clone();
    causes_sorted.sort();
    causes_sorted.dedup();
    assert_eq!(causes.len(), 200, "one follow-up per step");
    assert_eq!(causes_sorted.len(), 200, "each caused by a different event");
    let ids: std::collections::HashSet<&str> = envelopes.iter().map(|e| e.id.as_str()).collect();
    assert!(causes.iter().all(|c| ids.contains(c.as_str())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redelivered_events_change_nothing_on_sqlite() {
    let s = setup("consumer_sqlite").await;
    let consumer = ConsumerBuilder::<Sqlite>::new(&s.group)
        .on(|ctx: Context<Sqlite>, step: Step| async move {
            {
                let mut tx = ctx.tx().await?;
                sqlx::query("INSERT INTO effects (key, seq) VALUES (?1, ?2)")
                    .bind(&step.key)
                    .bind(i64::try_from(step.seq)?)
                    .execute(&mut **tx)
                    .await?;
            }
            ctx.publish(&Recorded {
                key: step.key,
                seq: step.seq,
            })
            .await?;
            Ok(())
        })
        .build(s.db.pool.clone(), s.subscriber, s.publisher.clone())
        .expect("consumer");
    let running = run(consumer);

    let envelopes = deliveries();
    publish(&*s.publisher, &s.exchange, &envelopes).await;
    wait_until(
        "200 handled and 50 duplicates",
        Duration::from_secs(60),
        async || {
            let m = running.consumer.metrics();
            m.handled() == 200 && m.duplicates() == 50
        },
    )
    .await;
    running.stop().await;
    assert_each_step_counted_once(&s.db.pool, &envelopes).await;
    delete_group(&s.group).await;
    delete_exchange(&s.exchange).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batch_handlers_skip_redelivered_events_on_sqlite() {
    let s = setup("consumer_sqlite_batch").await;
    let consumer = ConsumerBuilder::<Sqlite>::new(&s.group)
        .on_batch(
            32,
            |ctx: BatchContext<Sqlite>, batch: Vec<Step>| async move {
                {
                    let mut tx = ctx.tx().await?;
                    for step in &batch {
                        sqlx::query("INSERT INTO effects (key, seq) VALUES (?1, ?2)")
                            .bind(&step.key)
                            .bind(i64::try_from(step.seq)?)
                            .execute(&mut **tx)
                            .await?;
                    }
                }
                let causes = ctx.envelopes().to_vec();
                for (cause, step) in causes.iter().zip(batch) {
                    ctx.publish_caused_by(
                        cause,
                        &Recorded {
                            key: step.key,
                            seq: step.seq,
                        },
                    )
                    .await?;
                }
                Ok(())
            },
        )
        .build(s.db.pool.clone(), s.subscriber, s.publisher.clone())
        .expect("consumer");
    let running = run(consumer);

    let envelopes = deliveries();
    publish(&*s.publisher, &s.exchange, &envelopes).await;
    let pool = s.db.pool.clone();
    wait_until(
        "200 effects and all settled",
        Duration::from_secs(60),
        async || {
            let m = running.consumer.metrics();
            scalar(&pool, "SELECT count(*) FROM effects").await == 200
                && m.handled() + m.duplicates() == 250
        },
    )
    .await;
    running.stop().await;
    assert_each_step_counted_once(&s.db.pool, &envelopes).await;
    delete_group(&s.group).await;
    delete_exchange(&s.exchange).await;
}
