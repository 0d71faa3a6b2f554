//! What a lane awaits after giving messages back to the broker, so that
//! nothing overtakes them.
//!
//! Giving a message back (on shutdown, or when the database cannot be
//! written to park it) puts it back on the broker, which hands it over again
//! behind what it had already sent. Until it comes round, the lane gives
//! back what must not overtake it: on a broker that rewinds (Kafka, the
//! in-memory broker) every later message of the lane, since they all come
//! again after it, in order; on one that gives back a single message
//! (RabbitMQ, SQS), the later messages of its key — and then each of those
//! must come round too before the key goes on. The broker hands them back
//! one by one, as they are given back, so a message of the key published
//! meanwhile can arrive between two of them: the lane keeps, per key, the
//! list of what it gave back, in order, takes a message of the key only when
//! it is the first of that list, and gives back any other one, adding it to
//! the list. Each key is awaited on its own, however many others were given
//! back meanwhile.
//!
//! The wait is bounded, because a message may never come round to this lane
//! (another member of the group took it, or the broker dropped it): by
//! [`RETURN_WAIT`] of the lane's own waiting since the key last moved, that
//! is idle or giving back. Its time handling other messages does not count:
//! the given-back messages come round behind them, however slowly they are
//! handled (a database that restarts makes each take seconds).

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use crate::envelope::Envelope;
use crate::transport::MessageInfo;

/// How long a lane waits, idle or giving back, for a given-back message to
/// come round; after that the broker handed it to another member of the
/// group (or dropped it) and its key goes on.
const RETURN_WAIT: Duration = Duration::from_secs(30);

/// A message a lane gave back to the broker.
#[derive(Debug, Clone)]
pub(super) struct GivenBack {
    /// Its event id.
    id: String,
    /// Its partition key; without one it is ordered with nothing.
    key: Option<String>,
    /// Whether giving it back rewound its partition (Kafka, the in-memory
    /// broker): then every later message of the lane comes again after it.
    rewinds: bool,
}

impl GivenBack {
    /// `envelope`, received as `info` says, given back.
    pub(super) fn of(envelope: &Envelope, info: &MessageInfo) -> Self {
        GivenBack {
            id: envelope.id.clone(),
            key: envelope.partition_key.clone(),
            rewinds: matches!(info.system, "kafka" | "memory"),
        }
    }
}

/// One message of a lane's next work, as far as waiting is concerned.
#[derive(Debug, Clone, Copy)]
pub(super) struct Arrived<'a> {
    /// Its event id.
    pub(super) id: &'a str,
    /// Its partition key.
    pub(super) key: Option<&'a str>,
    /// Whether its broker still expects it to be settled (a copy from a
    /// channel that closed is not: the broker hands it over again).
    pub(super) live: bool,
}

/// What a lane's next work is made of: its messages, in order.
pub(super) trait Arrival {
    /// The messages (those that decoded; the others are ordered with nothing).
    fn arrived(&self) -> Vec<Arrived<'_>>;
}

/// The messages of one key given back, in order, and how much longer the
/// lane waits for the first of them.
#[derive(Debug)]
struct Waiting {
    ids: VecDeque<String>,
    left: Duration,
}

impl Waiting {
    fn new() -> Self {
        Waiting {
            ids: VecDeque::new(),
            left: RETURN_WAIT,
        }
    }
}

/// The first message given back on a rewinding broker, and how much longer
/// the lane waits for it.
#[derive(Debug)]
struct Rewind {
    id: String,
    left: Duration,
}

/// What one lane awaits.
#[derive(Debug, Default)]
pub(super) struct Awaited {
    /// Per key, on a broker that gives back one message: what was given back.
    keys: HashMap<String, Waiting>,
    /// The first message given back on a broker that rewinds.
    rewind: Option<Rewind>,
}

impl Awaited {
    /// Whether nothing given back is awaited.
    pub(super) fn is_empty(&self) -> bool {
        self.keys.is_empty() && self.rewind.is_none()
    }

    /// Records messages the lane handled and then gave back. Each was the
    /// first of its key (or its key awaited nothing), so it goes first.
    pub(super) fn extend(&mut self, given_back: impl IntoIterator<Item = GivenBack>) {
        for g in given_back {
            if g.rewinds {
                if self.rewind.is_none() {
                    self.rewind = Some(Rewind {
                        id: g.id,
                        left: RETURN_WAIT,
                    });
                }
            } else if let Some(key) = g.key {
                let waiting = self.keys.entry(key).or_insert_with(Waiting::new);
                if !waiting.ids.contains(&g.id) {
                    waiting.ids.push_front(g.id);
                }
            }
        }
    }

