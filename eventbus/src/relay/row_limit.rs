//! How many candidate rows a claim reads.
//!
//! A claim measures every candidate's payload (its compact JSON length)
//! before the byte budget (`claim_bytes`) cuts the batch, so with large
//! payloads reading `batch_size` candidates to send a few dozen costs more
//! than sending them: sizing 1,000 rows of 64 KiB took 580 ms on PostgreSQL,
//! sizing the 64 the budget lets through 41 ms (docs/benchmarks.md, W6). The
//! limit follows what the budget let through in the claim before, and grows
//! back while claims come back full.

use std::sync::atomic::{AtomicU32, Ordering};

/// The row limit of the next claim, between 1 and the batch size.
#[derive(Debug)]
pub(super) struct RowLimit {
    max: u32,
    current: AtomicU32,
}

impl RowLimit {
    /// Starts at `batch_size`.
    pub(super) fn new(batch_size: u32) -> Self {
        let max = batch_size.max(1);
        RowLimit {
            max,
            current: AtomicU32::new(max),
        }
    }

    /// The limit for the next claim.
    pub(super) fn get(&self) -> u32 {
        self.current.load(Ordering::Relaxed)
    }

    /// Learns from a claim that asked for `asked` rows and got `taken`;
    /// `cut_by_bytes` says whether the byte budget may have ended it.
    pub(super) fn observe(&self, asked: u32, taken: usize, cut_by_bytes: bool) {
        let taken = u32::try_from(taken).unwrap_or(u32::MAX);
        let next = if taken >= asked {
            // Full by rows: the budget did not bind; read more next time.
            asked.saturating_mul(2)
        } else if cut_by_bytes {
            // The budget bound: read about what it let through, with room
            // for payloads a little smaller than these.
            taken.saturating_add(taken / 4).saturating_add(1)
        } else {
            // Fewer rows were waiting: nothing learnt about sizes.
            asked
        };
        self.current
            .store(next.clamp(1, self.max), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::RowLimit;

    #[test]
    fn follows_what_the_byte_budget_lets_through_and_grows_back() {
        let limit = RowLimit::new(1_000);
        assert_eq!(limit.get(), 1_000);
        // 64 KiB payloads: 64 rows fit in 4 MiB.
        limit.observe(1_000, 64, true);
        assert_eq!(limit.get(), 81);
        limit.observe(81, 64, true);
        assert_eq!(limit.get(), 81);
        // Smaller payloads again: claims come back full and the limit doubles.
        limit.observe(81, 81, false);
        assert_eq!(limit.get(), 162);
        for _ in 0..4 {
            let asked = limit.get();
            limit.observe(asked, asked as usize, true);
        }
        assert_eq!(limit.get(), 1_000, "never above the batch size");
        // A short backlog teaches nothing.
        limit.observe(1_000, 10, false);
        assert_eq!(limit.get(), 1_000);
        // Never below one row.
        limit.observe(1_000, 0, true);
        assert_eq!(limit.get(), 1);
    }
}
