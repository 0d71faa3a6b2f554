//! RabbitMQ transport (lapin): [`RabbitPublisher`] sends envelopes to durable topic
//! exchanges with publisher confirms, in the CloudEvents AMQP binary binding;
//! [`RabbitSubscriber`] reads them from a consumer group's durable queue with
//! manual acknowledgement; [`envelope_from_delivery`] decodes one delivery.
//!
//! | module | owns |
//! | --- | --- |
//! | this one | the wire format, URL redaction, connection properties |
//! | `publisher` | [`RabbitPublisher`]: confirms, batching, refusals, reconnection |
//! | `subscriber` | [`RabbitSubscriber`]: group queues, bindings, prefetch, lanes, settling |
//! | `tls` | [`RabbitTls`]: private CAs and client certificates for `amqps://` |
//!
//! # Wire format
//!
//! The CloudEvents RabbitMQ protocol binding used by Knative eventing-rabbitmq,
//! binary mode:
//!
//! | AMQP | value |
//! | --- | --- |
//! | exchange | the destination: a durable `topic` exchange |
//! | routing key | the CloudEvents `type` |
//! | body | the payload bytes |
//! | header `ce-<attr>` (long string) | every attribute except `datacontenttype` |
//! | headers `traceparent`, `tracestate` | the W3C trace context, when set |
//! | header `timestamp_in_ms` | when the publisher sent it, in ms (for the consumer's broker-wait metric) |
//! | property `content_type` | `datacontenttype` (`application/json` when unset) |
//! | property `message_id` | the event `id` |
//! | property `timestamp` | the event `time`, in whole seconds |
//! | property `type` | the CloudEvents `type` |
//! | property `delivery_mode` | `2` (persistent) |
//! | property `app_id` | [`RabbitPublisherBuilder::app_id`], when set |
//!
//! # Consumer groups
//!
//! A group is a durable queue of the group's name, bound to the exchange of each
//! destination it subscribes to with topic patterns on the event type.
//! Subscribers of one group share that queue and compete for its messages
//! (point-to-point); each group has its own queue and gets every message
//! (publish-subscribe). See [`RabbitSubscriber`] for ordering and dead letters.

use std::fmt;
use std::time::Duration;

use lapin::protocol::AMQPErrorKind;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, ConnectionProperties};

use crate::envelope::{Envelope, EnvelopeError, JSON_CONTENT_TYPE};

mod publisher;
mod subscriber;
mod tls;
mod unroutable;

pub use publisher::{RabbitPublisher, RabbitPublisherBuilder, DEFAULT_MAX_MESSAGE_SIZE};
pub use subscriber::{RabbitSubscriber, RabbitSubscriberBuilder, DEFAULT_LANES, DEFAULT_PREFETCH};
pub use tls::RabbitTls;
pub use unroutable::{UnknownUnroutable, Unroutable};

/// lapin, re-exported so that consumers name the same version as
/// [`envelope_from_delivery`] and [`message_properties`].
pub use lapin;

/// The prefix of CloudEvents attribute headers in the AMQP binding.
pub const HEADER_PREFIX: &str = "ce-";

/// The default time allowed to open the TCP connection and finish the AMQP handshake.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The default time allowed for the broker to answer: publisher confirms of a
/// batch, exchange declarations, channel opening.
pub const DEFAULT_BROKER_TIMEOUT: Duration = Duration::from_secs(30);

/// AMQP `shortstr` fields (exchange, routing key, most properties, header names)
/// hold at most this many bytes; lapin silently truncates the length byte of a
/// longer one, which corrupts the frame and kills the connection.
const SHORT_STRING_MAX: usize = 255;

/// AMQP `delivery_mode` of persistent messages.
const PERSISTENT: u8 = 2;

