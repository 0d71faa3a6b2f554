//! One batch: [`Claimed`] rows with the tenure they were claimed in, checked
//! and built into messages, sent while every lease is trusted, and each
//! row's outcome recorded: rejections written at once, acknowledged rows
//! handed back for the (background) acknowledgement.

use std::collections::{BTreeSet, HashSet};
use std::time::Instant;

use super::acks::Acked;
use super::membership::Membership;
use super::store::{ClaimLimits, Lease, Rejection};
use super::{telemetry, KeyGate, Relay};
use crate::outbox::OutboxRecord;
use crate::transport::{OutgoingMessage, PublishError};

/// Rows claimed in one statement, with the tenure they were claimed in:
/// every write about them is fenced on it, and their send must finish while
/// it is trusted.
#[derive(Debug, Default)]
pub(super) struct Claimed {
    /// In id order.
    pub(super) rows: Vec<OutboxRecord>,
    /// The leases of the rows' partitions, as held right after the claim.
    pub(super) leases: Vec<Lease>,
    /// The claim may have left rows behind (a full batch, or cut by the byte
    /// budget): claim again at once.
    pub(super) more: bool,
}

impl Claimed {
    /// The claimed ids.
    pub(super) fn ids(&self) -> Vec<i64> {
        self.rows.iter().map(|r| r.id).collect()
    }

    /// This batch, claimed while `sent` was in flight, without the rows of
    /// keys `held` there: they stay pending and go after the row that held
    /// them, in a later claim. Without the rows of a partition claimed in
    /// another tenure than `sent`, either: the partition changed hands in
    /// between, so `sent`'s delete is refused by its fence and its rows come
    /// back; they must go again before anything newer of their keys.
    pub(super) fn behind(mut self, sent: &Claimed, held: &KeyGate) -> Claimed {
        let changed_hands: BTreeSet<i32> = self
            .leases
            .iter()
            .filter(|lease| {
                sent.leases
                    .iter()
                    .any(|l| l.partition == lease.partition && l.epoch != lease.epoch)
            })
            .map(|lease| lease.partition)
            .collect();
        self.retain(|row| !held.is_stopped(row) && !changed_hands.contains(&row.partition));
        self
    }

    /// Keeps the rows `keep` accepts, and the leases of their partitions
    /// only (a lease without rows would fail the batch's fencing check).
    fn retain(&mut self, keep: impl Fn(&OutboxRecord) -> bool) {
        self.rows.retain(|row| keep(row));
        let rows = &self.rows;
        self.leases
            .retain(|lease| rows.iter().any(|row| row.partition == lease.partition));
    }

    /// The keys with a row of this batch that was not acknowledged (`acked`):
    /// refused, rejected, not sent, or the whole batch dropped. Their later
    /// rows must wait behind it.
    pub(super) fn left_pending(&self, acked: &Acked) -> KeyGate {
        let acked: HashSet<i64> = acked.rows.iter().map(|(id, _)| *id).collect();
        let mut held = KeyGate::default();
        for row in self.rows.iter().filter(|r| !acked.contains(&r.id)) {
            held.stop(row);
        }
        held
    }
}

/// What became of a sent batch.
pub(super) struct Sent {
    pub(super) outcome: BatchOutcome,
    /// The rows the broker acknowledged (in id order), for the database.
    pub(super) acked: Acked,
}

impl Sent {
    /// Nothing was sent (nor acknowledged).
    fn nothing(outcome: BatchOutcome) -> Self {
        Sent {
            outcome,
            acked: Acked::default(),
        }
    }
}

pub(super) enum BatchOutcome {
    Done,
    BrokerDown,
    /// The publisher cannot go on: the relay stops with this error.
    Fatal(PublishError),
}

impl Relay {
    /// Claims rows of the partitions usable now, passing over `skip`.
    pub(super) async fn claim(
        &self,
        membership: &Membership,
        skip: &[i64],
    ) -> crate::Result<Claimed> {
        let owned = membership.usable();
        if owned.is_empty() {
            return Ok(Claimed::default());
        }
        let limits = self.claim_limits();
        let asked = limits.rows;
        let rows = self.store.claim(self.id, &owned, limits, skip).await?;
        let cut_by_bytes = self.cut_by_bytes(&rows);
        self.row_limit.observe(asked, rows.len(), cut_by_bytes);
        let partitions: Vec<i32> = rows
            .iter()
            .map(|r| r.partition)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        Ok(Claimed {
            more: rows.len() as u64 >= u64::from(asked) || cut_by_bytes,
            leases: membership.leases(&partitions),
            rows,
        })
    }

