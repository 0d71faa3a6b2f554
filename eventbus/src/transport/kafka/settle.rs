//! Settling one received Kafka message ([`KafkaSettle`]): an
//! acknowledgement stores its offset for commit, a release rewinds its
//! partition to it.

use std::fmt;
use std::sync::{Arc, Weak};
use std::time::Duration;

use rdkafka::consumer::Consumer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::OwnedSemaphorePermit;

use super::partitions::{Ack, Partitions};
use super::rebalance::{commit_stored, GroupConsumer};
use crate::error::{Error, Result};
use crate::transport::{Settle, TransportError};

/// Settles one message: stores its offset for commit, or rewinds its partition.
pub(super) struct KafkaSettle {
    pub(super) topic: String,
    pub(super) partition: i32,
    pub(super) offset: i64,
    /// The assignment of the partition the message was handed out in.
    pub(super) epoch: u64,
    pub(super) partitions: Arc<Partitions>,
    /// Weak, so that a forgotten handle does not keep a closed consumer alive.
    pub(super) consumer: Weak<GroupConsumer>,
    pub(super) group: String,
    /// The subscriber's in-flight slot, given back when this handle goes.
    pub(super) _permit: OwnedSemaphorePermit,
    pub(super) settled: bool,
}

impl fmt::Debug for KafkaSettle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaSettle")
            .field("topic", &self.topic)
            .field("partition", &self.partition)
            .field("offset", &self.offset)
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

impl KafkaSettle {
    pub(super) fn not_recorded(&self, why: &str) -> Error {
        Error::Subscribe(TransportError::Unavailable(
            format!(
                "Kafka consumer of group `{}`: the acknowledgement of {}/{} offset {} does not \
             count ({why}); the message will be delivered again",
                self.group, self.topic, self.partition, self.offset
            )
            .into(),
        ))
    }

    /// Records the acknowledgement and stores the partition's new position.
    pub(super) fn store(&mut self) -> Result<()> {
        self.settled = true;
        let consumer = self.consumer.upgrade();
        let stored = self.partitions.ack(
            &self.topic,
            self.partition,
            self.offset,
            self.epoch,
            |position| {
                let Some(consumer) = &consumer else {
                    return Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::State));
                };
                let mut list = TopicPartitionList::with_capacity(1);
                list.add_partition_offset(&self.topic, self.partition, Offset::Offset(position))?;
                consumer.store_offsets(&list)
            },
        );
        match stored {
            Ok(Ack::Recorded) => Ok(()),
            Ok(Ack::Revoked) => {
                Err(self.not_recorded("its partition was revoked or the subscriber closed"))
            }
            Ok(Ack::Rewound) => {
                Err(self.not_recorded("its partition was rewound to an earlier released message"))
            }
            Err(e) => Err(self.not_recorded(&format!("storing the offset failed: {e}"))),
        }
    }

    /// Rewinds the partition to this message.
    pub(super) fn rewind(&mut self) -> Result<()> {
        self.settled = true;
        let Some(consumer) = self.consumer.upgrade() else {
            // Closed: the next member of the group starts at the committed
            // offset, which is not past this message.
            return Ok(());
        };
        self.partitions
            .release(
                &self.topic,
                self.partition,
                self.offset,
                self.epoch,
                |offset| {
                    // Zero timeout: the seek is queued in order behind earlier ones
                    // without waiting for the fetcher.
                    consumer.seek(
                        &self.topic,
                        self.partition,
                        Offset::Offset(offset),
                        Duration::ZERO,
                    )
                },
            )
            .map_err(|e| {
                Error::Subscribe(TransportError::Unavailable(
                    format!(
                        "Kafka consumer of group `{}`: cannot rewind {}/{} to offset {}: {e}",
                        self.group, self.topic, self.partition, self.offset
                    )
                    .into(),
                ))
            })
    }
}

#[async_trait::async_trait]
impl Settle for KafkaSettle {
    async fn ack(mut self: Box<Self>) -> Result<()> {
        self.store()
    }

    async fn ack_durably(mut self: Box<Self>) -> Result<()> {
        self.store()?;
        let Some(consumer) = self.consumer.upgrade() else {
            return Err(self.not_recorded("the subscriber closed"));
        };
        let committed = tokio::task::spawn_blocking(move || commit_stored(consumer.as_ref())).await;
        let failure = match committed {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        };
        // Stored, so a later commit may still take it: whether the broker
        // delivers it again is unknown.
        Err(Error::Subscribe(TransportError::Unavailable(
            format!(
                "Kafka consumer of group `{}`: committing the acknowledgement of {}/{} offset {} \
             failed: {failure}",
                self.group, self.topic, self.partition, self.offset
            )
            .into(),
        )))
    }

    async fn release(mut self: Box<Self>) -> Result<()> {
        self.rewind()
    }
}

impl Drop for KafkaSettle {
    fn drop(&mut self) {
        if !self.settled {
            if let Err(e) = self.rewind() {
                tracing::warn!(error = %e, "releasing a dropped, unsettled Kafka message failed");
            }
        }
        // The in-flight slot (`_permit`) is given back as the fields drop.
    }
}
