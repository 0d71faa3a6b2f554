//! Parked messages: the `<inbox>_parked` table, where a consumer group keeps
//! the messages it took off the broker but has not handled yet, in order per
//! key.
//!
//! A message lands here when its handler keeps failing past the immediate
//! retries (a delayed retry, [`ParkedState::Retry`]), when its schema version
//! is newer than the consumer knows ([`ParkedState::Newer`]), when it is dead
//! ([`ParkedState::Dead`]: the key policy holds its key, or the broker would
//! not take the dead letter), or when an earlier message of its key is parked
//! ([`ParkedState::Waiting`]). The broker message is acknowledged once the row
//! is written, so nothing waits on the broker: other keys flow, and every
//! member of the group can take the row up when it is due. Rows that hold
//! their key go one at a time, oldest first, so a key is never reordered.

use chrono::{DateTime, Utc};

use crate::envelope::Envelope;
use crate::error::Result;
use crate::hash::fnv1a;
use crate::table::TableName;

/// The suffix of the parked table's name: `eventbus_inbox_parked` next to
/// `eventbus_inbox`.
pub const PARKED_SUFFIX: &str = "_parked";

/// The reason of a parked message while an attempt at it runs: found on a
/// message taken up again, it says the attempt ended with its process.
pub const UNFINISHED_ATTEMPT: &str = "an attempt did not finish: its process stopped during it";

/// Why a message is parked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ParkedState {
    /// Its handler failed; it is tried again at its due time.
    Retry,
    /// Its schema version is newer than the handler's; a consumer of the
    /// group that knows the version handles it at its due time.
    Newer,
    /// An earlier message of its key is parked; it goes right after.
    Waiting,
    /// Dead: its attempts are used up (or it can never be handled). Nothing
    /// happens to it until an operator replays it (`outbox-relay dlq replay`).
    Dead,
}

impl ParkedState {
    /// The name stored in the `state` column.
    pub fn as_str(self) -> &'static str {
        match self {
            ParkedState::Retry => "retry",
            ParkedState::Newer => "newer",
            ParkedState::Waiting => "waiting",
            ParkedState::Dead => "dead",
        }
    }

    /// The state stored as `name`.
    pub fn parse(name: &str) -> Option<Self> {
        [Self::Retry, Self::Newer, Self::Waiting, Self::Dead]
            .into_iter()
            .find(|s| s.as_str() == name)
    }
}

/// A parked message, as read from the table.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Parked {
    /// Row id: the order in which the group's messages were parked.
    pub id: i64,
    /// The consumer group.
    pub consumer: String,
    /// The ordering key ([`message_key`]).
    pub key: String,
    /// The destination it was received from.
    pub origin: String,
    /// Why it is parked.
    pub state: ParkedState,
    /// Whether later messages of its key wait behind it.
    pub holds_key: bool,
    /// Attempts made so far (immediate and delayed).
    pub attempts: u32,
    /// When it is taken up next (meaningless for [`ParkedState::Dead`]).
    pub due_at: DateTime<Utc>,
    /// When it was parked.
    pub parked_at: DateTime<Utc>,
    /// The last failure, or why it is dead.
    pub reason: Option<String>,
    /// The event as received, in the CloudEvents JSON structured format.
    pub event: String,
}

impl Parked {
    /// The event as received.
    ///
    /// # Errors
    ///
    /// [`crate::Error::Envelope`] if the stored text is not a CloudEvent
    /// (the table was edited by hand).
    pub fn envelope(&self) -> Result<Envelope> {
        Ok(Envelope::from_json(self.event.as_bytes())?)
    }
}

/// A message to park.
#[derive(Debug, Clone)]
pub struct ParkRequest<'a> {
    /// The consumer group.
    pub consumer: &'a str,
    /// The event.
    pub envelope: &'a Envelope,
    /// The destination it was received from.
    pub origin: &'a str,
    /// Why it is parked.
    pub state: ParkedState,
    /// Whether later messages of its key wait behind it.
    pub holds_key: bool,
    /// Attempts made so far.
    pub attempts: u32,
    /// When it is taken up next.
    pub due_at: DateTime<Utc>,
    /// The last failure.
    pub reason: Option<&'a str>,
}

/// The longest ordering key stored as it is; longer keys are shortened and
/// suffixed with a hash (two keys sharing a stored key only share a queue).
const KEY_MAX: usize = 200;

/// The ordering key a message is parked under: its partition key, or for a
/// message without one its id (it is ordered with nothing).
///
/// ```
/// use eventbus::inbox::message_key;
/// use eventbus::Envelope;
///
/// let mut e = Envelope::new("urn:svc", "com.example.order.placed", b"{}".to_vec());
/// assert_eq!(message_key(&e), format!("id:{}", e.id));
/// e.partition_key = Some("order-7".into());
/// assert_eq!(message_key(&e), "key:order-7");
/// ```
pub fn message_key(envelope: &Envelope) -> String {
    let (kind, value) = match &envelope.partition_key {
        Some(key) => ("key", key.as_str()),
        None => ("id", envelope.id.as_str()),
    };
    if value.len() <= KEY_MAX && !value.contains('\0') {
        return format!("{kind}:{value}");
    }
    // Too long for an index, or with a NUL byte, which PostgreSQL's `text`
    // refuses (a binary Kafka key can be valid UTF-8 and hold one): a
    // readable prefix and a hash of the whole.
    let shown = value.replace('\0', "");
    let mut cut = (KEY_MAX - 20).min(shown.len());
    while !shown.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{kind}:{}#{:016x}", &shown[..cut], fnv1a(value.as_bytes()))
}

