//! What a failed send means: rdkafka errors sorted into "broker unavailable"
//! and "message rejected" (the rdkafka error kept as the source), and the
//! topic metadata probe that tells a missing topic from a slow cluster.

use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, Producer};

use crate::transport::{Delivered, PublishError};

/// Errors after which the idempotent producer's id/epoch is no good any more.
pub(super) fn is_fencing(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::ProducerFenced
            | RDKafkaErrorCode::InvalidProducerEpoch
            | RDKafkaErrorCode::UnknownProducerId
            | RDKafkaErrorCode::OutOfOrderSequenceNumber
    )
}

/// Sorts a send error (see [`is_broker_wide`]); the rdkafka error is the
/// source.
pub(super) fn classify(error: KafkaError, topic: &str) -> PublishError {
    match error.rdkafka_error_code() {
        Some(code) => classify_code(code, topic),
        // Errors without a code come from the client itself (e.g. a topic name
        // with a NUL byte): nothing a retry later would fix.
        None => PublishError::rejected_from(
            format_args!("Kafka refused the message to topic `{topic}`"),
            error,
        ),
    }
}

/// Sorts an error code (see [`is_broker_wide`]); the code is the source.
pub(super) fn classify_code(code: RDKafkaErrorCode, topic: &str) -> PublishError {
    if is_broker_wide(code) {
        PublishError::unavailable_from(
            format_args!("Kafka cluster unavailable for topic `{topic}`"),
            code,
        )
    } else {
        PublishError::rejected_from(
            format_args!("Kafka rejected the message to topic `{topic}`"),
            code,
        )
    }
}

/// Whether `code` means the cluster (or our connection to it) cannot take
/// messages now, as opposed to a problem with this message or its topic.
///
/// The relay pauses on the first kind without counting an attempt against the
/// event, and retries, then parks, on the second.
///
/// `Unavailable` — broker-wide, not the message's fault:
/// - connection and authentication: `BrokerTransportFailure`, `AllBrokersDown`,
///   `Resolve`, `SSL`, `Authentication`, `SaslAuthenticationFailed`,
///   `UnsupportedSASLMechanism`, `IllegalSASLState`, `NetworkException`;
/// - time: `MessageTimedOut` (unless the metadata probe in `publish_batch` finds
///   the topic missing, see below), `RequestTimedOut`, `OperationTimedOut`,
///   `TimedOutQueue`, `QueueFull` (only after waiting `message.timeout.ms`);
/// - replication, leadership, storage: `NotEnoughReplicas`,
///   `NotEnoughReplicasAfterAppend`, `ISRInsufficient`, `LeaderNotAvailable`,
///   `NotLeaderForPartition`, `BrokerNotAvailable`, `ReplicaNotAvailable`,
///   `KafkaStorageError`, leader-epoch, reassignment and coordinator errors;
/// - producer state: `Fatal` (the producer is then replaced), fencing, producer
///   epoch and id, `OutOfOrderSequenceNumber`, purges at shutdown;
/// - cluster-wide settings: `ClusterAuthorizationFailed` (idempotent writes need
///   it), `InvalidRequiredAcks`, `UnsupportedVersion`, `UnsupportedFeature`,
///   `ThrottlingQuotaExceeded`, `RebootstrapRequired`.
///
/// `Rejected` — this message or its topic:
/// - size: `MessageSizeTooLarge` (the broker's, and librdkafka's client-side
///   check against `message.max.bytes`), `InvalidMessageSize`,
///   `MessageBatchTooLarge` (Kafka's `RECORD_LIST_TOO_LARGE`);
/// - content: `InvalidMessage` (corrupt), `InvalidRecord`, `InvalidTimestamp`,
///   `BadMessage`, `BadCompression`, `UnsupportedForMessageFormat`;
/// - topic: `UnknownTopicOrPartition`, `UnknownTopic`, `UnknownPartition`,
///   `InvalidTopic`, `TopicAuthorizationFailed`, `PolicyViolation`; a delivery
///   that timed out while the cluster answers but reports the topic missing;
/// - topic creation: `InvalidPartitions`, `InvalidReplicationFactor`,
///   `InvalidReplicaAssignment`, `InvalidConfig`;
/// - anything not listed as `Unavailable`: a message wrongly parked is visible
///   and an operator can release it, whereas a message wrongly taken for an
///   outage would stall every key behind it forever.
fn is_broker_wide(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        code,
        // Connection and authentication.
        C::BrokerTransportFailure
            | C::AllBrokersDown
            | C::Resolve
            | C::SSL
            | C::Authentication
            | C::SaslAuthenticationFailed
            | C::UnsupportedSASLMechanism
            | C::IllegalSASLState
            | C::NetworkException
            | C::BrokerDestroy
            | C::DestroyBroker
            | C::CriticalSystemResource
            | C::Interrupted
            // Timeouts and local back-pressure.
            | C::MessageTimedOut
            | C::RequestTimedOut
            | C::OperationTimedOut
            | C::TimedOutQueue
            | C::QueueFull
            | C::Retry
            // Replication, leadership, storage.
            | C::NotEnoughReplicas
            | C::NotEnoughReplicasAfterAppend
            | C::ISRInsufficient
            | C::LeaderNotAvailable
            | C::NotLeaderForPartition
            | C::BrokerNotAvailable
            | C::ReplicaNotAvailable
            | C::PreferredLeaderNotAvailable
            | C::EligibleLeadersNotAvailable
            | C::FencedLeaderEpoch
            | C::UnknownLeaderEpoch
            | C::KafkaStorageError
            | C::ReassignmentInProgress
            | C::NotController
            | C::CoordinatorLoadInProgress
            | C::CoordinatorNotAvailable
            | C::NotCoordinator
            // Producer state (idempotence) and shutdown.
            | C::Fatal
            | C::Fenced
            | C::ProducerFenced
            | C::InvalidProducerEpoch
            | C::UnknownProducerId
            | C::OutOfOrderSequenceNumber
            | C::PurgeQueue
            | C::PurgeInflight
            // Cluster-wide settings and limits.
            | C::ClusterAuthorizationFailed
            | C::InvalidRequiredAcks
            | C::UnsupportedVersion
            | C::UnsupportedFeature
            | C::ThrottlingQuotaExceeded
            | C::RebootstrapRequired
    )
}

