//! A consumer process for the crash tests: handles `Step` events by inserting
//! one `effects` row per handling, so a test can count side effects after
//! SIGKILLing it.
//!
//! `consumer_worker <database-url> <broker-url> <group> <destination> <mode> <max-in-flight> [handler-sleep-ms]`
//! with mode `effectively-once`, `at-least-once` or `at-most-once`. Prints
//! `ready` on stdout once consuming.

use std::sync::Arc;
use std::time::Duration;

use eventbus::consumer::{Consumer, Context, DeliveryMode, RetryPolicy};
use eventbus::{Publisher, Result};
use eventbus_tests::relay::Step;
use sqlx::Postgres;

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 7 {
        eprintln!("usage: consumer_worker <database-url> <broker-url> <group> <destination> <mode> <max-in-flight> [handler-sleep-ms]");
        std::process::exit(2);
    }
    let (db, broker, group, destination) = (&args[1], &args[2], &args[3], &args[4]);
    let mode = match args[5].as_str() {
        "effectively-once" => DeliveryMode::EffectivelyOnce,
        "at-least-once" => DeliveryMode::AtLeastOnce,
        "at-most-once" => DeliveryMode::AtMostOnce,
        other => panic!("unknown mode {other}"),
    };
    let max_in_flight: usize = args[6].parse().expect("max-in-flight");
    let sleep_ms: u64 = args.get(7).map_or(0, |s| s.parse().expect("sleep ms"));

    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(16)
        .connect(db)
        .await?;
    let (subscriber, dead_letters): (Box<dyn eventbus::transport::Subscriber>, Arc<dyn Publisher>) =
        match broker.split_once("://") {
            Some(("kafka", brokers)) => (
                eventbus_tests::kafka::subscriber(brokers, group, &[destination], max_in_flight)
                    .await,
                Arc::new(eventbus_tests::kafka::publisher_builder(brokers).build()?),
            ),
            Some(("amqp", _)) => (
                eventbus_tests::rabbitmq::subscriber(broker, group, &[destination], max_in_flight)
                    .await,
                Arc::new(eventbus::transport::rabbitmq::RabbitPublisher::connect(broker).await?),
            ),
            _ => panic!("unsupported broker {broker}"),
        };
    let consumer = Consumer::builder(group.clone())
        .mode(mode)
        .max_in_flight(max_in_flight)
        .retry(RetryPolicy::none())
        .on(move |ctx: Context<Postgres>, step: Step| async move {
            if sleep_ms > 0 {
                tokio::time::sleep(Duration::from_millis(sleep_ms)).await;
            }
            let mut tx = ctx.tx().await?;
            sqlx::query("INSERT INTO effects (key, seq, event_id) VALUES ($1, $2, $3)")
                .bind(&step.key)
                .bind(i64::try_from(step.seq).unwrap_or(i64::MAX))
                .bind(&ctx.envelope().id)
                .execute(&mut **tx)
                .await?;
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
