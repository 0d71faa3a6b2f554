//! The wire format: an [`Envelope`] as AMQP properties, headers and body in
//! the CloudEvents AMQP binding (we write binary mode and read both modes),
//! and back.

use chrono::{DateTime, SecondsFormat};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::BasicProperties;

use super::{HEADER_PREFIX, PERSISTENT};
use crate::envelope::{ContentMode, Envelope, EnvelopeError, JSON_CONTENT_TYPE};

/// The AMQP properties of `envelope` in the CloudEvents binary binding: the
/// `ce-` headers, `traceparent`/`tracestate`, `content_type`, `message_id`,
/// `timestamp`, `type`, persistent `delivery_mode` and, when given, `app_id`.
///
/// Useful to consumers that republish an event, e.g. to a dead-letter exchange.
/// AMQP short strings hold at most 255 bytes: the publisher refuses an event
/// whose type, id, `datacontenttype` or attribute names (with their `ce-`
/// prefix) are longer before it gets here; called directly, such values are
/// cut to 255 bytes (at a character boundary).
pub fn message_properties(envelope: &Envelope, app_id: Option<&str>) -> BasicProperties {
    let mut headers = FieldTable::default();
    for (name, value) in envelope.binary_headers(HEADER_PREFIX) {
        headers.insert(short(&name), AMQPValue::LongString(value.into()));
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
        .with_content_type(short(content_type))
        .with_delivery_mode(PERSISTENT)
        .with_message_id(short(&envelope.id))
        .with_type(short(&envelope.event_type))
        .with_headers(headers);
    if let Some(seconds) = envelope
        .time
        .and_then(|t| u64::try_from(t.timestamp()).ok())
    {
        properties = properties.with_timestamp(seconds);
    }
    if let Some(app_id) = app_id {
        properties = properties.with_app_id(short(app_id));
    }
    properties
}

/// `value` as an AMQP short string: at most 255 bytes, cut at a character
/// boundary (lapin panics on longer ones).
fn short(value: &str) -> ShortString {
    let mut end = value.len().min(255);
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    value[..end].into()
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

/// The attribute header prefixes the CloudEvents AMQP binding gives (the
/// second for AMQP clients that cannot use `:` in names); we read both beside
/// our own [`HEADER_PREFIX`], which the CloudEvents SDKs' RabbitMQ bindings use.
pub const AMQP_BINDING_PREFIXES: [&str; 2] = ["cloudEvents_", "cloudEvents:"];

/// The CloudEvents attribute a header carries, if any: its name after one of
/// the prefixes we read (case-insensitive), as written.
pub(super) fn attribute_of(header: &str) -> Option<&str> {
    [HEADER_PREFIX]
        .into_iter()
        .chain(AMQP_BINDING_PREFIXES)
        .find_map(|prefix| {
            let head = header.get(..prefix.len())?;
            head.eq_ignore_ascii_case(prefix)
                .then(|| &header[prefix.len()..])
        })
}

/// Decodes a message in the CloudEvents AMQP binding (as sent by
/// [`RabbitPublisher`](crate::transport::rabbitmq::RabbitPublisher) or any
/// other CloudEvents SDK) into an [`Envelope`], in either content mode.
///
/// - Structured: a `content_type` of `application/cloudevents+json` and the
///   whole event, `data` included, as the body; attribute headers are ignored.
/// - Binary: the attributes in headers named with the prefix `ce-` (what we
///   and the CloudEvents SDKs' RabbitMQ bindings write), `cloudEvents_` or
///   `cloudEvents:` (the AMQP binding's), names case-insensitive; the content
///   type from the `content_type` property; the body as data. A `time` header
///   may also be an AMQP timestamp (seconds) or an integer (milliseconds since
///   the epoch, as the AMQP binding encodes timestamps).
///
/// In both modes, when the event has no `traceparent`/`tracestate`, plain
/// `traceparent`/`tracestate` headers are used instead.
///
/// ```
/// use eventbus::transport::rabbitmq::{envelope_from_delivery, message_properties};
/// use eventbus::Envelope;
///
/// let envelope = Envelope::new("urn:svc:orders", "com.example.order.placed", b"{}".to_vec());
/// let properties = message_properties(&envelope, None);
/// let back = envelope_from_delivery(&properties, &envelope.data).unwrap();
/// assert_eq!(back, envelope);
///
/// // The same event in structured mode.
/// let properties = eventbus::transport::rabbitmq::lapin::BasicProperties::default()
///     .with_content_type("application/cloudevents+json".into());
/// assert_eq!(envelope_from_delivery(&properties, &envelope.to_json()).unwrap(), envelope);
/// ```
///
/// # Errors
///
/// [`EnvelopeError`] when a required attribute is missing or invalid, or an
/// attribute header is not a string (nor, for `time`, a timestamp); for a
/// structured message, also a body that is not a JSON CloudEvent or an event
/// format other than JSON.
pub fn envelope_from_delivery(
    properties: &BasicProperties,
    body: &[u8],
) -> Result<Envelope, EnvelopeError> {
    let content_type = properties.content_type().as_ref().map(ShortString::as_str);
    let mut headers: Vec<(String, Vec<u8>)> = Vec::new();
    let mut plain_traceparent = None;
    let mut plain_tracestate = None;
    let structured = ContentMode::of(content_type) == ContentMode::Structured;
    if let Some(table) = properties.headers() {
        for (name, value) in table {
            let name = name.as_str();
            if let Some(attribute) = attribute_of(name) {
                if structured {
                    continue;
                }
                let attribute = attribute.to_ascii_lowercase();
                let text = attribute_text(&attribute, value).ok_or_else(|| {
                    EnvelopeError::InvalidAttribute {
                        name: attribute.clone(),
                        reason: "AMQP header value must be a string".into(),
                    }
                })?;
                // One prefix for all, whichever each header was written with.
                headers.push((format!("{HEADER_PREFIX}{attribute}"), text));
            } else if name.eq_ignore_ascii_case("traceparent") {
                plain_traceparent = header_text(value);
            } else if name.eq_ignore_ascii_case("tracestate") {
                plain_tracestate = header_text(value);
            }
        }
    }
    let mut envelope = match content_type {
        Some(format) if structured => Envelope::from_structured(format, body)?,
        _ => Envelope::from_binary(
            HEADER_PREFIX,
            headers.iter().map(|(k, v)| (k.as_str(), v.as_slice())),
            content_type,
            body.to_vec(),
        )?,
    };
    if envelope.traceparent.is_none() {
        envelope.traceparent = plain_traceparent.and_then(|v| String::from_utf8(v).ok());
        if envelope.tracestate.is_none() {
            envelope.tracestate = plain_tracestate.and_then(|v| String::from_utf8(v).ok());
        }
    }
    Ok(envelope)
}

/// The text of attribute header `attribute`: as [`header_text`], except that
/// a `time` given as an AMQP timestamp (seconds) or an integer (milliseconds,
/// the AMQP binding's timestamp) becomes its RFC 3339 form.
fn attribute_text(attribute: &str, value: &AMQPValue) -> Option<Vec<u8>> {
    if attribute != "time" {
        return header_text(value);
    }
    let time = match value {
        AMQPValue::Timestamp(seconds) => {
            DateTime::from_timestamp(i64::try_from(*seconds).ok()?, 0)?
        }
        AMQPValue::LongLongInt(ms) => DateTime::from_timestamp_millis(*ms)?,
        AMQPValue::LongInt(ms) => DateTime::from_timestamp_millis(i64::from(*ms))?,
        AMQPValue::LongUInt(ms) => DateTime::from_timestamp_millis(i64::from(*ms))?,
        other => return header_text(other),
    };
    Some(
        time.to_rfc3339_opts(SecondsFormat::AutoSi, true)
            .into_bytes(),
    )
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

    #[test]
    fn over_long_short_strings_are_cut_not_a_panic() {
        let mut e = Envelope::new("urn:s", "t".repeat(300), b"{}".to_vec());
        e.id = "é".repeat(200);
        let p = message_properties(&e, Some(&"a".repeat(256)));
        assert_eq!(p.kind().as_ref().map(|t| t.as_str().len()), Some(255));
        // 127 two-byte characters: the 128th would pass 255 bytes.
        assert_eq!(p.message_id().as_ref().map(|t| t.as_str().len()), Some(254));
        assert_eq!(p.app_id().as_ref().map(|t| t.as_str().len()), Some(255));
    }

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

    #[test]
    fn the_amqp_bindings_prefixes_and_timestamps_are_read() {
        let e = sample();
        for prefix in AMQP_BINDING_PREFIXES {
            let mut headers = FieldTable::default();
            for (name, value) in e.attributes() {
                if name != "datacontenttype" && name != "time" {
                    headers.insert(
                        format!("{prefix}{name}").into(),
                        AMQPValue::LongString(value.into()),
                    );
                }
            }
            let ms = e.time.expect("time").timestamp_millis();
            headers.insert(format!("{prefix}time").into(), AMQPValue::LongLongInt(ms));
            let p = BasicProperties::default()
                .with_content_type("application/json".into())
                .with_headers(headers.clone());
            let back = envelope_from_delivery(&p, &e.data).expect("valid");
            let mut expected = e.clone();
            expected.time = chrono::DateTime::from_timestamp_millis(ms);
            assert_eq!(back, expected, "prefix {prefix}");

            headers.insert(
                format!("{prefix}time").into(),
                AMQPValue::Timestamp(u64::try_from(ms / 1000).expect("after 1970")),
            );
            let p = p.with_headers(headers);
            let back = envelope_from_delivery(&p, &e.data).expect("valid");
            assert_eq!(back.time, chrono::DateTime::from_timestamp(ms / 1000, 0));
        }
    }

    #[test]
    fn structured_mode_is_read_from_the_body() {
        let e = sample();
        // Attribute headers beside a structured body are ignored.
        let mut headers = FieldTable::default();
        headers.insert("ce-id".into(), AMQPValue::LongString("other".into()));
        let p = BasicProperties::default()
            .with_content_type("application/cloudevents+json; charset=utf-8".into())
            .with_headers(headers);
        assert_eq!(envelope_from_delivery(&p, &e.to_json()).expect("valid"), e);
        for (body, expected) in [
            (&b"{\"specversion\":"[..], "not valid JSON"),
            (
                br#"{"specversion":"1.0","id":"1","source":"s"}"#,
                "`type` is required",
            ),
        ] {
            let err = envelope_from_delivery(&p, body).expect_err("malformed");
            assert!(err.to_string().contains(expected), "{err}");
        }
    }
}
