//! The log read through PostgreSQL's SQL interface to a slot
//! (`pg_logical_slot_peek_binary_changes`): the same `pgoutput` bytes the
//! replication stream carries, on an ordinary connection, without moving
//! the slot. What the tests hold the decoder to; the relay streams instead.

use sqlx::PgPool;

use super::pgoutput::{decode, Frame, RelationCache, PROTO_VERSION};
use super::record::outbox_record;
use crate::error::{Error, Result};
use crate::outbox::OutboxRecord;
use crate::TableName;

/// The inserts into `table` that slot `slot` (plugin `pgoutput`) holds for
/// publication `publication`, in commit order, read without consuming them.
/// Each record's `partition` is 0: the log does not carry the generated
/// column.
///
/// # Errors
///
/// [`Error::Database`] when the slot or publication does not exist or the
/// server cannot decode; [`Error::InvalidState`] for a frame that is not
/// valid `pgoutput` or an insert without a readable id.
pub async fn peek_outbox_records(
    pool: &PgPool,
    slot: &str,
    publication: &str,
    table: &TableName,
) -> Result<Vec<OutboxRecord>> {
    let frames: Vec<Vec<u8>> = sqlx::query_scalar(
        "SELECT data FROM pg_logical_slot_peek_binary_changes($1, NULL, NULL, \
         'proto_version', $2, 'publication_names', $3, 'binary', 'true', 'messages', 'true')",
    )
    .bind(slot)
    .bind(PROTO_VERSION.to_string())
    .bind(publication)
    .fetch_all(pool)
    .await?;
    let mut relations = RelationCache::default();
    let mut records = Vec::new();
    for data in &frames {
        let frame = decode(data, PROTO_VERSION)
            .map_err(|e| Error::InvalidState(format!("a log frame that is not pgoutput: {e}")))?;
        match frame {
            Frame::Relation(relation) => relations.insert(relation),
            Frame::Insert { oid, tuple } => {
                let is_outbox = relations.get(oid).is_some_and(|r| {
                    r.name == table.name() && table.schema().is_none_or(|s| s == r.namespace)
                });
                if !is_outbox {
                    continue;
                }
                let row = relations
                    .row(oid, &tuple)
                    .map_err(|e| Error::InvalidState(format!("an outbox insert: {e}")))?;
                records.push(outbox_record(&row).map_err(|e| Error::InvalidState(e.to_string()))?);
            }
            _ => {}
        }
    }
    Ok(records)
}
