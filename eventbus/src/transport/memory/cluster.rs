//! The state a [`MemoryBroker`](super::MemoryBroker) shares between its
//! clones, publishers, subscribers and settle handles: topics as partitioned
//! append-only logs, and consumer groups with their members, partition
//! assignments and settled positions.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;

use super::broker::{DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_PARTITIONS};
use super::partitioner::partition_for_key;
use crate::envelope::Envelope;

/// Tells the members of all groups apart.
pub(super) type MemberId = u64;

/// The cluster behind its lock.
#[derive(Debug, Default)]
pub(super) struct Shared {
    cluster: Mutex<Cluster>,
}

impl Shared {
    /// Locks the cluster. The lock is never held across an `.await`.
    pub(super) fn lock(&self) -> MutexGuard<'_, Cluster> {
        // Every update below completes before anything that could panic, so a
        // poisoned lock still guards a consistent state.
        self.cluster.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Topics and consumer groups.
#[derive(Debug)]
pub(super) struct Cluster {
    /// How many partitions a topic created from now on gets.
    pub(super) partitions: usize,
    /// The largest message accepted, in bytes of its structured JSON encoding.
    pub(super) max_message_bytes: usize,
    topics: HashMap<String, Topic>,
    groups: HashMap<String, Group>,
    /// Source of member ids, assignment epochs and turns: all distinct.
    counter: u64,
}

/// One topic: every message in publication order, and which partition holds
/// which.
#[derive(Debug)]
struct Topic {
    /// Creation order among the topics; makes lanes unique across topics.
    ordinal: u64,
    /// Every message, in publication order.
    log: Vec<Envelope>,
    /// Per partition, the positions in `log` of its messages, in offset order.
    partitions: Vec<Vec<usize>>,
    /// Where the next message without a partition key goes.
    next_keyless: usize,
}

/// A consumer group: its current members, and its state of every partition
/// it reads or has read.
#[derive(Debug, Default)]
struct Group {
    members: BTreeMap<MemberId, Member>,
    topics: HashMap<String, Vec<GroupPartition>>,
}

/// A member of a group.
#[derive(Debug)]
struct Member {
    destinations: Vec<String>,
    /// Told when a partition it owns has something new for it.
    wake: Arc<Notify>,
}

/// A group's state of one partition.
#[derive(Debug, Default)]
struct GroupPartition {
    /// The member reading the partition, in its current assignment.
    owner: Option<Owner>,
    /// The committed offset: everything before it is acknowledged.
    committed: usize,
    /// Acknowledged offsets past `committed` (behind an unsettled one).
    acked: BTreeSet<usize>,
    /// The next offset to hand the owner.
    position: usize,
    /// How many of its messages the owner holds unsettled.
    unsettled: usize,
    /// One past the highest offset ever handed out to the group.
    delivered_to: usize,
    /// When the owner was last handed a message of this partition.
    turn: u64,
}

impl GroupPartition {
    /// Moves `position` past what the group has acknowledged already.
    fn skip_acknowledged(&mut self) {
        self.position = self.position.max(self.committed);
        while self.acked.contains(&self.position) {
            self.position += 1;
        }
    }

    fn is_held_by(&self, owner: Owner) -> bool {
        self.owner == Some(owner)
    }
}

/// A member's hold on a partition. Each assignment is a new epoch, so that
/// settle handles from an earlier one are told apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Owner {
    pub(super) member: MemberId,
    pub(super) epoch: u64,
}

/// A handed-out message, as its settle handle names it.
#[derive(Debug, Clone)]
pub(super) struct Ticket {
    pub(super) group: String,
    pub(super) topic: String,
    pub(super) partition: usize,
    pub(super) offset: usize,
    pub(super) owner: Owner,
}

/// A message picked for a member.
#[derive(Debug)]
pub(super) struct HandOut {
    pub(super) ticket: Ticket,
    pub(super) lane: u64,
    pub(super) envelope: Envelope,
    pub(super) redelivered: bool,
}

impl Default for Cluster {
    fn default() -> Self {
        Cluster {
            partitions: to_usize(DEFAULT_PARTITIONS),
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            topics: HashMap::new(),
            groups: HashMap::new(),
            counter: 0,
        }
    }
}

impl Cluster {
    fn next_id(&mut self) -> u64 {
        self.counter += 1;
        self.counter
    }

    fn topic_mut(&mut self, name: &str) -> &mut Topic {
        let ordinal = self.topics.len() as u64;
        let partitions = self.partitions.max(1);
        self.topics.entry(name.to_owned()).or_insert_with(|| Topic {
            ordinal,
            log: Vec::new(),
            partitions: vec![Vec::new(); partitions],
            next_keyless: 0,
        })
    }

