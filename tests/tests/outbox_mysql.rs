//! The MySQL/MariaDB outbox against a real server (`MYSQL_URL`): the shared
//! outbox suite (`eventbus_tests::suites::outbox`), and what only MySQL has —
//! the write locks and trigger that keep commit order per partition.

use std::time::Duration;

use eventbus::mysql::partition_of;
use eventbus::{Metadata, Outbox};
use eventbus_tests::mysql::TestMySql;
use eventbus_tests::relay::Step;
use sqlx::{Executor, Row};

// The shared scenarios this binary runs: its row in `tests/src/matrix.rs`.
eventbus_tests::matrix!(outbox_mysql);

fn step(key: &str, seq: u64) -> Step {
    Step {
        key: key.into(),
        seq,
        pad: String::new(),
    }
}

/// The stored partition is `CRC32(key) % P`, what `partition_of` computes;
/// the payload is kept byte for byte (not re-serialized as MySQL's `JSON`
/// would); timestamps are UTC whatever the session's time zone.
#[tokio::test]
async fn partition_payload_and_time_are_stored_as_documented() {
    let db = TestMySql::migrated().await;
    let mut conn = db.pool.acquire().await.expect("connection");
    // A writer in another time zone inserts by plain SQL.
    conn.execute("SET time_zone = '+05:00'")
        .await
        .expect("time zone");
    conn.execute(
        r#"INSERT INTO eventbus_outbox (destination, partition_key, event_type, payload)
           VALUES ('d', 'clé-1', 't', '{"b":  1,   "a": [ 2 ]}')"#,
    )
    .await
    .expect("insert");
    drop(conn);
    let row = sqlx::query(
        "SELECT `partition`, payload, \
                TIMESTAMPDIFF(SECOND, created_at, UTC_TIMESTAMP()) AS age \
         FROM eventbus_outbox",
    )
    .fetch_one(&db.pool)
    .await
    .expect("row");
    assert_eq!(row.get::<i32, _>("partition"), partition_of("clé-1", 64));
    assert_eq!(
        row.get::<String, _>("payload"),
        r#"{"b":  1,   "a": [ 2 ]}"#
    );
    let age: i64 = row.get("age");
    assert!((0..60).contains(&age), "created_at is UTC: {age} s old");
}

/// Two writers of one partition take turns: the second `publish` waits for
/// the first transaction, so ids are committed in id order. Writers of other
/// partitions do not wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writers_of_one_partition_take_turns_and_others_do_not_wait() {
    let db = TestMySql::migrated().await;
    let outbox = Outbox::new("urn:service:orders");
    let mut first = db.pool.begin().await.expect("begin");
    outbox
        .publish(&mut first, &step("k", 1))
        .await
        .expect("publish");

    // Same key: waits for `first`.
    let same = tokio::spawn({
        let pool = db.pool.clone();
        async move {
            let mut tx = pool.begin().await.expect("begin");
            Outbox::new("urn:service:orders")
                .publish(&mut tx, &step("k", 2))
                .await
                .expect("publish");
            tx.commit().await.expect("commit");
        }
    });
    // A key of another partition: does not wait.
    let other_key = (0..)
        .map(|i| format!("other-{i}"))
        .find(|k| partition_of(k, 64) != partition_of("k", 64))
        .expect("a key of another partition");
    let mut other = db.pool.begin().await.expect("begin");
    tokio::time::timeout(
        Duration::from_secs(2),
        outbox.publish_all(&mut other, &[step(&other_key, 1)], &Metadata::default()),
    )
    .await
    .expect("a writer of another partition does not wait")
    .expect("publish");
    other.commit().await.expect("commit");

    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !same.is_finished(),
        "the second writer of the partition waits"
    );
    first.commit().await.expect("commit");
    tokio::time::timeout(Duration::from_secs(10), same)
        .await
        .expect("the second writer goes on once the first committed")
        .expect("task");
    let payloads: Vec<String> = sqlx::query_scalar(
        "SELECT payload FROM eventbus_outbox WHERE partition_key = 'k' ORDER BY id",
    )
    .fetch_all(&db.pool)
    .await
    .expect("rows");
    let k: Vec<u64> = payloads
        .iter()
        .map(|p| serde_json::from_str::<Step>(p).expect("a Step").seq)
        .collect();
    assert_eq!(k, [1, 2], "ids follow commit order within the partition");
}

/// A plain-SQL `INSERT` from another language takes the partition's write
/// lock through the trigger: it waits for an open `publish` of the same
/// partition instead of taking an id ahead of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_plain_sql_insert_waits_for_an_open_publish_of_its_partition() {
    let db = TestMySql::migrated().await;
    let mut first = db.pool.begin().await.expect("begin");
    Outbox::new("urn:service:orders")
        .publish(&mut first, &step("k", 1))
        .await
        .expect("publish");
    let plain = tokio::spawn({
        let pool = db.pool.clone();
        async move {
            sqlx::query(
                r#"INSERT INTO eventbus_outbox (destination, partition_key, event_type, payload)
                   VALUES ('steps', 'k', 'com.example.test.step', '{"key":"k","seq":2,"pad":""}')"#,
            )
            .execute(&pool)
            .await
            .expect("plain insert");
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !plain.is_finished(),
        "the plain insert waits for the open publish"
    );
    first.commit().await.expect("commit");
    tokio::time::timeout(Duration::from_secs(10), plain)
        .await
        .expect("the plain insert goes on")
        .expect("task");
    let payloads: Vec<String> =
        sqlx::query_scalar("SELECT payload FROM eventbus_outbox ORDER BY id")
            .fetch_all(&db.pool)
            .await
            .expect("rows");
    let seqs: Vec<u64> = payloads
        .iter()
        .map(|p| serde_json::from_str::<Step>(p).expect("a Step").seq)
        .collect();
    assert_eq!(seqs, [1, 2]);
}
