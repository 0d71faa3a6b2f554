//! The wire format: an [`Envelope`] as Kafka headers, key and value in the
//! CloudEvents Kafka protocol binding (we write binary mode and read both
//! modes), and back.

use rdkafka::message::{Header, Headers, Message, OwnedHeaders};

use super::{CONTENT_TYPE_HEADER, HEADER_PREFIX};
use crate::envelope::{ContentMode, Envelope, EnvelopeError, JSON_CONTENT_TYPE};

/// Decodes a Kafka message written in the CloudEvents Kafka protocol binding,
/// in either content mode: binary (`ce_*` headers, `content-type`, the value
/// as data) or structured (a `content-type` of `application/cloudevents+json`
/// and the whole event, `data` included, as the value; `ce_*` headers are then
/// ignored, as the binding says).
///
/// When the event has no `partitionkey`, a UTF-8 message key becomes the
/// envelope's `partition_key`, as the binding maps the two. When it has no
/// `traceparent`/`tracestate`, plain `traceparent` and `tracestate` headers
/// (what OpenTelemetry instrumentations write) are used instead.
///
/// # Errors
///
/// [`EnvelopeError`] naming a missing or invalid attribute, including header
/// values that are not UTF-8; for a structured message, also a value that is
/// not a JSON CloudEvent or an event format other than JSON.
///
/// # Examples
///
/// ```
/// use eventbus::transport::kafka::{envelope_from_message, rdkafka};
/// use rdkafka::message::{Header, OwnedHeaders, OwnedMessage, Timestamp};
///
/// let headers = OwnedHeaders::new()
///     .insert(Header { key: "ce_specversion", value: Some("1.0") })
///     .insert(Header { key: "ce_id", value: Some("e-1") })
///     .insert(Header { key: "ce_source", value: Some("urn:svc:orders") })
///     .insert(Header { key: "ce_type", value: Some("com.example.order.placed") })
///     .insert(Header { key: "content-type", value: Some("application/json") });
/// let message = OwnedMessage::new(
///     Some(b"{}".to_vec()), Some(b"order-1".to_vec()), "orders".into(),
///     Timestamp::NotAvailable, 0, 0, Some(headers),
/// );
/// let envelope = envelope_from_message(&message)?;
/// assert_eq!(envelope.id, "e-1");
/// assert_eq!(envelope.partition_key.as_deref(), Some("order-1"));
/// # Ok::<(), eventbus::EnvelopeError>(())
/// ```
pub fn envelope_from_message<M: Message>(
    message: &M,
) -> std::result::Result<Envelope, EnvelopeError> {
    let mut content_type = None;
    let mut attributes: Vec<(&str, &[u8])> = Vec::new();
    let mut plain_traceparent = None;
    let mut plain_tracestate = None;
    if let Some(headers) = message.headers() {
        for header in headers.iter() {
            let Some(value) = header.value else {
                continue;
            };
            if header.key.eq_ignore_ascii_case("traceparent") {
                plain_traceparent = std::str::from_utf8(value).ok();
            } else if header.key.eq_ignore_ascii_case("tracestate") {
                plain_tracestate = std::str::from_utf8(value).ok();
            } else if header.key.eq_ignore_ascii_case(CONTENT_TYPE_HEADER) {
                let text =
                    std::str::from_utf8(value).map_err(|_| EnvelopeError::InvalidAttribute {
                        name: "datacontenttype".into(),
                        reason: "the `content-type` header is not UTF-8".into(),
                    })?;
                content_type = Some(text);
            } else {
                attributes.push((header.key, value));
            }
        }
    }
    let value = message.payload().unwrap_or_default();
    let mut envelope = match (ContentMode::of(content_type), content_type) {
        (ContentMode::Structured, Some(format)) => Envelope::from_structured(format, value)?,
        _ => Envelope::from_binary(HEADER_PREFIX, attributes, content_type, value.to_vec())?,
    };
    // Producers instrumented by OpenTelemetry (in any language) set only the
    // plain headers: continue their trace.
    if envelope.traceparent.is_none() {
        envelope.traceparent = plain_traceparent.map(str::to_owned);
        if envelope.tracestate.is_none() {
            envelope.tracestate = plain_tracestate.map(str::to_owned);
        }
    }
    if envelope.partition_key.is_none() {
        if let Some(Ok(key)) = message.key().map(std::str::from_utf8) {
            if !key.is_empty() {
                envelope.partition_key = Some(key.to_owned());
            }
        }
    }
    Ok(envelope)
}