    /// Counts `waited` of the lane's waiting against everything awaited;
    /// what has waited long enough is forgotten.
    pub(super) fn charge(&mut self, waited: Duration) {
        if let Some(r) = &mut self.rewind {
            r.left = r.left.saturating_sub(waited);
            if r.left.is_zero() {
                tracing::warn!(id = %r.id, "a message given back to the broker did not come round to this lane; what it held back goes on");
                self.rewind = None;
            }
        }
        self.keys.retain(|key, w| {
            w.left = w.left.saturating_sub(waited);
            if w.left.is_zero() {
                tracing::warn!(%key, waiting = w.ids.len(), "messages given back to the broker did not come round to this lane; their key goes on");
            }
            !w.left.is_zero()
        });
    }

    /// Whether `work` must be given back too, because something it holds
    /// would overtake a message given back earlier; if so, what of it is
    /// keyed joins its key's list. Otherwise the given-back messages it
    /// brings back are crossed off.
    pub(super) fn holds_back(&mut self, work: &impl Arrival) -> bool {
        let arrived = work.arrived();
        if let Some(r) = &self.rewind {
            if !arrived.iter().any(|m| m.live && m.id == r.id) {
                // It all comes again after the rewound message.
                return true;
            }
            self.rewind = None;
        }
        if self.takes(&arrived) {
            for m in &arrived {
                let Some(key) = m.key else { continue };
                if let Some(w) = self.keys.get_mut(key) {
                    w.ids.pop_front();
                    w.left = RETURN_WAIT;
                    if w.ids.is_empty() {
                        self.keys.remove(key);
                    }
                }
            }
            return false;
        }
        // Given back: what it holds waits behind what went before.
        for m in &arrived {
            let Some(key) = m.key else { continue };
            let waiting = self.keys.entry(key.to_owned()).or_insert_with(Waiting::new);
            if !waiting.ids.iter().any(|id| id == m.id) {
                waiting.ids.push_back(m.id.to_owned());
            }
        }
        true
    }

