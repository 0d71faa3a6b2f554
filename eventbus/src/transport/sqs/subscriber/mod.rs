//! [`SqsSubscriber`]: long-polls one or more queues under an in-flight bound,
//! keeps what it holds invisible to other consumers while it is handled, and
//! deletes messages (in batches) only once they are acknowledged.
//!
//! | module | owns |
//! | --- | --- |
//! | this one | the subscriber, its [`Subscriber`] implementation, the poll loop, lanes |
//! | `builder` | [`SqsSubscriberBuilder`]: options, checked before connecting; finding the queues |
//! | `settle` | acknowledging (batched deletes) and releasing one message |
//! | `visibility` | keeping held messages invisible while they are handled |

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::{Message, MessageSystemAttributeName};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

mod builder;
mod settle;
mod visibility;

pub use builder::SqsSubscriberBuilder;

use super::queues::QueueInfo;
use super::{envelope_from_message, received_key, timed, Failure, SYSTEM};
use super::{ConnectOptions, DEFAULT_BROKER_TIMEOUT};
use crate::error::{Error, Result};
use crate::hash::fnv1a;
use crate::transport::{MessageInfo, Received, Subscriber, TransportError};
use settle::{delete_loop, DeleteRequest, SqsSettle};
use visibility::extend_loop;

/// The default bound on messages received and not yet settled.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 64;

/// The default visibility timeout of received messages: how long SQS hides a
/// message from other consumers. The subscriber extends it while it holds
/// the message, so it bounds only how soon a crashed consumer's messages
/// come back.
pub const DEFAULT_VISIBILITY_TIMEOUT: Duration = Duration::from_secs(30);

/// The default long-poll wait of one `ReceiveMessage`: an idle subscriber
/// makes one request per queue this often; closing waits for the polls under
/// way to end.
pub const DEFAULT_WAIT_TIME: Duration = Duration::from_secs(10);

/// The default number of ordering lanes (see [`SqsSubscriberBuilder::lanes`]).
pub const DEFAULT_LANES: u64 = 64;

/// SQS's longest long poll.
const MAX_WAIT_TIME: Duration = Duration::from_secs(20);

/// SQS's longest visibility timeout, and the longest a message may stay
/// received without being deleted.
const MAX_VISIBILITY: Duration = Duration::from_secs(12 * 60 * 60);

/// SQS takes at most this many messages per receive, delete or change call.
const MAX_BATCH: usize = 10;

/// How long a delete waits for others to share its `DeleteMessageBatch`.
const DELETE_LINGER: Duration = Duration::from_millis(5);

/// The first pause after a failed receive; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Reads messages from one or more SQS queues.
///
/// Each queue is long-polled (`ReceiveMessage` of up to 10 messages, waiting
/// up to [`wait_time`](SqsSubscriberBuilder::wait_time)); no more than
/// [`max_in_flight`](SqsSubscriberBuilder::max_in_flight) messages are held
/// unsettled at once. While a message is held — queued or being handled — a
/// background task extends its visibility timeout, so a slow handler does not
/// let SQS hand it to another consumer. [`Settle::ack`](crate::transport::Settle::ack) deletes it
/// (`DeleteMessageBatch`, gathering acknowledgements of a few milliseconds);
/// [`Settle::release`](crate::transport::Settle::release) makes it visible again at once
/// (`ChangeMessageVisibility` to 0).
///
/// A queue is one consumer group: subscribers of one queue compete for its
/// messages. For publish-subscribe, publish to one queue per group (see
/// [`SqsPublisherBuilder::route`](super::SqsPublisherBuilder::route)).
///
/// # Ordering
///
/// A FIFO queue hands out a message group's messages in order and holds the
/// group's later messages back while one is in flight, across all
/// subscribers; [`Received::lane`] is a hash of the group, so one key is
/// handled in order. A standard queue promises no order.
///
/// # Dead letters
///
/// The consumer publishes messages it gives up on to its group's
/// `<destination>.<group>.dlq` (the queue `<queue>-<group>-dlq`), or keeps
/// them in its parked table when SQS refuses them. A queue can also move
/// messages to its own `<queue>-dlq` after a number of receives (see
/// [`dead_letter_after`](SqsSubscriberBuilder::dead_letter_after)), which
/// catches messages whose consumers keep crashing.
///
/// # Examples
///
/// ```no_run
/// # async fn demo() -> eventbus::Result<()> {
/// use std::time::Duration;
/// use eventbus::transport::sqs::SqsSubscriber;
/// use eventbus::transport::Subscriber;
///
/// let mut subscriber = SqsSubscriber::builder()
///     .endpoint("http://127.0.0.1:4566") // a local server; omit for AWS
///     .fifo(true)
///     .queue("orders") // the queue `orders.fifo`
///     .max_in_flight(32)
///     .visibility_timeout(Duration::from_secs(30))
///     .dead_letter_after(5)
///     .connect()
///     .await?;
/// while let Some(received) = subscriber.next().await {
///     let received = match received {
///         Ok(received) => received,
///         Err(e) => {
///             eprintln!("receiving failed, retrying: {e}");
///             continue;
///         }
///     };
///     println!("{:?} from {}", received.envelope.as_ref().map(|e| &e.id), received.destination);
///     received.settle.ack().await?;
/// }
/// # Ok(()) }
/// ```
pub struct SqsSubscriber {
    shared: Arc<Shared>,
    queues: Vec<(String, Arc<QueueInfo>)>,
    rx: mpsc::Receiver<Result<Received>>,
    pollers: Vec<JoinHandle<()>>,
    extender: Option<JoinHandle<()>>,
    /// Ends by itself once the last settle handle is gone.
    _deleter: JoinHandle<()>,
    closed: bool,
}

