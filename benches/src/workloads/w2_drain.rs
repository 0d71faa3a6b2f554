//! W2, relay drain: a backlog of pending events drained by the
//! `outbox-relay` process to Kafka and to RabbitMQ, against (a) a raw
//! producer sending the same messages with the same durability and (b) a
//! database-only loop claiming and deleting the same rows. Also the relay's
//! peak RSS and CPU seconds per 10k events.

use std::time::{Duration, Instant};

use eventbus::OutboxRecord;
use sqlx::{PgPool, Row as _};

use super::{fill_outbox, Broker, Ctx};
use crate::cpu;
use crate::env::BenchDb;
use crate::error::{BenchError, Result};
use crate::event::{messages, ticks, DEFAULT_SOURCE};
use crate::raw;
use crate::relay_process::{locate, RelayProcess};
use crate::report::{Row, WorkloadReport};
use crate::stats::rate;

/// Rows the database-only loop claims per round: the relay's default batch.
const BATCH: i64 = 1_000;

/// Time allowed for one drain.
fn drain_timeout(events: usize) -> Duration {
    Duration::from_secs(120 + events as u64 / 500)
}

/// Runs W2.
pub(crate) async fn run(ctx: &Ctx, report: &mut WorkloadReport) -> Result<()> {
    let n = ctx.options.w2_events;
    report.title =
        "relay drain: outbox-relay process vs raw producer and database-only loop".into();
    report.parameters.insert("pending_events".into(), n.into());
    report
        .parameters
        .insert("relay_batch_size".into(), 1000.into());
    let relay_bin = locate(ctx.relay_bin.as_deref())?;
    ctx.progress
        .log(format!("W2 relay binary: {}", relay_bin.display()));

    // (b) The database alone, once: it does not depend on the broker.
    let db_rate = database_only(ctx, n).await?;
    ctx.progress
        .log(format!("W2 database-only claim+delete: {db_rate:.0}/s"));

    for &broker in &ctx.options.brokers {
        broker.check(&ctx.services).await?;
        let prefix = format!("bench_{}_w2_", ctx.run_id);
        let destination = format!("{prefix}ticks");
        // The destination exists before the relay starts: Kafka topics are not
        // auto-created here, RabbitMQ needs a queue to keep the messages.
        let mut rabbit = None;
        match broker {
            Broker::Kafka => {
                broker
                    .publisher(&ctx.services)
                    .await?
                    .ensure_destination(&destination)
                    .await?;
            }
            Broker::RabbitMq => {
                let (conn, channel) = raw::rabbit_channel(&ctx.services.amqp_url).await?;
                raw::rabbit_sink(&channel, &destination).await?;
                rabbit = Some((conn, channel));
            }
        }

        // Ours: the relay process, pipelined (the default), then one stage
        // after the other (`--pipeline false`) on a fresh copy of the backlog.
        let piped = drain(ctx, broker, &relay_bin, &prefix, n, true).await?;
        let sequential = drain(ctx, broker, &relay_bin, &prefix, n, false).await?;
        let ours = piped.rate;
        let (cpu, rss, publishing, batches, left) = (
            piped.cpu,
            piped.rss,
            piped.publishing,
            piped.batches,
            piped.left,
        );
        let drain_elapsed = piped.elapsed;
        let events = ticks(n);

        // (a) The raw producer, same messages, same durability.
        let msgs = messages(&events, &destination)?;
        drop(events);
        let bar = ctx
            .progress
            .bar(format!("W2 {} raw producer", broker.name()), n as u64);
        // Warmed up like the relay: connected, producer id obtained, metadata known.
        let warm = messages(&ticks(1), &destination)?;
        let hidden = indicatif::ProgressBar::hidden();
        let elapsed = match broker {
            Broker::Kafka => {
                let producer = raw::kafka_producer(&ctx.services.kafka_brokers)?;
                raw::kafka_send_all(&producer, &warm, &hidden).await?;
                let started = Instant::now();
                raw::kafka_send_all(&producer, &msgs, &bar).await?;
                started.elapsed()
            }
            Broker::RabbitMq => {
                let (_, channel) = rabbit
                    .as_ref()
                    .ok_or_else(|| BenchError::Broker("no RabbitMQ channel".into()))?;
                raw::rabbit_send_all(channel, &warm, &hidden).await?;
                let started = Instant::now();
                raw::rabbit_send_all(channel, &msgs, &bar).await?;
                started.elapsed()
            }
        };
        let raw_rate = rate(n as u64, elapsed);
        ctx.progress.done(&bar);
        if let Some((conn, channel)) = rabbit {
            raw::rabbit_drop_sink(&channel, &destination).await?;
            let _ = conn.close(200, "done".into()).await;
        }
        ctx.progress.log(format!(
            "W2 {} raw producer: {raw_rate:.0}/s",
            broker.name()
        ));

        let bound = 1.0 / (1.0 / raw_rate + 1.0 / db_rate);
        let slower = raw_rate.min(db_rate);
        let b = broker.name();
        report.rows.push(Row::throughput(
            format!("{b}: drain vs combined bound B"),
            ours,
            format!("B = 1/(1/{raw_rate:.0} + 1/{db_rate:.0})"),
            bound,
            None,
        ));
        report.rows.push(Row::throughput(
            format!("{b}: drain vs slower baseline"),
            ours,
            if raw_rate < db_rate {
                "raw producer"
            } else {
                "database-only loop"
            },
            slower,
            None,
        ));
        // The targets of the pipelined relay: what it drains against what the
        // broker takes from a raw producer with the same durability.
        let target = match broker {
            Broker::Kafka => 0.45,
            Broker::RabbitMq => 0.9,
        };
        report.rows.push(Row::throughput(
            format!("{b}: raw producer alone"),
            ours,
            "raw producer",
            raw_rate,
            Some(target),
        ));
        report.rows.push(Row::throughput(
            format!("{b}: sequential relay (--pipeline false) ÷ raw producer"),
            sequential.rate,
            "raw producer",
            raw_rate,
            None,
        ));
        report.rows.push(Row::throughput(
            format!("{b}: pipelined ÷ sequential relay"),
            ours,
            "the same relay, --pipeline false",
            sequential.rate,
            None,
        ));
        report.rows.push(Row::throughput(
            format!("{b}: database-only loop alone"),
            ours,
            "claim + delete, no broker",
            db_rate,
            None,
        ));
        report.rows.push(Row::lower_is_better(
            format!("{b}: relay process"),
            "peak RSS",
            "MiB",
            Some(rss as f64 / 1_048_576.0),
            None,
            Some(64.0),
        ));
        report.rows.push(Row::lower_is_better(
            format!("{b}: relay process"),
            "CPU per 10k events",
            "s",
            Some(cpu / n as f64 * 10_000.0),
            None,
            None,
        ));
        report.notes.push(format!(
            "{}: the relay drained {n} events in {:.1} s in {batches:.0} batches; {:.1} s of it \
             ({:.0}%) waiting for the broker's acknowledgements (claims and deletes overlap the \
             sends). Sequential (`--pipeline false`): {:.1} s, {:.1} s ({:.0}%) waiting for the \
             broker, the rest claiming, deleting and building messages one batch after the other.",
            broker.name(),
            drain_elapsed.as_secs_f64(),
            publishing,
            100.0 * publishing / drain_elapsed.as_secs_f64(),
            sequential.elapsed.as_secs_f64(),
            sequential.publishing,
            100.0 * sequential.publishing / sequential.elapsed.as_secs_f64(),
        ));
        report.notes.push(format!(
            "{b}: CPU per event during the drain, pipelined: relay {:.1} µs, PostgreSQL {:.1} µs, \
             broker {:.1} µs; sequential: relay {:.1} µs, PostgreSQL {:.1} µs, broker {:.1} µs \
             (from `/proc`; PostgreSQL and the broker serve only this drain then).",
            piped.cpu * 1e6 / n as f64,
            piped.others.postgres,
            piped.others.broker,
            sequential.cpu * 1e6 / n as f64,
            sequential.others.postgres,
            sequential.others.broker,
        ));
        if left != 0 {
            report.notes.push(format!(
                "{b}: {left} rows were left in the outbox after the drain."
            ));
        }
    }
    report.notes.push(
        "The backlog is written in one transaction while the relay is already running and holds \
         every partition; the clock starts at the commit and stops when the relay's \
         `eventbus_relay_published_total` reaches the count (polled every 50 ms)."
            .into(),
    );
    report.notes.push(
        "Baseline (b) runs one loop on a fresh copy of the backlog: `SELECT` the relay's columns of \
         the oldest 1,000 pending rows, decode them, `DELETE … WHERE id = ANY($1)`, until none is left."
            .into(),
    );
    Ok(())
}

