//! The `outbox-relay` binary as operators run it, against real PostgreSQL and
//! brokers: three relay processes with one killed (SIGKILL) and restarted,
//! SIGTERM, configuration errors and the `failed` commands. (Broker outages
//! under a running relay: `outage.rs`.)
//!
//! Every child process is killed when its guard is dropped, and its log (run
//! with `RUST_LOG=info`) is printed when the test fails.

use std::collections::HashSet;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Output;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use eventbus::Event;
use eventbus_tests::harness::{
    free_port, http_get, log_dir, metric, output, report_logs, RelayProcess,
};
use eventbus_tests::kafka::read_steps;
use eventbus_tests::relay::{
    assert_delivered, assert_per_key_order, pending, publish_steps, steps, wait_drained, Step,
};
use eventbus_tests::{kafka_brokers, unique_name, TestDb};

/// The binary under test.
const BIN: &str = env!("CARGO_BIN_EXE_outbox-relay");

/// `--batch-size` of every relay process: the most a SIGKILL can duplicate.
const BATCH: usize = 500;

/// Runs `outbox-relay args…` to completion (at most 60 s).
async fn cli(args: &[&str]) -> Output {
    output(BIN, args).await
}

/// Runs `outbox-relay args…`, asserts success and returns its standard output.
async fn cli_ok(args: &[&str]) -> String {
    eventbus_tests::harness::cli_ok(BIN, args).await
}

/// Starts `outbox-relay run` with the settings of these tests.
fn start_relay(
    name: &str,
    database_url: &str,
    broker: &str,
    prefix: &str,
    dir: &Path,
) -> RelayProcess {
    let batch = BATCH.to_string();
    let args = [
        "run",
        "--database-url",
        database_url,
        "--broker",
        broker,
        "--destination-prefix",
        prefix,
        "--lease-ttl-ms",
        "3000",
        "--poll-interval-ms",
        "200",
        "--batch-size",
        &batch,
        "--name",
        name,
    ];
    RelayProcess::start(BIN, name, &args, dir)
}

