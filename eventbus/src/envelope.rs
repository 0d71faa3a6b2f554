//! The CloudEvents 1.0 [`Envelope`] every event travels in, its JSON structured
//! format and its binary-mode header mappings for Kafka and AMQP.

use std::collections::BTreeMap;

mod content_mode;

pub use content_mode::{ContentMode, STRUCTURED_JSON_CONTENT_TYPE};

use base64::Engine as _;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// The only CloudEvents spec version we produce and accept.
pub const SPEC_VERSION: &str = "1.0";

/// The content type of JSON payloads.
pub const JSON_CONTENT_TYPE: &str = "application/json";

/// A malformed CloudEvent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// The bytes are not a JSON object.
    #[error("CloudEvent is not valid JSON: {0}")]
    InvalidJson(#[source] serde_json::Error),
    /// The JSON value is not an object.
    #[error("CloudEvent must be a JSON object, found {0}")]
    NotAnObject(&'static str),
    /// A required attribute is absent.
    #[error("CloudEvent attribute `{0}` is required but missing")]
    MissingAttribute(&'static str),
    /// An attribute has the wrong type or an invalid value.
    #[error("CloudEvent attribute `{name}` is invalid: {reason}")]
    InvalidAttribute {
        /// The attribute's name.
        name: String,
        /// Why it is invalid.
        reason: String,
    },
    /// `specversion` is not `1.0`.
    #[error("unsupported CloudEvents specversion `{0}`, expected `1.0`")]
    UnsupportedSpecVersion(String),
    /// A structured-mode message in an event format other than JSON (a
    /// batch, Avro, Protobuf), named by its content type.
    #[error(
        "unsupported CloudEvents event format `{0}`: only `application/cloudevents+json` is read"
    )]
    UnsupportedFormat(String),
    /// An outbox row holds a value that cannot be read (see
    /// [`OutboxRecord::defect`](crate::outbox::OutboxRecord::defect)).
    #[error("the outbox row cannot be read: {0}")]
    UnreadableRow(String),
}

fn invalid(name: &str, reason: impl Into<String>) -> EnvelopeError {
    EnvelopeError::InvalidAttribute {
        name: name.to_owned(),
        reason: reason.into(),
    }
}

/// A CloudEvents 1.0 event: context attributes, our extensions and the payload.
///
/// ```
/// use eventbus::Envelope;
///
/// let mut envelope = Envelope::new("urn:svc:orders", "com.example.order.placed", br#"{"id":1}"#.to_vec());
/// envelope.partition_key = Some("order-1".into());
/// let json = envelope.to_json();
/// let back = Envelope::from_json(&json).unwrap();
/// assert_eq!(back, envelope);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// `id`: unique per `source`; a UUIDv7 for events we create.
    pub id: String,
    /// `source`: the producing service, a URI reference.
    pub source: String,
    /// `type`: e.g. `com.example.order.placed`.
    pub event_type: String,
    /// `time`: when the event happened.
    pub time: Option<DateTime<Utc>>,
    /// `datacontenttype`; `None` means JSON.
    pub datacontenttype: Option<String>,
    /// `subject`: the aggregate the event is about.
    pub subject: Option<String>,
    /// `dataschema`: identifies the payload's type and schema version.
    pub dataschema: Option<String>,
    /// Extension `partitionkey`: the ordering key.
    pub partition_key: Option<String>,
    /// Extension `traceparent` (W3C trace context).
    pub traceparent: Option<String>,
    /// Extension `tracestate` (W3C trace context).
    pub tracestate: Option<String>,
    /// Extension `correlationid`: shared by all events of one business flow.
    pub correlation_id: Option<String>,
    /// Extension `causationid`: the id of the event that caused this one.
    pub causation_id: Option<String>,
    /// Any other extension attributes, as strings.
    pub extensions: BTreeMap<String, String>,
    /// The payload bytes (JSON unless `datacontenttype` says otherwise).
    pub data: Vec<u8>,
}

