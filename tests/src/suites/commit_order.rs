//! The relay's ordering promise under interleavings, on any database: every
//! committed event is published, and per key in commit order — with writers
//! that take their transaction id before their outbox insert, long unrelated
//! writers holding the horizon back, and a broker failure reported after
//! later events of the key were already sent. Histories are judged by
//! [`crate::history::check`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use eventbus::transport::rabbitmq::lapin::message::Delivery;
use eventbus::transport::rabbitmq::{envelope_from_delivery, RabbitPublisher};
use eventbus::transport::PublishError;
use eventbus::{Event as _, Outbox};
use futures::future::BoxFuture;
use sqlx::{MySql, Postgres, Sqlite};

use crate::backend::TestDatabase;
use crate::failing_publisher::FailsOnce;
use crate::history::{check, Event, History};
use crate::mysql::TestMySql;
use crate::rabbitmq::TestQueue;
use crate::relay::{spawn_relay_on, test_config, RunningRelay, Step};
use crate::sqlite::TestSqlite;
use crate::suites::relay::wait_drained;
use crate::{amqp_url, unique_name, TestDb};

/// Sets the seed of [`random_interleavings_keep_commit_order_per_key`], to
/// replay a failing run's workload.
pub const SEED_VAR: &str = "EVENTBUS_INTERLEAVING_SEED";
/// Overrides the number of rounds of
/// [`random_interleavings_keep_commit_order_per_key`].
pub const ROUNDS_VAR: &str = "EVENTBUS_INTERLEAVING_ROUNDS";

/// A database's connection type.
type Conn<D> = <<D as TestDatabase>::DB as sqlx::Database>::Connection;

/// What the interleaving scenarios need of a database beyond
/// [`TestDatabase`]: how a writer locks its aggregate and how a transaction
/// becomes a writer without touching the outbox.
pub trait Interleavings: TestDatabase {
    /// The statement opening a writer's transaction, when not the default
    /// (SQLite: `BEGIN IMMEDIATE`, so the aggregate read holds the lock).
    const BEGIN_WRITE: Option<&'static str> = None;

    /// Statements that make an open transaction a writer (PostgreSQL: it gets
    /// its transaction id) without touching the outbox or the aggregates.
    const OPEN_WRITE: &'static [&'static str] = &[UNRELATED_WRITE];

    /// Whether writers of different rows run at once (not SQLite's single
    /// writer), which the deterministic interleaving needs.
    const CONCURRENT_WRITERS: bool = true;

    /// How long a long-running unrelated writer holds its transaction open,
    /// at most.
    const LONG_HOLD: Duration = Duration::from_millis(1500);

    /// Locks the row of aggregate `key` (`SELECT … FOR UPDATE`; on SQLite the
    /// `BEGIN IMMEDIATE` transaction holds the lock) and returns its next `seq`.
    fn lock_aggregate<'c>(
        conn: &'c mut Conn<Self>,
        key: &'c str,
    ) -> BoxFuture<'c, sqlx::Result<i64>>;
}

const UNRELATED_WRITE: &str = "INSERT INTO unrelated (note) VALUES ('unrelated')";

impl Interleavings for TestDb {
    const OPEN_WRITE: &'static [&'static str] = &["SELECT pg_current_xact_id()", UNRELATED_WRITE];

    fn lock_aggregate<'c>(
        conn: &'c mut sqlx::PgConnection,
        key: &'c str,
    ) -> BoxFuture<'c, sqlx::Result<i64>> {
        Box::pin(async move {
            sqlx::query_scalar::<Postgres, i64>(
                "SELECT next_seq FROM aggregates WHERE agg_key = $1 FOR UPDATE",
            )
            .bind(key)
            .fetch_one(conn)
            .await
        })
    }
}

impl Interleavings for TestMySql {
    fn lock_aggregate<'c>(
        conn: &'c mut sqlx::MySqlConnection,
        key: &'c str,
    ) -> BoxFuture<'c, sqlx::Result<i64>> {
        Box::pin(async move {
            sqlx::query_scalar::<MySql, i64>(
                "SELECT next_seq FROM aggregates WHERE agg_key = ? FOR UPDATE",
            )
            .bind(key)
            .fetch_one(conn)
            .await
        })
    }
}

impl Interleavings for TestSqlite {
    const BEGIN_WRITE: Option<&'static str> = Some("BEGIN IMMEDIATE");
    const CONCURRENT_WRITERS: bool = false;
    // Every writer waits for it: keep it well under the busy timeout.
    const LONG_HOLD: Duration = Duration::from_millis(300);

