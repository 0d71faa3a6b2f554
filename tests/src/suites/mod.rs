//! The integration suites written once for every database: each scenario is
//! generic over [`TestDatabase`](crate::TestDatabase), and each backend's
//! test file (`tests/tests/*_{postgres,sqlite,mysql}.rs`, `relay_kafka.rs`,
//! `consumer_rabbitmq.rs`, …) calls the scenarios that apply to it, so every
//! backend is held to the same assertions.

pub mod commit_order;
pub mod consumer;
pub mod inbox;
pub mod outbox;
pub mod relay;
