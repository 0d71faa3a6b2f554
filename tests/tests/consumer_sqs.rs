//! The consumer over a real SQS-compatible server (moto) and PostgreSQL: the
//! scenarios shared with the Kafka and RabbitMQ suites
//! (`eventbus_tests::consumer`), on FIFO queues (message group = partition
//! key) — effectively once under redeliveries and a crash of the worker
//! process, what the weaker modes cost under a crash, dead letters and
//! re-driving, the in-flight bound, point-to-point versus publish-subscribe
//! (a queue per group), batch handlers and the rate limit. Event counts are
//! scaled down where the scenario says so: moto is slow.

use eventbus_tests::consumer::{
    at_least_once_scenario, at_most_once_scenario, backpressure_scenario, batch_handler_scenario,
    effectively_once_scenario, groups_scenario, newer_version_keeps_key_order_scenario,
    poison_scenario, rate_limit_scenario, refused_dead_letter_scenario, Broker, Refusal,
};
use eventbus_tests::TestDb;

/// The worker binary of the crash tests.
const WORKER: &str = env!("CARGO_BIN_EXE_consumer_worker");

/// 2,000 events over 200 keys and 200 injected copies, consumed by a worker
/// process SIGKILLed mid-run and started again: every event takes effect
/// exactly once, with one inbox row.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn effectively_once_under_redeliveries_and_a_crash() {
    effectively_once_scenario::<TestDb>(&Broker::sqs().await, WORKER).await;
}

/// At least once under a crash: no effect missing (those handled but not yet
/// acknowledged when the process died, if any, are handled again).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn at_least_once_loses_nothing_under_a_crash() {
    at_least_once_scenario::<TestDb>(&Broker::sqs().await, WORKER).await;
}

/// At most once under a crash: nothing repeated, the handlers in flight lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn at_most_once_loses_but_never_repeats_under_a_crash() {
    at_most_once_scenario::<TestDb>(&Broker::sqs().await, WORKER).await;
}

/// 1% poison among 1,000 events goes to the `<destination>.dlq` queue with
/// reason, attempts, origin and group; re-driving handles the failing ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn poison_goes_to_the_dead_letter_queue_and_can_be_redriven() {
    poison_scenario(&Broker::sqs().await).await;
}

/// A bound of 5, the consumer's or the subscriber's, keeps at most 5
/// messages unsettled.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_handler_never_holds_more_than_n_unacknowledged() {
    backpressure_scenario(&Broker::sqs().await).await;
}

/// Two consumers of one queue share the work; a second group's queue gets
/// every event too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn point_to_point_and_publish_subscribe() {
    let took = groups_scenario(&Broker::sqs().await).await;
    println!("groups on SQS in {took:?}");
}

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

/// Version gating keeps a key's order: m5 (a newer version) parked, m6 and
/// m7 parked behind it, other keys handled; the upgraded member handles m5,
/// m6, m7 in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_newer_version_holds_its_message_group() {
    newer_version_keeps_key_order_scenario(&Broker::sqs().await).await;
}

/// A dead letter larger than SQS takes (the original fits) is kept in the
/// parked table; the queue flows on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_oversized_dead_letter_is_kept_in_the_database() {
    refused_dead_letter_scenario(&Broker::sqs().await, Refusal::Oversized).await;
}

/// The group's dead-letter queue is deleted after its first letter: the next
/// letter is kept in the parked table; the queue flows on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_letter_with_no_queue_is_kept_in_the_database() {
    refused_dead_letter_scenario(&Broker::sqs().await, Refusal::QueueDeleted).await;
}