    fn lock_aggregate<'c>(
        conn: &'c mut sqlx::SqliteConnection,
        key: &'c str,
    ) -> BoxFuture<'c, sqlx::Result<i64>> {
        Box::pin(async move {
            sqlx::query_scalar::<Sqlite, i64>("SELECT next_seq FROM aggregates WHERE agg_key = ?1")
                .bind(key)
                .fetch_one(conn)
                .await
        })
    }
}

/// Creates the aggregate table (one row per key, holding its next `seq`) and
/// a table unrelated writers write to.
async fn create_tables<D: TestDatabase>(db: &D) {
    for sql in [
        "CREATE TABLE aggregates (agg_key VARCHAR(100) PRIMARY KEY, next_seq BIGINT NOT NULL)",
        "CREATE TABLE unrelated (note VARCHAR(100) NOT NULL)",
    ] {
        db.execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}

async fn begin_write<D: Interleavings>(
    pool: &sqlx::Pool<D::DB>,
) -> sqlx::Result<sqlx::Transaction<'static, D::DB>> {
    match D::BEGIN_WRITE {
        Some(statement) => pool.begin_with(statement).await,
        None => pool.begin().await,
    }
}

/// A fresh exchange under a unique destination prefix, a queue bound to it
/// (one queue: the broker's order is the order it was published in) and a
/// publisher: (publisher, prefix, queue).
pub(crate) async fn rabbit(tag: &str) -> (Arc<RabbitPublisher>, String, TestQueue) {
    let prefix = format!("{}.", unique_name(tag));
    let queue = TestQueue::bind_all(&format!("{prefix}{}", Step::DESTINATION)).await;
    let publisher = RabbitPublisher::connect(&amqp_url().await)
        .await
        .expect("connect to RabbitMQ");
    (Arc::new(publisher), prefix, queue)
}

pub(crate) fn relay_on<D: TestDatabase>(
    db: &D,
    publisher: Arc<dyn eventbus::Publisher>,
    prefix: &str,
) -> RunningRelay {
    spawn_relay_on(D::relay_store(db.pool()), publisher, test_config(prefix))
}

pub(crate) fn step(key: &str, seq: u64) -> Step {
    Step {
        key: key.into(),
        seq,
        pad: String::new(),
    }
}

/// The history events of broker deliveries, in delivery order.
fn delivered(deliveries: &[Delivery]) -> Vec<Event> {
    deliveries
        .iter()
        .map(|d| {
            let envelope = envelope_from_delivery(&d.properties, &d.data)
                .unwrap_or_else(|e| panic!("not a CloudEvent: {e}"));
            let s: Step = serde_json::from_slice(&envelope.data).expect("a Step");
            Event::new(s.key, s.seq, envelope.id)
        })
        .collect()
}

/// Reads the queue until the outbox is drained, every event of `history`
/// has arrived at least once, and nothing more comes for a second; appends
/// what arrived to `history.delivered`.
pub(crate) async fn read_until_quiet<D: TestDatabase>(
    db: &D,
    queue: &mut TestQueue,
    history: &mut History,
    timeout: Duration,
) {
    let deadline = Instant::now() + timeout;
    loop {
        let got = delivered(&queue.try_read(10_000, Duration::from_secs(1)).await);
        let quiet = got.is_empty();
        history.delivered.extend(got);
        let ids: std::collections::HashSet<&str> =
            history.delivered.iter().map(|e| e.id.as_str()).collect();
        let complete = history
            .committed
            .iter()
            .all(|e| ids.contains(e.id.as_str()));
        if quiet && complete && crate::suites::relay::pending(db).await == 0 {
            return;
        }
        if Instant::now() > deadline {
            return; // the checker reports what is missing
        }
    }
}

// ------------------------------------------------------------ deterministic

