//! Dead-letter names and marks shared by the consumer, the relay and the
//! transports: the extension attributes a dead letter carries, the
//! destination it goes to and how a dead-letter destination or queue is
//! recognised. What a consumer does with dead letters is in
//! [`crate::consumer::dead_letter`], which re-exports these.

/// Extension attribute: why the message was dead-lettered.
pub const REASON: &str = "deadletterreason";
/// Extension attribute: attempts made before giving up.
pub const ATTEMPTS: &str = "deadletterattempts";
/// Extension attribute: the destination the message came from.
pub const ORIGIN: &str = "deadletterorigin";
/// Extension attribute: the consumer group that gave up.
pub const GROUP: &str = "deadlettergroup";

/// Extension attribute of an event re-driven from a dead-letter destination:
/// when it was re-driven (RFC 3339). A re-drive is a new send of the event,
/// which a broker that drops copies by event id (SQS FIFO queues, see
/// [`crate::transport`]) must not take for a copy of the first send.
pub const REDRIVEN_AT: &str = "redrivenat";

/// The event type of a dead letter whose original was not a CloudEvent.
pub const UNDECODABLE_TYPE: &str = "eventbus.deadletter.undecodable";

/// The dead-letter destination of consumer group `group` for messages from
/// `destination`: each group has its own, so a replay reaches that group only.
///
/// ```
/// use eventbus::consumer::dead_letter::destination_of;
///
/// assert_eq!(destination_of("orders", "billing"), "orders.billing.dlq");
/// ```
pub fn destination_of(destination: &str, group: &str) -> String {
    format!("{destination}.{group}.dlq")
}

/// Whether `name` is a dead-letter destination (`orders.billing.dlq`) or the
/// name a broker gives one (`orders-billing-dlq`, `orders-dlq.fifo`).
pub(crate) fn is_dead_letter_name(name: &str) -> bool {
    let stem = name.strip_suffix(".fifo").unwrap_or(name);
    stem.ends_with(".dlq") || stem.ends_with("-dlq")
}
