//! SQLite migrations: the same tables and columns as on PostgreSQL in SQLite
//! types, one logical partition, and `BEGIN IMMEDIATE` to serialise migrators.

use crate::backend::sql::composed;
use sqlx::{Sqlite, SqlitePool};

use super::NOW;
use crate::backend::dialect::Dialect;
use crate::backend::migrate::{apply_steps, Steps};
use crate::error::Result;
use crate::inbox::{ATTEMPTS_SUFFIX, PARKED_SUFFIX};
use crate::migrate::{MigrateDatabase, Migrator};
use crate::outbox::SCHEDULED_SUFFIX;

/// A version 4 UUID in the hyphenated lowercase form, made by SQLite: the
/// default `event_id` of rows written with plain SQL.
const UUID_V4: &str = "lower(hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-4' \
     || substr(hex(randomblob(2)), 2) || '-' || substr('89ab', 1 + (abs(random()) % 4), 1) \
     || substr(hex(randomblob(2)), 2) || '-' || hex(randomblob(6)))";

/// A `GLOB` pattern matching a hyphenated UUID, so a malformed `event_id` is
/// refused at insert instead of stalling the relay later.
fn uuid_glob() -> String {
    let hex = "[0-9a-fA-F]";
    [8, 4, 4, 4, 12]
        .iter()
        .map(|n| hex.repeat(*n))
        .collect::<Vec<_>>()
        .join("-")
}

