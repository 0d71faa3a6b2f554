//! [`MemoryBroker`]: the in-memory broker's configuration and introspection;
//! [`MemoryPublisher`]: its [`Publisher`].

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use super::cluster::{to_usize, Shared};
use super::subscriber::MemorySubscriber;
use crate::envelope::Envelope;
use crate::transport::{Delivered, OutgoingMessage, PublishError, Publisher};

/// How many partitions a topic gets unless [`MemoryBroker::with_partitions`]
/// says otherwise.
pub const DEFAULT_PARTITIONS: u32 = 4;

/// The largest message accepted unless [`MemoryBroker::with_max_message_bytes`]
/// says otherwise: 1 MiB (Kafka's default `message.max.bytes` is about that).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// A Kafka-like broker inside the process: partitioned topics, consumer
/// groups, committed positions. See the [module docs](super) for its
/// semantics.
///
/// Cheap to clone: clones share the topics and groups. Messages are kept for
/// the broker's life (there is no retention): it is meant for dev mode, demos
/// and tests, not for production traffic.
#[derive(Clone, Default)]
pub struct MemoryBroker {
    shared: Arc<Shared>,
}

impl MemoryBroker {
    /// An empty broker: no topic, no group.
    pub fn new() -> Self {
        Self::default()
    }

    /// Topics created from now on get `partitions` partitions (at least 1, at
    /// most `i32::MAX`; default [`DEFAULT_PARTITIONS`]). Applies to every
    /// clone; topics that exist keep theirs.
    #[must_use]
    pub fn with_partitions(self, partitions: u32) -> Self {
        let partitions = partitions.clamp(1, i32::MAX.unsigned_abs());
        self.shared.lock().partitions = to_usize(partitions);
        self
    }

    /// Messages whose CloudEvents JSON structured encoding
    /// ([`Envelope::to_json`]) is longer than `bytes` are
    /// [`PublishError::Rejected`] (default [`DEFAULT_MAX_MESSAGE_BYTES`]).
    /// Applies to every clone.
    #[must_use]
    pub fn with_max_message_bytes(self, bytes: usize) -> Self {
        self.shared.lock().max_message_bytes = bytes;
        self
    }

    /// A publisher into this broker, for the relay, dead letters or tests.
    pub fn publisher(&self) -> MemoryPublisher {
        MemoryPublisher {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Joins consumer group `group` as a new member reading `destinations`
    /// (creating the topics that do not exist). The group rebalances at once:
    /// the new member takes over its share of the partitions, and reads them
    /// from the group's committed offsets (from the beginning for a new
    /// group). Duplicate destinations count once.
    ///
    /// The member holds its partitions until it is closed or dropped, whether
    /// or not [`next`](crate::transport::Subscriber::next) is called.
    pub fn subscribe(&self, group: &str, destinations: &[&str]) -> MemorySubscriber {
        MemorySubscriber::join(Arc::clone(&self.shared), group, destinations)
    }

    /// How many messages were published to `destination` (0 if it does not
    /// exist).
    pub fn published(&self, destination: &str) -> usize {
        self.shared.lock().published(destination)
    }

    /// How many messages of `destination` group `group` has not acknowledged
    /// yet: all of them for a group that never read it.
    pub fn pending(&self, group: &str, destination: &str) -> usize {
        self.shared.lock().pending(group, destination)
    }

    /// A copy of every message of `destination`, in publication order (empty
    /// if it does not exist).
    pub fn messages(&self, destination: &str) -> Vec<Envelope> {
        self.shared.lock().messages(destination)
    }

    /// Group `group`'s committed offset of each partition of `destination`,
    /// indexed by partition: the offset of the partition's first message the
    /// group has not acknowledged (Kafka's committed offset; 0 for a group
    /// that never read it). Empty if `destination` does not exist.
    pub fn committed(&self, group: &str, destination: &str) -> Vec<i64> {
        self.shared
            .lock()
            .committed(group, destination)
            .into_iter()
            .map(to_i64)
            .collect()
    }
}

impl fmt::Debug for MemoryBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cluster = self.shared.lock();
        f.debug_struct("MemoryBroker")
            .field("partitions", &cluster.partitions)
            .field("max_message_bytes", &cluster.max_message_bytes)
            .finish_non_exhaustive()
    }
}

/// Publishes into a [`MemoryBroker`]; made by [`MemoryBroker::publisher`].
///
/// A batch is appended under one lock, so the messages of a batch are stored
/// in input order and each one is acknowledged at once, with its partition
/// and offset. Never [`PublishError::Unavailable`]: the broker is always up.
#[derive(Clone)]
pub struct MemoryPublisher {
    shared: Arc<Shared>,
}

