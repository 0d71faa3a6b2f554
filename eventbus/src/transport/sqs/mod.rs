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

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::Duration;

use aws_sdk_sqs::config::http::HttpResponse;
use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::{Message, MessageAttributeValue, MessageSystemAttributeName};

use crate::envelope::{Envelope, EnvelopeError};
use crate::error::{Error, Result};
use crate::hash::fnv1a;
use crate::transport::PublishError;

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
            let options = super::parse_url(url)?;
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
        /// [`DEFAULT_CONNECT_TIMEOUT`](super::DEFAULT_CONNECT_TIMEOUT).
        #[must_use]
        pub fn connect_timeout(mut self, timeout: Duration) -> Self {
            self.connect.connect_timeout = Some(timeout);
            self
        }
    };
}

mod publisher;
mod queues;
mod subscriber;

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

/// The attributes copied into message attributes, in this order.
const COPIED_ATTRIBUTES: [&str; 7] = [
    "specversion",
    "id",
    "source",
    "type",
    "subject",
    "partitionkey",
    "dataschema",
];

/// The longest message group and deduplication id SQS takes.
const MAX_ID_LEN: usize = 128;

/// The longest queue name SQS takes, `.fifo` included.
const MAX_QUEUE_NAME_LEN: usize = 80;

/// The suffix SQS requires of FIFO queue names.
const FIFO_SUFFIX: &str = ".fifo";

/// The `MessageAttributeValue` data type of text attributes.
const STRING_TYPE: &str = "String";

/// A destination that cannot name an SQS queue.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("destination `{destination}` cannot name an SQS queue: {reason}")]
pub struct InvalidQueueName {
    /// The destination as given.
    pub destination: String,
    /// What is wrong with it.
    pub reason: String,
}

/// The SQS queue of `destination`: every `.` becomes `-`, except that a
/// `fifo` segment (or `fifo = true`) makes it a FIFO queue, whose name ends
/// in `.fifo`. So the consumer's dead-letter destination of `orders.fifo`,
/// `orders.fifo.dlq`, is the FIFO queue `orders-dlq.fifo`.
///
/// ```
/// use eventbus::transport::sqs::queue_name;
///
/// assert_eq!(queue_name("orders", false).unwrap(), "orders");
/// assert_eq!(queue_name("orders.dlq", false).unwrap(), "orders-dlq");
/// assert_eq!(queue_name("orders", true).unwrap(), "orders.fifo");
/// assert_eq!(queue_name("orders.fifo.dlq", false).unwrap(), "orders-dlq.fifo");
/// assert!(queue_name("orders/eu", false).is_err());
/// ```
///
/// # Errors
///
/// [`InvalidQueueName`] when the name (or a `.` segment of it) is empty, longer
/// than SQS's 80 characters, or has characters other than ASCII letters,
/// digits, `-`, `_` and `.`.
pub fn queue_name(destination: &str, fifo: bool) -> Result<String, InvalidQueueName> {
    let invalid = |reason: String| InvalidQueueName {
        destination: destination.to_owned(),
        reason,
    };
    let mut is_fifo = fifo;
    let mut parts = Vec::new();
    for segment in destination.split('.') {
        if segment == "fifo" {
            is_fifo = true;
        } else {
            parts.push(segment);
        }
    }
    if parts.is_empty() || parts.iter().any(|p| p.is_empty()) {
        return Err(invalid(
            "the name is empty, or has an empty `.` segment".into(),
        ));
    }
    let stem = parts.join("-");
    if let Some(c) = stem
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        return Err(invalid(format!(
            "`{c}` is not allowed: SQS queue names have ASCII letters, digits, `-` and `_` \
             (and `.` here, which becomes `-`)"
        )));
    }
    let name = if is_fifo {
        format!("{stem}{FIFO_SUFFIX}")
    } else {
        stem
    };
    if name.len() > MAX_QUEUE_NAME_LEN {
        return Err(invalid(format!(
            "the queue name `{name}` is {} characters, more than SQS's {MAX_QUEUE_NAME_LEN}",
            name.len()
        )));
    }
    Ok(name)
}

