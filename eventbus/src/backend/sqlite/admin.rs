//! The SQLite [`AdminStore`]: the same view as on PostgreSQL and MySQL, with
//! ages from `julianday` over the text timestamps and ids bound as a JSON
//! array (`json_each`).

use sqlx::Row;

use super::{json_array, parse_timestamp, NOW};
use crate::backend::relay::{decode_error, uuid_text};
use crate::backend::Admin;
use crate::error::{Error, Result};
use crate::relay::{AdminStore, FailedRow, Status};

impl Admin<sqlx::Sqlite> {
    /// Runs `sql`, which matches ids with `json_array_length(?1) = 0 OR id IN
    /// (SELECT value FROM json_each(?1))`.
    async fn execute(&self, sql: &str, ids: &[i64]) -> Result<u64> {
        let done = sqlx::query(sql)
            .bind(json_array(ids))
            .execute(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        Ok(done.rows_affected())
    }
}

/// Matches the ids bound as `?1`, or every row when the list is empty.
const CHOSEN: &str = "(json_array_length(?1) = 0 OR id IN (SELECT value FROM json_each(?1)))";

#[async_trait::async_trait]
impl AdminStore for Admin<sqlx::Sqlite> {
    async fn failed(&self, limit: i64) -> Result<Vec<FailedRow>> {
        let sql = format!(
            "SELECT id, event_id, destination, partition_key, event_type, attempts, last_error, \
                    strftime('%Y-%m-%dT%H:%M:%fZ', created_at) AS created_at \
             FROM {} WHERE state = 'failed' ORDER BY id LIMIT ?1",
            self.table.quoted()
        );
        let rows = sqlx::query(&sql)
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        rows.iter()
            .map(|r| {
                let created_at: Option<String> = r.try_get("created_at")?;
                let created_at = created_at.unwrap_or_default();
                Ok(FailedRow {
                    id: r.try_get("id")?,
                    event_id: uuid_text(r, "event_id")?,
                    destination: r.try_get("destination")?,
                    partition_key: r.try_get("partition_key")?,
                    event_type: r.try_get("event_type")?,
                    attempts: r.try_get("attempts")?,
                    last_error: r.try_get("last_error")?,
                    created_at: parse_timestamp(&created_at)
                        .map_err(|e| decode_error("created_at", e))?,
                })
            })
            .collect::<std::result::Result<_, sqlx::Error>>()
            .map_err(Error::Database)
    }

    async fn retry(&self, ids: &[i64]) -> Result<u64> {
        let sql = format!(
            "UPDATE {} SET state = 'pending', attempts = 0, next_attempt_at = NULL \
             WHERE state = 'failed' AND {CHOSEN}",
            self.table.quoted()
        );
        self.execute(&sql, ids).await
    }

    async fn skip(&self, ids: &[i64]) -> Result<u64> {
        let sql = format!(
            "DELETE FROM {} WHERE state = 'failed' AND {CHOSEN}",
            self.table.quoted()
        );
        self.execute(&sql, ids).await
    }

    async fn status(&self) -> Result<Status> {
        let t = self.table.quoted();
        let p = self.table.with_suffix("_partitions");
        let r = self.table.with_suffix("_relays");
        let counts = sqlx::query(&format!(
            "SELECT coalesce(sum(state = 'pending'), 0) AS pending, \
                    coalesce(sum(state = 'failed'), 0) AS failed, \
                    coalesce(sum(state = 'published'), 0) AS published, \
                    coalesce((julianday('now') - min(CASE WHEN state = 'pending' \
                        THEN julianday(created_at) END)) * 86400.0, 0.0) AS oldest \
             FROM {t}"
        ))
        .fetch_one(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        let relays = sqlx::query(&format!(
            "SELECT r.relay_id, r.name, \
                    (julianday('now') - julianday(r.heartbeat_at)) * 86400.0 AS age, \
                    (SELECT count(*) FROM {p} p WHERE p.owner = r.relay_id \
                        AND p.lease_expires_at > {NOW}) AS owned \
             FROM {r} r ORDER BY r.relay_id"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        let unowned: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM {p} \
             WHERE owner IS NULL OR lease_expires_at IS NULL OR lease_expires_at <= {NOW}"
        ))
        .fetch_one(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        Ok(Status {
            pending: counts.try_get("pending")?,
            oldest_pending_seconds: counts.try_get::<f64, _>("oldest")?.max(0.0),
            failed: counts.try_get("failed")?,
            published: counts.try_get("published")?,
            relays: relays
                .iter()
                .map(|row| {
                    Ok((
                        uuid_text(row, "relay_id")?,
                        row.try_get("name")?,
                        row.try_get::<f64, _>("age")?.max(0.0),
                        row.try_get("owned")?,
                    ))
                })
                .collect::<std::result::Result<_, sqlx::Error>>()?,
            unowned_partitions: unowned,
        })
    }
}
