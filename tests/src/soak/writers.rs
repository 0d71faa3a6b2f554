//! The workload: writer tasks that share keys and publish the next steps of
//! an aggregate as a service does — its row locked (`SELECT … FOR UPDATE`)
//! for the next `seq`, the outbox insert, the aggregate's update and the
//! ledger row in one transaction — some taking their transaction id early
//! and pausing before they lock, a few rolling back; and long-running
//! writers of an unrelated table that keep a transaction open for seconds.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::relay::Step;
use eventbus::outbox::Outbox;
use sqlx::PgPool;

use super::faults::Lcg;
use super::{connect, Result};

/// The writers' tables. `aggregates` holds each key's next `seq`: the row
/// writers lock, so that per key `seq` rises in commit order. `ledger` is
/// what committed (written in the publishing transaction, so a rollback or
/// a crash leaves no row for steps that did not commit): the ground truth
/// of what must arrive.
pub(crate) const DDL: [&str; 3] = [
    "CREATE TABLE aggregates (key text PRIMARY KEY, next_seq bigint NOT NULL DEFAULT 0)",
    "CREATE TABLE ledger (key text NOT NULL, seq bigint NOT NULL, PRIMARY KEY (key, seq))",
    "CREATE TABLE unrelated (id bigserial PRIMARY KEY, note text NOT NULL)",
];

/// Keys that half of all transactions pick from: contention, so that
/// writers wait on each other's aggregate locks and a key's steps come from
/// many writers close together.
const HOT_KEYS: usize = 4;
/// Longest pause of a writer between taking its transaction id and locking
/// the aggregate.
const EARLY_PAUSE: Duration = Duration::from_millis(200);
/// Share of transactions that roll back after writing everything.
const ROLLBACK_SHARE: f64 = 0.04;
/// Longest time a long-running writer keeps its transaction open.
const LONG_OPEN: Duration = Duration::from_secs(3);

/// What the writers did, for the summary line.
#[derive(Debug, Default)]
pub(crate) struct WriterStats {
    /// Committed transactions that published steps.
    pub(crate) commits: AtomicU64,
    /// Of those, how many took their transaction id before locking.
    pub(crate) early_xid: AtomicU64,
    /// Transactions rolled back on purpose.
    pub(crate) rollbacks: AtomicU64,
    /// Transactions that failed (a fault), with an unknown or no commit.
    pub(crate) failed: AtomicU64,
    /// Long transactions of the unrelated writers, committed or not.
    pub(crate) long: AtomicU64,
}

/// Creates the tables and one aggregate row per key.
pub(crate) async fn prepare(pool: &PgPool, keys: &[String]) -> Result<()> {
    for ddl in DDL {
        sqlx::query(ddl).execute(pool).await?;
    }
    sqlx::query("INSERT INTO aggregates (key) SELECT unnest($1::text[])")
        .bind(keys)
        .execute(pool)
        .await?;
    Ok(())
}

/// How a transaction starts before it locks its first aggregate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Start {
    /// Its first write is the outbox insert's aggregate: the id comes late.
    Late,
    /// `SELECT pg_current_xact_id()`, then a pause.
    XidQuery,
    /// A write to an unrelated table (an audit row, say), then a pause.
    UnrelatedWrite,
}

/// One transaction of an aggregate writer.
#[derive(Debug)]
struct Plan {
    start: Start,
    pause: Duration,
    /// (key index, steps) in key-index order: writers lock in one order, so
    /// they never deadlock on each other.
    keys: Vec<(usize, u64)>,
    rollback: bool,
}

impl Plan {
    fn random(rng: &mut Lcg, keys: usize) -> Plan {
        let start = match rng.below(4) {
            0 => Start::XidQuery,
            1 => Start::UnrelatedWrite,
            _ => Start::Late,
        };
        let mut picked: Vec<(usize, u64)> = Vec::new();
        for _ in 0..1 + rng.below(3) {
            let k = if rng.chance(0.5) {
                rng.below(HOT_KEYS.min(keys) as u64)
            } else {
                rng.below(keys as u64)
            } as usize;
            if !picked.iter().any(|(p, _)| *p == k) {
                picked.push((k, 1 + rng.below(4)));
            }
        }
        picked.sort_unstable();
        Plan {
            start,
            pause: rng.upto(EARLY_PAUSE),
            keys: picked,
            rollback: rng.chance(ROLLBACK_SHARE),
        }
    }

    fn steps(&self) -> u64 {
        self.keys.iter().map(|(_, n)| n).sum()
    }
}

