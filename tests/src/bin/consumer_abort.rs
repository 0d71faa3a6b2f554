//! A consumer process whose handler aborts the process on a poisoned event,
//! for the durable-attempts test (tests/tests/consumer_attempts.rs): handles
//! `Step` events effectively once by inserting one `effects` row each, and
//! calls `std::process::abort()` for a step whose `pad` is `abort`.
//!
//! `consumer_abort <postgres-url> <amqp-url> <group> <destination> <max-attempts> [one|batch]`
//! retries a failing message immediately up to `max-attempts` attempts in all;
//! with `batch`, a batch handler takes the events (and aborts when its batch
//! holds the poisoned one).
//! Prints `ready` on stdout once consuming; stops cleanly on SIGINT.

use std::sync::Arc;
use std::time::Duration;

use eventbus::consumer::{BatchContext, Consumer, Context, DeliveryMode, RetryPolicy};
use eventbus::transport::rabbitmq::RabbitPublisher;
use eventbus::{Publisher, Result};
use eventbus_tests::relay::Step;
use sqlx::Postgres;

/// The `pad` of a step whose handler aborts the process.
const POISON: &str = "abort";

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if !(6..=7).contains(&args.len()) {
        eprintln!(
            "usage: consumer_abort <postgres-url> <amqp-url> <group> <destination> <max-attempts> [one|batch]"
        );
        std::process::exit(2);
    }
    let batch = match args.get(6).map(String::as_str) {
        None | Some("one") => false,
        Some("batch") => true,
        Some(other) => {
            eprintln!("the handler kind is `one` or `batch`, got {other}");
            std::process::exit(2);
        }
    };
    let (db, broker, group, destination) = (&args[1], &args[2], &args[3], &args[4]);
    let max_attempts: u32 = match args[5].parse() {
        Ok(n) if n >= 1 => n,
        _ => {
            eprintln!("max-attempts must be a positive number, got {}", args[5]);
            std::process::exit(2);
        }
    };
    let pool = sqlx::PgPool::connect(db).await?;
    let subscriber = eventbus_tests::rabbitmq::subscriber(broker, group, &[destination], 16).await;
    let dead_letters: Arc<dyn Publisher> = Arc::new(RabbitPublisher::connect(broker).await?);
    let builder = Consumer::builder(group.clone())
        .mode(DeliveryMode::EffectivelyOnce)
        .max_in_flight(16)
        .retry(RetryPolicy {
            immediate: max_attempts - 1,
            immediate_delay: Duration::from_millis(10),
            delayed: 0,
            ..RetryPolicy::default()
        });
    let builder = if batch {
        builder.on_batch(
            32,
            |ctx: BatchContext<Postgres>, steps: Vec<Step>| async move {
                if steps.iter().any(|s| s.pad == POISON) {
                    std::process::abort();
                }
                eventbus_tests::consumer::record_batch(&ctx, "", &steps).await
            },
        )
    } else {
        builder.on(|ctx: Context<Postgres>, step: Step| async move {
            if step.pad == POISON {
                // What no `catch_unwind` can stop: the process dies here.
                std::process::abort();
            }
            eventbus_tests::consumer::record(&ctx, "", &step).await
        })
    };
    let consumer = builder.build(pool, subscriber, dead_letters)?;
    println!("ready");
    consumer
        .run(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
}