/// The Kafka headers of `envelope` in the CloudEvents binary mode.
pub(super) fn kafka_headers(envelope: &Envelope) -> OwnedHeaders {
    let attributes = envelope.binary_headers(HEADER_PREFIX);
    let mut headers = OwnedHeaders::new_with_capacity(attributes.len() + 3);
    for (name, value) in &attributes {
        headers = headers.insert(Header {
            key: name,
            value: Some(value.as_str()),
        });
    }
    let content_type = envelope
        .datacontenttype
        .as_deref()
        .unwrap_or(JSON_CONTENT_TYPE);
    headers = headers.insert(Header {
        key: CONTENT_TYPE_HEADER,
        value: Some(content_type),
    });
    // What OpenTelemetry messaging instrumentations in other languages read.
    for (name, value) in [
        ("traceparent", &envelope.traceparent),
        ("tracestate", &envelope.tracestate),
    ] {
        if let Some(value) = value {
            headers = headers.insert(Header {
                key: name,
                value: Some(value.as_str()),
            });
        }
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::envelope::sample;

    #[test]
    fn headers_follow_the_kafka_binding_and_decode_back() {
        let envelope = sample();
        let headers = kafka_headers(&envelope);
        let names: Vec<&str> = headers.iter().map(|h| h.key).collect();
        for expected in [
            "ce_specversion",
            "ce_id",
            "ce_source",
            "ce_type",
            "ce_time",
            "ce_partitionkey",
            "ce_traceparent",
            "ce_tenant",
            "content-type",
            "traceparent",
            "tracestate",
        ] {
            assert!(
                names.contains(&expected),
                "missing header {expected}: {names:?}"
            );
        }
        assert!(!names.contains(&"ce_datacontenttype"));
        let message = rdkafka::message::OwnedMessage::new(
            Some(envelope.data.clone()),
            Some(b"o-1".to_vec()),
            "orders".into(),
            rdkafka::message::Timestamp::NotAvailable,
            0,
            0,
            Some(headers),
        );
        let back = envelope_from_message(&message).expect("decodes");
        assert_eq!(back, envelope);
    }

    #[test]
    fn a_plain_traceparent_header_is_continued() {
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "ce_specversion",
                value: Some("1.0"),
            })
            .insert(Header {
                key: "ce_id",
                value: Some("e-1"),
            })
            .insert(Header {
                key: "ce_source",
                value: Some("urn:other"),
            })
            .insert(Header {
                key: "ce_type",
                value: Some("t"),
            })
            .insert(Header {
                key: "traceparent",
                value: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            })
            .insert(Header {
                key: "tracestate",
                value: Some("k=v"),
            });
        let message = rdkafka::message::OwnedMessage::new(
            Some(b"{}".to_vec()),
            None,
            "t".into(),
            rdkafka::message::Timestamp::NotAvailable,
            0,
            0,
            Some(headers),
        );
        let e = envelope_from_message(&message).expect("decodes");
        assert_eq!(
            e.traceparent.as_deref(),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        );
        assert_eq!(e.tracestate.as_deref(), Some("k=v"));
    }

    fn structured(
        value: &[u8],
        content_type: &str,
        key: Option<&[u8]>,
    ) -> rdkafka::message::OwnedMessage {
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "content-type",
                value: Some(content_type),
            })
            // Ignored in structured mode: the value is authoritative.
            .insert(Header {
                key: "ce_id",
                value: Some("from-a-header"),
            });
        rdkafka::message::OwnedMessage::new(
            Some(value.to_vec()),
            key.map(<[u8]>::to_vec),
            "orders".into(),
            rdkafka::message::Timestamp::NotAvailable,
            0,
            0,
            Some(headers),
        )
    }

    #[test]
    fn structured_mode_is_read_from_the_value() {
        let mut envelope = sample();
        let message = structured(
            &envelope.to_json(),
            "application/cloudevents+json; charset=UTF-8",
            Some(b"other-key"),
        );
        assert_eq!(envelope_from_message(&message).expect("decodes"), envelope);
        envelope.partition_key = None;
        let message = structured(
            &envelope.to_json(),
            "application/cloudevents+json",
            Some(b"k-9"),
        );
        let back = envelope_from_message(&message).expect("decodes");
        assert_eq!(
            back.partition_key.as_deref(),
            Some("k-9"),
            "the key maps to partitionkey"
        );
    }

    #[test]
    fn malformed_structured_messages_name_the_problem() {
        for (value, content_type, expected) in [
            (
                &b"{\"specversion\":"[..],
                "application/cloudevents+json",
                "not valid JSON",
            ),
            (
                br#"{"specversion":"1.0","id":"1","type":"t"}"#,
                "application/cloudevents+json",
                "`source` is required",
            ),
            (
                br#"[{"specversion":"1.0"}]"#,
                "application/cloudevents-batch+json",
                "event format `application/cloudevents-batch+json`",
            ),
        ] {
            let err = envelope_from_message(&structured(value, content_type, None))
                .expect_err("malformed");
            assert!(err.to_string().contains(expected), "{err}");
        }
    }
}