/// lapin connection properties that run its tasks and IO on the current tokio
/// runtime rather than on executor threads of its own; lapin's defaults when
/// called outside a tokio runtime.
///
/// ```no_run
/// # async fn demo() -> lapin::Result<()> {
/// use eventbus::transport::rabbitmq::{connection_properties, lapin};
///
/// let connection = lapin::Connection::connect(
///     "amqp://guest:guest@127.0.0.1:5672/%2f",
///     connection_properties(),
/// )
/// .await?;
/// # Ok(()) }
/// ```
pub fn connection_properties() -> ConnectionProperties {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => tokio_properties(handle),
        Err(_) => ConnectionProperties::default(),
    }
}

fn tokio_properties(handle: tokio::runtime::Handle) -> ConnectionProperties {
    ConnectionProperties::default()
        .with_executor(tokio_executor_trait::Tokio::default().with_handle(handle))
        .with_reactor(tokio_reactor_trait::Tokio)
}

/// The AMQP properties of `envelope` in the CloudEvents binary binding: the
/// `ce-` headers, `traceparent`/`tracestate`, `content_type`, `message_id`,
/// `timestamp`, `type`, persistent `delivery_mode` and, when given, `app_id`.
///
/// Useful to consumers that republish an event, e.g. to a dead-letter exchange.
/// Fields longer than AMQP allows are not checked here; the publisher checks them.
pub fn message_properties(envelope: &Envelope, app_id: Option<&str>) -> BasicProperties {
    let mut headers = FieldTable::default();
    for (name, value) in envelope.binary_headers(HEADER_PREFIX) {
        headers.insert(name.into(), AMQPValue::LongString(value.into()));
    }
    // What OpenTelemetry messaging instrumentations in other languages read.
    for (name, value) in [
        ("traceparent", &envelope.traceparent),
        ("tracestate", &envelope.tracestate),
    ] {
        if let Some(value) = value {
            headers.insert(name.into(), AMQPValue::LongString(value.as_str().into()));
        }
    }
    let content_type = envelope
        .datacontenttype
        .as_deref()
        .unwrap_or(JSON_CONTENT_TYPE);
    let mut properties = BasicProperties::default()
        .with_content_type(content_type.into())
        .with_delivery_mode(PERSISTENT)
        .with_message_id(envelope.id.as_str().into())
        .with_type(envelope.event_type.as_str().into())
        .with_headers(headers);
    if let Some(seconds) = envelope
        .time
        .and_then(|t| u64::try_from(t.timestamp()).ok())
    {
        properties = properties.with_timestamp(seconds);
    }
    if let Some(app_id) = app_id {
        properties = properties.with_app_id(app_id.into());
    }
    properties
}

/// The header carrying when a message was sent, in milliseconds since the
/// epoch: the name RabbitMQ's message-timestamp plugin uses, which (where it
/// is enabled) overwrites it with the time the broker took the message.
pub const SENT_AT_HEADER: &str = "timestamp_in_ms";

/// `properties` with [`SENT_AT_HEADER`] set to now.
fn with_sent_at(properties: BasicProperties) -> BasicProperties {
    let mut headers = properties.headers().clone().unwrap_or_default();
    headers.insert(
        SENT_AT_HEADER.into(),
        AMQPValue::LongLongInt(chrono::Utc::now().timestamp_millis()),
    );
    properties.with_headers(headers)
}

/// When the broker took a delivery, per its [`SENT_AT_HEADER`].
fn sent_at(properties: &BasicProperties) -> Option<chrono::DateTime<chrono::Utc>> {
    let value = properties.headers().as_ref()?.inner().get(SENT_AT_HEADER)?;
    let ms = match value {
        AMQPValue::LongLongInt(n) => *n,
        AMQPValue::LongInt(n) => i64::from(*n),
        AMQPValue::LongUInt(n) => i64::from(*n),
        AMQPValue::Timestamp(n) => i64::try_from(*n).ok()?,
        other => std::str::from_utf8(&header_text(other)?)
            .ok()?
            .parse()
            .ok()?,
    };
    chrono::DateTime::from_timestamp_millis(ms)
}

