//! The MySQL [`AdminStore`]: status with `SUM` over conditions, parked rows
//! matched by a comma-separated list of ids (`FIND_IN_SET`).

use sqlx::Row;

use super::{int_list, text, NOW};
use crate::backend::dialect::Dialect;
use crate::backend::relay::uuid_text;
use crate::backend::Admin;
use crate::error::{Error, Result};
use crate::relay::{AdminStore, FailedRow, Status};

impl Admin<sqlx::MySql> {
    /// Runs `sql`, which matches ids with `? = '' OR FIND_IN_SET(id, ?)`.
    async fn execute(&self, sql: &str, ids: &[i64]) -> Result<u64> {
        let list = int_list(ids);
        let done = sqlx::query(sql)
            .bind(&list)
            .bind(&list)
            .execute(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        Ok(done.rows_affected())
    }
}

#[async_trait::async_trait]
impl AdminStore for Admin<sqlx::MySql> {
    async fn failed(&self, limit: i64) -> Result<Vec<FailedRow>> {
        let sql = format!(
            "SELECT id, event_id, destination, partition_key, event_type, attempts, last_error, created_at \
             FROM {} WHERE state = 'failed' ORDER BY id LIMIT ?",
            Dialect::MYSQL.table(&self.table)
        );
        let rows = sqlx::query(&sql)
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        rows.iter()
            .map(|r| {
                Ok(FailedRow {
                    id: r.try_get("id")?,
                    event_id: uuid_text(r, "event_id")?,
                    destination: r.try_get("destination")?,
                    partition_key: text(r, "partition_key")?,
                    event_type: r.try_get("event_type")?,
                    attempts: r.try_get("attempts")?,
                    last_error: r.try_get("last_error")?,
                    created_at: r.try_get("created_at")?,
                })
            })
            .collect::<std::result::Result<_, sqlx::Error>>()
            .map_err(Error::Database)
    }

    async fn retry(&self, ids: &[i64]) -> Result<u64> {
        let sql = format!(
            "UPDATE {} SET state = 'pending', attempts = 0, next_attempt_at = NULL \
             WHERE state = 'failed' AND (? = '' OR FIND_IN_SET(id, ?))",
            Dialect::MYSQL.table(&self.table)
        );
        self.execute(&sql, ids).await
    }

    async fn skip(&self, ids: &[i64]) -> Result<u64> {
        let sql = format!(
            "DELETE FROM {} WHERE state = 'failed' AND (? = '' OR FIND_IN_SET(id, ?))",
            Dialect::MYSQL.table(&self.table)
        );
        self.execute(&sql, ids).await
    }

    async fn status(&self) -> Result<Status> {
        let t = Dialect::MYSQL.table(&self.table);
        let p = Dialect::MYSQL.object(&self.table, "_partitions");
        let r = Dialect::MYSQL.object(&self.table, "_relays");
        // SUM() is DECIMAL in MySQL: cast back to BIGINT.
        let counts = sqlx::query(&format!(
            "SELECT CAST(COALESCE(SUM(state = 'pending'), 0) AS SIGNED) AS pending, \
                    CAST(COALESCE(SUM(state = 'failed'), 0) AS SIGNED) AS failed, \
                    CAST(COALESCE(SUM(state = 'published'), 0) AS SIGNED) AS published, \
                    TIMESTAMPDIFF(MICROSECOND, \
                        MIN(CASE WHEN state = 'pending' THEN created_at END), {NOW}) AS oldest_us \
             FROM {t}"
        ))
        .fetch_one(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        let relays = sqlx::query(&format!(
            "SELECT r.relay_id, r.name, TIMESTAMPDIFF(MICROSECOND, r.heartbeat_at, {NOW}) AS age_us, \
                    (SELECT COUNT(*) FROM {p} p WHERE p.owner = r.relay_id \
                        AND p.lease_expires_at > {NOW}) AS owned \
             FROM {r} r ORDER BY r.relay_id"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        let unowned: i64 = sqlx::query_scalar(&format!(
            "SELECT COUNT(*) FROM {p} \
             WHERE owner IS NULL OR lease_expires_at IS NULL OR lease_expires_at <= {NOW}"
        ))
        .fetch_one(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        let seconds = |us: Option<i64>| us.unwrap_or(0).max(0) as f64 / 1e6;
        Ok(Status {
            pending: counts.try_get("pending")?,
            oldest_pending_seconds: seconds(counts.try_get("oldest_us")?),
            failed: counts.try_get("failed")?,
            published: counts.try_get("published")?,
            relays: relays
                .iter()
                .map(|row| {
                    Ok((
                        uuid_text(row, "relay_id")?,
                        row.try_get("name")?,
                        seconds(row.try_get("age_us")?),
                        row.try_get("owned")?,
                    ))
                })
                .collect::<std::result::Result<_, sqlx::Error>>()?,
            unowned_partitions: unowned,
        })
    }
}
