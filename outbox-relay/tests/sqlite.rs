//! The `outbox-relay` binary over a SQLite outbox (`--database-url
//! sqlite://path.db`): `migrate` creates the file, `run` relays to RabbitMQ and
//! stops cleanly on SIGTERM, and the PostgreSQL-only commands say so.

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

    sigterm(&mut relay).await;
    // A clean stop gives the partition back.
    let owner: Option<String> = sqlx::query_scalar("SELECT owner FROM eventbus_outbox_partitions")
        .fetch_one(&pool)
        .await
        .expect("lease row");
    assert_eq!(owner, None);
    queue.assert_empty(Duration::from_millis(500)).await;
    queue.delete().await;

    // The operator commands built on PostgreSQL refuse clearly.
    for command in [&["status"][..], &["failed", "list"][..]] {
        let mut args = command.to_vec();
        args.extend(["--database-url", url.as_str()]);
        let out = output(&args).await;
        assert!(!out.status.success(), "{command:?} must fail on SQLite");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("supports PostgreSQL and MySQL only"),
            "{stderr}"
        );
    }
}
