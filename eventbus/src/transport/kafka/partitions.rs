//! Bookkeeping per assigned partition ([`Partitions`]): the messages fetched
//! and not yet handed out, the lane of each partition, and the position to
//! commit, which never passes a message that is unsettled or released.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use rdkafka::consumer::stream_consumer::StreamPartitionQueue;
use rdkafka::error::KafkaResult;
use rdkafka::TopicPartitionList;
use tokio::sync::Notify;

use super::rebalance::GroupContext;
use crate::envelope::{Envelope, EnvelopeError};
use crate::hash::fnv1a_parts;

/// The messages of one assigned partition, read apart from the others
/// (librdkafka's partition queue).
pub(super) struct PartitionStream {
    pub(super) topic: String,
    pub(super) partition: i32,
    pub(super) queue: StreamPartitionQueue<GroupContext>,
}

impl fmt::Debug for PartitionStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PartitionStream")
            .field("topic", &self.topic)
            .field("partition", &self.partition)
            .finish_non_exhaustive()
    }
}

/// The lane of a (topic, partition): FNV-1a over the topic and the partition,
/// the same in every process and release (unlike `DefaultHasher`).
pub(super) fn lane_of(topic: &str, partition: i32) -> u64 {
    // The partition has a fixed width, so (topic, partition) is encoded uniquely.
    fnv1a_parts(&[topic.as_bytes(), &partition.to_be_bytes()])
}

/// What an acknowledgement amounted to.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Ack {
    /// Counted; the partition's position was stored if it moved.
    Recorded,
    /// The partition was revoked (or the subscriber closed) since the message
    /// was handed out.
    Revoked,
    /// The partition was rewound to an earlier message that has not come round
    /// again: this message will be delivered again too.
    Rewound,
}

/// A fetched message not yet handed out.
#[derive(Debug)]
pub(super) struct Fetched {
    pub(super) offset: i64,
    pub(super) envelope: std::result::Result<Envelope, EnvelopeError>,
    pub(super) body: Vec<u8>,
    /// The message key, when it is UTF-8.
    pub(super) key: Option<String>,
    /// The record timestamp, in milliseconds since the epoch.
    pub(super) timestamp_ms: Option<i64>,
}

/// A message picked to be handed out.
#[derive(Debug)]
pub(super) struct HandOut {
    pub(super) topic: String,
    pub(super) partition: i32,
    pub(super) epoch: u64,
    pub(super) fetched: Fetched,
}

/// Bookkeeping per partition of the messages fetched and handed out: shared by
/// the subscriber, its settle handles and the rebalance callback.
#[derive(Debug, Default)]
pub(super) struct Partitions {
    pub(super) inner: Mutex<Book>,
    /// Told when partitions are assigned, so that a waiting `next` reads
    /// their queues too.
    pub(super) changed: Notify,
}

#[derive(Debug, Default)]
pub(super) struct Book {
    pub(super) states: HashMap<(String, i32), PartitionState>,
    /// Fetched messages buffered over all partitions.
    pub(super) buffered: usize,
    /// Counts assignments, to tell them apart.
    pub(super) epochs: u64,
    /// Counts hand-outs, to take partitions in turn.
    pub(super) turns: u64,
}

/// One partition, since it was (last) assigned to this member.
#[derive(Debug)]
pub(super) struct PartitionState {
    /// Tells this assignment from earlier ones of the same partition.
    pub(super) epoch: u64,
    /// The partition's own queue, unless librdkafka could not split it off
    /// (its messages then come through the main queue).
    pub(super) stream: Option<Arc<PartitionStream>>,
    /// Fetched and not handed out yet, in offset order.
    pub(super) buffered: VecDeque<Fetched>,
    /// Offsets handed out and not settled, with a count: a rewound partition
    /// may hand an offset out again while its first copy is still in a lane.
    pub(super) unsettled: BTreeMap<i64, u32>,
    /// How many messages are handed out and not settled.
    pub(super) unsettled_count: usize,
    /// When a message of this partition was last handed out.
    pub(super) turn: u64,
    /// One past the highest acknowledged offset.
    pub(super) acked_to: Option<i64>,
    /// The position last stored for commit.
    pub(super) stored: Option<i64>,
    /// The lowest released offset, until it has come round again.
    pub(super) rewound_to: Option<i64>,
}

