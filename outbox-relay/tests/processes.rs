//! The `outbox-relay` binary as operators run it, against real PostgreSQL and
//! brokers: three relay processes with one killed (SIGKILL) and restarted,
//! SIGTERM, configuration errors and the `failed` commands.
//!
//! The `fault_*` tests take the broker away for 20 s while an in-process relay
//! works — RabbitMQ through a TCP proxy that refuses and cuts connections, and a
//! private Kafka-protocol broker (tansu) frozen with SIGSTOP — and check that
//! the relay pauses without burning attempts, then delivers everything in order.
//! `scripts/test` runs them one at a time after the rest.
//!
//! Every child process is killed when its guard is dropped, and its log (run
//! with `RUST_LOG=info`) is printed when the test fails.

use std::collections::HashSet;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use eventbus::transport::kafka::rdkafka;
use eventbus::transport::rabbitmq::lapin::message::Delivery;
use eventbus::transport::rabbitmq::{envelope_from_delivery, RabbitPublisher};
use eventbus::{Event, Publisher};
use eventbus_tests::kafka::{consumer_config, publisher_builder, tansu_bin};
use eventbus_tests::rabbitmq::{delete_exchange, TcpProxy, TestQueue};
use eventbus_tests::relay::{
    assert_per_key_order, pending, publish_steps, spawn_relay, steps, test_config, wait_drained,
    RunningRelay, Step,
};
use eventbus_tests::relay_cli::http_get;
use eventbus_tests::{kafka_brokers, unique_name, TestDb};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use sqlx::PgPool;
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// The binary under test.
const BIN: &str = env!("CARGO_BIN_EXE_outbox-relay");

/// `--batch-size` of every relay process: the most a SIGKILL can duplicate.
const BATCH: usize = 500;

/// How long the fault tests keep the broker away.
const OUTAGE: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------

/// A directory for the logs of one test's child processes.
fn log_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(unique_name(&format!("outbox_relay_{tag}")));
    std::fs::create_dir_all(&dir).expect("create log directory");
    dir
}

/// A TCP port nobody listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind a free port")
        .local_addr()
        .expect("local address")
        .port()
}

/// `outbox-relay` with `RUST_LOG=info` and no `EVENTBUS_*` setting inherited
/// from the environment of the test run.
fn relay_command() -> Command {
    let mut cmd = Command::new(BIN);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("EVENTBUS_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `outbox-relay args…` to completion (at most 60 s).
async fn cli(args: &[&str]) -> Output {
    let mut cmd = relay_command();
    cmd.args(args);
    tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "`outbox-relay {}` did not finish within 60 s",
                args.join(" ")
            )
        })
        .expect("run outbox-relay")
}

/// Runs `outbox-relay args…`, asserts success and returns its standard output.
async fn cli_ok(args: &[&str]) -> String {
    let out = cli(args).await;
    assert!(
        out.status.success(),
        "`outbox-relay {}` failed ({}):\nstdout:\n{}\nstderr:\n{}",
        args.join(" "),
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// A child process, killed (SIGKILL) when dropped; when the test is failing,
/// the end of its log is printed.
struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    /// Starts `cmd` with standard output and error going to `<dir>/<name>.log`.
    fn spawn(name: &str, mut cmd: Command, dir: &Path) -> Self {
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).expect("create log file");
        let err = out.try_clone().expect("clone log file handle");
        cmd.stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc {
            name: name.to_owned(),
            child,
            log,
        }
    }

    fn pid(&self) -> u32 {
        self.child
            .id()
            .unwrap_or_else(|| panic!("{} has already exited", self.name))
    }

    /// Sends `signal` (`TERM`, `STOP`, `CONT`, …) with `kill(1)`.
    fn signal(&self, signal: &str) {
        let pid = self.pid();
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .expect("run kill(1)");
        assert!(
            status.success(),
            "kill -{signal} {pid} ({}) failed",
            self.name
        );
    }

    /// SIGKILL, and wait for the process to be gone.
    async fn kill(&mut self) -> ExitStatus {
        self.child.start_kill().expect("send SIGKILL");
        self.wait_exit(Duration::from_secs(10)).await
    }

    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(status) => status.expect("wait for child process"),
            Err(_) => panic!("{} did not exit within {timeout:?}", self.name),
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Log lines at WARN or ERROR level.
    fn notable_lines(&self) -> Vec<String> {
        self.log_text()
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        if std::thread::panicking() {
            let log = self.log_text();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(200)..];
            eprintln!(
                "----- last {} lines of {} ({}) -----\n{}\n----- end of {} -----",
                tail.len(),
                self.name,
                self.log.display(),
                tail.join("\n"),
                self.name
            );
        }
    }
}

