//! The log-based relay's PostgreSQL side (ADR 15,
//! `docs/adr/0015-log-based-relay.md`): the outbox's inserts
//! read from the write-ahead log through `pgoutput`, in commit order.
//!
//! Built in steps (`docs/design/log-relay-plan.md`); until the relay streams
//! from a slot, this is reached only through the functions below, which the
//! test suites use to hold the decoder to a real server. Not public API yet:
//! hidden from the docs, and free to change.

// Decoders and positions the stream will use; until it does, parts of them
// are reached from their tests only.
#![cfg_attr(not(test), allow(dead_code))]

mod lsn;
mod peek;
mod pgoutput;
mod publication;
mod record;
mod slot;
mod value;

use sqlx::PgPool;

use crate::error::Result;
use crate::outbox::OutboxRecord;
use crate::TableName;

pub(crate) use lsn::Lsn;
pub use slot::{SlotLock, SlotStatus};

/// Creates (or resets) the publication of `table`'s events and returns its
/// name: inserts only, the outbox's columns only. Needs PostgreSQL 15.
///
/// # Errors
///
/// [`Error::Config`](crate::Error::Config) on an older server or for a table
/// name too long for the publication's; [`Error::Database`](crate::Error::Database)
/// when a statement fails.
pub async fn ensure_publication(pool: &PgPool, table: &TableName) -> Result<String> {
    publication::ensure_publication(pool, table).await
}

/// The inserts into `table` that logical slot `slot` (plugin `pgoutput`)
/// holds for `publication`, in commit order, decoded as the relay decodes
/// them; the slot does not move. Each record's `partition` is 0: the log
/// does not carry the generated column.
///
/// # Errors
///
/// [`Error::Database`](crate::Error::Database) when the slot or publication
/// does not exist; [`Error::InvalidState`](crate::Error::InvalidState) for
/// bytes that are not `pgoutput` or an insert without a readable id.
pub async fn peek_outbox_records(
    pool: &PgPool,
    slot: &str,
    publication: &str,
    table: &TableName,
) -> Result<Vec<OutboxRecord>> {
    peek::peek_outbox_records(pool, slot, publication, table).await
}

/// What PostgreSQL reports of slot `slot` of the current database, with its
/// lag and the WAL it keeps in bytes; `None` when there is no such slot.
///
/// # Errors
///
/// [`Error::Database`](crate::Error::Database) when the query fails.
pub async fn slot_status(pool: &PgPool, slot: &str) -> Result<Option<SlotStatus>> {
    slot::slot_status(pool, slot).await
}
