//! The relay's `send` span per outbox row: started as a child of the trace
//! context the row stores, handed on in the broker message, finished with
//! where the broker put the message or why it refused it.

use chrono::Utc;

use crate::outbox::OutboxRecord;
use crate::telemetry::attributes as attr;
use crate::telemetry::span::{common, MessagingSpan, Operation, Parent};
use crate::telemetry::TraceContext;
use crate::transport::{Delivered, OutgoingMessage, PublishError};

/// Starts the `send` span of `row` and puts its trace context into
/// `message`, so the consumer's `process` span becomes its child.
pub(super) fn start_send(
    system: &str,
    row: &OutboxRecord,
    message: &mut OutgoingMessage,
) -> MessagingSpan {
    let envelope = &mut message.envelope;
    let parent = TraceContext::of(envelope).map_or(Parent::Root, Parent::Remote);
    let span = MessagingSpan::start(Operation::Send, &message.destination, parent, &[]);
    common(
        &span,
        Some(system),
        &message.destination,
        Some(&envelope.id),
    );
    span.set_str(attr::EVENT_TYPE, &envelope.event_type);
    span.set_int(attr::OUTBOX_ROW, row.id);
    span.set_int(attr::ATTEMPT, i64::from(row.attempts) + 1);
    span.set_int(
        attr::BODY_SIZE,
        i64::try_from(envelope.data.len()).unwrap_or(i64::MAX),
    );
    match system {
        "kafka" => span.set_str(attr::KAFKA_KEY, &row.partition_key),
        // The RabbitMQ transport routes by CloudEvents type.
        "rabbitmq" => span.set_str(attr::RABBITMQ_ROUTING_KEY, &envelope.event_type),
        _ => {}
    }
    if let Some(tc) = span.trace_context() {
        tc.apply_to(envelope);
    }
    span
}

/// Finishes the `send` span of `row` with the broker's answer; returns how
/// long the row waited from its outbox write to the acknowledgement.
pub(super) fn finish_send(
    span: MessagingSpan,
    row: &OutboxRecord,
    result: &Result<Delivered, PublishError>,
    acknowledged_at: chrono::DateTime<Utc>,
) -> Option<std::time::Duration> {
    let waited = match result {
        Ok(delivered) => {
            if let Some(partition) = delivered.partition {
                span.set_str(attr::PARTITION, &partition.to_string());
            }
            if let Some(offset) = delivered.offset {
                span.set_int(attr::KAFKA_OFFSET, offset);
            }
            let waited = (acknowledged_at - row.created_at)
                .to_std()
                .unwrap_or_default();
            span.set_int(
                attr::OUTBOX_WAIT_MS,
                i64::try_from(waited.as_millis()).unwrap_or(i64::MAX),
            );
            Some(waited)
        }
        Err(e) => {
            span.fail(e.kind().as_str(), &e.to_string());
            None
        }
    };
    span.end();
    waited
}

/// The trace id stored in `row`, for log lines about it.
pub(super) fn trace_id(row: &OutboxRecord) -> Option<String> {
    let header = |name: &str| row.headers.get(name).and_then(|v| v.as_str());
    TraceContext::parse(header("traceparent")?, None).map(|tc| tc.trace_id())
}
