//! Inbox retention in the background (`ConsumerBuilder::inbox_retention`),
//! over real PostgreSQL and the in-memory broker: a running consumer deletes
//! its group's inbox rows older than the window — thousands of them in one
//! sweep of bounded batches — while younger rows, the rows of other groups
//! and the rows of messages it handles stay. Without the option nothing is
//! deleted; a window under a minute is refused.

use eventbus_tests::composed;
use std::sync::Arc;
use std::time::Duration;

use eventbus::consumer::{Consumer, Context};
use eventbus::transport::memory::MemoryBroker;
use eventbus::Error;
use eventbus_tests::consumer::{
    create_effects, envelope, publish, record, run, scalar, wait_count,
};
use eventbus_tests::relay::{steps, Step};
use eventbus_tests::{unique_name, TestDb};
use sqlx::{PgPool, Postgres};

const TOPIC: &str = "retention";

/// The window under test: rows two days old are past it, rows half an hour
/// old are not.
const WINDOW: Duration = Duration::from_secs(3600);

/// Old rows of the group: more than two of the sweeper's delete batches, so
/// a sweep that stopped after one batch would leave some.
const OLD: i64 = 2_500;

/// Seeds the inbox: `OLD` rows of `group` two days old, 5 half an hour old,
/// 10 just received; 20 rows of `other` two days old.
async fn seed(pool: &PgPool, group: &str, other: &str) {
    sqlx::query(
        "INSERT INTO eventbus_inbox (consumer, source, message_id, event_type, received_at)
         SELECT $1, 'urn:test', 'old-' || g, 't', now() - interval '2 days'
         FROM generate_series(1, $2::bigint) AS g",
    )
    .bind(group)
    .bind(OLD)
    .execute(pool)
    .await
    .expect("seed old rows");
    for (consumer, prefix, age, n) in [
        (group, "recent", "30 minutes", 5_i64),
        (group, "new", "0 seconds", 10),
        (other, "other", "2 days", 20),
    ] {
        sqlx::query(composed(format!(
            "INSERT INTO eventbus_inbox (consumer, source, message_id, event_type, received_at)
             SELECT $1, 'urn:test', '{prefix}-' || g, 't', now() - interval '{age}'
             FROM generate_series(1, $2::bigint) AS g"
        )))
        .bind(consumer)
        .bind(n)
        .execute(pool)
        .await
        .expect("seed rows");
    }
}

/// Rows of `consumer` whose message id starts with `prefix`.
async fn rows(pool: &PgPool, consumer: &str, prefix: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM eventbus_inbox WHERE consumer = $1 AND message_id LIKE $2 || '-%'",
    )
    .bind(consumer)
    .bind(prefix)
    .fetch_one(pool)
    .await
    .expect("count inbox rows")
}

/// An effectively-once consumer of `group` recording each step, with the
/// inbox retention `retention` when given.
fn consumer(
    db: &TestDb,
    broker: &MemoryBroker,
    group: &str,
    retention: Option<Duration>,
) -> eventbus::Result<Consumer<Postgres>> {
    let mut builder = Consumer::builder(group)
        .on(|ctx: Context<Postgres>, step: Step| async move { record(&ctx, "", &step).await });
    if let Some(window) = retention {
        builder = builder.inbox_retention(window);
    }
    builder.build(
        db.pool.clone(),
        Box::new(broker.subscribe(group, &[TOPIC])),
        Arc::new(broker.publisher()),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_retention_deletes_only_the_groups_rows_past_the_window() {
    let db = TestDb::migrated().await;
    create_effects(&db.pool).await;
    let group = unique_name("billing");
    let other = unique_name("shipping");
    seed(&db.pool, &group, &other).await;
    let broker = MemoryBroker::new();
    let events: Vec<_> = steps(3, 3).iter().map(envelope).collect();
    publish(&broker.publisher(), TOPIC, &events).await;

    let running = run(consumer(&db, &broker, &group, Some(WINDOW)).expect("build"));
    // The first sweep starts within seconds and deletes every old row back
    // to back; the next would be a minute or more later.
    let old_gone = format!(
        "SELECT ({OLD} - count(*)) FROM eventbus_inbox \
         WHERE consumer = '{group}' AND message_id LIKE 'old-%'"
    );
    wait_count(&db.pool, &old_gone, OLD, Duration::from_secs(20)).await;
    wait_count(
        &db.pool,
        "SELECT count(*) FROM effects",
        3,
        Duration::from_secs(10),
    )
    .await;
    running.stop().await;

    assert_eq!(
        rows(&db.pool, &group, "old").await,
        0,
        "rows past the window"
    );
    assert_eq!(
        rows(&db.pool, &group, "recent").await,
        5,
        "rows within the window stay"
    );
    assert_eq!(rows(&db.pool, &group, "new").await, 10, "new rows stay");
    assert_eq!(
        rows(&db.pool, &other, "other").await,
        20,
        "another group's rows are not this consumer's to delete"
    );
    let handled = format!(
        "SELECT count(*) FROM eventbus_inbox WHERE consumer = '{group}' AND source <> 'urn:test'"
    );
    assert_eq!(
        scalar(&db.pool, &handled).await,
        3,
        "the rows of the messages just handled stay"
    );
}

/// Retention is opt-in: a consumer without it leaves every row, however old.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_option_no_inbox_row_is_deleted() {
    let db = TestDb::migrated().await;
    create_effects(&db.pool).await;
    let group = unique_name("billing");
    let other = unique_name("shipping");
    seed(&db.pool, &group, &other).await;
    let broker = MemoryBroker::new();
    let events: Vec<_> = steps(3, 3).iter().map(envelope).collect();
    publish(&broker.publisher(), TOPIC, &events).await;

    let running = run(consumer(&db, &broker, &group, None).expect("build"));
    wait_count(
        &db.pool,
        "SELECT count(*) FROM effects",
        3,
        Duration::from_secs(10),
    )
    .await;
    // Longer than the first sweep of a consumer with the option takes.
    tokio::time::sleep(Duration::from_secs(4)).await;
    running.stop().await;

    assert_eq!(rows(&db.pool, &group, "old").await, OLD);
    assert_eq!(rows(&db.pool, &other, "other").await, 20);
}

#[tokio::test]
async fn a_window_under_a_minute_is_refused() {
    let db = TestDb::migrated().await;
    let broker = MemoryBroker::new();
    let group = unique_name("billing");
    match consumer(&db, &broker, &group, Some(Duration::from_secs(59))) {
        Err(Error::Config(message)) => assert!(
            message.contains("inbox retention"),
            "the error names the setting: {message}"
        ),
        other => panic!("expected a configuration error, got {other:?}"),
    }
    assert!(consumer(&db, &broker, &group, Some(Duration::from_secs(60))).is_ok());
}
