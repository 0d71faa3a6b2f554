//! The log relay's engine, independent of the database's protocol: which
//! received transactions are done, and so how far the slot may be confirmed
//! ([`position`]). Built in steps (ADR 15, `docs/design/log-relay-plan.md`).

// Used by the stream reader that comes next; until then, by its tests only.
#![cfg_attr(not(test), allow(dead_code))]

mod position;
