//! W3, steady-state latency: events written at a fixed rate, one per
//! transaction, for a fixed time; commit→broker acknowledgement and
//! commit→handler of every event, with NOTIFY wake-up and with polling only.
//! The baseline is a dual write without an outbox: commit a plain insert,
//! then send the same message with a raw producer and read it with a raw
//! consumer (what the outbox exists to replace, and the broker's own floor).

use std::sync::Arc;
use std::time::Duration;

use eventbus::consumer::{Consumer, Context, DeliveryMode};
use eventbus::relay::{PgRelayStore, RelayConfig, RelayStore};
use eventbus::transport::kafka::KafkaSubscriber;
use eventbus::transport::rabbitmq::RabbitSubscriber;
use eventbus::transport::Subscriber;
use eventbus::{Event, Outbox};
use sqlx::{PgPool, Postgres};
use tokio::sync::oneshot;
use uuid::Uuid;

use super::{latency_rows, paced, wait_for, Broker, Ctx, InProcessRelay};
use crate::cpu;
use crate::env::BenchDb;
use crate::error::{BenchError, Result};
use crate::event::{message, Tick};
use crate::plot::latency_distribution;
use crate::raw;
use crate::report::{Row, WorkloadReport};
use crate::timeline::{Latencies, PollingOnly, TimedPublisher, Timeline};

/// Poll interval of the polling-only relay.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Kafka group timeouts: tansu completes joins quickly with these.
const GROUP_TIMEOUT: Duration = Duration::from_secs(6);

/// How the relay learns about new rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wake {
    /// LISTEN/NOTIFY, with the default 1 s fallback poll.
    Notify,
    /// Polling only, every [`POLL_INTERVAL`].
    Polling,
}

impl Wake {
    fn name(self) -> &'static str {
        match self {
            Wake::Notify => "notify",
            Wake::Polling => "polling",
        }
    }
}

/// Concurrent writers for `rate` one-event transactions per second.
pub(crate) fn writers_for(rate: u32) -> usize {
    (rate as usize / 50).clamp(4, 48)
}

/// Time allowed after the last write for the stragglers.
pub(crate) fn grace(quick: bool) -> Duration {
    if quick {
        Duration::from_secs(15)
    } else {
        Duration::from_secs(30)
    }
}

