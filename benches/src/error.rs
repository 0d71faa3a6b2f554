//! [`BenchError`]: what stops a benchmark, with a message that says which
//! service to start or which option to fix.

use std::path::PathBuf;
use std::time::Duration;

/// Everything that can end a workload early.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BenchError {
    /// A service the workload needs does not answer.
    #[error("cannot reach {service} at {url}: {reason}\n  {hint}")]
    Unreachable {
        service: &'static str,
        url: String,
        reason: String,
        hint: &'static str,
    },
    /// A database statement failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// A statement of the W5 peer, on its own sqlx release, failed.
    #[error("peer database: {0}")]
    PeerDatabase(#[from] peer_sqlx::Error),
    /// The eventbus library refused or failed.
    #[error("eventbus: {0}")]
    Eventbus(#[from] eventbus::Error),
    /// A broker refused a message or a declaration.
    #[error("broker: {0}")]
    Broker(String),
    /// Something did not finish in the time allowed.
    #[error("{what}: not done after {after:?}")]
    Timeout { what: String, after: Duration },
    /// The `outbox-relay` child process could not be run or measured.
    #[error("relay process: {0}")]
    Relay(String),
    /// Reading or writing a file.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Drawing a PNG.
    #[error("plot {path}: {message}")]
    Plot { path: PathBuf, message: String },
    /// Encoding the results.
    #[error("results: {0}")]
    Json(#[from] serde_json::Error),
    /// The peer library (outbox-core and friends) failed.
    #[error("peer library: {0}")]
    Peer(String),
    /// A baseline did not write what ours wrote, so their ratio would
    /// compare different work.
    #[error("baseline differs from ours: {0}")]
    BaselineDiffers(String),
    /// A command-line option out of range for the workload.
    #[error("option: {0}")]
    Options(String),
    /// A task of the workload panicked or was cancelled.
    #[error("task: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Results of the harness.
pub(crate) type Result<T, E = BenchError> = std::result::Result<T, E>;

impl BenchError {
    /// An I/O error on `path`.
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        BenchError::Io {
            path: path.into(),
            source,
        }
    }
}

impl From<eventbus::PublishError> for BenchError {
    fn from(e: eventbus::PublishError) -> Self {
        BenchError::Broker(e.to_string())
    }
}

impl From<outbox_core::OutboxError> for BenchError {
    fn from(e: outbox_core::OutboxError) -> Self {
        BenchError::Peer(e.to_string())
    }
}
