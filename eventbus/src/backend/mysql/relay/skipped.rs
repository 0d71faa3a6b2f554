//! MySQL's locking claim skips rows another session holds: the rows of a key
//! behind a skipped one wait for the next round ([`behind_skipped`]).

use std::collections::{HashMap, HashSet};

use crate::outbox::OutboxRecord;

/// Drops from `claimed` (in id order) every row behind a row of its key that
/// the locking claim skipped: another session was changing that row, and
/// publishing past it could reorder the key. `claimable` lists the rows a
/// plain read finds publishable, up to the last claimed id.
pub(super) fn behind_skipped(
    claimed: Vec<OutboxRecord>,
    claimable: &[(i64, i32, String)],
) -> Vec<OutboxRecord> {
    let taken: HashSet<i64> = claimed.iter().map(|r| r.id).collect();
    let mut first_skipped: HashMap<(i32, &str), i64> = HashMap::new();
    for (id, partition, key) in claimable {
        if !taken.contains(id) {
            let first = first_skipped
                .entry((*partition, key.as_str()))
                .or_insert(*id);
            *first = (*first).min(*id);
        }
    }
    if first_skipped.is_empty() {
        return claimed;
    }
    claimed
        .into_iter()
        .filter(|r| {
            first_skipped
                .get(&(r.partition, r.partition_key.as_str()))
                .is_none_or(|skipped| r.id < *skipped)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: i64, partition: i32, key: &str) -> OutboxRecord {
        OutboxRecord::sample(id, partition, key)
    }

    #[test]
    fn a_skipped_row_holds_back_only_its_own_key() {
        let claimed = vec![
            row(1, 0, "a"),
            row(3, 0, "b"),
            row(4, 0, "a"),
            row(5, 1, "a"),
        ];
        let claimable = vec![
            (1, 0, "a".to_owned()),
            (2, 0, "a".to_owned()), // skipped: held by another session
            (3, 0, "b".to_owned()),
            (4, 0, "a".to_owned()),
            (5, 1, "a".to_owned()),
        ];
        let kept: Vec<i64> = behind_skipped(claimed, &claimable)
            .iter()
            .map(|r| r.id)
            .collect();
        // Row 4 waits behind row 2; key "a" of partition 1 is another key.
        assert_eq!(kept, [1, 3, 5]);
    }

    #[test]
    fn nothing_skipped_keeps_the_whole_claim() {
        let claimed = vec![row(1, 0, "a"), row(2, 0, "a")];
        let claimable = vec![(1, 0, "a".to_owned()), (2, 0, "a".to_owned())];
        assert_eq!(behind_skipped(claimed, &claimable).len(), 2);
    }
}