/// Whether a queue name is a FIFO queue's.
fn is_fifo_queue(queue: &str) -> bool {
    queue.ends_with(FIFO_SUFFIX)
}

/// The `MessageGroupId` of `envelope` in a FIFO queue: its partition key (its
/// id when it has none), as it is when SQS accepts it — up to 128 characters
/// of ASCII letters, digits and punctuation — and otherwise `h-` followed by
/// a stable 64-bit hash of it. Keys that share a hash share a group: their
/// events stay in order, only less parallel.
///
/// ```
/// use eventbus::transport::sqs::message_group_id;
/// use eventbus::Envelope;
///
/// let mut e = Envelope::new("urn:svc", "com.example.order.placed", b"{}".to_vec());
/// e.partition_key = Some("order-1".into());
/// assert_eq!(message_group_id(&e), "order-1");
/// e.partition_key = Some("ordre n° 1".into());
/// assert!(message_group_id(&e).starts_with("h-"));
/// ```
pub fn message_group_id(envelope: &Envelope) -> String {
    sqs_id(envelope.partition_key.as_deref().unwrap_or(&envelope.id))
}

/// The `MessageDeduplicationId` of `envelope` in a FIFO queue: its event id,
/// so that SQS drops a copy sent again within its five-minute window (a relay
/// that crashed between sending and acknowledging). An event re-driven from a
/// dead-letter queue carries [`dead_letter::REDRIVEN_AT`](crate::consumer::dead_letter::REDRIVEN_AT),
/// which goes into the id: a re-drive is a new send, not a copy. Made to fit
/// as [`message_group_id`] is.
///
/// ```
/// use eventbus::transport::sqs::deduplication_id;
/// use eventbus::Envelope;
///
/// let e = Envelope::new("urn:svc", "com.example.order.placed", b"{}".to_vec());
/// assert_eq!(deduplication_id(&e), e.id);
/// ```
pub fn deduplication_id(envelope: &Envelope) -> String {
    match envelope
        .extensions
        .get(crate::consumer::dead_letter::REDRIVEN_AT)
    {
        Some(at) => sqs_id(&format!("{}@{at}", envelope.id)),
        None => sqs_id(&envelope.id),
    }
}

/// `text` if SQS takes it as a group or deduplication id, else a hash of it.
fn sqs_id(text: &str) -> String {
    let valid =
        !text.is_empty() && text.len() <= MAX_ID_LEN && text.bytes().all(|b| b.is_ascii_graphic());
    if valid {
        text.to_owned()
    } else {
        format!("h-{:016x}", fnv1a(text.as_bytes()))
    }
}

/// The message body of `envelope`: the CloudEvents JSON event format.
pub fn message_body(envelope: &Envelope) -> String {
    // `to_json` writes serde_json output and validated JSON: always UTF-8.
    String::from_utf8_lossy(&envelope.to_json()).into_owned()
}

/// The message attributes of `envelope`, as `(name, value)` pairs of SQS
/// `String` attributes: `content-type`, the `ce-` copies and the trace
/// context (see the [module docs](self)); at most [`MAX_MESSAGE_ATTRIBUTES`],
/// empty values left out (SQS refuses them).
///
/// ```
/// use eventbus::transport::sqs::message_attributes;
/// use eventbus::Envelope;
///
/// let e = Envelope::new("urn:svc", "com.example.order.placed", b"{}".to_vec());
/// let attributes = message_attributes(&e);
/// assert!(attributes.contains(&("ce-type".into(), "com.example.order.placed".into())));
/// assert!(attributes.len() <= 10);
/// ```
pub fn message_attributes(envelope: &Envelope) -> Vec<(String, String)> {
    let mut out = vec![(
        CONTENT_TYPE_ATTRIBUTE.to_owned(),
        STRUCTURED_CONTENT_TYPE.to_owned(),
    )];
    let attributes: BTreeMap<&str, String> = envelope.attributes().into_iter().collect();
    for name in COPIED_ATTRIBUTES {
        if let Some(value) = attributes.get(name).filter(|v| !v.is_empty()) {
            out.push((format!("{HEADER_PREFIX}{name}"), value.clone()));
        }
    }
    for (name, value) in [
        ("traceparent", &envelope.traceparent),
        ("tracestate", &envelope.tracestate),
    ] {
        if let Some(value) = value.as_ref().filter(|v| !v.is_empty()) {
            out.push((name.to_owned(), value.clone()));
        }
    }
    out.truncate(MAX_MESSAGE_ATTRIBUTES);
    out
}