#[async_trait::async_trait]
impl Publisher for MemoryPublisher {
    fn system(&self) -> &'static str {
        "memory"
    }

    /// Appends the messages, creating missing topics.
    ///
    /// A message with an empty destination name or one larger than the limit
    /// is [`PublishError::Rejected`], and the later messages of its
    /// destination and key in the batch are [`PublishError::NotSent`], as the
    /// Kafka publisher does.
    async fn publish_batch(
        &self,
        messages: &[OutgoingMessage],
    ) -> Vec<Result<Delivered, PublishError>> {
        // Encoded before taking the lock, which publishers and subscribers share.
        let sizes: Vec<usize> = messages
            .iter()
            .map(|m| m.envelope.to_json().len())
            .collect();
        let mut cluster = self.shared.lock();
        let limit = cluster.max_message_bytes;
        let mut refused: HashSet<(&str, Option<&str>)> = HashSet::new();
        messages
            .iter()
            .zip(sizes)
            .map(|(message, size)| {
                let key = (
                    message.destination.as_str(),
                    message.envelope.partition_key.as_deref(),
                );
                if refused.contains(&key) {
                    return Err(PublishError::NotSent(
                        "an earlier event of the same key was rejected".into(),
                    ));
                }
                let admitted = check_name(&message.destination).and_then(|()| {
                    if size > limit {
                        return Err(PublishError::Rejected(
                            format!(
                                "event `{}` to `{}` is {size} bytes as structured JSON, more than \
                             the memory broker's limit of {limit} bytes",
                                message.envelope.id, message.destination
                            )
                            .into(),
                        ));
                    }
                    Ok(())
                });
                if let Err(e) = admitted {
                    refused.insert(key);
                    return Err(e);
                }
                let (partition, offset) =
                    cluster.append(&message.destination, message.envelope.clone());
                Ok(Delivered {
                    partition: Some(i32::try_from(partition).unwrap_or(i32::MAX)),
                    offset: Some(to_i64(offset)),
                    unroutable: false,
                })
            })
            .collect()
    }

    /// Creates the topic with the broker's current partition count unless it
    /// exists.
    async fn ensure_destination(&self, destination: &str) -> Result<(), PublishError> {
        check_name(destination)?;
        self.shared.lock().create_topic(destination);
        Ok(())
    }
}

impl fmt::Debug for MemoryPublisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryPublisher").finish_non_exhaustive()
    }
}

/// Refuses empty topic names, as Kafka does.
fn check_name(destination: &str) -> Result<(), PublishError> {
    if destination.trim().is_empty() {
        return Err(PublishError::Rejected(
            "the memory broker needs a non-empty destination name".into(),
        ));
    }
    Ok(())
}

fn to_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(destination: &str, key: &str, data: Vec<u8>) -> OutgoingMessage {
        let mut envelope = Envelope::new("urn:test", "t", data);
        envelope.partition_key = Some(key.to_owned());
        OutgoingMessage {
            destination: destination.to_owned(),
            envelope,
        }
    }

    #[tokio::test]
    async fn a_rejected_message_holds_back_the_rest_of_its_key() {
        let broker = MemoryBroker::new().with_max_message_bytes(400);
        let big = format!("\"{}\"", "x".repeat(500)).into_bytes();
        let results = broker
            .publisher()
            .publish_batch(&[
                message("t", "a", b"1".to_vec()),
                message("t", "a", big),
                message("t", "a", b"2".to_vec()),
                message("t", "b", b"3".to_vec()),
                message(" ", "c", b"4".to_vec()),
            ])
            .await;
        assert!(results[0].is_ok());
        assert!(matches!(results[1], Err(PublishError::Rejected(_))));
        assert!(matches!(results[2], Err(PublishError::NotSent(_))));
        assert!(results[3].is_ok());
        assert!(matches!(results[4], Err(PublishError::Rejected(_))));
        assert_eq!(broker.published("t"), 2);
        assert_eq!(broker.published(" "), 0);
    }

    #[tokio::test]
    async fn partitions_and_offsets_are_reported() {
        let broker = MemoryBroker::new().with_partitions(3);
        let publisher = broker.publisher();
        assert_eq!(publisher.system(), "memory");
        publisher.ensure_destination("t").await.expect("created");
        assert_eq!(broker.committed("g", "t"), vec![0, 0, 0]);
        let batch: Vec<OutgoingMessage> =
            (0..4).map(|i| message("t", "k", vec![b'0' + i])).collect();
        let delivered: Vec<Delivered> = publisher
            .publish_batch(&batch)
            .await
            .into_iter()
            .map(|r| r.expect("accepted"))
            .collect();
        let partition = delivered[0].partition;
        assert!(
            delivered.iter().all(|d| d.partition == partition),
            "one key, one partition"
        );
        let offsets: Vec<Option<i64>> = delivered.iter().map(|d| d.offset).collect();
        assert_eq!(offsets, vec![Some(0), Some(1), Some(2), Some(3)]);
        let ids: Vec<String> = broker.messages("t").into_iter().map(|e| e.id).collect();
        let sent: Vec<String> = batch.into_iter().map(|m| m.envelope.id).collect();
        assert_eq!(ids, sent);
        assert_eq!(broker.pending("g", "t"), 4);
    }
}