/// A database that keeps parked messages next to the inbox (table
/// `<inbox>_parked`, created by the migrations). Implemented for each
/// compiled-in backend.
#[async_trait::async_trait]
pub trait ParkedDatabase: sqlx::Database {
    /// Parks a message; `false` if the group had parked it already (a
    /// redelivery of a message parked before its acknowledgement).
    async fn park(pool: &sqlx::Pool<Self>, inbox: &TableName, p: &ParkRequest<'_>) -> Result<bool>;

    /// Whether a parked message of `consumer` holds `key`: a message of that
    /// key received now must be parked behind it.
    async fn holds_key(
        pool: &sqlx::Pool<Self>,
        inbox: &TableName,
        consumer: &str,
        key: &str,
    ) -> Result<bool>;

    /// Up to `limit` messages of `consumer` that are due at `now` and first in
    /// their key (no earlier message of the key holds it), oldest first.
    async fn due_parked(
        pool: &sqlx::Pool<Self>,
        inbox: &TableName,
        consumer: &str,
        now: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<Parked>>;

    /// Takes up `parked` for one attempt: counts it, moves its due time to
    /// `lease_until`, so that no other member takes it meanwhile (and it
    /// comes back should this process die), and sets its reason to
    /// [`UNFINISHED_ATTEMPT`] until the attempt's end replaces it. `false` if
    /// another member took it first.
    async fn claim_parked(
        pool: &sqlx::Pool<Self>,
        inbox: &TableName,
        parked: &Parked,
        lease_until: DateTime<Utc>,
    ) -> Result<bool>;

    /// Sets the state, attempts, due time, reason and key hold of row `id`,
    /// if its attempts are still `claimed` (the count the caller's claim left;
    /// another member has not claimed it since). `false` if they are not.
    async fn reschedule_parked(
        pool: &sqlx::Pool<Self>,
        inbox: &TableName,
        id: i64,
        claimed: u32,
        update: &Reschedule<'_>,
    ) -> Result<bool>;

    /// Deletes row `id` (handled, or dead-lettered elsewhere) if its attempts
    /// are still `claimed`; `false` if they are not.
    async fn unpark(
        pool: &sqlx::Pool<Self>,
        inbox: &TableName,
        id: i64,
        claimed: u32,
    ) -> Result<bool>;

    /// Parked messages, oldest first: of one consumer group or all, in one
    /// state or all, at most `limit`.
    async fn list_parked(
        pool: &sqlx::Pool<Self>,
        inbox: &TableName,
        consumer: Option<&str>,
        state: Option<ParkedState>,
        limit: i64,
    ) -> Result<Vec<Parked>>;

    /// Row `id`, if it exists.
    async fn parked_by_id(
        pool: &sqlx::Pool<Self>,
        inbox: &TableName,
        id: i64,
    ) -> Result<Option<Parked>>;

    /// Sends dead messages of `consumer` back to that group: rows `ids`, or all
    /// its dead rows when `ids` is `None`. They become due at `now` with
    /// fresh attempts and hold their key, so they go in key order before
    /// anything of their key received after. Returns how many.
    async fn replay_dead(
        pool: &sqlx::Pool<Self>,
        inbox: &TableName,
        consumer: &str,
        ids: Option<&[i64]>,
        now: DateTime<Utc>,
    ) -> Result<u64>;
}

/// A change to a parked row ([`ParkedDatabase::reschedule_parked`]).
#[derive(Debug, Clone)]
pub struct Reschedule<'a> {
    /// The new state.
    pub state: ParkedState,
    /// Whether it holds its key from now on.
    pub holds_key: bool,
    /// Attempts made so far.
    pub attempts: u32,
    /// When it is taken up next.
    pub due_at: DateTime<Utc>,
    /// The last failure.
    pub reason: Option<&'a str>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_keys_are_shortened_stably_and_apart() {
        let mut a = Envelope::new("urn:svc", "t", Vec::new());
        a.partition_key = Some("é".repeat(300));
        let mut b = a.clone();
        b.partition_key = Some(format!("{}x", "é".repeat(299)));
        let (ka, kb) = (message_key(&a), message_key(&b));
        assert!(ka.len() <= KEY_MAX + 30, "{}", ka.len());
        assert_ne!(ka, kb);
        assert_eq!(ka, message_key(&a));
        // A binary key (valid UTF-8 with NUL bytes, which PostgreSQL's `text`
        // refuses) is stored hashed, without them, and apart from its
        // NUL-less twin.
        let mut binary = a.clone();
        binary.partition_key = Some("\0\0\0\u{1}".into());
        let mut twin = a;
        twin.partition_key = Some("\u{1}".into());
        let stored = message_key(&binary);
        assert!(!stored.contains('\0'), "{stored:?}");
        assert_ne!(stored, message_key(&twin));
        assert_eq!(ParkedState::parse("waiting"), Some(ParkedState::Waiting));
        assert_eq!(ParkedState::parse("other"), None);
    }
}