/// `message_attributes` as the SDK's values.
fn sdk_attributes(pairs: &[(String, String)]) -> HashMap<String, MessageAttributeValue> {
    pairs
        .iter()
        .filter_map(|(name, value)| {
            MessageAttributeValue::builder()
                .data_type(STRING_TYPE)
                .string_value(value.clone())
                .build()
                .ok()
                .map(|v| (name.clone(), v))
        })
        .collect()
}

/// The size SQS counts for a message: the body, and each attribute's name,
/// data type and value.
fn message_size(body: &str, attributes: &[(String, String)]) -> usize {
    body.len()
        + attributes
            .iter()
            .map(|(n, v)| n.len() + STRING_TYPE.len() + v.len())
            .sum::<usize>()
}

/// The first character SQS does not accept in a message, if any: it takes
/// tab, line feed, carriage return and the Unicode ranges `#x20`–`#xD7FF`,
/// `#xE000`–`#xFFFD` and `#x10000`–`#x10FFFF`.
fn invalid_char(text: &str) -> Option<char> {
    text.chars().find(|c| {
        let c = u32::from(*c);
        !(c == 0x9
            || c == 0xA
            || c == 0xD
            || (0x20..=0xD7FF).contains(&c)
            || (0xE000..=0xFFFD).contains(&c)
            || (0x1_0000..=0x10_FFFF).contains(&c))
    })
}

/// Decodes an SQS message into an [`Envelope`]: the CloudEvents JSON event
/// format in the body (as [`SqsPublisher`] sends it, and any CloudEvents SDK
/// in structured mode), or binary mode — `ce-` message attributes (names
/// case-insensitive), a `content-type` attribute and the payload as the body.
/// Binary mode is chosen when there is a `ce-specversion` attribute and the
/// `content-type` attribute is not `application/cloudevents+json`. When the
/// event has no trace context, plain `traceparent`/`tracestate` attributes
/// are used.
///
/// ```
/// use eventbus::transport::sqs::aws_sdk_sqs::types::{Message, MessageAttributeValue};
/// use eventbus::transport::sqs::{envelope_from_message, message_body};
/// use eventbus::Envelope;
///
/// let envelope = Envelope::new("urn:svc:orders", "com.example.order.placed", b"{}".to_vec());
/// let message = Message::builder().body(message_body(&envelope)).build();
/// assert_eq!(envelope_from_message(&message).unwrap(), envelope);
/// ```
///
/// # Errors
///
/// [`EnvelopeError`] when the body is not a CloudEvent, or a required
/// attribute is missing or invalid.
pub fn envelope_from_message(message: &Message) -> Result<Envelope, EnvelopeError> {
    let body = message.body().unwrap_or_default();
    let mut content_type = None;
    let mut ce: Vec<(&str, &[u8])> = Vec::new();
    let mut plain_traceparent = None;
    let mut plain_tracestate = None;
    let mut binary = false;
    if let Some(attributes) = message.message_attributes() {
        for (name, value) in attributes {
            let Some(text) = value.string_value() else {
                continue;
            };
            if name.eq_ignore_ascii_case(CONTENT_TYPE_ATTRIBUTE) {
                content_type = Some(text);
            } else if name.eq_ignore_ascii_case("traceparent") {
                plain_traceparent = Some(text);
            } else if name.eq_ignore_ascii_case("tracestate") {
                plain_tracestate = Some(text);
            } else if name
                .get(..HEADER_PREFIX.len())
                .is_some_and(|p| p.eq_ignore_ascii_case(HEADER_PREFIX))
            {
                binary |= name[HEADER_PREFIX.len()..].eq_ignore_ascii_case("specversion");
                ce.push((name.as_str(), text.as_bytes()));
            }
        }
    }
    let structured = content_type.is_some_and(|ct| {
        ct.split(';').next().is_some_and(|essence| {
            essence
                .trim()
                .eq_ignore_ascii_case("application/cloudevents+json")
        })
    });
    let mut envelope = if binary && !structured {
        Envelope::from_binary(HEADER_PREFIX, ce, content_type, body.as_bytes().to_vec())?
    } else {
        Envelope::from_json(body.as_bytes())?
    };
    if envelope.traceparent.is_none() {
        envelope.traceparent = plain_traceparent.map(str::to_owned);
        if envelope.tracestate.is_none() {
            envelope.tracestate = plain_tracestate.map(str::to_owned);
        }
    }
    Ok(envelope)
}

