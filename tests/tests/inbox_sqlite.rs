//! The SQLite inbox against real database files: duplicates under concurrent
//! deliveries, rollback on handler failure, batches, per-consumer cleanup.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use eventbus::inbox::InboxDatabase;
use eventbus::{BoxError, Envelope, Error, Inbox, Processed, TableName};
use eventbus_tests::sqlite::TestSqlite;
use sqlx::{Sqlite, SqlitePool};

fn envelope() -> Envelope {
    let mut e = Envelope::new(
        "urn:service:orders",
        "com.example.order.placed",
        br#"{"order_id":"o-1"}"#.to_vec(),
    );
    e.partition_key = Some("o-1".into());
    e
}

async fn scalar(pool: &SqlitePool, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

async fn create_counter(pool: &SqlitePool) {
    sqlx::raw_sql(
        "CREATE TABLE counters (n INTEGER NOT NULL); INSERT INTO counters VALUES (0);
         CREATE TABLE effects (message TEXT NOT NULL);",
    )
    .execute(pool)
    .await
    .expect("create handler tables");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_duplicates_are_processed_exactly_once() {
    let db = TestSqlite::migrated().await;
    create_counter(&db.pool).await;
    let inbox = Inbox::new("billing");
    let envelope = envelope();
    let runs = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(tokio::sync::Barrier::new(8));

    // Eight deliveries of one message, from eight pools as eight consumer
    // processes would; each handler holds its transaction open a while.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let pool = db.connect().await;
        let (inbox, envelope, runs, barrier) = (
            inbox.clone(),
            envelope.clone(),
            runs.clone(),
            barrier.clone(),
        );
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            inbox
                .process(&pool, &envelope, |tx| {
                    Box::pin(async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        sqlx::query("UPDATE counters SET n = n + 1")
                            .execute(&mut **tx)
                            .await?;
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        Ok::<_, sqlx::Error>(())
                    })
                })
                .await
        }));
    }
    let mut handled = 0;
    let mut duplicates = 0;
    for task in futures::future::join_all(tasks).await {
        match task.expect("task").expect("process") {
            Processed::Handled(()) => handled += 1,
            Processed::Duplicate => duplicates += 1,
        }
    }
    assert_eq!((handled, duplicates), (1, 7));
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the handler ran once");
    assert_eq!(scalar(&db.pool, "SELECT n FROM counters").await, 1);

    let rows: Vec<(String, String, String, Option<String>)> =
        sqlx::query_as("SELECT consumer, source, message_id, event_type FROM eventbus_inbox")
            .fetch_all(&db.pool)
            .await
            .expect("read inbox");
    assert_eq!(
        rows,
        vec![(
            "billing".to_owned(),
            "urn:service:orders".to_owned(),
            envelope.id.clone(),
            Some("com.example.order.placed".to_owned())
        )]
    );
}

#[tokio::test]
async fn handler_failure_rolls_back_and_a_redelivery_is_processed() {
    let db = TestSqlite::migrated().await;
    create_counter(&db.pool).await;
    let inbox = Inbox::new("billing");
    let envelope = envelope();

    let err = inbox
        .process(&db.pool, &envelope, |tx| {
            Box::pin(async move {
                sqlx::query("INSERT INTO effects VALUES ('first attempt')")
                    .execute(&mut **tx)
                    .await?;
                Err::<(), BoxError>("payment service declined".into())
            })
        })
        .await
        .expect_err("the handler failed");
    assert!(matches!(&err, Error::Handler(_)), "{err:?}");
    assert_eq!(
        scalar(&db.pool, "SELECT count(*) FROM eventbus_inbox").await,
        0
    );
    assert_eq!(scalar(&db.pool, "SELECT count(*) FROM effects").await, 0);

    let outcome = inbox
        .process(&db.pool, &envelope, |tx| {
            Box::pin(async move {
                sqlx::query("INSERT INTO effects VALUES ('second attempt')")
                    .execute(&mut **tx)
                    .await?;
                Ok::<_, sqlx::Error>(42)
            })
        })
        .await
        .expect("redelivery");
    assert_eq!(outcome, Processed::Handled(42));
    let outcome = inbox
        .process(&db.pool, &envelope, |_tx| {
            Box::pin(async move { Err::<i32, BoxError>("must not run".into()) })
        })
        .await
        .expect("duplicate");
    assert_eq!(outcome, Processed::Duplicate);
    let effects: Vec<String> = sqlx::query_scalar("SELECT message FROM effects")
        .fetch_all(&db.pool)
        .await
        .expect("effects");
    assert_eq!(effects, ["second attempt"]);

    // Another consumer group processes the same message independently.
    let outcome = Inbox::new("shipping")
        .process(&db.pool, &envelope, |_tx| {
            Box::pin(async move { Ok::<_, sqlx::Error>(7) })
        })
        .await
        .expect("other consumer");
    assert_eq!(outcome, Processed::Handled(7));
}

