//! The benchmark event: a 256-byte JSON payload keyed by a UUID, and the
//! CloudEvents the relay makes of it (for the baselines, which must send the
//! same messages).

use chrono::Utc;
use eventbus::{Event, OutboxRecord, OutgoingMessage};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{BenchError, Result};

/// Size of every serialized payload.
pub(crate) const PAYLOAD_BYTES: usize = 256;

/// `{"key":"<36-char uuid>","pad":"…"}` is 55 bytes around the pad.
const PAD: usize = PAYLOAD_BYTES - 55;

/// The source the relay stamps on rows that carry none.
pub(crate) const DEFAULT_SOURCE: &str = "urn:eventbus:outbox-relay";

/// One benchmark event. Its `key` is the partition key and identifies it in
/// the latency timelines.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema, eventbus::Event)]
#[event(type = "com.example.bench.tick", version = 1, destination = "ticks", key = key)]
pub(crate) struct Tick {
    /// UUID key: ordering key and identity.
    #[schemars(with = "String")]
    pub(crate) key: Uuid,
    /// Padding up to [`PAYLOAD_BYTES`].
    pub(crate) pad: String,
}

impl Tick {
    /// A fresh event with a random key.
    pub(crate) fn new() -> Self {
        Tick {
            key: Uuid::new_v4(),
            pad: "x".repeat(PAD),
        }
    }

    /// The payload as the outbox stores it.
    pub(crate) fn json(&self) -> Result<String> {
        serde_json::to_string(self).map_err(BenchError::Json)
    }
}

/// `n` fresh events.
pub(crate) fn ticks(n: usize) -> Vec<Tick> {
    (0..n).map(|_| Tick::new()).collect()
}

/// The message the relay would send for `tick` to broker destination
/// `destination`: built through the same `OutboxRecord::to_envelope`.
pub(crate) fn message(tick: &Tick, id: i64, destination: &str) -> Result<OutgoingMessage> {
    let record = OutboxRecord {
        id,
        event_id: Uuid::now_v7(),
        source: None,
        destination: Tick::DESTINATION.to_owned(),
        partition_key: tick.key.to_string(),
        partition: 0,
        event_type: Tick::TYPE.to_owned(),
        schema_version: 1,
        subject: None,
        headers: serde_json::Value::Object(serde_json::Map::new()),
        payload: tick.json()?,
        created_at: Utc::now(),
        attempts: 0,
        defect: None,
    };
    let envelope = record
        .to_envelope(DEFAULT_SOURCE)
        .map_err(|e| BenchError::Broker(format!("cannot build the CloudEvent: {e}")))?;
    Ok(OutgoingMessage {
        destination: destination.to_owned(),
        envelope,
    })
}

/// The messages for `ticks`.
pub(crate) fn messages(ticks: &[Tick], destination: &str) -> Result<Vec<OutgoingMessage>> {
    ticks
        .iter()
        .zip(1..)
        .map(|(t, id)| message(t, id, destination))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_is_256_bytes() {
        let json = Tick::new().json().expect("serializes");
        assert_eq!(json.len(), PAYLOAD_BYTES, "{json}");
    }
}