    /// `next`, claimed while `sent` was in flight, made safe to send after
    /// it ([`Claimed::behind`]).
    pub(super) fn behind(&self, next: Claimed, sent: &Claimed, held: &KeyGate) -> Claimed {
        if self.config.defects.keep_prefetched_rows_of_pending_keys {
            return next;
        }
        next.behind(sent, held)
    }

    /// Publishes one claimed batch and records the outcome of every row:
    /// rejections at once, acknowledged rows handed back. The payloads of
    /// the rows move into the messages sent: the batch keeps every other
    /// field of its rows, for acknowledging them and holding their keys.
    pub(super) async fn relay_batch(
        &self,
        batch: &mut Claimed,
        membership: &Membership,
        known_destinations: &mut HashSet<String>,
    ) -> Sent {
        // Once a row of a key is refused here, no later row of that key is
        // sent in this batch: they wait behind it, in order.
        let mut refused = KeyGate::default();
        let mut rejections: Vec<Rejection> = Vec::new();
        let prepared: Vec<Option<OutgoingMessage>> = batch
            .rows
            .iter_mut()
            .map(|row| {
                if refused.is_stopped(row) {
                    return None;
                }
                match self.prepare(row) {
                    Ok(message) => Some(message),
                    Err(reason) => {
                        refused.stop(row);
                        rejections.push(self.rejection(row, reason.error, reason.permanent));
                        None
                    }
                }
            })
            .collect();
        let rows = &batch.rows;
        let leases = &batch.leases;
        let partitions: BTreeSet<i32> = rows.iter().map(|r| r.partition).collect();
        let mut sendable: Vec<(&OutboxRecord, OutgoingMessage)> = rows
            .iter()
            .zip(prepared)
            .filter_map(|(row, message)| Some((row, message?)))
            .collect();

        if self.config.create_destinations {
            for (_, m) in &sendable {
                if known_destinations.contains(&m.destination) {
                    continue;
                }
                match self.publisher.ensure_destination(&m.destination).await {
                    Ok(()) => {
                        known_destinations.insert(m.destination.clone());
                    }
                    Err(PublishError::Unavailable(e)) => {
                        tracing::warn!(destination = %m.destination, error = %e, "broker unavailable");
                        self.broker_state(false);
                        return Sent::nothing(BatchOutcome::BrokerDown);
                    }
                    Err(e) if e.is_fatal() => return Sent::nothing(BatchOutcome::Fatal(e)),
                    // A destination that cannot be created fails its messages below.
                    Err(e) => {
                        tracing::warn!(destination = %m.destination, error = %e, "cannot create destination")
                    }
                }
            }
        }

        // Fencing: publish only while every lease of the batch is still ours,
        // in the tenure the rows were claimed in.
        if leases.len() != partitions.len()
            || membership
                .trusted_until(leases)
                .is_none_or(|until| until <= Instant::now())
        {
            tracing::info!("lease expired before publishing; dropping the batch");
            return Sent::nothing(BatchOutcome::Done);
        }
        // One `send` span per row; the message carries its trace context.
        let system = self.publisher.system();
        let spans: Vec<_> = sendable
            .iter_mut()
            .map(|(row, message)| telemetry::start_send(system, row, message))
            .collect();
        // Moved, not cloned: a copy of every message was a tenth of the relay's CPU.
        let (sent_rows, messages): (Vec<&OutboxRecord>, Vec<OutgoingMessage>) =
            sendable.into_iter().unzip();
        let started = Instant::now();
        let results = if messages.is_empty() {
            Vec::new()
        } else {
            // The send is bounded by the leases: if one lapses first (this
            // process was paused, or cut off from the database while the
            // broker is slow), another relay may already publish these keys,
            // so nothing more of this batch may go out.
            tokio::select! {
                results = self.publisher.publish_batch(&messages) => results,
                () = membership.lapse(leases) => {
                    self.publisher.abandon().await;
                    self.metrics.lease_lapsed();
                    tracing::warn!(
                        rows = messages.len(),
                        "lease lapsed while the batch was being sent; abandoned it, \
                         its rows stay pending for the partitions' next owner"
                    );
                    return Sent::nothing(BatchOutcome::Done);
                }
            }
        };
        let latency = started.elapsed();
        let acknowledged_at = chrono::Utc::now();

        let mut acked: Vec<(i64, i32)> = Vec::with_capacity(results.len());
        // Keys whose send failed, from that row on (sent rows are in id
        // order). Rows refused before sending were never sent with their
        // followers, so this starts afresh.
        let mut failed = KeyGate::default();
        let mut unavailable: Option<crate::transport::Cause> = None;
        let mut fatal: Option<PublishError> = None;
        for ((row, result), span) in sent_rows.into_iter().zip(results).zip(spans) {
            if let Some(waited) = telemetry::finish_send(span, row, &result, acknowledged_at) {
                self.metrics.outbox_wait(waited);
            }
            // An earlier row of this key failed. This one may have reached
            // the broker anyway (sends are pipelined), but it stays pending and
            // goes again after that row: acknowledging it now would let the
            // earlier row follow it for good.
            if failed.is_stopped(row) {
                continue;
            }
            match result {
                Ok(delivered) => {
                    if delivered.unroutable {
                        let destination = self.config.broker_destination(&row.destination);
                        tracing::info!(id = row.id, event_type = %row.event_type, %destination, "no queue is bound for the event; dropped (unroutable policy `drop`)");
                        self.metrics.unroutable(&destination);
                    }
                    acked.push((row.id, row.partition));
                }
                Err(PublishError::Unavailable(e)) => {
                    tracing::debug!(id = row.id, error = %e, "broker unavailable");
                    failed.stop(row);
                    unavailable.get_or_insert(e);
                }
                // Stays pending, behind its key's rejected row; no attempt used.
                Err(PublishError::NotSent(_)) => failed.stop(row),
                // Stays pending; the relay stops once the batch is recorded.
                Err(e) if e.is_fatal() => {
                    failed.stop(row);
                    fatal.get_or_insert(e);
                }
                Err(e) => {
                    failed.stop(row);
                    rejections.push(self.rejection(row, e.to_string(), false));
                }
            }
        }
        if !messages.is_empty() {
            self.metrics.batch(latency, messages.len());
        }
        self.metrics.published(acked.len() as u64);
        self.metrics.rejected(rejections.len() as u64);
        self.metrics
            .parked(rejections.iter().filter(|r| r.park).count() as u64);

        if !rejections.is_empty() {
            for r in &rejections {
                let trace_id = rows
                    .iter()
                    .find(|row| row.id == r.id)
                    .and_then(telemetry::trace_id);
                tracing::warn!(id = r.id, trace_id = trace_id.as_deref(), parked = r.park, error = %r.error, "event rejected");
            }
            // Written before the next batch is sent: the claims after it
            // hold the rest of the key behind the rejected row.
            if let Err(e) = self.store.reject(self.id, leases, &rejections).await {
                tracing::warn!(error = %e, "recording rejected rows failed");
            }
        }
        self.broker_state(unavailable.is_none() && fatal.is_none());
        let outcome = if let Some(e) = fatal {
            BatchOutcome::Fatal(e)
        } else if let Some(reason) = unavailable {
            tracing::warn!(%reason, "broker unavailable");
            self.metrics.outage();
            BatchOutcome::BrokerDown
        } else {
            BatchOutcome::Done
        };
        Sent {
            outcome,
            // The events reached the broker; if acknowledging them in the
            // database fails for good, they are sent again and the
            // consumers' inbox absorbs the duplicates.
            acked: Acked {
                rows: acked,
                leases: leases.clone(),
            },
        }
    }