/// Decodes a message in the CloudEvents AMQP binary binding (as sent by
/// [`RabbitPublisher`] or any other CloudEvents SDK) into an [`Envelope`].
///
/// Attributes come from the `ce-` headers (names case-insensitive), the content
/// type from the `content_type` property. When no `ce-traceparent`/`ce-tracestate`
/// header is present, plain `traceparent`/`tracestate` headers are used instead.
///
/// ```
/// use eventbus::transport::rabbitmq::{envelope_from_delivery, message_properties};
/// use eventbus::Envelope;
///
/// let envelope = Envelope::new("urn:svc:orders", "com.example.order.placed", b"{}".to_vec());
/// let properties = message_properties(&envelope, None);
/// let back = envelope_from_delivery(&properties, &envelope.data).unwrap();
/// assert_eq!(back, envelope);
/// ```
///
/// # Errors
///
/// [`EnvelopeError`] when a required attribute is missing or invalid, or a `ce-`
/// header is not a string.
pub fn envelope_from_delivery(
    properties: &BasicProperties,
    body: &[u8],
) -> Result<Envelope, EnvelopeError> {
    let mut headers: Vec<(&str, Vec<u8>)> = Vec::new();
    let mut plain_traceparent = None;
    let mut plain_tracestate = None;
    if let Some(table) = properties.headers() {
        for (name, value) in table {
            let name = name.as_str();
            let is_attribute = name
                .get(..HEADER_PREFIX.len())
                .is_some_and(|p| p.eq_ignore_ascii_case(HEADER_PREFIX));
            if is_attribute {
                let text = header_text(value).ok_or_else(|| EnvelopeError::InvalidAttribute {
                    name: name[HEADER_PREFIX.len()..].to_ascii_lowercase(),
                    reason: "AMQP header value must be a string".into(),
                })?;
                headers.push((name, text));
            } else if name.eq_ignore_ascii_case("traceparent") {
                plain_traceparent = header_text(value);
            } else if name.eq_ignore_ascii_case("tracestate") {
                plain_tracestate = header_text(value);
            }
        }
    }
    let content_type = properties.content_type().as_ref().map(ShortString::as_str);
    let mut envelope = Envelope::from_binary(
        HEADER_PREFIX,
        headers.iter().map(|(k, v)| (*k, v.as_slice())),
        content_type,
        body.to_vec(),
    )?;
    if envelope.traceparent.is_none() {
        envelope.traceparent = plain_traceparent.and_then(|v| String::from_utf8(v).ok());
        if envelope.tracestate.is_none() {
            envelope.tracestate = plain_tracestate.and_then(|v| String::from_utf8(v).ok());
        }
    }
    Ok(envelope)
}

/// The bytes of a string-like header value; numbers and booleans as their text.
fn header_text(value: &AMQPValue) -> Option<Vec<u8>> {
    Some(match value {
        AMQPValue::LongString(s) => s.as_bytes().to_vec(),
        AMQPValue::ShortString(s) => s.as_str().as_bytes().to_vec(),
        AMQPValue::ByteArray(b) => b.as_slice().to_vec(),
        AMQPValue::Boolean(b) => b.to_string().into_bytes(),
        AMQPValue::ShortShortInt(n) => n.to_string().into_bytes(),
        AMQPValue::ShortShortUInt(n) => n.to_string().into_bytes(),
        AMQPValue::ShortInt(n) => n.to_string().into_bytes(),
        AMQPValue::ShortUInt(n) => n.to_string().into_bytes(),
        AMQPValue::LongInt(n) => n.to_string().into_bytes(),
        AMQPValue::LongUInt(n) => n.to_string().into_bytes(),
        AMQPValue::LongLongInt(n) => n.to_string().into_bytes(),
        _ => return None,
    })
}

/// Whether `e` is a channel-level refusal by the broker (AMQP soft error, such
/// as PRECONDITION_FAILED, NOT_FOUND, ACCESS_REFUSED), as opposed to a dead
/// connection.
fn is_soft(e: &lapin::Error) -> bool {
    matches!(e, lapin::Error::ProtocolError(amqp) if matches!(amqp.kind(), AMQPErrorKind::Soft(_)))
}