/// Runs W3.
pub(crate) async fn run(ctx: &Ctx, report: &mut WorkloadReport) -> Result<()> {
    let o = &ctx.options;
    report.title = "steady-state latency: commit→ack and commit→handler, NOTIFY vs polling".into();
    report
        .parameters
        .insert("rates_per_s".into(), serde_json::json!(o.w3_rates));
    report
        .parameters
        .insert("seconds_per_rate".into(), o.w3_seconds.into());
    report.parameters.insert(
        "polling_interval_ms".into(),
        (POLL_INTERVAL.as_millis() as u64).into(),
    );
    for &broker in &o.w3_brokers {
        let db = BenchDb::migrated(
            &ctx.services,
            &ctx.run_id,
            &format!("w3_{}", broker.name()),
            50,
        )
        .await?;
        sqlx::query(
            "CREATE TABLE bench_plain (id bigserial PRIMARY KEY, event_id uuid NOT NULL, \
             destination text NOT NULL, partition_key text NOT NULL, event_type text NOT NULL, \
             payload jsonb NOT NULL, created_at timestamptz NOT NULL DEFAULT now())",
        )
        .execute(&db.pool)
        .await?;
        let relay_pool = db.another_pool(4).await?;
        let consumer_pool = db.another_pool(10).await?;
        for &rate in &o.w3_rates {
            let mut series = Vec::new();
            let mut p99 = Vec::new();
            for wake in [Wake::Notify, Wake::Polling] {
                let (lat, cost) =
                    ours(ctx, &db, &relay_pool, &consumer_pool, broker, rate, wake).await?;
                let case = format!("{} {rate}/s ours, {}", broker.name(), wake.name());
                report.notes.push(format!("{case}: {cost}"));
                let (ack, handled) = latency_rows(
                    &case,
                    "commit→handler",
                    lat,
                    &mut report.latencies,
                    &mut series,
                );
                p99.push((wake, ack, handled));
            }
            let baseline = if broker == Broker::Kafka {
                let lat = dual_write(ctx, &db.pool, rate).await?;
                let case = format!("{} {rate}/s dual write", broker.name());
                Some(latency_rows(
                    &case,
                    "commit→received",
                    lat,
                    &mut report.latencies,
                    &mut series,
                ))
            } else {
                None
            };
            for (wake, ack, handled) in p99 {
                let targeted = rate == 1_000 && wake == Wake::Notify;
                let case = format!("{} {rate}/s, {}", broker.name(), wake.name());
                report.rows.push(Row::lower_is_better(
                    case.clone(),
                    "p99 commit→ack",
                    "ms",
                    ack,
                    baseline.map(|(b, _)| ("dual write, raw producer".to_owned(), b)),
                    targeted.then(|| ack_ceiling(baseline.and_then(|(b, _)| b))),
                ));
                report.rows.push(Row::lower_is_better(
                    case,
                    "p99 commit→handler",
                    "ms",
                    handled,
                    baseline.map(|(_, b)| ("dual write, raw consumer".to_owned(), b)),
                    targeted.then_some(25.0),
                ));
            }
            let file = format!("w3_{}_{rate}.png", broker.name());
            latency_distribution(
                &ctx.out.join(&file),
                &format!(
                    "W3 {} at {rate} events/s: latency from commit",
                    broker.name()
                ),
                &series,
            )?;
            report.plots.push(file);
        }
    }
    report.notes.push(format!(
        "Ours: the relay runs in this process (so acknowledgements can be timed) with the default \
         configuration (batch 1,000; NOTIFY with 1 s fallback poll) or polling only every {} ms; \
         the consumer is the effectively-once `Consumer` (inbox row per message, default 64 in flight). \
         Writers: one event per transaction, each started on schedule by one of up to 48 tasks.",
        POLL_INTERVAL.as_millis()
    ));
    report.notes.push(
        "Dual write: the writer commits a plain insert, then sends the same message with a raw \
         idempotent acks=all producer and awaits its acknowledgement; a raw consumer (no group) reads it."
            .into(),
    );
    Ok(())
}