    /// Creates topic `name` unless it exists.
    pub(super) fn create_topic(&mut self, name: &str) {
        self.topic_mut(name);
    }

    /// Appends `envelope` to `destination` (creating it), wakes the members
    /// that own its partition, and says where it went: (partition, offset).
    pub(super) fn append(&mut self, destination: &str, envelope: Envelope) -> (usize, usize) {
        let topic = self.topic_mut(destination);
        let count = topic.partitions.len();
        let partition = match envelope.partition_key.as_deref() {
            Some(key) => partition_for_key(key.as_bytes(), count),
            None => {
                let p = topic.next_keyless % count;
                topic.next_keyless = (p + 1) % count;
                p
            }
        };
        let at = topic.log.len();
        topic.log.push(envelope);
        let offsets = &mut topic.partitions[partition];
        offsets.push(at);
        let offset = offsets.len() - 1;
        for group in self.groups.values() {
            let owner = group
                .topics
                .get(destination)
                .and_then(|parts| parts.get(partition))
                .and_then(|state| state.owner);
            if let Some(member) = owner.and_then(|o| group.members.get(&o.member)) {
                member.wake.notify_one();
            }
        }
        (partition, offset)
    }

    /// Adds a member reading `destinations` (creating them) to `group`, and
    /// rebalances the group.
    pub(super) fn join(
        &mut self,
        group: &str,
        destinations: &[String],
        wake: Arc<Notify>,
    ) -> MemberId {
        for destination in destinations {
            self.create_topic(destination);
        }
        let id = self.next_id();
        let member = Member {
            destinations: destinations.to_vec(),
            wake,
        };
        self.groups
            .entry(group.to_owned())
            .or_default()
            .members
            .insert(id, member);
        self.rebalance(group);
        id
    }

    /// Removes a member from `group` and rebalances the group; its unsettled
    /// messages come round again to the partitions' next owners.
    pub(super) fn leave(&mut self, group: &str, member: MemberId) {
        let left = self
            .groups
            .get_mut(group)
            .is_some_and(|g| g.members.remove(&member).is_some());
        if left {
            self.rebalance(group);
        }
    }

    /// Splits each topic's partitions among the members reading it
    /// (partition `p` to the `p mod n`-th in join order). A partition that
    /// changes hands starts a new assignment at the committed offset.
    fn rebalance(&mut self, group: &str) {
        let Cluster {
            topics,
            groups,
            counter,
            ..
        } = self;
        let Some(Group {
            members,
            topics: read,
        }) = groups.get_mut(group)
        else {
            return;
        };
        let names: BTreeSet<String> = members
            .values()
            .flat_map(|m| m.destinations.iter().cloned())
            .chain(read.keys().cloned())
            .collect();
        for name in names {
            let readers: Vec<MemberId> = members
                .iter()
                .filter(|(_, m)| m.destinations.contains(&name))
                .map(|(id, _)| *id)
                .collect();
            let count = topics.get(&name).map_or(0, |t| t.partitions.len());
            let partitions = read.entry(name).or_default();
            partitions.resize_with(count, GroupPartition::default);
            for (p, state) in partitions.iter_mut().enumerate() {
                let member = p
                    .checked_rem(readers.len())
                    .and_then(|i| readers.get(i))
                    .copied();
                if state.owner.map(|o| o.member) == member {
                    continue;
                }
                state.owner = member.map(|member| {
                    *counter += 1;
                    Owner {
                        member,
                        epoch: *counter,
                    }
                });
                // The old owner's unsettled messages come round again: the
                // new one starts at the first message not acknowledged.
                state.unsettled = 0;
                state.position = state.committed;
                if let Some(m) = member.and_then(|m| members.get(&m)) {
                    m.wake.notify_one();
                }
            }
        }
    }

    /// The next message for `member` of `group`: from the partition it owns
    /// with the fewest unsettled messages (the longest waiting among equals),
    /// so that its lanes fill evenly; acknowledged messages are skipped.
    pub(super) fn hand_out(&mut self, group: &str, member: MemberId) -> Option<HandOut> {
        let Cluster {
            topics,
            groups,
            counter,
            ..
        } = self;
        let read = &mut groups.get_mut(group)?.topics;
        let mut best: Option<(String, usize, (usize, u64))> = None;
        for (name, partitions) in read.iter_mut() {
            let Some(topic) = topics.get(name) else {
                continue;
            };
            for (p, state) in partitions.iter_mut().enumerate() {
                if state.owner.is_none_or(|o| o.member != member) {
                    continue;
                }
                state.skip_acknowledged();
                let available = topic.partitions.get(p).map_or(0, Vec::len);
                let rank = (state.unsettled, state.turn);
                if state.position < available && best.as_ref().is_none_or(|(_, _, r)| rank < *r) {
                    best = Some((name.clone(), p, rank));
                }
            }
        }
        let (name, partition, _) = best?;
        let topic = topics.get(&name)?;
        let state = read.get_mut(&name)?.get_mut(partition)?;
        let owner = state.owner?;
        let offset = state.position;
        let at = *topic.partitions.get(partition)?.get(offset)?;
        let envelope = topic.log.get(at)?.clone();
        state.position += 1;
        state.unsettled += 1;
        *counter += 1;
        state.turn = *counter;
        let redelivered = offset < state.delivered_to;
        state.delivered_to = state.delivered_to.max(offset + 1);
        Some(HandOut {
            lane: lane(topic.ordinal, partition),
            ticket: Ticket {
                group: group.to_owned(),
                topic: name,
                partition,
                offset,
                owner,
            },
            envelope,
            redelivered,
        })
    }

