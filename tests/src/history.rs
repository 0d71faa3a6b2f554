//! Histories of the relay's promise — what writers committed, what the
//! broker delivered — and the checker that decides, afterwards and on its
//! own, whether a history keeps it: per key, every committed event is
//! delivered, in commit order.
//!
//! Commit order per key is the order of the aggregate's writes: each writer
//! locks its aggregate's row and takes the next `seq`, so `seq` order is
//! commit order. Duplicates are allowed as redelivery (at least once), but a
//! redelivery may never take a key back: the *last* delivery of each event
//! must also be in commit order, or a compacted topic or a last-value
//! consumer ends on an older event.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

/// One event in a history: its key, its place in the key's commit order,
/// and its identity (the CloudEvents id).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Event {
    /// The ordering key (the aggregate).
    pub key: String,
    /// Position in the key's commit order.
    pub seq: u64,
    /// The event's id.
    pub id: String,
}

impl Event {
    /// The event `seq` of `key` with id `id`.
    pub fn new(key: impl Into<String>, seq: u64, id: impl Into<String>) -> Self {
        Event {
            key: key.into(),
            seq,
            id: id.into(),
        }
    }
}

/// What clients did and what they saw.
#[derive(Debug, Clone, Default)]
pub struct History {
    /// Every committed write, in any order (aborted writes are left out).
    pub committed: Vec<Event>,
    /// What the broker delivered, in delivery order per key.
    pub delivered: Vec<Event>,
}

/// Something a history shows that the promise forbids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Anomaly {
    /// A committed event was never delivered.
    Lost {
        /// Its key.
        key: String,
        /// Its position.
        seq: u64,
    },
    /// A delivered event no writer committed (a rolled-back write, or one
    /// whose key or position changed on the way).
    Phantom(Event),
    /// First deliveries out of commit order: `later` reached consumers before
    /// `earlier`.
    Reordered {
        /// The key.
        key: String,
        /// The event committed first.
        earlier: u64,
        /// The event committed after it but first delivered before it.
        later: u64,
    },
    /// Last deliveries out of commit order: `earlier` was delivered (again)
    /// after the last delivery of `later`, so a compacted view ends on it.
    Rewound {
        /// The key.
        key: String,
        /// The event committed first, delivered last.
        earlier: u64,
        /// The event committed after it.
        later: u64,
    },
    /// Two committed writes claim the same position of a key: the writers'
    /// own bookkeeping is broken, and the history proves nothing.
    Conflict {
        /// The key.
        key: String,
        /// The position.
        seq: u64,
    },
}

/// The checker's findings on one history.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Every anomaly, per key in key order.
    pub anomalies: Vec<Anomaly>,
    /// Deliveries of an event after its first one (redeliveries).
    pub duplicates: usize,
    /// Committed events.
    pub committed: usize,
    /// Deliveries.
    pub delivered: usize,
}

impl Verdict {
    /// Whether the history keeps the whole promise: nothing lost or invented,
    /// first and last deliveries in commit order per key.
    pub fn is_valid(&self) -> bool {
        self.anomalies.is_empty()
    }

    /// Whether the history keeps the promise as a compacted view sees it:
    /// nothing lost or invented, last deliveries in commit order. First
    /// deliveries may be out of order (a pipelined batch whose earlier
    /// message failed after later ones reached the broker).
    pub fn keeps_last_values(&self) -> bool {
        self.anomalies
            .iter()
            .all(|a| matches!(a, Anomaly::Reordered { .. }))
    }

    /// The lost events, as (key, seq).
    pub fn lost(&self) -> Vec<(String, u64)> {
        self.anomalies
            .iter()
            .filter_map(|a| match a {
                Anomaly::Lost { key, seq } => Some((key.clone(), *seq)),
                _ => None,
            })
            .collect()
    }

    /// The reordered first deliveries, as (key, earlier, later).
    pub fn reordered(&self) -> Vec<(String, u64, u64)> {
        self.anomalies
            .iter()
            .filter_map(|a| match a {
                Anomaly::Reordered {
                    key,
                    earlier,
                    later,
                } => Some((key.clone(), *earlier, *later)),
                _ => None,
            })
            .collect()
    }

