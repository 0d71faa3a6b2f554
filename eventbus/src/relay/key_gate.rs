//! [`KeyGate`]: the per-key barrier that keeps a key's rows in order. Once a
//! row of a key cannot go (not yet safe to claim, refused, failed to send),
//! every later row of that key waits behind it, while other keys go on.

use std::collections::{HashMap, HashSet};

use crate::outbox::OutboxRecord;

/// Keys (outbox partition and partition key) stopped in the current pass.
#[derive(Debug, Default)]
pub(crate) struct KeyGate {
    stopped: HashMap<i32, HashSet<String>>,
}

impl KeyGate {
    /// Stops `row`'s key: none of its later rows may pass in this pass.
    pub(crate) fn stop(&mut self, row: &OutboxRecord) {
        let keys = self.stopped.entry(row.partition).or_default();
        if !keys.contains(row.partition_key.as_str()) {
            keys.insert(row.partition_key.clone());
        }
    }

    /// Whether an earlier row of `row`'s key was stopped.
    pub(crate) fn is_stopped(&self, row: &OutboxRecord) -> bool {
        self.stopped
            .get(&row.partition)
            .is_some_and(|keys| keys.contains(row.partition_key.as_str()))
    }

    /// Lets `row` through if `ready` and its key is not stopped; otherwise
    /// stops its key and keeps the row back. Rows must come in id order.
    #[cfg(any(test, feature = "postgres"))]
    pub(crate) fn admit(&mut self, ready: bool, row: &OutboxRecord) -> bool {
        if ready && !self.is_stopped(row) {
            return true;
        }
        self.stop(row);
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(partition: i32, key: &str) -> OutboxRecord {
        OutboxRecord::sample(1, partition, key)
    }

    #[test]
    fn a_key_stays_stopped_behind_its_first_unready_row_and_others_pass() {
        let mut gate = KeyGate::default();
        assert!(gate.admit(true, &row(1, "a")));
        assert!(!gate.admit(false, &row(1, "a")));
        assert!(!gate.admit(true, &row(1, "a")), "behind an unready row");
        assert!(gate.admit(true, &row(1, "b")), "another key");
        assert!(
            gate.admit(true, &row(2, "a")),
            "same key text, other partition"
        );
        assert!(!gate.admit(false, &row(2, "c")));
        assert!(gate.is_stopped(&row(2, "c")));
    }
}
