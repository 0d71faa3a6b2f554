//! What a broker transport reports when it fails: [`TransportError`], its
//! [`TransportErrorKind`] (what the relay and the consumer do about it) and
//! the [`Cause`] it carries (a message, and the client library's error as
//! its source when there is one).

use std::error::Error as StdError;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

/// Why a send, a receive or a settle failed, sorted by what to do about it.
///
/// The relay pauses without counting an attempt on
/// [`Unavailable`](Self::Unavailable) and [`NotSent`](Self::NotSent), counts
/// an attempt against the row on [`Rejected`](Self::Rejected), and stops on
/// [`Fatal`](Self::Fatal). The client library's error (rdkafka, lapin, the
/// AWS SDK), when there is one, is the error's
/// [`source`](std::error::Error::source).
///
/// ```
/// use eventbus::transport::{TransportError, TransportErrorKind};
///
/// let e = TransportError::unavailable_from("cannot reach the broker", std::io::Error::other("refused"));
/// assert_eq!(e.kind(), TransportErrorKind::Unavailable);
/// assert!(e.is_retriable());
/// assert_eq!(e.to_string(), "broker unavailable: cannot reach the broker: refused");
/// assert!(std::error::Error::source(&e).is_some());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TransportError {
    /// The broker as a whole cannot take messages now (down, unreachable, timed
    /// out). Not the message's fault: retry later without counting an attempt.
    Unavailable(Cause),
    /// The broker refused this message (too large, unroutable, not authorized for
    /// this destination, nacked).
    Rejected(Cause),
    /// Not sent at all, to keep per-key order: an earlier message of the same
    /// destination and key in the batch was rejected. Retry later without
    /// counting an attempt.
    NotSent(Cause),
    /// The client cannot go on, and retrying will not help: the broker
    /// refused its credentials, or the client library reports a fatal error
    /// (librdkafka's fatal errors, such as a fenced idempotent producer that
    /// cannot recover). Whoever runs the client stops with this error.
    Fatal(Cause),
}

/// The name publishers use for [`TransportError`]: the relay's
/// [`Publisher`](crate::transport::Publisher) reports its failures with it.
/// Both names are the same type.
pub type PublishError = TransportError;

/// What kind of failure a [`TransportError`] is, without its cause.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TransportErrorKind {
    /// See [`TransportError::Unavailable`].
    Unavailable,
    /// See [`TransportError::Rejected`].
    Rejected,
    /// See [`TransportError::NotSent`].
    NotSent,
    /// See [`TransportError::Fatal`].
    Fatal,
}

impl TransportErrorKind {
    /// A short name, for metrics and span attributes: `broker_unavailable`,
    /// `rejected`, `not_sent`, `fatal`.
    pub fn as_str(self) -> &'static str {
        match self {
            TransportErrorKind::Unavailable => "broker_unavailable",
            TransportErrorKind::Rejected => "rejected",
            TransportErrorKind::NotSent => "not_sent",
            TransportErrorKind::Fatal => "fatal",
        }
    }
}

impl TransportError {
    /// [`Unavailable`](Self::Unavailable) with `context` and the client
    /// library's error `source` (its text follows `context` in the message).
    pub fn unavailable_from(context: impl fmt::Display, source: impl Into<BoxedSource>) -> Self {
        TransportError::Unavailable(Cause::from_source(context, source))
    }

    /// [`Rejected`](Self::Rejected) with `context` and the client library's
    /// error `source`.
    pub fn rejected_from(context: impl fmt::Display, source: impl Into<BoxedSource>) -> Self {
        TransportError::Rejected(Cause::from_source(context, source))
    }

    /// [`Fatal`](Self::Fatal) with `context` and the client library's error
    /// `source`.
    pub fn fatal_from(context: impl fmt::Display, source: impl Into<BoxedSource>) -> Self {
        TransportError::Fatal(Cause::from_source(context, source))
    }

    /// A `kind` error with `cause`.
    pub fn new(kind: TransportErrorKind, cause: impl Into<Cause>) -> Self {
        let cause = cause.into();
        match kind {
            TransportErrorKind::Unavailable => TransportError::Unavailable(cause),
            TransportErrorKind::Rejected => TransportError::Rejected(cause),
            TransportErrorKind::NotSent => TransportError::NotSent(cause),
            TransportErrorKind::Fatal => TransportError::Fatal(cause),
        }
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> TransportErrorKind {
        match self {
            TransportError::Unavailable(_) => TransportErrorKind::Unavailable,
            TransportError::Rejected(_) => TransportErrorKind::Rejected,
            TransportError::NotSent(_) => TransportErrorKind::NotSent,
            TransportError::Fatal(_) => TransportErrorKind::Fatal,
        }
    }

    /// What went wrong: the message and the client library's error.
    pub fn cause(&self) -> &Cause {
        match self {
            TransportError::Unavailable(c)
            | TransportError::Rejected(c)
            | TransportError::NotSent(c)
            | TransportError::Fatal(c) => c,
        }
    }

    /// Whether the broker as a whole is unavailable.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, TransportError::Unavailable(_))
    }

    /// Whether the same operation may succeed later without a change
    /// ([`Unavailable`](Self::Unavailable), [`NotSent`](Self::NotSent)).
    pub fn is_retriable(&self) -> bool {
        matches!(
            self,
            TransportError::Unavailable(_) | TransportError::NotSent(_)
        )
    }

