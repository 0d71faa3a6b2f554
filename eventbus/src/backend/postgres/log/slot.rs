//! The replication slot the log relay reads: what PostgreSQL says of it (the
//! lag and the WAL it keeps, for metrics, `status` and the disk-growth
//! guard), and the lock that lets one relay of a group read it at a time.

use sqlx::{Connection, PgConnection, PgPool, Row};

use super::lsn::Lsn;
use crate::error::{Error, Result};

/// The advisory-lock class of slot holders ("slot"); the key is the slot
/// name's hash, as the NOTIFY lock's is the channel's.
const SLOT_LOCK_CLASS: i32 = 0x736c_6f74;

/// A replication slot as PostgreSQL reports it (`pg_replication_slots`),
/// with the WAL it holds back measured against the server's current position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotStatus {
    /// A reader is streaming from it now.
    pub active: bool,
    /// That reader's backend.
    pub active_pid: Option<i32>,
    /// The position confirmed by the reader (`confirmed_flush_lsn`).
    pub confirmed_flush: Option<u64>,
    /// `reserved`, `extended`, `unreserved` or `lost` (past
    /// `max_slot_wal_keep_size`: the slot can no longer be read).
    pub wal_status: Option<String>,
    /// Bytes that can still be written before the slot is `lost`; `None`
    /// when `max_slot_wal_keep_size` is unlimited.
    pub safe_wal_size: Option<i64>,
    /// WAL written since the confirmed position: what the relay has not
    /// yet confirmed, in bytes.
    pub lag_bytes: i64,
    /// WAL the server keeps on disk for the slot, in bytes.
    pub retained_bytes: i64,
}

/// The status of slot `slot` of the current database; `None` when there is
/// no such slot.
///
/// # Errors
///
/// [`Error::Database`] when the query fails; [`Error::InvalidState`] for a
/// position PostgreSQL printed in a form it does not print.
pub async fn slot_status(pool: &PgPool, slot: &str) -> Result<Option<SlotStatus>> {
    let Some(row) = sqlx::query(
        "SELECT active, active_pid, confirmed_flush_lsn::text AS confirmed_flush, wal_status, \
                safe_wal_size, \
                COALESCE(pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn), 0)::int8 AS lag_bytes, \
                COALESCE(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn), 0)::int8 AS retained_bytes \
         FROM pg_replication_slots WHERE slot_name = $1 AND database = current_database()",
    )
    .bind(slot)
    .fetch_optional(pool)
    .await?
    else {
        return Ok(None);
    };
    let confirmed_flush = row
        .try_get::<Option<String>, _>("confirmed_flush")?
        .map(|text| {
            text.parse::<Lsn>()
                .map(|lsn| lsn.0)
                .map_err(|e| Error::InvalidState(format!("slot `{slot}`: {e}")))
        })
        .transpose()?;
    Ok(Some(SlotStatus {
        active: row.try_get("active")?,
        active_pid: row.try_get("active_pid")?,
        confirmed_flush,
        wal_status: row.try_get("wal_status")?,
        safe_wal_size: row.try_get("safe_wal_size")?,
        lag_bytes: row.try_get("lag_bytes")?,
        retained_bytes: row.try_get("retained_bytes")?,
    }))
}

/// The right to read a slot: a session advisory lock held on a connection
/// of its own, so that one relay of a group streams and the others stand
/// by. The lock ends with its session, so a holder that dies (or whose
/// connection is cut: TCP keepalives find out in seconds) lets the next
/// one in; PostgreSQL's refusal of a second reader of an active slot backs
/// it up. Session locks do not survive a transaction-pooling proxy: point
/// the relay at the server.
#[derive(Debug)]
pub struct SlotLock {
    conn: PgConnection,
    pid: i32,
}

impl SlotLock {
    /// Takes the lock of `slot` if no one holds it.
    ///
    /// # Errors
    ///
    /// [`Error::Database`] when the connection or the statement fails.
    pub async fn try_acquire(pool: &PgPool, slot: &str) -> Result<Option<SlotLock>> {
        let mut conn = pool.acquire().await?.detach();
        // A holder cut off from the server must lose the lock in seconds,
        // not after the operating system's two hours.
        sqlx::query(
            "SELECT set_config('tcp_keepalives_idle', '5', false), \
                    set_config('tcp_keepalives_interval', '2', false), \
                    set_config('tcp_keepalives_count', '3', false)",
        )
        .execute(&mut conn)
        .await?;
        let row = sqlx::query(
            "SELECT pg_try_advisory_lock($1, hashtext($2)) AS taken, pg_backend_pid() AS pid",
        )
        .bind(SLOT_LOCK_CLASS)
        .bind(slot)
        .fetch_one(&mut conn)
        .await?;
        if !row.try_get::<bool, _>("taken")? {
            conn.close().await?;
            return Ok(None);
        }
        Ok(Some(SlotLock {
            pid: row.try_get("pid")?,
            conn,
        }))
    }

    /// The backend whose session holds the lock.
    pub fn backend_pid(&self) -> i32 {
        self.pid
    }

    /// Whether the lock is still held: its session answers.
    pub async fn alive(&mut self) -> bool {
        self.conn.ping().await.is_ok()
    }

    /// Gives the lock up.
    ///
    /// # Errors
    ///
    /// [`Error::Database`] when the session is gone (the lock went with it).
    pub async fn release(mut self) -> Result<()> {
        sqlx::query("SELECT pg_advisory_unlock_all()")
            .execute(&mut self.conn)
            .await?;
        self.conn.close().await?;
        Ok(())
    }
}
