//! [`OutboxRecord`]: a committed outbox row as the relay reads it, and its
//! conversion into a CloudEvents [`Envelope`].

use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, Utc};
use serde_json::Value;
use uuid::Uuid;

use crate::envelope::{dataschema_uri, Envelope, EnvelopeError, JSON_CONTENT_TYPE};

/// One row of the outbox table, read by the relay.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxRecord {
    /// Position in publication order.
    pub id: i64,
    /// CloudEvents `id`.
    pub event_id: Uuid,
    /// CloudEvents `source`, if the writer set one.
    pub source: Option<String>,
    /// Logical destination.
    pub destination: String,
    /// Ordering key.
    pub partition_key: String,
    /// Logical partition (a hash of the key).
    pub partition: i32,
    /// CloudEvents `type`.
    pub event_type: String,
    /// Payload schema version.
    pub schema_version: i32,
    /// CloudEvents `subject`.
    pub subject: Option<String>,
    /// Other attributes and extensions.
    pub headers: Value,
    /// The payload as JSON text.
    pub payload: String,
    /// When the row was written.
    pub created_at: DateTime<Utc>,
    /// Publish attempts that failed for this row.
    pub attempts: i32,
    /// Why the row as stored could not be read, when a writer left a value
    /// the database accepts but eventbus cannot decode (a JSON number beyond
    /// `f64`, text that is not UTF-8, an `event_id` that is not a UUID). Such a
    /// row never becomes an event: the relay parks it with this reason.
    pub defect: Option<String>,
}

impl OutboxRecord {
    /// A plain pending row of `key` in `partition`, for unit tests.
    #[cfg(test)]
    pub(crate) fn sample(id: i64, partition: i32, key: &str) -> Self {
        OutboxRecord {
            id,
            event_id: Uuid::now_v7(),
            source: None,
            destination: "orders".into(),
            partition_key: key.into(),
            partition,
            event_type: "t".into(),
            schema_version: 1,
            subject: None,
            headers: Value::Null,
            payload: "{}".into(),
            created_at: Utc::now(),
            attempts: 0,
            defect: None,
        }
    }

    /// Builds the CloudEvent for this row. `default_source` fills a missing
    /// `source` (rows written by plain SQL from other languages). The row's
    /// UUID id is what the inbox deduplicates such an event on
    /// ([`InboxKey`](crate::inbox::InboxKey)), so the value chosen here
    /// cannot make a redelivery look new.
    ///
    /// # Errors
    ///
    /// [`EnvelopeError::UnreadableRow`] when the row has a
    /// [`defect`](Self::defect); [`EnvelopeError::InvalidAttribute`] when
    /// `headers` is not an object of scalar values, an attribute breaks the
    /// CloudEvents rules (a name that is not lowercase alphanumeric, an empty
    /// type, a `time` header that is not a timestamp), or `created_at` lies
    /// outside the years 0000–9999.
    pub fn to_envelope(&self, default_source: &str) -> Result<Envelope, EnvelopeError> {
        self.envelope_with(default_source, trimmed(&self.payload).to_owned())
    }

    /// [`to_envelope`](Self::to_envelope), moving the payload into the
    /// envelope instead of copying it: the relay keeps a batch's rows until
    /// the broker has acknowledged them, and their payloads would otherwise
    /// sit in memory twice. The row keeps every other field; its payload is
    /// left empty, also when this fails.
    pub(crate) fn take_envelope(
        &mut self,
        default_source: &str,
    ) -> Result<Envelope, EnvelopeError> {
        let payload = std::mem::take(&mut self.payload);
        self.envelope_with(default_source, payload)
    }

    fn envelope_with(
        &self,
        default_source: &str,
        payload: String,
    ) -> Result<Envelope, EnvelopeError> {
        if let Some(defect) = &self.defect {
            return Err(EnvelopeError::UnreadableRow(defect.clone()));
        }
        let mut attrs: BTreeMap<String, String> = BTreeMap::new();
        match &self.headers {
            Value::Object(map) => {
                for (k, v) in map {
                    let text = match v {
                        Value::String(s) => s.clone(),
                        Value::Number(n) => n.to_string(),
                        Value::Bool(b) => b.to_string(),
                        _ => {
                            return Err(EnvelopeError::InvalidAttribute {
                                name: k.clone(),
                                reason: "outbox header values must be strings".into(),
                            })
                        }
                    };
                    attrs.insert(k.to_ascii_lowercase(), text);
                }
            }
            Value::Null => {}
            _ => {
                return Err(EnvelopeError::InvalidAttribute {
                    name: "headers".into(),
                    reason: "outbox `headers` must be a JSON object".into(),
                })
            }
        }
        let source = self
            .source
            .clone()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| default_source.to_owned());
        attrs.insert("specversion".into(), crate::envelope::SPEC_VERSION.into());
        attrs.insert("id".into(), self.event_id.to_string());
        attrs.insert("source".into(), source);
        attrs.insert("type".into(), self.event_type.clone());
        attrs.insert("partitionkey".into(), self.partition_key.clone());
        attrs
            .entry("datacontenttype".into())
            .or_insert_with(|| JSON_CONTENT_TYPE.into());
        let version = u32::try_from(self.schema_version).unwrap_or(1);
        attrs
            .entry("dataschema".into())
            .or_insert_with(|| dataschema_uri(&self.event_type, version));
        if let Some(subject) = &self.subject {
            attrs.insert("subject".into(), subject.clone());
        }
        // RFC 3339 writes four-digit years: a row stamped outside them (a
        // plain-SQL writer's mistake) would leave as an event no consumer can
        // read, so it is refused here, and the relay parks it with the reason.
        if !(0..=9999).contains(&self.created_at.year()) {
            return Err(EnvelopeError::InvalidAttribute {
                name: "time".into(),
                reason: format!(
                    "created_at {} is outside the years 0000 to 9999 that RFC 3339 can write",
                    self.created_at
                ),
            });
        }
        // Whitespace around a JSON value is not part of it, and a structured
        // CloudEvent cannot carry it: dropped here, so every format sends
        // the same bytes.
        let data = match trimmed(&payload) {
            t if t.len() == payload.len() => payload.into_bytes(),
            t => t.as_bytes().to_vec(),
        };
        let mut envelope = Envelope::from_attributes(attrs, data)?;
        envelope.time = Some(self.created_at);
        Ok(envelope)
    }
}