/// Waits (up to 30 s) until the relay reports owning partitions on /metrics.
async fn wait_owns_partitions(relay: &RelayProcess) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, body) = relay.get("/metrics").await.expect("GET /metrics");
        if metric(&body, "eventbus_relay_owned_partitions").is_some_and(|n| n > 0.0) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} owns no partition after 30 s:\n{body}",
            relay.proc.name()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_relays_one_killed_and_restarted_lose_nothing_and_keep_order() {
    let db = TestDb::new().await;
    let out = cli_ok(&["migrate", "--database-url", &db.url]).await;
    assert!(out.contains("migrations applied"), "{out}");
    let partitions: i64 = sqlx::query_scalar("SELECT count(*) FROM eventbus_outbox_partitions")
        .fetch_one(&db.pool)
        .await
        .expect("`migrate` created the partition table");
    assert_eq!(partitions, 64);

    let brokers = kafka_brokers().await;
    let broker = format!("kafka://{brokers}");
    let prefix = format!("{}.", unique_name("kill3"));
    let topic = format!("{prefix}{}", Step::DESTINATION);
    let dir = log_dir("kill3");

    // Some events before the relays start, the rest while they run.
    let events = steps(30_000, 300);
    let (before, during) = events.split_at(5_000);
    publish_steps(&db.pool, before, 1_000).await;
    let inserted = Arc::new(AtomicUsize::new(before.len()));

    let mut a = start_relay("relay-a", &db.url, &broker, &prefix, &dir);
    let mut b = start_relay("relay-b", &db.url, &broker, &prefix, &dir);
    let mut c = start_relay("relay-c", &db.url, &broker, &prefix, &dir);
    for r in [&mut a, &mut b, &mut c] {
        r.wait_healthy().await;
    }
    // The three share the partitions before the rest arrives, so the relay
    // killed below is one that works.
    for r in [&a, &b, &c] {
        wait_owns_partitions(r).await;
    }
    let feeder = tokio::spawn({
        let pool = db.pool.clone();
        let during = during.to_vec();
        let inserted = inserted.clone();
        async move {
            // Bursts of one transaction each, so that every relay has several
            // full batches to publish right after each commit.
            for chunk in during.chunks(5_000) {
                publish_steps(&pool, chunk, chunk.len()).await;
                inserted.fetch_add(chunk.len(), Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(1_000)).await;
            }
        }
    });

    // SIGKILL relay-a once roughly a third of everything has been relayed,
    // just after a burst landed: mid-batch.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let relayed = inserted.load(Ordering::SeqCst) as i64 - pending(&db.pool).await;
        if relayed >= 10_000 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {relayed} events relayed after 120 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seen = inserted.load(Ordering::SeqCst);
    while inserted.load(Ordering::SeqCst) == seen {
        assert!(Instant::now() < deadline, "the feeder stopped early");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    let (_, before_kill) = http_get(a.port, "/metrics").await.expect("GET /metrics");
    let status = a.proc.kill().await;
    let relayed_at_kill = inserted.load(Ordering::SeqCst) as i64 - pending(&db.pool).await;
    assert_eq!(
        status.signal(),
        Some(9),
        "relay-a died of SIGKILL: {status}"
    );
    let a_published = metric(&before_kill, "eventbus_relay_published_total").unwrap_or(0.0);
    let a_owned = metric(&before_kill, "eventbus_relay_owned_partitions").unwrap_or(0.0);
    eprintln!(
        "killed relay-a (owning {a_owned} partitions, {a_published} published) with \
         ~{relayed_at_kill} relayed of {} inserted",
        inserted.load(Ordering::SeqCst)
    );
    assert!(
        a_owned > 0.0 && a_published > 0.0,
        "the killed relay was working: {before_kill}"
    );

    // Restart it about 3 s later (a new process: a new relay id).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut a2 = start_relay("relay-a2", &db.url, &broker, &prefix, &dir);
    a2.wait_healthy().await;

    feeder.await.expect("feeder task");
    wait_drained(&db.pool, Duration::from_secs(180)).await;
    for r in [&mut b, &mut c, &mut a2] {
        assert!(r.proc.running(), "{} exited", r.proc.name());
    }

    // Everything arrived, in order per key; at most the killed relay's
    // in-flight batch twice.
    let received = read_steps(
        &brokers,
        &topic,
        events.len(),
        Duration::from_secs(5),
        Duration::from_secs(180),
    )
    .await;
    let duplicates = assert_delivered(&events, &received);
    eprintln!(
        "received {} messages, {duplicates} duplicates",
        received.len()
    );
    assert!(
        duplicates <= BATCH,
        "{duplicates} duplicates: more than one batch ({BATCH}) was sent twice"
    );

    // `status`: nothing pending or parked; the three live relays share all 64
    // partitions, the restarted one included.
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        let status = cli_ok(&["status", "--database-url", &db.url]).await;
        let owned: Vec<(String, i64)> = status
            .lines()
            .filter_map(|l| {
                let words: Vec<&str> = l.split_whitespace().collect();
                let owns = words.iter().position(|w| *w == "owns")?;
                Some((
                    words.get(1)?.to_string(),
                    words.get(owns + 1)?.parse().ok()?,
                ))
            })
            .collect();
        let live = ["relay-b", "relay-c", "relay-a2"];
        let balanced = owned.iter().map(|(_, n)| n).sum::<i64>() == 64
            && live
                .iter()
                .all(|name| owned.iter().any(|(n, k)| n == name && *k > 0));
        if balanced {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the live relays do not share the 64 partitions after 20 s:\n{status}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    eprintln!("outbox-relay status:\n{status}");
    assert!(status.contains("pending: 0"), "{status}");
    assert!(status.contains("failed (parked): 0"), "{status}");

    // /metrics and /healthz of a surviving relay, over plain HTTP.
    let deadline = Instant::now() + Duration::from_secs(20);
    let body = loop {
        let (code, body) = http_get(b.port, "/metrics").await.expect("GET /metrics");
        assert_eq!(code, 200, "{body}");
        if metric(&body, "eventbus_outbox_pending_rows") == Some(0.0) {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "the backlog gauge does not fall to 0:\n{body}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert!(body.contains("eventbus_relay_published_total"), "{body}");
    let (code, _) = http_get(b.port, "/healthz").await.expect("GET /healthz");
    assert_eq!(code, 200);
    let (code, _) = http_get(b.port, "/readyz").await.expect("GET /readyz");
    assert_eq!(code, 200);
    let mut published = Vec::new();
    for r in [&b, &c, &a2] {
        let (_, body) = http_get(r.port, "/metrics").await.expect("GET /metrics");
        let n = metric(&body, "eventbus_relay_published_total").expect("published counter");
        published.push((r.proc.name().to_owned(), n));
    }
    eprintln!("published_total of the live relays: {published:?}");
    let total: f64 = published.iter().map(|(_, n)| n).sum::<f64>() + a_published;
    assert!(
        total >= events.len() as f64,
        "the relays' counters add up to only {total} of {} events",
        events.len()
    );

    report_logs(&[&a.proc, &b.proc, &c.proc, &a2.proc]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_finishes_and_releases_partitions() {
    let db = TestDb::migrated().await;
    let brokers = kafka_brokers().await;
    let prefix = format!("{}.", unique_name("sigterm"));
    let topic = format!("{prefix}{}", Step::DESTINATION);
    let dir = log_dir("sigterm");
    let events = steps(20_000, 200);
    publish_steps(&db.pool, &events, 5_000).await;

    let mut relay = start_relay(
        "relay-term",
        &db.url,
        &format!("kafka://{brokers}"),
        &prefix,
        &dir,
    );
    relay.wait_healthy().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while pending(&db.pool).await == events.len() as i64 {
        assert!(
            Instant::now() < deadline,
            "the relay relayed nothing within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    relay.proc.signal("TERM");
    let asked = Instant::now();
    let status = relay.proc.wait_exit(Duration::from_secs(10)).await;
    let took = asked.elapsed();
    assert!(
        status.success(),
        "SIGTERM must end the relay with status 0, got {status}"
    );
    let log = relay.proc.log_text();
    assert!(log.contains("shutdown requested"), "{log}");
    assert!(log.contains("relay stopped"), "{log}");

    // Partitions released, relay deregistered.
    let owned: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM eventbus_outbox_partitions WHERE owner IS NOT NULL",
    )
    .fetch_one(&db.pool)
    .await
    .expect("count owned partitions");
    assert_eq!(owned, 0, "every partition is released (owner IS NULL)");
    let relays: i64 = sqlx::query_scalar("SELECT count(*) FROM eventbus_outbox_relays")
        .fetch_one(&db.pool)
        .await
        .expect("count relays");
    assert_eq!(relays, 0, "the relay deregistered");
    let out = cli_ok(&["status", "--database-url", &db.url]).await;
    assert!(out.contains("unowned partitions: 64"), "{out}");
    let after_relays: Vec<&str> = out
        .lines()
        .skip_while(|l| !l.starts_with("relays:"))
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert!(after_relays.is_empty(), "`status` lists no relay:\n{out}");

    // The in-flight batch was finished: what left the outbox is on the topic
    // exactly once; what is still there was not touched.
    let remaining: Vec<(String, i64, i32)> = sqlx::query_as(
        "SELECT payload->>'key', (payload->>'seq')::int8, attempts FROM eventbus_outbox",
    )
    .fetch_all(&db.pool)
    .await
    .expect("remaining rows");
    assert!(remaining.iter().all(|(_, _, attempts)| *attempts == 0));
    let relayed = events.len() - remaining.len();
    let received = read_steps(
        &brokers,
        &topic,
        relayed,
        Duration::from_secs(3),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(
        received.len(),
        relayed,
        "every event that left the outbox is on the topic exactly once"
    );
    assert_eq!(assert_per_key_order(&received), 0);
    let got: HashSet<(String, i64)> = received
        .iter()
        .map(|s| (s.key.clone(), s.seq as i64))
        .collect();
    let left: HashSet<(String, i64)> = remaining.iter().map(|(k, s, _)| (k.clone(), *s)).collect();
    assert!(
        got.is_disjoint(&left),
        "an event both on the topic and still in the outbox"
    );
    assert_eq!(got.len() + left.len(), events.len());
    eprintln!(
        "SIGTERM: exited with {status} after {took:?}; {relayed} relayed, {} left pending",
        remaining.len()
    );
    report_logs(&[&relay.proc]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_config_is_a_clear_error() {
    let db = TestDb::migrated().await;
    let http = format!("127.0.0.1:{}", free_port());

    // No broker at all.
    let out = cli(&["run", "--database-url", &db.url, "--http", &http]).await;
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "run without a broker must fail");
    assert!(err.contains("--broker"), "the error names --broker: {err}");

    // A broker that does not answer; its password must not appear anywhere.
    let started = Instant::now();
    let out = cli(&[
        "run",
        "--database-url",
        &db.url,
        "--broker",
        "amqp://guest:s3cret@127.0.0.1:1/%2f",
        "--http",
        &http,
    ])
    .await;
    let (stdout, err) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(
        !out.status.success(),
        "an unreachable broker must fail the start: {err}"
    );
    let lower = err.to_lowercase();
    assert!(
        lower.contains("unavailable") || lower.contains("unreachable"),
        "the error says the broker is unavailable: {err}"
    );
    assert!(
        !err.contains("s3cret") && !stdout.contains("s3cret"),
        "password leaked: {err}"
    );
    eprintln!(
        "unreachable broker ({:?}): {}",
        started.elapsed(),
        err.trim()
    );

    // An unknown key in the configuration file.
    let dir = log_dir("badconfig");
    let file = dir.join("relay.toml");
    std::fs::write(
        &file,
        "broker = \"kafka://127.0.0.1:9092\"\nbatch_sise = 10\n",
    )
    .expect("write config file");
    let file = file.to_string_lossy().into_owned();
    let out = cli(&[
        "run",
        "--config",
        &file,
        "--database-url",
        &db.url,
        "--http",
        &http,
    ])
    .await;
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "an unknown key must fail");
    assert!(err.contains("batch_sise"), "the error names the key: {err}");

    // `status` on a database that was never migrated.
    let fresh = TestDb::new().await;
    let out = cli(&["status", "--database-url", &fresh.url]).await;
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "status before migrate must fail");
    assert!(
        err.contains("outbox-relay migrate"),
        "the error says what to run: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failed_list_retry_skip_commands() {
    let db = TestDb::new().await;
    cli_ok(&["migrate", "--database-url", &db.url]).await;
    let insert = |key: &'static str,
                  state: &'static str,
                  attempts: i32,
                  error: Option<&'static str>| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "INSERT INTO eventbus_outbox \
                     (destination, partition_key, event_type, payload, state, attempts, last_error) \
                 VALUES ('steps', $1, 'com.example.test.step', $2, $3, $4, $5) RETURNING id",
            )
            .bind(key)
            .bind(serde_json::json!({ "key": key, "seq": 1 }))
            .bind(state)
            .bind(attempts)
            .bind(error)
            .fetch_one(&pool)
            .await
            .expect("insert outbox row")
        }
    };
    let first = insert("k1", "failed", 5, Some("boom")).await;
    let second = insert("k2", "failed", 5, Some("boom")).await;
    let waiting = insert("k3", "pending", 0, None).await;
    let url = db.url.as_str();

    let list = cli_ok(&["failed", "list", "--database-url", url]).await;
    let listed: Vec<(i64, &str)> = list
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let id = words.next()?.parse().ok()?;
            uuid::Uuid::parse_str(words.next()?).ok()?;
            Some((id, l))
        })
        .collect();
    assert_eq!(
        listed.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        vec![first, second],
        "{list}"
    );
    for (_, line) in &listed {
        assert!(line.contains("boom") && line.contains(" 5 "), "{line}");
    }
    assert!(list.contains("2 parked"), "{list}");

    let out = cli_ok(&["failed", "retry", &first.to_string(), "--database-url", url]).await;
    assert!(out.contains("1 released for retry"), "{out}");
    let (state, attempts, due): (String, i32, bool) = sqlx::query_as(
        "SELECT state, attempts, next_attempt_at IS NULL FROM eventbus_outbox WHERE id = $1",
    )
    .bind(first)
    .fetch_one(&db.pool)
    .await
    .expect("retried row");
    assert_eq!((state.as_str(), attempts, due), ("pending", 0, true));

    let out = cli_ok(&["failed", "skip", &second.to_string(), "--database-url", url]).await;
    assert!(out.contains("1 skipped"), "{out}");
    let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM eventbus_outbox ORDER BY id")
        .fetch_all(&db.pool)
        .await
        .expect("ids");
    assert_eq!(
        ids,
        vec![first, waiting],
        "the skipped row is gone, the others stay"
    );

    // Neither command touches rows that are not parked.
    let out = cli_ok(&["failed", "skip", &first.to_string(), "--database-url", url]).await;
    assert!(out.contains("0 skipped"), "{out}");
    let out = cli_ok(&[
        "failed",
        "retry",
        &waiting.to_string(),
        "--database-url",
        url,
    ])
    .await;
    assert!(out.contains("0 released for retry"), "{out}");
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM eventbus_outbox")
        .fetch_one(&db.pool)
        .await
        .expect("count");
    assert_eq!(left, 2);
    let list = cli_ok(&["failed", "list", "--database-url", url]).await;
    assert!(list.contains("0 parked"), "{list}");
}