    /// Records an acknowledgement and moves the committed offset over the
    /// acknowledged run. `false` (nothing recorded) when the partition has
    /// changed hands since the message was handed out.
    pub(super) fn ack(&mut self, ticket: &Ticket) -> bool {
        let Some(state) = self
            .groups
            .get_mut(&ticket.group)
            .and_then(|g| g.topics.get_mut(&ticket.topic))
            .and_then(|parts| parts.get_mut(ticket.partition))
            .filter(|s| s.is_held_by(ticket.owner))
        else {
            return false;
        };
        state.unsettled = state.unsettled.saturating_sub(1);
        if ticket.offset >= state.committed {
            state.acked.insert(ticket.offset);
        }
        while state.acked.remove(&state.committed) {
            state.committed += 1;
        }
        true
    }

    /// Records a release: unless acknowledged meanwhile (another copy), the
    /// partition is rewound to the message. Does nothing when the partition
    /// has changed hands: the new owner starts at the committed offset, which
    /// is not past the message.
    pub(super) fn release(&mut self, ticket: &Ticket) {
        let Some(group) = self.groups.get_mut(&ticket.group) else {
            return;
        };
        let Some(state) = group
            .topics
            .get_mut(&ticket.topic)
            .and_then(|parts| parts.get_mut(ticket.partition))
            .filter(|s| s.is_held_by(ticket.owner))
        else {
            return;
        };
        state.unsettled = state.unsettled.saturating_sub(1);
        let acknowledged = ticket.offset < state.committed || state.acked.contains(&ticket.offset);
        if !acknowledged && ticket.offset < state.position {
            state.position = ticket.offset;
            if let Some(member) = group.members.get(&ticket.owner.member) {
                member.wake.notify_one();
            }
        }
    }

    /// How many messages `destination` holds.
    pub(super) fn published(&self, destination: &str) -> usize {
        self.topics.get(destination).map_or(0, |t| t.log.len())
    }

    /// How many messages of `destination` `group` has not acknowledged.
    pub(super) fn pending(&self, group: &str, destination: &str) -> usize {
        let published = self.published(destination);
        let Some(partitions) = self
            .groups
            .get(group)
            .and_then(|g| g.topics.get(destination))
        else {
            return published;
        };
        let acknowledged: usize = partitions.iter().map(|s| s.committed + s.acked.len()).sum();
        published.saturating_sub(acknowledged)
    }

    /// Every message of `destination`, in publication order.
    pub(super) fn messages(&self, destination: &str) -> Vec<Envelope> {
        self.topics
            .get(destination)
            .map_or_else(Vec::new, |t| t.log.clone())
    }

    /// The committed offset of each partition of `destination` for `group`.
    pub(super) fn committed(&self, group: &str, destination: &str) -> Vec<usize> {
        let count = self
            .topics
            .get(destination)
            .map_or(0, |t| t.partitions.len());
        let states = self
            .groups
            .get(group)
            .and_then(|g| g.topics.get(destination));
        (0..count)
            .map(|p| {
                states
                    .and_then(|s| s.get(p))
                    .map_or(0, |state| state.committed)
            })
            .collect()
    }

    /// The (topic, partition) pairs `member` of `group` owns, sorted.
    pub(super) fn assignment(&self, group: &str, member: MemberId) -> Vec<(String, usize)> {
        let mut owned: Vec<(String, usize)> = self
            .groups
            .get(group)
            .into_iter()
            .flat_map(|g| g.topics.iter())
            .flat_map(|(name, parts)| {
                parts
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| s.owner.is_some_and(|o| o.member == member))
                    .map(move |(p, _)| (name.clone(), p))
            })
            .collect();
        owned.sort();
        owned
    }
}