    /// The rewound last deliveries, as (key, earlier, later).
    pub fn rewound(&self) -> Vec<(String, u64, u64)> {
        self.anomalies
            .iter()
            .filter_map(|a| match a {
                Anomaly::Rewound {
                    key,
                    earlier,
                    later,
                } => Some((key.clone(), *earlier, *later)),
                _ => None,
            })
            .collect()
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} committed, {} delivered ({} duplicates), {} anomalies",
            self.committed,
            self.delivered,
            self.duplicates,
            self.anomalies.len()
        )?;
        for a in self.anomalies.iter().take(20) {
            match a {
                Anomaly::Lost { key, seq } => write!(f, "\n  lost: {key}#{seq}")?,
                Anomaly::Phantom(e) => {
                    write!(f, "\n  never committed: {}#{} ({})", e.key, e.seq, e.id)?
                }
                Anomaly::Reordered {
                    key,
                    earlier,
                    later,
                } => write!(
                    f,
                    "\n  reordered: {key}#{later} first delivered before {key}#{earlier}"
                )?,
                Anomaly::Rewound {
                    key,
                    earlier,
                    later,
                } => write!(
                    f,
                    "\n  rewound: {key}#{earlier} delivered last, after {key}#{later}"
                )?,
                Anomaly::Conflict { key, seq } => write!(f, "\n  two commits claim {key}#{seq}")?,
            }
        }
        if self.anomalies.len() > 20 {
            write!(f, "\n  … and {} more", self.anomalies.len() - 20)?;
        }
        Ok(())
    }
}

/// Checks `history` against the promise; see [`Verdict`].
pub fn check(history: &History) -> Verdict {
    let mut verdict = Verdict {
        committed: history.committed.len(),
        delivered: history.delivered.len(),
        ..Verdict::default()
    };

    let mut by_id: HashMap<&str, &Event> = HashMap::new();
    let mut positions: BTreeMap<&str, BTreeMap<u64, &Event>> = BTreeMap::new();
    for e in &history.committed {
        by_id.insert(e.id.as_str(), e);
        let key = positions.entry(e.key.as_str()).or_default();
        if key.insert(e.seq, e).is_some() {
            verdict.anomalies.push(Anomaly::Conflict {
                key: e.key.clone(),
                seq: e.seq,
            });
        }
    }

    // Per key: seqs of first deliveries in delivery order, and the position
    // of each event's last delivery.
    let mut first: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    let mut last: BTreeMap<&str, HashMap<u64, usize>> = BTreeMap::new();
    for (at, d) in history.delivered.iter().enumerate() {
        if by_id.get(d.id.as_str()) != Some(&d) {
            verdict.anomalies.push(Anomaly::Phantom(d.clone()));
            continue;
        }
        let seen = last.entry(d.key.as_str()).or_default();
        if seen.insert(d.seq, at).is_some() {
            verdict.duplicates += 1;
        } else {
            first.entry(d.key.as_str()).or_default().push(d.seq);
        }
    }

    for (key, committed) in &positions {
        let delivered = last.get(key);
        for seq in committed.keys() {
            if !delivered.is_some_and(|d| d.contains_key(seq)) {
                verdict.anomalies.push(Anomaly::Lost {
                    key: (*key).to_owned(),
                    seq: *seq,
                });
            }
        }
        if let Some(order) = first.get(key) {
            for (earlier, later) in inversions(order) {
                verdict.anomalies.push(Anomaly::Reordered {
                    key: (*key).to_owned(),
                    earlier,
                    later,
                });
            }
        }
        if let Some(at) = delivered {
            let mut by_last: Vec<(usize, u64)> = at.iter().map(|(s, a)| (*a, *s)).collect();
            by_last.sort_unstable();
            let order: Vec<u64> = by_last.into_iter().map(|(_, s)| s).collect();
            for (earlier, later) in inversions(&order) {
                verdict.anomalies.push(Anomaly::Rewound {
                    key: (*key).to_owned(),
                    earlier,
                    later,
                });
            }
        }
    }
    verdict
}

