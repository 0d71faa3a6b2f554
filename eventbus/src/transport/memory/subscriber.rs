//! [`MemorySubscriber`]: a member of a consumer group of a
//! [`MemoryBroker`](super::MemoryBroker), and the settle handles of the
//! messages it hands out.

use std::fmt;
use std::sync::Arc;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use super::cluster::{HandOut, MemberId, Shared, Ticket};
use crate::error::{Error, Result};
use crate::transport::{MessageInfo, Received, Settle, Subscriber, TransportError};

/// How many unsettled messages a [`MemorySubscriber`] holds at most, unless
/// [`MemorySubscriber::max_unacked`] says otherwise.
pub const DEFAULT_MAX_UNACKED: usize = 256;

/// A member of a consumer group of a [`MemoryBroker`](super::MemoryBroker);
/// made by [`MemoryBroker::subscribe`](super::MemoryBroker::subscribe).
///
/// Hands out the messages of the partitions it owns, each partition in offset
/// order as one [`Received::lane`], taking partitions in turn. Close it (or
/// drop it) to leave the group: its partitions, and its unsettled messages,
/// go to the other members.
pub struct MemorySubscriber {
    shared: Arc<Shared>,
    group: String,
    destinations: Vec<String>,
    /// `None` once closed.
    member: Option<MemberId>,
    /// Told by publishers, rebalances and releases when there may be a
    /// message for this member.
    wake: Arc<Notify>,
    /// One permit per message that may be handed out and not settled.
    unacked: Arc<Semaphore>,
    max_unacked: usize,
}

impl MemorySubscriber {
    pub(super) fn join(shared: Arc<Shared>, group: &str, destinations: &[&str]) -> Self {
        let mut unique: Vec<String> = Vec::with_capacity(destinations.len());
        for destination in destinations {
            if !unique.iter().any(|d| d == destination) {
                unique.push((*destination).to_owned());
            }
        }
        let wake = Arc::new(Notify::new());
        let member = shared.lock().join(group, &unique, Arc::clone(&wake));
        MemorySubscriber {
            shared,
            group: group.to_owned(),
            destinations: unique,
            member: Some(member),
            wake,
            unacked: Arc::new(Semaphore::new(DEFAULT_MAX_UNACKED)),
            max_unacked: DEFAULT_MAX_UNACKED,
        }
    }

    /// At most `n` messages (at least 1; default [`DEFAULT_MAX_UNACKED`]) are
    /// handed out and not settled; [`Subscriber::next`] waits while the bound
    /// is reached. Set it before the first `next`.
    #[must_use]
    pub fn max_unacked(mut self, n: usize) -> Self {
        let n = n.clamp(1, Semaphore::MAX_PERMITS);
        self.unacked = Arc::new(Semaphore::new(n));
        self.max_unacked = n;
        self
    }

    /// The consumer group.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// The destinations this member reads.
    pub fn destinations(&self) -> &[String] {
        &self.destinations
    }

    /// The (destination, partition) pairs this member owns now, sorted; empty
    /// once closed.
    pub fn assignment(&self) -> Vec<(String, i32)> {
        let Some(member) = self.member else {
            return Vec::new();
        };
        self.shared
            .lock()
            .assignment(&self.group, member)
            .into_iter()
            .map(|(topic, p)| (topic, i32::try_from(p).unwrap_or(i32::MAX)))
            .collect()
    }

    /// How many messages this subscriber handed out that are not settled yet.
    pub fn unsettled(&self) -> usize {
        self.max_unacked - self.unacked.available_permits()
    }

    fn received(&self, out: HandOut, permit: OwnedSemaphorePermit) -> Received {
        let HandOut {
            ticket,
            lane,
            envelope,
            redelivered,
        } = out;
        let mut info = MessageInfo::new("memory");
        info.partition = i32::try_from(ticket.partition).ok();
        info.offset = i64::try_from(ticket.offset).ok();
        info.key = envelope.partition_key.clone();
        Received {
            destination: ticket.topic.clone(),
            lane,
            body: envelope.data.clone(),
            envelope: Ok(envelope),
            redelivered,
            info,
            settle: Box::new(MemorySettle {
                shared: Arc::clone(&self.shared),
                ticket,
                _permit: permit,
                settled: false,
            }),
        }
    }

    fn leave(&mut self) {
        if let Some(member) = self.member.take() {
            self.shared.lock().leave(&self.group, member);
        }
    }
}

#[async_trait::async_trait]
impl Subscriber for MemorySubscriber {
    async fn next(&mut self) -> Option<Result<Received>> {
        let member = self.member?;
        let permit = Arc::clone(&self.unacked).acquire_owned().await.ok()?;
        loop {
            // The lock is released at the end of the statement, before any wait.
            let out = self.shared.lock().hand_out(&self.group, member);
            if let Some(out) = out {
                return Some(Ok(self.received(out, permit)));
            }
            // `notify_one` leaves a permit when nobody waits, so a wake-up
            // between the look above and this wait is not lost.
            self.wake.notified().await;
        }
    }

    /// Leaves the group. Acknowledgements already made are committed (they
    /// were applied at once); the unsettled messages come round again to the
    /// partitions' next owners, and their settle handles no longer count.
    async fn close(&mut self) -> Result<()> {
        self.leave();
        Ok(())
    }
}

impl Drop for MemorySubscriber {
    fn drop(&mut self) {
        self.leave();
    }
}

impl fmt::Debug for MemorySubscriber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemorySubscriber")
            .field("group", &self.group)
            .field("destinations", &self.destinations)
            .field("member", &self.member)
            .field("max_unacked", &self.max_unacked)
            .finish_non_exhaustive()
    }
}

/// Settles one message handed out by a [`MemorySubscriber`]. Dropped
/// unsettled, it releases the message.
struct MemorySettle {
    shared: Arc<Shared>,
    ticket: Ticket,
    /// The subscriber's in-flight slot, given back when this handle goes.
    _permit: OwnedSemaphorePermit,
    settled: bool,
}

impl MemorySettle {
    fn rewind(&mut self) {
        self.settled = true;
        self.shared.lock().release(&self.ticket);
    }
}

#[async_trait::async_trait]
impl Settle for MemorySettle {
    /// Applied at once, so [`Settle::ack_durably`] is the same.
    ///
    /// # Errors
    ///
    /// [`Error::Subscribe`] ([`TransportError::Unavailable`]) when the partition
    /// moved to another member (or the subscriber closed) since the message
    /// was handed out: the acknowledgement does not count, and the message is
    /// delivered again to the new owner.
    async fn ack(mut self: Box<Self>) -> Result<()> {
        self.settled = true;
        if self.shared.lock().ack(&self.ticket) {
            return Ok(());
        }
        let Ticket {
            group,
            topic,
            partition,
            offset,
            ..
        } = &self.ticket;
        Err(Error::Subscribe(TransportError::Unavailable(
            format!(
            "memory broker, group `{group}`: the acknowledgement of {topic}/{partition} offset \
             {offset} does not count (its partition moved to another member, or the subscriber \
             closed); the message will be delivered again"
        )
            .into(),
        )))
    }

    async fn release(mut self: Box<Self>) -> Result<()> {
        self.rewind();
        Ok(())
    }
}

impl Drop for MemorySettle {
    fn drop(&mut self) {
        if !self.settled {
            self.rewind();
        }
    }
}

impl fmt::Debug for MemorySettle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemorySettle")
            .field("group", &self.ticket.group)
            .field("topic", &self.ticket.topic)
            .field("partition", &self.ticket.partition)
            .field("offset", &self.ticket.offset)
            .finish_non_exhaustive()
    }
}
