//! Fenced sends, end to end (issue 15, item 3): a relay paused (SIGSTOP) in
//! the middle of a Kafka send for twice its lease, then resumed, delivers
//! nothing after the partition's next owner has published later events of
//! the same key; the last value per key (a compacted topic's view) is the
//! latest event.
//!
//! Every Kafka client, the relays and the test's reader, reaches a private
//! tansu through a TCP proxy (tansu advertises the proxy's port), so the test
//! decides when what a relay has queued can reach the broker:
//!
//! 1. relay A publishes e1..e5 of key `k` (and a few other keys);
//! 2. the proxy cuts and refuses connections; e6 is written, A claims it and
//!    queues it in its producer; A is stopped (SIGSTOP);
//! 3. the proxy accepts again; relay B takes the partitions over once A's
//!    leases expire and publishes e6, then e7;
//! 4. the proxy refuses again, A is resumed (SIGCONT) and has time to notice
//!    that its leases lapsed; then the proxy accepts, and whatever A still
//!    holds may reach the broker;
//! 5. the topic, read from the start: per key, the events in order with
//!    nothing after the latest, and A counted the abandoned batch.
//!
//! A relay whose send is not bounded by its leases delivers its queued e6
//! after e7 in step 4. `OUTBOX_RELAY_BIN` runs the test against another build
//! of the binary (an older one, to see the test fail).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use eventbus::transport::kafka::rdkafka;
use eventbus_tests::harness::{free_port, log_dir, RelayProcess};
use eventbus_tests::kafka::{publisher_with_topic, read_all, start_tansu};
use eventbus_tests::rabbitmq::TcpProxy;
use eventbus_tests::relay::{pending, publish_steps, Step};
use eventbus_tests::{unique_name, TestDb};
use rdkafka::message::Message;
use sqlx::PgPool;

/// The relays' lease: A stays stopped for at least twice this.
const LEASE: Duration = Duration::from_millis(2000);

/// The key whose events the paused relay holds.
const KEY: &str = "k";

/// Other keys, published alongside `KEY`.
const OTHER_KEYS: [&str; 3] = ["a", "b", "c"];

/// The binary under test: `OUTBOX_RELAY_BIN`, else this workspace's.
fn relay_bin() -> String {
    std::env::var("OUTBOX_RELAY_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_outbox-relay").to_owned())
}

/// Starts `outbox-relay run` named `name` with the lease and producer
/// settings of this test. Dropping it kills it, stopped or not, and prints its
/// log if the test is failing.
fn start_relay(
    name: &str,
    database_url: &str,
    broker: &str,
    prefix: &str,
    dir: &Path,
) -> RelayProcess {
    let lease = LEASE.as_millis().to_string();
    let args = [
        "run",
        "--database-url",
        database_url,
        "--broker",
        broker,
        "--destination-prefix",
        prefix,
        "--name",
        name,
        "--lease-ttl-ms",
        &lease,
        "--poll-interval-ms",
        "100",
        // librdkafka keeps a message it cannot send for the whole test:
        // only the relay's fencing may drop it.
        "--producer-set",
        "message.timeout.ms=120000",
        // Back on the broker within half a second of the proxy accepting
        // again, so that a late send shows within the test's wait.
        "--producer-set",
        "reconnect.backoff.ms=100",
        "--producer-set",
        "reconnect.backoff.max.ms=500",
    ];
    RelayProcess::start(&relay_bin(), name, &args, dir)
}

/// Event `seq` of `key`.
fn step(key: &str, seq: u64) -> Step {
    Step {
        key: key.to_owned(),
        seq,
        pad: String::new(),
    }
}

/// Events `seqs` of `KEY` and of every other key, interleaved.
fn round(seqs: std::ops::RangeInclusive<u64>) -> Vec<Step> {
    seqs.flat_map(|seq| {
        std::iter::once(step(KEY, seq)).chain(OTHER_KEYS.iter().map(move |k| step(k, seq)))
    })
    .collect()
}

