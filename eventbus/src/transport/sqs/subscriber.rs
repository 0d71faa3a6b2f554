//! [`SqsSubscriber`]: long-polls one or more queues under an in-flight bound,
//! keeps what it holds invisible to other consumers while it is handled, and
//! deletes messages (in batches) only once they are acknowledged.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry, Message,
    MessageSystemAttributeName,
};
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use super::queues::{QueueInfo, Queues};
use super::{
    envelope_from_message, fnv1a, queue_name, received_key, timed, ConnectOptions, Failure,
    DEFAULT_BROKER_TIMEOUT, SYSTEM,
};
use crate::error::{Error, Result};
use crate::transport::{MessageInfo, PublishError, Received, Settle, Subscriber};

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

/// Options for an [`SqsSubscriber`]; start with [`SqsSubscriber::builder`].
///
/// Credentials never appear in `Debug` output, logs or errors.
#[derive(Clone)]
pub struct SqsSubscriberBuilder {
    connect: ConnectOptions,
    broker_timeout: Duration,
    fifo: bool,
    destinations: Vec<String>,
    max_in_flight: usize,
    wait_time: Duration,
    visibility_timeout: Duration,
    lanes: u64,
    create_queues: bool,
    dead_letter_after: Option<u32>,
}

impl fmt::Debug for SqsSubscriberBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqsSubscriberBuilder")
            .field("connect", &self.connect)
            .field("broker_timeout", &self.broker_timeout)
            .field("fifo", &self.fifo)
            .field("destinations", &self.destinations)
            .field("max_in_flight", &self.max_in_flight)
            .field("wait_time", &self.wait_time)
            .field("visibility_timeout", &self.visibility_timeout)
            .field("lanes", &self.lanes)
            .field("create_queues", &self.create_queues)
            .field("dead_letter_after", &self.dead_letter_after)
            .finish()
    }
}

impl SqsSubscriberBuilder {
    connect_options!(
        SqsSubscriber::builder(),
        "use eventbus::transport::sqs::SqsSubscriberBuilder;\n\nlet builder = SqsSubscriberBuilder::from_url(\"sqs+http://127.0.0.1:4566?fifo=true\")?;"
    );

    /// How long SQS may take to answer one request (a long poll gets its
    /// wait time on top); default [`DEFAULT_BROKER_TIMEOUT`].
    #[must_use]
    pub fn broker_timeout(mut self, timeout: Duration) -> Self {
        self.broker_timeout = timeout;
        self
    }

    /// Reads the FIFO queue of each destination (`orders` is `orders.fifo`),
    /// as a publisher with [`fifo`](super::SqsPublisherBuilder::fifo) sends.
    /// Default `false`: destinations with a `fifo` segment are FIFO.
    #[must_use]
    pub fn fifo(mut self, fifo: bool) -> Self {
        self.fifo = fifo;
        self
    }

    /// Reads the queue of `destination` (see [`queue_name`]); call it once per
    /// queue. A queue is one consumer group: subscribers of one queue compete
    /// for its messages. Dead-letter destinations (`orders.billing.dlq`) are
    /// read like any other.
    #[must_use]
    pub fn queue(mut self, destination: impl Into<String>) -> Self {
        self.destinations.push(destination.into());
        self
    }

    /// Reads the queues of all `destinations`; the same as calling
    /// [`queue`](Self::queue) for each.
    #[must_use]
    pub fn queues<I>(mut self, destinations: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.destinations
            .extend(destinations.into_iter().map(Into::into));
        self
    }