    /// Whether every awaited key in `arrived` comes as the next of its list,
    /// in order and live.
    fn takes(&self, arrived: &[Arrived<'_>]) -> bool {
        let mut next: HashMap<&str, usize> = HashMap::new();
        for m in arrived {
            let Some(key) = m.key else { continue };
            let Some(w) = self.keys.get(key) else {
                continue;
            };
            let n = next.entry(key).or_insert(0);
            if !m.live || w.ids.get(*n).is_none_or(|id| id != m.id) {
                return false;
            }
            *n += 1;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A lane's work in a test: `(id, key)` messages, live unless `stale`.
    struct Messages {
        messages: Vec<(&'static str, &'static str)>,
        stale: bool,
    }

    fn work(messages: &[(&'static str, &'static str)]) -> Messages {
        Messages {
            messages: messages.to_vec(),
            stale: false,
        }
    }

    impl Arrival for Messages {
        fn arrived(&self) -> Vec<Arrived<'_>> {
            self.messages
                .iter()
                .map(|(id, key)| Arrived {
                    id,
                    key: Some(key),
                    live: !self.stale,
                })
                .collect()
        }
    }

    fn given(id: &str, key: &str, rewinds: bool) -> GivenBack {
        GivenBack {
            id: id.into(),
            key: Some(key.into()),
            rewinds,
        }
    }

    #[test]
    fn each_key_given_back_waits_for_its_own_message() {
        let mut awaited = Awaited::default();
        awaited.extend([given("a0", "a", false)]);
        awaited.extend([given("b0", "b", false)]);
        // The key given back first is still awaited after another was.
        assert!(awaited.holds_back(&work(&[("a1", "a")])));
        assert!(awaited.holds_back(&work(&[("b1", "b")])));
        assert!(
            !awaited.holds_back(&work(&[("c0", "c")])),
            "other keys flow"
        );
        assert!(!awaited.holds_back(&work(&[("a0", "a")])), "a0 came round");
        assert!(!awaited.holds_back(&work(&[("a1", "a")])), "then a1");
        assert!(awaited.holds_back(&work(&[("b1", "b")])), "b still waits");
    }

    #[test]
    fn a_message_arriving_between_the_given_back_ones_waits_behind_them() {
        // What the soak found: a0 given back, a1 and a2 given back behind it;
        // the broker hands them back one by one, and a3, published
        // meanwhile, arrives between a1 and a2.
        let mut awaited = Awaited::default();
        awaited.extend([given("a0", "a", false)]);
        assert!(awaited.holds_back(&work(&[("a1", "a")])));
        assert!(awaited.holds_back(&work(&[("a2", "a")])));
        assert!(!awaited.holds_back(&work(&[("a0", "a")])));
        assert!(!awaited.holds_back(&work(&[("a1", "a")])));
        assert!(
            awaited.holds_back(&work(&[("a3", "a")])),
            "a3 must not pass a2"
        );
        assert!(!awaited.holds_back(&work(&[("a2", "a")])));
        assert!(!awaited.holds_back(&work(&[("a3", "a")])), "a3 after a2");
        assert!(
            !awaited.holds_back(&work(&[("a4", "a")])),
            "the key is free"
        );
    }

    #[test]
    fn a_message_given_back_again_stays_first() {
        let mut awaited = Awaited::default();
        awaited.extend([given("a0", "a", false)]);
        assert!(awaited.holds_back(&work(&[("a1", "a")])));
        assert!(!awaited.holds_back(&work(&[("a0", "a")])));
        // Its handling failed again: given back again, still ahead of a1.
        awaited.extend([given("a0", "a", false)]);
        assert!(awaited.holds_back(&work(&[("a1", "a")])));
        assert!(!awaited.holds_back(&work(&[("a0", "a")])));
        assert!(!awaited.holds_back(&work(&[("a1", "a")])));
    }

    #[test]
    fn a_batch_goes_back_if_any_of_its_keys_waits() {
        let mut awaited = Awaited::default();
        // A batch gave back a0 and b0 (b0 behind a0, not started).
        awaited.extend([given("a0", "a", false), given("b0", "b", false)]);
        // c0 goes back with b1, so it waits behind itself: c0 first.
        assert!(awaited.holds_back(&work(&[("c0", "c"), ("b1", "b")])));
        assert!(awaited.holds_back(&work(&[("c1", "c")])), "c1 behind c0");
        // a0 is back, but with b1 ahead of b0: all of it goes back.
        assert!(awaited.holds_back(&work(&[("a0", "a"), ("b1", "b")])));
        assert!(!awaited.holds_back(&work(&[("a0", "a"), ("b0", "b")])));
        assert!(!awaited.holds_back(&work(&[("c0", "c"), ("b1", "b")])));
        assert!(!awaited.holds_back(&work(&[("c1", "c")])));
    }

    #[test]
    fn a_stale_copy_does_not_end_the_wait() {
        let mut awaited = Awaited::default();
        awaited.extend([given("a0", "a", false)]);
        let stale = Messages {
            messages: vec![("a0", "a")],
            stale: true,
        };
        assert!(awaited.holds_back(&stale));
        assert!(awaited.holds_back(&work(&[("a1", "a")])));
        assert!(!awaited.holds_back(&work(&[("a0", "a")])));
    }

    #[test]
    fn time_handling_other_messages_does_not_end_the_wait_but_waiting_does() {
        let mut awaited = Awaited::default();
        awaited.extend([given("a0", "a", false)]);
        // The lane charges only its waiting: just under the bound, still held.
        awaited.charge(RETURN_WAIT - Duration::from_millis(1));
        assert!(awaited.holds_back(&work(&[("a1", "a")])));
        awaited.charge(Duration::from_millis(1));
        assert!(!awaited.holds_back(&work(&[("a2", "a")])), "given up on a0");
    }

    #[test]
    fn a_rewind_holds_back_the_whole_lane_until_its_message_is_back() {
        let mut awaited = Awaited::default();
        awaited.extend([given("a0", "a", true)]);
        awaited.extend([given("a1", "a", true)]);
        assert!(awaited.holds_back(&work(&[("b0", "b")])));
        assert!(awaited.holds_back(&work(&[("a1", "a")])), "a0 comes first");
        assert!(!awaited.holds_back(&work(&[("a0", "a")])));
        assert!(!awaited.holds_back(&work(&[("b0", "b")])));
    }

    #[test]
    fn unkeyed_messages_are_awaited_only_after_a_rewind() {
        let mut awaited = Awaited::default();
        awaited.extend([GivenBack {
            id: "x".into(),
            key: None,
            rewinds: false,
        }]);
        assert!(!awaited.holds_back(&work(&[("y", "a")])));
    }
}