#[tokio::test]
async fn a_batch_is_recorded_with_one_flag_per_message() {
    let db = TestSqlite::migrated().await;
    let table = TableName::parse("eventbus_inbox").expect("valid");
    let a = envelope();
    let b = envelope();
    let c = envelope();
    let mut tx = db.pool.begin().await.expect("begin");
    assert!(
        <Sqlite as InboxDatabase>::try_record(&mut *tx, &table, "billing", &b)
            .await
            .expect("record b")
    );
    // `a` twice: only its first occurrence is fresh; `b` was recorded before.
    let fresh =
        <Sqlite as InboxDatabase>::try_record_many(&mut *tx, &table, "billing", &[&a, &b, &a, &c])
            .await
            .expect("record the batch");
    assert_eq!(fresh, [true, false, false, true]);
    tx.commit().await.expect("commit");
    assert_eq!(
        scalar(&db.pool, "SELECT count(*) FROM eventbus_inbox").await,
        3
    );

    let mut tx = db.pool.begin().await.expect("begin");
    let fresh = <Sqlite as InboxDatabase>::try_record_many(&mut *tx, &table, "billing", &[&c, &a])
        .await
        .expect("record again");
    assert_eq!(
        fresh,
        [false, false],
        "a redelivered batch is all duplicates"
    );
    let empty = <Sqlite as InboxDatabase>::try_record_many(&mut *tx, &table, "billing", &[])
        .await
        .expect("empty batch");
    assert!(empty.is_empty());
}

#[tokio::test]
async fn cleanup_deletes_old_entries_of_one_consumer_in_batches() {
    let db = TestSqlite::migrated().await;
    // 25 old entries of `billing`, 3 recent ones, and 5 old ones of `shipping`.
    sqlx::raw_sql(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 25)
         INSERT INTO eventbus_inbox (consumer, source, message_id, received_at)
         SELECT 'billing', 'urn:a', 'old-' || i,
                strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-2 days') FROM n;
         INSERT INTO eventbus_inbox (consumer, source, message_id)
         VALUES ('billing', 'urn:a', 'new-1'), ('billing', 'urn:a', 'new-2'),
                ('billing', 'urn:a', 'new-3');
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5)
         INSERT INTO eventbus_inbox (consumer, source, message_id, received_at)
         SELECT 'shipping', 'urn:a', 'old-' || i,
                strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-2 days') FROM n;",
    )
    .execute(&db.pool)
    .await
    .expect("seed inbox");

    let deleted = Inbox::new("billing")
        .cleanup(&db.pool, Duration::from_secs(24 * 3600), 10)
        .await
        .expect("cleanup");
    assert_eq!(deleted, 25, "three batches of at most 10");
    let left: Vec<(String, String)> =
        sqlx::query_as("SELECT consumer, message_id FROM eventbus_inbox ORDER BY 1, 2")
            .fetch_all(&db.pool)
            .await
            .expect("read inbox");
    let mut expected: Vec<(String, String)> = ["new-1", "new-2", "new-3"]
        .iter()
        .map(|m| ("billing".to_owned(), (*m).to_owned()))
        .collect();
    expected.extend((1..=5).map(|i| ("shipping".to_owned(), format!("old-{i}"))));
    assert_eq!(left, expected);

    // The window is respected to the second: nothing of the last hour goes.
    let deleted = Inbox::new("billing")
        .cleanup(&db.pool, Duration::from_secs(3600), 10)
        .await
        .expect("cleanup");
    assert_eq!(deleted, 0);
}