    /// Checks a row and builds its message; a row that can never be sent is
    /// refused here without bothering the broker.
    fn prepare(&self, row: &mut OutboxRecord) -> std::result::Result<OutgoingMessage, Refusal> {
        // Before anything reaches the broker, or creates a destination there.
        if let Err(error) = self.config.check_destination(&row.destination) {
            return Err(Refusal {
                error,
                permanent: true,
            });
        }
        if row.payload.len() > self.config.max_message_bytes {
            return Err(Refusal {
                error: format!(
                    "event is {} bytes, more than max_message_bytes = {}",
                    row.payload.len(),
                    self.config.max_message_bytes
                ),
                permanent: false,
            });
        }
        let envelope = row
            .take_envelope(&self.config.default_source)
            .map_err(|e| Refusal {
                error: format!("cannot build CloudEvent: {e}"),
                permanent: true,
            })?;
        Ok(OutgoingMessage {
            destination: self.config.broker_destination(&row.destination),
            envelope,
        })
    }

    /// The claim's limits from the configuration.
    fn claim_limits(&self) -> ClaimLimits {
        ClaimLimits {
            rows: self.row_limit.get(),
            bytes: self.config.claim_bytes as u64,
            max_message_bytes: self.config.max_message_bytes as u64,
        }
    }