impl fmt::Debug for SqsSubscriber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let queues: Vec<&str> = self.queues.iter().map(|(_, q)| q.name.as_str()).collect();
        f.debug_struct("SqsSubscriber")
            .field("endpoint", &self.shared.describe)
            .field("queues", &queues)
            .field("visibility_timeout", &self.shared.visibility)
            .field("held", &lock(&self.shared.held).len())
            .finish_non_exhaustive()
    }
}

impl SqsSubscriber {
    /// Options for a subscriber; see [`SqsSubscriberBuilder`].
    pub fn builder() -> SqsSubscriberBuilder {
        SqsSubscriberBuilder {
            connect: ConnectOptions::default(),
            broker_timeout: DEFAULT_BROKER_TIMEOUT,
            fifo: false,
            destinations: Vec::new(),
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            wait_time: DEFAULT_WAIT_TIME,
            visibility_timeout: DEFAULT_VISIBILITY_TIMEOUT,
            lanes: DEFAULT_LANES,
            create_queues: true,
            dead_letter_after: None,
        }
    }

    /// The names of the queues read.
    pub fn queue_names(&self) -> Vec<&str> {
        self.queues.iter().map(|(_, q)| q.name.as_str()).collect()
    }

    /// The URL of the queue of `destination`, if this subscriber reads it.
    pub fn queue_url(&self, destination: &str) -> Option<&str> {
        self.queues
            .iter()
            .find(|(d, _)| d == destination)
            .map(|(_, q)| q.url.as_str())
    }

    /// How many messages are held now: received and not yet settled.
    pub fn held(&self) -> usize {
        lock(&self.shared.held).len()
    }

    /// The SDK client, for what this subscriber does not do.
    pub fn client(&self) -> &aws_sdk_sqs::Client {
        &self.shared.client
    }
}

#[async_trait::async_trait]
impl Subscriber for SqsSubscriber {
    async fn next(&mut self) -> Option<Result<Received>> {
        if self.closed {
            return None;
        }
        self.rx.recv().await
    }

    /// Stops polling (waiting for the long polls under way, whose messages go
    /// straight back), gives back what was received and not handed out or not
    /// settled, and stops extending visibility.
    async fn close(&mut self) -> Result<()> {
        if self.closed {
            return Ok(());
        }
        self.closed = true;
        self.shared.stop.send_replace(true);
        // Pollers find the channel closed: what they still receive goes back.
        self.rx.close();
        for poller in self.pollers.drain(..) {
            let _ = poller.await;
        }
        while let Some(received) = self.rx.recv().await {
            if let Ok(received) = received {
                let _ = received.settle.release().await;
            }
        }
        let tokens: Vec<u64> = lock(&self.shared.held).keys().copied().collect();
        let mut result = Ok(());
        for token in tokens {
            if let Some(held) = self.shared.take(token) {
                result = result.and(self.shared.release(held).await);
            }
        }
        if let Some(extender) = self.extender.take() {
            extender.abort();
        }
        result
    }
}

impl Drop for SqsSubscriber {
    fn drop(&mut self) {
        // Without `close`, what is held comes back when its visibility ends.
        for poller in &self.pollers {
            poller.abort();
        }
        if let Some(extender) = &self.extender {
            extender.abort();
        }
    }
}