/// One relay drain of a fresh backlog of `n` events.
struct Drained {
    rate: f64,
    elapsed: Duration,
    cpu: f64,
    /// CPU µs per event in PostgreSQL and the broker during the drain.
    others: cpu::Sample,
    rss: u64,
    /// Seconds spent waiting for the broker's acknowledgements.
    publishing: f64,
    batches: f64,
    /// Rows left in the outbox after the drain.
    left: i64,
}

/// Starts the relay process (`pipeline` on or off) on a fresh database,
/// writes `n` events in one transaction and times the drain from the commit.
async fn drain(
    ctx: &Ctx,
    broker: Broker,
    relay_bin: &std::path::Path,
    prefix: &str,
    n: usize,
    pipeline: bool,
) -> Result<Drained> {
    let side = if pipeline { "pipelined" } else { "sequential" };
    let db = BenchDb::migrated(
        &ctx.services,
        &ctx.run_id,
        &format!("w2_{}_{side}", broker.name()),
        4,
    )
    .await?;
    let log = ctx
        .out
        .join(format!("relay-w2-{}-{side}.log", broker.name()));
    let flag = if pipeline { "true" } else { "false" };
    let mut relay = RelayProcess::start(
        relay_bin,
        &db.url,
        &broker.relay_url(&ctx.services),
        prefix,
        &log,
        &["--pipeline", flag],
    )
    .await?;
    relay.wait_ready(&db.pool).await?;
    let events = ticks(n);
    let bar = ctx.progress.bar(
        format!("W2 {} fill (one transaction)", broker.name()),
        n as u64,
    );
    fill_outbox(&db.pool, &events, &bar).await?;
    drop(events);
    ctx.progress.done(&bar);
    let cpu_before = relay.cpu_seconds()?;
    let others_before = cpu::Sample::now();
    let started = Instant::now();
    let bar = ctx.progress.bar(
        format!("W2 {} relay drain ({side})", broker.name()),
        n as u64,
    );
    let finished = super::wait_for(
        "relay drain",
        n as u64,
        drain_timeout(n),
        Duration::from_millis(50),
        Some(&bar),
        || relay.published_total(),
    )
    .await;
    ctx.progress.done(&bar);
    let finished = match finished {
        Ok(at) => at,
        Err(e) => {
            let _ = relay.stop().await;
            return Err(e);
        }
    };
    let cpu = relay.cpu_seconds()? - cpu_before;
    let others = cpu::Sample::now().micros_per(&others_before, n as u64);
    let rss = relay.peak_rss_bytes()?;
    // Where the drain time went: waiting for the broker vs the rest
    // (claiming, acknowledging in the database, building messages).
    let publishing = relay
        .metric("eventbus_relay_publish_latency_seconds_sum")
        .await
        .unwrap_or(f64::NAN);
    let batches = relay
        .metric("eventbus_relay_batches_total")
        .await
        .unwrap_or(f64::NAN);
    relay.stop().await?;
    let elapsed = finished - started;
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM eventbus_outbox")
        .fetch_one(&db.pool)
        .await?;
    let rate = rate(n as u64, elapsed);
    ctx.progress.log(format!(
        "W2 {} relay ({side}): {rate:.0}/s, {cpu:.1} CPU s, peak RSS {:.1} MiB, {left} rows left; \
         per event {:.1} µs CPU in PostgreSQL, {:.1} µs in the broker",
        broker.name(),
        rss as f64 / 1_048_576.0,
        others.postgres,
        others.broker,
    ));
    Ok(Drained {
        rate,
        elapsed,
        cpu,
        others,
        rss,
        publishing,
        batches,
        left,
    })
}

