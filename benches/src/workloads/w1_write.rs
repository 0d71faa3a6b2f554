//! W1, the write path: `Outbox::publish` / `publish_all` inside the caller's
//! transaction, against the same transactions inserting the same bytes into a
//! plain table with hand-written SQL. Runs in the order ours, plain, plain,
//! ours (ABBA) so that drift in the machine's load hits both sides alike.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use eventbus::{Event, Metadata, Outbox};
use indicatif::ProgressBar;
use sqlx::PgPool;
use uuid::Uuid;

use super::Ctx;
use crate::env::BenchDb;
use crate::error::{BenchError, Result};
use crate::event::{ticks, Tick};
use crate::report::{Row, WorkloadReport};

/// Transaction sizes measured.
const TX_SIZES: [usize; 3] = [1, 100, 1_000];
/// Concurrent client tasks measured.
const CLIENTS: [usize; 2] = [1, 8];

/// The plain table of the baseline: a primary key, the same values, no SDK.
const PLAIN_TABLE: &str = "CREATE TABLE bench_plain (
    id            bigserial PRIMARY KEY,
    event_id      uuid NOT NULL,
    destination   text NOT NULL,
    partition_key text NOT NULL,
    event_type    text NOT NULL,
    payload       jsonb NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
)";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Ours,
    Plain,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Ours => "outbox",
            Side::Plain => "plain insert",
        })
    }
}

/// Runs W1.
pub(crate) async fn run(ctx: &Ctx, report: &mut WorkloadReport) -> Result<()> {
    let n = ctx.options.w1_events;
    report.title = "write path: Outbox::publish vs plain insert, same transactions".into();
    let single = ctx.options.w1_single_events;
    report.parameters.insert("events_per_case".into(), n.into());
    report
        .parameters
        .insert("events_per_one_event_case".into(), single.into());
    report
        .parameters
        .insert("transaction_sizes".into(), serde_json::json!(TX_SIZES));
    report
        .parameters
        .insert("client_tasks".into(), serde_json::json!(CLIENTS));
    let db = BenchDb::migrated(&ctx.services, &ctx.run_id, "w1", 10).await?;
    sqlx::query(PLAIN_TABLE).execute(&db.pool).await?;
    let outbox = Outbox::new("urn:bench:w1");

    for tx_size in TX_SIZES {
        for clients in CLIENTS {
            // Two halves per side, in ABBA order.
            let n = if tx_size == 1 { single } else { n };
            let half = (n / 2).div_ceil(tx_size) * tx_size;
            let mut took = [Duration::ZERO; 2];
            for side in [Side::Ours, Side::Plain, Side::Plain, Side::Ours] {
                let events = Arc::new(ticks(half));
                let bar = ctx.progress.bar(
                    format!("W1 {side} tx={tx_size} clients={clients}"),
                    half as u64,
                );
                let elapsed =
                    write_phase(&db.pool, side, &outbox, events, tx_size, clients, &bar).await?;
                ctx.progress.done(&bar);
                took[usize::from(side == Side::Plain)] += elapsed;
            }
            let events = (2 * half) as u64;
            let ours = crate::stats::rate(events, took[0]);
            let plain = crate::stats::rate(events, took[1]);
            let min = if tx_size == 1 { 0.75 } else { 0.85 };
            ctx.progress.log(format!(
                "W1 tx={tx_size:>4} clients={clients}: outbox {ours:>9.0}/s, plain {plain:>9.0}/s, ratio {:.2}",
                ours / plain.max(f64::MIN_POSITIVE)
            ));
            report.rows.push(Row::throughput(
                format!(
                    "{tx_size}-event transactions, {clients} client{}",
                    if clients > 1 { "s" } else { "" }
                ),
                ours,
                "plain insert",
                plain,
                Some(min),
            ));
        }
    }
    let (outbox_bytes, plain_bytes): (i64, i64) = sqlx::query_as(
        "SELECT pg_total_relation_size('eventbus_outbox'), pg_total_relation_size('bench_plain')",
    )
    .fetch_one(&db.pool)
    .await?;
    report.notes.push(format!(
        "Table size after the run (heap + indexes): outbox {:.1} MiB, plain {:.1} MiB for the same events. \
         The outbox row carries more columns (source, headers, schema version, txid, state, attempts) \
         and two more indexes (event_id unique, pending rows), and its insert fires a statement-level NOTIFY trigger.",
        outbox_bytes as f64 / 1_048_576.0,
        plain_bytes as f64 / 1_048_576.0
    ));
    Ok(())
}

/// Writes `events` in transactions of `tx_size` from `clients` tasks; returns
/// the wall time.
async fn write_phase(
    pool: &PgPool,
    side: Side,
    outbox: &Outbox,
    events: Arc<Vec<Tick>>,
    tx_size: usize,
    clients: usize,
    bar: &ProgressBar,
) -> Result<Duration> {
    let chunks = events.len().div_ceil(tx_size);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let (pool, outbox, events, next, bar) = (
            pool.clone(),
            outbox.clone(),
            Arc::clone(&events),
            Arc::clone(&next),
            bar.clone(),
        );
        tasks.spawn(async move {
            loop {
                let c = next.fetch_add(1, Ordering::Relaxed);
                if c >= chunks {
                    return Ok::<_, BenchError>(());
                }
                let chunk = &events[c * tx_size..((c + 1) * tx_size).min(events.len())];
                let mut tx = pool.begin().await?;
                match side {
                    Side::Ours if chunk.len() == 1 => {
                        outbox.publish(&mut tx, &chunk[0]).await?;
                    }
                    Side::Ours => {
                        outbox
                            .publish_all(&mut tx, chunk.iter(), &Metadata::default())
                            .await?;
                    }
                    Side::Plain => plain_insert(&mut tx, chunk).await?,
                }
                tx.commit().await?;
                bar.inc(chunk.len() as u64);
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(started.elapsed())
}

/// The hand-written insert: one `VALUES` row, or one `UNNEST` for a batch.
async fn plain_insert(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    chunk: &[Tick],
) -> Result<()> {
    if let [tick] = chunk {
        sqlx::query(
            "INSERT INTO bench_plain (event_id, destination, partition_key, event_type, payload) \
             VALUES ($1, $2, $3, $4, $5::jsonb)",
        )
        .bind(Uuid::now_v7())
        .bind(Tick::DESTINATION)
        .bind(tick.key.to_string())
        .bind(Tick::TYPE)
        .bind(tick.json()?)
        .execute(&mut **tx)
        .await?;
        return Ok(());
    }
    let ids: Vec<Uuid> = chunk.iter().map(|_| Uuid::now_v7()).collect();
    let destinations = vec![Tick::DESTINATION; chunk.len()];
    let keys: Vec<String> = chunk.iter().map(|t| t.key.to_string()).collect();
    let types = vec![Tick::TYPE; chunk.len()];
    let payloads = chunk.iter().map(Tick::json).collect::<Result<Vec<_>>>()?;
    sqlx::query(
        "INSERT INTO bench_plain (event_id, destination, partition_key, event_type, payload) \
         SELECT i, d, k, t, p::jsonb FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[]) \
         AS u(i, d, k, t, p)",
    )
    .bind(&ids)
    .bind(&destinations)
    .bind(&keys)
    .bind(&types)
    .bind(&payloads)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
