//! What a lane awaits after giving messages back to the broker, so that
//! nothing overtakes them.
//!
//! Giving a message back (on shutdown, or when the database cannot be
//! written to park it) puts it back on the broker, which hands it over again
//! behind what it had already sent. Until it comes round, the lane gives
//! back what must not overtake it: on a broker that rewinds (Kafka, the
//! in-memory broker) every later message of the lane, since they all come
//! again after it; on one that gives back a single message (RabbitMQ, SQS),
//! the later messages of its key, and each key given back is awaited on its
//! own however many others were given back meanwhile.
//!
//! The wait is bounded, because the message may never come round to this
//! lane (another member of the group took it, or the broker dropped it): by
//! [`RETURN_WAIT`] of the lane's own waiting, that is idle or giving back.
//! Its time handling other messages does not count: the given-back message
//! comes round behind them, however slowly they are handled (a database that
//! restarts makes each take seconds).

use std::collections::HashMap;
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

/// What a lane's next work is made of, as far as waiting is concerned.
pub(super) trait Arrival {
    /// Whether it holds a message of partition key `key`.
    fn has_key(&self, key: &str) -> bool;
    /// Whether it holds a live copy (one its broker still expects to be
    /// settled) of the event with id `id`.
    fn brings_back(&self, id: &str) -> bool;
}

/// A given-back message awaited, and how much longer.
#[derive(Debug)]
struct Waiting {
    id: String,
    left: Duration,
}

impl Waiting {
    fn new(id: String) -> Self {
        Waiting {
            id,
            left: RETURN_WAIT,
        }
    }
}

/// What one lane awaits.
#[derive(Debug, Default)]
pub(super) struct Awaited {
    /// The first message given back of each key, on a broker that gives back
    /// one message.
    keys: HashMap<String, Waiting>,
    /// The first message given back on a broker that rewinds.
    rewind: Option<Waiting>,
}

impl Awaited {
    /// Records messages given back; for a key already awaited, or behind a
    /// rewind already awaited, the first one given back is what comes first.
    pub(super) fn extend(&mut self, given_back: impl IntoIterator<Item = GivenBack>) {
        for g in given_back {
            if g.rewinds {
                self.rewind.get_or_insert_with(|| Waiting::new(g.id));
            } else if let Some(key) = g.key {
                self.keys.entry(key).or_insert_with(|| Waiting::new(g.id));
            }
        }
    }

    /// Counts `waited` of the lane's waiting against everything awaited;
    /// what has waited long enough is forgotten.
    pub(super) fn charge(&mut self, waited: Duration) {
        let expired = |w: &mut Waiting| {
            w.left = w.left.saturating_sub(waited);
            if w.left.is_zero() {
                tracing::warn!(id = %w.id, "a message given back to the broker did not come round to this lane; what it held back goes on");
            }
            w.left.is_zero()
        };
        if self.rewind.as_mut().is_some_and(expired) {
            self.rewind = None;
        }
        self.keys.retain(|_, w| !expired(w));
    }

    /// Whether `work` must be given back too, because something it holds
    /// would overtake an awaited message; otherwise forgets the awaited
    /// messages it brings back.
    pub(super) fn holds_back(&mut self, work: &impl Arrival) -> bool {
        let behind_rewind = self
            .rewind
            .as_ref()
            .is_some_and(|w| !work.brings_back(&w.id));
        let behind_key = self
            .keys
            .iter()
            .any(|(key, w)| work.has_key(key) && !work.brings_back(&w.id));
        if behind_rewind || behind_key {
            return true;
        }
        self.rewind = None;
        self.keys.retain(|_, w| !work.brings_back(&w.id));
        false
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
        fn has_key(&self, key: &str) -> bool {
            self.messages.iter().any(|(_, k)| *k == key)
        }
        fn brings_back(&self, id: &str) -> bool {
            !self.stale && self.messages.iter().any(|(i, _)| *i == id)
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
        assert!(!awaited.holds_back(&work(&[("a1", "a")])));
        assert!(awaited.holds_back(&work(&[("b1", "b")])), "b still waits");
    }

    #[test]
    fn a_batch_goes_back_if_any_of_its_keys_waits() {
        let mut awaited = Awaited::default();
        // A batch gave back a0 and b0 (b0 behind a0, not started).
        awaited.extend([given("a0", "a", false), given("b0", "b", false)]);
        assert!(awaited.holds_back(&work(&[("c0", "c"), ("b1", "b")])));
        // a0 is back, but with b1 of a key still waiting: all of it goes
        // back, and a0 stays awaited.
        assert!(awaited.holds_back(&work(&[("a0", "a"), ("b1", "b")])));
        assert!(awaited.holds_back(&work(&[("a1", "a")])));
        assert!(!awaited.holds_back(&work(&[("a0", "a"), ("b0", "b")])));
        assert!(!awaited.holds_back(&work(&[("a1", "a"), ("b1", "b")])));
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
    }

    #[test]
    fn time_handling_other_messages_does_not_end_the_wait_but_waiting_does() {
        let mut awaited = Awaited::default();
        awaited.extend([given("a0", "a", false)]);
        // The lane charges only its waiting: just under the bound, still held.
        awaited.charge(RETURN_WAIT - Duration::from_millis(1));
        assert!(awaited.holds_back(&work(&[("a1", "a")])));
        awaited.charge(Duration::from_millis(1));
        assert!(!awaited.holds_back(&work(&[("a1", "a")])), "given up on a0");
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
