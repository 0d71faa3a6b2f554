//! SQS helpers: publishers and subscribers for the local SQS-compatible
//! server (`SQS_ENDPOINT`), reading a queue to the end, queue clean-up, and a
//! publisher whose repeated events get past FIFO deduplication (as a
//! redelivery would).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventbus::consumer::dead_letter;
use eventbus::transport::sqs::aws_sdk_sqs::config::Credentials;
use eventbus::transport::sqs::{
    queue_name, SqsPublisher, SqsPublisherBuilder, SqsSubscriber, SqsSubscriberBuilder,
};
use eventbus::transport::{Delivered, Subscriber};
use eventbus::{Envelope, OutgoingMessage, PublishError, Publisher};

/// A short long-poll for tests: closing a subscriber waits for it.
pub const TEST_WAIT: Duration = Duration::from_secs(2);

/// Credentials for the local server: the environment's when set (as
/// `scripts/services.sh` does), else fixed test ones, so that no test ever
/// asks instance metadata for credentials.
fn credentials() -> Option<Credentials> {
    std::env::var_os("AWS_ACCESS_KEY_ID")
        .is_none()
        .then(|| Credentials::new("test", "test", None, None, "eventbus-tests"))
}

fn region() -> String {
    std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".into())
}

/// Publisher options for the local server.
pub async fn publisher_builder() -> SqsPublisherBuilder {
    let mut builder = SqsPublisher::builder()
        .endpoint(crate::sqs_endpoint().await)
        .region(region());
    if let Some(credentials) = credentials() {
        builder = builder.credentials(credentials);
    }
    builder
}

/// A publisher to FIFO (`fifo`) or standard queues of the local server.
pub async fn publisher(fifo: bool) -> SqsPublisher {
    publisher_builder()
        .await
        .fifo(fifo)
        .connect()
        .await
        .expect("connect to SQS")
}

/// Subscriber options for the local server, with a short long-poll.
pub async fn subscriber_builder() -> SqsSubscriberBuilder {
    let mut builder = SqsSubscriber::builder()
        .endpoint(crate::sqs_endpoint().await)
        .region(region())
        .wait_time(TEST_WAIT);
    if let Some(credentials) = credentials() {
        builder = builder.credentials(credentials);
    }
    builder
}

/// A subscriber of `destinations` (FIFO queues when `fifo`), at most
/// `max_in_flight` messages unsettled.
pub async fn subscriber(
    destinations: &[&str],
    fifo: bool,
    max_in_flight: usize,
) -> Box<dyn Subscriber> {
    Box::new(
        subscriber_builder()
            .await
            .fifo(fifo)
            .queues(destinations.iter().copied())
            .max_in_flight(max_in_flight)
            .connect()
            .await
            .expect("subscribe to SQS"),
    )
}

/// Reads until `expected` messages arrived (within `timeout`) and then no
/// more for a few seconds, acknowledging (deleting) each one as it arrives
/// (and waiting for the deletes before it returns).
/// Returns them in arrival order, with whether SQS said it delivered them
/// before.
pub async fn read_all(
    subscriber: &mut dyn Subscriber,
    expected: usize,
    timeout: Duration,
) -> Vec<(Envelope, bool)> {
    let mut messages = Vec::new();
    let mut acks = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let wait = if messages.len() < expected {
            deadline.saturating_duration_since(tokio::time::Instant::now())
        } else {
            TEST_WAIT * 2
        };
        match tokio::time::timeout(wait, subscriber.next()).await {
            Ok(Some(Ok(m))) => {
                let envelope = m.envelope.expect("a CloudEvent");
                messages.push((envelope, m.redelivered));
                // In the background, so that deletes go out in batches.
                acks.push(tokio::spawn(m.settle.ack()));
            }
            Ok(Some(Err(e))) => panic!("reading from SQS: {e}"),
            Ok(None) | Err(_) => break,
        }
    }
    for ack in acks {
        ack.await.expect("ack task").expect("delete");
    }
    assert!(
        messages.len() >= expected,
        "{} of {expected} messages within {timeout:?}",
        messages.len()
    );
    messages
}

/// Deletes the queues of `destinations`, of their native dead-letter
/// queues and of `groups`' dead-letter destinations (test clean-up; errors
/// are ignored).
pub async fn delete_queues(destinations: &[&str], groups: &[&str], fifo: bool) {
    let publisher = publisher(fifo).await;
    let client = publisher.client();
    for destination in destinations {
        let mut names = vec![destination.to_string(), format!("{destination}.dlq")];
        names.extend(
            groups
                .iter()
                .map(|g| dead_letter::destination_of(destination, g)),
        );
        for d in names {
            let Ok(name) = queue_name(&d, fifo) else {
                continue;
            };
            if let Ok(found) = client.get_queue_url().queue_name(&name).send().await {
                if let Some(url) = found.queue_url() {
                    let _ = client.delete_queue().queue_url(url).send().await;
                }
            }
        }
    }
}

/// Sends an event id seen before as a redelivery of it rather than a copy:
/// marked as re-driven, so a FIFO queue takes it although its deduplication
/// window would drop a plain copy. The consumer's inbox must then absorb it.
#[derive(Debug)]
pub struct Redelivering {
    inner: Arc<dyn Publisher>,
    seen: Mutex<HashSet<String>>,
}

impl Redelivering {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Publisher>) -> Self {
        Redelivering {
            inner,
            seen: Mutex::new(HashSet::new()),
        }
    }
}

// The trait is `#[async_trait]`; implemented by hand, as the macro would, to
// need no further dependency.
type Boxed<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

impl Publisher for Redelivering {
    fn system(&self) -> &'static str {
        self.inner.system()
    }

    fn publish_batch<'life0, 'life1, 'async_trait>(
        &'life0 self,
        messages: &'life1 [OutgoingMessage],
    ) -> Boxed<'async_trait, Vec<Result<Delivered, PublishError>>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move {
            let marked: Vec<OutgoingMessage> = {
                let mut seen = self.seen.lock().expect("seen ids");
                messages
                    .iter()
                    .map(|m| {
                        let mut m = m.clone();
                        if !seen.insert(m.envelope.id.clone()) {
                            m.envelope.extensions.insert(
                                dead_letter::REDRIVEN_AT.into(),
                                uuid::Uuid::new_v4().to_string(),
                            );
                        }
                        m
                    })
                    .collect()
            };
            self.inner.publish_batch(&marked).await
        })
    }

    fn ensure_destination<'life0, 'life1, 'async_trait>(
        &'life0 self,
        destination: &'life1 str,
    ) -> Boxed<'async_trait, Result<(), PublishError>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move { self.inner.ensure_destination(destination).await })
    }
}
