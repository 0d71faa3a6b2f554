//! [`RelayStore`]: what the relay needs from the database holding the outbox —
//! membership, partition leases, claiming, acknowledging — one impl per backend.

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
    async fn renew(&self, relay: Uuid, partitions: &[i32], ttl: Duration) -> Result<Vec<i32>>;

    /// Takes the leases among `partitions` that are free or expired; returns
    /// those acquired.
    async fn acquire(&self, relay: Uuid, partitions: &[i32], ttl: Duration) -> Result<Vec<i32>>;

    /// Gives up the leases among `partitions`.
    async fn release(&self, relay: Uuid, partitions: &[i32]) -> Result<()>;

    /// Removes this relay from the membership list (clean shutdown).
    async fn deregister(&self, relay: Uuid) -> Result<()>;

    /// Up to `limit` publishable rows of `partitions`, in id order: committed
    /// with no older transaction still open, due for an attempt, and not behind a
    /// failed or retrying row of the same key.
    async fn claim(&self, relay: Uuid, partitions: &[i32], limit: u32)
        -> Result<Vec<OutboxRecord>>;

    /// Deletes or marks published the acknowledged rows; returns how many.
    async fn acknowledge(&self, relay: Uuid, ids: &[i64], retention: Retention) -> Result<u64>;

    /// Records failed attempts (and parks rows) for rejected rows.
    async fn reject(&self, relay: Uuid, rejections: &[Rejection]) -> Result<()>;

    /// Backlog statistics of `partitions`.
    async fn stats(&self, partitions: &[i32]) -> Result<Snapshot>;

    /// Deletes up to `batch` rows published longer ago than `keep`.
    async fn delete_published(&self, keep: Duration, batch: i64) -> Result<u64>;

    /// Wakes `notify` whenever new rows are committed, for as long as it runs.
    /// Backends without notifications return at once; the relay then polls.
    async fn listen(&self, notify: Arc<Notify>) -> Result<()>;
}
