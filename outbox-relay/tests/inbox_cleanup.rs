//! `outbox-relay inbox cleanup` on PostgreSQL, MySQL and SQLite: it deletes
//! the inbox rows of one consumer group older than `--older-than`, in
//! batches, prints how many, and leaves younger rows and other groups' rows.

use eventbus_tests::backend::TestDatabase;
use eventbus_tests::harness;
use eventbus_tests::mysql::TestMySql;
use eventbus_tests::sqlite::TestSqlite;
use eventbus_tests::{unique_name, TestDb};

/// The binary under test.
const BIN: &str = env!("CARGO_BIN_EXE_outbox-relay");

/// Old rows of the group: three batches of `--batch 7`.
const OLD: usize = 20;

/// One `INSERT` of the seed rows: `OLD` rows of `group` two days old
/// (`old` is the SQL for that time), 5 of `group` and 6 of `other`
/// just received (`now`), and 4 of `other` two days old.
fn seed_sql(old: &str, now: &str, group: &str, other: &str) -> String {
    let mut rows = Vec::new();
    let mut add = |consumer: &str, prefix: &str, at: &str, n: usize| {
        for i in 0..n {
            rows.push(format!(
                "('{consumer}', 'urn:test', '{prefix}-{i}', 't', {at})"
            ));
        }
    };
    add(group, "old", old, OLD);
    add(group, "new", now, 5);
    add(other, "new", now, 6);
    add(other, "old", old, 4);
    format!(
        "INSERT INTO eventbus_inbox (consumer, source, message_id, event_type, received_at) \
         VALUES {}",
        rows.join(", ")
    )
}

/// Runs the clean-up of `group` (window one hour) against `url` and returns
/// its standard output.
async fn cleanup(url: &str, group: &str) -> String {
    harness::cli_ok(
        BIN,
        &[
            "inbox",
            "cleanup",
            "--database-url",
            url,
            "--consumer",
            group,
            "--older-than",
            "3600",
            "--batch",
            "7",
        ],
    )
    .await
}

/// What the first and second clean-up print, and the rows left afterwards:
/// (group's old, group's new, other's old, other's new).
fn assert_outcome(first: &str, second: &str, left: (i64, i64, i64, i64)) {
    assert!(
        first.contains(&format!("{OLD} inbox rows of consumer")),
        "the first run reports the {OLD} old rows: {first}"
    );
    assert!(
        second.contains("0 inbox rows of consumer"),
        "a second run finds nothing: {second}"
    );
    assert_eq!(
        left,
        (0, 5, 4, 6),
        "only the group's rows past the window are deleted"
    );
}

/// Seeds the inbox of a fresh `D` database (`old` and `now` are the SQL for
/// two days ago and now), runs the clean-up twice and checks what it printed
/// and what it left.
async fn cleanup_scenario<D: TestDatabase>(old: &str, now: &str) {
    let db = D::migrated().await;
    let (group, other) = (unique_name("billing"), unique_name("shipping"));
    db.execute(&seed_sql(old, now, &group, &other))
        .await
        .expect("seed");
    let first = cleanup(db.url(), &group).await;
    let second = cleanup(db.url(), &group).await;
    let count = |consumer: &str, prefix: &str| {
        format!(
            "SELECT count(*) FROM eventbus_inbox \
             WHERE consumer = '{consumer}' AND message_id LIKE '{prefix}-%'"
        )
    };
    let left = (
        db.scalar(&count(&group, "old")).await,
        db.scalar(&count(&group, "new")).await,
        db.scalar(&count(&other, "old")).await,
        db.scalar(&count(&other, "new")).await,
    );
    assert_outcome(&first, &second, left);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_on_postgres() {
    cleanup_scenario::<TestDb>("now() - interval '2 days'", "now()").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_on_mysql() {
    cleanup_scenario::<TestMySql>("UTC_TIMESTAMP(6) - INTERVAL 2 DAY", "UTC_TIMESTAMP(6)").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_on_sqlite() {
    cleanup_scenario::<TestSqlite>(
        "strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-2 days')",
        "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')",
    )
    .await;
}

/// Only the group's name says whose rows go: the option is required.
#[tokio::test]
async fn cleanup_without_a_consumer_is_refused() {
    let out = harness::output(BIN, &["inbox", "cleanup", "--older-than", "3600"]).await;
    assert!(!out.status.success());
    assert!(
        harness::text(&out).contains("--consumer"),
        "{}",
        harness::text(&out)
    );
}