/// What pollers, settle handles and the extender share.
struct Shared {
    client: aws_sdk_sqs::Client,
    describe: String,
    broker_timeout: Duration,
    wait_seconds: i32,
    visibility: Duration,
    visibility_seconds: i32,
    lanes: u64,
    permits: Arc<Semaphore>,
    /// Messages received and not settled, by token.
    held: Mutex<HashMap<u64, Held>>,
    next_token: AtomicU64,
    /// `true` once the subscriber closes.
    stop: watch::Sender<bool>,
    deletes: mpsc::UnboundedSender<DeleteRequest>,
}

/// A message received and not yet settled.
struct Held {
    queue: Arc<QueueInfo>,
    receipt: String,
    received_at: Instant,
    extended_at: Instant,
    /// Its slot of the in-flight bound, freed when it is settled.
    _permit: OwnedSemaphorePermit,
}

impl Shared {
    fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// Completes once the subscriber closes.
    async fn stopped(&self) {
        let mut stop = self.stop.subscribe();
        let _ = stop.wait_for(|stop| *stop).await;
    }

    fn take(&self, token: u64) -> Option<Held> {
        lock(&self.held).remove(&token)
    }

    fn unavailable(&self, text: impl std::fmt::Display) -> Error {
        Error::Subscribe(TransportError::Unavailable(
            format!("{text} ({})", self.describe).into(),
        ))
    }

    /// Makes a held message visible again now.
    async fn release(&self, held: Held) -> Result<()> {
        let what = format!("cannot give a message back to queue `{}`", held.queue.name);
        let request = self
            .client
            .change_message_visibility()
            .queue_url(&held.queue.url)
            .receipt_handle(&held.receipt)
            .visibility_timeout(0)
            .send();
        match timed(&what, self.broker_timeout, request).await {
            Ok(_) => Ok(()),
            Err(Failure::Unavailable(text)) => Err(self.unavailable(text)),
            // The handle expired: the message is visible again already.
            Err(Failure::NoQueue(text) | Failure::Refused(text)) => {
                Err(Error::Subscribe(TransportError::Rejected(text)))
            }
        }
    }

    /// The lane of a received message.
    fn lane_of(&self, queue: &QueueInfo, message: &Message, key: Option<&str>) -> u64 {
        let basis = match (queue.fifo, key) {
            (_, Some(key)) => key,
            (_, None) => message.message_id().unwrap_or_default(),
        };
        fnv1a(basis.as_bytes()) % self.lanes
    }
}

/// Receives from one queue until the subscriber stops.
async fn poll_loop(
    shared: Arc<Shared>,
    destination: String,
    queue: Arc<QueueInfo>,
    tx: mpsc::Sender<Result<Received>>,
) {
    let mut failures = 0_u32;
    loop {
        if shared.stopping() {
            return;
        }
        // Backpressure: no free slot, no receive.
        let first = tokio::select! {
            permit = Arc::clone(&shared.permits).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
            () = shared.stopped() => return,
        };
        let mut permits = vec![first];
        while permits.len() < MAX_BATCH {
            match Arc::clone(&shared.permits).try_acquire_owned() {
                Ok(permit) => permits.push(permit),
                Err(_) => break,
            }
        }
        let request = shared
            .client
            .receive_message()
            .queue_url(&queue.url)
            .max_number_of_messages(i32::try_from(permits.len()).unwrap_or(1))
            .wait_time_seconds(shared.wait_seconds)
            .visibility_timeout(shared.visibility_seconds)
            .message_attribute_names("All")
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .send();
        // A poll is never cancelled halfway: SQS would hide what it returned
        // for a whole visibility timeout.
        let timeout =
            shared.broker_timeout + Duration::from_secs(shared.wait_seconds.unsigned_abs().into());
        let what = format!("cannot receive from queue `{}`", queue.name);
        let messages = match timed(&what, timeout, request).await {
            Ok(output) => {
                failures = 0;
                output.messages.unwrap_or_default()
            }
            Err(failure) => {
                let text = failure.into_cause();
                drop(permits);
                if tx.send(Err(shared.unavailable(text))).await.is_err() {
                    return;
                }
                failures = failures.saturating_add(1);
                let pause = backoff(failures);
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    () = shared.stopped() => return,
                }
                continue;
            }
        };
        let now = Instant::now();
        for message in messages {
            let (Some(permit), Some(receipt)) = (permits.pop(), message.receipt_handle()) else {
                continue;
            };
            let token = shared.next_token.fetch_add(1, Ordering::Relaxed);
            lock(&shared.held).insert(
                token,
                Held {
                    queue: Arc::clone(&queue),
                    receipt: receipt.to_owned(),
                    received_at: now,
                    extended_at: now,
                    _permit: permit,
                },
            );
            let received = received(&shared, &destination, &queue, &message, token);
            if shared.stopping() {
                // Received after the subscriber began to close: straight back.
                let _ = received.settle.release().await;
                continue;
            }
            if let Err(mpsc::error::SendError(Ok(received))) = tx.send(Ok(received)).await {
                let _ = received.settle.release().await;
            }
        }
    }
}

