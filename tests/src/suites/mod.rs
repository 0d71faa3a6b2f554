//! The integration suites written once for every database: each scenario is
//! generic over [`TestDatabase`](crate::TestDatabase), and the table in
//! [`matrix`](mod@crate::matrix) says which scenarios run on which database and
//! broker (each test binary in `tests/tests/` instantiates its row), so every
//! backend is held to the same assertions.

pub mod commit_order;
pub mod consumer;
pub mod inbox;
pub mod outbox;
pub mod pipeline;
pub mod relay;
pub mod saga;
pub mod scheduled;