/// Prints the WARN/ERROR lines of each process's log (visible with
/// `--no-capture` or `--success-output`), at most 30 per process.
fn report_logs(procs: &[&Proc]) {
    for p in procs {
        let lines = p.notable_lines();
        eprintln!(
            "{}: {} WARN/ERROR log lines ({})",
            p.name,
            lines.len(),
            p.log.display()
        );
        for line in lines.iter().take(30) {
            eprintln!("    {line}");
        }
    }
}

/// A relay process with its HTTP port.
struct RelayProc {
    proc: Proc,
    port: u16,
}

/// Starts `outbox-relay run` with the settings of these tests.
fn start_relay(
    name: &str,
    database_url: &str,
    broker: &str,
    prefix: &str,
    dir: &Path,
) -> RelayProc {
    let port = free_port();
    let http = format!("127.0.0.1:{port}");
    let mut cmd = relay_command();
    cmd.args([
        "run",
        "--database-url",
        database_url,
        "--broker",
        broker,
        "--destination-prefix",
        prefix,
        "--http",
        &http,
        "--lease-ttl-ms",
        "3000",
        "--poll-interval-ms",
        "200",
        "--batch-size",
        &BATCH.to_string(),
        "--name",
        name,
    ]);
    RelayProc {
        proc: Proc::spawn(name, cmd, dir),
        port,
    }
}

/// Waits until the relay answers `/healthz` with 200 (it listens once connected
/// to the database and the broker).
async fn wait_healthy(relay: &mut RelayProc) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(
            relay.proc.running(),
            "{} exited during start-up",
            relay.proc.name
        );
        if let Ok((200, _)) = http_get(relay.port, "/healthz").await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} does not answer /healthz after 60 s",
            relay.proc.name
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits (up to 30 s) until the relay reports owning partitions on /metrics.
async fn wait_owns_partitions(relay: &RelayProc) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, body) = http_get(relay.port, "/metrics")
            .await
            .expect("GET /metrics");
        if metric(&body, "eventbus_relay_owned_partitions").is_some_and(|n| n > 0.0) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} owns no partition after 30 s:\n{body}",
            relay.proc.name
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The value of the unlabelled Prometheus sample `name` in `text`.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

// ---------------------------------------------------------------------------
// Reading back and checking
// ---------------------------------------------------------------------------

/// Reads `topic` from the beginning of every partition (no consumer group)
/// until at least `at_least` messages arrived and then nothing more for
/// `quiet`, or until `timeout`; decodes each as a [`Step`].
async fn read_topic(
    brokers: &str,
    topic: &str,
    at_least: usize,
    quiet: Duration,
    timeout: Duration,
) -> Vec<Step> {
    let config = consumer_config(brokers);
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + timeout;
        let consumer: BaseConsumer = config.create().expect("create Kafka consumer");
        let partitions: Vec<i32> = loop {
            let metadata = consumer
                .fetch_metadata(Some(&topic), Duration::from_secs(10))
                .unwrap_or_else(|e| panic!("metadata of Kafka topic `{topic}`: {e}"));
            let ids: Vec<i32> = metadata
                .topics()
                .iter()
                .filter(|t| t.name() == topic && t.error().is_none())
                .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                .collect();
            if !ids.is_empty() {
                break ids;
            }
            assert!(
                Instant::now() < deadline,
                "Kafka topic `{topic}` does not exist"
            );
            std::thread::sleep(Duration::from_millis(200));
        };
        let mut assignment = TopicPartitionList::new();
        for p in partitions {
            assignment
                .add_partition_offset(&topic, p, Offset::Beginning)
                .expect("add partition");
        }
        consumer.assign(&assignment).expect("assign partitions");
        let mut out: Vec<Step> = Vec::with_capacity(at_least);
        let mut last = Instant::now();
        while Instant::now() < deadline && !(out.len() >= at_least && last.elapsed() >= quiet) {
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    last = Instant::now();
                    let payload = m.payload().expect("message has a payload");
                    out.push(
                        serde_json::from_slice(payload)
                            .unwrap_or_else(|e| panic!("not a Step: {e}: {payload:?}")),
                    );
                }
                Some(Err(e)) => eprintln!("reading Kafka topic `{topic}`: {e}"),
                None => {}
            }
        }
        out
    })
    .await
    .expect("Kafka reader thread")
}

