//! A consumer process for the crash tests: handles `Step` events by inserting
//! one `effects` row per handling, so a test can count side effects after
//! SIGKILLing it.
//!
//! `consumer_worker <database-url> <broker-url> <group> <destination> <mode> <max-in-flight> [handler-sleep-ms]`
//! with a `postgres://`, `mysql://` or `sqlite://` database, a `kafka://`,
//! `amqp://` or `sqs+http://` broker (SQS: FIFO queues at `SQS_ENDPOINT`) and mode
//! `effectively-once`, `effectively-once-grouped` (group commit on: 64
//! messages, 2 ms), `at-least-once` or `at-most-once`. Prints `ready` on
//! stdout once consuming.

use std::time::Duration;

use eventbus::consumer::{Consumer, Context, DeliveryMode, RetryPolicy};
use eventbus::Result;
use eventbus_tests::harness::worker;
use eventbus_tests::mysql::TestMySql;
use eventbus_tests::relay::Step;
use eventbus_tests::sqlite::TestSqlite;
use eventbus_tests::{TestDatabase, TestDb};

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 7 {
        eprintln!("usage: consumer_worker <database-url> <broker-url> <group> <destination> <mode> <max-in-flight> [handler-sleep-ms]");
        std::process::exit(2);
    }
    match args[1].split_once("://").map(|(scheme, _)| scheme) {
        Some("postgres" | "postgresql") => work::<TestDb>(&args).await,
        Some("mysql") => work::<TestMySql>(&args).await,
        Some("sqlite") => work::<TestSqlite>(&args).await,
        _ => panic!("unsupported database URL {}", args[1]),
    }
}

/// Consumes until SIGINT with the database `D` of `args[1]`.
async fn work<D: TestDatabase>(args: &[String]) -> Result<()> {
    let (db, broker, group, destination) = (&args[1], &args[2], &args[3], &args[4]);
    let (mode, grouped) = match args[5].as_str() {
        "effectively-once" => (DeliveryMode::EffectivelyOnce, false),
        "effectively-once-grouped" => (DeliveryMode::EffectivelyOnce, true),
        "at-least-once" => (DeliveryMode::AtLeastOnce, false),
        "at-most-once" => (DeliveryMode::AtMostOnce, false),
        other => panic!("unknown mode {other}"),
    };
    let max_in_flight: usize = args[6].parse().expect("max-in-flight");
    let sleep_ms: u64 = args.get(7).map_or(0, |s| s.parse().expect("sleep ms"));

    let pool = worker::pool::<D::DB>(db).await?;
    let (subscriber, dead_letters) =
        worker::connections(broker, group, destination, max_in_flight).await?;
    let builder = Consumer::builder(group.clone());
    let builder = if grouped {
        builder.group_commit(64, Duration::from_millis(2))
    } else {
        builder
    };
    let consumer = builder
        .mode(mode)
        .max_in_flight(max_in_flight)
        .retry(RetryPolicy::none())
        .on(move |ctx: Context<D::DB>, step: Step| async move {
            if sleep_ms > 0 {
                tokio::time::sleep(Duration::from_millis(sleep_ms)).await;
            }
            let row = [(
                step.key.clone(),
                i64::try_from(step.seq).unwrap_or(i64::MAX),
                ctx.envelope().id.clone(),
            )];
            let mut tx = ctx.tx().await?;
            D::insert_effects(&mut **tx, "", &row).await?;
            Ok(())
        })
        .build(pool, subscriber, dead_letters)?;
    println!("ready");
    consumer
        .run(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
}
