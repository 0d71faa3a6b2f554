//! The PostgreSQL [`RelayStore`]: lease table, snapshot-safe claiming
//! (`txid < pg_snapshot_xmin`), fenced acknowledgement and LISTEN/NOTIFY wake-ups.

use crate::backend::sql::composed;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgListener, PgRow};
use sqlx::{PgPool, Postgres, Row};
use tokio::sync::Notify;
use uuid::Uuid;

use super::millis;
use crate::backend::dialect::Dialect;
use crate::backend::relay::{RelaySql, SqlRelay, SqlStore};
use crate::backend::row::Lenient;
use crate::error::Result;
use crate::outbox::OutboxRecord;
use crate::relay::KeyGate;
use crate::relay::{ClaimLimits, Lease, Rejection, Retention};
use crate::table::TableName;

/// The relay's view of a PostgreSQL outbox table.
#[derive(Debug, Clone)]
pub struct PgRelayStore {
    store: SqlStore<Postgres, Own>,
}

/// PostgreSQL's own relay statements (see [`RelaySql`] for the shared ones).
#[derive(Debug)]
pub(crate) struct Own {
    claim: String,
    delete: String,
    mark_published: String,
    reject: String,
}

/// How long the oldest row of a partition held back by the snapshot rule
/// has waited (see `claim`).
const HELD_BACK: &str = "extract(epoch FROM now() - min(o.created_at) \
     FILTER (WHERE o.txid >= pg_snapshot_xmin(pg_current_snapshot())))::float8";

fn statements(table: &TableName) -> RelaySql<Own> {
    RelaySql::new(Dialect::POSTGRES, table, HELD_BACK, |names| {
        let t = &names.outbox;
        let p = &names.partitions;
        // A row may be touched only while this relay ($2) holds its partition,
        // in the tenure (epoch) it was claimed in: `$n` and `$n+1` are the
        // partitions and epochs of the relay's leases.
        let fence = |n: u8| {
            format!(
                "{p}.partition = o.partition AND {p}.owner = $2 AND {p}.lease_expires_at > now() \
                 AND ({p}.partition, {p}.epoch) IN (SELECT * FROM UNNEST(${n}::int4[], ${m}::int8[]))",
                m = n + 1
            )
        };
        Own {
            // The lease fence is the set of partitions held now, computed once
            // (an init plan), not an EXISTS per row: with EXISTS the planner
            // misjudged how many rows survive and chose a full scan and sort
            // of the outbox (145 ms per claim at 200k pending rows, instead of
            // 1 ms walking the pending index in id order). See also `claim`.
            //
            // The byte budget: each payload is measured here (`size`, $5 the
            // largest loaded), a running total over the claimed rows keeps the
            // prefix within $4 (always one row), and a payload over $5 is not
            // sent at all. The size is of jsonb's text without the space it
            // prints after each `,` and `:` (compact JSON, as the publisher
            // measured it; a `, ` inside a string loses its space too, so the
            // size errs low, and `prepare` still checks what is loaded).
            //
            // $6: ids of the relay's own batches in flight, passed over.
            claim: format!(
                "SELECT w.id, w.event_id, w.source, w.destination, w.partition_key, w.partition, \
                        w.event_type, w.schema_version, w.subject, w.headers, \
                        CASE WHEN w.size <= $5 THEN w.payload::text END AS payload, w.size, \
                        w.created_at, w.attempts, w.settled \
                 FROM (SELECT c.*, row_number() OVER claimed AS n, \
                              sum(CASE WHEN c.size <= $5 THEN c.size ELSE 0 END) OVER claimed AS running \
                       FROM (SELECT o.id, o.event_id, o.source, o.destination, o.partition_key, \
                                    o.partition, o.event_type, o.schema_version, o.subject, \
                                    o.headers, o.payload, o.created_at, o.attempts, \
                                    octet_length(replace(replace(o.payload::text, ', ', ','), ': ', ':'))::int8 AS size, \
                                    o.txid < pg_snapshot_xmin(pg_current_snapshot()) AS settled \
                 FROM {t} o \
                 WHERE o.state = 'pending' \
                   AND o.partition = ANY(ARRAY(SELECT {p}.partition FROM {p} \
                       WHERE {p}.partition = ANY($1) AND {p}.owner = $2 \
                         AND {p}.lease_expires_at > now())) \
                   AND (o.next_attempt_at IS NULL OR o.next_attempt_at <= now()) \
                   AND o.id <> ALL($6::int8[]) \
                   AND NOT EXISTS (SELECT 1 FROM {t} b \
                       WHERE b.partition = o.partition AND b.partition_key = o.partition_key \
                         AND b.id < o.id \
                         AND (b.state = 'failed' OR (b.state = 'pending' AND b.attempts > 0))) \
                 ORDER BY o.id LIMIT $3) c \
                       WINDOW claimed AS (ORDER BY c.id ROWS UNBOUNDED PRECEDING)) w \
                 WHERE w.n = 1 OR w.running <= $4 \
                 ORDER BY w.id"
            ),
            delete: format!(
                "DELETE FROM {t} o USING {p} WHERE o.id = ANY($1) AND {fence}",
                fence = fence(3)
            ),
            mark_published: format!(
                "UPDATE {t} o SET state = 'published', published_at = now() FROM {p} \
                 WHERE o.id = ANY($1) AND {fence}",
                fence = fence(3)
            ),
            reject: format!(
                "UPDATE {t} o SET attempts = o.attempts + 1, \
                        state = CASE WHEN u.park THEN 'failed' ELSE 'pending' END, \
                        next_attempt_at = CASE WHEN u.park THEN NULL \
                            ELSE now() + u.delay_ms * interval '1 millisecond' END, \
                        last_error = u.err \
                 FROM UNNEST($1::int8[], $3::bool[], $4::int8[], $5::text[]) AS u(id, park, delay_ms, err), {p} \
                 WHERE o.id = u.id AND {fence}",
                fence = fence(6)
            ),
        }
    })
}