/// A received message as the consumer sees it.
fn received(
    shared: &Arc<Shared>,
    destination: &str,
    queue: &QueueInfo,
    message: &Message,
    token: u64,
) -> Received {
    let key = received_key(message);
    let system = message.attributes();
    let receive_count = system
        .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
        .and_then(|n| n.parse::<u32>().ok())
        .unwrap_or(1);
    let mut info = MessageInfo::new(SYSTEM);
    info.broker_time = system
        .and_then(|a| a.get(&MessageSystemAttributeName::SentTimestamp))
        .and_then(|ms| ms.parse::<i64>().ok())
        .and_then(chrono::DateTime::from_timestamp_millis);
    info.key.clone_from(&key);
    Received {
        destination: destination.to_owned(),
        lane: shared.lane_of(queue, message, key.as_deref()),
        envelope: envelope_from_message(message),
        body: message.body().unwrap_or_default().as_bytes().to_vec(),
        redelivered: receive_count > 1,
        info,
        settle: Box::new(SqsSettle {
            token,
            queue: queue.name.clone(),
            shared: Arc::clone(shared),
        }),
    }
}

/// The pause after `failures` failed receives in a row: [`FIRST_BACKOFF`]
/// doubling per failure up to [`MAX_BACKOFF`].
fn backoff(failures: u32) -> Duration {
    crate::backoff::exponential_ceiling(FIRST_BACKOFF, MAX_BACKOFF, failures.saturating_sub(1))
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The map stays consistent even if a holder panicked.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local() -> SqsSubscriberBuilder {
        SqsSubscriber::builder()
            .region("us-east-1")
            .credentials(crate::transport::testing::example_credentials())
            // Port 1: nothing listens, so reaching the network is a different error.
            .endpoint("http://127.0.0.1:1")
    }

    async fn config_error(builder: SqsSubscriberBuilder) -> String {
        crate::transport::testing::config_error(builder.connect()).await
    }

    #[tokio::test]
    async fn invalid_options_are_config_errors_before_connecting() {
        let text = config_error(local()).await;
        assert!(text.contains("reads no queue"), "{text}");
        let text = config_error(local().queue("orders").max_in_flight(0)).await;
        assert!(text.contains("max_in_flight"), "{text}");
        let text = config_error(local().queue("orders").lanes(0)).await;
        assert!(text.contains("lanes"), "{text}");
        let text = config_error(local().queue("orders").wait_time(Duration::from_secs(21))).await;
        assert!(text.contains("20 s"), "{text}");
        let text = config_error(
            local()
                .queue("orders")
                .visibility_timeout(Duration::from_millis(10)),
        )
        .await;
        assert!(text.contains("between 1 s and 12 h"), "{text}");
        let text = config_error(local().queue("orders eu")).await;
        assert!(text.contains("cannot name an SQS queue"), "{text}");
    }

    #[tokio::test]
    async fn an_unreachable_endpoint_is_unavailable_without_credentials() {
        let err = local()
            .queue("orders")
            .broker_timeout(Duration::from_secs(20))
            .connect()
            .await
            .expect_err("nothing listens on port 1");
        crate::transport::testing::assert_unavailable_hiding(&err, "hunter2");
    }

    #[test]
    fn builder_debug_hides_credentials() {
        let text = format!("{:?}", local().queue("orders"));
        assert!(
            !text.contains("hunter2") && !text.contains("AKIDEXAMPLE"),
            "{text}"
        );
    }

    #[test]
    fn backoff_grows_to_a_ceiling() {
        assert_eq!(backoff(1), FIRST_BACKOFF);
        assert_eq!(backoff(2), FIRST_BACKOFF * 2);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }
}