impl Envelope {
    /// A new JSON event with a fresh UUIDv7 id and the current time.
    pub fn new(source: impl Into<String>, event_type: impl Into<String>, data: Vec<u8>) -> Self {
        Envelope {
            id: uuid::Uuid::now_v7().to_string(),
            source: source.into(),
            event_type: event_type.into(),
            time: Some(Utc::now()),
            datacontenttype: Some(JSON_CONTENT_TYPE.to_owned()),
            subject: None,
            dataschema: None,
            partition_key: None,
            traceparent: None,
            tracestate: None,
            correlation_id: None,
            causation_id: None,
            extensions: BTreeMap::new(),
            data,
        }
    }

    /// The schema version named by `dataschema` (its trailing `v<N>`), if any.
    ///
    /// ```
    /// # use eventbus::Envelope;
    /// let mut e = Envelope::new("s", "t", b"{}".to_vec());
    /// e.dataschema = Some("urn:eventbus:schema:t:v3".into());
    /// assert_eq!(e.schema_version(), Some(3));
    /// ```
    pub fn schema_version(&self) -> Option<u32> {
        let schema = self.dataschema.as_deref()?;
        let last = schema.rsplit([':', '/']).next()?;
        last.strip_prefix('v')?.parse().ok()
    }

    /// Whether the payload is JSON (`datacontenttype` absent, `application/json`
    /// or any `+json` type).
    pub fn is_json(&self) -> bool {
        match self.datacontenttype.as_deref() {
            None => true,
            Some(ct) => {
                let essence = ct.split(';').next().unwrap_or(ct).trim();
                essence.eq_ignore_ascii_case(JSON_CONTENT_TYPE) || essence.ends_with("+json")
            }
        }
    }

    /// All context attributes and extensions as `(name, value)` string pairs, in
    /// CloudEvents naming, excluding the payload. Binary-mode bindings prefix these.
    pub fn attributes(&self) -> Vec<(&str, String)> {
        let mut out: Vec<(&str, String)> = vec![
            ("specversion", SPEC_VERSION.to_owned()),
            ("id", self.id.clone()),
            ("source", self.source.clone()),
            ("type", self.event_type.clone()),
        ];
        if let Some(t) = &self.time {
            out.push(("time", t.to_rfc3339_opts(SecondsFormat::AutoSi, true)));
        }
        let optional = [
            ("datacontenttype", &self.datacontenttype),
            ("subject", &self.subject),
            ("dataschema", &self.dataschema),
            ("partitionkey", &self.partition_key),
            ("traceparent", &self.traceparent),
            ("tracestate", &self.tracestate),
            ("correlationid", &self.correlation_id),
            ("causationid", &self.causation_id),
        ];
        out.extend(
            optional
                .into_iter()
                .filter_map(|(k, v)| v.as_ref().map(|v| (k, v.clone()))),
        );
        out.extend(self.extensions.iter().map(|(k, v)| (k.as_str(), v.clone())));
        out
    }

    /// Encodes the event in the CloudEvents JSON structured format. JSON payloads
    /// are embedded as `data`, anything else as `data_base64`.
    pub fn to_json(&self) -> Vec<u8> {
        let mut map = Map::new();
        for (name, value) in self.attributes() {
            map.insert(name.to_owned(), Value::String(value));
        }
        // JSON data is spliced in byte for byte (a parsed `Value` would reorder
        // its keys); anything else travels as base64.
        let raw_json = (!self.data.is_empty() && self.is_json())
            .then(|| serde_json::from_slice::<&RawValue>(&self.data).ok())
            .flatten();
        if raw_json.is_none() && !self.data.is_empty() {
            let encoded = base64::engine::general_purpose::STANDARD.encode(&self.data);
            map.insert("data_base64".into(), Value::String(encoded));
        }
        // Serializing a map of strings cannot fail.
        let mut out = serde_json::to_vec(&Value::Object(map)).unwrap_or_default();
        if let Some(raw) = raw_json {
            out.pop(); // the closing brace; the map always has `specversion`
            out.extend_from_slice(b",\"data\":");
            out.extend_from_slice(raw.get().as_bytes());
            out.push(b'}');
        }
        out
    }