/// One measured run of ours: relay + effectively-once consumer.
async fn ours(
    ctx: &Ctx,
    db: &BenchDb,
    relay_pool: &PgPool,
    consumer_pool: &PgPool,
    broker: Broker,
    rate: u32,
    wake: Wake,
) -> Result<(Latencies, String)> {
    let seconds = ctx.options.w3_seconds;
    let timeline = Arc::new(Timeline::default());
    let label = format!("{}_{rate}_{}", broker.name(), wake.name());
    let prefix = format!("bench_{}_w3_{label}_", ctx.run_id);
    let destination = format!("{prefix}{}", Tick::DESTINATION);
    let publisher = broker.publisher(&ctx.services).await?;
    publisher.ensure_destination(&destination).await?;

    let group = format!("bench_{}_w3_{label}", ctx.run_id);
    let subscriber: Box<dyn Subscriber> = match broker {
        Broker::Kafka => Box::new(
            KafkaSubscriber::builder(&ctx.services.kafka_brokers)
                .group(&group)
                .topics([destination.clone()])
                .session_timeout(GROUP_TIMEOUT)
                .max_poll_interval(GROUP_TIMEOUT)
                .set("fetch.wait.max.ms", crate::raw::FETCH_WAIT_MS)
                .build()?,
        ),
        Broker::RabbitMq => Box::new(
            RabbitSubscriber::builder(&ctx.services.amqp_url)
                .group(&group)
                .bind_all(&destination)
                .connect()
                .await?,
        ),
    };
    let seen = Arc::clone(&timeline);
    let consumer = Arc::new(
        Consumer::builder(&group)
            .mode(DeliveryMode::EffectivelyOnce)
            .on(move |_ctx: Context<Postgres>, tick: Tick| {
                seen.handle(tick.key);
                async { Ok(()) }
            })
            .build(consumer_pool.clone(), subscriber, Arc::clone(&publisher))?,
    );
    let (stop_consumer, consumer_stopped) = oneshot::channel::<()>();
    let running = Arc::clone(&consumer);
    let consumer_task = tokio::spawn(async move {
        running
            .run(async {
                let _ = consumer_stopped.await;
            })
            .await
    });

    let config = RelayConfig {
        destination_prefix: prefix,
        poll_interval: match wake {
            Wake::Notify => RelayConfig::default().poll_interval,
            Wake::Polling => POLL_INTERVAL,
        },
        ..RelayConfig::default()
    };
    let pg: Arc<dyn RelayStore> =
        Arc::new(PgRelayStore::new(relay_pool.clone(), config.table.clone()));
    let store: Arc<dyn RelayStore> = match wake {
        Wake::Notify => pg,
        Wake::Polling => Arc::new(PollingOnly(pg)),
    };
    let timed = Arc::new(TimedPublisher::new(
        Arc::clone(&publisher),
        Arc::clone(&timeline),
    ));
    let relay = InProcessRelay::start(store, timed, config)?;
    let outcome = async {
        relay.wait_ready(&db.pool).await?;
        // Warm-up: the consumer has joined its group once these are handled.
        let warm = crate::event::ticks(20);
        let bar = ctx
            .progress
            .bar(format!("W3 {label} warm-up"), warm.len() as u64);
        super::fill_outbox(&db.pool, &warm, &bar).await?;
        let warmed = wait_for(
            "W3 warm-up events handled",
            warm.len() as u64,
            Duration::from_secs(120),
            Duration::from_millis(50),
            Some(&bar),
            || async { Ok(timeline.handled()) },
        )
        .await;
        ctx.progress.done(&bar);
        warmed?;
        timeline.clear();

        let total = u64::from(rate) * seconds;
        let bar = ctx.progress.bar(format!("W3 {label} writes"), total);
        let cpu_before = cpu::Sample::now();
        let (pool, tl) = (db.pool.clone(), Arc::clone(&timeline));
        let outbox = Outbox::new("urn:bench:w3");
        paced(rate, seconds, writers_for(rate), &bar, move |_| {
            let (pool, tl, outbox) = (pool.clone(), Arc::clone(&tl), outbox.clone());
            async move {
                let tick = Tick::new();
                let mut tx = pool.begin().await?;
                outbox.publish(&mut tx, &tick).await?;
                tx.commit().await?;
                tl.commit(tick.key);
                Ok(())
            }
        })
        .await?;
        ctx.progress.done(&bar);
        // What the steady state cost each party, and how far the consumer
        // was behind when the writers stopped.
        let cpu = cpu::Sample::now().micros_per(&cpu_before, total);
        let cost = format!(
            "per event {:.0} µs of CPU in this process (writers, relay, consumer), {:.0} µs in \
             PostgreSQL, {:.0} µs in the broker; {} of {total} handled when the writers stopped",
            cpu.own,
            cpu.postgres,
            cpu.broker,
            timeline.handled()
        );
        let bar = ctx.progress.bar(format!("W3 {label} stragglers"), total);
        // Stragglers beyond the grace period count as not delivered.
        let _ = wait_for(
            "W3 events handled",
            total,
            grace(ctx.options.quick),
            Duration::from_millis(20),
            Some(&bar),
            || async { Ok(timeline.handled()) },
        )
        .await;
        ctx.progress.done(&bar);
        Ok::<_, BenchError>(cost)
    }
    .await;
    let stopped = relay.stop().await;
    let _ = stop_consumer.send(());
    match tokio::time::timeout(Duration::from_secs(30), consumer_task).await {
        Ok(joined) => joined??,
        Err(_) => {
            return Err(BenchError::Timeout {
                what: "consumer shutdown".into(),
                after: Duration::from_secs(30),
            })
        }
    }
    if broker == Broker::RabbitMq {
        // The group's durable queue would outlive the run.
        raw::rabbit_delete_queue(&ctx.services.amqp_url, &group).await?;
    }
    let cost = outcome?;
    stopped?;
    let lat = timeline.latencies();
    ctx.progress.log(format!(
        "W3 {label}: {} committed, {} acked, {} handled",
        lat.ack.len() + lat.ack_missing,
        lat.ack.len(),
        lat.handled.len()
    ));
    ctx.progress.log(format!("W3 {label}: {cost}"));
    Ok((lat, cost))
}

