//! The MySQL/MariaDB inbox against a real server (`MYSQL_URL`): the shared
//! inbox suite (`eventbus_tests::suites::inbox`).

use eventbus_tests::mysql::TestMySql;
use eventbus_tests::suites::inbox;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_duplicates_are_processed_exactly_once() {
    inbox::concurrent_duplicates_are_processed_exactly_once::<TestMySql>().await;
}

#[tokio::test]
async fn handler_failure_rolls_back_and_a_redelivery_is_processed() {
    inbox::handler_failure_rolls_back_and_a_redelivery_is_processed::<TestMySql>().await;
}

#[tokio::test]
async fn begin_without_commit_leaves_no_trace() {
    inbox::begin_without_commit_leaves_no_trace::<TestMySql>().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_waiting_delivery_takes_over_when_the_first_rolls_back() {
    inbox::a_waiting_delivery_takes_over_when_the_first_rolls_back::<TestMySql>().await;
}

#[tokio::test]
async fn each_consumer_processes_a_message_once() {
    inbox::each_consumer_processes_a_message_once::<TestMySql>().await;
}

#[tokio::test]
async fn a_batch_is_recorded_with_one_flag_per_message() {
    inbox::a_batch_is_recorded_with_one_flag_per_message::<TestMySql>().await;
}

#[tokio::test]
async fn cleanup_deletes_old_entries_of_one_consumer_in_batches() {
    inbox::cleanup_deletes_old_entries_of_one_consumer_in_batches::<TestMySql>().await;
}

#[tokio::test]
async fn processing_before_migration_says_to_migrate() {
    inbox::processing_before_migration_says_to_migrate::<TestMySql>().await;
}
