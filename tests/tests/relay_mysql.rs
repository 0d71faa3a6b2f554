//! The relay over a MySQL/MariaDB outbox (`MYSQL_URL`), with RabbitMQ, SQS and the
//! Kafka-protocol broker: the shared relay suite
//! (`eventbus_tests::suites::relay`), the same scenarios and assertions as on
//! PostgreSQL.

use std::time::Duration;

use eventbus_tests::mysql::TestMySql;
use eventbus_tests::suites::relay;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn store_claims_in_order_behind_failures_and_fences_every_write() {
    relay::store_claims_in_order_behind_failures_and_fences_every_write::<TestMySql>().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn relays_1000_events_over_50_keys_in_order_to_sqs() {
    let took = relay::volume_over_sqs::<TestMySql>(1_000, 50).await;
    println!("MySQL → SQS: 1,000 events relayed and read in {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn relays_100k_events_over_1000_keys_in_order_to_rabbitmq() {
    let took = relay::volume_over_rabbitmq::<TestMySql>(100_000, 1_000, 10_000).await;
    println!("MySQL → RabbitMQ: 100,000 events relayed in {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn relays_100k_events_over_1000_keys_in_order_to_kafka() {
    let took = relay::volume_over_kafka::<TestMySql>(100_000, 1_000).await;
    println!("MySQL → Kafka: 100,000 events relayed in {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_older_transaction_committing_last_is_still_delivered_first() {
    relay::an_older_transaction_committing_last_is_still_delivered_first::<TestMySql>().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_poisoned_event_is_parked_and_blocks_only_its_key() {
    relay::a_poisoned_event_is_parked_and_blocks_only_its_key::<TestMySql>().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rows_from_other_writers_that_are_not_events_are_parked_with_a_reason() {
    relay::rows_from_other_writers_that_are_not_events_are_parked_with_a_reason::<TestMySql>()
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_event_for_a_missing_destination_is_parked_with_the_reason() {
    relay::an_event_for_a_missing_destination_is_parked_with_the_reason::<TestMySql>().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rows_the_relay_cannot_decode_are_parked_instead_of_stopping_it() {
    relay::rows_the_relay_cannot_decode_are_parked_instead_of_stopping_it::<TestMySql>().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_and_status_report_the_backlog_falling_to_zero() {
    relay::metrics_and_status_report_the_backlog_falling_to_zero::<TestMySql>().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_row_inserted_by_plain_sql_is_relayed_with_the_configured_source() {
    relay::a_row_inserted_by_plain_sql_is_relayed_with_the_configured_source::<TestMySql>().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retention_mode_keeps_published_rows_then_cleans_them_up() {
    relay::retention_mode_keeps_published_rows_then_cleans_them_up::<TestMySql>().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_relays_one_killed_lose_nothing_and_keep_order() {
    let run =
        relay::three_relays_one_killed_lose_nothing_and_keep_order::<TestMySql>(30_000, 300).await;
    println!("MySQL, three relays, one killed: {run:?}");
    assert!(run.took < Duration::from_secs(600));
}

// Commit order under interleavings (issue 15): `eventbus_tests::suites::commit_order`.

use eventbus_tests::suites::commit_order;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_early_transaction_id_does_not_let_a_later_event_overtake() {
    commit_order::an_early_transaction_id_does_not_let_a_later_event_overtake::<TestMySql>().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn random_interleavings_keep_commit_order_per_key() {
    commit_order::random_interleavings_keep_commit_order_per_key::<TestMySql>(5).await;
}