    /// At most `n` messages received and not yet settled, over all queues
    /// (at least 1); default [`DEFAULT_MAX_IN_FLIGHT`]. No message is
    /// received beyond it: keep it at or below the consumer's `max_in_flight`.
    #[must_use]
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n;
        self
    }

    /// How long one `ReceiveMessage` waits for messages (long polling, whole
    /// seconds up to 20); default [`DEFAULT_WAIT_TIME`]. Closing waits for
    /// the polls under way, so this also bounds how long closing takes.
    #[must_use]
    pub fn wait_time(mut self, wait: Duration) -> Self {
        self.wait_time = wait;
        self
    }

    /// The visibility timeout received messages get, and get again every
    /// third of it while they are held (whole seconds, 1 s to 12 h); default
    /// [`DEFAULT_VISIBILITY_TIMEOUT`]. A crashed consumer's messages come back
    /// after it.
    #[must_use]
    pub fn visibility_timeout(mut self, timeout: Duration) -> Self {
        self.visibility_timeout = timeout;
        self
    }

    /// How many ordering lanes messages are spread over: by a hash of the
    /// message group in a FIFO queue (which holds a group's later messages
    /// back while one is in flight, so one key is handled in order), by a
    /// hash of the partition key in a standard queue (order is not promised
    /// there; the hash keeps one key's messages from running at the same
    /// time within this subscriber). Default [`DEFAULT_LANES`].
    #[must_use]
    pub fn lanes(mut self, n: u64) -> Self {
        self.lanes = n;
        self
    }

    /// Whether connecting creates missing queues (FIFO when the name says so).
    /// Default `true`.
    #[must_use]
    pub fn create_queues(mut self, create: bool) -> Self {
        self.create_queues = create;
        self
    }

    /// Gives each queue read (dead-letter queues aside) a redrive policy: a
    /// message received `max_receives` times without being deleted — released
    /// again and again, or held by consumers that crash — moves to the queue's
    /// own dead-letter queue `<queue>-dlq` (created when missing).
    #[must_use]
    pub fn dead_letter_after(mut self, max_receives: u32) -> Self {
        self.dead_letter_after = Some(max_receives);
        self
    }

    /// Finds (or creates) the queues and starts polling them.
    ///
    /// # Errors
    ///
    /// - [`Error::Config`] when no queue is named, a destination cannot name a
    ///   queue, an option is out of range, when called outside a tokio
    ///   runtime, or when SQS refuses to find or create a queue;
    /// - [`Error::Publish`] with [`PublishError::Unavailable`] when SQS cannot
    ///   be reached (or does not accept our credentials).
    pub async fn connect(self) -> Result<SqsSubscriber> {
        if self.destinations.is_empty() {
            return Err(Error::Config(
                "an SqsSubscriber reads no queue: call `.queue(destination)`".into(),
            ));
        }
        if self.max_in_flight == 0 {
            return Err(Error::Config("max_in_flight must be at least 1".into()));
        }
        if self.lanes == 0 {
            return Err(Error::Config("lanes must be at least 1".into()));
        }
        if self.wait_time > MAX_WAIT_TIME {
            return Err(Error::Config(format!(
                "wait_time {:?} is longer than SQS's longest long poll, 20 s",
                self.wait_time
            )));
        }
        if self.visibility_timeout < Duration::from_secs(1)
            || self.visibility_timeout > MAX_VISIBILITY
        {
            return Err(Error::Config(format!(
                "visibility_timeout {:?} must be between 1 s and 12 h",
                self.visibility_timeout
            )));
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            Error::Config("SqsSubscriber must be created inside a tokio runtime".into())
        })?;
        let mut names = Vec::with_capacity(self.destinations.len());
        for destination in &self.destinations {
            let name =
                queue_name(destination, self.fifo).map_err(|e| Error::Config(e.to_string()))?;
            names.push((destination.clone(), name));
        }
        let describe = self.connect.describe();
        let client = self.connect.client().await;
        let queues = Queues::new(client.clone(), self.broker_timeout, self.dead_letter_after);
        let mut resolved = Vec::with_capacity(names.len());
        for (destination, name) in names {
            let info = queues
                .resolve(&name, self.create_queues)
                .await
                .map_err(|f| match f {
                    Failure::Unavailable(text) => {
                        Error::Publish(PublishError::Unavailable(format!("{text} ({describe})")))
                    }
                    Failure::NoQueue(text) | Failure::Refused(text) => Error::Config(text),
                })?;
            resolved.push((destination, info));
        }

        let (deletes, delete_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            client: client.clone(),
            describe,
            broker_timeout: self.broker_timeout,
            wait_seconds: i32::try_from(self.wait_time.as_secs()).unwrap_or(20),
            visibility: self.visibility_timeout,
            visibility_seconds: i32::try_from(self.visibility_timeout.as_secs()).unwrap_or(30),
            lanes: self.lanes,
            permits: Arc::new(Semaphore::new(self.max_in_flight)),
            held: Mutex::new(HashMap::new()),
            next_token: AtomicU64::new(0),
            stop: watch::channel(false).0,
            deletes,
        });
        let deleter = runtime.spawn(delete_loop(client, self.broker_timeout, delete_rx));
        let extender = runtime.spawn(extend_loop(Arc::clone(&shared)));
        let (tx, rx) = mpsc::channel(self.max_in_flight);
        let pollers = resolved
            .iter()
            .map(|(destination, info)| {
                runtime.spawn(poll_loop(
                    Arc::clone(&shared),
                    destination.clone(),
                    Arc::clone(info),
                    tx.clone(),
                ))
            })
            .collect();
        Ok(SqsSubscriber {
            shared,
            queues: resolved,
            rx,
            pollers,
            extender: Some(extender),
            _deleter: deleter,
            closed: false,
        })
    }
}

