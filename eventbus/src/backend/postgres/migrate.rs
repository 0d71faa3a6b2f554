//! PostgreSQL migrations: the outbox with its `hashtext` partition column, `txid`
//! for the snapshot rule and the NOTIFY trigger, the lease and membership tables,
//! the inbox tables; an advisory lock serialises migrators, and every step
//! runs in one transaction.

use sqlx::{PgPool, Postgres};

use crate::backend::dialect::Dialect;
use crate::backend::migrate::{apply_steps, Steps};
use crate::error::Result;
use crate::inbox::{ATTEMPTS_SUFFIX, PARKED_SUFFIX};
use crate::migrate::{MigrateDatabase, Migrator};
use crate::outbox::SCHEDULED_SUFFIX;

/// Serializes concurrent migrations across processes (an arbitrary constant).
const LOCK_KEY: i64 = 0x6576_656e_7462_7573; // "eventbus"

/// First key of the two-key advisory lock that lets one transaction at a
/// time send the outbox NOTIFY (the second is the channel's hash).
const NOTIFY_LOCK_CLASS: i32 = 0x6576_6e74; // "evnt"

/// Migration steps: (component, version, SQL template). Never edit a released
/// step; add a new one.
fn steps(m: &Migrator) -> Vec<(String, i32, Vec<String>)> {
    let outbox = &m.outbox;
    let t = outbox.quoted();
    let partitions_table = outbox.with_suffix("_partitions");
    let relays_table = outbox.with_suffix("_relays");
    let notify_fn = outbox.with_suffix("_notify");
    let channel = super::channel(outbox);
    let p = m.partitions;
    let idx = |s: &str| Dialect::POSTGRES.local(outbox, s);
    let outbox_v1 = format!(
        r#"
CREATE TABLE IF NOT EXISTS {t} (
id              bigserial PRIMARY KEY,
event_id        uuid NOT NULL DEFAULT gen_random_uuid() UNIQUE,
source          text,
destination     text NOT NULL,
partition_key   text NOT NULL,
partition       int  NOT NULL GENERATED ALWAYS AS ((hashtext(partition_key) & 2147483647) % {p}) STORED,
event_type      text NOT NULL,
schema_version  int  NOT NULL DEFAULT 1,
subject         text,
headers         jsonb NOT NULL DEFAULT '{{}}',
payload         jsonb NOT NULL,
created_at      timestamptz NOT NULL DEFAULT now(),
txid            xid8 NOT NULL DEFAULT pg_current_xact_id(),
state           text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'failed', 'published')),
attempts        int  NOT NULL DEFAULT 0,
next_attempt_at timestamptz,
last_error      text,
published_at    timestamptz
);
CREATE INDEX IF NOT EXISTS {pending} ON {t} (id) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS {blocked} ON {t} (partition, partition_key, id)
WHERE state = 'failed' OR (state = 'pending' AND attempts > 0);
CREATE INDEX IF NOT EXISTS {published} ON {t} (published_at) WHERE state = 'published';
CREATE OR REPLACE FUNCTION {notify_fn}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
PERFORM pg_notify('{channel}', '');
RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS {trigger} ON {t};
CREATE TRIGGER {trigger} AFTER INSERT ON {t}
FOR EACH STATEMENT EXECUTE FUNCTION {notify_fn}();
CREATE TABLE IF NOT EXISTS {partitions_table} (
partition        int PRIMARY KEY,
owner            uuid,
epoch            bigint NOT NULL DEFAULT 0,
lease_expires_at timestamptz
);
INSERT INTO {partitions_table} (partition) SELECT generate_series(0, {p} - 1)
ON CONFLICT DO NOTHING;
CREATE TABLE IF NOT EXISTS {relays_table} (
relay_id     uuid PRIMARY KEY,
name         text NOT NULL,
started_at   timestamptz NOT NULL DEFAULT now(),
heartbeat_at timestamptz NOT NULL DEFAULT now()
);
"#,
        pending = idx("_pending"),
        blocked = idx("_blocked"),
        published = idx("_published"),
        trigger = idx("_notify"),
    );
    let inbox = &m.inbox;
    let inbox_v1 = format!(
        r#"
CREATE TABLE IF NOT EXISTS {i} (
consumer    text NOT NULL,
source      text NOT NULL,
message_id  text NOT NULL,
event_type  text,
received_at timestamptz NOT NULL DEFAULT now(),
PRIMARY KEY (consumer, source, message_id)
);
CREATE INDEX IF NOT EXISTS {received} ON {i} (consumer, received_at);
"#,
        i = inbox.quoted(),
        received = Dialect::POSTGRES.local(inbox, "_received_at"),
    );
    // NOTIFY makes PostgreSQL serialize the commits of every notifying
    // transaction (a database-wide lock held through the commit's WAL
    // flush), which defeats group commit: with 8 writers of one-event
    // transactions, 6x fewer commits per second. One notifying transaction
    // at a time is enough to wake the relay; the others skip it, and the
    // relay's fallback poll covers the rare event whose waker came first.
    // See docs/adr/0006-throttled-notify.md.
    let outbox_v2 = format!(
        r#"
CREATE OR REPLACE FUNCTION {notify_fn}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
IF pg_try_advisory_xact_lock({NOTIFY_LOCK_CLASS}, hashtext('{channel}')) THEN
    PERFORM pg_notify('{channel}', '');
END IF;
RETURN NULL;
END $$;
"#
    );
    // Durable attempt counts (crate::inbox::AttemptsDatabase): a row per
    // message being handled, keyed like the inbox.
    let inbox_v2 = format!(
        r#"
CREATE TABLE IF NOT EXISTS {a} (
consumer    text NOT NULL,
source      text NOT NULL,
message_id  text NOT NULL,
attempts    int  NOT NULL,
last_error  text,
updated_at  timestamptz NOT NULL DEFAULT now(),
PRIMARY KEY (consumer, source, message_id)
);
"#,
        a = inbox.with_suffix(ATTEMPTS_SUFFIX),
    );
    // Parked messages (crate::inbox::ParkedDatabase): delayed retries,
    // newer versions, dead letters and what waits behind them, per key.
    let inbox_v3 = format!(
        r#"
CREATE TABLE IF NOT EXISTS {t} (
id          bigserial PRIMARY KEY,
consumer    text   NOT NULL,
message_key text   NOT NULL,
source      text   NOT NULL,
message_id  text   NOT NULL,
origin      text   NOT NULL,
state       text   NOT NULL,
holds_key   bigint NOT NULL,
attempts    bigint NOT NULL,
due_at      bigint NOT NULL,
parked_at   bigint NOT NULL,
reason      text,
event       text   NOT NULL,
UNIQUE (consumer, source, message_id)
);
CREATE INDEX IF NOT EXISTS {by_key} ON {t} (consumer, message_key, id);
CREATE INDEX IF NOT EXISTS {by_due} ON {t} (consumer, due_at);
"#,
        t = inbox.with_suffix(PARKED_SUFFIX),
        by_key = Dialect::POSTGRES.local(inbox, "_parked_key"),
        by_due = Dialect::POSTGRES.local(inbox, "_parked_due"),
    );
    // Scheduled events (crate::outbox::schedule): due times in milliseconds
    // since the epoch, text columns checked as JSON like the outbox's.
    let outbox_v3 = format!(
        r#"
CREATE TABLE IF NOT EXISTS {s} (
id             bigserial PRIMARY KEY,
event_id       text   NOT NULL UNIQUE,
source         text,
destination    text   NOT NULL,
partition_key  text   NOT NULL,
event_type     text   NOT NULL,
schema_version int    NOT NULL DEFAULT 1,
subject        text,
headers        text   NOT NULL DEFAULT '{{}}' CHECK (headers::jsonb IS NOT NULL),
payload        text   NOT NULL CHECK (payload::jsonb IS NOT NULL),
created_at     bigint NOT NULL,
due_at         bigint NOT NULL
);
CREATE INDEX IF NOT EXISTS {due} ON {s} (due_at, id);
"#,
        s = outbox.with_suffix(SCHEDULED_SUFFIX),
        due = idx("_scheduled_due"),
    );
    // Saga instances (crate::saga): state as JSON text, times in
    // milliseconds since the epoch.
    let sagas = &m.sagas;
    let sagas_v1 = format!(
        r#"
CREATE TABLE IF NOT EXISTS {s} (
saga         text   NOT NULL,
instance_id  text   NOT NULL,
state        text   NOT NULL CHECK (state::jsonb IS NOT NULL),
status       text   NOT NULL CHECK (status IN ('active', 'completed')),
version      bigint NOT NULL,
timeouts     text   NOT NULL DEFAULT '[]' CHECK (timeouts::jsonb IS NOT NULL),
started_at   bigint NOT NULL,
updated_at   bigint NOT NULL,
completed_at bigint,
PRIMARY KEY (saga, instance_id)
);
CREATE INDEX IF NOT EXISTS {by_status} ON {s} (saga, status, updated_at);
"#,
        s = sagas.quoted(),
        by_status = Dialect::POSTGRES.local(sagas, "_status"),
    );
    Steps {
        sagas: vec![vec![sagas_v1]],
        outbox: vec![vec![outbox_v1], vec![outbox_v2], vec![outbox_v3]],
        inbox: vec![vec![inbox_v1], vec![inbox_v2], vec![inbox_v3]],
    }
    .numbered(m)
}

#[async_trait::async_trait]
impl MigrateDatabase for Postgres {
    async fn apply(pool: &PgPool, migrator: &Migrator) -> Result<()> {
        let mut tx = pool.begin().await?;
        // Held until commit: concurrent migrators wait here, then find the
        // work done.
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(LOCK_KEY)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS eventbus_migrations (
                component  text NOT NULL,
                version    int  NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now(),
                PRIMARY KEY (component, version))",
        )
        .execute(&mut *tx)
        .await?;
        apply_steps::<Postgres>(&mut *tx, steps(migrator)).await?;
        tx.commit().await?;
        Ok(())
    }
}
