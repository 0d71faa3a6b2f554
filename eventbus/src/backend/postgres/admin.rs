//! The PostgreSQL [`AdminStore`]: status with `FILTER` aggregates, parked
//! rows matched by an `int8[]` of ids.

use sqlx::Row;

use crate::backend::Admin;
use crate::error::{Error, Result};
use crate::relay::{AdminStore, FailedRow, Status};

impl Admin<sqlx::Postgres> {
    /// Runs `sql`, which matches ids with `cardinality($1) = 0 OR id = ANY($1)`.
    async fn execute(&self, sql: &str, ids: &[i64]) -> Result<u64> {
        let done = sqlx::query(sql)
            .bind(ids)
            .execute(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        Ok(done.rows_affected())
    }
}

#[async_trait::async_trait]
impl AdminStore for Admin<sqlx::Postgres> {
    async fn failed(&self, limit: i64) -> Result<Vec<FailedRow>> {
        let sql = format!(
            "SELECT id, event_id, destination, partition_key, event_type, attempts, last_error, created_at \
             FROM {} WHERE state = 'failed' ORDER BY id LIMIT $1",
            self.table.quoted()
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
                    event_id: r.try_get("event_id")?,
                    destination: r.try_get("destination")?,
                    partition_key: r.try_get("partition_key")?,
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
             WHERE state = 'failed' AND (cardinality($1::int8[]) = 0 OR id = ANY($1))",
            self.table.quoted()
        );
        self.execute(&sql, ids).await
    }

    async fn skip(&self, ids: &[i64]) -> Result<u64> {
        let sql = format!(
            "DELETE FROM {} WHERE state = 'failed' \
             AND (cardinality($1::int8[]) = 0 OR id = ANY($1))",
            self.table.quoted()
        );
        self.execute(&sql, ids).await
    }

    async fn status(&self) -> Result<Status> {
        let t = self.table.quoted();
        let p = self.table.with_suffix("_partitions");
        let r = self.table.with_suffix("_relays");
        let counts = sqlx::query(&format!(
            "SELECT count(*) FILTER (WHERE state = 'pending') AS pending, \
                    count(*) FILTER (WHERE state = 'failed') AS failed, \
                    count(*) FILTER (WHERE state = 'published') AS published, \
                    coalesce(extract(epoch FROM now() - min(created_at) FILTER (WHERE state = 'pending')), 0)::float8 AS oldest \
             FROM {t}"
        ))
        .fetch_one(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        let relays = sqlx::query(&format!(
            "SELECT r.relay_id, r.name, extract(epoch FROM now() - r.heartbeat_at)::float8 AS age, \
                    (SELECT count(*) FROM {p} p WHERE p.owner = r.relay_id AND p.lease_expires_at > now()) AS owned \
             FROM {r} r ORDER BY r.relay_id"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        let unowned: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM {p} WHERE owner IS NULL OR lease_expires_at IS NULL OR lease_expires_at <= now()"
        ))
        .fetch_one(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        Ok(Status {
            pending: counts.try_get("pending")?,
            oldest_pending_seconds: counts.try_get("oldest")?,
            failed: counts.try_get("failed")?,
            published: counts.try_get("published")?,
            relays: relays
                .iter()
                .map(|row| {
                    Ok((
                        row.try_get("relay_id")?,
                        row.try_get("name")?,
                        row.try_get("age")?,
                        row.try_get("owned")?,
                    ))
                })
                .collect::<std::result::Result<_, sqlx::Error>>()?,
            unowned_partitions: unowned,
        })
    }
}
