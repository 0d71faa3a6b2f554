//! Kafka transport (rdkafka): [`KafkaPublisher`] sends envelopes in the
//! CloudEvents Kafka protocol binding (binary mode) and sorts broker failures
//! into "broker unavailable" and "message rejected"; [`KafkaSubscriber`] reads
//! them back as a member of a consumer group; [`envelope_from_message`] decodes
//! one message.
//!
//! | module | owns |
//! | --- | --- |
//! | this one | the wire format, settings and the redaction of secrets in them |
//! | `publisher` | [`KafkaPublisher`]: idempotent producer, pipelined batches, failure classification, topic creation |
//! | `subscriber` | [`KafkaSubscriber`]: consumer groups, lanes per partition, offsets of acknowledged messages only, rebalances |
//!
//! # Wire format
//!
//! The CloudEvents Kafka protocol binding, binary mode:
//!
//! | Kafka | value |
//! | --- | --- |
//! | topic | the destination |
//! | key | the `partitionkey` extension (the ordering key) |
//! | value | the payload bytes |
//! | header `ce_<attr>` | every attribute except `datacontenttype` |
//! | header `content-type` | `datacontenttype` (`application/json` when unset) |
//! | headers `traceparent`, `tracestate` | the W3C trace context, when set |
//!
//! # Consumer groups
//!
//! Subscribers sharing a group id split the partitions of their topics between
//! them (point-to-point); every group gets every message (publish-subscribe).
//! Each partition is handled in offset order. See [`KafkaSubscriber`].

use std::collections::BTreeMap;
use std::fmt;

use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};

use crate::envelope::{Envelope, EnvelopeError, JSON_CONTENT_TYPE};
use crate::error::Error;

mod publisher;
mod subscriber;

pub use publisher::{KafkaPublisher, KafkaPublisherBuilder};
pub use subscriber::{KafkaSubscriber, KafkaSubscriberBuilder, DEFAULT_MAX_IN_FLIGHT};

/// The rdkafka crate this transport is built on, re-exported so consumers and
/// tests name the same version as [`envelope_from_message`] expects.
pub use rdkafka;

/// Prefix of the CloudEvents attribute headers in the Kafka binding.
pub const HEADER_PREFIX: &str = "ce_";

/// The Kafka binding's header for `datacontenttype`.
pub const CONTENT_TYPE_HEADER: &str = "content-type";

/// Decodes a Kafka message written in the CloudEvents Kafka protocol binding,
/// binary mode (`ce_*` headers, `content-type`, payload as data).
///
/// When the message carries no `ce_partitionkey` header, a UTF-8 message key
/// becomes the envelope's `partition_key`, as the binding maps the two. When
/// it carries no `ce_traceparent`/`ce_tracestate`, plain `traceparent` and
/// `tracestate` headers (what OpenTelemetry instrumentations write) are used
/// instead.
///
/// # Errors
///
/// [`EnvelopeError`] naming a missing or invalid attribute, including header
/// values that are not UTF-8.
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
    let data = message.payload().unwrap_or_default().to_vec();
    let mut envelope = Envelope::from_binary(HEADER_PREFIX, attributes, content_type, data)?;
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
fn kafka_headers(envelope: &Envelope) -> OwnedHeaders {
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

/// librdkafka properties, with secrets kept out of `Debug` output and messages.
#[derive(Clone, Default)]
struct Settings(BTreeMap<String, String>);

impl Settings {
    fn insert(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), value);
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    fn contains(&self, key: &str) -> bool {
        self.0.contains_key(key)
    }

    /// `text` with the values of secret settings blanked out.
    fn scrub(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for (key, value) in &self.0 {
            if is_secret(key) && !value.is_empty() {
                out = out.replace(value.as_str(), "<redacted>");
            }
        }
        out
    }

    /// Checks what every client needs: bootstrap servers and named properties.
    fn check_common(&self) -> crate::Result<()> {
        if self
            .get("bootstrap.servers")
            .is_none_or(|s| s.trim().is_empty())
        {
            return Err(Error::config("Kafka bootstrap servers must not be empty"));
        }
        if self.0.keys().any(String::is_empty) {
            return Err(Error::config("Kafka property names must not be empty"));
        }
        Ok(())
    }

    /// The settings as an rdkafka client configuration.
    fn client_config(&self) -> rdkafka::ClientConfig {
        let mut config = rdkafka::ClientConfig::new();
        for (key, value) in &self.0 {
            config.set(key, value);
        }
        config
    }
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, v)| {
                let shown = if is_secret(k) {
                    "<redacted>"
                } else {
                    v.as_str()
                };
                (k, shown)
            }))
            .finish()
    }
}

/// Whether a librdkafka property holds a secret (SASL password, JAAS config,
/// OAuth client secret, key store password, private key).
fn is_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    [
        "password",
        "secret",
        "sasl.jaas",
        "sasl.oauthbearer.config",
        "ssl.key.pem",
    ]
    .iter()
    .any(|word| key.contains(word))
}

/// The property an alias stands for, so a user's alias replaces our default
/// instead of racing it (librdkafka applies properties in map order).
fn canonical_key(key: &str) -> &str {
    match key {
        "compression.type" => "compression.codec",
        "delivery.timeout.ms" => "message.timeout.ms",
        "request.required.acks" => "acks",
        "metadata.broker.list" => "bootstrap.servers",
        other => other,
    }
}

/// A configuration error for a client (`what`: "producer", "consumer") that
/// rdkafka refused to create, with secret values blanked out.
fn config_error(settings: &Settings, error: &KafkaError, what: &str) -> Error {
    match error {
        KafkaError::ClientConfig(_, description, key, _value) => Error::config(format!(
            "Kafka property `{key}`: {}",
            settings.scrub(description)
        )),
        other => Error::config(format!(
            "cannot create Kafka {what}: {}",
            settings.scrub(&other.to_string())
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Envelope {
        let mut e = Envelope::new(
            "urn:svc:orders",
            "com.example.order.placed",
            br#"{"a":1}"#.to_vec(),
        );
        e.partition_key = Some("o-1".into());
        e.traceparent = Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());
        e.tracestate = Some("congo=t61rcWkgMzE".into());
        e.correlation_id = Some("c-1".into());
        e.extensions.insert("tenant".into(), "acme".into());
        e
    }

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

    #[test]
    fn secrets_are_scrubbed_from_text_and_debug() {
        let mut settings = Settings::default();
        settings.insert("sasl.password", "hunter2".into());
        settings.insert("linger.ms", "5".into());
        assert_eq!(
            settings.scrub("login with hunter2 failed"),
            "login with <redacted> failed"
        );
        let shown = format!("{settings:?}");
        assert!(
            !shown.contains("hunter2") && shown.contains("linger.ms"),
            "{shown}"
        );
    }
}
