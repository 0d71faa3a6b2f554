//! The log-based relay's PostgreSQL side (ADR 15,
//! `docs/adr/0015-log-based-relay.md`): the outbox's inserts
//! read from the write-ahead log through `pgoutput`, in commit order.
//!
//! Built in steps (`docs/design/log-relay-plan.md`); until the relay streams
//! from a slot, this is reached only through the functions re-exported here, which the
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

pub(crate) use lsn::Lsn;
pub use peek::peek_outbox_records;
pub use publication::ensure_publication;
pub use slot::{slot_status, SlotLock, SlotStatus};