/// The partition key of a received message: its `MessageGroupId` in a FIFO
/// queue, else its `ce-partitionkey` attribute.
fn received_key(message: &Message) -> Option<String> {
    if let Some(group) = message
        .attributes()
        .and_then(|a| a.get(&MessageSystemAttributeName::MessageGroupId))
    {
        return Some(group.clone());
    }
    message.message_attributes().and_then(|attributes| {
        attributes.iter().find_map(|(name, value)| {
            name.eq_ignore_ascii_case("ce-partitionkey")
                .then(|| value.string_value().map(str::to_owned))
                .flatten()
        })
    })
}

// ------------------------------------------------------------ where SQS is

/// Where SQS is and how to reach it; shared by both builders.
#[derive(Clone, Default)]
struct ConnectOptions {
    endpoint: Option<String>,
    region: Option<String>,
    profile: Option<String>,
    credentials: Option<aws_sdk_sqs::config::Credentials>,
    client: Option<aws_sdk_sqs::Client>,
    connect_timeout: Option<Duration>,
}

impl fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Credentials stay out; their presence is enough to say.
        f.debug_struct("ConnectOptions")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("profile", &self.profile)
            .field("static_credentials", &self.credentials.is_some())
            .field("client", &self.client.is_some())
            .finish()
    }
}

/// What a broker URL says about SQS.
#[derive(Debug, Default, PartialEq, Eq)]
struct UrlOptions {
    endpoint: Option<String>,
    region: Option<String>,
    profile: Option<String>,
    fifo: bool,
}

/// Reads `sqs://[host[:port]][?region=…&profile=…&fifo=true]` (HTTPS
/// endpoint override when a host is given) and `sqs+http://host:port[?…]`
/// (plain HTTP, for local servers).
fn parse_url(url: &str) -> Result<UrlOptions> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| Error::Config(format!("SQS URL `{url}` has no scheme: use sqs://")))?;
    let http_scheme = match scheme.to_ascii_lowercase().as_str() {
        "sqs" | "sqs+https" => "https",
        "sqs+http" => "http",
        other => {
            return Err(Error::Config(format!(
                "unsupported scheme `{other}` for SQS: use sqs://, sqs://host:port or sqs+http://host:port"
            )))
        }
    };
    let (authority, query) = match rest.split_once('?') {
        Some((a, q)) => (a, Some(q)),
        None => (rest, None),
    };
    let authority = authority.trim_end_matches('/');
    if authority.contains('@') {
        return Err(Error::Config(
            "SQS URLs carry no credentials: they come from the AWS environment, profile or role"
                .into(),
        ));
    }
    if authority.contains('/') {
        return Err(Error::Config(format!(
            "SQS URL `{url}` has a path: give only host and port"
        )));
    }
    let mut options = UrlOptions::default();
    if !authority.is_empty() {
        options.endpoint = Some(format!("{http_scheme}://{authority}"));
    } else if http_scheme == "http" {
        return Err(Error::Config(
            "sqs+http:// needs a host and port, e.g. sqs+http://127.0.0.1:4566".into(),
        ));
    }
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "region" if !value.is_empty() => options.region = Some(value.to_owned()),
            "profile" if !value.is_empty() => options.profile = Some(value.to_owned()),
            "fifo" => {
                options.fifo = match value {
                    "" | "true" | "1" => true,
                    "false" | "0" => false,
                    other => {
                        return Err(Error::Config(format!(
                            "SQS URL option fifo={other}: use true or false"
                        )))
                    }
                }
            }
            other => {
                return Err(Error::Config(format!(
                    "unknown SQS URL option `{other}`: use region, profile or fifo"
                )))
            }
        }
    }
    Ok(options)
}

