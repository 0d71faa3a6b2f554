//! Amazon SQS transport (aws-sdk-sqs): [`SqsPublisher`] sends envelopes to
//! standard and FIFO queues in batches, [`SqsSubscriber`] long-polls queues
//! with bounded in-flight work and extends the visibility of what it holds;
//! [`envelope_from_message`] decodes one message.
//!
//! | module | owns |
//! | --- | --- |
//! | this one | the wire format, queue names, group and deduplication ids, where SQS is and how to reach it, error classification |
//! | `queues` | queue URLs, creation (FIFO attributes, redrive policy), size limits |
//! | `publisher` | [`SqsPublisher`]: batches of 10, per-entry failures, per-key order, fan-out routes |
//! | `subscriber` | [`SqsSubscriber`]: long polling, lanes, visibility extension, batched deletes |
//!
//! # Wire format
//!
//! SQS has no CloudEvents protocol binding, and a message carries at most 10
//! message attributes — fewer than an event's attributes. So the body is the
//! event in the CloudEvents **JSON event format** (structured mode), which
//! every stock CloudEvents SDK reads, and the attributes most used to route,
//! filter and trace are copied into message attributes (type `String`, only
//! when set):
//!
//! | SQS | value |
//! | --- | --- |
//! | queue | the destination (see [`queue_name`]) |
//! | body | the event as CloudEvents JSON (`data`, or `data_base64` for non-JSON payloads) |
//! | attribute `content-type` | `application/cloudevents+json; charset=UTF-8` |
//! | attributes `ce-specversion`, `ce-id`, `ce-source`, `ce-type`, `ce-subject`, `ce-partitionkey`, `ce-dataschema` | copies of those attributes |
//! | attributes `traceparent`, `tracestate` | the W3C trace context, when set |
//! | `MessageGroupId` (FIFO) | the partition key (see [`message_group_id`]) |
//! | `MessageDeduplicationId` (FIFO) | the event id (see [`deduplication_id`]) |
//!
//! [`envelope_from_message`] also reads binary-mode messages of other
//! producers: `ce-` attributes, a `content-type` attribute and the payload as
//! the body.
//!
//! # Queues, FIFO and fan-out
//!
//! A destination is a queue: dots become hyphens (`orders.dlq` is the queue
//! `orders-dlq`), and a `fifo` segment or [`SqsPublisherBuilder::fifo`] makes
//! it a FIFO queue (`orders.fifo`). FIFO queues keep the order of each
//! partition key (one message group per key) and drop a re-sent event within
//! SQS's five-minute deduplication window. Standard queues deliver in any
//! order, at least once.
//!
//! A queue is one consumer group: the subscribers of a queue compete for its
//! messages. For publish-subscribe, route a destination to one queue per
//! group with [`SqsPublisherBuilder::route`].
//!
//! # Where SQS is
//!
//! Region, credentials and endpoint come from the usual AWS sources: the
//! environment (`AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! `AWS_ENDPOINT_URL_SQS`, …), the shared config and credentials files
//! (`AWS_PROFILE`), web identity, the container and instance metadata. The
//! builders override them; broker URLs (`sqs://`, `sqs+http://127.0.0.1:4566`)
//! are read by [`SqsPublisherBuilder::from_url`]. Credentials never appear in
//! `Debug` output, logs or errors.

use std::time::Duration;