/// The password of a URL, raw and percent-decoded, to scrub from error texts
/// that might echo it.
#[derive(Clone, Default)]
struct Secrets(Vec<String>);

impl Secrets {
    fn from_url(url: &str) -> Self {
        let Some((_, password)) = split_password(url) else {
            return Secrets::default();
        };
        let mut secrets = vec![password.to_owned()];
        let decoded = percent_decode(password);
        if decoded != password {
            secrets.push(decoded);
        }
        secrets.retain(|s| !s.is_empty());
        Secrets(secrets)
    }

    fn scrub(&self, e: &dyn fmt::Display) -> String {
        let mut text = e.to_string();
        for secret in &self.0 {
            text = text.replace(secret.as_str(), "***");
        }
        text
    }
}

/// `url` with the password of its user info replaced by `***`.
///
/// ```
/// # use eventbus::transport::rabbitmq::redact_url;
/// assert_eq!(
///     redact_url("amqp://app:s3cret@rabbit:5672/%2f"),
///     "amqp://app:***@rabbit:5672/%2f"
/// );
/// ```
pub fn redact_url(url: &str) -> String {
    match split_password(url) {
        Some((start, password)) => {
            let end = start + password.len();
            format!("{}***{}", &url[..start], &url[end..])
        }
        None => url.to_owned(),
    }
}