/// Migration steps: (component, version, SQL). Never edit a released step; add
/// a new one.
fn steps(m: &Migrator) -> Vec<(String, i32, Vec<String>)> {
    let outbox = &m.outbox;
    let t = outbox.quoted();
    // SQLite names an index's schema on the index, not on its table.
    let local = Dialect::SQLITE.local(outbox, "");
    let partitions_table = outbox.with_suffix("_partitions");
    let relays_table = outbox.with_suffix("_relays");
    let uuid_glob = uuid_glob();
    let outbox_v1 = format!(
        r#"
CREATE TABLE IF NOT EXISTS {t} (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id        TEXT    NOT NULL UNIQUE DEFAULT ({UUID_V4}) CHECK (event_id GLOB '{uuid_glob}'),
    source          TEXT,
    destination     TEXT    NOT NULL,
    partition_key   TEXT    NOT NULL,
    "partition"     INTEGER NOT NULL DEFAULT 0 CHECK ("partition" = 0),
    event_type      TEXT    NOT NULL,
    schema_version  INTEGER NOT NULL DEFAULT 1,
    subject         TEXT,
    headers         TEXT    NOT NULL DEFAULT '{{}}' CHECK (json_valid(headers)),
    payload         TEXT    NOT NULL CHECK (json_valid(payload)),
    created_at      TEXT    NOT NULL DEFAULT ({NOW}) CHECK (julianday(created_at) IS NOT NULL),
    state           TEXT    NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'failed', 'published')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT,
    last_error      TEXT,
    published_at    TEXT
);
CREATE INDEX IF NOT EXISTS {pending} ON {local} (id) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS {blocked} ON {local} (partition_key, id)
    WHERE state = 'failed' OR (state = 'pending' AND attempts > 0);
CREATE INDEX IF NOT EXISTS {published} ON {local} (published_at) WHERE state = 'published';
CREATE TABLE IF NOT EXISTS {partitions_table} (
    "partition"      INTEGER PRIMARY KEY,
    owner            TEXT,
    epoch            INTEGER NOT NULL DEFAULT 0,
    lease_expires_at TEXT
);
INSERT OR IGNORE INTO {partitions_table} ("partition") VALUES (0);
CREATE TABLE IF NOT EXISTS {relays_table} (
    relay_id     TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    started_at   TEXT NOT NULL DEFAULT ({NOW}),
    heartbeat_at TEXT NOT NULL DEFAULT ({NOW})
);
"#,
        pending = outbox.with_suffix("_pending"),
        blocked = outbox.with_suffix("_blocked"),
        published = outbox.with_suffix("_published"),
    );
    // Scheduled events (crate::outbox::schedule): due times in milliseconds
    // since the epoch.
    let outbox_v2 = format!(
        r#"
CREATE TABLE IF NOT EXISTS {s} (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id       TEXT    NOT NULL UNIQUE,
    source         TEXT,
    destination    TEXT    NOT NULL,
    partition_key  TEXT    NOT NULL,
    event_type     TEXT    NOT NULL,
    schema_version INTEGER NOT NULL DEFAULT 1,
    subject        TEXT,
    headers        TEXT    NOT NULL DEFAULT '{{}}' CHECK (json_valid(headers)),
    payload        TEXT    NOT NULL CHECK (json_valid(payload)),
    created_at     INTEGER NOT NULL,
    due_at         INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS {due} ON {local_s} (due_at, id);
"#,
        s = outbox.with_suffix(SCHEDULED_SUFFIX),
        due = outbox.with_suffix("_scheduled_due"),
        local_s = Dialect::SQLITE.local(outbox, SCHEDULED_SUFFIX),
    );
    let inbox = &m.inbox;
    let inbox_v1 = format!(
        r#"
CREATE TABLE IF NOT EXISTS {i} (
    consumer    TEXT NOT NULL,
    source      TEXT NOT NULL,
    message_id  TEXT NOT NULL,
    event_type  TEXT,
    received_at TEXT NOT NULL DEFAULT ({NOW}),
    PRIMARY KEY (consumer, source, message_id)
);
CREATE INDEX IF NOT EXISTS {received} ON {local} (consumer, received_at);
"#,
        i = inbox.quoted(),
        local = Dialect::SQLITE.local(inbox, ""),
        received = inbox.with_suffix("_received_at"),
    );
    // Durable attempt counts (crate::inbox::AttemptsDatabase).
    let inbox_v2 = format!(
        r#"
CREATE TABLE IF NOT EXISTS {a} (
    consumer    TEXT    NOT NULL,
    source      TEXT    NOT NULL,
    message_id  TEXT    NOT NULL,
    attempts    INTEGER NOT NULL,
    last_error  TEXT,
    updated_at  TEXT    NOT NULL DEFAULT ({NOW}),
    PRIMARY KEY (consumer, source, message_id)
);
"#,
        a = inbox.with_suffix(ATTEMPTS_SUFFIX),
    );
    // Parked messages (crate::inbox::ParkedDatabase).
    let inbox_v3 = format!(
        r#"
CREATE TABLE IF NOT EXISTS {t} (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    consumer    TEXT    NOT NULL,
    message_key TEXT    NOT NULL,
    source      TEXT    NOT NULL,
    message_id  TEXT    NOT NULL,
    origin      TEXT    NOT NULL,
    state       TEXT    NOT NULL,
    holds_key   INTEGER NOT NULL,
    attempts    INTEGER NOT NULL,
    due_at      INTEGER NOT NULL,
    parked_at   INTEGER NOT NULL,
    reason      TEXT,
    event       TEXT    NOT NULL,
    UNIQUE (consumer, source, message_id)
);
CREATE INDEX IF NOT EXISTS {by_key} ON {local} (consumer, message_key, id);
CREATE INDEX IF NOT EXISTS {by_due} ON {local} (consumer, due_at);
"#,
        t = inbox.with_suffix(PARKED_SUFFIX),
        local = Dialect::SQLITE.local(inbox, PARKED_SUFFIX),
        by_key = inbox.with_suffix("_parked_key"),
        by_due = inbox.with_suffix("_parked_due"),
    );
    // Saga instances (crate::saga): state as JSON text, times in
    // milliseconds since the epoch.
    let sagas = &m.sagas;
    let sagas_v1 = format!(
        r#"
CREATE TABLE IF NOT EXISTS {s} (
    saga         TEXT    NOT NULL,
    instance_id  TEXT    NOT NULL,
    state        TEXT    NOT NULL CHECK (json_valid(state)),
    status       TEXT    NOT NULL CHECK (status IN ('active', 'completed')),
    version      INTEGER NOT NULL,
    timeouts     TEXT    NOT NULL DEFAULT '[]' CHECK (json_valid(timeouts)),
    started_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL,
    completed_at INTEGER,
    PRIMARY KEY (saga, instance_id)
);
CREATE INDEX IF NOT EXISTS {by_status} ON {local} (saga, status, updated_at);
"#,
        s = sagas.quoted(),
        local = Dialect::SQLITE.local(sagas, ""),
        by_status = sagas.with_suffix("_status"),
    );
    Steps {
        sagas: vec![vec![sagas_v1]],
        outbox: vec![vec![outbox_v1], vec![outbox_v2]],
        inbox: vec![vec![inbox_v1], vec![inbox_v2], vec![inbox_v3]],
    }
    .numbered(m)
}

#[async_trait::async_trait]
impl MigrateDatabase for Sqlite {
    async fn apply(pool: &SqlitePool, migrator: &Migrator) -> Result<()> {
        // IMMEDIATE takes the write lock at once (waiting out the busy timeout):
        // concurrent migrators queue here, then find the work done.
        let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query(composed(format!(
            "CREATE TABLE IF NOT EXISTS eventbus_migrations (
                component  TEXT    NOT NULL,
                version    INTEGER NOT NULL,
                applied_at TEXT    NOT NULL DEFAULT ({NOW}),
                PRIMARY KEY (component, version))"
        )))
        .execute(&mut *tx)
        .await?;
        apply_steps::<Sqlite>(&mut *tx, steps(migrator)).await?;
        tx.commit().await?;
        Ok(())
    }
}
