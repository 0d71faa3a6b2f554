//! The checker: after the faults stop, waits for the backlog to drain and
//! reads the history from the database — the ledger (what committed) and
//! the consumers' effects — into what was lost, applied twice or out of
//! order.

use crate::composed;
use std::time::{Duration, Instant};

use sqlx::PgPool;

use super::faults::Supervised;
use super::Result;

/// How long the effects may stay unchanged once no outbox row is pending
/// before the rest counts as lost: the consumers' retries back off for at
/// most 2 s and a restarted consumer subscribes within a few.
const QUIET: Duration = Duration::from_secs(15);

/// What the history shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Findings {
    /// Committed steps (ledger rows).
    pub(crate) committed: i64,
    /// Committed steps with no effect.
    pub(crate) lost: i64,
    /// Effects beyond the first of a step.
    pub(crate) duplicates: i64,
    /// Steps applied when their key's last applied step was not the one
    /// before.
    pub(crate) order_violations: i64,
    /// Outbox rows the relays parked as `failed`.
    pub(crate) parked: i64,
}

impl Findings {
    /// Whether the history breaks a promise (or holds nothing to judge).
    pub(crate) fn failed(&self) -> bool {
        self.lost + self.duplicates + self.order_violations > 0 || self.committed == 0
    }
}

/// Waits until every ledger row has an effect (restarting processes that
/// died), for as long as the effects keep growing: it gives up after
/// `stall` without progress, or after [`QUIET`] without progress once no
/// outbox row is pending (nothing left for the relays to send).
pub(crate) async fn wait_drained(
    pool: &PgPool,
    processes: &mut [&mut Supervised],
    stall: Duration,
) -> Result<()> {
    let mut last = (-1, Instant::now());
    loop {
        for s in processes.iter_mut() {
            s.ensure();
        }
        let ledger = scalar(pool, "SELECT count(*) FROM ledger").await?;
        let applied = scalar(
            pool,
            "SELECT count(*) FROM (SELECT DISTINCT key, seq FROM effects) e",
        )
        .await?;
        if applied >= ledger {
            return Ok(());
        }
        if applied > last.0 {
            last = (applied, Instant::now());
        } else {
            let pending = scalar(
                pool,
                "SELECT count(*) FROM eventbus_outbox WHERE state = 'pending'",
            )
            .await?;
            let waited = last.1.elapsed();
            if waited > stall || (pending == 0 && waited > QUIET) {
                eprintln!(
                    "soak: no progress for {:.0} s ({pending} outbox rows pending): \
                     {applied} of {ledger} committed steps applied",
                    waited.as_secs_f64()
                );
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Reads the findings from the history. Fails if the ledger disagrees with
/// the aggregates (a key's steps not numbered 0, 1, … up to its next
/// `seq`): then the harness, not the relay, is wrong.
pub(crate) async fn check(pool: &PgPool) -> Result<Findings> {
    let inconsistent = scalar(
        pool,
        "SELECT count(*) FROM aggregates a \
         LEFT JOIN (SELECT key, count(*) AS n, max(seq) AS top FROM ledger GROUP BY key) l \
         ON l.key = a.key \
         WHERE a.next_seq <> coalesce(l.n, 0) OR a.next_seq <> coalesce(l.top + 1, 0)",
    )
    .await?;
    if inconsistent > 0 {
        return Err(format!(
            "the ledger disagrees with the aggregates for {inconsistent} keys: the harness is wrong"
        )
        .into());
    }
    Ok(Findings {
        committed: scalar(pool, "SELECT count(*) FROM ledger").await?,
        lost: scalar(
            pool,
            "SELECT count(*) FROM ledger l WHERE NOT EXISTS \
             (SELECT 1 FROM effects e WHERE e.key = l.key AND e.seq = l.seq)",
        )
        .await?,
        duplicates: scalar(
            pool,
            "SELECT coalesce(sum(n - 1), 0)::bigint FROM \
             (SELECT count(*) AS n FROM effects GROUP BY key, seq HAVING count(*) > 1) d",
        )
        .await?,
        order_violations: scalar(pool, "SELECT count(*) FROM order_violations").await?,
        parked: scalar(
            pool,
            "SELECT count(*) FROM eventbus_outbox WHERE state = 'failed'",
        )
        .await?,
    })
}

/// A few of the order violations, for the log: which key, which step came,
/// and which had come before.
pub(crate) async fn violation_samples(pool: &PgPool, n: i64) -> Result<Vec<String>> {
    let rows: Vec<(String, i64, Option<i64>)> =
        sqlx::query_as("SELECT key, seq, previous FROM order_violations LIMIT $1")
            .bind(n)
            .fetch_all(pool)
            .await?;
    Ok(rows
        .into_iter()
        .map(|(key, seq, previous)| match previous {
            Some(p) => format!("{key}: {seq} after {p}"),
            None => format!("{key}: {seq} first"),
        })
        .collect())
}

pub(crate) async fn scalar(pool: &PgPool, sql: &str) -> Result<i64> {
    Ok(sqlx::query_scalar(composed(sql)).fetch_one(pool).await?)
}

/// The effects of the first key with an order violation around it, oldest
/// first, as `seq at member event`: when each step was applied and by which
/// consumer process, to tell after the run how the violation came about.
pub(crate) async fn violation_history(pool: &PgPool) -> Result<Vec<String>> {
    let first: Option<(String, i64)> =
        sqlx::query_as("SELECT key, seq FROM order_violations ORDER BY seq LIMIT 1")
            .fetch_optional(pool)
            .await?;
    let Some((key, seq)) = first else {
        return Ok(Vec::new());
    };
    let rows: Vec<(i64, String, Option<i64>, Option<String>)> = sqlx::query_as(
        "SELECT seq, to_char(at AT TIME ZONE 'UTC', 'HH24:MI:SS.MS'), member, event_id \
         FROM effects WHERE key = $1 AND seq BETWEEN $2 - 12 AND $2 + 12 ORDER BY at",
    )
    .bind(&key)
    .bind(seq)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(seq, at, member, event)| {
            format!(
                "{key} {seq} at {at} by {} (event {})",
                member.unwrap_or_default(),
                event.unwrap_or_default()
            )
        })
        .collect())
}