/// A message's fate before timeouts are explained.
pub(super) enum Outcome {
    /// Acknowledged or failed for a known reason.
    Done(std::result::Result<Delivered, PublishError>),
    /// Not acknowledged within `message.timeout.ms`.
    TimedOut,
}

/// What the cluster says about a topic.
pub(super) enum TopicState {
    /// It exists with this many partitions.
    Exists { partitions: usize },
    /// It does not exist, or may not be used (the broker's error code).
    Missing(RDKafkaErrorCode),
}

/// Asks the cluster about `topic`; `Err` when it does not answer in time.
pub(super) async fn fetch_topic_metadata(
    producer: &FutureProducer,
    topic: &str,
    timeout: Duration,
) -> std::result::Result<TopicState, String> {
    let producer = producer.clone();
    let topic = topic.to_owned();
    // The metadata call blocks its thread until the broker answers.
    let answer = tokio::task::spawn_blocking(move || {
        let metadata = producer
            .client()
            .fetch_metadata(Some(&topic), timeout)
            .map_err(|e| e.to_string())?;
        let found = metadata.topics().iter().find(|t| t.name() == topic);
        Ok(match found {
            None => TopicState::Missing(RDKafkaErrorCode::UnknownTopicOrPartition),
            Some(t) => match t.error() {
                Some(err) => TopicState::Missing(err.into()),
                None if t.partitions().is_empty() => {
                    TopicState::Missing(RDKafkaErrorCode::UnknownTopicOrPartition)
                }
                None => TopicState::Exists {
                    partitions: t.partitions().len(),
                },
            },
        })
    })
    .await;
    match answer {
        Ok(result) => match result {
            // A broker-wide reason (leader election, …) is not "missing".
            Ok(TopicState::Missing(code)) if is_broker_wide(code) => Err(format!("{code}")),
            other => other,
        },
        Err(e) => Err(format!("metadata request failed: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_sorted_into_unavailable_and_rejected() {
        use RDKafkaErrorCode as C;
        for code in [
            C::AllBrokersDown,
            C::BrokerTransportFailure,
            C::MessageTimedOut,
            C::NotEnoughReplicas,
            C::LeaderNotAvailable,
            C::NotLeaderForPartition,
            C::RequestTimedOut,
        ] {
            assert!(classify_code(code, "t").is_unavailable(), "{code:?}");
        }
        for code in [
            C::MessageSizeTooLarge,
            C::InvalidTopic,
            C::UnknownTopicOrPartition,
            C::UnknownTopic,
            C::TopicAuthorizationFailed,
            C::InvalidRecord,
            C::InvalidMessage,
            C::MessageBatchTooLarge,
        ] {
            assert!(!classify_code(code, "t").is_unavailable(), "{code:?}");
        }
    }
}
