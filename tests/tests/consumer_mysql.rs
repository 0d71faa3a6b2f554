//! `Consumer<MySql>` over real RabbitMQ and Kafka with the inbox and outbox on
//! MySQL/MariaDB (`MYSQL_URL`): the shared consumer suite
//! (`eventbus_tests::suites::consumer`), the same scenarios and assertions as
//! on PostgreSQL.

use eventbus_tests::consumer::{effectively_once_scenario, Broker};
use eventbus_tests::mysql::TestMySql;
use eventbus_tests::suites::consumer;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redelivered_events_change_nothing() {
    consumer::redelivered_events_change_nothing::<TestMySql>().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batch_handlers_skip_redelivered_events() {
    consumer::batch_handlers_skip_redelivered_events::<TestMySql>().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn effectively_once_under_redeliveries_and_a_crash() {
    effectively_once_scenario::<TestMySql>(
        &Broker::rabbitmq().await,
        env!("CARGO_BIN_EXE_consumer_worker"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batch_handler_applies_each_event_once_in_few_transactions_and_splits_out_poison() {
    let outcome = consumer::batch_handler::<TestMySql>(&Broker::rabbitmq().await).await;
    println!("batch handler on MySQL and RabbitMQ: {outcome:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batch_handler_on_kafka() {
    let outcome = consumer::batch_handler::<TestMySql>(&Broker::kafka().await).await;
    println!("batch handler on MySQL and Kafka: {outcome:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rate_limit_spreads_a_backlog_over_time() {
    let span = consumer::rate_limit::<TestMySql>(&Broker::rabbitmq().await).await;
    println!("rate limit 50/s on MySQL and RabbitMQ: 100 handler calls over {span:?}");
}
