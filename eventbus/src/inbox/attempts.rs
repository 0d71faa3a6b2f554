//! Durable attempt counts: the `<inbox>_attempts` table, one row per message a
//! consumer group has started handling and not yet finished (handled or
//! dead-lettered), keyed like the inbox ([`InboxKey`]).
//!
//! An effectively-once consumer counts every attempt here, in a short
//! transaction of its own, *before* its handler runs. A message whose handler
//! kills the process (abort, out of memory) leaves its count behind, so the
//! next process to receive it knows how often it was tried and dead-letters it
//! once the retry policy's attempts are used up, instead of running it again
//! forever.

use crate::envelope::Envelope;
use crate::error::Result;
use crate::table::TableName;

/// The suffix of the attempts table's name: `eventbus_inbox_attempts` next to
/// `eventbus_inbox`.
pub const ATTEMPTS_SUFFIX: &str = "_attempts";

/// A step of the savepoint each message of a group commit is handled in
/// (see [`ConsumerBuilder::group_commit`](crate::consumer::ConsumerBuilder::group_commit)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Savepoint {
    /// `SAVEPOINT`: before the message's inbox row and handler.
    Set,
    /// `RELEASE SAVEPOINT`: the message is done; it commits with the group.
    Release,
    /// `ROLLBACK TO SAVEPOINT`: the handler failed; nothing of it stays.
    RollBack,
}

impl Savepoint {
    /// The statement, the same on every supported database.
    pub fn sql(self) -> &'static str {
        match self {
            Savepoint::Set => "SAVEPOINT eventbus_group_message",
            Savepoint::Release => "RELEASE SAVEPOINT eventbus_group_message",
            Savepoint::RollBack => "ROLLBACK TO SAVEPOINT eventbus_group_message",
        }
    }
}

/// A database that keeps durable attempt counts next to the inbox (table
/// `<inbox>_attempts`, created by the migrations). Implemented for each
/// compiled-in backend.
#[async_trait::async_trait]
pub trait AttemptsDatabase: sqlx::Database {
    /// Counts one more attempt at `envelope` by `consumer`, in one statement
    /// on `conn` (which commits by itself unless `conn` is in a transaction:
    /// a batch counts its messages in one), and returns the attempts recorded
    /// so far, this one included.
    async fn record_attempt(
        conn: &mut Self::Connection,
        inbox: &TableName,
        consumer: &str,
        envelope: &Envelope,
    ) -> Result<u32>;

    /// Takes back one attempt at `envelope` counted by
    /// [`record_attempt`](Self::record_attempt) that will not run yet (the
    /// consumer waits to run it alone).
    async fn uncount_attempt(
        conn: &mut Self::Connection,
        inbox: &TableName,
        consumer: &str,
        envelope: &Envelope,
    ) -> Result<()>;

    /// Notes why the latest attempt at `envelope` failed.
    async fn note_failure(
        pool: &sqlx::Pool<Self>,
        inbox: &TableName,
        consumer: &str,
        envelope: &Envelope,
        reason: &str,
    ) -> Result<()>;

    /// The last failure noted for `envelope`, if any.
    async fn last_failure(
        pool: &sqlx::Pool<Self>,
        inbox: &TableName,
        consumer: &str,
        envelope: &Envelope,
    ) -> Result<Option<String>>;

    /// Deletes the count of `envelope` on `conn` (inside the transaction that
    /// records it in the inbox, so both commit together).
    async fn forget_attempts(
        conn: &mut Self::Connection,
        inbox: &TableName,
        consumer: &str,
        envelope: &Envelope,
    ) -> Result<()>;

    /// Runs `step` of a group commit's per-message savepoint on `conn`,
    /// which is in the group's transaction.
    async fn savepoint(conn: &mut Self::Connection, step: Savepoint) -> Result<()>;
}