impl PartitionState {
    pub(super) fn new(epoch: u64) -> Self {
        PartitionState {
            epoch,
            stream: None,
            buffered: VecDeque::new(),
            unsettled: BTreeMap::new(),
            unsettled_count: 0,
            turn: 0,
            acked_to: None,
            stored: None,
            rewound_to: None,
        }
    }

    /// Where the group may resume: after everything acknowledged, but not past
    /// an unsettled or released message.
    pub(super) fn position(&self) -> Option<i64> {
        let mut position = self.acked_to?;
        if let Some((&first, _)) = self.unsettled.first_key_value() {
            position = position.min(first);
        }
        if let Some(rewound) = self.rewound_to {
            position = position.min(rewound);
        }
        Some(position)
    }

    pub(super) fn settle_one(&mut self, offset: i64) {
        if let Some(count) = self.unsettled.get_mut(&offset) {
            *count -= 1;
            self.unsettled_count -= 1;
            if *count == 0 {
                self.unsettled.remove(&offset);
            }
        }
    }
}

impl Partitions {
    pub(super) fn lock(&self) -> MutexGuard<'_, Book> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Fetched messages waiting to be handed out.
    #[cfg(test)]
    pub(super) fn buffered(&self) -> usize {
        self.lock().buffered
    }

    /// Starts a new assignment of a partition, read through `stream` if it
    /// could be split off.
    pub(super) fn assign(&self, topic: &str, partition: i32, stream: Option<PartitionStream>) {
        {
            let mut book = self.lock();
            book.epochs += 1;
            let mut state = PartitionState::new(book.epochs);
            state.stream = stream.map(Arc::new);
            if let Some(old) = book.states.insert((topic.to_owned(), partition), state) {
                book.buffered -= old.buffered.len();
            }
        }
        self.changed.notify_one();
    }

    /// The partitions' own queues, with how many of their messages are buffered.
    pub(super) fn streams(&self) -> Vec<(Arc<PartitionStream>, usize)> {
        self.lock()
            .states
            .values()
            .filter_map(|s| s.stream.as_ref().map(|q| (Arc::clone(q), s.buffered.len())))
            .collect()
    }

    /// Keeps a fetched message until [`Partitions::hand_out`] picks it; drops
    /// it if its partition is not assigned (any more).
    pub(super) fn buffer(&self, topic: &str, partition: i32, fetched: Fetched) {
        let mut book = self.lock();
        let book = &mut *book;
        let Some(state) = book.states.get_mut(&(topic.to_owned(), partition)) else {
            tracing::debug!(
                topic,
                partition,
                offset = fetched.offset,
                "dropped a message of an unassigned partition"
            );
            return;
        };
        state.buffered.push_back(fetched);
        book.buffered += 1;
    }

    /// Picks the next message to hand out: the oldest buffered message of the
    /// partition with the fewest unsettled messages (the longest waiting among
    /// equals), so that lanes fill evenly. Messages fetched before their
    /// partition was rewound to a released message are dropped (they come
    /// again after the rewind).
    pub(super) fn hand_out(&self) -> Option<HandOut> {
        let mut book = self.lock();
        let book = &mut *book;
        loop {
            let key = book
                .states
                .iter()
                .filter(|(_, s)| !s.buffered.is_empty())
                // Ties (partitions never handed out yet) go by topic and
                // partition, not by the map's random order.
                .min_by_key(|(k, s)| (s.unsettled_count, s.turn, *k))
                .map(|(k, _)| k.clone())?;
            let state = book.states.get_mut(&key)?;
            let Some(fetched) = state.buffered.pop_front() else {
                continue;
            };
            book.buffered -= 1;
            if let Some(rewound) = state.rewound_to {
                if fetched.offset > rewound {
                    continue;
                }
                state.rewound_to = None;
            }
            *state.unsettled.entry(fetched.offset).or_insert(0) += 1;
            state.unsettled_count += 1;
            book.turns += 1;
            state.turn = book.turns;
            let (topic, partition) = key;
            return Some(HandOut {
                topic,
                partition,
                epoch: state.epoch,
                fetched,
            });
        }
    }

