//! [`SqsSubscriberBuilder`]: the options of a subscriber, checked before it
//! finds (or creates) its queues and starts polling them.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch, Semaphore};

use super::{
    delete_loop, extend_loop, poll_loop, Shared, SqsSubscriber, MAX_VISIBILITY, MAX_WAIT_TIME,
};
use crate::error::{Error, Result};
use crate::transport::sqs::queues::Queues;
use crate::transport::sqs::{queue_name, ConnectOptions, Failure};
use crate::transport::TransportError;

/// Options for an [`SqsSubscriber`]; start with [`SqsSubscriber::builder`].
///
/// Credentials never appear in `Debug` output, logs or errors.
#[derive(Clone)]
pub struct SqsSubscriberBuilder {
    pub(super) connect: ConnectOptions,
    pub(super) broker_timeout: Duration,
    pub(super) fifo: bool,
    pub(super) destinations: Vec<String>,
    pub(super) max_in_flight: usize,
    pub(super) wait_time: Duration,
    pub(super) visibility_timeout: Duration,
    pub(super) lanes: u64,
    pub(super) create_queues: bool,
    pub(super) dead_letter_after: Option<u32>,
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
    /// wait time on top); default [`DEFAULT_BROKER_TIMEOUT`](crate::transport::sqs::DEFAULT_BROKER_TIMEOUT).
    #[must_use]
    pub fn broker_timeout(mut self, timeout: Duration) -> Self {
        self.broker_timeout = timeout;
        self
    }

    /// Reads the FIFO queue of each destination (`orders` is `orders.fifo`),
    /// as a publisher with [`fifo`](crate::transport::sqs::SqsPublisherBuilder::fifo) sends.
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
    /// (at least 1); default [`DEFAULT_MAX_IN_FLIGHT`](crate::transport::sqs::DEFAULT_MAX_IN_FLIGHT). No message is
    /// received beyond it: keep it at or below the consumer's `max_in_flight`.
    #[must_use]
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n;
        self
    }

    /// How long one `ReceiveMessage` waits for messages (long polling, whole
    /// seconds up to 20); default [`DEFAULT_WAIT_TIME`](crate::transport::sqs::DEFAULT_WAIT_TIME). Closing waits for
    /// the polls under way, so this also bounds how long closing takes.
    #[must_use]
    pub fn wait_time(mut self, wait: Duration) -> Self {
        self.wait_time = wait;
        self
    }

    /// The visibility timeout received messages get, and get again every
    /// third of it while they are held (whole seconds, 1 s to 12 h); default
    /// [`DEFAULT_VISIBILITY_TIMEOUT`](crate::transport::sqs::DEFAULT_VISIBILITY_TIMEOUT). A crashed consumer's messages come back
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
    /// time within this subscriber). Default [`DEFAULT_LANES`](crate::transport::sqs::DEFAULT_LANES).
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
    ///   queue, or an option is out of range;
    /// - [`Error::InvalidState`] when called outside a tokio runtime;
    /// - [`Error::Subscribe`] with [`TransportError::Rejected`] when SQS
    ///   refuses to find or create a queue, with [`TransportError::Unavailable`]
    ///   when it cannot be reached (or does not accept our credentials).
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
            Error::invalid_state("SqsSubscriber must be created inside a tokio runtime")
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
                    Failure::Unavailable(text) => Error::Subscribe(TransportError::Unavailable(
                        format!("{text} ({describe})").into(),
                    )),
                    Failure::NoQueue(text) | Failure::Refused(text) => {
                        Error::Subscribe(TransportError::Rejected(text))
                    }
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
