//! The PostgreSQL inbox against a real database: the shared inbox suite
//! (`eventbus_tests::suites::inbox`, also run on MySQL and SQLite), and
//! cleanup of thousands of entries in batches of one statement each.

use eventbus_tests::composed;
use std::time::Duration;

use eventbus::Inbox;
use eventbus_tests::TestDb;
use sqlx::PgPool;

// The shared scenarios this binary runs: its row in `tests/src/matrix.rs`.
eventbus_tests::matrix!(inbox_postgres);

async fn scalar(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(composed(sql))
        .fetch_one(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// 2,500 entries older than the window go in three `DELETE` statements of at
/// most 1,000; the 15 younger ones stay.
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