    /// Whether the byte budget may have ended this claim early: then more
    /// rows may be waiting, as after a full batch.
    fn cut_by_bytes(&self, rows: &[OutboxRecord]) -> bool {
        let loaded: usize = rows.iter().map(|r| r.payload.len()).sum();
        // A row left out did not fit: it is at most `max_message_bytes`.
        loaded.saturating_add(self.config.max_message_bytes) > self.config.claim_bytes
    }

    fn rejection(&self, row: &OutboxRecord, error: String, permanent: bool) -> Rejection {
        let attempts = u32::try_from(row.attempts).unwrap_or(0).saturating_add(1);
        Rejection {
            id: row.id,
            park: permanent || attempts >= self.config.max_attempts,
            retry_in: self.config.retry_delay(attempts),
            error,
        }
    }

    fn broker_state(&self, available: bool) {
        self.metrics
            .update_snapshot(|s| s.broker_available = available);
    }
}

/// Why [`Relay::prepare`] refused a row.
struct Refusal {
    error: String,
    /// Retrying cannot help (park at once).
    permanent: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claimed(rows: &[(i64, i32, &str)], epochs: &[(i32, i64)]) -> Claimed {
        Claimed {
            rows: rows
                .iter()
                .map(|(id, partition, key)| OutboxRecord::sample(*id, *partition, key))
                .collect(),
            leases: epochs
                .iter()
                .map(|(partition, epoch)| Lease {
                    partition: *partition,
                    epoch: *epoch,
                })
                .collect(),
            more: true,
        }
    }

    fn ids(batch: &Claimed) -> Vec<i64> {
        batch.ids()
    }

    #[test]
    fn rows_of_keys_left_pending_wait_and_their_leases_go_with_them() {
        let sent = claimed(&[(1, 0, "k"), (2, 1, "j")], &[(0, 1), (1, 1)]);
        // `k#1` was not acknowledged; `j#2` was.
        let acked = Acked {
            rows: vec![(2, 1)],
            leases: sent.leases.clone(),
        };
        let held = sent.left_pending(&acked);
        let next = claimed(&[(3, 0, "k"), (4, 1, "j"), (5, 0, "k")], &[(0, 1), (1, 1)]);
        let next = next.behind(&sent, &held);
        assert_eq!(ids(&next), [4], "k waits behind k#1; j goes on");
        assert_eq!(
            next.leases,
            [Lease {
                partition: 1,
                epoch: 1
            }],
            "no lease is left without rows (the fencing check counts them)"
        );
    }

    #[test]
    fn a_partition_claimed_in_another_tenure_waits_for_the_rows_sent_in_the_first() {
        let sent = claimed(&[(1, 0, "k"), (2, 1, "j")], &[(0, 1), (1, 1)]);
        let acked = Acked {
            rows: vec![(1, 0), (2, 1)],
            leases: sent.leases.clone(),
        };
        let held = sent.left_pending(&acked);
        // Partition 0 was lost and taken again (epoch 2) while `sent` was out.
        let next = claimed(&[(3, 0, "k"), (4, 1, "j"), (5, 0, "m")], &[(0, 2), (1, 1)]);
        let next = next.behind(&sent, &held);
        assert_eq!(ids(&next), [4]);
        assert_eq!(
            next.leases,
            [Lease {
                partition: 1,
                epoch: 1
            }]
        );
    }
}
