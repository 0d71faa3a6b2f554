//! The consumer process (`soak consume …`) and the history it records: one
//! `effects` row per handling, and an `order_violations` row when a step
//! does not follow its key's last applied one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use eventbus::consumer::{Consumer, Context, DeliveryMode, RetryPolicy};
use eventbus::transport::rabbitmq::{RabbitPublisher, RabbitSubscriber};
use sqlx::postgres::PgPoolOptions;
use sqlx::Postgres;

use super::Result;
use crate::relay::Step;

/// The consumers' tables. `effects` deliberately has no unique key: a
/// duplicate effect must be countable, not prevented here.
pub(crate) const DDL: [&str; 3] = [
    "CREATE TABLE effects (key text NOT NULL, seq bigint NOT NULL, \
     at timestamptz NOT NULL DEFAULT clock_timestamp(), member bigint, event_id text)",
    "CREATE INDEX ON effects (key, seq)",
    "CREATE TABLE order_violations (key text NOT NULL, seq bigint NOT NULL, previous bigint)",
];

/// A consumer process: effectively once (or at least once, for the
/// negative control), RabbitMQ single active consumer (so the standby takes
/// over in order when the active one is killed), retrying long enough to
/// outlast a database restart.
pub(crate) async fn consume(
    db: &str,
    amqp: &str,
    group: &str,
    exchange: &str,
    mode: &str,
) -> Result<()> {
    let mode = match mode {
        "effectively-once" => DeliveryMode::EffectivelyOnce,
        "at-least-once" => DeliveryMode::AtLeastOnce,
        other => return Err(format!("unknown mode {other}").into()),
    };
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(Duration::from_secs(5))
        .connect(db)
        .await?;
    let subscriber = RabbitSubscriber::builder(amqp)
        .group(group)
        .prefetch(64)
        .single_active_consumer(true)
        .bind_all(exchange)
        .connect()
        .await?;
    let dead_letters: Arc<dyn eventbus::Publisher> =
        Arc::new(RabbitPublisher::connect(amqp).await?);
    let retry = RetryPolicy {
        delayed: 30,
        delayed_max: Duration::from_secs(2),
        ..RetryPolicy::default()
    };
    let crash_pool = (mode == DeliveryMode::AtLeastOnce).then(|| pool.clone());
    let consumer = Consumer::builder(group)
        .on(move |ctx: Context<Postgres>, step: Step| {
            let crash_pool = crash_pool.clone();
            async move {
                if let Some(pool) = &crash_pool {
                    crash_after_the_effect_once(pool, &step).await?;
                }
                apply(&ctx, &step).await
            }
        })
        .retry(retry)
        .mode(mode)
        .build(pool, Box::new(subscriber), dead_letters)?;
    consumer
        .run(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

/// The negative control's sure duplicate: without the inbox, a process that
/// dies after its side effect and before its acknowledgement applies the
/// message again when it comes back. Faults alone make that window rare in a
/// short run, so at least once, the consumer writes the effect of one chosen
/// step (step 20 of the first hot key) outside the handler's transaction and
/// aborts; the redelivery, which finds the effect, is handled normally.
async fn crash_after_the_effect_once(pool: &sqlx::PgPool, step: &Step) -> Result<()> {
    if step.seq != 20 || !step.key.ends_with("-k0") {
        return Ok(());
    }
    let seq = i64::try_from(step.seq)?;
    let seen: i64 = sqlx::query_scalar("SELECT count(*) FROM effects WHERE key = $1 AND seq = $2")
        .bind(&step.key)
        .bind(seq)
        .fetch_one(pool)
        .await?;
    if seen == 0 {
        sqlx::query("INSERT INTO effects (key, seq) VALUES ($1, $2)")
            .bind(&step.key)
            .bind(seq)
            .execute(pool)
            .await?;
        eprintln!(
            "soak consume: at-least-once control: dying after the effect of {} step {seq}",
            step.key
        );
        std::process::abort();
    }
    Ok(())
}

/// The side effect: one `effects` row, and an order violation recorded when
/// `seq` does not follow the key's last applied step (the writers number a
/// key's steps 0, 1, 2, … in commit order, under the aggregate's lock).
async fn apply(ctx: &Context<Postgres>, step: &Step) -> Result<()> {
    let seq = i64::try_from(step.seq)?;
    let mut tx = ctx.tx().await?;
    let previous: Option<i64> = sqlx::query_scalar("SELECT max(seq) FROM effects WHERE key = $1")
        .bind(&step.key)
        .fetch_one(&mut **tx)
        .await?;
    if previous.map_or(seq != 0, |p| seq != p + 1) {
        sqlx::query("INSERT INTO order_violations (key, seq, previous) VALUES ($1, $2, $3)")
            .bind(&step.key)
            .bind(seq)
            .bind(previous)
            .execute(&mut **tx)
            .await?;
    }
    // When, by which process and from which event: what a violation's
    // neighbours tell about how it came about.
    sqlx::query("INSERT INTO effects (key, seq, member, event_id) VALUES ($1, $2, $3, $4)")
        .bind(&step.key)
        .bind(seq)
        .bind(i64::from(std::process::id()))
        .bind(&ctx.envelope().id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Declares `exchange` as the relay does (durable topic), so the consumers'
/// queue can bind to it before the first event is relayed.
pub(crate) async fn declare_exchange(amqp: &str, exchange: &str) -> Result<()> {
    use eventbus::transport::rabbitmq::lapin::options::ExchangeDeclareOptions;
    use eventbus::transport::rabbitmq::lapin::types::FieldTable;
    use eventbus::transport::rabbitmq::lapin::{Connection, ConnectionProperties, ExchangeKind};
    let connection = Connection::connect(amqp, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    channel
        .exchange_declare(
            exchange.into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    connection.close(0, "".into()).await?;
    Ok(())
}

/// Waits until a consumer is subscribed to `group`'s queue (declared and
/// bound by then).
pub(crate) async fn wait_subscribed(amqp: &str, group: &str, timeout: Duration) -> Result<()> {
    use eventbus::transport::rabbitmq::lapin::options::QueueDeclareOptions;
    use eventbus::transport::rabbitmq::lapin::types::FieldTable;
    use eventbus::transport::rabbitmq::lapin::{Connection, ConnectionProperties};
    let connection = Connection::connect(amqp, ConnectionProperties::default()).await?;
    let deadline = Instant::now() + timeout;
    loop {
        // A missing queue closes the channel: a new one per look.
        let channel = connection.create_channel().await?;
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let queue = channel
            .queue_declare(group.into(), passive, FieldTable::default())
            .await;
        if queue.is_ok_and(|q| q.consumer_count() > 0) {
            break;
        }
        let _ = channel.close(200, "".into()).await;
        if Instant::now() > deadline {
            return Err(format!(
                "no consumer subscribed to queue {group} within {timeout:?} (see {})",
                std::env::temp_dir()
                    .join("eventbus-soak-consumer-0.log")
                    .display()
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Only a look: closing may race the broker closing a refused channel.
    let _ = connection.close(0, "".into()).await;
    Ok(())
}
