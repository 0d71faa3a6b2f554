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

/// The longest reason stored: a handler's error can be any size.
#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
const REASON_MAX: usize = 4096;

/// `reason` as stored: without NUL bytes (which PostgreSQL's `text` refuses),
/// at most [`REASON_MAX`] bytes.
#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
fn clean_reason(reason: &str) -> String {
    let mut clean = reason.replace('\0', "");
    if clean.len() > REASON_MAX {
        let mut cut = REASON_MAX;
        while !clean.is_char_boundary(cut) {
            cut -= 1;
        }
        clean.truncate(cut);
    }
    clean
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

#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
mod sql {
    use chrono::{DateTime, Utc};

    use super::{message_key, ParkRequest, Parked, ParkedState, Reschedule, PARKED_SUFFIX};

    use crate::error::Error;
    use crate::inbox::InboxKey;
    use crate::table::TableName;

    /// The columns every read returns, in [`Row`] order; `text` wraps a
    /// column that must come back as text.
    pub(super) fn columns(text: fn(&str) -> String) -> String {
        format!(
            "id, {}, {}, {}, state, holds_key, attempts, due_at, parked_at, reason, {}",
            text("consumer"),
            text("message_key"),
            text("origin"),
            text("event")
        )
    }

    pub(super) type Row = (
        i64,
        String,
        String,
        String,
        String,
        i64,
        i64,
        i64,
        i64,
        Option<String>,
        String,
    );

    pub(super) fn parked(row: Row) -> Parked {
        let (id, consumer, key, origin, state, holds, attempts, due, parked_at, reason, event) =
            row;
        Parked {
            id,
            consumer,
            key,
            origin,
            // An unknown state (a newer version wrote it) is left alone as dead.
            state: ParkedState::parse(&state).unwrap_or(ParkedState::Dead),
            holds_key: holds != 0,
            attempts: u32::try_from(attempts.max(0)).unwrap_or(u32::MAX),
            due_at: time(due),
            parked_at: time(parked_at),
            reason,
            event,
        }
    }

    pub(super) fn millis(t: DateTime<Utc>) -> i64 {
        t.timestamp_millis()
    }

    fn time(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(ms).unwrap_or_default()
    }

    /// The values of a new row, in the order of [`insert`]'s columns.
    pub(super) struct NewRow {
        pub consumer: String,
        pub key: String,
        pub source: String,
        pub message_id: String,
        pub origin: String,
        pub state: &'static str,
        pub holds: i64,
        pub attempts: i64,
        pub due: i64,
        pub parked_at: i64,
        pub reason: Option<String>,
        pub event: String,
    }

    pub(super) fn new_row(p: &ParkRequest<'_>) -> NewRow {
        let inbox_key = InboxKey::of(p.envelope);
        NewRow {
            consumer: p.consumer.to_owned(),
            key: message_key(p.envelope),
            source: inbox_key.source.to_owned(),
            message_id: inbox_key.message_id.to_owned(),
            origin: p.origin.to_owned(),
            state: p.state.as_str(),
            holds: i64::from(p.holds_key),
            attempts: i64::from(p.attempts),
            due: millis(p.due_at),
            parked_at: millis(Utc::now()),
            reason: p.reason.map(super::clean_reason),
            event: String::from_utf8_lossy(&p.envelope.to_json()).into_owned(),
        }
    }

    pub(super) const INSERT_COLUMNS: &str = "consumer, message_key, source, message_id, origin, \
         state, holds_key, attempts, due_at, parked_at, reason, event";

    pub(super) fn update_values(
        u: &Reschedule<'_>,
    ) -> (&'static str, i64, i64, i64, Option<String>) {
        (
            u.state.as_str(),
            i64::from(u.holds_key),
            i64::from(u.attempts),
            millis(u.due_at),
            u.reason.map(super::clean_reason),
        )
    }

    pub(super) fn table(inbox: &TableName, mysql: bool) -> String {
        if mysql {
            inbox.mysql_with_suffix(PARKED_SUFFIX)
        } else {
            inbox.with_suffix(PARKED_SUFFIX)
        }
    }

    pub(super) fn failed(inbox: &TableName) -> impl Fn(sqlx::Error) -> Error + '_ {
        move |e| Error::from_table_query(e, inbox)
    }

    /// Placeholders for PostgreSQL (`$1`, `$2`, …) and for the others (`?`).
    pub(super) fn numbered(n: usize) -> String {
        format!("${n}")
    }

    pub(super) fn positional(_: usize) -> String {
        "?".into()
    }

    pub(super) fn plain(column: &str) -> String {
        column.to_owned()
    }

    /// MySQL hands binary-collated columns back as bytes: read them as text.
    pub(super) fn mysql_text(column: &str) -> String {
        format!("CONVERT({column} USING utf8mb4)")
    }
}

