//! What the worker binaries (`consumer_worker`, `saga_worker`) open from
//! their arguments: a pool on the database URL and, from the broker URL, a
//! subscriber of the group to the destination with a publisher for its dead
//! letters.

use std::sync::Arc;
use std::time::Duration;

use eventbus::transport::rabbitmq::RabbitPublisher;
use eventbus::transport::Subscriber;
use eventbus::{Publisher, Result};

/// A pool of 16 connections on `url`.
///
/// # Errors
///
/// When it cannot connect.
pub async fn pool<DB: sqlx::Database>(url: &str) -> Result<sqlx::Pool<DB>> {
    Ok(sqlx::pool::PoolOptions::<DB>::new()
        .max_connections(16)
        .connect(url)
        .await?)
}

/// The subscriber of `group` to `destination` (at most `max_in_flight`
/// unsettled) and a dead-letter publisher, on the broker `broker` names:
/// `kafka://brokers`, `amqp://…`, or `sqs+http://…` (FIFO queues at
/// `SQS_ENDPOINT`, as for the tests; a crashed worker's messages come back
/// after a visibility timeout kept short for the tests).
///
/// # Errors
///
/// When the publisher cannot be made.
///
/// # Panics
///
/// On a broker URL of another scheme.
pub async fn connections(
    broker: &str,
    group: &str,
    destination: &str,
    max_in_flight: usize,
) -> Result<(Box<dyn Subscriber>, Arc<dyn Publisher>)> {
    let destination = destination.to_owned();
    Ok(match broker.split_once("://") {
        Some(("kafka", brokers)) => (
            crate::kafka::subscriber(brokers, group, &[&destination], max_in_flight).await,
            Arc::new(crate::kafka::publisher_builder(brokers).build()?),
        ),
        Some(("amqp", _)) => (
            crate::rabbitmq::subscriber(broker, group, &[&destination], max_in_flight).await,
            Arc::new(RabbitPublisher::connect(broker).await?),
        ),
        Some(("sqs" | "sqs+http", _)) => (
            Box::new(
                crate::sqs::subscriber_builder()
                    .await
                    .fifo(true)
                    .queue(destination)
                    .max_in_flight(max_in_flight)
                    .visibility_timeout(Duration::from_secs(5))
                    .connect()
                    .await?,
            ),
            Arc::new(crate::sqs::publisher(true).await),
        ),
        _ => panic!("unsupported broker {broker}"),
    })
}
