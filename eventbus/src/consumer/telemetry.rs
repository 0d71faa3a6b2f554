//! The consumer's `process` spans (one per message, or one per batch linked
//! to its messages) and the arrival metrics: how long a message waited in the
//! broker, and since its event happened.

use chrono::Utc;

use super::metrics::ConsumerMetrics;
use super::Outcome;
use crate::envelope::Envelope;
use crate::telemetry::attributes as attr;
use crate::telemetry::span::{common, MessagingSpan, Operation, Parent};
use crate::telemetry::TraceContext;
use crate::transport::MessageInfo;

/// Starts the `process` span of one message: a child of the trace context it
/// carries (the relay's `send` span, or any producer's `traceparent`).
pub(super) fn process_span(
    group: &str,
    destination: &str,
    envelope: &Envelope,
    info: &MessageInfo,
) -> MessagingSpan {
    let parent = TraceContext::of(envelope).map_or(Parent::Root, Parent::Remote);
    let span = MessagingSpan::start(Operation::Process, destination, parent, &[]);
    describe(&span, group, destination, Some(&envelope.id), info);
    span.set_str(attr::EVENT_TYPE, &envelope.event_type);
    span.set_str(attr::EVENT_SOURCE, &envelope.source);
    span.set_int(
        attr::BODY_SIZE,
        i64::try_from(envelope.data.len()).unwrap_or(i64::MAX),
    );
    if let Some(waited) = broker_wait(info) {
        span.set_int(
            attr::BROKER_WAIT_MS,
            i64::try_from(waited.as_millis()).unwrap_or(i64::MAX),
        );
    }
    span
}

/// Starts the `process` span of a batch: a trace of its own, linked to the
/// trace context of every message (the messaging conventions' batch shape).
pub(super) fn batch_span(
    group: &str,
    destination: &str,
    envelopes: &[Envelope],
    info: Option<&MessageInfo>,
) -> MessagingSpan {
    let links: Vec<TraceContext> = envelopes.iter().filter_map(TraceContext::of).collect();
    let span = MessagingSpan::start(Operation::Process, destination, Parent::Root, &links);
    let fallback = MessageInfo::default();
    describe(&span, group, destination, None, info.unwrap_or(&fallback));
    span.set_int(
        attr::BATCH_COUNT,
        i64::try_from(envelopes.len()).unwrap_or(i64::MAX),
    );
    span
}

fn describe(
    span: &MessagingSpan,
    group: &str,
    destination: &str,
    id: Option<&str>,
    info: &MessageInfo,
) {
    let system = (!info.system.is_empty()).then_some(info.system);
    common(span, system, destination, id);
    span.set_str(attr::CONSUMER_GROUP, group);
    if let Some(partition) = info.partition {
        span.set_str(attr::PARTITION, &partition.to_string());
    }
    if id.is_some() {
        if let Some(offset) = info.offset {
            span.set_int(attr::KAFKA_OFFSET, offset);
        }
        if let Some(key) = &info.key {
            span.set_str(attr::KAFKA_KEY, key);
        }
        if let Some(routing_key) = &info.routing_key {
            span.set_str(attr::RABBITMQ_ROUTING_KEY, routing_key);
        }
    }
}

/// Ends `span` with how handling ended.
pub(super) fn finish(span: MessagingSpan, outcome: &Outcome, attempts: u32) {
    span.set_str(attr::OUTCOME, outcome_name(outcome));
    if attempts > 0 {
        span.set_int(attr::ATTEMPT, i64::from(attempts));
    }
    span.end();
}

/// The `eventbus.outcome` value of `outcome`.
pub(super) fn outcome_name(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Handled => "handled",
        Outcome::Duplicate => "duplicate",
        Outcome::DeadLettered => "dead_lettered",
        Outcome::Released => "released",
        Outcome::Parked => "parked",
    }
}

/// Records how long `envelope` waited in the broker and since it happened.
pub(super) fn arrived(metrics: &ConsumerMetrics, envelope: &Envelope, info: &MessageInfo) {
    if let Some(waited) = broker_wait(info) {
        metrics.broker_wait(waited);
    }
    if let Some(age) = envelope.time.and_then(|t| (Utc::now() - t).to_std().ok()) {
        metrics.end_to_end(age);
    }
}

fn broker_wait(info: &MessageInfo) -> Option<std::time::Duration> {
    // A broker clock ahead of ours counts as no wait rather than none.
    info.broker_time
        .map(|t| (Utc::now() - t).to_std().unwrap_or_default())
}
