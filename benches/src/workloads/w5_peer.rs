//! W5, the peer: `outbox-core` 0.6 + `outbox-postgres` 0.3 + `outbox-kafka`
//! 0.2 (the closest published Rust outbox, built from crates.io) against ours,
//! both running in this process against the same PostgreSQL and Kafka: a
//! backlog drain (W2 on Kafka) and steady-state latency (W3, NOTIFY).

use std::sync::Arc;
use std::time::{Duration, Instant};

use eventbus::relay::{PgRelayStore, RelayConfig, RelayStore};
use eventbus::transport::kafka::rdkafka::ClientConfig;
use eventbus::{Event, Outbox};
use outbox_core::{OutboxConfig, OutboxError, OutboxManagerBuilder, OutboxService, Transport};
use outbox_kafka::{KafkaKeyExtractable, KafkaTransport};
use outbox_postgres::{PostgresOutbox, PostgresWriter};
use peer_sqlx::PgPool;
use tokio::sync::watch;

use super::w3_latency::{grace, writers_for};
use super::{fill_outbox, latency_rows, paced, wait_for, Broker, Ctx, InProcessRelay};
use crate::env::BenchDb;
use crate::error::{BenchError, Result};
use crate::event::{ticks, Tick};
use crate::plot::latency_distribution;
use crate::raw;
use crate::report::{Row, WorkloadReport};
use crate::stats::rate;
use crate::timeline::{Latencies, TimedPublisher, Timeline};

/// The peer's schema: `outbox-postgres` 0.3.0's `migrations/20260213152819_init.sql`
/// (MIT licence), which the crate does not apply by itself.
const PEER_SCHEMA: &str = r#"
create type status as enum ('Pending', 'Processing', 'Sent');
create table outbox_events
(
    id                uuid primary key     default gen_random_uuid(),
    idempotency_token text                 default null,
    event_type        text        not null,
    payload           jsonb       not null,
    status            status      not null default 'Pending',
    created_at        timestamptz not null default now(),
    locked_until      timestamptz not null default '-infinity'
);
CREATE INDEX idx_outbox_processing_queue
    ON outbox_events (locked_until ASC, status)
    WHERE status IN ('Pending', 'Processing');
CREATE UNIQUE INDEX idx_outbox_idempotency
    ON outbox_events (idempotency_token);
create or replace function notify_outbox_event() returns trigger as
$$
begin
    perform pg_notify('outbox_event', 'ping');
    return new;
end;
$$ language plpgsql;
create trigger outbox_events_notify_trigger
    after insert or update
    on outbox_events
    for each row
execute function notify_outbox_event();
"#;

impl KafkaKeyExtractable for Tick {
    fn kafka_key(&self) -> Vec<u8> {
        self.key.to_string().into_bytes()
    }
}

/// The peer's Kafka transport, timing each acknowledgement.
struct TimedPeerTransport {
    inner: KafkaTransport,
    timeline: Arc<Timeline>,
}

#[async_trait::async_trait]
impl Transport<Tick> for TimedPeerTransport {
    async fn publish(
        &self,
        event: outbox_core::Event<Tick>,
    ) -> std::result::Result<(), OutboxError> {
        let key = event.payload.as_value().key;
        Transport::<Tick>::publish(&self.inner, event).await?;
        self.timeline.ack(key);
        Ok(())
    }
}

/// The peer's relay ("manager") running in this process.
struct PeerRelay {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<std::result::Result<(), OutboxError>>,
}

