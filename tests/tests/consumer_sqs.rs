//! The consumer over a real SQS-compatible server (moto) and PostgreSQL: the
//! scenarios shared with the Kafka and RabbitMQ suites, on FIFO queues — a
//! batch handler applying each event once, with poison split out and
//! dead-lettered to the `<destination>.dlq` queue, and the rate limit.

use eventbus_tests::consumer::{batch_handler_scenario, rate_limit_scenario, Broker};

/// A batch handler: 2,000 events over 20 keys and 200 injected copies, one
/// poison event. Every effect exactly once, written by far fewer handler calls
/// than there are messages, per key in order (FIFO message groups); the
/// poison event's batch is split until it stands alone, and only it is
/// dead-lettered, with the reason. (The scenario, shared with Kafka and
/// RabbitMQ, says exactly what it checks.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batch_handler_applies_each_event_once_in_few_transactions_and_splits_out_poison() {
    let outcome = batch_handler_scenario(&Broker::sqs().await).await;
    println!("batch handler on SQS: {outcome:?}");
}

/// `rate_limit(50)`: 100 waiting events are handled over at least 1.8 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rate_limit_spreads_a_backlog_over_time() {
    let span = rate_limit_scenario(&Broker::sqs().await).await;
    println!("rate limit 50/s on SQS: 100 handler calls over {span:?}");
}
