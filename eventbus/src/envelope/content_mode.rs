//! The two CloudEvents content modes of the Kafka and AMQP bindings, told
//! apart by the message's content type: an event format's media type
//! (`application/cloudevents+json`) means the body holds the whole event
//! (structured mode); anything else means the body holds only the data and
//! the attributes travel as headers (binary mode).

use super::{Envelope, EnvelopeError};

/// The media type of the CloudEvents JSON event format: the content type of
/// a structured-mode message.
pub const STRUCTURED_JSON_CONTENT_TYPE: &str = "application/cloudevents+json";

/// The media type prefix every CloudEvents event format shares.
const EVENT_FORMAT_PREFIX: &str = "application/cloudevents";

/// How a message carries its event.
///
/// ```
/// use eventbus::envelope::ContentMode;
///
/// assert_eq!(ContentMode::of(Some("application/cloudevents+json; charset=utf-8")), ContentMode::Structured);
/// assert_eq!(ContentMode::of(Some("application/json")), ContentMode::Binary);
/// assert_eq!(ContentMode::of(None), ContentMode::Binary);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ContentMode {
    /// The body is the data; the attributes are headers or properties.
    Binary,
    /// The body is the whole event in an event format.
    Structured,
}

impl ContentMode {
    /// The mode of a message whose content type is `content_type`: structured
    /// when it is a CloudEvents event format (`application/cloudevents…`,
    /// case-insensitive, parameters ignored), as the Kafka and AMQP bindings
    /// tell receivers to decide.
    pub fn of(content_type: Option<&str>) -> Self {
        let is_format = content_type.is_some_and(|ct| {
            media_type(ct)
                .get(..EVENT_FORMAT_PREFIX.len())
                .is_some_and(|p| p.eq_ignore_ascii_case(EVENT_FORMAT_PREFIX))
        });
        if is_format {
            ContentMode::Structured
        } else {
            ContentMode::Binary
        }
    }
}

/// The media type of a content type, without parameters.
fn media_type(content_type: &str) -> &str {
    content_type
        .split(';')
        .next()
        .unwrap_or(content_type)
        .trim()
}

impl Envelope {
    /// Decodes a structured-mode message: `body` in the event format that
    /// `content_type` names. The JSON format is the one we read; a batch or
    /// another format is an error that names it.
    ///
    /// ```
    /// use eventbus::Envelope;
    ///
    /// let body = br#"{"specversion":"1.0","id":"e-1","source":"/py","type":"t","data":{"n":1}}"#;
    /// let e = Envelope::from_structured("application/cloudevents+json", body)?;
    /// assert_eq!((e.id.as_str(), e.data.as_slice()), ("e-1", &br#"{"n":1}"#[..]));
    /// assert!(Envelope::from_structured("application/cloudevents+avro", body).is_err());
    /// # Ok::<(), eventbus::EnvelopeError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`EnvelopeError::UnsupportedFormat`] for a format other than JSON
    /// (batches included), otherwise as for [`Envelope::from_json`].
    pub fn from_structured(content_type: &str, body: &[u8]) -> Result<Self, EnvelopeError> {
        if !media_type(content_type).eq_ignore_ascii_case(STRUCTURED_JSON_CONTENT_TYPE) {
            return Err(EnvelopeError::UnsupportedFormat(content_type.to_owned()));
        }
        Envelope::from_json(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::envelope::sample;

    #[test]
    fn event_formats_are_structured_whatever_their_case_and_parameters() {
        for ct in [
            "application/cloudevents+json",
            "Application/CloudEvents+JSON; charset=UTF-8",
            " application/cloudevents+avro",
            "application/cloudevents-batch+json",
        ] {
            assert_eq!(ContentMode::of(Some(ct)), ContentMode::Structured, "{ct}");
        }
        for ct in [Some("application/json"), Some("text/plain"), Some(""), None] {
            assert_eq!(ContentMode::of(ct), ContentMode::Binary, "{ct:?}");
        }
    }

    #[test]
    fn the_json_format_decodes_and_others_are_named() {
        let e = sample();
        let back =
            Envelope::from_structured("application/cloudevents+json; charset=utf-8", &e.to_json())
                .expect("decodes");
        assert_eq!(back, e);
        for ct in [
            "application/cloudevents-batch+json",
            "application/cloudevents+avro",
        ] {
            let err = Envelope::from_structured(ct, &e.to_json()).expect_err("unsupported");
            assert!(err.to_string().contains(ct), "{err}");
        }
        let err = Envelope::from_structured(STRUCTURED_JSON_CONTENT_TYPE, b"{\"id\":")
            .expect_err("truncated");
        assert!(err.to_string().contains("not valid JSON"), "{err}");
    }
}
