//! The harness every test of the workspace shares: child processes, ports
//! and HTTP probes, here once for the suites of this crate, the
//! `outbox-relay` tests, the example's tests and the benchmark.
//!
//! | what | where |
//! | --- | --- |
//! | a free port, waiting for a listener | [`port`] |
//! | `GET` on a loopback listener, a Prometheus sample | [`http`] |
//! | a command with a clean environment, signals, a logged child ([`Proc`]), `/proc` figures | [`process`] |
//! | the `outbox-relay` binary as a child with its HTTP port | [`relay_process`] |
//! | the shared services (`DATABASE_URL`, `MYSQL_URL`, `AMQP_URL`, `KAFKA_BROKERS`, `SQS_ENDPOINT`) | [`crate::services`] |
//! | a database per test | [`crate::TestDb`], [`crate::mysql`], [`crate::sqlite`], over [`crate::TestDatabase`] |
//! | private servers to crash or configure: tansu, PostgreSQL, RabbitMQ | [`crate::kafka::start_tansu`], [`crate::postgres_cluster`], [`crate::rabbit_node`] |
//! | proxies that cut or encrypt a broker connection | [`crate::rabbitmq::TcpProxy`], [`crate::tls`] |
//! | which scenario runs on which database and broker | [`crate::matrix`](mod@crate::matrix) |
//!
//! A service that is missing fails the test with a message saying how to
//! provide it (an environment variable to set, a program to install).

pub mod http;
pub mod port;
pub mod process;
pub mod relay_process;
pub mod worker;

pub use http::{http_get, metric, wait_http_ok};
pub use port::{free_port, try_free_port, wait_listening};
pub use process::{
    cli_ok, command, log_dir, output, peak_rss_bytes, report_logs, sibling_binary, sigterm,
    spawn_ready, stop_cleanly, text, try_signal, Proc,
};
pub use relay_process::RelayProcess;
