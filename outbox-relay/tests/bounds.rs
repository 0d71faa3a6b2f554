//! The `outbox-relay` process within its bounds, on PostgreSQL (and MySQL)
//! and RabbitMQ:
//!
//! - a claim is bounded by bytes: a plain-SQL row of 250 MB on PostgreSQL
//!   (jsonb's largest is 256 MB) and of 300 MB on MariaDB is parked from its
//!   size measured in the database, never loaded, while the other keys keep
//!   flowing and the relay's peak memory stays below 64 MiB plus its claim
//!   budget;
//! - in retention mode the clean-up keeps up with a sustained rate above
//!   5,000 events/s: the kept rows stay bounded by the window.
//!
//! Negative control: `BOUNDS_RELAY_BIN=/path/to/an/older/outbox-relay` runs
//! these tests against another build (settings new to this one are passed as
//! `EVENTBUS_*` variables, which an older build ignores).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use eventbus::transport::rabbitmq::envelope_from_delivery;
use eventbus::transport::rabbitmq::lapin::options::{
    ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use eventbus::transport::rabbitmq::lapin::types::{AMQPValue, FieldTable};
use eventbus::transport::rabbitmq::lapin::{Channel, Connection};
use eventbus::Event;
use eventbus_tests::harness::{log_dir, peak_rss_bytes, RelayProcess};
use eventbus_tests::mysql::TestMySql;
use eventbus_tests::rabbitmq::{connect, declare_topic_exchange, TestQueue};
use eventbus_tests::relay::{assert_per_key_order, publish_steps, steps, Step};
use eventbus_tests::{amqp_url, mysql_url, unique_name, TestDatabase, TestDb};
use sqlx::{Connection as _, MySqlConnection};

const MIB: u64 = 1024 * 1024;

/// The relay's claim budget in these tests (the default).
const CLAIM_BYTES: u64 = 16 * MIB;

/// The binary under test: this build, or another one for a negative control.
fn relay_bin() -> String {
    std::env::var("BOUNDS_RELAY_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_outbox-relay").to_owned())
}

/// Starts `outbox-relay run` on `database_url` and RabbitMQ with
/// `extra_env` set, logging to a file; killed when dropped, its log's end
/// printed if the test is failing.
fn start_relay(database_url: &str, prefix: &str, extra_env: &[(&str, String)]) -> RelayProcess {
    let broker = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
    let args = [
        "run",
        "--database-url",
        database_url,
        "--broker",
        &broker,
        "--destination-prefix",
        prefix,
    ];
    RelayProcess::start_with(
        &relay_bin(),
        "bounds_relay",
        &args,
        &log_dir("bounds"),
        |cmd| {
            for (key, value) in extra_env {
                cmd.env(key, value);
            }
        },
    )
}