/// For each element smaller than one before it: (that element, the largest
/// one before it).
fn inversions(order: &[u64]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut highest: Option<u64> = None;
    for &seq in order {
        match highest {
            Some(h) if seq < h => out.push((seq, h)),
            _ => highest = Some(seq),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(key: &str, seq: u64) -> Event {
        Event::new(key, seq, format!("{key}-{seq}"))
    }

    /// Keys `a` (0..4) and `b` (0..3), committed.
    fn committed() -> Vec<Event> {
        let mut out: Vec<Event> = (0..4).map(|s| ev("a", s)).collect();
        out.extend((0..3).map(|s| ev("b", s)));
        out
    }

    fn history(delivered: &[(&str, u64)]) -> History {
        History {
            committed: committed(),
            delivered: delivered.iter().map(|(k, s)| ev(k, *s)).collect(),
        }
    }

    #[test]
    fn an_interleaved_history_in_order_is_valid() {
        let v = check(&history(&[
            ("a", 0),
            ("b", 0),
            ("a", 1),
            ("a", 2),
            ("b", 1),
            ("b", 2),
            ("a", 3),
        ]));
        assert!(v.is_valid(), "{v}");
        assert_eq!((v.committed, v.delivered, v.duplicates), (7, 7, 0));
    }

    #[test]
    fn redelivering_a_suffix_is_a_duplicate_not_an_anomaly() {
        let v = check(&history(&[
            ("a", 0),
            ("a", 1),
            ("a", 2),
            ("b", 0),
            ("a", 1),
            ("a", 2),
            ("a", 3),
            ("b", 1),
            ("b", 2),
        ]));
        assert!(v.is_valid(), "{v}");
        assert_eq!(v.duplicates, 2);
    }

    #[test]
    fn a_lost_event_is_reported() {
        let v = check(&history(&[
            ("a", 0),
            ("a", 1),
            ("a", 3),
            ("b", 0),
            ("b", 1),
            ("b", 2),
        ]));
        assert!(!v.is_valid());
        assert!(!v.keeps_last_values());
        assert_eq!(v.lost(), [("a".to_owned(), 2)], "{v}");
        assert_eq!(v.anomalies.len(), 1, "{v}");
    }

    #[test]
    fn a_key_never_delivered_is_lost_whole() {
        let v = check(&history(&[("a", 0), ("a", 1), ("a", 2), ("a", 3)]));
        assert_eq!(
            v.lost(),
            [
                ("b".to_owned(), 0),
                ("b".to_owned(), 1),
                ("b".to_owned(), 2)
            ]
        );
    }

    #[test]
    fn a_swapped_pair_is_reported_as_reordered_and_rewound() {
        let v = check(&history(&[
            ("a", 0),
            ("a", 2),
            ("a", 1),
            ("a", 3),
            ("b", 0),
            ("b", 1),
            ("b", 2),
        ]));
        assert_eq!(v.reordered(), [("a".to_owned(), 1, 2)], "{v}");
        assert_eq!(v.rewound(), [("a".to_owned(), 1, 2)], "{v}");
        assert!(v.lost().is_empty());
        assert!(!v.keeps_last_values());
    }

    #[test]
    fn a_late_redelivery_of_an_older_event_rewinds_the_key() {
        // What a relay that acknowledged 1.. while 0 failed produces: 0 is
        // sent again after them.
        let v = check(&history(&[
            ("b", 1),
            ("b", 2),
            ("b", 0),
            ("a", 0),
            ("a", 1),
            ("a", 2),
            ("a", 3),
        ]));
        assert_eq!(
            v.rewound(),
            [("b".to_owned(), 0, 2)],
            "the compacted view ends on b#0: {v}"
        );
        assert_eq!(v.reordered(), [("b".to_owned(), 0, 2)]);
    }

    #[test]
    fn a_pipelined_batch_sent_again_from_its_failure_keeps_last_values() {
        // a#1 failed after a#2 and a#3 reached the broker; all three were
        // sent again in order.
        let v = check(&history(&[
            ("a", 0),
            ("a", 2),
            ("a", 3),
            ("a", 1),
            ("a", 2),
            ("a", 3),
            ("b", 0),
            ("b", 1),
            ("b", 2),
        ]));
        assert!(!v.is_valid(), "first deliveries are out of order");
        assert_eq!(v.reordered(), [("a".to_owned(), 1, 3)]);
        assert!(v.keeps_last_values(), "{v}");
        assert_eq!(v.duplicates, 2);
    }

    #[test]
    fn an_event_never_committed_is_a_phantom() {
        let mut h = history(&[
            ("a", 0),
            ("a", 1),
            ("a", 2),
            ("a", 3),
            ("b", 0),
            ("b", 1),
            ("b", 2),
        ]);
        // A rolled-back write that took the same position as a later commit.
        h.delivered.insert(1, Event::new("a", 1, "rolled-back"));
        let v = check(&h);
        assert_eq!(
            v.anomalies,
            [Anomaly::Phantom(Event::new("a", 1, "rolled-back"))]
        );
        assert!(!v.keeps_last_values());
    }

    #[test]
    fn two_commits_at_one_position_are_a_conflict() {
        let mut h = history(&[
            ("a", 0),
            ("a", 1),
            ("a", 2),
            ("a", 3),
            ("b", 0),
            ("b", 1),
            ("b", 2),
        ]);
        h.committed.push(Event::new("b", 2, "other"));
        let v = check(&h);
        assert!(v.anomalies.contains(&Anomaly::Conflict {
            key: "b".into(),
            seq: 2
        }));
    }

    #[test]
    fn the_verdict_names_each_anomaly() {
        let v = check(&history(&[
            ("a", 1),
            ("a", 0),
            ("a", 3),
            ("b", 0),
            ("b", 1),
        ]));
        let text = v.to_string();
        assert!(text.contains("lost: a#2"), "{text}");
        assert!(text.contains("lost: b#2"), "{text}");
        assert!(
            text.contains("reordered: a#1 first delivered before a#0"),
            "{text}"
        );
    }
}
