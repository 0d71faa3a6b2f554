//! MySQL and MariaDB migrations: the same tables and columns as on PostgreSQL
//! in MySQL types, the `<outbox>_write_locks` table and `BEFORE INSERT`
//! trigger that keep commit order per partition, and a named lock
//! (`GET_LOCK`) to serialise migrators.
//!
//! MySQL commits each DDL statement by itself, so a migration cannot be one
//! transaction: every statement is idempotent instead (`IF NOT EXISTS`,
//! `INSERT IGNORE`, drop-and-create for the trigger), and a step is recorded
//! only after all its statements succeeded. A migration cut short is finished
//! by the next run.

use sqlx::pool::PoolConnection;

use crate::backend::sql::composed;
use sqlx::{Executor, MySql, MySqlPool};

use super::{NOW, WRITE_LOCKS_SUFFIX};
use crate::backend::dialect::Dialect;
use crate::backend::migrate::{apply_steps, Steps};
use crate::error::{Error, Result};
use crate::migrate::{MigrateDatabase, Migrator};

/// The server-wide named lock migrators take (`GET_LOCK`).
const LOCK_NAME: &str = "eventbus_migrate";

/// How long a migrator waits for another to finish, in seconds.
const LOCK_WAIT_SECONDS: i64 = 120;

/// A hyphenated UUID, so a malformed `event_id` is refused at insert instead
/// of stalling the relay later.
const UUID_PATTERN: &str =
    "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$";

