//! The crate's error type: [`Error`] and the [`Result`] alias.

use crate::envelope::EnvelopeError;
use crate::transport::{PublishError, TransportError};

/// A specialized `Result` whose error defaults to [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Any error, boxed: what handlers and upcasters return.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong in eventbus.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The database returned an error (connection, query, constraint).
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),

    /// The eventbus tables do not exist in the database.
    #[error(
        "table {table} does not exist: run `outbox-relay migrate` or `eventbus::migrate(&pool)` first"
    )]
    NotMigrated {
        /// The missing table, as configured.
        table: String,
    },

    /// An event could not be serialized to JSON.
    #[error("cannot serialize event of type `{event_type}`: {source}")]
    Serialize {
        /// The CloudEvents type of the event.
        event_type: String,
        /// What serde_json reported.
        #[source]
        source: serde_json::Error,
    },

    /// An event's payload could not be decoded into the requested type.
    #[error("cannot decode payload of event type `{event_type}`: {source}")]
    Deserialize {
        /// The CloudEvents type of the event.
        event_type: String,
        /// What serde_json reported.
        #[source]
        source: serde_json::Error,
    },

    /// An event is larger than the configured limit.
    #[error("event of type `{event_type}` is {size} bytes, more than the limit of {limit} bytes")]
    EventTooLarge {
        /// The CloudEvents type of the event.
        event_type: String,
        /// Size of the serialized payload in bytes.
        size: usize,
        /// The configured limit in bytes.
        limit: usize,
    },

    /// An event's payload does not match its JSON Schema: the outbox refused
    /// to write it (see [`Outbox::validate_payloads`](crate::Outbox::validate_payloads)).
    #[error(transparent)]
    InvalidPayload(#[from] crate::schema::ValidationError),

    /// An event schema or upcaster cannot be registered, or a schema directory
    /// cannot be used.
    #[error(transparent)]
    Schema(#[from] crate::schema::SchemaError),

    /// A CloudEvents envelope is malformed.
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),

    /// Publishing to the broker failed (connecting a publisher, creating a
    /// destination, sending).
    #[error(transparent)]
    Publish(#[from] PublishError),

    /// Receiving from the broker failed: connecting a subscriber, declaring
    /// what it reads from, receiving, acknowledging. Its kind says whether to
    /// retry ([`TransportError::is_retriable`]) or give up
    /// ([`TransportError::is_fatal`]).
    #[error(transparent)]
    Subscribe(TransportError),

    /// Configuration is invalid (bad URL, bad table name, unknown option).
    #[error("invalid configuration: {0}")]
    Config(String),

    /// An operation was called when it cannot run: outside a tokio runtime,
    /// or on a handler's transaction that is already finished.
    #[error("invalid state: {0}")]
    InvalidState(String),

    /// A saga step could not be applied to its instance ([`crate::saga`]);
    /// its transaction was rolled back.
    #[error("saga `{saga}`, instance `{instance}`: {reason}")]
    Saga {
        /// The saga's name.
        saga: String,
        /// The instance's correlation id.
        instance: String,
        /// What went wrong.
        reason: String,
    },

    /// A handler (user code) returned an error; its transaction was rolled back.
    #[error("handler failed: {0}")]
    Handler(#[source] BoxError),
}

impl Error {
    /// Whether this is a unique-constraint violation reported by the database.
    pub fn is_unique_violation(&self) -> bool {
        match self {
            Error::Database(sqlx::Error::Database(db)) => db.is_unique_violation(),
            _ => false,
        }
    }

    /// Whether retrying the same operation later may succeed (connection trouble,
    /// broker unavailable, serialization conflicts).
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Database(e) => is_transient_sqlx(e),
            Error::Publish(e) => e.is_unavailable(),
            Error::Subscribe(e) => e.is_retriable(),
            _ => false,
        }
    }

    /// Whether the broker client reported a failure it cannot recover from
    /// ([`TransportError::Fatal`]): whoever runs it stops rather than retry.
    pub fn is_fatal(&self) -> bool {
        match self {
            Error::Publish(e) | Error::Subscribe(e) => e.is_fatal(),
            _ => false,
        }
    }

    /// A database error from a statement on `table`: an undefined table becomes
    /// [`Error::NotMigrated`], which says what to do about it.
    // Only the database backends run table queries.
    #[cfg_attr(
        not(any(feature = "postgres", feature = "sqlite", feature = "mysql")),
        allow(dead_code)
    )]
    pub(crate) fn from_table_query(e: sqlx::Error, table: &crate::table::TableName) -> Self {
        match &e {
            // 42P01 is PostgreSQL's undefined_table; SQLite ("no such table: t")
            // and MySQL say it in words.
            sqlx::Error::Database(db)
                if db.code().as_deref() == Some("42P01")
                    || db.message().contains("no such table")
                    || db.message().contains("doesn't exist") =>
            {
                Error::NotMigrated {
                    table: table.to_string(),
                }
            }
            _ => Error::Database(e),
        }
    }

    pub(crate) fn config(message: impl Into<String>) -> Self {
        Error::Config(message.into())
    }

    /// See [`Error::InvalidState`].
    pub(crate) fn invalid_state(message: impl Into<String>) -> Self {
        Error::InvalidState(message.into())
    }
}

fn is_transient_sqlx(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Tls(_) => true,
        // 40001 serialization_failure, 40P01 deadlock_detected, 57P01 admin_shutdown,
        // 08xxx connection exceptions.
        sqlx::Error::Database(db) => {
            is_sqlite_busy(db.as_ref())
                || is_mysql_lock_wait(db.as_ref())
                || db.code().is_some_and(|c| {
                    c == "40001" || c == "40P01" || c.starts_with("57P") || c.starts_with("08")
                })
        }
        _ => false,
    }
}

/// SQLite's `SQLITE_BUSY` (5) and `SQLITE_LOCKED` (6), with any extended code:
/// the write lock stayed taken longer than the busy timeout.
#[cfg(feature = "sqlite")]
fn is_sqlite_busy(db: &dyn sqlx::error::DatabaseError) -> bool {
    // Downcast rather than read `code()`: SQLite's numeric codes would be
    // confused with other databases' codes.
    use sqlx::error::DatabaseError as _;
    db.try_downcast_ref::<sqlx::sqlite::SqliteError>()
        .and_then(|e| e.code())
        .and_then(|c| c.parse::<i32>().ok())
        .is_some_and(|c| matches!(c & 0xff, 5 | 6))
}

#[cfg(not(feature = "sqlite"))]
fn is_sqlite_busy(_db: &dyn sqlx::error::DatabaseError) -> bool {
    false
}

/// MySQL's `ER_LOCK_WAIT_TIMEOUT` (1205): a lock stayed taken longer than
/// `innodb_lock_wait_timeout`. Its SQLSTATE is the catch-all `HY000`, so the
/// number tells it apart. (A deadlock, 1213, has SQLSTATE 40001.)
#[cfg(feature = "mysql")]
fn is_mysql_lock_wait(db: &dyn sqlx::error::DatabaseError) -> bool {
    db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
        .is_some_and(|e| e.number() == 1205)
}

#[cfg(not(feature = "mysql"))]
fn is_mysql_lock_wait(_db: &dyn sqlx::error::DatabaseError) -> bool {
    false
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        Error::Database(e)
    }
}