fn decode_delivery(d: &Delivery) -> Step {
    let envelope = envelope_from_delivery(&d.properties, &d.data)
        .unwrap_or_else(|e| panic!("not a CloudEvent: {e}"));
    serde_json::from_slice(&envelope.data).unwrap_or_else(|e| panic!("not a Step: {e}"))
}

/// Reads `queue` until at least `at_least` messages arrived and then nothing
/// more for `quiet`, or until `timeout`.
async fn read_queue(
    queue: &mut TestQueue,
    at_least: usize,
    quiet: Duration,
    timeout: Duration,
) -> Vec<Step> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::with_capacity(at_least);
    loop {
        let batch = queue.try_read(1_000, quiet).await;
        let silent = batch.is_empty();
        out.extend(batch.iter().map(decode_delivery));
        if (silent && out.len() >= at_least) || Instant::now() >= deadline {
            return out;
        }
    }
}

/// Asserts that every event of `expected` arrived, nothing else did, and per
/// key the first arrivals are in order; returns the number of duplicates.
fn check_delivery(expected: &[Step], received: &[Step]) -> usize {
    let want: HashSet<(&str, u64)> = expected.iter().map(|s| (s.key.as_str(), s.seq)).collect();
    let got: HashSet<(&str, u64)> = received.iter().map(|s| (s.key.as_str(), s.seq)).collect();
    let mut missing: Vec<_> = want.difference(&got).collect();
    missing.sort();
    assert!(
        missing.is_empty(),
        "{} of {} events never arrived ({} messages received), e.g. {:?}",
        missing.len(),
        want.len(),
        received.len(),
        &missing[..missing.len().min(10)]
    );
    let unexpected: Vec<_> = got.difference(&want).take(10).collect();
    assert!(
        unexpected.is_empty(),
        "events nobody published arrived: {unexpected:?}"
    );
    let duplicates = assert_per_key_order(received);
    assert_eq!(received.len(), want.len() + duplicates);
    duplicates
}

/// Samples the outbox every 50 ms and remembers the highest `attempts` and the
/// most `failed` rows ever seen.
struct AttemptWatch {
    max_attempts: Arc<AtomicI64>,
    max_failed: Arc<AtomicI64>,
    samples: Arc<AtomicI64>,
    task: tokio::task::JoinHandle<()>,
}

