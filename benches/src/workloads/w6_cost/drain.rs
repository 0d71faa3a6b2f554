//! W6's relay processes: started on a bench database, waited for until they
//! share the partitions, timed while they drain.

use std::path::Path;
use std::time::{Duration, Instant};

use sqlx::PgPool;

use super::{backlog, BROKER};
use crate::env::BenchDb;
use crate::error::{BenchError, Result};
use crate::relay_process::RelayProcess;
use crate::stats::rate;
use crate::workloads::Ctx;

/// How often the drains are polled (`/metrics`) and the leases watched.
const POLL: Duration = Duration::from_millis(20);

/// Time allowed for one drain of `rows`.
fn drain_timeout(rows: usize) -> Duration {
    Duration::from_secs(120 + rows as u64 / 500)
}

/// What one run needs from the context, for the three curves.
pub(super) struct Setup<'a> {
    pub(super) ctx: &'a Ctx,
    pub(super) relay_bin: &'a Path,
    pub(super) prefix: String,
}

impl Setup<'_> {
    /// Starts `count` relay processes on `db`; their logs are
    /// `relay-w6-<label>-<i>.log`.
    pub(super) async fn relays(
        &self,
        db: &BenchDb,
        label: &str,
        count: usize,
    ) -> Result<Vec<RelayProcess>> {
        let mut relays = Vec::with_capacity(count);
        for i in 1..=count {
            let log = self.ctx.out.join(format!("relay-w6-{label}-{i}.log"));
            relays.push(
                RelayProcess::start(
                    self.relay_bin,
                    &db.url,
                    &BROKER.relay_url(&self.ctx.services),
                    &self.prefix,
                    &log,
                    &[],
                )
                .await?,
            );
        }
        Ok(relays)
    }

    /// A fresh database for one point of a curve.
    pub(super) async fn db(&self, label: &str) -> Result<BenchDb> {
        BenchDb::migrated(
            &self.ctx.services,
            &self.ctx.run_id,
            &format!("w6_{label}"),
            4,
        )
        .await
    }
}

/// Waits until `relays` together hold every partition, each some; then,
/// with `fill` (payload bytes) writes `rows` rows and starts the clock at
/// the commit, or without it starts the clock at once (the backlog stands).
/// Returns rows/s until their published totals reach `rows`, and the wait.
pub(super) async fn drain_rate(
    pool: &PgPool,
    relays: &mut [RelayProcess],
    rows: usize,
    fill: Option<usize>,
    bar: &indicatif::ProgressBar,
) -> Result<(f64, Duration)> {
    wait_shared(pool, relays).await?;
    let started = match fill {
        Some(bytes) => {
            backlog::fill(pool, rows, bytes).await?;
            Instant::now()
        }
        None => Instant::now(),
    };
    let relays = &*relays;
    let finished = crate::workloads::wait_for(
        "relay drain",
        rows as u64,
        drain_timeout(rows),
        POLL,
        Some(bar),
        || async move {
            let mut total = 0;
            for r in relays {
                total += r.published_total().await?;
            }
            Ok(total)
        },
    )
    .await?;
    let elapsed = finished - started;
    Ok((rate(rows as u64, elapsed), elapsed))
}

/// Waits (60 s at most) until every partition is held, by exactly as many
/// owners as there are `relays`; fails early if one of them exits.
async fn wait_shared(pool: &PgPool, relays: &mut [RelayProcess]) -> Result<()> {
    let timeout = Duration::from_secs(60);
    let deadline = Instant::now() + timeout;
    loop {
        for r in relays.iter_mut() {
            r.check_alive()?;
        }
        let (held, all, owners): (i64, i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE owner IS NOT NULL AND lease_expires_at > now()), count(*), \
                    count(DISTINCT owner) FILTER (WHERE owner IS NOT NULL AND lease_expires_at > now()) \
             FROM eventbus_outbox_partitions",
        )
        .fetch_one(pool)
        .await?;
        if all > 0 && held == all && owners == relays.len() as i64 {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(BenchError::Timeout {
                what: format!(
                    "{} relays sharing the partitions ({held}/{all} held by {owners})",
                    relays.len()
                ),
                after: timeout,
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The largest peak RSS of `relays`, MiB (NaN if unreadable).
pub(super) fn peak_rss_mib(relays: &[RelayProcess]) -> f64 {
    relays
        .iter()
        .filter_map(|r| r.peak_rss_bytes().ok())
        .max()
        .map_or(f64::NAN, |b| b as f64 / 1_048_576.0)
}

/// Stops every relay; the first failure is returned after all were asked.
pub(super) async fn stop_all(relays: Vec<RelayProcess>) -> Result<()> {
    let mut first = Ok(());
    for r in relays {
        if let Err(e) = r.stop().await {
            if first.is_ok() {
                first = Err(e);
            }
        }
    }
    first
}
