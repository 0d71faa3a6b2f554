//! The wire format: an [`Envelope`] as an SQS message (the CloudEvents JSON
//! event format as body, attribute copies as message attributes), queue
//! names of destinations, FIFO group and deduplication ids, SQS's size and
//! character rules, and decoding a received message.

use std::collections::{BTreeMap, HashMap};

use aws_sdk_sqs::types::{Message, MessageAttributeValue, MessageSystemAttributeName};

use super::{
    CONTENT_TYPE_ATTRIBUTE, HEADER_PREFIX, MAX_MESSAGE_ATTRIBUTES, STRUCTURED_CONTENT_TYPE,
};
use crate::envelope::{Envelope, EnvelopeError};
use crate::hash::fnv1a;

/// The attributes copied into message attributes, in this order.
pub(super) const COPIED_ATTRIBUTES: [&str; 7] = [
    "specversion",
    "id",
    "source",
    "type",
    "subject",
    "partitionkey",
    "dataschema",
];

/// The longest message group and deduplication id SQS takes.
pub(super) const MAX_ID_LEN: usize = 128;

/// The longest queue name SQS takes, `.fifo` included.
pub(super) const MAX_QUEUE_NAME_LEN: usize = 80;

/// The suffix SQS requires of FIFO queue names.
pub(super) const FIFO_SUFFIX: &str = ".fifo";

/// The `MessageAttributeValue` data type of text attributes.
pub(super) const STRING_TYPE: &str = "String";

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
pub(super) fn is_fifo_queue(queue: &str) -> bool {
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
    match envelope.extensions.get(crate::dead_letter::REDRIVEN_AT) {
        Some(at) => sqs_id(&format!("{}@{at}", envelope.id)),
        None => sqs_id(&envelope.id),
    }
}

/// `text` if SQS takes it as a group or deduplication id, else a hash of it.
pub(super) fn sqs_id(text: &str) -> String {
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
/// context (see the [module docs](crate::transport::sqs)); at most [`MAX_MESSAGE_ATTRIBUTES`],
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
pub(super) fn sdk_attributes(pairs: &[(String, String)]) -> HashMap<String, MessageAttributeValue> {
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
pub(super) fn message_size(body: &str, attributes: &[(String, String)]) -> usize {
    body.len()
        + attributes
            .iter()
            .map(|(n, v)| n.len() + STRING_TYPE.len() + v.len())
            .sum::<usize>()
}

/// The first character SQS does not accept in a message, if any: it takes
/// tab, line feed, carriage return and the Unicode ranges `#x20`–`#xD7FF`,
/// `#xE000`–`#xFFFD` and `#x10000`–`#x10FFFF`.
pub(super) fn invalid_char(text: &str) -> Option<char> {
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
/// format in the body (as [`SqsPublisher`](crate::transport::sqs::SqsPublisher) sends it, and any CloudEvents SDK
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
pub(super) fn received_key(message: &Message) -> Option<String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    use crate::envelope::sample;

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
            crate::dead_letter::REDRIVEN_AT.into(),
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
}
