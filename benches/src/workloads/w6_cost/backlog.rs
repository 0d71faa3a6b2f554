//! W6's backlogs: pending rows written by one `INSERT … SELECT
//! generate_series` statement, each as `Outbox::publish` writes a [`Tick`]
//! with a payload of the chosen size — checked against a row the SDK wrote.

use std::time::{Duration, Instant};

use eventbus::{Event, Outbox};
use sqlx::PgPool;
use uuid::Uuid;

use crate::error::{BenchError, Result};
use crate::event::Tick;

/// The CloudEvents source of every row, the SDK's and the generated ones.
const SOURCE: &str = "urn:bench";

/// `{"key":"<36-char uuid>","pad":""}`: the payload's bytes around the pad.
const PAYLOAD_FRAME: usize = 55;

/// Rows of the generated backlog compared with the SDK's row.
const COMPARED: i64 = 100;

/// The rows `Outbox::publish` writes for a `Tick`, made by the database: a
/// UUIDv7 event id (milliseconds of the clock, version 7, RFC 4122 variant,
/// random bits), a random UUID key (so the keys spread over the partitions
/// as the generated `partition` column hashes them), the key as subject,
/// no headers, the payload `{"key":…,"pad":"xxx…"}` and the client's clock
/// as `created_at`. The rest (state, attempts, txid…) are the table's
/// defaults, as for the SDK.
const FILL: &str = "INSERT INTO eventbus_outbox \
    (event_id, source, destination, partition_key, event_type, schema_version, subject, \
     headers, payload, created_at) \
    SELECT (lpad(to_hex(floor(extract(epoch FROM g.t) * 1000)::int8), 12, '0') || '7' \
            || substr(g.r, 1, 3) || substr('89ab', 1 + floor(random() * 4)::int, 1) \
            || substr(g.r, 4, 15))::uuid, \
           $1, $2, g.k, $3, $4, g.k, '{}'::jsonb, \
           jsonb_build_object('key', g.k, 'pad', repeat('x', $5)), g.t \
    FROM (SELECT gen_random_uuid()::text AS k, md5(random()::text) AS r, clock_timestamp() AS t \
          FROM generate_series(1, $6)) g";

/// What two rows of the same event type and payload size share: every
/// column but ids, keys, payload text and times, and the shape of those.
const SHAPE: &str = "SELECT DISTINCT concat_ws(' | ', \
        'source=' || coalesce(source, 'NULL'), 'destination=' || destination, \
        'type=' || event_type, 'version=' || schema_version, \
        'subject is key=' || (subject IS NOT DISTINCT FROM partition_key), \
        'headers=' || headers::text, 'state=' || state, 'attempts=' || attempts, \
        'due now=' || (next_attempt_at IS NULL), \
        'payload bytes=' || octet_length(payload::text), \
        'payload fields=' || (SELECT string_agg(f, ',' ORDER BY f) FROM jsonb_object_keys(payload) f), \
        'payload key is key=' || (payload->>'key' IS NOT DISTINCT FROM partition_key), \
        'uuid version=' || substr(event_id::text, 15, 1), \
        'uuid variant ok=' || (substr(event_id::text, 20, 1) IN ('8', '9', 'a', 'b')), \
        'key is uuid=' || (partition_key ~ '^[0-9a-f-]{36}$')) \
    FROM eventbus_outbox WHERE id = $1 OR id IN \
        (SELECT id FROM eventbus_outbox WHERE id <> $1 ORDER BY id LIMIT $2)";

/// The pad that makes a payload of `bytes` bytes.
pub(crate) fn pad_for(bytes: usize) -> Result<usize> {
    bytes.checked_sub(PAYLOAD_FRAME).ok_or_else(|| {
        BenchError::Options(format!(
            "a payload of {bytes} bytes is too small: the event itself takes {PAYLOAD_FRAME}"
        ))
    })
}

/// Writes `rows` pending rows with payloads of `payload_bytes` in one
/// statement (one transaction: they become pending together at its commit).
/// Returns how long it took.
pub(crate) async fn fill(pool: &PgPool, rows: usize, payload_bytes: usize) -> Result<Duration> {
    let pad = i32::try_from(pad_for(payload_bytes)?)
        .map_err(|_| BenchError::Options(format!("payload of {payload_bytes} bytes")))?;
    let rows = i64::try_from(rows).map_err(|_| BenchError::Options(format!("{rows} rows")))?;
    let version =
        i32::try_from(Tick::VERSION).map_err(|_| BenchError::Options("event version".into()))?;
    let started = Instant::now();
    sqlx::query(FILL)
        .bind(SOURCE)
        .bind(Tick::DESTINATION)
        .bind(Tick::TYPE)
        .bind(version)
        .bind(pad)
        .bind(rows)
        .execute(pool)
        .await?;
    Ok(started.elapsed())
}

/// Fails unless the generated rows with payloads of `payload_bytes` are the
/// rows the SDK writes: in the empty outbox of `pool`, writes one `Tick` of
/// that size through `Outbox::publish` and [`COMPARED`] rows through
/// [`fill`], compares them, and empties the outbox again.
pub(crate) async fn check_against_sdk(pool: &PgPool, payload_bytes: usize) -> Result<()> {
    let tick = Tick {
        key: Uuid::new_v4(),
        pad: "x".repeat(pad_for(payload_bytes)?),
    };
    if tick.json()?.len() != payload_bytes {
        return Err(BenchError::BaselineDiffers(format!(
            "the SDK's payload is {} bytes, not {payload_bytes}",
            tick.json()?.len()
        )));
    }
    let mut tx = pool.begin().await?;
    Outbox::new(SOURCE).publish(&mut tx, &tick).await?;
    tx.commit().await?;
    let sdk_id: i64 = sqlx::query_scalar("SELECT max(id) FROM eventbus_outbox")
        .fetch_one(pool)
        .await?;
    fill(pool, COMPARED as usize, payload_bytes).await?;
    let shapes: Vec<String> = sqlx::query_scalar(SHAPE)
        .bind(sdk_id)
        .bind(COMPARED)
        .fetch_all(pool)
        .await?;
    sqlx::query("DELETE FROM eventbus_outbox")
        .execute(pool)
        .await?;
    if shapes.len() != 1 {
        return Err(BenchError::BaselineDiffers(format!(
            "the generated outbox rows ({payload_bytes}-byte payloads) differ from the SDK's: {}",
            shapes.join("  ≠  ")
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pad_fills_the_payload_to_its_size() {
        for bytes in [256, 4_096, 65_536] {
            let tick = Tick {
                key: Uuid::new_v4(),
                pad: "x".repeat(pad_for(bytes).expect("large enough")),
            };
            assert_eq!(tick.json().expect("serializes").len(), bytes);
        }
        assert!(pad_for(54).is_err());
    }
}