/// The baseline: commit a plain insert, then produce the message and await
/// its acknowledgement; a raw reader times the arrival.
async fn dual_write(ctx: &Ctx, pool: &PgPool, rate: u32) -> Result<Latencies> {
    let seconds = ctx.options.w3_seconds;
    let brokers = ctx.services.kafka_brokers.clone();
    let destination = format!("bench_{}_w3_dual_{rate}_ticks", ctx.run_id);
    Broker::Kafka
        .publisher(&ctx.services)
        .await?
        .ensure_destination(&destination)
        .await?;
    let timeline = Arc::new(Timeline::default());
    let reader = raw::kafka_reader(&brokers, &destination, Arc::clone(&timeline)).await?;
    let producer = Arc::new(raw::kafka_producer(&brokers)?);
    let outcome = async {
        let warm = crate::event::ticks(5);
        for t in &warm {
            let d = raw::kafka_send(&producer, &message(t, 0, &destination)?).await?;
            let _ = d.await;
        }
        wait_for(
            "dual-write warm-up read",
            warm.len() as u64,
            Duration::from_secs(60),
            Duration::from_millis(50),
            None,
            || async { Ok(timeline.handled()) },
        )
        .await?;
        timeline.clear();
        let total = u64::from(rate) * seconds;
        let bar = ctx.progress.bar(format!("W3 kafka_{rate}_dual-write writes"), total);
        let (pool, tl, producer, dest) = (
            pool.clone(),
            Arc::clone(&timeline),
            Arc::clone(&producer),
            destination.clone(),
        );
        paced(rate, seconds, (rate as usize / 25).clamp(4, 128), &bar, move |_| {
            let (pool, tl, producer, dest) = (pool.clone(), Arc::clone(&tl), Arc::clone(&producer), dest.clone());
            async move {
                let tick = Tick::new();
                let mut tx = pool.begin().await?;
                sqlx::query(
                    "INSERT INTO bench_plain (event_id, destination, partition_key, event_type, payload) \
                     VALUES ($1, $2, $3, $4, $5::jsonb)",
                )
                .bind(Uuid::now_v7())
                .bind(Tick::DESTINATION)
                .bind(tick.key.to_string())
                .bind(Tick::TYPE)
                .bind(tick.json()?)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                tl.commit(tick.key);
                let delivery = raw::kafka_send(&producer, &message(&tick, 0, &dest)?).await?;
                if let Ok(Ok(_)) = delivery.await {
                    tl.ack(tick.key);
                }
                Ok(())
            }
        })
        .await?;
        ctx.progress.done(&bar);
        let _ = wait_for(
            "dual-write reads",
            total,
            grace(ctx.options.quick),
            Duration::from_millis(20),
            None,
            || async { Ok(timeline.handled()) },
        )
        .await;
        Ok::<_, BenchError>(())
    }
    .await;
    reader.abort();
    outcome?;
    Ok(timeline.latencies())
}

/// The ceiling on our p99 commit→ack at 1,000/s: 10 ms, or 1.5× the dual
/// write's p99 in the same run when the broker path alone is slower than
/// that (a target below what the raw producer reaches measures the machine).
fn ack_ceiling(dual_write_p99_ms: Option<f64>) -> f64 {
    dual_write_p99_ms.map_or(10.0, |b| (1.5 * b).max(10.0))
}