/// A JSON value without the whitespace around it.
fn trimmed(payload: &str) -> &str {
    payload.trim_matches([' ', '\t', '\n', '\r'])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> OutboxRecord {
        OutboxRecord {
            id: 7,
            event_id: Uuid::now_v7(),
            source: None,
            destination: "orders".into(),
            partition_key: "o-1".into(),
            partition: 3,
            event_type: "com.example.order.placed".into(),
            schema_version: 2,
            subject: Some("o-1".into()),
            headers: serde_json::json!({"correlationid": "c-1", "traceparent": "00-abc-def-01"}),
            payload: r#"{"order_id":"o-1"}"#.into(),
            created_at: Utc::now(),
            attempts: 0,
            defect: None,
        }
    }

    /// Found by the `outbox_row` fuzz target: a row stamped in the year
    /// 36807 became an event whose `time` no CloudEvents reader accepts.
    #[test]
    fn refuses_a_created_at_that_rfc_3339_cannot_write() {
        for year in [-1, 10_000, 36_807] {
            let mut r = record();
            r.created_at = DateTime::from_timestamp(0, 0)
                .and_then(|t| t.with_year(year))
                .expect("a representable date");
            let err = r
                .to_envelope("urn:relay")
                .expect_err("not writable as RFC 3339");
            assert!(
                matches!(&err, EnvelopeError::InvalidAttribute { name, .. } if name == "time"),
                "{err}"
            );
        }
        let mut r = record();
        r.created_at = DateTime::from_timestamp(0, 0)
            .and_then(|t| t.with_year(9999))
            .expect("a representable date");
        let e = r.to_envelope("urn:relay").expect("year 9999 is fine");
        assert_eq!(Envelope::from_json(&e.to_json()).expect("decodes"), e);
    }

    #[test]
    fn taking_the_envelope_moves_the_payload_and_builds_the_same_event() {
        for payload in [r#"{"order_id":"o-1"}"#, " {\"order_id\": \"o-1\"}\n"] {
            let mut r = record();
            r.payload = payload.into();
            let copied = r.to_envelope("urn:relay").expect("valid");
            let taken = r.take_envelope("urn:relay").expect("valid");
            assert_eq!(taken, copied);
            assert!(r.payload.is_empty(), "the payload moved out of the row");
        }
    }

    /// Found by the `outbox_row` fuzz target: a payload with whitespace
    /// around it came out of a JSON round trip without it.
    #[test]
    fn whitespace_around_the_payload_is_not_sent() {
        let mut r = record();
        r.payload = "\t\n {\"order_id\": \"o-1\"} \r\n".into();
        let e = r.to_envelope("urn:relay").expect("valid");
        assert_eq!(e.data, br#"{"order_id": "o-1"}"#);
        assert_eq!(Envelope::from_json(&e.to_json()).expect("decodes"), e);
    }

    #[test]
    fn fills_source_and_dataschema() {
        let e = record().to_envelope("urn:relay").expect("valid");
        assert_eq!(e.source, "urn:relay");
        assert_eq!(e.schema_version(), Some(2));
        assert_eq!(e.correlation_id.as_deref(), Some("c-1"));
        assert_eq!(e.traceparent.as_deref(), Some("00-abc-def-01"));
        assert_eq!(e.partition_key.as_deref(), Some("o-1"));
        assert_eq!(e.datacontenttype.as_deref(), Some("application/json"));
    }

    #[test]
    fn rejects_nested_header_values() {
        let mut r = record();
        r.headers = serde_json::json!({"x": {"nested": true}});
        let err = r.to_envelope("urn:relay").expect_err("invalid");
        assert!(err.to_string().contains("`x` is invalid"));
    }
}