/// Reads messages from one or more SQS queues.
///
/// Each queue is long-polled (`ReceiveMessage` of up to 10 messages, waiting
/// up to [`wait_time`](SqsSubscriberBuilder::wait_time)); no more than
/// [`max_in_flight`](SqsSubscriberBuilder::max_in_flight) messages are held
/// unsettled at once. While a message is held — queued or being handled — a
/// background task extends its visibility timeout, so a slow handler does not
/// let SQS hand it to another consumer. [`Settle::ack`] deletes it
/// (`DeleteMessageBatch`, gathering acknowledgements of a few milliseconds);
/// [`Settle::release`] makes it visible again at once
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
        Error::Publish(PublishError::Unavailable(format!(
            "{text} ({})",
            self.describe
        )))
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
                Err(Error::Publish(PublishError::Rejected(text)))
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
                let text = match failure {
                    Failure::Unavailable(t) | Failure::NoQueue(t) | Failure::Refused(t) => t,
                };
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

fn backoff(failures: u32) -> Duration {
    let factor = 2_u32.saturating_pow(failures.saturating_sub(1).min(16));
    FIRST_BACKOFF.saturating_mul(factor).min(MAX_BACKOFF)
}

/// Settles one received message.
struct SqsSettle {
    token: u64,
    queue: String,
    shared: Arc<Shared>,
}

impl fmt::Debug for SqsSettle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqsSettle")
            .field("token", &self.token)
            .field("queue", &self.queue)
            .finish_non_exhaustive()
    }
}

impl SqsSettle {
    fn held(&self) -> Result<Held> {
        self.shared.take(self.token).ok_or_else(|| {
            Error::Publish(PublishError::Unavailable(format!(
                "message {} of queue `{}` was given back already (the subscriber closed)",
                self.token, self.queue
            )))
        })
    }
}

#[async_trait::async_trait]
impl Settle for SqsSettle {
    /// Deletes the message; returns once SQS has deleted it.
    async fn ack(self: Box<Self>) -> Result<()> {
        let held = self.held()?;
        let (reply, answer) = oneshot::channel();
        let request = DeleteRequest {
            queue_url: held.queue.url.clone(),
            queue_name: held.queue.name.clone(),
            receipt: held.receipt.clone(),
            reply,
        };
        if self.shared.deletes.send(request).is_err() {
            return Err(self
                .shared
                .unavailable("cannot delete the message: the subscriber is gone"));
        }
        let result = match answer.await {
            Ok(result) => result,
            Err(_) => Err(self
                .shared
                .unavailable("cannot delete the message: no answer")),
        };
        // Its in-flight slot is free once SQS has deleted it.
        drop(held);
        result
    }