/// `n` as a `usize` (partition counts are at most `i32::MAX`).
pub(super) fn to_usize(n: u32) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// The lane of a (topic, partition): unique within a broker, as topics are
/// numbered and a partition number fits in 32 bits.
fn lane(ordinal: u64, partition: usize) -> u64 {
    (ordinal << 32) | (partition as u64 & 0xffff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(key: Option<&str>) -> Envelope {
        let mut e = Envelope::new("urn:test", "t", b"{}".to_vec());
        e.partition_key = key.map(str::to_owned);
        e
    }

    /// A cluster with one single-partition topic `t`, one member of group `g`
    /// and `n` messages.
    fn one_partition(n: usize) -> (Cluster, MemberId) {
        let mut c = Cluster {
            partitions: 1,
            ..Cluster::default()
        };
        let member = c.join("g", &["t".to_owned()], Arc::new(Notify::new()));
        for _ in 0..n {
            c.append("t", envelope(Some("k")));
        }
        (c, member)
    }

    fn offsets(tickets: &[HandOut]) -> Vec<usize> {
        tickets.iter().map(|h| h.ticket.offset).collect()
    }

    #[test]
    fn keyless_messages_go_round_robin() {
        let mut c = Cluster::default();
        let partitions: Vec<usize> = (0..8).map(|_| c.append("t", envelope(None)).0).collect();
        assert_eq!(partitions, vec![0, 1, 2, 3, 0, 1, 2, 3]);
    }

    #[test]
    fn the_committed_offset_moves_only_over_contiguous_acks() {
        let (mut c, member) = one_partition(4);
        let handed: Vec<HandOut> = std::iter::from_fn(|| c.hand_out("g", member)).collect();
        assert_eq!(offsets(&handed), vec![0, 1, 2, 3]);
        assert!(c.ack(&handed[1].ticket));
        assert!(c.ack(&handed[2].ticket));
        assert_eq!(c.committed("g", "t"), vec![0]);
        assert_eq!(c.pending("g", "t"), 2);
        assert!(c.ack(&handed[0].ticket));
        assert_eq!(c.committed("g", "t"), vec![3]);
        assert!(c.ack(&handed[3].ticket));
        assert_eq!(c.committed("g", "t"), vec![4]);
        assert_eq!(c.pending("g", "t"), 0);
    }

    #[test]
    fn a_release_rewinds_past_acknowledged_messages_only() {
        let (mut c, member) = one_partition(4);
        let handed: Vec<HandOut> = std::iter::from_fn(|| c.hand_out("g", member)).collect();
        assert!(handed.iter().all(|h| !h.redelivered));
        c.release(&handed[1].ticket);
        // A later release does not move the rewind forward.
        c.release(&handed[3].ticket);
        assert!(c.ack(&handed[2].ticket));
        assert!(c.ack(&handed[0].ticket));
        let again: Vec<HandOut> = std::iter::from_fn(|| c.hand_out("g", member)).collect();
        assert_eq!(offsets(&again), vec![1, 3], "2 was acknowledged");
        assert!(again.iter().all(|h| h.redelivered));
        assert_eq!(c.committed("g", "t"), vec![1], "nothing commits past 1");
        assert!(c.ack(&again[0].ticket));
        assert_eq!(c.committed("g", "t"), vec![3]);
    }

    #[test]
    fn settle_handles_of_a_moved_partition_do_not_count() {
        let (mut c, first) = one_partition(3);
        let old = c.hand_out("g", first).expect("a message");
        c.leave("g", first);
        let second = c.join("g", &["t".to_owned()], Arc::new(Notify::new()));
        let new = c.hand_out("g", second).expect("the message again");
        assert_eq!(new.ticket.offset, 0);
        assert!(new.redelivered);
        assert!(!c.ack(&old.ticket), "the old owner's ack does not count");
        assert_eq!(c.committed("g", "t"), vec![0]);
        c.release(&old.ticket);
        let next = c.hand_out("g", second).expect("the next message");
        assert_eq!(
            next.ticket.offset, 1,
            "the old owner's release did not rewind"
        );
        assert!(c.ack(&new.ticket));
        assert_eq!(c.committed("g", "t"), vec![1]);
    }

    #[test]
    fn members_split_partitions_and_lanes_are_unique() {
        let mut c = Cluster::default();
        c.create_topic("a");
        let topics = ["a".to_owned(), "b".to_owned()];
        let one = c.join("g", &topics, Arc::new(Notify::new()));
        let two = c.join("g", &topics, Arc::new(Notify::new()));
        let owned = |c: &Cluster, m| c.assignment("g", m);
        assert_eq!(
            owned(&c, one),
            vec![
                ("a".to_owned(), 0),
                ("a".to_owned(), 2),
                ("b".to_owned(), 0),
                ("b".to_owned(), 2)
            ]
        );
        assert_eq!(owned(&c, two).len(), 4);
        let lanes: BTreeSet<u64> = (0..2)
            .flat_map(|t| (0..4).map(move |p| lane(t, p)))
            .collect();
        assert_eq!(lanes.len(), 8);
    }
}