/// Waits (up to 30 s) until `pending` rows are left in the outbox, checking
/// that `relay` keeps running.
async fn wait_pending(pool: &PgPool, left: i64, relay: &mut RelayProcess, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n = pending(pool).await;
        if n == left {
            return;
        }
        relay.proc.assert_running();
        assert!(
            Instant::now() < deadline,
            "{what}: {n} rows pending after 30 s, expected {left}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One message read back: where it was, and the event it carries.
#[derive(Debug)]
struct Seen {
    partition: i32,
    offset: i64,
    step: Step,
}

/// Checks the history of one topic partition (in offset order) against the
/// last event published per key: per key, the first occurrences are 1..=last
/// in order (nothing lost or reordered) and nothing arrives after the last
/// one (a duplicate is allowed only before it); so the last value per key,
/// a compacted topic's view, is the latest event.
fn check(history: &[Step], last: &BTreeMap<String, u64>) -> Result<(), String> {
    let mut problems = Vec::new();
    for (key, latest) in last {
        let seqs: Vec<u64> = history
            .iter()
            .filter(|s| &s.key == key)
            .map(|s| s.seq)
            .collect();
        let mut first: Vec<u64> = Vec::new();
        for seq in &seqs {
            if !first.contains(seq) {
                first.push(*seq);
            }
        }
        let expected: Vec<u64> = (1..=*latest).collect();
        if first != expected {
            problems.push(format!(
                "key {key}: first occurrences {first:?}, expected {expected:?}"
            ));
        }
        if let Some(at) = seqs.iter().position(|s| s == latest) {
            if at + 1 != seqs.len() {
                problems.push(format!(
                    "key {key}: {:?} arrived after its latest event {latest} (sequence {seqs:?})",
                    &seqs[at + 1..]
                ));
            }
        }
        if seqs.last() != Some(latest) {
            problems.push(format!(
                "key {key}: the compacted view holds {:?}, not the latest event {latest}",
                seqs.last()
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_relay_sends_nothing_after_the_next_owner() {
    let dir = log_dir("outbox_relay_fencing");

    // tansu listens on a port of its own and advertises the proxy's.
    let tansu_port = free_port();
    let proxy = TcpProxy::start(&format!("127.0.0.1:{tansu_port}")).await;
    let brokers = proxy.addr().to_string();
    let _tansu = start_tansu(tansu_port, proxy.addr().port(), &dir).await;
    let prefix = format!("{}.", unique_name("fencing"));
    let topic = format!("{prefix}{}", <Step as eventbus::Event>::DESTINATION);
    // One partition: the whole topic's order is the order consumers see.
    drop(publisher_with_topic(&brokers, &topic, 1).await);

    let db = TestDb::migrated().await;
    let broker = format!("kafka://{brokers}");
    let mut a = start_relay("relay-a", &db.url, &broker, &prefix, &dir);
    publish_steps(&db.pool, &round(1..=5), 4).await;
    wait_pending(&db.pool, 0, &mut a, "A publishes e1..e5").await;

    // A cannot reach the broker: it claims e6 and its producer queues it.
    proxy.refuse();
    proxy.cut().await;
    publish_steps(&db.pool, &round(6..=6), 4).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    a.proc.assert_running();
    assert_eq!(
        pending(&db.pool).await,
        1 + OTHER_KEYS.len() as i64,
        "nothing of e6 can have been published"
    );
    a.proc.signal("STOP");
    let stopped_at = Instant::now();

    // B takes over once A's leases expire, and publishes e6, then e7.
    proxy.accept();
    let mut b = start_relay("relay-b", &db.url, &broker, &prefix, &dir);
    wait_pending(&db.pool, 0, &mut b, "B takes over and publishes e6").await;
    publish_steps(&db.pool, &round(7..=7), 4).await;
    wait_pending(&db.pool, 0, &mut b, "B publishes e7").await;
    let b_published = b.metric("eventbus_relay_published_total").await;
    tokio::time::sleep_until((stopped_at + 2 * LEASE).into()).await;

    // A wakes up cut off from the broker: time to notice its leases lapsed.
    proxy.refuse();
    proxy.cut().await;
    a.proc.signal("CONT");
    let paused = stopped_at.elapsed();
    tokio::time::sleep(LEASE + Duration::from_millis(500)).await;
    a.proc.assert_running();
    let abandoned = a.metric("eventbus_relay_abandoned_batches_total").await;
    // Whatever A still holds may go now.
    proxy.accept();
    tokio::time::sleep(Duration::from_secs(4)).await;

    // Asks for more than was published: reads everything there is for 5 s.
    let messages = read_all(&brokers, &topic, 1_000, Duration::from_secs(5)).await;
    let history: Vec<Seen> = messages
        .iter()
        .map(|m| Seen {
            partition: m.partition(),
            offset: m.offset(),
            step: serde_json::from_slice(m.payload().unwrap_or_default()).expect("a Step"),
        })
        .collect();
    let shown: Vec<String> = history
        .iter()
        .map(|s| {
            format!(
                "  {}@{}: {} {}",
                s.partition, s.offset, s.step.key, s.step.seq
            )
        })
        .collect();
    eprintln!(
        "A stopped for {paused:?}; B published {b_published:?}; A abandoned {abandoned:?} \
         batches; history of {topic}:\n{}",
        shown.join("\n")
    );
    let last: BTreeMap<String, u64> = std::iter::once(KEY)
        .chain(OTHER_KEYS)
        .map(|k| (k.to_owned(), 7))
        .collect();
    let steps: Vec<Step> = history.into_iter().map(|s| s.step).collect();
    if let Err(problems) = check(&steps, &last) {
        panic!("the history breaks the fencing promise:\n{problems}");
    }
    assert!(
        abandoned.is_some_and(|n| n >= 1.0),
        "relay A did not count the batch it had to abandon: {abandoned:?}"
    );
}

#[test]
fn the_checker_catches_late_lost_and_swapped_events() {
    let last: BTreeMap<String, u64> = [("k".to_owned(), 3)].into();
    let history = |seqs: &[u64]| -> Vec<Step> { seqs.iter().map(|s| step("k", *s)).collect() };
    assert!(check(&history(&[1, 2, 3]), &last).is_ok());
    assert!(
        check(&history(&[1, 2, 2, 3]), &last).is_ok(),
        "a duplicate before the latest"
    );
    let late = check(&history(&[1, 2, 3, 2]), &last).expect_err("a send after the latest");
    assert!(late.contains("after its latest event"), "{late}");
    assert!(late.contains("compacted view"), "{late}");
    let lost = check(&history(&[1, 3]), &last).expect_err("a lost event");
    assert!(lost.contains("first occurrences"), "{lost}");
    let swapped = check(&history(&[1, 3, 2]), &last).expect_err("a swapped pair");
    assert!(swapped.contains("first occurrences"), "{swapped}");
    let missing = check(&[step("other", 1)], &last).expect_err("nothing of the key");
    assert!(missing.contains("compacted view"), "{missing}");
}