/// Issue 15, item 1. W2 writes an unrelated row first (on PostgreSQL it
/// gets the oldest transaction id); Z opens a writing transaction and stays
/// open; W1 inserts event 0 of key `k` and commits; W2 inserts event 1 of `k`
/// and commits; the relay runs throughout and has three seconds to claim
/// while Z is open; then Z commits. Event 0 was committed first: it must
/// reach the broker first.
///
/// Needs writers that run at once ([`Interleavings::CONCURRENT_WRITERS`]):
/// under SQLite's single writer the transactions cannot interleave like this.
pub async fn an_early_transaction_id_does_not_let_a_later_event_overtake<D: Interleavings>() {
    assert!(
        D::CONCURRENT_WRITERS,
        "{}: this interleaving needs concurrent writers",
        D::NAME
    );
    let db = D::migrated().await;
    create_tables(&db).await;
    let (publisher, prefix, mut queue) = rabbit("early_xid").await;
    let relay = relay_on(&db, publisher, &prefix);
    let writers = db.connect().await;
    let outbox = Outbox::new("urn:test:commit-order");

    let mut w2 = begin_write::<D>(&writers).await.expect("begin W2");
    D::execute_in(&mut w2, UNRELATED_WRITE)
        .await
        .expect("W2 writes an unrelated row");
    let mut z = begin_write::<D>(&writers).await.expect("begin Z");
    D::execute_in(&mut z, UNRELATED_WRITE)
        .await
        .expect("Z writes an unrelated row");
    let mut w1 = begin_write::<D>(&writers).await.expect("begin W1");
    let id0 = outbox
        .publish(&mut w1, &step("k", 0))
        .await
        .expect("W1 publishes k#0");
    w1.commit().await.expect("commit W1");
    let id1 = outbox
        .publish(&mut w2, &step("k", 1))
        .await
        .expect("W2 publishes k#1");
    w2.commit().await.expect("commit W2");

    let while_open = delivered(&queue.try_read(2, Duration::from_secs(3)).await);
    println!(
        "{}: delivered while Z was open: {:?}",
        D::NAME,
        while_open
            .iter()
            .map(|e| format!("{}#{}", e.key, e.seq))
            .collect::<Vec<_>>()
    );
    z.commit().await.expect("commit Z");

    let mut history = History {
        committed: vec![
            Event::new("k", 0, id0.to_string()),
            Event::new("k", 1, id1.to_string()),
        ],
        delivered: while_open,
    };
    read_until_quiet(&db, &mut queue, &mut history, Duration::from_secs(30)).await;
    let verdict = check(&history);
    assert!(verdict.is_valid(), "{}: {verdict}", D::NAME);
    wait_drained(&db, Duration::from_secs(10)).await;
    relay.stop().await;
    queue.delete().await;
}

// ------------------------------------------------------------ randomized

/// A small deterministic generator (SplitMix64): the workload's decisions
/// replay from the seed (the scheduler's do not).
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    async fn pause(&mut self, max: Duration) {
        let ms = self.below(u64::try_from(max.as_millis()).unwrap_or(u64::MAX) + 1);
        if ms > 0 {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
    }
}

/// The shape of one round of [`random_interleavings_keep_commit_order_per_key`].
#[derive(Debug, Clone, Copy)]
struct Workload {
    keys: u64,
    writers: u64,
    writes_per_writer: u64,
    long_writers: u64,
    /// Longest pause between a writer's statements.
    max_pause: Duration,
}

const WORKLOAD: Workload = Workload {
    keys: 3,
    writers: 6,
    writes_per_writer: 12,
    long_writers: 2,
    max_pause: Duration::from_millis(20),
};

fn env_u64(var: &str) -> Option<u64> {
    let value = std::env::var(var).ok()?;
    Some(
        value
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("{var}={value:?} is not a number: {e}")),
    )
}

