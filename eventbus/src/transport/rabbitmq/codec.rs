//! The wire format: an [`Envelope`] as AMQP properties, headers and body in
//! the CloudEvents AMQP binding (binary mode), and back.

use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::BasicProperties;

use super::{HEADER_PREFIX, PERSISTENT};
use crate::envelope::{Envelope, EnvelopeError, JSON_CONTENT_TYPE};

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
pub(super) fn with_sent_at(properties: BasicProperties) -> BasicProperties {
    let mut headers = properties.headers().clone().unwrap_or_default();
    headers.insert(
        SENT_AT_HEADER.into(),
        AMQPValue::LongLongInt(chrono::Utc::now().timestamp_millis()),
    );
    properties.with_headers(headers)
}

/// When the broker took a delivery, per its [`SENT_AT_HEADER`].
pub(super) fn sent_at(properties: &BasicProperties) -> Option<chrono::DateTime<chrono::Utc>> {
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
/// [`RabbitPublisher`](crate::transport::rabbitmq::RabbitPublisher) or any other CloudEvents SDK) into an [`Envelope`].
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
pub(super) fn header_text(value: &AMQPValue) -> Option<Vec<u8>> {
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

#[cfg(test)]
mod tests {
    use super::*;

    use crate::envelope::sample;

    fn header<'a>(p: &'a BasicProperties, name: &str) -> Option<&'a AMQPValue> {
        p.headers().as_ref()?.inner().get(name)
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
}
