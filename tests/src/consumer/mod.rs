//! What the consumer suites share, whatever the broker: the test event's
//! envelope, the `effects` table handlers write their side effects to, a
//! consumer running in a task, and scenarios written once and run on Kafka,
//! RabbitMQ and SQS ([`Broker`]).
//!
//! | module | owns |
//! | --- | --- |
//! | this one | events, effects, running a consumer, batch and rate-limit scenarios |
//! | `broker` | [`Broker`]: destinations, groups, raw messages, backlogs, [`DeadLetters`] |
//! | `counting` | [`Gauge`], [`Counting`]: unsettled messages seen from outside |
//! | `crash` | a worker process SIGKILLed mid-run, in each delivery mode |
//! | `parking` | parked messages: key order behind newer versions and delayed retries, refused dead letters |
//! | `poison` | dead letters and re-driving them |
//! | `given_back` | messages given back to the broker keep their keys' order |
//! | `group` | group commit: a failure inside a group, acknowledgements lost after the commit |
//! | `flow` | the in-flight bound, point-to-point and publish-subscribe groups |

use crate::composed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use eventbus::consumer::{BatchContext, Consumer, Context};
use eventbus::{BoxError, Envelope, Event, OutgoingMessage, Publisher};
use sqlx::{PgPool, Postgres};
use tokio::sync::oneshot;

use crate::relay::Step;
use crate::TestDb;

mod broker;
mod counting;
mod crash;
mod flow;
mod given_back;
mod group;
mod parking;
mod poison;

pub use broker::{Broker, DeadLetters};
pub use counting::{Counting, Gauge};
pub use crash::{
    at_least_once_scenario, at_most_once_scenario, effectively_once_grouped_scenario,
    effectively_once_scenario, CrashOutcome,
};
pub use flow::{backpressure_scenario, groups_scenario, SlowRun};
pub use given_back::given_back_keys_keep_order_scenario;
pub use group::{
    group_commit_failed_commit_scenario, group_commit_failure_scenario,
    group_commit_lost_acks_scenario,
};
pub use parking::{
    delayed_retry_scenario, newer_version_keeps_key_order, newer_version_keeps_key_order_scenario,
    refused_dead_letter_scenario, Refusal, StepV2,
};
pub use poison::poison_scenario;

// ------------------------------------------------------------ events, effects

/// The CloudEvent the outbox would make of `step`.
pub fn envelope(step: &Step) -> Envelope {
    let data = serde_json::to_vec(step).expect("a Step serializes");
    let mut e = Envelope::new("urn:test:consumer", Step::TYPE, data);
    e.partition_key = Some(step.key.clone());
    e.subject = Some(step.key.clone());
    e.dataschema = Some(Step::dataschema());
    e
}

/// Publishes `envelopes` to `destination` in batches of 1,000; panics unless
/// the broker acknowledges every one.
pub async fn publish<P: Publisher + ?Sized>(
    publisher: &P,
    destination: &str,
    envelopes: &[Envelope],
) {
    for chunk in envelopes.chunks(1_000) {
        let batch: Vec<OutgoingMessage> = chunk
            .iter()
            .map(|e| OutgoingMessage {
                destination: destination.to_owned(),
                envelope: e.clone(),
            })
            .collect();
        for (i, result) in publisher
            .publish_batch(&batch)
            .await
            .into_iter()
            .enumerate()
        {
            if let Err(e) = result {
                panic!(
                    "publishing {} to {destination} failed: {e}",
                    batch[i].envelope.id
                );
            }
        }
    }
}

/// Creates the `effects` table: one row per side effect of a handler, with
/// the consumer (`member`) that wrote it; `id` gives the order of writing.
pub async fn create_effects(pool: &PgPool) {
    sqlx::query(
        "CREATE TABLE effects (id bigserial PRIMARY KEY, member text NOT NULL DEFAULT '', \
         key text NOT NULL, seq bigint NOT NULL, event_id text NOT NULL)",
    )
    .execute(pool)
    .await
    .expect("create effects");
}