/// An aggregate writer: transactions of 1 to 3 keys (half of them from the
/// hot keys), 1 to 4 steps each, at about `per_second` steps a second,
/// until `stop`. A transaction that fails is not retried: the ledger, in
/// the same transaction, says what committed.
pub(crate) async fn aggregate_writer(
    db: String,
    keys: Arc<Vec<String>>,
    per_second: f64,
    mut rng: Lcg,
    stats: Arc<WriterStats>,
    stop: Arc<AtomicBool>,
) -> Result<()> {
    let outbox = Outbox::new("urn:test:soak");
    let mut pool = None;
    // Paced by a schedule, not by a pause after each transaction, so that
    // the pauses and lock waits inside transactions do not lower the rate.
    let mut due = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        let pool = match &pool {
            Some(p) => p,
            None => match connect(&db, 2).await {
                Ok(p) => pool.insert(p),
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            },
        };
        let plan = Plan::random(&mut rng, keys.len());
        match transact(pool, &outbox, &keys, &plan).await {
            Ok(()) if plan.rollback => {
                stats.rollbacks.fetch_add(1, Ordering::Relaxed);
            }
            Ok(()) => {
                stats.commits.fetch_add(1, Ordering::Relaxed);
                if plan.start != Start::Late {
                    stats.early_xid.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(_) => {
                stats.failed.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        due += Duration::from_secs_f64(plan.steps() as f64 / per_second);
        // After an outage, carry on at the rate rather than catch up at once.
        if let Some(floor) = Instant::now().checked_sub(Duration::from_secs(1)) {
            due = due.max(floor);
        }
        tokio::time::sleep_until(due.into()).await;
    }
    Ok(())
}

async fn transact(pool: &PgPool, outbox: &Outbox, keys: &[String], plan: &Plan) -> Result<()> {
    let mut tx = pool.begin().await?;
    match plan.start {
        Start::Late => {}
        Start::XidQuery => {
            sqlx::query("SELECT pg_current_xact_id()::text")
                .fetch_one(&mut *tx)
                .await?;
        }
        Start::UnrelatedWrite => {
            sqlx::query("INSERT INTO unrelated (note) VALUES ('before the aggregate')")
                .execute(&mut *tx)
                .await?;
        }
    }
    if plan.start != Start::Late {
        // Holding an id while others lock, write and commit the same keys.
        tokio::time::sleep(plan.pause).await;
    }
    for &(k, n) in &plan.keys {
        let key = &keys[k];
        let next: i64 =
            sqlx::query_scalar("SELECT next_seq FROM aggregates WHERE key = $1 FOR UPDATE")
                .bind(key)
                .fetch_one(&mut *tx)
                .await?;
        for i in 0..n {
            let seq = next + i64::try_from(i)?;
            let step = Step {
                key: key.clone(),
                seq: u64::try_from(seq)?,
                pad: String::new(),
            };
            outbox.publish(&mut tx, &step).await?;
            sqlx::query("INSERT INTO ledger (key, seq) VALUES ($1, $2)")
                .bind(key)
                .bind(seq)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("UPDATE aggregates SET next_seq = $2 WHERE key = $1")
            .bind(key)
            .bind(next + i64::try_from(n)?)
            .execute(&mut *tx)
            .await?;
    }
    if plan.rollback {
        tx.rollback().await?;
    } else {
        tx.commit().await?;
    }
    Ok(())
}

/// A long-running writer of an unrelated table: now and then it opens a
/// writing transaction and keeps it open for up to a few seconds, holding
/// back the database's oldest running transaction id while the aggregate
/// writers commit around it.
pub(crate) async fn long_writer(
    db: String,
    mut rng: Lcg,
    stats: Arc<WriterStats>,
    stop: Arc<AtomicBool>,
) -> Result<()> {
    let mut pool = None;
    while !stop.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(100) + rng.upto(Duration::from_millis(900))).await;
        let pool = match &pool {
            Some(p) => p,
            None => match connect(&db, 1).await {
                Ok(p) => pool.insert(p),
                Err(_) => continue,
            },
        };
        let open = rng.upto(LONG_OPEN);
        let outcome: Result<()> = async {
            let mut tx = pool.begin().await?;
            sqlx::query("INSERT INTO unrelated (note) VALUES ('long-running')")
                .execute(&mut *tx)
                .await?;
            tokio::time::sleep(open).await;
            tx.commit().await?;
            Ok(())
        }
        .await;
        // A database crash ends it like any other: nothing to count.
        let _ = outcome;
        stats.long.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}