    /// Decodes the CloudEvents JSON structured format.
    ///
    /// # Errors
    ///
    /// [`EnvelopeError`] naming the first problem: not JSON, not an object, a
    /// required attribute missing, an attribute of the wrong type, an unsupported
    /// `specversion`, or both `data` and `data_base64`.
    pub fn from_json(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        let mut map: BTreeMap<String, &RawValue> = match serde_json::from_slice(bytes) {
            Ok(map) => map,
            // Only on the error path: parse again to say what it was instead.
            Err(e) => {
                return Err(match serde_json::from_slice::<Value>(bytes) {
                    Ok(value) => EnvelopeError::NotAnObject(json_kind(&value)),
                    Err(_) => EnvelopeError::InvalidJson(e),
                })
            }
        };
        let content_type: Option<Value> = map
            .get("datacontenttype")
            .and_then(|raw| serde_json::from_str(raw.get()).ok());
        let data = match (map.remove("data"), map.remove("data_base64")) {
            (Some(_), Some(_)) => {
                return Err(invalid("data", "both `data` and `data_base64` are present"))
            }
            (Some(raw), None) => {
                let text = raw.get();
                if text.starts_with('"') && !is_json_type(content_type.as_ref()) {
                    // A non-JSON payload carried as a JSON string: the string itself.
                    serde_json::from_str::<String>(text)
                        .map_err(EnvelopeError::InvalidJson)?
                        .into_bytes()
                } else {
                    text.as_bytes().to_vec()
                }
            }
            (None, Some(raw)) => match serde_json::from_str::<Value>(raw.get()) {
                Ok(Value::String(b64)) => base64::engine::general_purpose::STANDARD
                    .decode(b64.as_bytes())
                    .map_err(|e| invalid("data_base64", format!("not valid base64: {e}")))?,
                Ok(other) => {
                    return Err(invalid(
                        "data_base64",
                        format!("expected a string, found {}", json_kind(&other)),
                    ))
                }
                Err(e) => return Err(EnvelopeError::InvalidJson(e)),
            },
            (None, None) => Vec::new(),
        };
        let mut attrs = BTreeMap::new();
        for (name, raw) in map {
            let value: Value =
                serde_json::from_str(raw.get()).map_err(EnvelopeError::InvalidJson)?;
            let text = match value {
                Value::String(s) => s,
                Value::Bool(b) => b.to_string(),
                Value::Number(n) => n.to_string(),
                other => {
                    return Err(invalid(
                        &name,
                        format!("expected a string, found {}", json_kind(&other)),
                    ))
                }
            };
            attrs.insert(name, text);
        }
        Self::from_attributes(attrs, data)
    }

