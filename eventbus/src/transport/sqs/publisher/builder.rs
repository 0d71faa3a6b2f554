//! [`SqsPublisherBuilder`]: the options of a publisher, its routes, and
//! finding (or creating) the queues when it connects.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::{Router, SqsPublisher};
use crate::error::Result;
use crate::transport::sqs::queues::Queues;
use crate::transport::sqs::ConnectOptions;

/// Options for an [`SqsPublisher`]; start with [`SqsPublisher::builder`].
///
/// Credentials never appear in `Debug` output, logs or errors.
#[derive(Clone)]
pub struct SqsPublisherBuilder {
    pub(super) connect: ConnectOptions,
    pub(super) broker_timeout: Duration,
    pub(super) fifo: bool,
    pub(super) routes: HashMap<String, Vec<String>>,
    pub(super) router: Option<Router>,
    pub(super) create_queues: bool,
    pub(super) dead_letter_after: Option<u32>,
    pub(super) max_message_size: usize,
}

impl fmt::Debug for SqsPublisherBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqsPublisherBuilder")
            .field("connect", &self.connect)
            .field("broker_timeout", &self.broker_timeout)
            .field("fifo", &self.fifo)
            .field("routes", &self.routes)
            .field("router", &self.router.is_some())
            .field("create_queues", &self.create_queues)
            .field("dead_letter_after", &self.dead_letter_after)
            .field("max_message_size", &self.max_message_size)
            .finish()
    }
}

impl SqsPublisherBuilder {
    connect_options!(
        SqsPublisher::builder(),
        "use eventbus::transport::sqs::SqsPublisherBuilder;\n\nlet builder = SqsPublisherBuilder::from_url(\"sqs+http://127.0.0.1:4566?fifo=true\")?;"
    );

    /// How long SQS may take to answer one request (the SDK's retries of
    /// throttled requests included); default [`DEFAULT_BROKER_TIMEOUT`](crate::transport::sqs::DEFAULT_BROKER_TIMEOUT).
    /// Past it, the messages fail with [`PublishError::Unavailable`](crate::transport::PublishError::Unavailable).
    #[must_use]
    pub fn broker_timeout(mut self, timeout: Duration) -> Self {
        self.broker_timeout = timeout;
        self
    }

    /// Sends every destination to a FIFO queue (`orders` to `orders.fifo`),
    /// with the partition key as message group and the event id as
    /// deduplication id. Default `false`: destinations with a `fifo` segment
    /// are FIFO, the others standard queues. Subscribers must agree (see
    /// [`SqsSubscriberBuilder::fifo`](crate::transport::sqs::SqsSubscriberBuilder::fifo)).
    #[must_use]
    pub fn fifo(mut self, fifo: bool) -> Self {
        self.fifo = fifo;
        self
    }

    /// Sends the messages of `destination` to each of `queues` (given as
    /// destinations, e.g. `orders.billing`, `orders.shipping`) instead of the
    /// queue of `destination`: publish-subscribe with one queue per consumer
    /// group. A message counts as published once every queue has it; when
    /// one refuses, the message is sent again later to all of them (a FIFO
    /// queue drops the copy, an inbox absorbs it).
    ///
    /// ```
    /// use eventbus::transport::sqs::SqsPublisher;
    ///
    /// let builder = SqsPublisher::builder()
    ///     .route("orders", ["orders.billing", "orders.shipping"]);
    /// ```
    #[must_use]
    pub fn route<I>(mut self, destination: impl Into<String>, queues: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.routes.insert(
            destination.into(),
            queues.into_iter().map(Into::into).collect(),
        );
        self
    }

    /// Routes destinations that [`route`](Self::route) does not name: `router`
    /// returns the queues (as destinations) a destination's messages go to;
    /// an empty list means the destination's own queue.
    #[must_use]
    pub fn route_with(
        mut self,
        router: impl Fn(&str) -> Vec<String> + Send + Sync + 'static,
    ) -> Self {
        self.router = Some(Arc::new(router));
        self
    }

    /// Whether publishing creates a missing queue (FIFO when its name says
    /// so). Default `true`. Off, a message for a missing queue fails with
    /// [`PublishError::Rejected`](crate::transport::PublishError::Rejected); [`Publisher::ensure_destination`](crate::transport::Publisher::ensure_destination) creates
    /// queues either way.
    #[must_use]
    pub fn create_queues(mut self, create: bool) -> Self {
        self.create_queues = create;
        self
    }

    /// Gives every queue this publisher uses (dead-letter queues aside) a
    /// redrive policy: a message received `max_receives` times without being
    /// deleted moves to the queue's own dead-letter queue `<queue>-dlq`
    /// (created when missing). Consumers' dead letters go elsewhere: to their
    /// group's `<destination>.<group>.dlq`.
    #[must_use]
    pub fn dead_letter_after(mut self, max_receives: u32) -> Self {
        self.dead_letter_after = Some(max_receives);
        self
    }

    /// The largest message sent, body and message attributes counted as SQS
    /// counts them; larger ones fail with [`PublishError::Rejected`](crate::transport::PublishError::Rejected) without
    /// reaching SQS. Default [`DEFAULT_MAX_MESSAGE_SIZE`](crate::transport::sqs::DEFAULT_MAX_MESSAGE_SIZE); a queue's own
    /// `MaximumMessageSize`, when lower, applies to it. Also the limit of a
    /// whole `SendMessageBatch`.
    #[must_use]
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes.max(1);
        self
    }

    /// Builds the publisher; queues are looked up (and created) on first use.
    ///
    /// # Errors
    ///
    /// None today: reaching SQS and credentials are checked by the first
    /// request, which fails with [`PublishError::Unavailable`](crate::transport::PublishError::Unavailable) when they do not
    /// work. The `Result` leaves room for checks that need SQS.
    pub async fn connect(self) -> Result<SqsPublisher> {
        let client = self.connect.client().await;
        Ok(SqsPublisher {
            describe: self.connect.describe(),
            queues: Queues::new(client, self.broker_timeout, self.dead_letter_after),
            broker_timeout: self.broker_timeout,
            fifo: self.fifo,
            routes: self.routes,
            router: self.router,
            create_queues: self.create_queues,
            max_message_size: self.max_message_size,
        })
    }
}
