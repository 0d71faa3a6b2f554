//! The PostgreSQL inbox against a real database: duplicates under concurrency,
//! rollback on handler failure, the `begin` API, per-consumer ids and cleanup.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use eventbus::{BoxError, Delivery, Envelope, Error, Inbox, Processed};
use eventbus_tests::TestDb;
use sqlx::PgPool;

fn envelope() -> Envelope {
    let mut e = Envelope::new(
        "urn:service:orders",
        "com.example.order.placed",
        br#"{"order_id":"o-1"}"#.to_vec(),
    );
    e.partition_key = Some("o-1".into());
    e
}

async fn scalar(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

async fn create_counter(pool: &PgPool) {
    sqlx::raw_sql(
        "CREATE TABLE counters (n bigint NOT NULL); INSERT INTO counters VALUES (0);
         CREATE TABLE effects (message text NOT NULL);",
    )
    .execute(pool)
    .await
    .expect("create handler tables");
}

/// A handler that increments the counter and holds its transaction open a while.
async fn count_once(
    pool: PgPool,
    inbox: Inbox,
    envelope: Envelope,
    runs: Arc<AtomicUsize>,
) -> eventbus::Result<Processed<()>> {
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_duplicates_are_processed_exactly_once() {
    let db = TestDb::migrated().await;
    create_counter(&db.pool).await;
    let inbox = Inbox::new("billing");
    let envelope = envelope();
    let runs = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(tokio::sync::Barrier::new(8));

    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (pool, inbox, envelope, runs, barrier) = (
                db.pool.clone(),
                inbox.clone(),
                envelope.clone(),
                runs.clone(),
                barrier.clone(),
            );
            tokio::spawn(async move {
                barrier.wait().await;
                count_once(pool, inbox, envelope, runs).await
            })
        })
        .collect();
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

    let rows: Vec<(String, String, Option<String>)> =
        sqlx::query_as("SELECT consumer, message_id, event_type FROM eventbus_inbox")
            .fetch_all(&db.pool)
            .await
            .expect("read inbox");
    assert_eq!(
        rows,
        vec![(
            "billing".to_owned(),
            envelope.id.clone(),
            Some("com.example.order.placed".to_owned())
        )]
    );
}

#[tokio::test]
async fn handler_failure_rolls_back_and_a_redelivery_is_processed() {
    let db = TestDb::migrated().await;
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
    match &err {
        Error::Handler(source) => assert_eq!(source.to_string(), "payment service declined"),
        other => panic!("expected Error::Handler, got {other:?}"),
    }
    assert!(
        err.to_string().contains("payment service declined"),
        "{err}"
    );
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
    let effects: Vec<String> = sqlx::query_scalar("SELECT message FROM effects")
        .fetch_all(&db.pool)
        .await
        .expect("effects");
    assert_eq!(effects, ["second attempt"]);
    assert_eq!(
        scalar(&db.pool, "SELECT count(*) FROM eventbus_inbox").await,
        1
    );

    // A third delivery is a duplicate and its handler does not run.
    let outcome = inbox
        .process(&db.pool, &envelope, |_tx| {
            Box::pin(async move { Err::<i32, BoxError>("must not run".into()) })
        })
        .await
        .expect("duplicate");
    assert_eq!(outcome, Processed::Duplicate);
}