impl AttemptWatch {
    fn start(pool: PgPool) -> Self {
        let max_attempts = Arc::new(AtomicI64::new(0));
        let max_failed = Arc::new(AtomicI64::new(0));
        let samples = Arc::new(AtomicI64::new(0));
        let task = tokio::spawn({
            let (max_attempts, max_failed, samples) =
                (max_attempts.clone(), max_failed.clone(), samples.clone());
            async move {
                loop {
                    let sample: Result<(i64, i64), _> = sqlx::query_as(
                        "SELECT coalesce(max(attempts), 0)::int8, \
                                count(*) FILTER (WHERE state = 'failed') \
                         FROM eventbus_outbox",
                    )
                    .fetch_one(&pool)
                    .await;
                    if let Ok((attempts, failed)) = sample {
                        max_attempts.fetch_max(attempts, Ordering::SeqCst);
                        max_failed.fetch_max(failed, Ordering::SeqCst);
                        samples.fetch_add(1, Ordering::SeqCst);
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        });
        AttemptWatch {
            max_attempts,
            max_failed,
            samples,
            task,
        }
    }

    fn assert_clean(&self, when: &str) {
        let attempts = self.max_attempts.load(Ordering::SeqCst);
        let failed = self.max_failed.load(Ordering::SeqCst);
        assert_eq!(
            attempts, 0,
            "a row got attempts = {attempts} {when}: the outage burned attempts"
        );
        assert_eq!(failed, 0, "{failed} rows were parked as failed {when}");
    }
}

impl Drop for AttemptWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Waits (up to 60 s) until the relay has had `n` events acknowledged and
/// reports the broker available.
async fn wait_published(relay: &RunningRelay, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while relay.metrics.published_total() < n || !relay.metrics.snapshot().broker_available {
        assert!(
            Instant::now() < deadline,
            "the relay published {} events within 60 s (broker_available = {})",
            relay.metrics.published_total(),
            relay.metrics.snapshot().broker_available
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// With the broker gone: publishes `during` to the outbox, then for [`OUTAGE`]
/// checks that no row gets an attempt, nothing is rejected, and the relay
/// notices the outage; afterwards nothing published during it may have left
/// the outbox.
async fn hold_outage(pool: &PgPool, relay: &RunningRelay, watch: &AttemptWatch, during: &[Step]) {
    publish_steps(pool, during, 500).await;
    let started = Instant::now();
    let mut noticed_after = None;
    while started.elapsed() < OUTAGE {
        let attempts: i64 =
            sqlx::query_scalar("SELECT coalesce(max(attempts), 0)::int8 FROM eventbus_outbox")
                .fetch_one(pool)
                .await
                .expect("max attempts");
        assert_eq!(
            attempts, 0,
            "a row got an attempt counted during the outage"
        );
        watch.assert_clean("during the outage");
        assert_eq!(
            relay.metrics.rejected_total(),
            0,
            "the relay rejected events during the outage"
        );
        if noticed_after.is_none() && !relay.metrics.snapshot().broker_available {
            noticed_after = Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let noticed_after = noticed_after.unwrap_or_else(|| {
        panic!("broker_available never became false during a {OUTAGE:?} outage")
    });
    assert!(
        !relay.metrics.snapshot().broker_available,
        "the relay reports the broker available while it is still gone"
    );
    let left = pending(pool).await;
    assert!(
        left >= during.len() as i64,
        "only {left} rows pending at the end of the outage, but {} were written during it",
        during.len()
    );
    eprintln!(
        "outage: relay noticed after {noticed_after:?}; {left} rows pending at its end; {} DB samples",
        watch.samples.load(Ordering::SeqCst)
    );
}

/// Waits until the outbox is empty after the broker came back; the failure
/// says what the relay reports.
async fn wait_recovered(pool: &PgPool, relay: &RunningRelay) {
    let timeout = Duration::from_secs(120);
    let back = Instant::now();
    loop {
        let left = pending(pool).await;
        if left == 0 {
            eprintln!(
                "recovered: outbox drained {:?} after the broker came back",
                back.elapsed()
            );
            return;
        }
        assert!(
            back.elapsed() < timeout,
            "the relay did not recover after the broker came back: {left} rows still pending \
             after {timeout:?}; published_total {}, broker_available {}, outages counted {:?} \
             (per-message errors: RUST_LOG=info,eventbus::relay=debug)",
            relay.metrics.published_total(),
            relay.metrics.snapshot().broker_available,
            metric(
                &relay.metrics.render_prometheus(),
                "eventbus_relay_broker_outages_total"
            )
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// After recovery: nothing was ever attempted or parked, the outbox is empty,
/// the relay counted the outage and sees the broker again.
async fn check_after_outage(pool: &PgPool, relay: &RunningRelay, watch: &AttemptWatch) {
    watch.assert_clean("at any time");
    assert_eq!(relay.metrics.rejected_total(), 0, "rejected_total");
    assert_eq!(relay.metrics.parked_total(), 0, "parked_total");
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM eventbus_outbox")
        .fetch_one(pool)
        .await
        .expect("count rows");
    assert_eq!(
        rows, 0,
        "published rows are deleted; none is left failed or pending"
    );
    let text = relay.metrics.render_prometheus();
    let outages = metric(&text, "eventbus_relay_broker_outages_total").expect("outage counter");
    assert!(outages >= 1.0, "the outage is counted: {text}");
    assert!(
        relay.metrics.snapshot().broker_available,
        "the relay reports the broker available again"
    );
    eprintln!(
        "after the outage: published_total {}, broker outages counted {outages}",
        relay.metrics.published_total()
    );
}

// ---------------------------------------------------------------------------
// Tests of the binary
// ---------------------------------------------------------------------------

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
        wait_healthy(r).await;
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
    wait_healthy(&mut a2).await;

    feeder.await.expect("feeder task");
    wait_drained(&db.pool, Duration::from_secs(180)).await;
    for r in [&mut b, &mut c, &mut a2] {
        assert!(r.proc.running(), "{} exited", r.proc.name);
    }

    // Everything arrived, in order per key; at most the killed relay's
    // in-flight batch twice.
    let received = read_topic(
        &brokers,
        &topic,
        events.len(),
        Duration::from_secs(5),
        Duration::from_secs(180),
    )
    .await;
    let duplicates = check_delivery(&events, &received);
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
        if body.contains("eventbus_outbox_backlog_total 0") {
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
        published.push((r.proc.name.clone(), n));
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
    wait_healthy(&mut relay).await;
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
    let received = read_topic(
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
    let err = text(&out.stderr);
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
    let (stdout, err) = (text(&out.stdout), text(&out.stderr));
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
    let err = text(&out.stderr);
    assert!(!out.status.success(), "an unknown key must fail");
    assert!(err.contains("batch_sise"), "the error names the key: {err}");

    // `status` on a database that was never migrated.
    let fresh = TestDb::new().await;
    let out = cli(&["status", "--database-url", &fresh.url]).await;
    let err = text(&out.stderr);
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

// ---------------------------------------------------------------------------
// Fault injection (run serially, after the rest)
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fault_broker_outage_rabbitmq_pauses_without_burning_attempts() {
    init_logging();
    let db = TestDb::migrated().await;
    let prefix = format!("{}.", unique_name("outage_amqp"));
    let exchange = format!("{prefix}{}", Step::DESTINATION);
    let mut queue = TestQueue::bind_all(&exchange).await;
    let (proxy, proxied_url) = TcpProxy::for_amqp().await;
    let publisher = RabbitPublisher::connect(&proxied_url)
        .await
        .expect("connect to RabbitMQ through the proxy");

    let events = steps(3_000, 30);
    let (before, during) = events.split_at(2_000);
    publish_steps(&db.pool, before, 500).await;
    let watch = AttemptWatch::start(db.pool.clone());
    let mut config = test_config(&prefix);
    config.batch_size = 100;
    let relay = spawn_relay(&db.pool, Arc::new(publisher), config);

    // Take the broker away once some events have arrived.
    wait_published(&relay, 100).await;
    proxy.refuse();
    proxy.cut().await;
    eprintln!(
        "cut RabbitMQ after {} events",
        relay.metrics.published_total()
    );
    hold_outage(&db.pool, &relay, &watch, during).await;
    proxy.accept();

    wait_recovered(&db.pool, &relay).await;
    let received = read_queue(
        &mut queue,
        events.len(),
        Duration::from_secs(3),
        Duration::from_secs(120),
    )
    .await;
    let duplicates = check_delivery(&events, &received);
    eprintln!(
        "RabbitMQ outage: {} messages, {duplicates} duplicates",
        received.len()
    );
    check_after_outage(&db.pool, &relay, &watch).await;

    relay.stop().await;
    queue.delete().await;
    delete_exchange(&exchange).await;
}

/// Sends the in-process relay's logs (`RUST_LOG`, default `info`) to the
/// test's output, shown when it fails.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// Starts a private tansu broker with in-memory storage on a free port; returns
/// it and its bootstrap address.
async fn start_tansu(dir: &Path) -> (Proc, String) {
    let port = free_port();
    let url = format!("tcp://127.0.0.1:{port}");
    let mut cmd = Command::new(tansu_bin());
    cmd.args([
        "broker",
        "--listener-url",
        &url,
        "--advertised-listener-url",
        &url,
        "--storage-engine",
        "memory://tansu/",
    ])
    .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
    .stdin(Stdio::null());
    let mut tansu = Proc::spawn("tansu", cmd, dir);
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(tansu.running(), "tansu exited during start-up");
        assert!(
            Instant::now() < deadline,
            "tansu does not listen on {port} after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (tansu, format!("127.0.0.1:{port}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fault_broker_outage_kafka_pauses_without_burning_attempts() {
    init_logging();
    let dir = log_dir("outage_kafka");
    let (tansu, brokers) = start_tansu(&dir).await;
    let db = TestDb::migrated().await;
    let prefix = format!("{}.", unique_name("outage_kafka"));
    let topic = format!("{prefix}{}", Step::DESTINATION);
    let publisher = publisher_builder(&brokers)
        .set("message.timeout.ms", "5000")
        .partitions(4)
        .build()
        .expect("Kafka publisher");
    publisher
        .ensure_destination(&topic)
        .await
        .expect("create the topic on the private broker");

    let events = steps(3_000, 30);
    let (before, during) = events.split_at(2_000);
    publish_steps(&db.pool, before, 500).await;
    let watch = AttemptWatch::start(db.pool.clone());
    let mut config = test_config(&prefix);
    config.batch_size = 100;
    let relay = spawn_relay(&db.pool, Arc::new(publisher), config);

    // Freeze the broker once some events have arrived: it keeps its data and
    // its sockets, but answers nothing.
    wait_published(&relay, 100).await;
    tansu.signal("STOP");
    eprintln!(
        "stopped tansu after {} events",
        relay.metrics.published_total()
    );
    hold_outage(&db.pool, &relay, &watch, during).await;
    tansu.signal("CONT");

    wait_recovered(&db.pool, &relay).await;
    let received = read_topic(
        &brokers,
        &topic,
        events.len(),
        Duration::from_secs(5),
        Duration::from_secs(120),
    )
    .await;
    let duplicates = check_delivery(&events, &received);
    eprintln!(
        "Kafka outage: {} messages, {duplicates} duplicates",
        received.len()
    );
    check_after_outage(&db.pool, &relay, &watch).await;

    relay.stop().await;
    report_logs(&[&tansu]);
}