/// The connection options both SQS builders take, as builder methods that
/// write their `connect: ConnectOptions` field: the endpoint, region,
/// profile, credentials, an own SDK client, the connect timeout, and
/// [`from_url`] for all of them at once.
macro_rules! connect_options {
    ($builder:expr, $example:literal) => {
        /// Options from a broker URL: `sqs://` (endpoint, region and
        /// credentials from the AWS sources), `sqs://host[:port]` (an HTTPS
        /// endpoint) or `sqs+http://host:port` (a local server), with optional
        /// query options `region=…`, `profile=…` and `fifo=true` (see
        /// [`fifo`](Self::fifo)).
        ///
        #[doc = concat!("```\n", $example, "\n# Ok::<(), eventbus::Error>(())\n```")]
        ///
        /// # Errors
        ///
        /// [`Error::Config`](crate::Error::Config) for another scheme,
        /// credentials in the URL, a path, or an unknown option.
        pub fn from_url(url: &str) -> Result<Self> {
            let options = crate::transport::sqs::parse_url(url)?;
            let mut builder = $builder.fifo(options.fifo);
            builder.connect.apply_url(&options);
            Ok(builder)
        }

        /// The SQS endpoint, overriding the AWS sources: a local server such
        /// as `http://127.0.0.1:4566`, or a VPC endpoint.
        #[must_use]
        pub fn endpoint(mut self, url: impl Into<String>) -> Self {
            self.connect.endpoint = Some(url.into());
            self
        }

        /// The AWS region, overriding the AWS sources.
        #[must_use]
        pub fn region(mut self, region: impl Into<String>) -> Self {
            self.connect.region = Some(region.into());
            self
        }

        /// The profile of the shared AWS config files, instead of `AWS_PROFILE`.
        #[must_use]
        pub fn profile(mut self, profile: impl Into<String>) -> Self {
            self.connect.profile = Some(profile.into());
            self
        }

        /// Fixed credentials instead of the AWS sources' (e.g. for a local
        /// test server). Never printed.
        #[must_use]
        pub fn credentials(mut self, credentials: aws_sdk_sqs::config::Credentials) -> Self {
            self.connect.credentials = Some(credentials);
            self
        }

        /// An SDK client configured by the caller; the endpoint, region,
        /// profile and credentials options are then ignored.
        #[must_use]
        pub fn client(mut self, client: aws_sdk_sqs::Client) -> Self {
            self.connect.client = Some(client);
            self
        }

        /// How long opening a connection may take; default
        /// [`DEFAULT_CONNECT_TIMEOUT`](crate::transport::sqs::DEFAULT_CONNECT_TIMEOUT).
        #[must_use]
        pub fn connect_timeout(mut self, timeout: Duration) -> Self {
            self.connect.connect_timeout = Some(timeout);
            self
        }
    };
}

mod codec;
mod connect;
mod failure;
mod publisher;
mod queues;
mod subscriber;

pub use codec::{
    deduplication_id, envelope_from_message, message_attributes, message_body, message_group_id,
    queue_name, InvalidQueueName,
};
use codec::{invalid_char, is_fifo_queue, message_size, received_key, sdk_attributes, FIFO_SUFFIX};
use connect::{parse_url, ConnectOptions};
use failure::{timed, Failure};

pub use publisher::{SqsPublisher, SqsPublisherBuilder, DEFAULT_MAX_MESSAGE_SIZE};
pub use subscriber::{
    SqsSubscriber, SqsSubscriberBuilder, DEFAULT_LANES, DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_VISIBILITY_TIMEOUT, DEFAULT_WAIT_TIME,
};

/// The AWS SDK for SQS, re-exported so that callers name the same version as
/// [`envelope_from_message`] and [`SqsPublisherBuilder::client`].
pub use aws_sdk_sqs;

/// The OpenTelemetry `messaging.system` of SQS.
pub const SYSTEM: &str = "aws_sqs";

/// The prefix of CloudEvents attribute copies among the message attributes.
pub const HEADER_PREFIX: &str = "ce-";

/// The message attribute naming the body's content type.
pub const CONTENT_TYPE_ATTRIBUTE: &str = "content-type";

/// The body's content type: the CloudEvents JSON event format.
pub const STRUCTURED_CONTENT_TYPE: &str = "application/cloudevents+json; charset=UTF-8";

/// SQS accepts at most this many message attributes per message.
pub const MAX_MESSAGE_ATTRIBUTES: usize = 10;

/// The default time allowed for SQS to answer one request (long polls get
/// their wait time on top).
pub const DEFAULT_BROKER_TIMEOUT: Duration = Duration::from_secs(30);

/// The default time allowed to open a connection to SQS.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
