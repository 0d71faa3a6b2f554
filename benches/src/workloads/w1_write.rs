//! W1, the write path: `Outbox::publish` / `publish_all` inside the caller's
//! transaction, against the same transactions writing the same values with
//! hand-written SQL, twice: into a plain table (what the outbox contract
//! costs) and into the outbox table itself, as a service in another language
//! writes it (what the SDK adds on top of the contract). Runs in the order
//! ours, outbox SQL, plain, plain, outbox SQL, ours, so that every side has
//! the same mean position: drift in the machine's load, and the growth of the
//! outbox table the first two share, hit all three alike.

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

/// The CloudEvents source of every row, ours and the hand-written ones.
const SOURCE: &str = "urn:bench:w1";

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
    /// `Outbox::publish` / `publish_all`.
    Ours,
    /// Hand-written SQL into the outbox table (`docs/outbox-table.md`).
    OutboxSql,
    /// Hand-written SQL into the plain table.
    Plain,
}

impl Side {
    /// Each side runs two halves, in a palindrome.
    const ORDER: [Side; 6] = [
        Side::Ours,
        Side::OutboxSql,
        Side::Plain,
        Side::Plain,
        Side::OutboxSql,
        Side::Ours,
    ];

    fn index(self) -> usize {
        match self {
            Side::Ours => 0,
            Side::OutboxSql => 1,
            Side::Plain => 2,
        }
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Ours => "SDK",
            Side::OutboxSql => "outbox SQL",
            Side::Plain => "plain insert",
        })
    }
}

/// Baseline name of the hand-written outbox insert in the report.
const OUTBOX_SQL: &str = "hand-written outbox SQL";
/// Baseline name of the plain table's insert in the report.
const PLAIN: &str = "plain insert";

/// Runs W1.
pub(crate) async fn run(ctx: &Ctx, report: &mut WorkloadReport) -> Result<()> {
    let n = ctx.options.w1_events;
    report.title =
        "write path: Outbox::publish vs hand-written SQL into the outbox table and into a plain table, same transactions"
            .into();
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
    let outbox = Outbox::new(SOURCE);

    for tx_size in TX_SIZES {
        for clients in CLIENTS {
            let n = if tx_size == 1 { single } else { n };
            let half = (n / 2).div_ceil(tx_size) * tx_size;
            let mut took = [Duration::ZERO; 3];
            for side in Side::ORDER {
                let events = Arc::new(ticks(half));
                let bar = ctx.progress.bar(
                    format!("W1 {side} tx={tx_size} clients={clients}"),
                    half as u64,
                );
                let elapsed =
                    write_phase(&db.pool, side, &outbox, events, tx_size, clients, &bar).await?;
                ctx.progress.done(&bar);
                took[side.index()] += elapsed;
            }
            let events = (2 * half) as u64;
            let [ours, outbox_sql, plain] = took.map(|elapsed| crate::stats::rate(events, elapsed));
            let ratio = |a: f64, b: f64| a / b.max(f64::MIN_POSITIVE);
            let min = if tx_size == 1 { 0.75 } else { 0.85 };
            ctx.progress.log(format!(
                "W1 tx={tx_size:>4} clients={clients}: SDK {ours:>9.0}/s, outbox SQL {outbox_sql:>9.0}/s, \
                 plain {plain:>9.0}/s; SDK/plain {:.2}, SDK/outbox SQL {:.2}, outbox SQL/plain {:.2}",
                ratio(ours, plain),
                ratio(ours, outbox_sql),
                ratio(outbox_sql, plain),
            ));
            let case = format!(
                "{tx_size}-event transactions, {clients} client{}",
                if clients > 1 { "s" } else { "" }
            );
            // The contract and the SDK together: the target.
            report
                .rows
                .push(Row::throughput(&case, ours, PLAIN, plain, Some(min)));
            // What the SDK adds to the contract's own cost.
            report
                .rows
                .push(Row::throughput(&case, ours, OUTBOX_SQL, outbox_sql, None));
            // The contract's cost without the SDK: two baselines side by side.
            report.rows.push(
                Row::throughput(&case, outbox_sql, PLAIN, plain, None).with_ours_name(OUTBOX_SQL),
            );
        }
    }
    same_rows(&db.pool).await?;
    let (outbox_rows, outbox_bytes, plain_rows, plain_bytes): (i64, i64, i64, i64) =
        sqlx::query_as(
            "SELECT (SELECT count(*) FROM eventbus_outbox), pg_total_relation_size('eventbus_outbox'), \
                    (SELECT count(*) FROM bench_plain), pg_total_relation_size('bench_plain')",
        )
        .fetch_one(&db.pool)
        .await?;
    let per_row = |bytes: i64, rows: i64| bytes as f64 / rows.max(1) as f64;
    report.notes.push(format!(
        "Table size after the run (heap + indexes): outbox {:.1} MiB for {outbox_rows} rows \
         (ours and the hand-written outbox SQL's), {:.0} bytes a row; plain {:.1} MiB for {plain_rows} rows, \
         {:.0} bytes a row. The outbox row carries more columns (source, headers, schema version, txid, state, attempts) \
         and two more indexes (event_id unique, pending rows), and its insert fires a statement-level NOTIFY trigger.",
        outbox_bytes as f64 / 1_048_576.0,
        per_row(outbox_bytes, outbox_rows),
        plain_bytes as f64 / 1_048_576.0,
        per_row(plain_bytes, plain_rows),
    ));
    report.notes.push(format!(
        "The {OUTBOX_SQL} writes the columns a service in another language writes \
         (docs/outbox-table.md): event_id (a UUIDv7 made by the client), source, destination, \
         partition_key, event_type, subject (the key, as the SDK writes it) and payload, with one VALUES row for one event and one UNNEST \
         statement for a batch; the rest are the table's defaults. Checked after the run: its rows \
         and ours agree in every column but the ids and times."
    ));
    Ok(())
}

