//! The parked table's statements, shared by the three backends: they differ
//! only in placeholders, quoting, text casts and the insert-unless-present,
//! so one macro implements [`ParkedDatabase`] for each (invoked from each
//! backend's module).

use crate::backend::sql::composed;
use chrono::{DateTime, Utc};

use crate::backend::dialect::Dialect;
use crate::error::{Error, Result};
use crate::inbox::{
    message_key, InboxKey, ParkRequest, Parked, ParkedDatabase, ParkedState, Reschedule,
    PARKED_SUFFIX, UNFINISHED_ATTEMPT,
};
use crate::table::TableName;

/// The columns every read returns, in [`Row`] order; `text` wraps a
/// column that must come back as text.
fn columns(text: fn(&str) -> String) -> String {
    format!(
        "id, {}, {}, {}, state, holds_key, attempts, due_at, parked_at, reason, {}",
        text("consumer"),
        text("message_key"),
        text("origin"),
        text("event")
    )
}

type Row = (
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

fn parked(row: Row) -> Parked {
    let (id, consumer, key, origin, state, holds, attempts, due, parked_at, reason, event) = row;
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

fn millis(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

fn time(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

/// The values of a new row, in the order of [`insert`]'s columns.
struct NewRow {
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

fn new_row(p: &ParkRequest<'_>) -> NewRow {
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
        reason: p.reason.map(clean_reason),
        event: String::from_utf8_lossy(&p.envelope.to_json()).into_owned(),
    }
}

const INSERT_COLUMNS: &str = "consumer, message_key, source, message_id, origin, \
     state, holds_key, attempts, due_at, parked_at, reason, event";

fn update_values(u: &Reschedule<'_>) -> (&'static str, i64, i64, i64, Option<String>) {
    (
        u.state.as_str(),
        i64::from(u.holds_key),
        i64::from(u.attempts),
        millis(u.due_at),
        u.reason.map(clean_reason),
    )
}

fn failed(inbox: &TableName) -> impl Fn(sqlx::Error) -> Error + '_ {
    move |e| Error::from_table_query(e, inbox)
}

#[cfg(any(feature = "postgres", feature = "sqlite"))]
fn plain(column: &str) -> String {
    column.to_owned()
}

/// MySQL hands binary-collated columns back as bytes: read them as text.
#[cfg(feature = "mysql")]
fn mysql_text(column: &str) -> String {
    format!("CONVERT({column} USING utf8mb4)")
}

/// The longest reason stored: a handler's error can be any size.
const REASON_MAX: usize = 4096;

/// `reason` as stored: without NUL bytes (which PostgreSQL's `text` refuses),
/// at most [`REASON_MAX`] bytes.
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

/// Implements [`ParkedDatabase`] for one backend: the statements are the same
/// but for placeholders, quoting, text casts and the insert-unless-present.
macro_rules! parked_database {
    ($db:ty, dialect = $d:expr, text = $text:path, on_conflict = $conflict:expr) => {
        #[async_trait::async_trait]
        impl ParkedDatabase for $db {
            async fn park(
                pool: &sqlx::Pool<Self>,
                inbox: &TableName,
                p: &ParkRequest<'_>,
            ) -> Result<bool> {
                let row = new_row(p);
                let values: Vec<String> = (1..=12).map(|n| $d.param(n)).collect();
                let statement = format!(
                    "INSERT INTO {t} ({c}) VALUES ({v}) {conflict}",
                    t = $d.object(inbox, PARKED_SUFFIX),
                    c = INSERT_COLUMNS,
                    v = values.join(", "),
                    conflict = $conflict,
                );
                let done = sqlx::query(composed(&statement))
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
                    Err(e) => Err(failed(inbox)(e)),
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
                    t = $d.object(inbox, PARKED_SUFFIX),
                    a = $d.param(1),
                    b = $d.param(2),
                );
                let found: Option<(i64,)> = sqlx::query_as(composed(&statement))
                    .bind(consumer)
                    .bind(key)
                    .fetch_optional(pool)
                    .await
                    .map_err(failed(inbox))?;
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
                    c = columns($text),
                    t = $d.object(inbox, PARKED_SUFFIX),
                    a = $d.param(1),
                    b = $d.param(2),
                    l = limit.max(1),
                );
                let rows: Vec<Row> = sqlx::query_as(composed(&statement))
                    .bind(consumer)
                    .bind(millis(now))
                    .fetch_all(pool)
                    .await
                    .map_err(failed(inbox))?;
                Ok(rows.into_iter().map(parked).collect())
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
                    t = $d.object(inbox, PARKED_SUFFIX),
                    a = $d.param(1),
                    r = $d.param(2),
                    b = $d.param(3),
                    c = $d.param(4),
                    d = $d.param(5),
                    e = $d.param(6),
                );
                let done = sqlx::query(composed(&statement))
                    .bind(millis(lease_until))
                    .bind(UNFINISHED_ATTEMPT)
                    .bind(parked.id)
                    .bind(i64::from(parked.attempts))
                    .bind(millis(parked.due_at))
                    .bind(parked.state.as_str())
                    .execute(pool)
                    .await
                    .map_err(failed(inbox))?;
                Ok(done.rows_affected() == 1)
            }

            async fn reschedule_parked(
                pool: &sqlx::Pool<Self>,
                inbox: &TableName,
                id: i64,
                claimed: u32,
                update: &Reschedule<'_>,
            ) -> Result<bool> {
                let (state, holds, attempts, due, reason) = update_values(update);
                let statement = format!(
                    "UPDATE {t} SET state = {a}, holds_key = {b}, attempts = {c}, \
                     due_at = {d}, reason = {e} WHERE id = {f} AND attempts = {g}",
                    t = $d.object(inbox, PARKED_SUFFIX),
                    a = $d.param(1),
                    b = $d.param(2),
                    c = $d.param(3),
                    d = $d.param(4),
                    e = $d.param(5),
                    f = $d.param(6),
                    g = $d.param(7),
                );
                let done = sqlx::query(composed(&statement))
                    .bind(state)
                    .bind(holds)
                    .bind(attempts)
                    .bind(due)
                    .bind(reason)
                    .bind(id)
                    .bind(i64::from(claimed))
                    .execute(pool)
                    .await
                    .map_err(failed(inbox))?;
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
                    t = $d.object(inbox, PARKED_SUFFIX),
                    a = $d.param(1),
                    b = $d.param(2),
                );
                let done = sqlx::query(composed(&statement))
                    .bind(id)
                    .bind(i64::from(claimed))
                    .execute(pool)
                    .await
                    .map_err(failed(inbox))?;
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
                    $d.param(n)
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
                    c = columns($text),
                    t = $d.object(inbox, PARKED_SUFFIX),
                    l = limit.max(1),
                );
                let mut query = sqlx::query_as::<_, Row>(composed(&statement));
                if let Some(consumer) = consumer {
                    query = query.bind(consumer);
                }
                if let Some(state) = state {
                    query = query.bind(state.as_str());
                }
                let rows = query.fetch_all(pool).await.map_err(failed(inbox))?;
                Ok(rows.into_iter().map(parked).collect())
            }

            async fn parked_by_id(
                pool: &sqlx::Pool<Self>,
                inbox: &TableName,
                id: i64,
            ) -> Result<Option<Parked>> {
                let statement = format!(
                    "SELECT {c} FROM {t} WHERE id = {a}",
                    c = columns($text),
                    t = $d.object(inbox, PARKED_SUFFIX),
                    a = $d.param(1),
                );
                let row: Option<Row> = sqlx::query_as(composed(&statement))
                    .bind(id)
                    .fetch_optional(pool)
                    .await
                    .map_err(failed(inbox))?;
                Ok(row.map(parked))
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
                    t = $d.object(inbox, PARKED_SUFFIX),
                    a = $d.param(1),
                    b = $d.param(2),
                );
                let one = format!("{statement} AND id = {}", $d.param(3));
                let mut replayed = 0;
                match ids {
                    None => {
                        replayed += sqlx::query(composed(&statement))
                            .bind(millis(now))
                            .bind(consumer)
                            .execute(pool)
                            .await
                            .map_err(failed(inbox))?
                            .rows_affected();
                    }
                    Some(ids) => {
                        for id in ids {
                            replayed += sqlx::query(composed(&one))
                                .bind(millis(now))
                                .bind(consumer)
                                .bind(*id)
                                .execute(pool)
                                .await
                                .map_err(failed(inbox))?
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
    dialect = Dialect::POSTGRES,
    text = plain,
    on_conflict = "ON CONFLICT DO NOTHING"
);

#[cfg(feature = "sqlite")]
parked_database!(
    sqlx::Sqlite,
    dialect = Dialect::SQLITE,
    text = plain,
    on_conflict = "ON CONFLICT DO NOTHING"
);

#[cfg(feature = "mysql")]
parked_database!(
    sqlx::MySql,
    dialect = Dialect::MYSQL,
    text = mysql_text,
    // Not `ON DUPLICATE KEY UPDATE`: with sqlx's `CLIENT_FOUND_ROWS` a
    // duplicate counts one row, as an insert does. The duplicate is an error.
    on_conflict = ""
);

#[cfg(test)]
mod tests {
    use super::*;

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
}