#[tokio::test]
async fn begin_without_commit_leaves_no_trace() {
    let db = TestDb::migrated().await;
    create_counter(&db.pool).await;
    let inbox = Inbox::new("billing");
    let envelope = envelope();

    let Delivery::New(mut tx) = inbox.begin(&db.pool, &envelope).await.expect("begin") else {
        panic!("a new message must not be a duplicate");
    };
    sqlx::query("INSERT INTO effects VALUES ('dropped')")
        .execute(&mut *tx)
        .await
        .expect("handler write");
    drop(tx);
    assert_eq!(
        scalar(&db.pool, "SELECT count(*) FROM eventbus_inbox").await,
        0
    );
    assert_eq!(scalar(&db.pool, "SELECT count(*) FROM effects").await, 0);

    let Delivery::New(mut tx) = inbox.begin(&db.pool, &envelope).await.expect("begin") else {
        panic!("an uncommitted delivery must not count as processed");
    };
    sqlx::query("INSERT INTO effects VALUES ('committed')")
        .execute(&mut *tx)
        .await
        .expect("handler write");
    tx.commit().await.expect("commit");
    assert_eq!(
        scalar(&db.pool, "SELECT count(*) FROM eventbus_inbox").await,
        1
    );
    assert_eq!(scalar(&db.pool, "SELECT count(*) FROM effects").await, 1);

    let again = inbox.begin(&db.pool, &envelope).await.expect("begin");
    assert!(matches!(again, Delivery::Duplicate), "{again:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_waiting_delivery_takes_over_when_the_first_rolls_back() {
    let db = TestDb::migrated().await;
    create_counter(&db.pool).await;
    let inbox = Inbox::new("billing");
    let envelope = envelope();

    let Delivery::New(first) = inbox.begin(&db.pool, &envelope).await.expect("begin") else {
        panic!("a new message must not be a duplicate");
    };
    let started = Instant::now();
    let second = tokio::spawn(count_once(
        db.pool.clone(),
        inbox.clone(),
        envelope.clone(),
        Arc::new(AtomicUsize::new(0)),
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !second.is_finished(),
        "the second delivery waits for the first"
    );
    drop(first); // rolls back: the message is not processed yet

    let outcome = second.await.expect("task").expect("process");
    assert_eq!(outcome, Processed::Handled(()));
    assert!(started.elapsed() >= Duration::from_millis(500));
    assert_eq!(scalar(&db.pool, "SELECT n FROM counters").await, 1);
    assert_eq!(
        scalar(&db.pool, "SELECT count(*) FROM eventbus_inbox").await,
        1
    );
}

#[tokio::test]
async fn each_consumer_processes_a_message_once() {
    let db = TestDb::migrated().await;
    create_counter(&db.pool).await;
    let envelope = envelope();
    let runs = Arc::new(AtomicUsize::new(0));
    let (a, b) = (Inbox::new("a"), Inbox::new("b"));

    for (inbox, expected) in [
        (&a, Processed::Handled(())),
        (&b, Processed::Handled(())),
        (&a, Processed::Duplicate),
        (&b, Processed::Duplicate),
    ] {
        let outcome = count_once(
            db.pool.clone(),
            inbox.clone(),
            envelope.clone(),
            runs.clone(),
        )
        .await
        .expect("process");
        assert_eq!(outcome, expected, "consumer {}", inbox.consumer());
    }
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    assert_eq!(scalar(&db.pool, "SELECT n FROM counters").await, 2);
    let consumers: Vec<String> =
        sqlx::query_scalar("SELECT consumer FROM eventbus_inbox ORDER BY consumer")
            .fetch_all(&db.pool)
            .await
            .expect("read inbox");
    assert_eq!(consumers, ["a", "b"]);
}

#[tokio::test]
async fn cleanup_deletes_old_entries_in_batches() {
    let db = TestDb::migrated().await;
    sqlx::raw_sql(
        "INSERT INTO eventbus_inbox (consumer, source, message_id, event_type, received_at)
             SELECT 'billing', 'urn:test', 'old-' || g, 't', now() - interval '10 days'
             FROM generate_series(1, 2500) AS g;
         INSERT INTO eventbus_inbox (consumer, source, message_id, event_type, received_at)
             SELECT 'billing', 'urn:test', 'recent-' || g, 't', now() - interval '6 days'
             FROM generate_series(1, 5) AS g;
         INSERT INTO eventbus_inbox (consumer, source, message_id, event_type)
             SELECT 'billing', 'urn:test', 'new-' || g, 't' FROM generate_series(1, 10) AS g;
         -- Counts DELETE statements, to see the batches.
         CREATE TABLE deletes (n bigint NOT NULL); INSERT INTO deletes VALUES (0);
         CREATE FUNCTION count_delete() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN UPDATE deletes SET n = n + 1; RETURN NULL; END $$;
         CREATE TRIGGER count_delete AFTER DELETE ON eventbus_inbox
             FOR EACH STATEMENT EXECUTE FUNCTION count_delete();",
    )
    .execute(&db.pool)
    .await
    .expect("seed inbox");

    let week = Duration::from_secs(7 * 24 * 3600);
    let deleted = Inbox::new("billing")
        .cleanup(&db.pool, week, 1000)
        .await
        .expect("cleanup");
    assert_eq!(deleted, 2500);
    assert_eq!(
        scalar(&db.pool, "SELECT n FROM deletes").await,
        3,
        "1000 + 1000 + 500 rows: three statements"
    );
    let left: Vec<String> =
        sqlx::query_scalar("SELECT message_id FROM eventbus_inbox ORDER BY message_id")
            .fetch_all(&db.pool)
            .await
            .expect("read inbox");
    assert_eq!(left.len(), 15, "{left:?}");
    assert!(left.iter().all(|id| !id.starts_with("old-")), "{left:?}");

    let deleted = Inbox::new("billing")
        .cleanup(&db.pool, week, 1000)
        .await
        .expect("cleanup again");
    assert_eq!(deleted, 0);
    assert_eq!(
        scalar(&db.pool, "SELECT count(*) FROM eventbus_inbox").await,
        15
    );
}

#[tokio::test]
async fn processing_before_migration_says_to_migrate() {
    let db = TestDb::new().await;
    let err = Inbox::new("billing")
        .process(&db.pool, &envelope(), |_tx| {
            Box::pin(async move { Ok::<_, BoxError>(()) })
        })
        .await
        .expect_err("no inbox table");
    match &err {
        Error::NotMigrated { table } => assert_eq!(table, "eventbus_inbox"),
        other => panic!("expected NotMigrated, got {other:?}"),
    }
    assert!(err.to_string().contains("outbox-relay migrate"), "{err}");
}