/// Issue 15, the randomized interleaving test. Each round, writer tasks share
/// a few keys; each write locks its aggregate's row, takes the next `seq`,
/// publishes it and bumps the row, some taking their transaction id early
/// with an unrelated write, with random pauses; long-running unrelated
/// writers hold writing transactions open for random durations; one relay
/// publishes throughout to one RabbitMQ queue. After each round the whole
/// history must be valid: per key, broker order = commit order of the
/// aggregate's writes (seq order), nothing missing, redeliveries only as
/// [`crate::history`] allows.
///
/// The seed is printed; set [`SEED_VAR`] to replay a workload and
/// [`ROUNDS_VAR`] to run more rounds than `rounds`.
pub async fn random_interleavings_keep_commit_order_per_key<D: Interleavings>(rounds: u64) {
    let seed = env_u64(SEED_VAR).unwrap_or_else(|| uuid::Uuid::new_v4().as_u64_pair().0);
    let rounds = env_u64(ROUNDS_VAR).unwrap_or(rounds);
    println!(
        "{}: {rounds} rounds, seed {seed} (replay: {SEED_VAR}={seed})",
        D::NAME
    );

    let db = D::migrated().await;
    create_tables(&db).await;
    let (publisher, prefix, mut queue) = rabbit("interleavings").await;
    let relay = relay_on(&db, publisher, &prefix);
    let writers = db.connect().await;
    let mut history = History::default();

    for round in 0..rounds {
        let started = Instant::now();
        let round_seed = Rng(seed ^ round.wrapping_mul(0xA076_1D64_78BD_642F)).next_u64();
        let keys: Vec<String> = (0..WORKLOAD.keys)
            .map(|k| format!("r{round}-k{k}"))
            .collect();
        for key in &keys {
            db.execute(&format!(
                "INSERT INTO aggregates (agg_key, next_seq) VALUES ('{key}', 0)"
            ))
            .await
            .expect("insert aggregate");
        }
        let done = Arc::new(AtomicBool::new(false));
        let long: Vec<_> = (0..WORKLOAD.long_writers)
            .map(|i| {
                let rng = Rng(round_seed ^ (1000 + i));
                tokio::spawn(long_writer::<D>(writers.clone(), rng, Arc::clone(&done)))
            })
            .collect();
        let tasks: Vec<_> = (0..WORKLOAD.writers)
            .map(|i| {
                let rng = Rng(round_seed ^ i);
                tokio::spawn(writer::<D>(writers.clone(), rng, keys.clone()))
            })
            .collect();
        for task in tasks {
            history.committed.extend(task.await.expect("writer task"));
        }
        done.store(true, Ordering::Relaxed);
        let mut long_writes = 0;
        for task in long {
            long_writes += task.await.expect("long writer task");
        }

        read_until_quiet(&db, &mut queue, &mut history, Duration::from_secs(60)).await;
        let verdict = check(&history);
        println!(
            "{} round {round}: {long_writes} long writes, {verdict}, {:?}",
            D::NAME,
            started.elapsed()
        );
        assert!(
            verdict.is_valid(),
            "{} round {round} (replay: {SEED_VAR}={seed}): {verdict}",
            D::NAME
        );
    }
    relay.stop().await;
    queue.delete().await;
}

/// One writer: `writes_per_writer` writes to random keys of `keys`; returns
/// the committed ones. A write that fails (deadlock, busy) is rolled back
/// and tried again.
async fn writer<D: Interleavings>(
    pool: sqlx::Pool<D::DB>,
    mut rng: Rng,
    keys: Vec<String>,
) -> Vec<Event> {
    let mut committed = Vec::new();
    let outbox = Outbox::new("urn:test:commit-order");
    for _ in 0..WORKLOAD.writes_per_writer {
        let index = usize::try_from(rng.below(keys.len() as u64)).unwrap_or(0);
        let key = &keys[index];
        let early = rng.chance(50);
        let mut failures = 0;
        loop {
            match write_once::<D>(&pool, &outbox, &mut rng, key, early).await {
                Ok(event) => {
                    committed.push(event);
                    break;
                }
                Err(e) => {
                    failures += 1;
                    assert!(failures < 20, "{}: a write failed 20 times: {e}", D::NAME);
                }
            }
        }
    }
    committed
}

async fn write_once<D: Interleavings>(
    pool: &sqlx::Pool<D::DB>,
    outbox: &Outbox,
    rng: &mut Rng,
    key: &str,
    early: bool,
) -> Result<Event, String> {
    let pause = WORKLOAD.max_pause;
    let mut tx = begin_write::<D>(pool).await.map_err(|e| e.to_string())?;
    if early {
        let index = usize::try_from(rng.below(D::OPEN_WRITE.len() as u64)).unwrap_or(0);
        D::execute_in(&mut tx, D::OPEN_WRITE[index])
            .await
            .map_err(|e| e.to_string())?;
        rng.pause(pause).await;
    }
    let seq = D::lock_aggregate(&mut tx, key)
        .await
        .map_err(|e| e.to_string())?;
    let seq = u64::try_from(seq).map_err(|e| e.to_string())?;
    rng.pause(pause).await;
    let id = outbox
        .publish(&mut tx, &step(key, seq))
        .await
        .map_err(|e| e.to_string())?;
    let bump = format!("UPDATE aggregates SET next_seq = next_seq + 1 WHERE agg_key = '{key}'");
    D::execute_in(&mut tx, &bump)
        .await
        .map_err(|e| e.to_string())?;
    rng.pause(pause).await;
    tx.commit().await.map_err(|e| e.to_string())?;
    Ok(Event::new(key, seq, id.to_string()))
}