    /// Builds an envelope from attribute name/value pairs (already stripped of any
    /// binding prefix) and the payload.
    ///
    /// # Errors
    ///
    /// [`EnvelopeError`] as for [`Envelope::from_json`].
    pub fn from_attributes(
        mut attrs: BTreeMap<String, String>,
        data: Vec<u8>,
    ) -> Result<Self, EnvelopeError> {
        let mut required = |name: &'static str| -> Result<String, EnvelopeError> {
            match attrs.remove(name) {
                None => Err(EnvelopeError::MissingAttribute(name)),
                Some(v) if v.is_empty() => Err(invalid(name, "must not be empty")),
                Some(v) => Ok(v),
            }
        };
        let specversion = required("specversion")?;
        if specversion != SPEC_VERSION {
            return Err(EnvelopeError::UnsupportedSpecVersion(specversion));
        }
        let id = required("id")?;
        let source = required("source")?;
        let event_type = required("type")?;
        let time = attrs
            .remove("time")
            .map(|t| {
                DateTime::parse_from_rfc3339(&t)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(|e| {
                        invalid("time", format!("`{t}` is not an RFC 3339 timestamp: {e}"))
                    })
            })
            .transpose()?;
        if let Some(name) = attrs.keys().find(|n| !is_valid_attribute_name(n)) {
            return Err(invalid(
                name,
                "attribute names must be lowercase ASCII letters and digits",
            ));
        }
        Ok(Envelope {
            id,
            source,
            event_type,
            time,
            datacontenttype: attrs.remove("datacontenttype"),
            subject: attrs.remove("subject"),
            dataschema: attrs.remove("dataschema"),
            partition_key: attrs.remove("partitionkey"),
            traceparent: attrs.remove("traceparent"),
            tracestate: attrs.remove("tracestate"),
            correlation_id: attrs.remove("correlationid"),
            causation_id: attrs.remove("causationid"),
            extensions: attrs,
            data,
        })
    }

    /// Binary-mode headers: every attribute except `datacontenttype` with `prefix`
    /// prepended (`ce_` for Kafka, `ce-` for AMQP). The content type travels in the
    /// protocol's own content-type field.
    pub fn binary_headers(&self, prefix: &str) -> Vec<(String, String)> {
        self.attributes()
            .into_iter()
            .filter(|(name, _)| *name != "datacontenttype")
            .map(|(name, value)| (format!("{prefix}{name}"), value))
            .collect()
    }

    /// Decodes binary mode: headers named `prefix + attribute` (others ignored),
    /// the protocol's content type and the body.
    ///
    /// # Errors
    ///
    /// [`EnvelopeError`] naming a missing or invalid attribute, including a header
    /// value that is not UTF-8.
    pub fn from_binary<'a>(
        prefix: &str,
        headers: impl IntoIterator<Item = (&'a str, &'a [u8])>,
        content_type: Option<&str>,
        data: Vec<u8>,
    ) -> Result<Self, EnvelopeError> {
        let mut attrs = BTreeMap::new();
        for (name, value) in headers {
            let Some(attr) = strip_prefix_ignore_case(name, prefix) else {
                continue;
            };
            let attr = attr.to_ascii_lowercase();
            let value = std::str::from_utf8(value)
                .map_err(|_| invalid(&attr, "header value is not UTF-8"))?;
            attrs.insert(attr, value.to_owned());
        }
        if let Some(ct) = content_type {
            attrs.insert("datacontenttype".into(), ct.to_owned());
        }
        Self::from_attributes(attrs, data)
    }
}

/// The `dataschema` URI we generate for an event type and version.
pub fn dataschema_uri(event_type: &str, version: u32) -> String {
    format!("urn:eventbus:schema:{event_type}:v{version}")
}

fn strip_prefix_ignore_case<'a>(name: &'a str, prefix: &str) -> Option<&'a str> {
    let head = name.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &name[prefix.len()..])
}

fn is_valid_attribute_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