impl ConnectOptions {
    fn apply_url(&mut self, url: &UrlOptions) {
        if url.endpoint.is_some() {
            self.endpoint.clone_from(&url.endpoint);
        }
        if url.region.is_some() {
            self.region.clone_from(&url.region);
        }
        if url.profile.is_some() {
            self.profile.clone_from(&url.profile);
        }
    }

    /// What to show of the endpoint in logs and errors.
    fn describe(&self) -> String {
        match (&self.endpoint, &self.region) {
            (Some(endpoint), _) => format!("SQS at {endpoint}"),
            (None, Some(region)) => format!("SQS in {region}"),
            (None, None) => "SQS".to_owned(),
        }
    }

    /// The SDK client: the one given, or one from the AWS config sources with
    /// these overrides, over a rustls (ring) HTTPS client.
    async fn client(&self) -> aws_sdk_sqs::Client {
        if let Some(client) = &self.client {
            return client.clone();
        }
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let timeouts = aws_config::timeout::TimeoutConfig::builder()
            .connect_timeout(self.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT))
            .build();
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .http_client(http)
            .timeout_config(timeouts);
        if let Some(profile) = &self.profile {
            loader = loader.profile_name(profile);
        }
        if let Some(region) = &self.region {
            loader = loader.region(aws_config::Region::new(region.clone()));
        }
        if let Some(endpoint) = &self.endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        if let Some(credentials) = &self.credentials {
            loader = loader.credentials_provider(credentials.clone());
        }
        let config = loader.load().await;
        aws_sdk_sqs::Client::new(&config)
    }
}

// ------------------------------------------------------------ errors

/// What an SQS request failure means for the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Failure {
    /// SQS as a whole cannot be reached or will not serve us now.
    Unavailable(String),
    /// The queue does not exist.
    NoQueue(String),
    /// SQS refused this request for what it asked.
    Refused(String),
}

impl Failure {
    fn into_publish_error(self) -> PublishError {
        match self {
            Failure::Unavailable(text) => PublishError::Unavailable(text),
            Failure::NoQueue(text) | Failure::Refused(text) => PublishError::Rejected(text),
        }
    }
}

/// Error codes that mean "not now", whatever was asked.
const TRANSIENT_CODES: [&str; 8] = [
    "RequestThrottled",
    "ThrottlingException",
    "KmsThrottled",
    "ServiceUnavailable",
    "InternalError",
    "InternalFailure",
    "RequestTimeout",
    "OverLimit",
];

/// Error codes about who we are: they fail every request alike, so they are
/// SQS being unavailable to us, not a message's fault.
const CREDENTIAL_CODES: [&str; 8] = [
    "InvalidClientTokenId",
    "UnrecognizedClientException",
    "SignatureDoesNotMatch",
    "MissingAuthenticationToken",
    "IncompleteSignature",
    "ExpiredToken",
    "InvalidSecurity",
    "RequestExpired",
];

/// Sorts an SDK error: transport trouble, throttling, server faults and
/// credential problems are [`Failure::Unavailable`]; a missing queue is
/// [`Failure::NoQueue`]; any other refusal is [`Failure::Refused`].
fn classify<E>(what: &str, e: &SdkError<E, HttpResponse>) -> Failure
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let text = format!("{what}: {}", DisplayErrorContext(e));
    match e {
        SdkError::ServiceError(context) => {
            let code = e.code().unwrap_or_default();
            let server_fault = context.raw().status().is_server_error();
            if code == "QueueDoesNotExist" || code == "AWS.SimpleQueueService.NonExistentQueue" {
                Failure::NoQueue(text)
            } else if server_fault
                || TRANSIENT_CODES.contains(&code)
                || CREDENTIAL_CODES.contains(&code)
            {
                Failure::Unavailable(text)
            } else {
                Failure::Refused(text)
            }
        }
        _ => Failure::Unavailable(text),
    }
}