/// Migration steps: (component, version, statements). Never edit a released
/// step; add a new one.
fn steps(m: &Migrator) -> Vec<(String, i32, Vec<String>)> {
    let outbox = &m.outbox;
    let t = Dialect::MYSQL.table(outbox);
    let partitions_table = Dialect::MYSQL.object(outbox, "_partitions");
    let write_locks = Dialect::MYSQL.object(outbox, WRITE_LOCKS_SUFFIX);
    let relays_table = Dialect::MYSQL.object(outbox, "_relays");
    let trigger = Dialect::MYSQL.object(outbox, "_commit_order");
    let p = m.partitions;
    let partition_rows = (0..p)
        .map(|i| format!("({i})"))
        .collect::<Vec<_>>()
        .join(", ");
    let outbox_v1 = vec![
        format!(
            r#"
CREATE TABLE IF NOT EXISTS {t} (
    id              BIGINT       NOT NULL AUTO_INCREMENT,
    event_id        CHAR(36)     CHARACTER SET ascii NOT NULL DEFAULT (UUID())
                                 CHECK (event_id REGEXP '{UUID_PATTERN}'),
    source          VARCHAR(1024),
    destination     VARCHAR(255) NOT NULL,
    partition_key   VARCHAR(512) COLLATE utf8mb4_bin NOT NULL,
    `partition`     INT          AS (CRC32(partition_key) % {p}) STORED,
    event_type      VARCHAR(255) NOT NULL,
    schema_version  INT          NOT NULL DEFAULT 1,
    subject         VARCHAR(1024),
    headers         LONGTEXT     NOT NULL DEFAULT ('{{}}') CHECK (JSON_VALID(headers)),
    payload         LONGTEXT     NOT NULL CHECK (JSON_VALID(payload)),
    created_at      DATETIME(6)  NOT NULL DEFAULT ({NOW}),
    state           VARCHAR(16)  NOT NULL DEFAULT 'pending'
                                 CHECK (state IN ('pending', 'failed', 'published')),
    attempts        INT          NOT NULL DEFAULT 0,
    next_attempt_at DATETIME(6),
    last_error      TEXT,
    published_at    DATETIME(6),
    blocks_key      TINYINT      AS (IF(state = 'failed' OR (state = 'pending' AND attempts > 0), 1, NULL)) VIRTUAL,
    PRIMARY KEY (id),
    UNIQUE KEY event_id (event_id),
    KEY pending (state, id),
    KEY blocked (blocks_key, `partition`, partition_key, id),
    KEY backlog (state, `partition`, created_at),
    KEY published (state, published_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4"#
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {partitions_table} (
    `partition`      INT         NOT NULL PRIMARY KEY,
    owner            CHAR(36)    CHARACTER SET ascii,
    epoch            BIGINT      NOT NULL DEFAULT 0,
    lease_expires_at DATETIME(6)
) ENGINE = InnoDB"
        ),
        format!("INSERT IGNORE INTO {partitions_table} (`partition`) VALUES {partition_rows}"),
        format!(
            "CREATE TABLE IF NOT EXISTS {write_locks} (
    `partition` INT NOT NULL PRIMARY KEY
) ENGINE = InnoDB"
        ),
        format!("INSERT IGNORE INTO {write_locks} (`partition`) VALUES {partition_rows}"),
        format!(
            "CREATE TABLE IF NOT EXISTS {relays_table} (
    relay_id     CHAR(36)     CHARACTER SET ascii NOT NULL PRIMARY KEY,
    name         VARCHAR(255) NOT NULL,
    started_at   DATETIME(6)  NOT NULL DEFAULT ({NOW}),
    heartbeat_at DATETIME(6)  NOT NULL DEFAULT ({NOW})
) ENGINE = InnoDB"
        ),
        format!("DROP TRIGGER IF EXISTS {trigger}"),
        // Rows inserted with plain SQL take their partition's write lock before
        // their id is assigned, as `publish` does (docs/outbox-table.md).
        format!(
            "CREATE TRIGGER {trigger} BEFORE INSERT ON {t} FOR EACH ROW
BEGIN
    DECLARE locked INT;
    SELECT `partition` INTO locked FROM {write_locks}
        WHERE `partition` = CRC32(NEW.partition_key) % {p} FOR UPDATE;
END"
        ),
    ];
    let inbox = &m.inbox;
    let inbox_v1 = vec![format!(
        "CREATE TABLE IF NOT EXISTS {i} (
    consumer    VARCHAR(255) COLLATE utf8mb4_bin NOT NULL,
    source      VARCHAR(255) COLLATE utf8mb4_bin NOT NULL,
    message_id  VARCHAR(255) COLLATE utf8mb4_bin NOT NULL,
    event_type  VARCHAR(255),
    received_at DATETIME(6)  NOT NULL DEFAULT ({NOW}),
    PRIMARY KEY (consumer, source, message_id),
    KEY received_at (consumer, received_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4",
        i = Dialect::MYSQL.table(inbox),
    )];
    // Durable attempt counts (crate::inbox::AttemptsDatabase).
    let inbox_v2 = vec![format!(
        "CREATE TABLE IF NOT EXISTS {a} (
    consumer    VARCHAR(255) COLLATE utf8mb4_bin NOT NULL,
    source      VARCHAR(255) COLLATE utf8mb4_bin NOT NULL,
    message_id  VARCHAR(255) COLLATE utf8mb4_bin NOT NULL,
    attempts    INT          NOT NULL,
    last_error  TEXT,
    updated_at  DATETIME(6)  NOT NULL DEFAULT ({NOW}),
    PRIMARY KEY (consumer, source, message_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4",
        a = Dialect::MYSQL.object(inbox, crate::inbox::ATTEMPTS_SUFFIX),
    )];
    // Parked messages (crate::inbox::ParkedDatabase).
    let inbox_v3 = vec![format!(
        "CREATE TABLE IF NOT EXISTS {t} (
    id          BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    consumer    VARCHAR(255) COLLATE utf8mb4_bin NOT NULL,
    message_key VARCHAR(255) COLLATE utf8mb4_bin NOT NULL,
    source      VARCHAR(255) COLLATE utf8mb4_bin NOT NULL,
    message_id  VARCHAR(255) COLLATE utf8mb4_bin NOT NULL,
    origin      VARCHAR(255) COLLATE utf8mb4_bin NOT NULL,
    state       VARCHAR(16)  NOT NULL,
    holds_key   BIGINT       NOT NULL,
    attempts    BIGINT       NOT NULL,
    due_at      BIGINT       NOT NULL,
    parked_at   BIGINT       NOT NULL,
    reason      TEXT,
    event       LONGTEXT     COLLATE utf8mb4_bin NOT NULL,
    UNIQUE KEY message (consumer, source, message_id),
    KEY by_key (consumer, message_key, id),
    KEY by_due (consumer, due_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4",
        t = Dialect::MYSQL.object(inbox, crate::inbox::PARKED_SUFFIX),
    )];
    // Scheduled events (crate::outbox::schedule): due times in milliseconds
    // since the epoch.
    let outbox_v2 = vec![format!(
        "CREATE TABLE IF NOT EXISTS {s} (
    id             BIGINT        NOT NULL AUTO_INCREMENT PRIMARY KEY,
    event_id       CHAR(36)      CHARACTER SET ascii NOT NULL,
    source         VARCHAR(1024),
    destination    VARCHAR(255)  NOT NULL,
    partition_key  VARCHAR(512)  NOT NULL,
    event_type     VARCHAR(255)  NOT NULL,
    schema_version INT           NOT NULL DEFAULT 1,
    subject        VARCHAR(1024),
    headers        LONGTEXT      NOT NULL CHECK (JSON_VALID(headers)),
    payload        LONGTEXT      NOT NULL CHECK (JSON_VALID(payload)),
    created_at     BIGINT        NOT NULL,
    due_at         BIGINT        NOT NULL,
    UNIQUE KEY event_id (event_id),
    KEY due (due_at, id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4",
        s = Dialect::MYSQL.object(outbox, crate::outbox::SCHEDULED_SUFFIX),
    )];
    // Saga instances (crate::saga): state as JSON text, times in
    // milliseconds since the epoch.
    let sagas = &m.sagas;
    let sagas_v1 = vec![format!(
        "CREATE TABLE IF NOT EXISTS {s} (
    saga         VARCHAR(255) COLLATE utf8mb4_bin NOT NULL,
    instance_id  VARCHAR(255) COLLATE utf8mb4_bin NOT NULL,
    state        LONGTEXT     NOT NULL CHECK (JSON_VALID(state)),
    status       VARCHAR(16)  NOT NULL CHECK (status IN ('active', 'completed')),
    version      BIGINT       NOT NULL,
    timeouts     LONGTEXT     NOT NULL CHECK (JSON_VALID(timeouts)),
    started_at   BIGINT       NOT NULL,
    updated_at   BIGINT       NOT NULL,
    completed_at BIGINT,
    PRIMARY KEY (saga, instance_id),
    KEY by_status (saga, status, updated_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4",
        s = Dialect::MYSQL.table(sagas),
    )];
    Steps {
        sagas: vec![sagas_v1],
        outbox: vec![outbox_v1, outbox_v2],
        inbox: vec![inbox_v1, inbox_v2, inbox_v3],
    }
    .numbered(m)
}

/// Applies the steps not yet recorded, on `conn`, which holds the migration lock.
async fn create_and_apply(conn: &mut PoolConnection<MySql>, migrator: &Migrator) -> Result<()> {
    conn.execute(composed(format!(
        "CREATE TABLE IF NOT EXISTS eventbus_migrations (
                component  VARCHAR(255) NOT NULL,
                version    INT          NOT NULL,
                applied_at DATETIME(6)  NOT NULL DEFAULT ({NOW}),
                PRIMARY KEY (component, version)
            ) ENGINE = InnoDB"
    )))
    .await?;
    apply_steps::<MySql>(&mut **conn, steps(migrator)).await
}

#[async_trait::async_trait]
impl MigrateDatabase for MySql {
    async fn apply(pool: &MySqlPool, migrator: &Migrator) -> Result<()> {
        let mut conn = pool.acquire().await?;
        // A named lock belongs to the session, across the implicit commits of
        // DDL: concurrent migrators wait here, then find the work done.
        let locked: Option<i64> = sqlx::query_scalar("SELECT GET_LOCK(?, ?)")
            .bind(LOCK_NAME)
            .bind(LOCK_WAIT_SECONDS)
            .fetch_one(&mut *conn)
            .await?;
        if locked != Some(1) {
            return Err(Error::config(format!(
                "another eventbus migration held the `{LOCK_NAME}` lock for more than \
                 {LOCK_WAIT_SECONDS} s"
            )));
        }
        let outcome = create_and_apply(&mut conn, migrator).await;
        let released = sqlx::query("SELECT RELEASE_LOCK(?)")
            .bind(LOCK_NAME)
            .execute(&mut *conn)
            .await;
        if released.is_err() {
            // Never hand a connection that may still hold the lock back to
            // the pool: closing it ends the session and frees the lock.
            let _ = conn.close().await;
        }
        outcome
    }
}