/// The side effect of handling a step: a row in the handler's transaction.
///
/// # Errors
///
/// The database's, or a `seq` beyond `i64`.
pub async fn record(ctx: &Context<Postgres>, member: &str, step: &Step) -> Result<(), BoxError> {
    let mut tx = ctx.tx().await?;
    sqlx::query("INSERT INTO effects (member, key, seq, event_id) VALUES ($1, $2, $3, $4)")
        .bind(member)
        .bind(&step.key)
        .bind(i64::try_from(step.seq)?)
        .bind(&ctx.envelope().id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// The side effects of a batch: one row per step, in the batch's order, all
/// written by one statement in the batch's transaction.
///
/// # Errors
///
/// The database's, or a `seq` beyond `i64`.
pub async fn record_batch(
    ctx: &BatchContext<Postgres>,
    member: &str,
    steps: &[Step],
) -> Result<(), BoxError> {
    let keys: Vec<&str> = steps.iter().map(|s| s.key.as_str()).collect();
    let seqs = steps
        .iter()
        .map(|s| i64::try_from(s.seq))
        .collect::<Result<Vec<i64>, _>>()?;
    let ids: Vec<&str> = ctx.envelopes().iter().map(|e| e.id.as_str()).collect();
    let mut tx = ctx.tx().await?;
    sqlx::query(
        "INSERT INTO effects (member, key, seq, event_id) \
         SELECT $1, k, s, e FROM UNNEST($2::text[], $3::bigint[], $4::text[]) \
         WITH ORDINALITY AS u(k, s, e, n) ORDER BY n",
    )
    .bind(member)
    .bind(&keys)
    .bind(&seqs)
    .bind(&ids)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Effects of distinct steps.
pub const DISTINCT_EFFECTS: &str = "SELECT count(*) FROM (SELECT DISTINCT key, seq FROM effects) d";
/// Effects in all.
pub const ALL_EFFECTS: &str = "SELECT count(*) FROM effects";
/// Steps with more than one effect.
pub const REPEATED_EFFECTS: &str =
    "SELECT count(*) FROM (SELECT key, seq FROM effects GROUP BY key, seq HAVING count(*) > 1) d";

/// The value of a `SELECT count(*)`-like query.
pub async fn scalar(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(composed(sql))
        .fetch_one(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Waits until `sql` (a count) reaches `target`; panics with the last value
/// after `timeout`. Returns how long it took.
pub async fn wait_count(pool: &PgPool, sql: &str, target: i64, timeout: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let n = scalar(pool, sql).await;
        if n >= target {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < timeout,
            "`{sql}` reached {n} of {target} within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `done()` holds; panics with `what` after `timeout`. Returns
/// how long it took.
pub async fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < timeout, "{what}: not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    start.elapsed()
}

/// The steps of the `effects` rows, in the order they were written.
pub async fn effects_in_order(pool: &PgPool) -> Vec<Step> {
    let rows: Vec<(String, i64)> = sqlx::query_as("SELECT key, seq FROM effects ORDER BY id")
        .fetch_all(pool)
        .await
        .expect("read effects");
    rows.into_iter()
        .map(|(key, seq)| Step {
            key,
            seq: u64::try_from(seq).expect("seq is never negative"),
            pad: String::new(),
        })
        .collect()
}

// ------------------------------------------------------------ running consumers

/// A consumer running in a task of the test, on any database.
#[derive(Debug)]
pub struct Running<DB: sqlx::Database = Postgres> {
    /// The consumer, for its metrics.
    pub consumer: Arc<Consumer<DB>>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<eventbus::Result<()>>,
}

/// Runs `consumer` in a task until [`Running::stop`].
pub fn run<DB>(consumer: Consumer<DB>) -> Running<DB>
where
    DB: eventbus::inbox::InboxDatabase + eventbus::outbox::OutboxDatabase,
{
    let consumer = Arc::new(consumer);
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn({
        let consumer = Arc::clone(&consumer);
        async move {
            consumer
                .run(async {
                    let _ = stopped.await;
                })
                .await
        }
    });
    Running {
        consumer,
        stop: Some(stop),
        task,
    }
}

impl<DB: sqlx::Database> Running<DB> {
    /// Whether the consumer is still running.
    pub fn is_running(&self) -> bool {
        !self.task.is_finished()
    }

    /// Asks the consumer to stop and waits (up to 60 s) for it to leave
    /// cleanly; panics otherwise.
    pub async fn stop(mut self) -> Arc<Consumer<DB>> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(60), &mut self.task)
            .await
            .expect("consumer stops within 60 s")
            .expect("consumer task")
            .expect("consumer closed its subscription cleanly");
        self.consumer
    }
}

// ------------------------------------------------------------ scenarios

/// What [`batch_handler_scenario`] saw, for the suite to print.
#[derive(Debug)]
pub struct BatchRun {
    /// Messages published (events and their copies).
    pub messages: usize,
    /// Calls of the batch handler, failed ones included.
    pub handler_calls: usize,
    /// Batches the consumer formed.
    pub batches: u64,
    /// The largest of them.
    pub largest_batch: u64,
    /// Times a failed batch was split.
    pub splits: u64,
    /// From the consumer's start until every message was settled.
    pub took: Duration,
}

/// A batch handler on `broker`: 2,000 steps over 20 keys on a 4-partition
/// topic (Kafka) or an exchange (RabbitMQ), with a copy of every tenth step
/// published again (same id: 200 redeliveries, half right behind their
/// original, half later), and one poison step whose batches fail.
///
/// Asserts: every good step has exactly one effect and one inbox row; the
/// handler was called far fewer times than there are messages; per key, the
/// effects were written in publication order; the failing batch was split
/// until the poison step stood alone, and only it went to the dead-letter
/// destination, with the handler's error as the reason after the retry
/// policy's three attempts.
///
/// On PostgreSQL; [`crate::suites::consumer::batch_handler`] runs it on any
/// database.
pub async fn batch_handler_scenario(broker: &Broker) -> BatchRun {
    crate::suites::consumer::batch_handler::<TestDb>(broker).await
}

/// `rate_limit(50)` on `broker`: 100 steps, all published before the consumer
/// starts, take at least 1.8 s from the first handler call to the last (99
/// gaps of 20 ms), and no second sees more than 60 handler calls — where
/// without the limit the backlog would go in a burst. Returns the span.
///
/// On PostgreSQL; [`crate::suites::consumer::rate_limit`] runs it on any
/// database.
pub async fn rate_limit_scenario(broker: &Broker) -> Duration {
    crate::suites::consumer::rate_limit::<TestDb>(broker).await
}