/// Runs one SQS request under `timeout`.
async fn timed<T, E>(
    what: &str,
    timeout: Duration,
    request: impl std::future::Future<Output = std::result::Result<T, SdkError<E, HttpResponse>>>,
) -> std::result::Result<T, Failure>
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match tokio::time::timeout(timeout, request).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(classify(what, &e)),
        Err(_) => Err(Failure::Unavailable(format!(
            "{what}: no answer from SQS within {timeout:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Envelope {
        let mut e = Envelope::new(
            "urn:svc:orders",
            "com.example.order.placed",
            br#"{"order_id":"o-1"}"#.to_vec(),
        );
        e.partition_key = Some("o-1".into());
        e.subject = Some("o-1".into());
        e.dataschema = Some("urn:eventbus:schema:com.example.order.placed:v1".into());
        e.traceparent = Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());
        e.tracestate = Some("congo=t61rcWkgMzE".into());
        e.correlation_id = Some("c-1".into());
        e.causation_id = Some("c-0".into());
        e.extensions.insert("sequence".into(), "7".into());
        e.extensions.insert("tenant".into(), "acme".into());
        e
    }

    fn as_message(e: &Envelope) -> Message {
        let attributes = sdk_attributes(&message_attributes(e));
        Message::builder()
            .body(message_body(e))
            .set_message_attributes(Some(attributes))
            .build()
    }

    #[test]
    fn queue_names_follow_destinations() {
        assert_eq!(queue_name("orders", false).as_deref(), Ok("orders"));
        assert_eq!(queue_name("ns.orders", false).as_deref(), Ok("ns-orders"));
        assert_eq!(
            queue_name("orders.fifo", false).as_deref(),
            Ok("orders.fifo")
        );
        assert_eq!(queue_name("orders", true).as_deref(), Ok("orders.fifo"));
        assert_eq!(
            queue_name("orders.fifo", true).as_deref(),
            Ok("orders.fifo")
        );
        assert_eq!(
            queue_name("orders.fifo.dlq", false).as_deref(),
            Ok("orders-dlq.fifo")
        );
        assert_eq!(
            queue_name("a_b-c.dlq", true).as_deref(),
            Ok("a_b-c-dlq.fifo")
        );
        for bad in ["", ".", "fifo", "orders eu", "ordres-é", "a/b"] {
            assert!(queue_name(bad, false).is_err(), "{bad:?}");
        }
        assert!(queue_name(&"x".repeat(80), false).is_ok());
        let err = queue_name(&"x".repeat(76), true).expect_err("81 with .fifo");
        assert!(err.to_string().contains("more than SQS's 80"), "{err}");
    }

    #[test]
    fn group_and_deduplication_ids_fit_sqs() {
        let mut e = sample();
        assert_eq!(message_group_id(&e), "o-1");
        assert_eq!(deduplication_id(&e), e.id);
        e.partition_key = Some("x".repeat(129));
        let group = message_group_id(&e);
        assert!(group.starts_with("h-") && group.len() == 18, "{group}");
        assert_eq!(group, message_group_id(&e), "stable");
        e.partition_key = Some("with space".into());
        assert!(message_group_id(&e).starts_with("h-"));
        e.partition_key = None;
        assert_eq!(message_group_id(&e), e.id, "keyless: its own group");
        e.extensions.insert(
            crate::consumer::dead_letter::REDRIVEN_AT.into(),
            "2025-01-01T00:00:00Z".into(),
        );
        assert_eq!(
            deduplication_id(&e),
            format!("{}@2025-01-01T00:00:00Z", e.id)
        );
    }

    #[test]
    fn attributes_copy_at_most_ten() {
        let e = sample();
        let attributes = message_attributes(&e);
        assert_eq!(attributes.len(), MAX_MESSAGE_ATTRIBUTES);
        let get = |name: &str| {
            attributes
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("content-type"), Some(STRUCTURED_CONTENT_TYPE));
        assert_eq!(get("ce-specversion"), Some("1.0"));
        assert_eq!(get("ce-id"), Some(e.id.as_str()));
        assert_eq!(get("ce-type"), Some("com.example.order.placed"));
        assert_eq!(get("ce-partitionkey"), Some("o-1"));
        assert_eq!(get("traceparent"), e.traceparent.as_deref());
        assert_eq!(get("tracestate"), e.tracestate.as_deref());
        let mut bare = Envelope::new("urn:svc", "t", Vec::new());
        bare.subject = Some(String::new());
        let names: Vec<String> = message_attributes(&bare)
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(
            names,
            [
                "content-type",
                "ce-specversion",
                "ce-id",
                "ce-source",
                "ce-type"
            ]
        );
    }

    #[test]
    fn messages_round_trip_to_the_same_envelope() {
        let e = sample();
        assert_eq!(envelope_from_message(&as_message(&e)).expect("valid"), e);
        let mut binary = e;
        binary.data = vec![0, 159, 146, 150];
        binary.datacontenttype = Some("application/octet-stream".into());
        assert_eq!(
            envelope_from_message(&as_message(&binary)).expect("valid"),
            binary
        );
    }

    #[test]
    fn binary_mode_of_other_producers_is_read() {
        let mut attributes = HashMap::new();
        for (name, value) in [
            ("ce-specversion", "1.0"),
            ("CE-ID", "42"),
            ("ce-source", "/x"),
            ("ce-type", "t"),
            ("content-type", "text/plain"),
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
        ] {
            attributes.insert(
                name.to_owned(),
                MessageAttributeValue::builder()
                    .data_type("String")
                    .string_value(value)
                    .build()
                    .expect("attribute"),
            );
        }
        let message = Message::builder()
            .body("hi")
            .set_message_attributes(Some(attributes))
            .build();
        let e = envelope_from_message(&message).expect("binary mode");
        assert_eq!(e.id, "42");
        assert_eq!(e.data, b"hi");
        assert_eq!(e.datacontenttype.as_deref(), Some("text/plain"));
        assert!(e.traceparent.is_some());
    }

    #[test]
    fn a_body_that_is_no_cloudevent_is_an_envelope_error() {
        let message = Message::builder().body("not json").build();
        assert!(envelope_from_message(&message).is_err());
    }

    #[test]
    fn sizes_and_characters_follow_sqs_rules() {
        let attributes = vec![("ce-id".to_owned(), "1".to_owned())];
        assert_eq!(message_size("abc", &attributes), 3 + 5 + 6 + 1);
        assert_eq!(invalid_char("ok\ttab\n"), None);
        assert_eq!(invalid_char("bad\u{1}"), Some('\u{1}'));
        assert_eq!(invalid_char("bad\u{FFFF}"), Some('\u{FFFF}'));
    }

    #[test]
    fn broker_urls_name_endpoint_region_profile_and_fifo() {
        assert_eq!(parse_url("sqs://").expect("default"), UrlOptions::default());
        let o = parse_url("sqs+http://127.0.0.1:4566?region=us-east-1&fifo=true").expect("local");
        assert_eq!(o.endpoint.as_deref(), Some("http://127.0.0.1:4566"));
        assert_eq!(o.region.as_deref(), Some("us-east-1"));
        assert!(o.fifo);
        let o = parse_url("sqs://sqs.eu-west-1.amazonaws.com/?profile=prod").expect("https");
        assert_eq!(
            o.endpoint.as_deref(),
            Some("https://sqs.eu-west-1.amazonaws.com")
        );
        assert_eq!(o.profile.as_deref(), Some("prod"));
        for bad in [
            "sqs+http://",
            "sqs://key:secret@host",
            "amqp://host",
            "sqs://host/path",
            "sqs://?colour=red",
            "sqs://?fifo=maybe",
        ] {
            let err = parse_url(bad).expect_err(bad);
            assert!(matches!(err, Error::Config(_)), "{bad}: {err:?}");
            assert!(!err.to_string().contains("secret"), "{err}");
        }
    }

    #[test]
    fn debug_output_hides_credentials() {
        let options = ConnectOptions {
            credentials: Some(aws_sdk_sqs::config::Credentials::new(
                "AKIDEXAMPLE",
                "hunter2",
                None,
                None,
                "test",
            )),
            ..ConnectOptions::default()
        };
        let text = format!("{options:?}");
        assert!(
            !text.contains("hunter2") && !text.contains("AKIDEXAMPLE"),
            "{text}"
        );
    }
}