impl PgRelayStore {
    /// The relay store for `table` in `pool`'s database.
    pub fn new(pool: PgPool, table: TableName) -> Self {
        let sql = statements(&table);
        PgRelayStore {
            store: SqlStore::new(pool, table, sql),
        }
    }
}

/// `json` as PostgreSQL prints jsonb (a space after every `,` and `:`
/// between tokens, none elsewhere), without the whitespace between tokens:
/// what `serde_json` prints for the same value. Strings are copied as they
/// are, escapes included.
pub(super) fn compact(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    let mut in_string = false;
    let mut escaped = false;
    for c in json.chars() {
        if in_string {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
        } else if c.is_ascii_whitespace() {
            continue;
        }
        out.push(c);
    }
    out
}

/// Leases as the two arrays the fence unnests.
fn split(leases: &[Lease]) -> (Vec<i32>, Vec<i64>) {
    leases.iter().map(|l| (l.partition, l.epoch)).unzip()
}

/// A claimed row; PostgreSQL's types guarantee every column but the JSON
/// ones, whose numbers may exceed what serde_json reads.
fn record(row: &PgRow) -> std::result::Result<OutboxRecord, sqlx::Error> {
    let mut r = Lenient::new(row);
    let headers = r.get("headers").unwrap_or(serde_json::Value::Null);
    // jsonb's text comes back re-spaced (`{"a": 1}`); send the compact
    // form the publisher measured and wrote. Read as text and compacted in
    // one pass: parsing it into a tree and printing it again was most of
    // the relay's allocations (W2).
    let payload = r
        .get::<String>("payload")
        .map(|text| compact(&text))
        .unwrap_or_default();
    let record = OutboxRecord {
        id: r.required("id")?,
        event_id: r.required("event_id")?,
        source: r.required("source")?,
        destination: r.required("destination")?,
        partition_key: r.required("partition_key")?,
        partition: r.required("partition")?,
        event_type: r.required("event_type")?,
        schema_version: r.required("schema_version")?,
        subject: r.required("subject")?,
        headers,
        payload,
        created_at: r.required("created_at")?,
        attempts: r.required("attempts")?,
        defect: None,
    };
    Ok(r.finish(record))
}

#[async_trait::async_trait]
impl SqlRelay for PgRelayStore {
    type Db = Postgres;
    type Own = Own;

    fn store(&self) -> &SqlStore<Postgres, Own> {
        &self.store
    }

