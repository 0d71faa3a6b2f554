//! [`SchemaError`]: what can go wrong registering, exporting or checking schemas.

use std::path::PathBuf;

/// A registry conflict, an unusable event type name, or a schema directory that
/// cannot be read or written. A backward-incompatible change is not an error:
/// it is a failing [`CheckReport`](super::CheckReport).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SchemaError {
    /// Two Rust types claim the same event type and version with different
    /// schemas or destinations: one of them would misread the other's messages.
    #[error(
        "event `{event_type}` v{version} is registered twice with different schemas or \
         destinations, by `{first}` and by `{second}`; give one of them a new version or type"
    )]
    Conflict {
        /// The CloudEvents type.
        event_type: String,
        /// The schema version.
        version: u32,
        /// The Rust type registered first.
        first: String,
        /// The Rust type that conflicts with it.
        second: String,
    },
    /// The event type cannot be used as a directory name.
    #[error("event type `{event_type}` cannot name a schema directory: {reason}")]
    InvalidEventType {
        /// The CloudEvents type.
        event_type: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The schema directory to check against does not exist.
    #[error(
        "schema directory `{}` does not exist; export the schemas into it first",
        path.display()
    )]
    SnapshotMissing {
        /// The directory.
        path: PathBuf,
    },
    /// Reading or writing a file or directory failed.
    #[error("cannot access `{}`: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A file in the schema directory is not a schema this crate exported.
    #[error("`{}` is not a valid schema file: {reason}", path.display())]
    InvalidSnapshot {
        /// The file or directory.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// An upcaster that cannot be part of a chain: from version 0, from the
    /// event's current version or above, or a second one from the same version.
    #[error("invalid upcaster of `{event_type}` from v{from}: {reason}")]
    InvalidUpcaster {
        /// The CloudEvents type.
        event_type: String,
        /// The version the upcaster starts from.
        from: u32,
        /// What is wrong with it.
        reason: String,
    },
}

impl SchemaError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> SchemaError {
        let path = path.into();
        move |source| SchemaError::Io { path, source }
    }
}