/// The byte offset and text of the password in `scheme://user:password@host…`.
fn split_password(url: &str) -> Option<(usize, &str)> {
    let authority_start = url.find("://").map_or(0, |i| i + 3);
    let rest = &url[authority_start..];
    let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_len];
    let at = authority.rfind('@')?;
    let colon = authority[..at].find(':')?;
    let start = authority_start + colon + 1;
    Some((start, &url[start..authority_start + at]))
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
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
        e.traceparent = Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());
        e.tracestate = Some("congo=t61rcWkgMzE".into());
        e.correlation_id = Some("c-1".into());
        e.extensions.insert("tenant".into(), "acme".into());
        e
    }

    fn header<'a>(p: &'a BasicProperties, name: &str) -> Option<&'a AMQPValue> {
        p.headers().as_ref()?.inner().get(name)
    }

    #[test]
    fn redacts_the_password_only() {
        let cases = [
            (
                "amqp://guest:guest@127.0.0.1:5672/%2f",
                "amqp://guest:***@127.0.0.1:5672/%2f",
            ),
            (
                "amqps://u:p%40ss@host/vh?heartbeat=10",
                "amqps://u:***@host/vh?heartbeat=10",
            ),
            ("amqp://user@host/", "amqp://user@host/"),
            ("amqp://host:5672/%2f", "amqp://host:5672/%2f"),
            ("amqp://a:b:c@host", "amqp://a:***@host"),
            ("not a url", "not a url"),
        ];
        for (url, expected) in cases {
            assert_eq!(redact_url(url), expected, "for {url}");
        }
    }

    #[test]
    fn scrubs_raw_and_decoded_passwords() {
        let secrets = Secrets::from_url("amqp://u:p%40ss@host/");
        assert_eq!(secrets.scrub(&"p%40ss and p@ss"), "*** and ***");
    }

    #[test]
    fn properties_follow_the_cloudevents_amqp_binding() {
        let e = sample();
        let p = message_properties(&e, Some("orders"));
        assert_eq!(p.delivery_mode(), &Some(2));
        assert_eq!(
            p.message_id().as_ref().map(ShortString::as_str),
            Some(e.id.as_str())
        );
        assert_eq!(
            p.content_type().as_ref().map(ShortString::as_str),
            Some("application/json")
        );
        assert_eq!(p.app_id().as_ref().map(ShortString::as_str), Some("orders"));
        assert_eq!(
            p.kind().as_ref().map(ShortString::as_str),
            Some("com.example.order.placed")
        );
        let time = e.time.map(|t| t.timestamp() as u64);
        assert_eq!(p.timestamp(), &time);
        for (name, value) in [
            ("ce-specversion", "1.0"),
            ("ce-type", "com.example.order.placed"),
            ("ce-partitionkey", "o-1"),
            ("ce-tenant", "acme"),
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            ("tracestate", "congo=t61rcWkgMzE"),
        ] {
            assert_eq!(
                header(&p, name),
                Some(&AMQPValue::LongString(value.into())),
                "header {name}"
            );
        }
        assert!(header(&p, "ce-datacontenttype").is_none());
    }

    #[test]
    fn delivery_round_trips_to_the_same_envelope() {
        let e = sample();
        let p = message_properties(&e, None);
        assert_eq!(envelope_from_delivery(&p, &e.data).expect("valid"), e);
    }

    #[test]
    fn plain_trace_headers_are_a_fallback() {
        let mut e = sample();
        let p = message_properties(&e, None);
        let mut headers = FieldTable::default();
        for (k, v) in p.headers().as_ref().expect("headers").inner() {
            if k.as_str() != "ce-traceparent" && k.as_str() != "ce-tracestate" {
                headers.insert(k.clone(), v.clone());
            }
        }
        let p = p.with_headers(headers);
        assert_eq!(envelope_from_delivery(&p, &e.data).expect("valid"), e);
        e.traceparent = None;
        e.tracestate = None;
        let p = message_properties(&e, None);
        assert_eq!(envelope_from_delivery(&p, &e.data).expect("valid"), e);
    }

    #[test]
    fn decoding_names_missing_or_non_string_attributes() {
        let p = BasicProperties::default();
        let err = envelope_from_delivery(&p, b"{}").expect_err("no headers");
        assert!(
            err.to_string().contains("`specversion` is required"),
            "{err}"
        );

        let e = sample();
        let p = message_properties(&e, None);
        let mut headers = p.headers().clone().unwrap_or_default();
        headers.insert(
            "ce-subject".into(),
            AMQPValue::FieldTable(FieldTable::default()),
        );
        let err = envelope_from_delivery(&p.with_headers(headers), &e.data).expect_err("table");
        assert!(err.to_string().contains("`subject` is invalid"), "{err}");
    }

    #[test]
    fn other_producers_short_strings_and_numbers_are_read() {
        let mut headers = FieldTable::default();
        headers.insert(
            "ce-specversion".into(),
            AMQPValue::ShortString("1.0".into()),
        );
        headers.insert("CE-ID".into(), AMQPValue::LongString("42".into()));
        headers.insert("ce-source".into(), AMQPValue::LongString("/x".into()));
        headers.insert("ce-type".into(), AMQPValue::LongString("t".into()));
        headers.insert("ce-sequence".into(), AMQPValue::LongLongInt(7));
        let p = BasicProperties::default()
            .with_headers(headers)
            .with_content_type("text/plain".into());
        let e = envelope_from_delivery(&p, b"hi").expect("valid");
        assert_eq!(e.id, "42");
        assert_eq!(e.extensions["sequence"], "7");
        assert_eq!(e.datacontenttype.as_deref(), Some("text/plain"));
        assert_eq!(e.data, b"hi");
    }

    #[test]
    fn soft_errors_are_channel_refusals() {
        use lapin::protocol::{AMQPError, AMQPHardError, AMQPSoftError};
        let soft = lapin::Error::ProtocolError(AMQPError::new(
            AMQPSoftError::NOTFOUND.into(),
            "NOT_FOUND - no exchange 'x'".into(),
        ));
        let hard = lapin::Error::ProtocolError(AMQPError::new(
            AMQPHardError::CONNECTIONFORCED.into(),
            "CONNECTION_FORCED".into(),
        ));
        assert!(is_soft(&soft));
        assert!(!is_soft(&hard));
        assert!(!is_soft(&lapin::Error::InvalidChannelState(
            lapin::ChannelState::Closed
        )));
    }
}