/// Holds writing transactions that touch neither the outbox nor the
/// aggregates open for random durations until `done`; returns how many it
/// committed.
async fn long_writer<D: Interleavings>(
    pool: sqlx::Pool<D::DB>,
    mut rng: Rng,
    done: Arc<AtomicBool>,
) -> u64 {
    let mut count = 0;
    while !done.load(Ordering::Relaxed) {
        rng.pause(D::LONG_HOLD / 4).await;
        let Ok(mut tx) = begin_write::<D>(&pool).await else {
            continue;
        };
        let index = usize::try_from(rng.below(D::OPEN_WRITE.len() as u64)).unwrap_or(0);
        if D::execute_in(&mut tx, D::OPEN_WRITE[index]).await.is_err() {
            continue;
        }
        rng.pause(D::LONG_HOLD).await;
        if tx.commit().await.is_ok() {
            count += 1;
        }
    }
    count
}

// ------------------------------------------------------------ late failure

/// Commits `events` in one transaction; returns the history's committed half.
pub(crate) async fn commit_at_once<D: TestDatabase>(db: &D, events: &[Step]) -> History {
    let outbox = Outbox::new("urn:test:commit-order");
    let mut tx = db.pool().begin().await.expect("begin");
    let ids = outbox
        .publish_all(&mut tx, events, &eventbus::Metadata::default())
        .await
        .expect("publish");
    tx.commit().await.expect("commit");
    History {
        committed: events
            .iter()
            .zip(&ids)
            .map(|(s, id)| Event::new(s.key.clone(), s.seq, id.to_string()))
            .collect(),
        delivered: Vec::new(),
    }
}

/// Issue 15, item 2. Key `k` has events 0..6 and key `other` 0..3, claimed
/// in one batch; the broker reports `failure` for `k#2` (the first time
/// only) while `k#3..` of the same batch are accepted. After that batch,
/// nothing later of `k` may be acknowledged: its rows from `k#2` on stay
/// pending (`other` is acknowledged). At the end, every event has arrived
/// and the last delivery of each is in commit order: a compacted view ends
/// on the latest event of every key.
pub async fn a_failure_reported_late_holds_back_the_rest_of_its_key<D: TestDatabase>(
    failure: PublishError,
) {
    const FAILING: u64 = 2;
    let db = D::migrated().await;
    let (inner, prefix, mut queue) = rabbit("late_failure").await;
    let publisher = Arc::new(FailsOnce::new(inner, "k", FAILING, failure.clone()));

    let events: Vec<Step> = (0..6)
        .map(|s| step("k", s))
        .chain((0..3).map(|s| step("other", s)))
        .collect();
    let mut history = commit_at_once(&db, &events).await;

    let relay = relay_on(
        &db,
        Arc::clone(&publisher) as Arc<dyn eventbus::Publisher>,
        &prefix,
    );
    // The relay's next send comes after it recorded the failing batch.
    publisher.wait_next_batch(Duration::from_secs(30)).await;
    let later = publisher.later_in_failing_batch();
    assert_eq!(
        later,
        [3, 4, 5],
        "k#3.. were sent in the failing batch (else the scenario proves nothing)"
    );
    let sql = format!(
        "SELECT {} FROM eventbus_outbox WHERE state = 'pending' ORDER BY id",
        D::json_text("payload")
    );
    // The failing batch's acknowledged rows are deleted in the background
    // (the pipeline, ADR 14): give that a moment, then judge what stayed.
    let deadline = Instant::now() + Duration::from_secs(5);
    let pending = loop {
        let pending: Vec<String> = db
            .texts(&sql)
            .await
            .into_iter()
            .flatten()
            .map(|p| {
                let s: Step = serde_json::from_str(&p).expect("a Step");
                format!("{}#{}", s.key, s.seq)
            })
            .collect();
        if Instant::now() > deadline || !pending.iter().any(|p| p.starts_with("other#")) {
            break pending;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    publisher.resume();

    read_until_quiet(&db, &mut queue, &mut history, Duration::from_secs(30)).await;
    let verdict = check(&history);
    // Both judged before failing, so a failure shows the pending rows and
    // what the broker ended with.
    let held_back = pending == ["k#2", "k#3", "k#4", "k#5"];
    assert!(
        held_back && verdict.keeps_last_values(),
        "{}, {failure:?}: after the failing batch, pending rows were {pending:?} \
         (k's rows from k#2 on must stay pending); final history: {verdict}",
        D::NAME
    );
    wait_drained(&db, Duration::from_secs(10)).await;
    relay.stop().await;
    queue.delete().await;
}
