//! [`RelayStore`]: what the relay needs from the database holding the outbox —
//! membership, partition leases, claiming, acknowledging — one impl per backend.

#[cfg(any(feature = "mysql", feature = "sqlite"))]
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use uuid::Uuid;

use crate::error::Result;
use crate::outbox::OutboxRecord;

use super::config::Retention;
use super::metrics::Snapshot;

/// The outcome for a row the broker (or the relay's own checks) refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The row.
    pub id: i64,
    /// Park it as `failed` (no attempts left, or a retry cannot help).
    pub park: bool,
    /// Wait this long before the next attempt (ignored when parked).
    pub retry_in: Duration,
    /// Why, stored in `last_error`.
    pub error: String,
}

/// A partition lease as this relay holds it. The epoch grows by one at every
/// acquisition, so it names one tenure: a write carrying it is refused once
/// the partition changed hands, even if it came back to this relay since.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lease {
    /// The logical partition.
    pub partition: i32,
    /// The tenure's epoch (the partitions table's `epoch` column).
    pub epoch: i64,
}

/// How much one claim may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimLimits {
    /// At most this many rows.
    pub rows: u32,
    /// At most this many payload bytes, as measured in the database; the
    /// first row is always claimed, whatever its size.
    pub bytes: u64,
    /// A payload larger than this is not loaded: its row comes back with an
    /// empty payload and a [`defect`](OutboxRecord::defect) naming its size,
    /// and the relay parks it.
    pub max_message_bytes: u64,
}

impl ClaimLimits {
    /// At most `rows` rows, of any size.
    pub fn rows(rows: u32) -> Self {
        ClaimLimits {
            rows,
            bytes: u64::MAX,
            max_message_bytes: u64::MAX,
        }
    }

    /// Whether a payload of `size` bytes is too large to be loaded.
    #[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
    pub(crate) fn withholds(&self, size: u64) -> bool {
        size > self.max_message_bytes
    }

    /// The defect of a row whose payload of `size` bytes was withheld.
    #[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
    pub(crate) fn oversized(&self, size: u64) -> String {
        format!(
            "payload is {size} bytes, more than max_message_bytes = {}: parked without being loaded",
            self.max_message_bytes
        )
    }

    /// The ids of `claimed` (payload sizes `sizes`, in the same order) whose
    /// payloads are to be loaded.
    // PostgreSQL applies the budget in its claim statement.
    #[cfg(any(feature = "mysql", feature = "sqlite"))]
    pub(crate) fn wanted(&self, claimed: &[OutboxRecord], sizes: &[u64]) -> Vec<i64> {
        claimed
            .iter()
            .zip(sizes)
            .filter(|(_, size)| !self.withholds(**size))
            .map(|(r, _)| r.id)
            .collect()
    }

    /// Puts the loaded `payloads` (raw bytes by id) into `claimed`; marks a
    /// withheld row with its size, and a payload that is not UTF-8.
    // PostgreSQL applies the budget in its claim statement.
    #[cfg(any(feature = "mysql", feature = "sqlite"))]
    pub(crate) fn fill(
        &self,
        claimed: &mut [OutboxRecord],
        sizes: &[u64],
        mut payloads: HashMap<i64, Vec<u8>>,
    ) {
        for (record, size) in claimed.iter_mut().zip(sizes) {
            let problem = if self.withholds(*size) {
                self.oversized(*size)
            } else {
                match payloads.remove(&record.id).map(String::from_utf8) {
                    Some(Ok(text)) => {
                        record.payload = text;
                        continue;
                    }
                    Some(Err(e)) => {
                        record.payload = String::from_utf8_lossy(e.as_bytes()).into_owned();
                        format!("payload: not UTF-8 ({})", e.utf8_error())
                    }
                    // Claimed, so still there; if not, never send it empty.
                    None => "payload: the row vanished while being claimed".to_owned(),
                }
            };
            record.defect = Some(match record.defect.take() {
                Some(other) => format!("{other}; {problem}"),
                None => problem,
            });
        }
    }

    /// How many of `sizes` (payload sizes in claim order) fit the byte budget:
    /// at least one, then as long as the running total of loaded payloads
    /// (withheld ones count nothing) stays within `bytes`.
    // PostgreSQL applies the budget in its claim statement.
    #[cfg(any(feature = "mysql", feature = "sqlite"))]
    pub(crate) fn fitting(&self, sizes: impl IntoIterator<Item = u64>) -> usize {
        let mut total = 0u64;
        let mut n = 0usize;
        for size in sizes {
            let loaded = if self.withholds(size) { 0 } else { size };
            total = total.saturating_add(loaded);
            if n > 0 && total > self.bytes {
                break;
            }
            n += 1;
        }
        n
    }
}

/// Leases from `(partition, epoch)` rows.
#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
pub(crate) fn leases(rows: Vec<(i32, i64)>) -> Vec<Lease> {
    rows.into_iter()
        .map(|(partition, epoch)| Lease { partition, epoch })
        .collect()
}