fn is_json_type(ct: Option<&Value>) -> bool {
    match ct {
        None => true,
        Some(Value::String(ct)) => {
            let essence = ct.split(';').next().unwrap_or(ct).trim();
            essence.eq_ignore_ascii_case(JSON_CONTENT_TYPE) || essence.ends_with("+json")
        }
        Some(_) => false,
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// An envelope with every attribute set, for the tests of the envelope and
/// of each transport's wire format.
#[cfg(test)]
pub(crate) fn sample() -> Envelope {
    let mut e = Envelope::new(
        "urn:svc:orders",
        "com.example.order.placed",
        br#"{"order_id":"o-1","amount":5}"#.to_vec(),
    );
    e.subject = Some("o-1".into());
    e.dataschema = Some(dataschema_uri("com.example.order.placed", 2));
    e.partition_key = Some("o-1".into());
    e.traceparent = Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());
    e.tracestate = Some("congo=t61rcWkgMzE".into());
    e.correlation_id = Some("c-1".into());
    e.causation_id = Some("e-0".into());
    e.extensions.insert("tenant".into(), "acme".into());
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip_keeps_every_attribute() {
        let e = sample();
        let back = Envelope::from_json(&e.to_json()).expect("valid");
        assert_eq!(back, e);
        assert_eq!(back.schema_version(), Some(2));
    }

    #[test]
    fn json_payload_bytes_survive_exactly() {
        let mut e = sample();
        e.data = br#"{"zeta":1,"alpha":{"b":2,"a":1}}"#.to_vec();
        let back = Envelope::from_json(&e.to_json()).expect("valid");
        assert_eq!(back.data, e.data, "key order and spacing are kept");
    }

    #[test]
    fn json_payload_is_embedded_as_data() {
        let json: Value = serde_json::from_slice(&sample().to_json()).expect("json");
        assert_eq!(json["specversion"], "1.0");
        assert_eq!(json["data"]["order_id"], "o-1");
        assert_eq!(json["partitionkey"], "o-1");
        assert!(json.get("data_base64").is_none());
    }

    #[test]
    fn binary_payload_round_trips_as_base64() {
        let mut e = sample();
        e.datacontenttype = Some("application/octet-stream".into());
        e.data = vec![0, 159, 146, 150];
        let json: Value = serde_json::from_slice(&e.to_json()).expect("json");
        assert!(json.get("data_base64").is_some());
        assert_eq!(Envelope::from_json(&e.to_json()).expect("valid"), e);
    }

    #[test]
    fn binary_headers_round_trip() {
        let e = sample();
        let headers = e.binary_headers("ce_");
        assert!(headers.iter().any(|(k, v)| k == "ce_id" && *v == e.id));
        assert!(!headers.iter().any(|(k, _)| k == "ce_datacontenttype"));
        let pairs = headers.iter().map(|(k, v)| (k.as_str(), v.as_bytes()));
        let back =
            Envelope::from_binary("ce_", pairs, e.datacontenttype.as_deref(), e.data.clone())
                .expect("valid");
        assert_eq!(back, e);
    }

    #[test]
    fn malformed_envelopes_name_the_problem() {
        let cases: &[(&[u8], &str)] = &[
            (b"not json", "not valid JSON"),
            (b"[1,2]", "must be a JSON object, found an array"),
            (br#"{"id":"1","source":"s","type":"t"}"#, "`specversion` is required"),
            (br#"{"specversion":"0.3","id":"1","source":"s","type":"t"}"#, "specversion `0.3`"),
            (br#"{"specversion":"1.0","source":"s","type":"t"}"#, "`id` is required"),
            (br#"{"specversion":"1.0","id":"1","type":"t"}"#, "`source` is required"),
            (br#"{"specversion":"1.0","id":"1","source":"s"}"#, "`type` is required"),
            (br#"{"specversion":"1.0","id":"","source":"s","type":"t"}"#, "`id` is invalid: must not be empty"),
            (br#"{"specversion":"1.0","id":1,"source":"s","type":"t","time":"yesterday"}"#, "`time` is invalid"),
            (br#"{"specversion":"1.0","id":"1","source":"s","type":"t","subject":{}}"#, "`subject` is invalid: expected a string, found an object"),
            (br#"{"specversion":"1.0","id":"1","source":"s","type":"t","Bad-Name":"x"}"#, "`Bad-Name` is invalid"),
            (br#"{"specversion":"1.0","id":"1","source":"s","type":"t","data":1,"data_base64":"AA=="}"#, "both `data` and `data_base64`"),
            (br#"{"specversion":"1.0","id":"1","source":"s","type":"t","data_base64":"!!"}"#, "not valid base64"),
        ];
        for (input, expected) in cases {
            let err = Envelope::from_json(input).expect_err("must be rejected");
            let text = err.to_string();
            assert!(
                text.contains(expected),
                "for {:?}: `{text}` does not mention `{expected}`",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn numeric_and_boolean_extensions_are_accepted_as_strings() {
        let e = Envelope::from_json(
            br#"{"specversion":"1.0","id":"1","source":"s","type":"t","sequence":42,"flag":true}"#,
        )
        .expect("valid");
        assert_eq!(e.extensions["sequence"], "42");
        assert_eq!(e.extensions["flag"], "true");
    }

    #[test]
    fn binary_rejects_non_utf8_header() {
        let headers = vec![("ce_id", &[0xff_u8, 0xfe][..])];
        let err = Envelope::from_binary("ce_", headers, None, vec![]).expect_err("invalid");
        assert!(err
            .to_string()
            .contains("`id` is invalid: header value is not UTF-8"));
    }
}
