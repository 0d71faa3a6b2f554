//! Durable attempt counting (issue 16): a message whose handler kills the
//! process is dead-lettered after the retry policy's attempts, counted in the
//! consumer's database across restarts, while the other messages flow. Run
//! on RabbitMQ and PostgreSQL with the `consumer_abort` worker
//! (tests/src/bin/consumer_abort.rs), restarted by the test whenever it dies.

use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use eventbus::consumer::dead_letter;
use eventbus::inbox::AttemptsDatabase;
use eventbus::{Envelope, TableName};
use eventbus_tests::consumer::{
    create_effects, envelope, publish, scalar, Broker, ALL_EFFECTS, DISTINCT_EFFECTS,
    REPEATED_EFFECTS,
};
use eventbus_tests::harness::{spawn_ready, stop_cleanly};
use eventbus_tests::mysql::TestMySql;
use eventbus_tests::relay::steps;
use eventbus_tests::sqlite::TestSqlite;
use eventbus_tests::{unique_name, TestDatabase, TestDb};

/// The worker binary: aborts the process on a step whose `pad` is `abort`.
const WORKER: &str = env!("CARGO_BIN_EXE_consumer_abort");

/// The retry policy's attempts in all (the first and two immediate retries).
const MAX_ATTEMPTS: u32 = 3;

/// How often the poisoned event may kill the worker: its first attempt ran
/// beside other messages and is not held against it (any of them may have
/// killed the process); then it runs alone, `MAX_ATTEMPTS` times.
const RUNS: u32 = MAX_ATTEMPTS + 1;

/// Starts the worker with a handler of `kind` (`one` or `batch`) and waits
/// until it says it is consuming.
async fn start(
    broker: &Broker,
    db: &TestDb,
    group: &str,
    destination: &str,
    kind: &str,
) -> tokio::process::Child {
    let mut command = tokio::process::Command::new(WORKER);
    command
        .arg(&db.url)
        .arg(broker.worker_url())
        .args([group, destination])
        .arg(MAX_ATTEMPTS.to_string())
        .arg(kind);
    spawn_ready(command, "consumer_abort").await
}

/// SIGINT, then a clean exit within 60 s.
async fn interrupt(mut child: tokio::process::Child) {
    stop_cleanly(&mut child, "INT", Duration::from_secs(60)).await;
}

/// 300 events over 10 keys, one of which makes the handler abort the
/// process. The test restarts the worker each time it dies. The poisoned
/// event takes down exactly `RUNS` processes, then lands in the dead
/// letters with its attempt count, without its handler running again;
/// every other event takes effect exactly once, and no attempt count is left.
///
/// Before durable attempts, the count lived in the dying process: the
/// poisoned event came back after each restart and aborted it, forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_message_that_aborts_the_process_is_dead_lettered_after_its_attempts() {
    aborting_message_scenario("one").await;
}

/// The same with a batch handler: the batch holding the poisoned event dies
/// with it; its messages' counts say so, and next time they go one by one,
/// the poisoned one alone, until it is dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_message_that_aborts_a_batch_handler_is_dead_lettered_after_its_attempts() {
    aborting_message_scenario("batch").await;
}