    async fn release(self: Box<Self>) -> Result<()> {
        let held = self.held()?;
        self.shared.release(held).await
    }
}

/// One acknowledgement on its way to `DeleteMessageBatch`.
struct DeleteRequest {
    queue_url: String,
    queue_name: String,
    receipt: String,
    reply: oneshot::Sender<Result<()>>,
}

/// Deletes acknowledged messages in batches: what arrives within
/// [`DELETE_LINGER`] of the first goes in one call per queue (10 at most).
async fn delete_loop(
    client: aws_sdk_sqs::Client,
    timeout: Duration,
    mut rx: mpsc::UnboundedReceiver<DeleteRequest>,
) {
    while let Some(first) = rx.recv().await {
        let mut pending = vec![first];
        let linger = tokio::time::sleep(DELETE_LINGER);
        tokio::pin!(linger);
        while pending.len() < MAX_BATCH * 8 {
            tokio::select! {
                more = rx.recv() => match more {
                    Some(request) => pending.push(request),
                    None => break,
                },
                () = &mut linger => break,
            }
        }
        let mut by_queue: HashMap<String, Vec<DeleteRequest>> = HashMap::new();
        for request in pending {
            by_queue
                .entry(request.queue_url.clone())
                .or_default()
                .push(request);
        }
        let calls = by_queue.into_values().flat_map(|requests| {
            let mut chunks = Vec::new();
            let mut requests = requests.into_iter().peekable();
            while requests.peek().is_some() {
                chunks.push(requests.by_ref().take(MAX_BATCH).collect::<Vec<_>>());
            }
            chunks
        });
        let client = &client;
        futures::future::join_all(calls.map(|chunk| delete_batch(client, timeout, chunk))).await;
    }
}

async fn delete_batch(client: &aws_sdk_sqs::Client, timeout: Duration, chunk: Vec<DeleteRequest>) {
    let Some(first) = chunk.first() else {
        return;
    };
    let (url, name) = (first.queue_url.clone(), first.queue_name.clone());
    let entries: Vec<DeleteMessageBatchRequestEntry> = chunk
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            DeleteMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .receipt_handle(&r.receipt)
                .build()
                .ok()
        })
        .collect();
    let request = client
        .delete_message_batch()
        .queue_url(&url)
        .set_entries(Some(entries))
        .send();
    let what = format!("cannot delete messages from queue `{name}`");
    let mut results: Vec<Option<Result<()>>> = (0..chunk.len()).map(|_| None).collect();
    match timed(&what, timeout, request).await {
        Ok(output) => {
            for ok in output.successful() {
                if let Some(slot) = ok
                    .id()
                    .parse::<usize>()
                    .ok()
                    .and_then(|i| results.get_mut(i))
                {
                    *slot = Some(Ok(()));
                }
            }
            for failed in output.failed() {
                if let Some(slot) = failed
                    .id()
                    .parse::<usize>()
                    .ok()
                    .and_then(|i| results.get_mut(i))
                {
                    // Typically an expired receipt handle: the message became
                    // visible and may be delivered again.
                    *slot = Some(Err(Error::Publish(PublishError::Rejected(format!(
                        "SQS did not delete the message from queue `{name}`: {} {}; it may be delivered again",
                        failed.code(),
                        failed.message().unwrap_or_default()
                    )))));
                }
            }
        }
        Err(failure) => {
            let text = match failure {
                Failure::Unavailable(t) | Failure::NoQueue(t) | Failure::Refused(t) => t,
            };
            for slot in &mut results {
                *slot = Some(Err(Error::Publish(PublishError::Unavailable(text.clone()))));
            }
        }
    }
    for (request, result) in chunk.into_iter().zip(results) {
        let result = result.unwrap_or_else(|| {
            Err(Error::Publish(PublishError::Unavailable(format!(
                "SQS said nothing of a delete from queue `{name}`"
            ))))
        });
        let _ = request.reply.send(result);
    }
}