    /// Records an acknowledgement; when the partition's position moves, hands
    /// it to `store` (under the lock, so stored positions never go backwards).
    pub(super) fn ack(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
        epoch: u64,
        store: impl FnOnce(i64) -> KafkaResult<()>,
    ) -> KafkaResult<Ack> {
        let mut book = self.lock();
        let Some(state) = book
            .states
            .get_mut(&(topic.to_owned(), partition))
            .filter(|s| s.epoch == epoch)
        else {
            return Ok(Ack::Revoked);
        };
        state.settle_one(offset);
        if state.rewound_to.is_some_and(|r| offset > r) {
            return Ok(Ack::Rewound);
        }
        state.acked_to = Some(state.acked_to.map_or(offset + 1, |a| a.max(offset + 1)));
        if let Some(position) = state.position() {
            if state.stored.is_none_or(|s| position > s) {
                store(position)?;
                state.stored = Some(position);
            }
        }
        Ok(Ack::Recorded)
    }

    /// Records a release; when it lowers the partition's rewind target, drops
    /// the buffered messages from there on and hands the new target to `seek`
    /// (under the lock, so seeks happen in the order of their targets and the
    /// last one goes to the lowest released offset).
    pub(super) fn release(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
        epoch: u64,
        seek: impl FnOnce(i64) -> KafkaResult<()>,
    ) -> KafkaResult<()> {
        let mut book = self.lock();
        let book = &mut *book;
        let Some(state) = book
            .states
            .get_mut(&(topic.to_owned(), partition))
            .filter(|s| s.epoch == epoch)
        else {
            // Revoked: the new owner starts at the committed offset, which is
            // not past this message.
            return Ok(());
        };
        state.settle_one(offset);
        if state.rewound_to.is_none_or(|r| offset < r) {
            state.rewound_to = Some(offset);
            let before = state.buffered.len();
            state.buffered.retain(|f| f.offset < offset);
            book.buffered -= before - state.buffered.len();
            seek(offset)?;
        }
        Ok(())
    }

    /// Forgets the partitions of `list` (revoked, or freshly assigned) and
    /// their buffered messages.
    pub(super) fn forget(&self, list: &TopicPartitionList) {
        let mut book = self.lock();
        for element in list.elements() {
            let key = (element.topic().to_owned(), element.partition());
            if let Some(state) = book.states.remove(&key) {
                book.buffered -= state.buffered.len();
            }
        }
    }