    async fn claim(
        &self,
        relay: Uuid,
        partitions: &[i32],
        limits: ClaimLimits,
        skip: &[i64],
    ) -> Result<Vec<OutboxRecord>> {
        // The claim must walk the pending index in id order and stop after
        // `limit` rows. Without fresh statistics (a large backlog written
        // since the last ANALYZE) the planner expects a handful of pending
        // rows and prefers a bitmap scan of all of them plus a sort: 4.7 s
        // per batch at a million rows instead of 1.4 ms. So, for this
        // statement only, rule out the plans that read every pending row.
        let mut tx = self.store.begin().await?;
        sqlx::query(
            "SELECT set_config('enable_bitmapscan', 'off', true), \
                    set_config('enable_seqscan', 'off', true)",
        )
        .execute(&mut *tx)
        .await
        .map_err(|e| self.store.err(e))?;
        let rows = sqlx::query(composed(&self.store.sql.own.claim))
            .bind(partitions)
            .bind(relay)
            .bind(i64::from(limits.rows))
            .bind(i64::try_from(limits.bytes).unwrap_or(i64::MAX))
            .bind(i64::try_from(limits.max_message_bytes).unwrap_or(i64::MAX))
            .bind(skip)
            .fetch_all(&mut *tx)
            .await
            .map_err(|e| self.store.err(e))?;
        tx.commit().await.map_err(|e| self.store.err(e))?;
        let mut claimed = Vec::with_capacity(rows.len());
        let mut gate = KeyGate::default();
        for row in &rows {
            let settled: bool = row.try_get("settled")?;
            let size: i64 = row.try_get("size")?;
            let mut record = record(row)?;
            let size = u64::try_from(size).unwrap_or(0);
            if limits.withholds(size) {
                record.defect = Some(limits.oversized(size));
            }
            if gate.admit(settled, &record) {
                claimed.push(record);
            }
        }
        Ok(claimed)
    }

    async fn acknowledge(
        &self,
        relay: Uuid,
        leases: &[Lease],
        ids: &[i64],
        retention: Retention,
    ) -> Result<u64> {
        let (partitions, epochs) = split(leases);
        let sql = match retention {
            Retention::Delete => &self.store.sql.own.delete,
            Retention::Keep(_) => &self.store.sql.own.mark_published,
        };
        let done = sqlx::query(composed(sql))
            .bind(ids)
            .bind(relay)
            .bind(partitions)
            .bind(epochs)
            .execute(&self.store.pool)
            .await
            .map_err(|e| self.store.err(e))?;
        Ok(done.rows_affected())
    }

    async fn reject(&self, relay: Uuid, leases: &[Lease], rejections: &[Rejection]) -> Result<()> {
        let (partitions, epochs) = split(leases);
        let ids: Vec<i64> = rejections.iter().map(|r| r.id).collect();
        let park: Vec<bool> = rejections.iter().map(|r| r.park).collect();
        let delays: Vec<i64> = rejections.iter().map(|r| millis(r.retry_in)).collect();
        let errors: Vec<&str> = rejections.iter().map(|r| r.error.as_str()).collect();
        sqlx::query(composed(&self.store.sql.own.reject))
            .bind(&ids)
            .bind(relay)
            .bind(&park)
            .bind(&delays)
            .bind(&errors)
            .bind(partitions)
            .bind(epochs)
            .execute(&self.store.pool)
            .await
            .map_err(|e| self.store.err(e))?;
        Ok(())
    }

    async fn listen(&self, notify: Arc<Notify>) -> Result<()> {
        let mut listener = PgListener::connect_with(&self.store.pool).await?;
        listener.listen(&super::channel(&self.store.table)).await?;
        loop {
            // `try_recv` reconnects by itself and yields `None` after a reconnect,
            // when notifications may have been lost: wake the relay either way.
            match listener.try_recv().await {
                Ok(_) => notify.notify_one(),
                Err(e) => {
                    tracing::warn!(error = %e, "outbox LISTEN connection failed; polling until it is back");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::compact;

    #[test]
    fn compact_drops_whitespace_between_tokens_only() {
        assert_eq!(compact(r#"{"a": 1, "b": [1, 2]}"#), r#"{"a":1,"b":[1,2]}"#);
        assert_eq!(
            compact(r#"{"s": "x, y: z", "q": "say \"a, b\"", "e": "\\"}"#),
            r#"{"s":"x, y: z","q":"say \"a, b\"","e":"\\"}"#
        );
        assert_eq!(
            compact(r#"{"n": 1e400, "u": "é ü"}"#),
            r#"{"n":1e400,"u":"é ü"}"#
        );
        assert_eq!(compact("[]"), "[]");
    }

    #[test]
    fn compact_prints_what_serde_json_prints() {
        let text = r#"{"key": "k, 1", "nested": {"list": [true, null, -1.5, "\"q\""]}}"#;
        let value: serde_json::Value = serde_json::from_str(text).expect("json");
        assert_eq!(compact(text), value.to_string());
    }
}