/// The number after `payload is ` in `text`.
fn reported_size(text: &str) -> Option<u64> {
    let rest = text.split_once("payload is ")?.1;
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// A huge row, as a plain-SQL writer puts it in the outbox: written by the
/// database itself, so the test's code never holds it.
struct HugeRow {
    /// The `INSERT` writing it, under partition key `huge`.
    insert: &'static str,
    /// Its payload's size in bytes, as the database measures it.
    size: std::ops::Range<u64>,
}

/// The scenario: while other keys flow, the relay parks the huge row from its
/// size without loading it, and its peak memory stays bounded.
async fn huge_row_is_parked_unloaded_while_other_keys_flow<D: TestDatabase>(huge: HugeRow) {
    let db = D::migrated().await;
    let _ = amqp_url().await;
    let prefix = format!("{}.", unique_name("bounds"));
    let mut queue = TestQueue::bind_all(&format!("{prefix}{}", Step::DESTINATION)).await;
    let events = steps(4_000, 200);
    let (before, after) = events.split_at(2_000);
    publish_steps(db.pool(), before, 500).await;

    let started = Instant::now();
    db.execute(huge.insert)
        .await
        .unwrap_or_else(|e| panic!("{} takes the huge row: {e}", D::NAME));
    eprintln!("{} huge row written in {:?}", D::NAME, started.elapsed());

    let mut relay = start_relay(
        db.url(),
        &prefix,
        &[
            ("EVENTBUS_CLAIM_BYTES", CLAIM_BYTES.to_string()),
            ("EVENTBUS_BATCH_SIZE", "500".to_owned()),
            ("EVENTBUS_POLL_INTERVAL_MS", "100".to_owned()),
        ],
    );

    // Other keys keep being written while the relay works.
    let writer = {
        let pool = db.pool().clone();
        let after = after.to_vec();
        tokio::spawn(async move {
            for chunk in after.chunks(100) {
                publish_steps(&pool, chunk, 100).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    // Everything but the huge row arrives, in order per key.
    let deliveries = queue.read(events.len(), Duration::from_secs(120)).await;
    writer.await.expect("writer");
    let received: Vec<Step> = deliveries
        .iter()
        .map(|d| {
            let envelope = envelope_from_delivery(&d.properties, &d.data).expect("a CloudEvent");
            serde_json::from_slice(&envelope.data).expect("a Step")
        })
        .collect();
    assert_per_key_order(&received);
    let distinct: HashSet<(String, u64)> =
        received.iter().map(|s| (s.key.clone(), s.seq)).collect();
    assert_eq!(distinct.len(), events.len(), "every other event arrived");
    assert!(
        received.iter().all(|s| s.key != "huge"),
        "the huge row is never sent"
    );

    // The huge row is parked with its size.
    let huge_column =
        |column: &str| format!("SELECT {column} FROM eventbus_outbox WHERE partition_key = 'huge'");
    let text = |rows: Vec<Option<String>>| rows.into_iter().flatten().collect::<String>();
    let deadline = Instant::now() + Duration::from_secs(60);
    let (state, last_error) = loop {
        let state = text(db.texts(&huge_column("state")).await);
        if state == "failed" || Instant::now() > deadline {
            let last_error = text(db.texts(&huge_column("last_error")).await);
            break (state, last_error);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(relay.proc.running(), "the relay is still running");
    let peak = peak_rss_bytes(relay.proc.pid()).expect("VmHWM in /proc/<pid>/status");
    eprintln!(
        "relay peak RSS {:.1} MiB; huge row {state}: {last_error}",
        peak as f64 / MIB as f64
    );
    assert!(
        peak < 64 * MIB + CLAIM_BYTES,
        "the relay's peak RSS is {:.1} MiB, over 64 MiB + the {} MiB claim budget",
        peak as f64 / MIB as f64,
        CLAIM_BYTES / MIB
    );
    assert_eq!(state, "failed", "the huge row is parked");
    let size = reported_size(&last_error);
    assert!(
        size.is_some_and(|n| huge.size.contains(&n)),
        "last_error names the payload's size ({:?} bytes): {last_error}",
        huge.size
    );
    assert!(last_error.contains("max_message_bytes"), "{last_error}");
    queue.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_250_mb_row_is_parked_from_its_size_unloaded_while_other_keys_flow() {
    // jsonb cannot hold 300 MB (256 MB at most): ten 25 MB members, and
    // their keys.
    huge_row_is_parked_unloaded_while_other_keys_flow::<TestDb>(HugeRow {
        insert: "INSERT INTO eventbus_outbox (destination, partition_key, event_type, payload) \
                 SELECT 'steps', 'huge', 'com.example.test.step', \
                        jsonb_object_agg('k' || i, repeat('x', 25000000)) \
                 FROM generate_series(1, 10) i",
        size: 250_000_000..250_001_000,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_300_mb_row_on_mysql_is_parked_from_its_size_unloaded_while_other_keys_flow() {
    // The server builds the value, so it must allow packets of that size;
    // connections opened from now on (the test database's pool) take it.
    let mut admin = MySqlConnection::connect(&mysql_url().await)
        .await
        .expect("MySQL admin connection");
    sqlx::query("SET GLOBAL max_allowed_packet = 1073741824")
        .execute(&mut admin)
        .await
        .expect("raise max_allowed_packet");
    huge_row_is_parked_unloaded_while_other_keys_flow::<TestMySql>(HugeRow {
        insert: "INSERT INTO eventbus_outbox (destination, partition_key, event_type, payload) \
                 VALUES ('steps', 'huge', 'com.example.test.step', \
                         CONCAT('{\"blob\":\"', REPEAT('x', 300000000), '\"}'))",
        size: 300_000_011..300_000_012,
    })
    .await;
}

/// A queue bound to `exchange` that keeps only the latest messages, so the
/// broker's memory stays small however many are published.
async fn capped_queue(exchange: &str) -> (Connection, Channel, String) {
    let connection = connect().await;
    let channel = connection.create_channel().await.expect("open channel");
    declare_topic_exchange(&channel, exchange).await;
    let name = unique_name("bounds_capped");
    let mut arguments = FieldTable::default();
    arguments.insert("x-max-length".into(), AMQPValue::LongLongInt(1_000));
    arguments.insert("x-expires".into(), AMQPValue::LongLongInt(600_000));
    channel
        .queue_declare(
            name.as_str().into(),
            QueueDeclareOptions::default(),
            arguments,
        )
        .await
        .expect("declare capped queue");
    channel
        .queue_bind(
            name.as_str().into(),
            exchange.into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind capped queue");
    (connection, channel, name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retention_keeps_the_kept_rows_within_the_window_at_6000_events_per_second() {
    const RATE: u64 = 6_000;
    const LOAD: Duration = Duration::from_secs(60);
    const WINDOW: Duration = Duration::from_secs(10);
    const SLACK: Duration = Duration::from_secs(5);
    const WRITERS: u64 = 4;
    const TICK: Duration = Duration::from_millis(100);
    /// Sampling goes on this long after the load, while the relay publishes
    /// (and the clean-up deletes) what is left.
    const AFTER: Duration = Duration::from_secs(9);

    let db = TestDb::migrated().await;
    let _ = amqp_url().await;
    let prefix = format!("{}.", unique_name("retention"));
    let exchange = format!("{prefix}{}", Step::DESTINATION);
    let (connection, channel, queue) = capped_queue(&exchange).await;

    // Default poll interval: the old clean-up ran every ten of them.
    let relay = start_relay(
        &db.url,
        &prefix,
        &[("EVENTBUS_KEEP_PUBLISHED_SECS", WINDOW.as_secs().to_string())],
    );

    let written = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let pool = db.pool.clone();
        let written = Arc::clone(&written);
        let stop = Arc::clone(&stop);
        writers.push(tokio::spawn(async move {
            let per_tick = RATE / WRITERS * TICK.as_millis() as u64 / 1000;
            let mut tick = tokio::time::interval(TICK);
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let batch: Vec<Step> = (0..per_tick)
                    .map(|i| Step {
                        key: format!("w{w}-k{}", i % 50),
                        seq: seq + i / 50,
                        pad: "p".repeat(100),
                    })
                    .collect();
                seq += per_tick / 50 + 1;
                publish_steps(&pool, &batch, batch.len()).await;
                written.fetch_add(batch.len() as u64, Ordering::Relaxed);
            }
        }));
    }

    // Sample the kept rows while the load runs, and a little after. How fast
    // the relay publishes depends on the machine (a debug build here); the
    // clean-up must keep up with whatever it publishes: nothing is kept past
    // the window and its slack.
    let mut max_kept = 0i64;
    let mut max_overdue = 0i64;
    let mut samples: Vec<(u64, i64, i64, i64, Option<f64>)> = Vec::new();
    let mut left;
    let mut rate = 0.0;
    let mut total = 0;
    loop {
        tokio::time::sleep(Duration::from_secs(3)).await;
        if started.elapsed() >= LOAD && !stop.swap(true, Ordering::Relaxed) {
            for w in writers.drain(..) {
                w.await.expect("writer");
            }
            total = written.load(Ordering::Relaxed);
            rate = total as f64 / started.elapsed().as_secs_f64();
        }
        let (kept, overdue, pending): (i64, i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE state = 'published'), \
                    count(*) FILTER (WHERE state = 'published' \
                        AND published_at < now() - $1 * interval '1 millisecond'), \
                    count(*) FILTER (WHERE state = 'pending') \
             FROM eventbus_outbox",
        )
        .bind(i64::try_from((WINDOW + SLACK).as_millis()).expect("millis"))
        .fetch_one(&db.pool)
        .await
        .expect("count kept rows");
        let backlog = relay.metric("eventbus_outbox_retention_backlog_rows").await;
        samples.push((started.elapsed().as_secs(), kept, overdue, pending, backlog));
        max_kept = max_kept.max(kept);
        max_overdue = max_overdue.max(overdue);
        left = pending;
        if started.elapsed() >= LOAD + AFTER {
            break;
        }
    }
    eprintln!(
        "wrote {total} events at {rate:.0}/s, {left} still pending at the end; \
         samples (s, kept, overdue, pending, backlog metric):"
    );
    for s in &samples {
        eprintln!("    {s:?}");
    }
    let published = relay
        .metric("eventbus_relay_published_total")
        .await
        .unwrap_or(0.0);
    let deleted = relay
        .metric("eventbus_relay_retention_deleted_total")
        .await
        .unwrap_or(0.0);
    eprintln!("published {published}, deleted by retention {deleted}");

    assert!(
        rate > 5_000.0,
        "the premise: above 5,000 events/s, got {rate:.0}/s"
    );
    let done = total - u64::try_from(left).unwrap_or(0);
    assert!(
        published >= done as f64 && published > 0.0,
        "every row no longer pending reached the broker: {published} published, {done} done"
    );
    let bound = rate * (WINDOW + SLACK).as_secs_f64();
    assert!(
        (max_kept as f64) < bound,
        "up to {max_kept} published rows were kept, more than {rate:.0}/s × {:?} = {bound:.0}",
        WINDOW + SLACK
    );
    assert_eq!(
        max_overdue,
        0,
        "rows published more than {:?} ago were still kept",
        WINDOW + SLACK
    );

    let _ = channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await;
    let _ = channel
        .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
        .await;
    let _ = connection.close(200, "test done".into()).await;
    drop(relay);
}
