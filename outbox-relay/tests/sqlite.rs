//! The `outbox-relay` binary over a SQLite outbox (`--database-url
//! sqlite://path.db`): `migrate` creates the file, `run` relays to RabbitMQ and
//! stops cleanly on SIGTERM, and the operator commands (`status`, `failed
//! list | retry | skip`) work on it as on PostgreSQL and MySQL.

use std::process::Stdio;
use std::time::Duration;

use eventbus::Event;
use eventbus_tests::rabbitmq::TestQueue;
use eventbus_tests::relay::{assert_per_key_order, pending, publish_steps, steps, Step};
use eventbus_tests::relay_cli::{self, free_port, sigterm};
use eventbus_tests::sqlite::TestSqlite;
use eventbus_tests::{amqp_url, unique_name};
use tokio::process::Command;

/// The binary under test.
const BIN: &str = env!("CARGO_BIN_EXE_outbox-relay");

fn relay_command(args: &[&str]) -> Command {
    relay_cli::command(BIN, args)
}

async fn output(args: &[&str]) -> std::process::Output {
    relay_cli::output(BIN, args).await
}

async fn cli_ok(args: &[&str]) -> String {
    relay_cli::cli_ok(BIN, args).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn migrate_run_and_stop_on_a_sqlite_file() {
    // The directory comes from the helper; the file is created by `migrate`.
    let dir = TestSqlite::new().await;
    let path = dir.dir().join("app.db");
    let url = format!("sqlite://{}", path.display());
    assert!(!path.exists());
    let out = output(&["migrate", "--database-url", &url]).await;
    assert!(
        out.status.success(),
        "migrate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(path.exists(), "migrate creates the database file");

    let pool = sqlx::SqlitePool::connect_with(eventbus::sqlite::connect_options(&path))
        .await
        .expect("open the migrated file");
    let events = steps(1_000, 20);
    publish_steps(&pool, &events, 250).await;

    let prefix = format!("{}.", unique_name("cli_sqlite"));
    let mut queue = TestQueue::bind_all(&format!("{prefix}{}", Step::DESTINATION)).await;
    let amqp = amqp_url().await;
    let http = format!("127.0.0.1:{}", free_port());
    let log = dir.dir().join("relay.log");
    let mut relay = relay_command(&[
        "run",
        "--database-url",
        &url,
        "--broker",
        &amqp,
        "--http",
        &http,
        "--destination-prefix",
        &prefix,
        "--poll-interval-ms",
        "200",
        "--name",
        "sqlite-relay",
    ])
    .stdout(Stdio::null())
    .stderr(std::fs::File::create(&log).expect("create the relay log"))
    .spawn()
    .expect("start outbox-relay run");

    let deliveries = queue.try_read(events.len(), Duration::from_secs(60)).await;
    assert_eq!(
        deliveries.len(),
        events.len(),
        "relay log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let received: Vec<Step> = deliveries
        .iter()
        .map(|d| serde_json::from_slice(&d.data).expect("a Step"))
        .collect();
    assert_eq!(assert_per_key_order(&received), 0, "no duplicates");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while pending(&pool).await > 0 {
        assert!(tokio::time::Instant::now() < deadline, "rows still pending");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // `status`: nothing pending; the relay owns the file's one partition.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        let status = cli_ok(&["status", "--database-url", &url]).await;
        if status.contains("sqlite-relay") && status.contains("owns 1 partitions") {
            break status;
        }
        assert!(tokio::time::Instant::now() < deadline, "{status}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert!(status.contains("pending: 0"), "{status}");
    assert!(status.contains("failed (parked): 0"), "{status}");
    assert!(status.contains("unowned partitions: 0"), "{status}");

    // `failed list | retry | skip` on parked rows written with plain SQL.
    for key in ["k1", "k2"] {
        sqlx::query(
            "INSERT INTO eventbus_outbox \
                 (destination, partition_key, event_type, payload, state, attempts, last_error, \
                  next_attempt_at) \
             VALUES ('steps', ?1, 'com.example.test.step', '{}', 'failed', 5, 'boom', \
                     strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '+1 hour'))",
        )
        .bind(key)
        .execute(&pool)
        .await
        .expect("insert a parked row");
    }
    let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM eventbus_outbox ORDER BY id")
        .fetch_all(&pool)
        .await
        .expect("ids");
    assert_eq!(ids.len(), 2, "only the parked rows are left");
    let status = cli_ok(&["status", "--database-url", &url]).await;
    assert!(status.contains("failed (parked): 2"), "{status}");
    let list = cli_ok(&["failed", "list", "--database-url", &url]).await;
    assert!(list.contains("2 parked"), "{list}");
    assert!(list.contains("boom") && list.contains("k1"), "{list}");
    let out = cli_ok(&[
        "failed",
        "skip",
        &ids[1].to_string(),
        "--database-url",
        &url,
    ])
    .await;
    assert!(out.contains("1 skipped"), "{out}");
    let list = cli_ok(&["failed", "list", "--database-url", &url]).await;
    assert!(list.contains("1 parked") && !list.contains("k2"), "{list}");
    let out = cli_ok(&["failed", "retry", "--database-url", &url]).await;
    assert!(out.contains("1 released for retry"), "{out}");
    // The released row goes out (its payload is `{}`, not a Step: read raw).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while pending(&pool).await > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the retried row was not relayed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let retried = queue.try_read(1, Duration::from_secs(10)).await;
    assert_eq!(retried.len(), 1);
    assert_eq!(retried[0].data, b"{}");

    sigterm(&mut relay).await;
    // A clean stop gives the partition back.
    let owner: Option<String> = sqlx::query_scalar("SELECT owner FROM eventbus_outbox_partitions")
        .fetch_one(&pool)
        .await
        .expect("lease row");
    assert_eq!(owner, None);
    let status = cli_ok(&["status", "--database-url", &url]).await;
    assert!(status.contains("unowned partitions: 1"), "{status}");
    queue.assert_empty(Duration::from_millis(500)).await;
    queue.delete().await;
}