/// Keeps held messages invisible: every third of the visibility timeout, each
/// held message not extended for that long gets the whole timeout again.
async fn extend_loop(shared: Arc<Shared>) {
    let third = (shared.visibility / 3).max(Duration::from_millis(200));
    let tick = (third / 2).max(Duration::from_millis(100));
    let mut warned_old = false;
    loop {
        tokio::time::sleep(tick).await;
        let now = Instant::now();
        let mut due: HashMap<String, DueExtensions> = HashMap::new();
        {
            let held = lock(&shared.held);
            for (token, h) in held.iter() {
                if now.duration_since(h.extended_at) < third {
                    continue;
                }
                // SQS keeps a message received for 12 hours at most.
                if now.duration_since(h.received_at) + shared.visibility >= MAX_VISIBILITY {
                    if !warned_old {
                        tracing::warn!(queue = %h.queue.name, "a message has been held for nearly 12 hours; SQS will deliver it again");
                        warned_old = true;
                    }
                    continue;
                }
                due.entry(h.queue.url.clone())
                    .or_insert_with(|| (Arc::clone(&h.queue), Vec::new()))
                    .1
                    .push((*token, h.receipt.clone()));
            }
        }
        for (queue, tokens) in due.into_values() {
            for chunk in tokens.chunks(MAX_BATCH) {
                extend(&shared, &queue, chunk, now).await;
            }
        }
    }
}

async fn extend(shared: &Shared, queue: &QueueInfo, chunk: &[(u64, String)], at: Instant) {
    let entries: Vec<ChangeMessageVisibilityBatchRequestEntry> = chunk
        .iter()
        .enumerate()
        .filter_map(|(i, (_, receipt))| {
            ChangeMessageVisibilityBatchRequestEntry::builder()
                .id(i.to_string())
                .receipt_handle(receipt)
                .visibility_timeout(shared.visibility_seconds)
                .build()
                .ok()
        })
        .collect();
    let request = shared
        .client
        .change_message_visibility_batch()
        .queue_url(&queue.url)
        .set_entries(Some(entries))
        .send();
    let what = format!(
        "cannot extend the visibility of messages of queue `{}`",
        queue.name
    );
    match timed(&what, shared.broker_timeout, request).await {
        Ok(output) => {
            let mut held = lock(&shared.held);
            for ok in output.successful() {
                let token = ok.id().parse::<usize>().ok().and_then(|i| chunk.get(i));
                if let Some(h) = token.and_then(|(t, _)| held.get_mut(t)) {
                    h.extended_at = at;
                }
            }
            for failed in output.failed() {
                tracing::debug!(queue = %queue.name, code = failed.code(), "visibility not extended; the message may come back");
            }
        }
        Err(Failure::Unavailable(text) | Failure::NoQueue(text) | Failure::Refused(text)) => {
            tracing::warn!(error = %text, "extending visibility failed; retrying");
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The map stays consistent even if a holder panicked.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A queue and the (token, receipt handle) pairs whose visibility is due for
/// an extension.
type DueExtensions = (Arc<QueueInfo>, Vec<(u64, String)>);

#[cfg(test)]
mod tests {
    use super::*;

    fn local() -> SqsSubscriberBuilder {
        SqsSubscriber::builder()
            .region("us-east-1")
            .credentials(aws_sdk_sqs::config::Credentials::new(
                "AKIDEXAMPLE",
                "hunter2",
                None,
                None,
                "test",
            ))
            // Port 1: nothing listens, so reaching the network is a different error.
            .endpoint("http://127.0.0.1:1")
    }

    async fn config_error(builder: SqsSubscriberBuilder) -> String {
        match builder.connect().await {
            Err(Error::Config(text)) => text,
            other => panic!("expected a configuration error, got {other:?}"),
        }
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
        assert!(err.is_transient(), "{err:?}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
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