impl PeerRelay {
    async fn start(ctx: &Ctx, pool: &PgPool, topic: &str, timeline: Arc<Timeline>) -> Result<Self> {
        let mut kafka = ClientConfig::new();
        // The same durability and partitioning as ours.
        kafka
            .set("bootstrap.servers", &ctx.services.kafka_brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("partitioner", "murmur2_random")
            .set("message.timeout.ms", "30000")
            .set("compression.codec", "none")
            .set("linger.ms", "1");
        let transport = TimedPeerTransport {
            inner: KafkaTransport::new(topic, &kafka)?,
            timeline,
        };
        let (stop, stopped) = watch::channel(false);
        let manager = OutboxManagerBuilder::new()
            .storage(Arc::new(PostgresOutbox::new(pool.clone(), peer_config())))
            .publisher(Arc::new(transport))
            .config(peer_config())
            .shutdown_rx(stopped)
            .build()?;
        let task = tokio::spawn(manager.run());
        // Let it connect its LISTEN session before events arrive.
        tokio::time::sleep(Duration::from_secs(1)).await;
        Ok(PeerRelay { stop, task })
    }

    async fn stop(mut self) {
        let _ = self.stop.send(true);
        if tokio::time::timeout(Duration::from_secs(30), &mut self.task)
            .await
            .is_err()
        {
            self.task.abort();
        }
    }
}

/// The peer's settings: its defaults, with ours' batch size and the
/// shortest fallback poll it allows (whole seconds).
fn peer_config() -> Arc<OutboxConfig<Tick>> {
    let mut config = OutboxConfig::<Tick>::default();
    config.batch_size = 1_000;
    config.poll_interval_secs = 1;
    Arc::new(config)
}

/// The peer's database: created (and dropped) like ours, reached through a
/// pool of the sqlx release the peer is built on.
struct PeerDb {
    /// Keeps the database until the workload ends.
    _db: BenchDb,
    pool: PgPool,
}

async fn peer_db(ctx: &Ctx, label: &str) -> Result<PeerDb> {
    let db = BenchDb::create(&ctx.services, &ctx.run_id, label, 50).await?;
    sqlx::raw_sql(PEER_SCHEMA).execute(&db.pool).await?;
    let pool = peer_sqlx::postgres::PgPoolOptions::new()
        .max_connections(50)
        .acquire_timeout(Duration::from_secs(60))
        .connect(&db.url)
        .await?;
    Ok(PeerDb { _db: db, pool })
}

async fn peer_write(pool: &PgPool, tick: &Tick) -> Result<()> {
    let service = OutboxService::new(Arc::new(PostgresWriter), peer_config());
    let mut tx = pool.begin().await?;
    service
        .add_event(Tick::TYPE, tick.clone(), None, &mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// Runs W5.
pub(crate) async fn run(ctx: &Ctx, report: &mut WorkloadReport) -> Result<()> {
    let o = &ctx.options;
    report.title = "peer: outbox-core + outbox-postgres + outbox-kafka vs ours, Kafka".into();
    report
        .parameters
        .insert("drain_events".into(), o.w5_events.into());
    report
        .parameters
        .insert("rates_per_s".into(), serde_json::json!(o.w3_rates));
    report
        .parameters
        .insert("seconds_per_rate".into(), o.w5_seconds.into());
    ctx.services.check_kafka().await?;

    // Drain.
    let n = o.w5_events;
    let ours_rate = drain_ours(ctx, n).await?;
    let peer_rate = drain_peer(ctx, n).await?;
    ctx.progress.log(format!(
        "W5 drain: ours {ours_rate:.0}/s, peer {peer_rate:.0}/s"
    ));
    report.rows.push(Row::throughput(
        format!("drain {n} pending events to Kafka"),
        ours_rate,
        "outbox-core 0.6",
        peer_rate,
        Some(2.0),
    ));

    // Latency.
    for &r in &o.w3_rates {
        let mut series = Vec::new();
        let ours = latency_ours(ctx, r).await?;
        let (ours_ack, ours_recv) = latency_rows(
            &format!("{r}/s ours"),
            "commit→received",
            ours,
            &mut report.latencies,
            &mut series,
        );
        let peer = latency_peer(ctx, r).await?;
        let (peer_ack, peer_recv) = latency_rows(
            &format!("{r}/s outbox-core"),
            "commit→received",
            peer,
            &mut report.latencies,
            &mut series,
        );
        let lower = |ours: Option<f64>, peer: Option<f64>| match (ours, peer) {
            (Some(o), Some(p)) => Some(o < p),
            (Some(_), None) => Some(true),
            _ => Some(false),
        };
        report.rows.push(
            Row::lower_is_better(
                format!("{r}/s"),
                "p99 commit→ack",
                "ms",
                ours_ack,
                Some(("outbox-core 0.6".into(), peer_ack)),
                None,
            )
            .with_target("lower than peer", lower(ours_ack, peer_ack)),
        );
        report.rows.push(
            Row::lower_is_better(
                format!("{r}/s"),
                "p99 commit→received",
                "ms",
                ours_recv,
                Some(("outbox-core 0.6".into(), peer_recv)),
                None,
            )
            .with_target("lower than peer", lower(ours_recv, peer_recv)),
        );
        let file = format!("w5_kafka_{r}.png");
        latency_distribution(
            &ctx.out.join(&file),
            &format!("W5 Kafka at {r} events/s: ours vs outbox-core, latency from commit"),
            &series,
        )?;
        report.plots.push(file);
    }
    report.notes.push(
        "Both relays run in this process with the same producer settings (idempotent, acks=all, \
         murmur2_random, linger.ms=1); ours with its defaults (batch 1,000, NOTIFY, 1 s fallback poll), the peer with its \
         defaults except batch_size = 1,000 and poll_interval_secs = 1. `commit→received` is timed by the \
         same raw Kafka reader for both. A `–`/`not delivered` percentile means the event at that rank \
         had not arrived within the grace period after the last write."
            .into(),
    );
    report.notes.push(
        "The peer sends one message at a time and awaits each acknowledgement before the next \
         (`OutboxProcessor::event_publish`), so its drain rate is bounded by one producer round trip \
         (including the 1 ms linger) per event; ours pipelines the whole batch."
            .into(),
    );
    Ok(())
}

fn drain_timeout(n: usize) -> Duration {
    Duration::from_secs(120 + n as u64 / 20)
}

async fn drain_ours(ctx: &Ctx, n: usize) -> Result<f64> {
    let db = BenchDb::migrated(&ctx.services, &ctx.run_id, "w5_ours", 6).await?;
    let prefix = format!("bench_{}_w5_ours_", ctx.run_id);
    let publisher = Broker::Kafka.publisher(&ctx.services).await?;
    publisher
        .ensure_destination(&format!("{prefix}{}", Tick::DESTINATION))
        .await?;
    let timeline = Arc::new(Timeline::default());
    let config = RelayConfig {
        destination_prefix: prefix,
        ..RelayConfig::default()
    };
    let store: Arc<dyn RelayStore> = Arc::new(PgRelayStore::new(
        db.another_pool(4).await?,
        config.table.clone(),
    ));
    let relay = InProcessRelay::start(
        store,
        Arc::new(TimedPublisher::new(publisher, Arc::clone(&timeline))),
        config,
    )?;
    let outcome = async {
        relay.wait_ready(&db.pool).await?;
        let bar = ctx.progress.bar("W5 ours fill (one transaction)", n as u64);
        fill_outbox(&db.pool, &ticks(n), &bar).await?;
        ctx.progress.done(&bar);
        let started = Instant::now();
        let bar = ctx.progress.bar("W5 ours drain", n as u64);
        let done = wait_for(
            "W5 ours drain",
            n as u64,
            drain_timeout(n),
            Duration::from_millis(20),
            Some(&bar),
            || async { Ok(timeline.acked()) },
        )
        .await;
        ctx.progress.done(&bar);
        Ok::<_, BenchError>(rate(n as u64, done? - started))
    }
    .await;
    relay.stop().await?;
    outcome
}

async fn drain_peer(ctx: &Ctx, n: usize) -> Result<f64> {
    let db = peer_db(ctx, "w5_peer").await?;
    let topic = format!("bench_{}_w5_peer_{}", ctx.run_id, Tick::DESTINATION);
    Broker::Kafka
        .publisher(&ctx.services)
        .await?
        .ensure_destination(&topic)
        .await?;
    let timeline = Arc::new(Timeline::default());
    let relay = PeerRelay::start(ctx, &db.pool, &topic, Arc::clone(&timeline)).await?;
    let outcome = async {
        let events = ticks(n);
        let bar = ctx.progress.bar("W5 peer fill (one transaction)", n as u64);
        let service = OutboxService::new(Arc::new(PostgresWriter), peer_config());
        let mut tx = db.pool.begin().await?;
        for t in &events {
            service
                .add_event(Tick::TYPE, t.clone(), None, &mut *tx)
                .await?;
            bar.inc(1);
        }
        tx.commit().await?;
        ctx.progress.done(&bar);
        let started = Instant::now();
        let bar = ctx.progress.bar("W5 peer drain", n as u64);
        let done = wait_for(
            "W5 peer drain",
            n as u64,
            drain_timeout(n),
            Duration::from_millis(20),
            Some(&bar),
            || async { Ok(timeline.acked()) },
        )
        .await;
        ctx.progress.done(&bar);
        Ok::<_, BenchError>(rate(n as u64, done? - started))
    }
    .await;
    relay.stop().await;
    outcome
}

async fn latency_ours(ctx: &Ctx, r: u32) -> Result<Latencies> {
    let db = BenchDb::migrated(&ctx.services, &ctx.run_id, &format!("w5_ours_{r}"), 56).await?;
    let prefix = format!("bench_{}_w5_ours_{r}_", ctx.run_id);
    let topic = format!("{prefix}{}", Tick::DESTINATION);
    let publisher = Broker::Kafka.publisher(&ctx.services).await?;
    publisher.ensure_destination(&topic).await?;
    let timeline = Arc::new(Timeline::default());
    let reader =
        raw::kafka_reader(&ctx.services.kafka_brokers, &topic, Arc::clone(&timeline)).await?;
    let config = RelayConfig {
        destination_prefix: prefix,
        ..RelayConfig::default()
    };
    let store: Arc<dyn RelayStore> = Arc::new(PgRelayStore::new(
        db.another_pool(4).await?,
        config.table.clone(),
    ));
    let relay = InProcessRelay::start(
        store,
        Arc::new(TimedPublisher::new(publisher, Arc::clone(&timeline))),
        config,
    )?;
    let outcome = async {
        relay.wait_ready(&db.pool).await?;
        let pool = db.pool.clone();
        let outbox = Outbox::new("urn:bench:w5");
        measure(ctx, &format!("W5 ours {r}/s"), r, &timeline, move |tick| {
            let (pool, outbox) = (pool.clone(), outbox.clone());
            async move {
                let mut tx = pool.begin().await?;
                outbox.publish(&mut tx, &tick).await?;
                tx.commit().await?;
                Ok(())
            }
        })
        .await
    }
    .await;
    relay.stop().await?;
    reader.abort();
    outcome?;
    Ok(timeline.latencies())
}

async fn latency_peer(ctx: &Ctx, r: u32) -> Result<Latencies> {
    let db = peer_db(ctx, &format!("w5_peer_{r}")).await?;
    let topic = format!("bench_{}_w5_peer_{r}_{}", ctx.run_id, Tick::DESTINATION);
    Broker::Kafka
        .publisher(&ctx.services)
        .await?
        .ensure_destination(&topic)
        .await?;
    let timeline = Arc::new(Timeline::default());
    let reader =
        raw::kafka_reader(&ctx.services.kafka_brokers, &topic, Arc::clone(&timeline)).await?;
    let relay = PeerRelay::start(ctx, &db.pool, &topic, Arc::clone(&timeline)).await?;
    let pool = db.pool.clone();
    let outcome = measure(ctx, &format!("W5 peer {r}/s"), r, &timeline, move |tick| {
        let pool = pool.clone();
        async move { peer_write(&pool, &tick).await }
    })
    .await;
    relay.stop().await;
    reader.abort();
    outcome?;
    Ok(timeline.latencies())
}

/// Paced writes through `write`, then a grace period for stragglers.
async fn measure<F, Fut>(
    ctx: &Ctx,
    label: &str,
    r: u32,
    timeline: &Arc<Timeline>,
    write: F,
) -> Result<()>
where
    F: Fn(Tick) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send + 'static,
{
    let seconds = ctx.options.w5_seconds;
    let total = u64::from(r) * seconds;
    let bar = ctx.progress.bar(format!("{label} writes"), total);
    let tl = Arc::clone(timeline);
    let write = Arc::new(write);
    paced(r, seconds, writers_for(r), &bar, move |_| {
        let (tl, write) = (Arc::clone(&tl), Arc::clone(&write));
        async move {
            let tick = Tick::new();
            let key = tick.key;
            write(tick).await?;
            tl.commit(key);
            Ok(())
        }
    })
    .await?;
    ctx.progress.done(&bar);
    let bar = ctx.progress.bar(format!("{label} stragglers"), total);
    let _ = wait_for(
        &format!("{label} received"),
        total,
        grace(ctx.options.quick),
        Duration::from_millis(20),
        Some(&bar),
        || async { Ok(timeline.handled()) },
    )
    .await;
    ctx.progress.done(&bar);
    Ok(())
}