    /// Whether the client cannot go on ([`Fatal`](Self::Fatal)).
    pub fn is_fatal(&self) -> bool {
        matches!(self, TransportError::Fatal(_))
    }
}

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self {
            TransportError::Unavailable(_) => "broker unavailable",
            TransportError::Rejected(_) => "message rejected",
            TransportError::NotSent(_) => "message not sent",
            TransportError::Fatal(_) => "fatal broker error",
        };
        write!(f, "{what}: {}", self.cause())
    }
}

impl StdError for TransportError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.cause().source()
    }
}

/// A client library's error kept as the source of a [`Cause`].
pub type BoxedSource = Box<dyn StdError + Send + Sync + 'static>;

/// What went wrong: a message (already free of secrets) and, when the client
/// library reported one, its error as the source.
///
/// Built from a `String` or `&str` (no source) or with
/// [`Cause::from_source`]. It dereferences to its message, so
/// `cause.contains("unroutable")` reads the text. Two causes are equal when
/// their messages are; the sources are not compared.
#[derive(Clone)]
pub struct Cause {
    message: String,
    // Shared, not boxed: a `TransportError` is cloned (one failure reported
    // for several messages), and the client libraries' errors are not `Clone`.
    source: Option<Arc<dyn StdError + Send + Sync + 'static>>,
}

impl Cause {
    /// `context` followed by the text of `source`, which is kept as the
    /// source.
    pub fn from_source(context: impl fmt::Display, source: impl Into<BoxedSource>) -> Self {
        let source: BoxedSource = source.into();
        Cause {
            message: format!("{context}: {source}"),
            source: Some(Arc::from(source)),
        }
    }

    /// `message` as it is, with `source` kept as the source (for a message
    /// that already says what the source says, e.g. with secrets scrubbed).
    pub fn with_source(message: impl Into<String>, source: impl Into<BoxedSource>) -> Self {
        Cause {
            message: message.into(),
            source: Some(Arc::from(source.into())),
        }
    }

    /// `context` followed by the text of `source` as `scrub` leaves it. The
    /// source is kept only when scrubbing changed nothing: a source whose text
    /// holds a secret must not be reachable through the error.
    // Only the broker transports hold secrets.
    #[cfg_attr(not(any(feature = "kafka", feature = "rabbitmq")), allow(dead_code))]
    pub(crate) fn scrubbed<E>(
        context: impl fmt::Display,
        source: E,
        scrub: impl FnOnce(&str) -> String,
    ) -> Self
    where
        E: StdError + Send + Sync + 'static,
    {
        let text = source.to_string();
        let clean = scrub(&text);
        let message = format!("{context}: {clean}");
        if clean == text {
            Cause::with_source(message, source)
        } else {
            Cause::from(message)
        }
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The client library's error, if there is one.
    pub fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Debug for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The message alone when there is no source, as the `String` it was.
        match &self.source {
            None => fmt::Debug::fmt(&self.message, f),
            Some(source) => f
                .debug_struct("Cause")
                .field("message", &self.message)
                .field("source", source)
                .finish(),
        }
    }
}

impl PartialEq for Cause {
    fn eq(&self, other: &Self) -> bool {
        self.message == other.message
    }
}

impl Eq for Cause {}

impl PartialEq<str> for Cause {
    fn eq(&self, other: &str) -> bool {
        self.message == other
    }
}

impl PartialEq<&str> for Cause {
    fn eq(&self, other: &&str) -> bool {
        self.message == *other
    }
}

impl Deref for Cause {
    type Target = str;

    fn deref(&self) -> &str {
        &self.message
    }
}

impl AsRef<str> for Cause {
    fn as_ref(&self) -> &str {
        &self.message
    }
}

impl From<String> for Cause {
    fn from(message: String) -> Self {
        Cause {
            message,
            source: None,
        }
    }
}

impl From<&str> for Cause {
    fn from(message: &str) -> Self {
        Cause::from(message.to_owned())
    }
}

impl From<Cause> for String {
    fn from(cause: Cause) -> Self {
        cause.message
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_source_is_kept_and_the_text_says_it() {
        let e = TransportError::rejected_from("topic `t`", std::io::Error::other("too large"));
        assert_eq!(e.to_string(), "message rejected: topic `t`: too large");
        let source = StdError::source(&e).expect("a source");
        assert_eq!(source.to_string(), "too large");
        assert!(source.downcast_ref::<std::io::Error>().is_some());
        assert_eq!(e.clone(), e);
        assert!(!e.is_retriable() && !e.is_fatal());
    }

    #[test]
    fn strings_build_causes_without_a_source() {
        let e = PublishError::NotSent("held back".into());
        assert!(StdError::source(&e).is_none());
        assert_eq!(format!("{e:?}"), r#"NotSent("held back")"#);
        assert!(e.cause().contains("held"));
        assert!(e.is_retriable());
        assert_eq!(e.kind().as_str(), "not_sent");
    }

    #[test]
    fn kinds_sort_into_retriable_and_fatal() {
        for kind in [
            TransportErrorKind::Unavailable,
            TransportErrorKind::Rejected,
            TransportErrorKind::NotSent,
            TransportErrorKind::Fatal,
        ] {
            let e = TransportError::new(kind, "x");
            assert_eq!(e.kind(), kind);
            assert_eq!(
                e.is_retriable(),
                matches!(
                    kind,
                    TransportErrorKind::Unavailable | TransportErrorKind::NotSent
                )
            );
            assert_eq!(e.is_fatal(), kind == TransportErrorKind::Fatal);
        }
    }
}