/// Source, destination, event type, schema version, subject = key, headers,
/// state: what every outbox row of W1 carries alike.
type SharedColumns = (Option<String>, String, String, i32, bool, String, String);

/// Fails unless every outbox row, ours or hand-written, carries the same
/// values where both sides mean the same (all but ids, keys, payloads, times;
/// the subject is the key):
/// otherwise the ratio between them would compare different rows.
async fn same_rows(pool: &PgPool) -> Result<()> {
    let variants: Vec<SharedColumns> = sqlx::query_as(
        "SELECT DISTINCT source, destination, event_type, schema_version, \
                    subject IS NOT DISTINCT FROM partition_key, headers::text, state \
             FROM eventbus_outbox LIMIT 3",
    )
    .fetch_all(pool)
    .await?;
    if variants.len() != 1 {
        return Err(BenchError::BaselineDiffers(format!(
            "the outbox rows of the SDK and of the hand-written SQL differ in (source, destination, \
             event_type, schema_version, subject = partition_key, headers, state): {variants:?}"
        )));
    }
    let (outbox_rows, plain_rows): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM eventbus_outbox), (SELECT count(*) FROM bench_plain)",
    )
    .fetch_one(pool)
    .await?;
    if outbox_rows != 2 * plain_rows {
        return Err(BenchError::BaselineDiffers(format!(
            "{outbox_rows} outbox rows (SDK and hand-written) for {plain_rows} plain rows; expected twice as many"
        )));
    }
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
                    Side::OutboxSql => outbox_sql_insert(&mut tx, chunk).await?,
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

/// The hand-written outbox insert of `docs/outbox-table.md`, as a service in
/// another language writes it: one `VALUES` row, or one `UNNEST` for a batch.
/// It sets what `Outbox::publish` sets for a `Tick` (the subject is the key,
/// as `Event::subject` defaults) and leaves the columns whose defaults equal
/// the SDK's values (schema version 1, empty headers, `created_at`) to the
/// table.
async fn outbox_sql_insert(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    chunk: &[Tick],
) -> Result<()> {
    if let [tick] = chunk {
        sqlx::query(
            "INSERT INTO eventbus_outbox \
             (event_id, source, destination, partition_key, event_type, subject, payload) \
             VALUES ($1, $2, $3, $4, $5, $4, $6::jsonb)",
        )
        .bind(Uuid::now_v7())
        .bind(SOURCE)
        .bind(Tick::DESTINATION)
        .bind(tick.key.to_string())
        .bind(Tick::TYPE)
        .bind(tick.json()?)
        .execute(&mut **tx)
        .await?;
        return Ok(());
    }
    let ids: Vec<Uuid> = chunk.iter().map(|_| Uuid::now_v7()).collect();
    let sources = vec![SOURCE; chunk.len()];
    let destinations = vec![Tick::DESTINATION; chunk.len()];
    let keys: Vec<String> = chunk.iter().map(|t| t.key.to_string()).collect();
    let types = vec![Tick::TYPE; chunk.len()];
    let payloads = chunk.iter().map(Tick::json).collect::<Result<Vec<_>>>()?;
    sqlx::query(
        "INSERT INTO eventbus_outbox \
         (event_id, source, destination, partition_key, event_type, subject, payload) \
         SELECT i, s, d, k, t, k, p::jsonb \
         FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[]) \
         AS u(i, s, d, k, t, p)",
    )
    .bind(&ids)
    .bind(&sources)
    .bind(&destinations)
    .bind(&keys)
    .bind(&types)
    .bind(&payloads)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