/// Baseline (b): claim and delete the backlog with plain SQL, no broker.
async fn database_only(ctx: &Ctx, n: usize) -> Result<f64> {
    let db = BenchDb::migrated(&ctx.services, &ctx.run_id, "w2_db", 2).await?;
    let bar = ctx.progress.bar("W2 database-only fill", n as u64);
    fill_outbox(&db.pool, &ticks(n), &bar).await?;
    ctx.progress.done(&bar);
    let bar = ctx.progress.bar("W2 database-only claim+delete", n as u64);
    let started = Instant::now();
    let done = claim_and_delete_all(&db.pool, &bar).await?;
    let elapsed = started.elapsed();
    ctx.progress.done(&bar);
    if done != n as u64 {
        return Err(BenchError::Broker(format!(
            "the database-only loop found {done} rows, expected {n}"
        )));
    }
    Ok(rate(n as u64, elapsed))
}

async fn claim_and_delete_all(pool: &PgPool, bar: &indicatif::ProgressBar) -> Result<u64> {
    let mut done = 0u64;
    loop {
        let rows = sqlx::query(
            "SELECT id, event_id, source, destination, partition_key, partition, event_type, \
                    schema_version, subject, headers, payload, created_at, attempts \
             FROM eventbus_outbox WHERE state = 'pending' ORDER BY id LIMIT $1",
        )
        .bind(BATCH)
        .fetch_all(pool)
        .await?;
        if rows.is_empty() {
            return Ok(done);
        }
        let mut ids = Vec::with_capacity(rows.len());
        for row in &rows {
            // Decode what the relay decodes, so the loop pays the same client work.
            let record = OutboxRecord {
                id: row.try_get("id")?,
                event_id: row.try_get("event_id")?,
                source: row.try_get("source")?,
                destination: row.try_get("destination")?,
                partition_key: row.try_get("partition_key")?,
                partition: row.try_get("partition")?,
                event_type: row.try_get("event_type")?,
                schema_version: row.try_get("schema_version")?,
                subject: row.try_get("subject")?,
                headers: row.try_get("headers")?,
                payload: row.try_get::<serde_json::Value, _>("payload")?.to_string(),
                created_at: row.try_get("created_at")?,
                attempts: row.try_get("attempts")?,
                defect: None,
            };
            let _ = record.to_envelope(DEFAULT_SOURCE);
            ids.push(record.id);
        }
        sqlx::query("DELETE FROM eventbus_outbox WHERE id = ANY($1)")
            .bind(&ids)
            .execute(pool)
            .await?;
        done += ids.len() as u64;
        bar.set_position(done);
    }
}