/// Implements [`ParkedDatabase`] for one backend: the statements are the same
/// but for placeholders, quoting, text casts and the insert-unless-present.
#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
macro_rules! parked_database {
    ($db:ty, mysql = $mysql:expr, p = $p:path, text = $text:path, on_conflict = $conflict:expr) => {
        #[async_trait::async_trait]
        impl ParkedDatabase for $db {
            async fn park(
                pool: &sqlx::Pool<Self>,
                inbox: &TableName,
                p: &ParkRequest<'_>,
            ) -> Result<bool> {
                let row = sql::new_row(p);
                let values: Vec<String> = (1..=12).map($p).collect();
                let statement = format!(
                    "INSERT INTO {t} ({c}) VALUES ({v}) {conflict}",
                    t = sql::table(inbox, $mysql),
                    c = sql::INSERT_COLUMNS,
                    v = values.join(", "),
                    conflict = $conflict,
                );
                let done = sqlx::query(&statement)
                    .bind(row.consumer)
                    .bind(row.key)
                    .bind(row.source)
                    .bind(row.message_id)
                    .bind(row.origin)
                    .bind(row.state)
                    .bind(row.holds)
                    .bind(row.attempts)
                    .bind(row.due)
                    .bind(row.parked_at)
                    .bind(row.reason)
                    .bind(row.event)
                    .execute(pool)
                    .await;
                match done {
                    Ok(done) => Ok(done.rows_affected() == 1),
                    // MySQL has no insert-unless-present whose count tells a
                    // duplicate apart (see the `on_conflict` below).
                    Err(sqlx::Error::Database(db)) if db.is_unique_violation() => Ok(false),
                    Err(e) => Err(sql::failed(inbox)(e)),
                }
            }

            async fn holds_key(
                pool: &sqlx::Pool<Self>,
                inbox: &TableName,
                consumer: &str,
                key: &str,
            ) -> Result<bool> {
                let statement = format!(
                    "SELECT id FROM {t} WHERE consumer = {a} AND message_key = {b} \
                     AND holds_key = 1 LIMIT 1",
                    t = sql::table(inbox, $mysql),
                    a = $p(1),
                    b = $p(2),
                );
                let found: Option<(i64,)> = sqlx::query_as(&statement)
                    .bind(consumer)
                    .bind(key)
                    .fetch_optional(pool)
                    .await
                    .map_err(sql::failed(inbox))?;
                Ok(found.is_some())
            }

            async fn due_parked(
                pool: &sqlx::Pool<Self>,
                inbox: &TableName,
                consumer: &str,
                now: DateTime<Utc>,
                limit: i64,
            ) -> Result<Vec<Parked>> {
                let statement = format!(
                    "SELECT {c} FROM {t} p WHERE p.consumer = {a} AND p.state IN ('retry', 'newer', 'waiting') \
                     AND p.due_at <= {b} AND NOT EXISTS (SELECT 1 FROM {t} q \
                     WHERE q.consumer = p.consumer AND q.message_key = p.message_key \
                     AND q.holds_key = 1 AND q.id < p.id) ORDER BY p.id LIMIT {l}",
                    c = sql::columns($text),
                    t = sql::table(inbox, $mysql),
                    a = $p(1),
                    b = $p(2),
                    l = limit.max(1),
                );
                let rows: Vec<sql::Row> = sqlx::query_as(&statement)
                    .bind(consumer)
                    .bind(sql::millis(now))
                    .fetch_all(pool)
                    .await
                    .map_err(sql::failed(inbox))?;
                Ok(rows.into_iter().map(sql::parked).collect())
            }

            async fn claim_parked(
                pool: &sqlx::Pool<Self>,
                inbox: &TableName,
                parked: &Parked,
                lease_until: DateTime<Utc>,
            ) -> Result<bool> {
                let statement = format!(
                    "UPDATE {t} SET attempts = attempts + 1, due_at = {a}, reason = {r} \
                     WHERE id = {b} AND attempts = {c} AND due_at = {d} AND state = {e}",
                    t = sql::table(inbox, $mysql),
                    a = $p(1),
                    r = $p(2),
                    b = $p(3),
                    c = $p(4),
                    d = $p(5),
                    e = $p(6),
                );
                let done = sqlx::query(&statement)
                    .bind(sql::millis(lease_until))
                    .bind(UNFINISHED_ATTEMPT)
                    .bind(parked.id)
                    .bind(i64::from(parked.attempts))
                    .bind(sql::millis(parked.due_at))
                    .bind(parked.state.as_str())
                    .execute(pool)
                    .await
                    .map_err(sql::failed(inbox))?;
                Ok(done.rows_affected() == 1)
            }

            async fn reschedule_parked(
                pool: &sqlx::Pool<Self>,
                inbox: &TableName,
                id: i64,
                claimed: u32,
                update: &Reschedule<'_>,
            ) -> Result<bool> {
                let (state, holds, attempts, due, reason) = sql::update_values(update);
                let statement = format!(
                    "UPDATE {t} SET state = {a}, holds_key = {b}, attempts = {c}, \
                     due_at = {d}, reason = {e} WHERE id = {f} AND attempts = {g}",
                    t = sql::table(inbox, $mysql),
                    a = $p(1),
                    b = $p(2),
                    c = $p(3),
                    d = $p(4),
                    e = $p(5),
                    f = $p(6),
                    g = $p(7),
                );
                let done = sqlx::query(&statement)
                    .bind(state)
                    .bind(holds)
                    .bind(attempts)
                    .bind(due)
                    .bind(reason)
                    .bind(id)
                    .bind(i64::from(claimed))
                    .execute(pool)
                    .await
                    .map_err(sql::failed(inbox))?;
                Ok(done.rows_affected() == 1)
            }

            async fn unpark(
                pool: &sqlx::Pool<Self>,
                inbox: &TableName,
                id: i64,
                claimed: u32,
            ) -> Result<bool> {
                let statement = format!(
                    "DELETE FROM {t} WHERE id = {a} AND attempts = {b}",
                    t = sql::table(inbox, $mysql),
                    a = $p(1),
                    b = $p(2),
                );
                let done = sqlx::query(&statement)
                    .bind(id)
                    .bind(i64::from(claimed))
                    .execute(pool)
                    .await
                    .map_err(sql::failed(inbox))?;
                Ok(done.rows_affected() == 1)
            }

            async fn list_parked(
                pool: &sqlx::Pool<Self>,
                inbox: &TableName,
                consumer: Option<&str>,
                state: Option<ParkedState>,
                limit: i64,
            ) -> Result<Vec<Parked>> {
                let mut filters = Vec::new();
                let mut n = 0;
                let mut next = || {
                    n += 1;
                    $p(n)
                };
                if consumer.is_some() {
                    filters.push(format!("consumer = {}", next()));
                }
                if state.is_some() {
                    filters.push(format!("state = {}", next()));
                }
                let filter = if filters.is_empty() {
                    String::new()
                } else {
                    format!("WHERE {}", filters.join(" AND "))
                };
                let statement = format!(
                    "SELECT {c} FROM {t} {filter} ORDER BY id LIMIT {l}",
                    c = sql::columns($text),
                    t = sql::table(inbox, $mysql),
                    l = limit.max(1),
                );
                let mut query = sqlx::query_as::<_, sql::Row>(&statement);
                if let Some(consumer) = consumer {
                    query = query.bind(consumer);
                }
                if let Some(state) = state {
                    query = query.bind(state.as_str());
                }
                let rows = query.fetch_all(pool).await.map_err(sql::failed(inbox))?;
                Ok(rows.into_iter().map(sql::parked).collect())
            }

            async fn parked_by_id(
                pool: &sqlx::Pool<Self>,
                inbox: &TableName,
                id: i64,
            ) -> Result<Option<Parked>> {
                let statement = format!(
                    "SELECT {c} FROM {t} WHERE id = {a}",
                    c = sql::columns($text),
                    t = sql::table(inbox, $mysql),
                    a = $p(1),
                );
                let row: Option<sql::Row> = sqlx::query_as(&statement)
                    .bind(id)
                    .fetch_optional(pool)
                    .await
                    .map_err(sql::failed(inbox))?;
                Ok(row.map(sql::parked))
            }

            async fn replay_dead(
                pool: &sqlx::Pool<Self>,
                inbox: &TableName,
                consumer: &str,
                ids: Option<&[i64]>,
                now: DateTime<Utc>,
            ) -> Result<u64> {
                let statement = format!(
                    "UPDATE {t} SET state = 'retry', holds_key = 1, attempts = 0, due_at = {a} \
                     WHERE consumer = {b} AND state = 'dead'",
                    t = sql::table(inbox, $mysql),
                    a = $p(1),
                    b = $p(2),
                );
                let one = format!("{statement} AND id = {}", $p(3));
                let mut replayed = 0;
                match ids {
                    None => {
                        replayed += sqlx::query(&statement)
                            .bind(sql::millis(now))
                            .bind(consumer)
                            .execute(pool)
                            .await
                            .map_err(sql::failed(inbox))?
                            .rows_affected();
                    }
                    Some(ids) => {
                        for id in ids {
                            replayed += sqlx::query(&one)
                                .bind(sql::millis(now))
                                .bind(consumer)
                                .bind(*id)
                                .execute(pool)
                                .await
                                .map_err(sql::failed(inbox))?
                                .rows_affected();
                        }
                    }
                }
                Ok(replayed)
            }
        }
    };
}

#[cfg(feature = "postgres")]
parked_database!(
    sqlx::Postgres,
    mysql = false,
    p = sql::numbered,
    text = sql::plain,
    on_conflict = "ON CONFLICT DO NOTHING"
);

#[cfg(feature = "sqlite")]
parked_database!(
    sqlx::Sqlite,
    mysql = false,
    p = sql::positional,
    text = sql::plain,
    on_conflict = "ON CONFLICT DO NOTHING"
);

#[cfg(feature = "mysql")]
parked_database!(
    sqlx::MySql,
    mysql = true,
    p = sql::positional,
    text = sql::mysql_text,
    // Not `ON DUPLICATE KEY UPDATE`: with sqlx's `CLIENT_FOUND_ROWS` a
    // duplicate counts one row, as an insert does. The duplicate is an error.
    on_conflict = ""
);

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
    #[test]
    fn reasons_are_kept_to_4_kib_without_nul_bytes() {
        let reason = clean_reason("a\0é".repeat(3_000).as_str());
        assert!(
            reason.len() <= 4096 && reason.len() > 4090,
            "{}",
            reason.len()
        );
        assert!(!reason.contains('\0'));
    }

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
