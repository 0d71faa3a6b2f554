//! Embedded, idempotent database migrations for the outbox, relay and inbox
//! tables: [`migrate`] with defaults, or a configured [`Migrator`].
//!
//! PostgreSQL, MySQL/MariaDB and SQLite get the same tables and columns in their
//! own types (`docs/outbox-table.md`); SQLite's outbox has a single partition.

use crate::error::Result;
use crate::table::TableName;

/// The default number of logical partitions of the outbox. Fixed at migration
/// time: it decides which relay owns which keys.
pub const DEFAULT_PARTITIONS: u32 = 64;

/// Creates or upgrades the eventbus tables with default names. Idempotent and
/// safe to run from several processes at once.
///
/// ```no_run
/// # #[cfg(feature = "postgres")]
/// # async fn demo() -> eventbus::Result<()> {
/// let pool = sqlx::PgPool::connect("postgres://postgres@127.0.0.1/app").await?;
/// eventbus::migrate(&pool).await?;
/// # Ok(()) }
/// ```
///
/// # Errors
///
/// [`crate::Error::Database`] if a statement fails.
pub async fn migrate<DB: MigrateDatabase>(pool: &sqlx::Pool<DB>) -> Result<()> {
    Migrator::new().run(pool).await
}

/// Migration settings: table names and the partition count.
#[derive(Debug, Clone)]
pub struct Migrator {
    pub(crate) outbox: TableName,
    pub(crate) inbox: TableName,
    pub(crate) partitions: u32,
}

impl Default for Migrator {
    fn default() -> Self {
        Self::new()
    }
}

impl Migrator {
    /// Default names (`eventbus_outbox`, `eventbus_inbox`) and 64 partitions.
    pub fn new() -> Self {
        Migrator {
            outbox: crate::outbox::default_table(),
            inbox: crate::inbox::default_table(),
            partitions: DEFAULT_PARTITIONS,
        }
    }

    /// The outbox table to create.
    ///
    /// # Errors
    ///
    /// [`crate::Error::Config`] for an invalid name.
    pub fn outbox_table(mut self, name: &str) -> Result<Self> {
        self.outbox = TableName::parse(name)?;
        Ok(self)
    }

    /// The inbox table to create.
    ///
    /// # Errors
    ///
    /// [`crate::Error::Config`] for an invalid name.
    pub fn inbox_table(mut self, name: &str) -> Result<Self> {
        self.inbox = TableName::parse(name)?;
        Ok(self)
    }

    /// The number of logical partitions (1 to 4096) for a new outbox table. Has no
    /// effect on an existing table, nor on SQLite, whose outbox always has one
    /// partition (one relay per database file).
    ///
    /// # Errors
    ///
    /// [`crate::Error::Config`] outside 1..=4096.
    pub fn partitions(mut self, partitions: u32) -> Result<Self> {
        if !(1..=4096).contains(&partitions) {
            return Err(crate::Error::config(format!(
                "partitions must be between 1 and 4096, got {partitions}"
            )));
        }
        self.partitions = partitions;
        Ok(self)
    }

    /// Applies every migration not yet applied.
    ///
    /// # Errors
    ///
    /// [`crate::Error::Database`] if a statement fails; nothing is half-applied.
    pub async fn run<DB: MigrateDatabase>(&self, pool: &sqlx::Pool<DB>) -> Result<()> {
        DB::apply(pool, self).await
    }
}

/// A database eventbus can create its tables in.
#[async_trait::async_trait]
pub trait MigrateDatabase: sqlx::Database {
    /// Applies the pending migrations described by `migrator`.
    async fn apply(pool: &sqlx::Pool<Self>, migrator: &Migrator) -> Result<()>;
}

#[cfg(feature = "mysql")]
mod mysql;
#[cfg(feature = "sqlite")]
mod sqlite;

#[cfg(feature = "postgres")]
mod postgres {
    use sqlx::{PgPool, Postgres};

    use super::{MigrateDatabase, Migrator};
    use crate::error::Result;

    /// Serializes concurrent migrations across processes (an arbitrary constant).
    const LOCK_KEY: i64 = 0x6576_656e_7462_7573; // "eventbus"

    /// First key of the two-key advisory lock that lets one transaction at a
    /// time send the outbox NOTIFY (the second is the channel's hash).
    const NOTIFY_LOCK_CLASS: i32 = 0x6576_6e74; // "evnt"

    /// Migration steps: (component, version, SQL template). Never edit a released
    /// step; add a new one.
    fn steps(m: &Migrator) -> Vec<(String, i32, String)> {
        let outbox = &m.outbox;
        let t = outbox.quoted();
        let partitions_table = outbox.with_suffix("_partitions");
        let relays_table = outbox.with_suffix("_relays");
        let notify_fn = outbox.with_suffix("_notify");
        let channel = outbox.channel();
        let p = m.partitions;
        let idx = |s: &str| outbox.local_with_suffix(s);
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
            received = inbox.local_with_suffix("_received_at"),
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
            a = inbox.with_suffix(crate::inbox::ATTEMPTS_SUFFIX),
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
            t = inbox.with_suffix(crate::inbox::PARKED_SUFFIX),
            by_key = inbox.local_with_suffix("_parked_key"),
            by_due = inbox.local_with_suffix("_parked_due"),
        );
        vec![
            (format!("outbox:{outbox}"), 1, outbox_v1),
            (format!("outbox:{outbox}"), 2, outbox_v2),
            (format!("inbox:{inbox}"), 1, inbox_v1),
            (format!("inbox:{inbox}"), 2, inbox_v2),
            (format!("inbox:{inbox}"), 3, inbox_v3),
        ]
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
            for (component, version, sql) in steps(migrator) {
                let done: bool = sqlx::query_scalar(
                    "SELECT EXISTS (SELECT 1 FROM eventbus_migrations
                     WHERE component = $1 AND version = $2)",
                )
                .bind(&component)
                .bind(version)
                .fetch_one(&mut *tx)
                .await?;
                if done {
                    continue;
                }
                // No arguments: sent as a simple query, so several statements are fine.
                sqlx::Executor::execute(&mut *tx, sql.as_str()).await?;
                sqlx::query("INSERT INTO eventbus_migrations (component, version) VALUES ($1, $2)")
                    .bind(&component)
                    .bind(version)
                    .execute(&mut *tx)
                    .await?;
                tracing::info!(%component, version, "applied eventbus migration");
            }
            tx.commit().await?;
            Ok(())
        }
    }
}
