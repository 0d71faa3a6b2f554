//! The inbox suite, on any database: concurrent duplicates processed exactly
//! once, rollback on handler failure, the `begin` API, a waiting delivery
//! taking over after a rollback, one row per consumer, batches, per-consumer
//! cleanup, and the error before migration.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use eventbus::inbox::InboxDatabase;
use eventbus::{BoxError, Delivery, Envelope, Error, Inbox, Processed, TableName};

use crate::backend::TestDatabase;

fn envelope() -> Envelope {
    let mut e = Envelope::new(
        "urn:service:orders",
        "com.example.order.placed",
        br#"{"order_id":"o-1"}"#.to_vec(),
    );
    e.partition_key = Some("o-1".into());
    e
}

/// A counter the handlers increment and a table of handler writes.
async fn create_counter<D: TestDatabase>(db: &D) {
    for sql in [
        "CREATE TABLE counters (n INTEGER NOT NULL)",
        "INSERT INTO counters VALUES (0)",
        "CREATE TABLE handler_writes (message VARCHAR(64) NOT NULL)",
    ] {
        db.execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}

/// Processes `envelope` with a handler that counts its runs, increments the
/// counter and holds its transaction open for 300 ms.
async fn count_once<D: TestDatabase>(
    pool: sqlx::Pool<D::DB>,
    inbox: Inbox,
    envelope: Envelope,
    runs: Arc<AtomicUsize>,
) -> eventbus::Result<Processed<()>> {
    inbox
        .process(&pool, &envelope, |tx| {
            Box::pin(async move {
                runs.fetch_add(1, Ordering::SeqCst);
                D::execute_in(&mut **tx, "UPDATE counters SET n = n + 1").await?;
                tokio::time::sleep(Duration::from_millis(300)).await;
                Ok::<_, sqlx::Error>(())
            })
        })
        .await
}

/// Eight deliveries of one message at once, from eight pools as eight
/// consumer processes would: exactly one handler runs and commits, seven are
/// duplicates, one inbox row with the message's consumer, key (its UUID id
/// alone) and type.
pub async fn concurrent_duplicates_are_processed_exactly_once<D: TestDatabase>() {
    let db = D::migrated().await;
    create_counter(&db).await;
    let inbox = Inbox::new("billing");
    let envelope = envelope();
    let runs = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(tokio::sync::Barrier::new(8));
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
            count_once::<D>(pool, inbox, envelope, runs).await
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
    assert_eq!(db.scalar("SELECT n FROM counters").await, 1);
    let row = |column: &str| format!("SELECT {column} FROM eventbus_inbox");
    assert_eq!(
        db.texts(&row("consumer")).await,
        [Some("billing".to_owned())]
    );
    assert_eq!(
        db.texts(&row("source")).await,
        [Some(eventbus::inbox::UUID_SCOPE.to_owned())],
        "a UUID id is keyed alone, whatever its source"
    );
    assert_eq!(
        db.texts(&row("message_id")).await,
        [Some(envelope.id.clone())]
    );
    assert_eq!(
        db.texts(&row("event_type")).await,
        [Some("com.example.order.placed".to_owned())]
    );
}

/// A failing handler leaves nothing (no inbox row, no write); the redelivery
/// is processed; a third delivery is a duplicate whose handler never runs,
/// while another consumer group still processes the message.
pub async fn handler_failure_rolls_back_and_a_redelivery_is_processed<D: TestDatabase>() {
    let db = D::migrated().await;
    create_counter(&db).await;
    let inbox = Inbox::new("billing");
    let envelope = envelope();

    let err = inbox
        .process(db.pool(), &envelope, |tx| {
            Box::pin(async move {
                D::execute_in(
                    &mut **tx,
                    "INSERT INTO handler_writes VALUES ('first attempt')",
                )
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
    assert_eq!(db.scalar("SELECT count(*) FROM eventbus_inbox").await, 0);
    assert_eq!(db.scalar("SELECT count(*) FROM handler_writes").await, 0);

    let outcome = inbox
        .process(db.pool(), &envelope, |tx| {
            Box::pin(async move {
                D::execute_in(
                    &mut **tx,
                    "INSERT INTO handler_writes VALUES ('second attempt')",
                )
                .await?;
                Ok::<_, sqlx::Error>(42)
            })
        })
        .await
        .expect("redelivery");
    assert_eq!(outcome, Processed::Handled(42));
    assert_eq!(
        db.texts("SELECT message FROM handler_writes").await,
        [Some("second attempt".to_owned())]
    );
    assert_eq!(db.scalar("SELECT count(*) FROM eventbus_inbox").await, 1);

    let outcome = inbox
        .process(db.pool(), &envelope, |_tx| {
            Box::pin(async move { Err::<i32, BoxError>("must not run".into()) })
        })
        .await
        .expect("duplicate");
    assert_eq!(outcome, Processed::Duplicate);

    let outcome = Inbox::new("shipping")
        .process(db.pool(), &envelope, |_tx| {
            Box::pin(async move { Ok::<_, sqlx::Error>(7) })
        })
        .await
        .expect("another consumer group");
    assert_eq!(outcome, Processed::Handled(7));
}

/// `begin` without `commit` leaves no trace (no inbox row, no handler
/// write), so the message comes back as new; once committed, it is a
/// duplicate.
pub async fn begin_without_commit_leaves_no_trace<D: TestDatabase>() {
    let db = D::migrated().await;
    create_counter(&db).await;
    let inbox = Inbox::new("billing");
    let envelope = envelope();

    let Delivery::New(mut tx) = inbox.begin(db.pool(), &envelope).await.expect("begin") else {
        panic!("a new message must not be a duplicate");
    };
    D::execute_in(&mut *tx, "INSERT INTO handler_writes VALUES ('dropped')")
        .await
        .expect("handler write");
    drop(tx);
    assert_eq!(db.scalar("SELECT count(*) FROM eventbus_inbox").await, 0);
    assert_eq!(db.scalar("SELECT count(*) FROM handler_writes").await, 0);

    let Delivery::New(mut tx) = inbox.begin(db.pool(), &envelope).await.expect("begin") else {
        panic!("an uncommitted delivery must not count as processed");
    };
    D::execute_in(&mut *tx, "INSERT INTO handler_writes VALUES ('committed')")
        .await
        .expect("handler write");
    tx.commit().await.expect("commit");
    assert_eq!(db.scalar("SELECT count(*) FROM eventbus_inbox").await, 1);
    assert_eq!(db.scalar("SELECT count(*) FROM handler_writes").await, 1);

    let again = inbox.begin(db.pool(), &envelope).await.expect("begin");
    assert!(matches!(again, Delivery::Duplicate), "{again:?}");
}

/// A second delivery waits while the first is in progress; when the first
/// rolls back (its transaction dropped), the second processes the message.
pub async fn a_waiting_delivery_takes_over_when_the_first_rolls_back<D: TestDatabase>() {
    let db = D::migrated().await;
    create_counter(&db).await;
    let inbox = Inbox::new("billing");
    let envelope = envelope();

    let Delivery::New(first) = inbox.begin(db.pool(), &envelope).await.expect("begin") else {
        panic!("a new message must not be a duplicate");
    };
    let started = Instant::now();
    let second = tokio::spawn(count_once::<D>(
        db.connect().await,
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
    assert_eq!(db.scalar("SELECT n FROM counters").await, 1);
    assert_eq!(db.scalar("SELECT count(*) FROM eventbus_inbox").await, 1);
}

/// Consumers keep separate books: each processes the message once.
pub async fn each_consumer_processes_a_message_once<D: TestDatabase>() {
    let db = D::migrated().await;
    create_counter(&db).await;
    let envelope = envelope();
    let runs = Arc::new(AtomicUsize::new(0));
    let (a, b) = (Inbox::new("a"), Inbox::new("b"));
    for (inbox, expected) in [
        (&a, Processed::Handled(())),
        (&b, Processed::Handled(())),
        (&a, Processed::Duplicate),
        (&b, Processed::Duplicate),
    ] {
        let outcome = count_once::<D>(
            db.pool().clone(),
            inbox.clone(),
            envelope.clone(),
            runs.clone(),
        )
        .await
        .expect("process");
        assert_eq!(outcome, expected, "consumer {}", inbox.consumer());
    }
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    assert_eq!(db.scalar("SELECT n FROM counters").await, 2);
    assert_eq!(
        db.texts("SELECT consumer FROM eventbus_inbox ORDER BY consumer")
            .await,
        [Some("a".to_owned()), Some("b".to_owned())]
    );
}

/// A batch is recorded with one flag per message, in input order: an id
/// already recorded, or repeated within the batch, is not fresh.
pub async fn a_batch_is_recorded_with_one_flag_per_message<D: TestDatabase>() {
    let db = D::migrated().await;
    let table = TableName::default_inbox();
    let (a, b, c) = (envelope(), envelope(), envelope());
    let mut tx = db.pool().begin().await.expect("begin");
    assert!(
        <D::DB as InboxDatabase>::try_record(&mut *tx, &table, "billing", &b)
            .await
            .expect("record b")
    );
    let fresh =
        <D::DB as InboxDatabase>::try_record_many(&mut *tx, &table, "billing", &[&a, &b, &a, &c])
            .await
            .expect("record the batch");
    assert_eq!(fresh, [true, false, false, true]);
    tx.commit().await.expect("commit");
    assert_eq!(db.scalar("SELECT count(*) FROM eventbus_inbox").await, 3);

    let mut tx = db.pool().begin().await.expect("begin");
    let fresh = <D::DB as InboxDatabase>::try_record_many(&mut *tx, &table, "billing", &[&c, &a])
        .await
        .expect("record again");
    assert_eq!(
        fresh,
        [false, false],
        "a redelivered batch is all duplicates"
    );
    let empty = <D::DB as InboxDatabase>::try_record_many(&mut *tx, &table, "billing", &[])
        .await
        .expect("empty batch");
    assert!(empty.is_empty());
}

/// Cleanup deletes one consumer's old entries in batches and keeps recent ones
/// and other consumers'.
pub async fn cleanup_deletes_old_entries_of_one_consumer_in_batches<D: TestDatabase>() {
    let db = D::migrated().await;
    let insert = |consumer: &str, id: String, old: bool| {
        let received = if old {
            format!(", {}", D::LONG_AGO)
        } else {
            String::new()
        };
        let column = if old { ", received_at" } else { "" };
        format!(
            "INSERT INTO eventbus_inbox (consumer, source, message_id{column}) \
             VALUES ('{consumer}', 'urn:a', '{id}'{received})"
        )
    };
    let mut statements = Vec::new();
    statements.extend((1..=25).map(|i| insert("billing", format!("old-{i}"), true)));
    statements.extend((1..=3).map(|i| insert("billing", format!("new-{i}"), false)));
    statements.extend((1..=5).map(|i| insert("shipping", format!("old-{i}"), true)));
    for sql in &statements {
        db.execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    let deleted = Inbox::new("billing")
        .cleanup(db.pool(), Duration::from_secs(24 * 3600), 10)
        .await
        .expect("cleanup");
    assert_eq!(deleted, 25, "three batches of at most 10");
    let left: Vec<String> = db
        .texts("SELECT message_id FROM eventbus_inbox WHERE consumer = 'billing' ORDER BY 1")
        .await
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(left, ["new-1", "new-2", "new-3"]);
    let shipping: Vec<String> = db
        .texts("SELECT message_id FROM eventbus_inbox WHERE consumer = 'shipping' ORDER BY 1")
        .await
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(
        shipping,
        ["old-1", "old-2", "old-3", "old-4", "old-5"],
        "another consumer's entries stay"
    );
    let deleted = Inbox::new("billing")
        .cleanup(db.pool(), Duration::from_secs(3600), 10)
        .await
        .expect("cleanup");
    assert_eq!(deleted, 0, "nothing of the last hour goes");
}

/// Before migration, processing says which table is missing and what to run.
pub async fn processing_before_migration_says_to_migrate<D: TestDatabase>() {
    let db = D::create().await;
    let err = Inbox::new("billing")
        .process(db.pool(), &envelope(), |_tx| {
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