    pub(super) fn forget_all(&self) {
        let mut book = self.lock();
        book.states.clear();
        book.buffered = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fetches `offset` of `topic`/`partition` and hands out the next message.
    fn admit(p: &Partitions, topic: &str, partition: i32, offset: i64) -> Option<u64> {
        let fetched = Fetched {
            offset,
            envelope: Err(EnvelopeError::MissingAttribute("id")),
            body: Vec::new(),
            key: None,
            timestamp_ms: None,
        };
        p.buffer(topic, partition, fetched);
        p.hand_out().map(|out| out.epoch)
    }

    fn stored_by(partitions: &Partitions, offset: i64, epoch: u64) -> (Ack, Option<i64>) {
        let mut stored = None;
        let ack = partitions
            .ack("t", 0, offset, epoch, |p| {
                stored = Some(p);
                Ok(())
            })
            .expect("store succeeds");
        (ack, stored)
    }

    #[test]
    fn the_position_never_passes_an_unsettled_message() {
        let p = Partitions::default();
        p.assign("t", 0, None);
        let epoch = admit(&p, "t", 0, 10).expect("admitted");
        for offset in 11..=13 {
            assert_eq!(admit(&p, "t", 0, offset), Some(epoch));
        }
        // Acknowledged out of order: 11 and 12 first, 10 still in flight, so
        // the position stays at 10.
        assert_eq!(stored_by(&p, 11, epoch), (Ack::Recorded, Some(10)));
        assert_eq!(stored_by(&p, 12, epoch), (Ack::Recorded, None));
        // 10 done: the position jumps past everything acknowledged.
        assert_eq!(stored_by(&p, 10, epoch), (Ack::Recorded, Some(13)));
        assert_eq!(stored_by(&p, 13, epoch), (Ack::Recorded, Some(14)));
    }

    #[test]
    fn a_release_rewinds_and_later_acks_do_not_count_until_it_comes_round() {
        let p = Partitions::default();
        p.assign("t", 0, None);
        let epoch = admit(&p, "t", 0, 5).expect("admitted");
        for offset in 6..=8 {
            admit(&p, "t", 0, offset);
        }
        assert_eq!(stored_by(&p, 5, epoch), (Ack::Recorded, Some(6)));
        let mut seeks = Vec::new();
        p.release("t", 0, 6, epoch, |o| {
            seeks.push(o);
            Ok(())
        })
        .expect("release");
        // A later release does not move the rewind forward.
        p.release("t", 0, 8, epoch, |o| {
            seeks.push(o);
            Ok(())
        })
        .expect("release");
        assert_eq!(seeks, vec![6]);
        // 7 was handed out before the rewind: its ack cannot commit past 6.
        assert_eq!(stored_by(&p, 7, epoch), (Ack::Rewound, None));
        // Messages fetched before the seek are skipped, until 6 comes round.
        assert_eq!(admit(&p, "t", 0, 9), None);
        assert_eq!(admit(&p, "t", 0, 6), Some(epoch));
        assert_eq!(admit(&p, "t", 0, 7), Some(epoch));
        assert_eq!(stored_by(&p, 6, epoch), (Ack::Recorded, Some(7)));
        assert_eq!(stored_by(&p, 7, epoch), (Ack::Recorded, Some(8)));
    }

    #[test]
    fn a_lower_release_seeks_again() {
        let p = Partitions::default();
        p.assign("t", 0, None);
        let epoch = admit(&p, "t", 0, 1).expect("admitted");
        admit(&p, "t", 0, 2);
        let mut seeks = Vec::new();
        for offset in [2, 1] {
            p.release("t", 0, offset, epoch, |o| {
                seeks.push(o);
                Ok(())
            })
            .expect("release");
        }
        assert_eq!(seeks, vec![2, 1]);
    }

    #[test]
    fn partitions_are_handed_out_in_turn() {
        let p = Partitions::default();
        p.assign("t", 0, None);
        p.assign("t", 1, None);
        let fetched = |offset| Fetched {
            offset,
            envelope: Err(EnvelopeError::MissingAttribute("id")),
            body: Vec::new(),
            key: None,
            timestamp_ms: None,
        };
        // One fetch: a run of partition 0, then a run of partition 1.
        for offset in 0..3 {
            p.buffer("t", 0, fetched(offset));
        }
        for offset in 0..3 {
            p.buffer("t", 1, fetched(offset));
        }
        let order: Vec<(i32, i64)> = std::iter::from_fn(|| p.hand_out())
            .map(|out| (out.partition, out.fetched.offset))
            .collect();
        assert_eq!(order, vec![(0, 0), (1, 0), (0, 1), (1, 1), (0, 2), (1, 2)]);
        assert_eq!(p.buffered(), 0);
    }

    #[test]
    fn a_release_drops_the_buffered_messages_behind_it() {
        let p = Partitions::default();
        p.assign("t", 0, None);
        let epoch = admit(&p, "t", 0, 0).expect("admitted");
        for offset in 1..4 {
            p.buffer(
                "t",
                0,
                Fetched {
                    offset,
                    envelope: Err(EnvelopeError::MissingAttribute("id")),
                    body: Vec::new(),
                    key: None,
                    timestamp_ms: None,
                },
            );
        }
        p.release("t", 0, 0, epoch, |_| Ok(())).expect("release");
        assert_eq!(p.buffered(), 0, "they come again after the rewind");
    }

    #[test]
    fn acks_of_a_revoked_assignment_commit_nothing() {
        let p = Partitions::default();
        p.assign("t", 3, None);
        let old = admit(&p, "t", 3, 40).expect("admitted");
        let mut list = TopicPartitionList::new();
        list.add_partition("t", 3);
        p.forget(&list);
        assert_eq!(admit(&p, "t", 3, 41), None, "not assigned: dropped");
        // Assigned again: a new epoch.
        p.assign("t", 3, None);
        let new = admit(&p, "t", 3, 40).expect("admitted");
        assert_ne!(old, new);
        let ack = p
            .ack("t", 3, 40, old, |_| panic!("must not store"))
            .expect("no store");
        assert_eq!(ack, Ack::Revoked);
        p.release("t", 3, 40, old, |_| panic!("must not seek"))
            .expect("no seek");
    }
}