/// 300 events, one of them aborting the worker's handler of `kind`.
async fn aborting_message_scenario(kind: &str) {
    let broker = Broker::rabbitmq().await;
    let db = TestDb::migrated().await;
    create_effects(&db.pool).await;
    let (destination, publisher) = broker.destination("attempts", 1).await;
    let group = unique_name("attempts_group");
    broker.prepare_group(&group, &destination).await;
    let dead_letters = broker
        .dead_letters(&destination, &group, publisher.as_ref())
        .await;

    let mut all: Vec<Envelope> = Vec::new();
    let mut poisoned = None;
    for (i, mut step) in steps(300, 10).into_iter().enumerate() {
        if i == 55 {
            step.pad = "abort".into();
        }
        let event = envelope(&step);
        if i == 55 {
            poisoned = Some(event.clone());
        }
        all.push(event);
    }
    let poisoned = poisoned.expect("one poisoned event");
    let good = i64::try_from(all.len() - 1).expect("fits");
    publish(publisher.as_ref(), &destination, &all).await;

    let deadline = Instant::now() + Duration::from_secs(120);
    let mut aborts = 0;
    let survivor = loop {
        let mut worker = start(&broker, &db, &group, &destination, kind).await;
        let died = loop {
            if let Some(status) = worker.try_wait().expect("worker status") {
                break Some(status);
            }
            if scalar(&db.pool, ALL_EFFECTS).await >= good
                && broker.backlog(&group, &destination, 0).await == 0
            {
                break None;
            }
            assert!(
                Instant::now() < deadline,
                "within 120 s the events did not all settle ({} effects of {good}, {aborts} aborts)",
                scalar(&db.pool, ALL_EFFECTS).await
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let Some(status) = died else {
            break worker;
        };
        assert_eq!(
            status.signal(),
            Some(6),
            "the worker dies only by the handler's abort (SIGABRT): {status}"
        );
        aborts += 1;
        assert!(
            aborts <= RUNS,
            "the poisoned event aborted the consumer {aborts} times with a retry policy of \
             {MAX_ATTEMPTS} attempts: it is never dead-lettered ({} effects of {good})",
            scalar(&db.pool, ALL_EFFECTS).await
        );
    };
    interrupt(survivor).await;

    assert_eq!(
        aborts, RUNS,
        "the poisoned event ran exactly as often as the policy allows"
    );
    let letters = dead_letters.read(1).await;
    let letter = &letters[0];
    let (origin, original) = dead_letter::original(letter).expect("a dead letter of an event");
    assert_eq!(origin, destination);
    assert_eq!(
        original.id, poisoned.id,
        "the poisoned event is the dead letter"
    );
    assert_eq!(
        letter
            .extensions
            .get(dead_letter::ATTEMPTS)
            .map(String::as_str),
        Some(RUNS.to_string().as_str()),
        "the letter carries the attempts counted across processes"
    );
    assert_eq!(
        letter
            .extensions
            .get(dead_letter::GROUP)
            .map(String::as_str),
        Some(group.as_str())
    );
    let reason = letter
        .extensions
        .get(dead_letter::REASON)
        .cloned()
        .unwrap_or_default();
    assert!(
        reason.contains(&format!("{RUNS} attempts without success")),
        "the reason says why: {reason}"
    );

    assert_eq!(
        scalar(&db.pool, ALL_EFFECTS).await,
        good,
        "one effect per good event"
    );
    assert_eq!(scalar(&db.pool, DISTINCT_EFFECTS).await, good);
    assert_eq!(scalar(&db.pool, REPEATED_EFFECTS).await, 0);
    let poisoned_effects: i64 =
        sqlx::query_scalar("SELECT count(*) FROM effects WHERE event_id = $1")
            .bind(&poisoned.id)
            .fetch_one(&db.pool)
            .await
            .expect("count the poisoned event's effects");
    assert_eq!(poisoned_effects, 0);
    let left: i64 =
        sqlx::query_scalar("SELECT count(*) FROM eventbus_inbox_attempts WHERE consumer = $1")
            .bind(&group)
            .fetch_one(&db.pool)
            .await
            .expect("count attempt rows");
    assert_eq!(
        left, 0,
        "handled and dead-lettered messages leave no attempt count"
    );
    broker.clean_up(&[&group], &[&destination]).await;
}

/// One more attempt at `envelope`, on a connection of `pool`.
async fn record<DB: AttemptsDatabase>(
    pool: &sqlx::Pool<DB>,
    inbox: &TableName,
    group: &str,
    envelope: &eventbus::Envelope,
) -> u32 {
    let mut conn = pool.acquire().await.expect("a connection");
    DB::record_attempt(&mut conn, inbox, group, envelope)
        .await
        .expect("record an attempt")
}

/// The attempts table on `D`, as the consumer uses it: counts rise by one per
/// attempt across pools (processes), a count taken back is not counted, the
/// last failure noted is kept, and a forgotten count starts again at one;
/// groups and messages are counted apart.
async fn counts_survive_and_start_again<D: TestDatabase>()
where
    D::DB: AttemptsDatabase,
{
    let db = D::migrated().await;
    let inbox = TableName::parse(eventbus::inbox::DEFAULT_TABLE).expect("table name");
    let one = envelope(&steps(1, 1)[0]);
    let other = envelope(&steps(1, 1)[0]);
    let first = db.pool();
    let second = db.connect().await;
    for (pool, expected) in [(first, 1), (&second, 2), (first, 3)] {
        let n = record::<D::DB>(pool, &inbox, "g", &one).await;
        assert_eq!(n, expected);
    }
    assert_eq!(record::<D::DB>(first, &inbox, "other-group", &one).await, 1);
    assert_eq!(record::<D::DB>(first, &inbox, "g", &other).await, 1);
    let mut conn = first.acquire().await.expect("a connection");
    D::DB::uncount_attempt(&mut conn, &inbox, "g", &one)
        .await
        .expect("uncount");
    drop(conn);
    assert_eq!(
        D::DB::last_failure(first, &inbox, "g", &one)
            .await
            .expect("read"),
        None
    );
    D::DB::note_failure(&second, &inbox, "g", &one, "attempt 3: boom")
        .await
        .expect("note");
    assert_eq!(
        D::DB::last_failure(first, &inbox, "g", &one)
            .await
            .expect("read")
            .as_deref(),
        Some("attempt 3: boom")
    );
    assert_eq!(
        record::<D::DB>(first, &inbox, "g", &one).await,
        3,
        "the count taken back is counted again"
    );
    let mut conn = first.acquire().await.expect("a connection");
    D::DB::forget_attempts(&mut conn, &inbox, "g", &one)
        .await
        .expect("forget");
    drop(conn);
    assert_eq!(record::<D::DB>(first, &inbox, "g", &one).await, 1);
    assert_eq!(
        record::<D::DB>(first, &inbox, "other-group", &one).await,
        2,
        "another group's count is its own"
    );
}

#[tokio::test]
async fn attempt_counts_on_postgres() {
    counts_survive_and_start_again::<TestDb>().await;
}

#[tokio::test]
async fn attempt_counts_on_mysql() {
    counts_survive_and_start_again::<TestMySql>().await;
}

#[tokio::test]
async fn attempt_counts_on_sqlite() {
    counts_survive_and_start_again::<TestSqlite>().await;
}
