//! [`InboxKey`]: what the inbox records a message under, so that a
//! redelivery is recognised whichever relay sent it
//! (`docs/adr/0007-event-source-and-inbox-key.md`).

use crate::envelope::Envelope;

/// The `source` column of an inbox row whose message id is a UUID: a UUID is
/// unique on its own, so the key leaves the CloudEvents `source` out.
pub const UUID_SCOPE: &str = "";

/// The key `(source, message_id)` under which a consumer's inbox records a
/// message, within one consumer.
///
/// Every event that eventbus relays has a UUID id (the outbox's `event_id`),
/// and a UUID is unique whatever the source: such a message is keyed by its
/// id alone ([`UUID_SCOPE`] in place of the source), so a row without a
/// `source`, relayed under one relay's `--source` and again under another's,
/// is still one message. Any other id is unique only within its source, as
/// CloudEvents says, and is keyed by both.
///
/// ```
/// use eventbus::inbox::{InboxKey, UUID_SCOPE};
/// use eventbus::Envelope;
///
/// let a = Envelope::new("urn:relay:a", "com.example.order.placed", b"{}".to_vec());
/// let mut b = a.clone();
/// b.source = "urn:relay:b".into();
/// assert_eq!(InboxKey::of(&a), InboxKey::of(&b));
/// assert_eq!(InboxKey::of(&a).source, UUID_SCOPE);
///
/// let mut foreign = a.clone();
/// foreign.id = "42".into();
/// assert_eq!(InboxKey::of(&foreign).source, "urn:relay:a");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InboxKey<'a> {
    /// The `source` column: [`UUID_SCOPE`] for a UUID id, else the
    /// CloudEvents `source`.
    pub source: &'a str,
    /// The `message_id` column: the CloudEvents `id`, as received.
    pub message_id: &'a str,
}

impl<'a> InboxKey<'a> {
    /// The key of `envelope`.
    pub fn of(envelope: &'a Envelope) -> Self {
        let source = if is_uuid(&envelope.id) {
            UUID_SCOPE
        } else {
            envelope.source.as_str()
        };
        InboxKey {
            source,
            message_id: &envelope.id,
        }
    }

    /// The key eventbus used before this one, `(source, id)` for every
    /// message, when it differs from [`of`](Self::of): inbox rows written by
    /// earlier versions are found under it, so their messages stay
    /// duplicates after an upgrade.
    pub fn legacy(envelope: &'a Envelope) -> Option<Self> {
        is_uuid(&envelope.id).then_some(InboxKey {
            source: envelope.source.as_str(),
            message_id: &envelope.id,
        })
    }
}

/// Whether `id` is a UUID in its hyphenated form (`8-4-4-4-12` hex digits,
/// either case), the form the relay sends and the outbox column holds.
fn is_uuid(id: &str) -> bool {
    id.len() == 36 && uuid::Uuid::try_parse(id).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_id(id: &str) -> Envelope {
        let mut e = Envelope::new("urn:svc", "t", b"{}".to_vec());
        e.id = id.to_owned();
        e
    }

    #[test]
    fn only_hyphenated_uuids_leave_the_source_out() {
        for id in [
            "0190f3c4-9b1e-7c3a-8f00-5a2b6c1d7e42",
            "0190F3C4-9B1E-7C3A-8F00-5A2B6C1D7E42",
        ] {
            let e = with_id(id);
            assert_eq!(InboxKey::of(&e).source, UUID_SCOPE, "{id}");
            assert_eq!(InboxKey::legacy(&e).map(|k| k.source), Some("urn:svc"));
        }
        for id in [
            "42",
            "0190f3c49b1e7c3a8f005a2b6c1d7e42",
            "urn:uuid:0190f3c4-9b1e-7c3a-8f00-5a2b6c1d7e42",
            "{0190f3c4-9b1e-7c3a-8f00-5a2b6c1d7e42}",
            "0190f3c4-9b1e-7c3a-8f00-5a2b6c1d7e4g",
        ] {
            let e = with_id(id);
            assert_eq!(InboxKey::of(&e).source, "urn:svc", "{id}");
            assert_eq!(InboxKey::legacy(&e), None, "{id}");
        }
    }
}
