//! The `outbox-relay` binary over a MySQL/MariaDB outbox (`--database-url
//! mysql://…`): `migrate` with a partition count, two relay processes sharing
//! the partitions with one SIGKILLed mid-run, `status`, the `failed`
//! commands, and a clean SIGTERM stop.

use std::path::Path;
use std::time::{Duration, Instant};

use eventbus::Event;
use eventbus_tests::harness::{self, log_dir, sigterm, RelayProcess};
use eventbus_tests::mysql::TestMySql;
use eventbus_tests::rabbitmq::TestQueue;
use eventbus_tests::relay::{assert_per_key_order, pending, publish_steps, steps, Step};
use eventbus_tests::{amqp_url, unique_name};

/// The binary under test.
const BIN: &str = env!("CARGO_BIN_EXE_outbox-relay");

/// `--batch-size` of the relay processes: the most a SIGKILL can duplicate.
const BATCH: usize = 200;

async fn cli_ok(args: &[&str]) -> String {
    harness::cli_ok(BIN, args).await
}

/// Starts `outbox-relay run` named `name`, logging to a file shown if the
/// test fails.
fn start_relay(name: &str, url: &str, amqp: &str, prefix: &str, dir: &Path) -> RelayProcess {
    let batch = BATCH.to_string();
    let args = [
        "run",
        "--database-url",
        url,
        "--broker",
        amqp,
        "--destination-prefix",
        prefix,
        "--poll-interval-ms",
        "100",
        "--lease-ttl-ms",
        "3000",
        "--batch-size",
        &batch,
        "--name",
        name,
    ];
    RelayProcess::start(BIN, name, &args, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_relays_one_killed_status_failed_and_sigterm_on_mysql() {
    let db = TestMySql::new().await;
    let out = cli_ok(&["migrate", "--database-url", &db.url, "--partitions", "16"]).await;
    assert!(out.contains("migrations applied"), "{out}");
    let partitions: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM eventbus_outbox_partitions")
        .fetch_one(&db.pool)
        .await
        .expect("`migrate` created the partitions");
    assert_eq!(partitions, 16);

    let events = steps(10_000, 100);
    publish_steps(&db.pool, &events, 1_000).await;
    let prefix = format!("{}.", unique_name("cli_mysql"));
    let mut queue = TestQueue::bind_all(&format!("{prefix}{}", Step::DESTINATION)).await;
    let amqp = amqp_url().await;
    let dir = log_dir("relay_mysql");
    let mut a = start_relay("relay-a", &db.url, &amqp, &prefix, &dir);
    let mut b = start_relay("relay-b", &db.url, &amqp, &prefix, &dir);

    // SIGKILL relay-a once a fifth is relayed: mid-batch.
    let deadline = Instant::now() + Duration::from_secs(60);
    while pending(&db.pool).await > 8_000 {
        assert!(Instant::now() < deadline, "nothing relayed within 60 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    a.proc.kill().await;

    // relay-b takes over relay-a's partitions once their leases expire.
    let deadline = Instant::now() + Duration::from_secs(60);
    while pending(&db.pool).await > 0 {
        assert!(Instant::now() < deadline, "rows still pending after 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut received: Vec<Step> = Vec::new();
    loop {
        let batch = queue.try_read(1_000, Duration::from_secs(2)).await;
        if batch.is_empty() {
            break;
        }
        received.extend(
            batch
                .iter()
                .map(|d| serde_json::from_slice::<Step>(&d.data).expect("a Step")),
        );
    }
    let duplicates = assert_per_key_order(&received);
    assert_eq!(
        received.len() - duplicates,
        events.len(),
        "every event arrived"
    );
    assert!(
        duplicates <= BATCH,
        "{duplicates} duplicates: more than the killed relay's batch"
    );
    println!(
        "two relays on MySQL, one killed: {} messages, {duplicates} duplicates",
        received.len()
    );

    // `status`: nothing pending; relay-b owns all 16 partitions.
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        let status = cli_ok(&["status", "--database-url", &db.url]).await;
        if status.contains("relay-b") && status.contains("owns 16 partitions") {
            break status;
        }
        assert!(Instant::now() < deadline, "{status}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert!(status.contains("pending: 0"), "{status}");
    assert!(status.contains("failed (parked): 0"), "{status}");

    // `failed list | retry | skip` on parked rows written with plain SQL.
    for key in ["k1", "k2"] {
        sqlx::query(
            "INSERT INTO eventbus_outbox \
                 (destination, partition_key, event_type, payload, state, attempts, last_error, \
                  next_attempt_at) \
             VALUES ('steps', ?, 'com.example.test.step', '{}', 'failed', 5, 'boom', \
                     UTC_TIMESTAMP(6) + INTERVAL 1 HOUR)",
        )
        .bind(key)
        .execute(&db.pool)
        .await
        .expect("insert a parked row");
    }
    let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM eventbus_outbox ORDER BY id")
        .fetch_all(&db.pool)
        .await
        .expect("ids");
    let list = cli_ok(&["failed", "list", "--database-url", &db.url]).await;
    assert!(list.contains("2 parked"), "{list}");
    assert!(list.contains("boom") && list.contains("k1"), "{list}");
    let out = cli_ok(&[
        "failed",
        "skip",
        &ids[1].to_string(),
        "--database-url",
        &db.url,
    ])
    .await;
    assert!(out.contains("1 skipped"), "{out}");
    let out = cli_ok(&["failed", "retry", "--database-url", &db.url]).await;
    assert!(out.contains("1 released for retry"), "{out}");
    // The released row goes out (its payload is `{}`, not a Step: read raw).
    let deadline = Instant::now() + Duration::from_secs(20);
    while pending(&db.pool).await > 0 {
        assert!(Instant::now() < deadline, "the retried row was not relayed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let retried = queue.try_read(1, Duration::from_secs(10)).await;
    assert_eq!(retried.len(), 1);
    assert_eq!(retried[0].data, b"{}");

    // SIGTERM: relay-b finishes, gives back its partitions and deregisters.
    sigterm(b.proc.child_mut()).await;
    let owned: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM eventbus_outbox_partitions WHERE owner IS NOT NULL",
    )
    .fetch_one(&db.pool)
    .await
    .expect("owned partitions");
    assert_eq!(owned, 0);
    let status = cli_ok(&["status", "--database-url", &db.url]).await;
    assert!(status.contains("unowned partitions: 16"), "{status}");
    queue.delete().await;
}