/// Database operations of the relay. Writes that act on rows are fenced: they
/// only touch rows of partitions whose lease this relay still holds.
#[async_trait::async_trait]
pub trait RelayStore: Send + Sync + std::fmt::Debug + 'static {
    /// All logical partitions of the outbox.
    async fn partitions(&self) -> Result<Vec<i32>>;

    /// Records this relay as alive; returns the ids of all live relays, sorted.
    async fn heartbeat(&self, relay: Uuid, name: &str, dead_after: Duration) -> Result<Vec<Uuid>>;

    /// Extends the leases this relay holds among `partitions`; returns those
    /// still held.
    async fn renew(&self, relay: Uuid, partitions: &[i32], ttl: Duration) -> Result<Vec<Lease>>;

    /// Takes the leases among `partitions` that are free or expired; returns
    /// those acquired, each with its new epoch.
    async fn acquire(&self, relay: Uuid, partitions: &[i32], ttl: Duration) -> Result<Vec<Lease>>;

    /// Gives up the leases among `partitions`.
    async fn release(&self, relay: Uuid, partitions: &[i32]) -> Result<()>;

    /// Removes this relay from the membership list (clean shutdown).
    async fn deregister(&self, relay: Uuid) -> Result<()>;

    /// Publishable rows of `partitions`, in id order, within `limits` (rows,
    /// and payload bytes measured in the database before anything is
    /// loaded): committed and safe in commit order (no transaction that could
    /// still add an earlier row of the key is open), due for an attempt, and
    /// not behind a failed, retrying or not yet safe row of the same key. A
    /// row whose payload is over `limits.max_message_bytes` comes without it,
    /// marked with a [`defect`](OutboxRecord::defect) naming its size.
    ///
    /// Rows whose ids are in `skip` are passed over as if they were not
    /// there (they do not count against `limits`): the relay's batches still
    /// in flight or being acknowledged, claimed before and not yet deleted.
    async fn claim(
        &self,
        relay: Uuid,
        partitions: &[i32],
        limits: ClaimLimits,
        skip: &[i64],
    ) -> Result<Vec<OutboxRecord>>;

    /// Deletes or marks published the acknowledged rows; returns how many.
    /// Fenced: only rows of partitions this relay still holds, with a live
    /// lease of the same epoch as in `leases` (the tenure they were claimed in).
    async fn acknowledge(
        &self,
        relay: Uuid,
        leases: &[Lease],
        ids: &[i64],
        retention: Retention,
    ) -> Result<u64>;

    /// Records failed attempts (and parks rows) for rejected rows; fenced as
    /// [`acknowledge`](Self::acknowledge).
    async fn reject(&self, relay: Uuid, leases: &[Lease], rejections: &[Rejection]) -> Result<()>;

    /// Backlog statistics of `partitions`.
    async fn stats(&self, partitions: &[i32]) -> Result<Snapshot>;

    /// Deletes up to `batch` rows published longer ago than `keep`; returns
    /// how many.
    async fn delete_published(&self, keep: Duration, batch: i64) -> Result<u64>;

    /// How many rows were published longer ago than `keep` and are not yet
    /// deleted: the retention clean-up's backlog.
    async fn expired_published(&self, keep: Duration) -> Result<u64>;

    /// Moves up to `limit` scheduled events due at `now` into the outbox, in
    /// one transaction; returns how many. By default there is no scheduled
    /// table and nothing to move.
    async fn release_due(&self, _now: chrono::DateTime<chrono::Utc>, _limit: u32) -> Result<u64> {
        Ok(0)
    }

    /// What waits in the scheduled table (by default nothing).
    async fn scheduled(&self) -> Result<crate::outbox::ScheduledStats> {
        Ok(crate::outbox::ScheduledStats::default())
    }

    /// Wakes `notify` whenever new rows are committed, for as long as it runs.
    /// Backends without notifications return at once; the relay then polls.
    async fn listen(&self, notify: Arc<Notify>) -> Result<()>;
}

#[cfg(all(test, any(feature = "mysql", feature = "sqlite")))]
mod tests {
    use super::*;

    #[test]
    fn the_budget_takes_a_prefix_of_at_least_one_row_and_withheld_rows_count_nothing() {
        let limits = ClaimLimits {
            rows: 100,
            bytes: 10,
            max_message_bytes: 8,
        };
        assert_eq!(limits.fitting([4, 4, 4]), 2);
        assert_eq!(limits.fitting([20, 1]), 2, "withheld, then one more fits");
        assert_eq!(limits.fitting([7, 7]), 1, "always one row");
        assert_eq!(
            limits.fitting([4, 100, 6, 1]),
            3,
            "the oversized one is free"
        );
        assert_eq!(limits.fitting([]), 0);
    }
}
