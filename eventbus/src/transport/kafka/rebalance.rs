//! The rdkafka context of a subscriber ([`GroupContext`]): on a rebalance it
//! commits what was acknowledged and forgets revoked partitions, splits
//! assigned partitions off into queues of their own, and reports client
//! errors through `tracing`.

use std::sync::{Arc, OnceLock, Weak};

use rdkafka::client::ClientContext;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};

use super::partitions::{PartitionStream, Partitions};
use super::settings::Settings;

/// The consumer of a subscriber.
pub(super) type GroupConsumer = StreamConsumer<GroupContext>;

/// Commits the stored offsets and waits for the broker; nothing stored since
/// the last commit is not an error.
pub(super) fn commit_stored<C: Consumer<GroupContext>>(consumer: &C) -> KafkaResult<()> {
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => Ok(()),
        other => other,
    }
}

/// The rdkafka context of a subscriber: commits and forgets on rebalances,
/// reports client errors through `tracing`.
pub(super) struct GroupContext {
    pub(super) partitions: Arc<Partitions>,
    pub(super) group: String,
    pub(super) settings: Settings,
    /// The consumer, to split assigned partitions off into queues of their own.
    pub(super) consumer: OnceLock<Weak<GroupConsumer>>,
}

impl ClientContext for GroupContext {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(
            group = %self.group,
            error = %self.settings.scrub(&error.to_string()),
            reason = %self.settings.scrub(reason),
            "Kafka consumer error"
        );
    }
}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(list) => {
                // Late acknowledgements of these partitions commit nothing:
                // their messages go to the new owner from the committed offset.
                self.partitions.forget(list);
                if let Err(e) = commit_stored(consumer) {
                    tracing::warn!(
                        group = %self.group,
                        error = %self.settings.scrub(&e.to_string()),
                        "committing offsets before a rebalance failed; the new owner may repeat messages"
                    );
                }
                tracing::info!(group = %self.group, partitions = list.count(), "Kafka partitions revoked");
            }
            // Taken over after the assignment, when the partitions can be
            // split off.
            Rebalance::Assign(_) => {}
            Rebalance::Error(e) => {
                // rdkafka unassigns everything after a failed rebalance.
                self.partitions.forget_all();
                tracing::warn!(
                    group = %self.group,
                    error = %self.settings.scrub(&e.to_string()),
                    "Kafka rebalance failed"
                );
            }
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Assign(list) = rebalance else {
            return;
        };
        // Each partition gets a queue of its own (which `assign` would
        // deactivate, hence after it), so that `next` can take partitions in
        // turn instead of in the order of the fetched runs.
        let consumer = self.consumer.get().and_then(Weak::upgrade);
        for element in list.elements() {
            let (topic, partition) = (element.topic(), element.partition());
            let stream = consumer
                .as_ref()
                .and_then(|c| c.split_partition_queue(topic, partition))
                .map(|queue| PartitionStream {
                    topic: topic.to_owned(),
                    partition,
                    queue,
                });
            if stream.is_none() {
                tracing::warn!(
                    group = %self.group,
                    topic,
                    partition,
                    "no queue of its own for a Kafka partition; reading it through the main queue"
                );
            }
            self.partitions.assign(topic, partition, stream);
        }
        tracing::info!(group = %self.group, partitions = list.count(), "Kafka partitions assigned");
    }
}
