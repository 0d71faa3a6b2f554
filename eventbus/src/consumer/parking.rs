//! Parking: how a consumer sets messages aside in its parked table
//! ([`ParkedDatabase`](crate::inbox::ParkedDatabase)) instead of holding them
//! on the broker, and the background task that takes them up again.
//!
//! A message is parked for a delayed retry, for a schema version newer than
//! the consumer knows, as a dead letter that holds its key
//! ([`DeadLetterKeys::Block`]) or that the broker would not take, and behind
//! any parked message of its key that holds it. Its broker message is then
//! acknowledged, so the lane moves on to other keys at once, while its own
//! key keeps its order: the parked rows of a key are taken up one at a time,
//! oldest first, and a message of a held key received meanwhile is parked
//! behind them.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;

use super::dead_letter::{self, DeadLetterKeys};
use super::handler::Failure;
use super::{gate::NewerVersions, telemetry, DeliveryMode, Outcome, Shared, UnknownTypes};
use crate::envelope::Envelope;
use crate::inbox::{
    message_key, InboxDatabase, ParkRequest, Parked, ParkedState, Reschedule, UNFINISHED_ATTEMPT,
};
use crate::outbox::OutboxDatabase;
use crate::transport::{MessageInfo, OutgoingMessage};

/// Due parked messages taken per query.
const DUE_BATCH: i64 = 32;

/// How long a parked message taken up for an attempt is kept from the other
/// members of the group, beyond the handler timeout: if this process dies
/// during the attempt, the message comes back after it.
const LEASE_MARGIN: Duration = Duration::from_secs(60);

/// Pause after the parked table could not be written, before the message is
/// given back to the broker.
const PARK_FAILED_PAUSE: Duration = Duration::from_secs(1);

impl<DB> Shared<DB>
where
    DB: InboxDatabase + OutboxDatabase,
{
    /// Whether a parked message holds `envelope`'s key, so that it must be
    /// parked behind it. Events without a partition key are ordered with
    /// nothing and never wait.
    pub(super) async fn key_is_held(&self, envelope: &Envelope) -> crate::Result<bool> {
        if envelope.partition_key.is_none() {
            return Ok(false);
        }
        DB::holds_key(
            &self.pool,
            &self.inbox_table,
            &self.group,
            &message_key(envelope),
        )
        .await
    }

    /// Parks `envelope`, received from `origin`, to be taken up after
    /// `delay`; `outcome` is what parking it amounts to. If the table cannot
    /// be written, the message is given back to the broker instead.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn park(
        &self,
        envelope: &Envelope,
        origin: &str,
        state: ParkedState,
        attempts: u32,
        delay: Duration,
        reason: Option<&str>,
        holds_key: bool,
        outcome: Outcome,
    ) -> Outcome {
        let request = ParkRequest {
            consumer: &self.group,
            envelope,
            origin,
            state,
            holds_key,
            attempts,
            due_at: Utc::now() + delay,
            reason,
        };
        match DB::park(&self.pool, &self.inbox_table, &request).await {
            Ok(_) => {
                tracing::info!(group = %self.group, id = %envelope.id, state = state.as_str(), ?delay, "parked");
                outcome
            }
            Err(e) => {
                tracing::error!(group = %self.group, id = %envelope.id, error = %e, "parking failed; giving the message back");
                tokio::time::sleep(PARK_FAILED_PAUSE).await;
                Outcome::Released
            }
        }
    }

    /// Whether a dead letter of `envelope` holds its key.
    fn dead_letter_holds(&self, envelope: &Envelope) -> bool {
        self.dead_letter_keys == DeadLetterKeys::Block && envelope.partition_key.is_some()
    }

    /// Dead-letters `envelope`, received from `origin`, after `attempts`
    /// attempts: to the group's dead-letter destination on the broker, or,
    /// when it holds its key or the broker will not take it, into the parked
    /// table. Given back to the broker only if neither can take it.
    pub(super) async fn dead_letter(
        &self,
        envelope: &Envelope,
        origin: &str,
        attempts: u32,
        reason: &str,
    ) -> Outcome {
        let holds = self.dead_letter_holds(envelope);
        let mut why = reason.to_owned();
        if !holds {
            let letter = dead_letter::for_event(envelope, origin, &self.group, attempts, reason);
            match self.publish_dead_letter(&letter).await {
                Ok(()) => {
                    tracing::warn!(group = %self.group, id = %envelope.id, destination = %letter.destination, %reason, "dead-lettered");
                    return Outcome::DeadLettered;
                }
                Err(refused) => {
                    tracing::error!(group = %self.group, id = %envelope.id, destination = %letter.destination, error = %refused, "the broker did not take the dead letter; keeping it in the parked table");
                    why = format!("{reason} (dead-letter destination refused it: {refused})");
                }
            }
        }
        self.park(
            envelope,
            origin,
            ParkedState::Dead,
            attempts,
            Duration::ZERO,
            Some(&why),
            holds,
            Outcome::DeadLettered,
        )
        .await
    }

    /// Publishes `letter` to its dead-letter destination, declaring it first
    /// so that it routes (RabbitMQ: a queue of the same name bound to it).
    /// A message the broker accepted but routed nowhere counts as refused.
    async fn publish_dead_letter(&self, letter: &OutgoingMessage) -> Result<(), String> {
        {
            let mut known = self.dead_letter_destinations.lock().await;
            if !known.contains(&letter.destination) {
                match self
                    .dead_letters
                    .ensure_dead_letter_destination(&letter.destination)
                    .await
                {
                    Ok(()) => {
                        known.insert(letter.destination.clone());
                    }
                    Err(e) => {
                        tracing::warn!(destination = %letter.destination, error = %e, "cannot declare the dead-letter destination");
                    }
                }
            }
        }
        let results = self
            .dead_letters
            .publish_batch(std::slice::from_ref(letter))
            .await;
        match results.into_iter().next() {
            Some(Ok(delivered)) if delivered.unroutable => {
                // Declared once, since deleted: declare it again next time.
                self.dead_letter_destinations
                    .lock()
                    .await
                    .remove(&letter.destination);
                Err("routed to no queue".into())
            }
            Some(Ok(_)) => Ok(()),
            Some(Err(e)) => Err(e.to_string()),
            None => Err("the publisher returned no result".into()),
        }
    }

    /// Takes up `row`, claimed for one attempt (its `attempts` is the count
    /// before the claim).
    async fn take_up(&self, row: Parked) {
        let envelope = match row.envelope() {
            Ok(e) => e,
            Err(e) => {
                let reason = format!("the parked event cannot be read: {e}");
                self.reschedule(
                    &row,
                    ParkedState::Dead,
                    row.attempts,
                    Duration::ZERO,
                    &reason,
                    true,
                )
                .await;
                return;
            }
        };
        let info = MessageInfo::new("parked");
        let span = telemetry::process_span(&self.group, &row.origin, &envelope, &info);
        let attempt = row.attempts.saturating_add(1);
        let outcome = span
            .scope(self.attempt_parked(&row, &envelope, attempt))
            .await;
        if let Some(outcome) = outcome {
            self.metrics.record(&outcome);
            telemetry::finish(span, &outcome, attempt);
        } else {
            telemetry::finish(span, &Outcome::Parked, attempt);
        }
    }

    /// One attempt at a parked message; the outcome once it left the table,
    /// `None` while it stays parked.
    async fn attempt_parked(
        &self,
        row: &Parked,
        envelope: &Envelope,
        attempt: u32,
    ) -> Option<Outcome> {
        let Some(handler) = self.registry.get(&envelope.event_type).cloned() else {
            if self.unknown == UnknownTypes::Skip {
                self.unpark(row).await;
                return Some(Outcome::Handled);
            }
            let reason = format!("no handler for event type `{}`", envelope.event_type);
            return self.to_dead(row, envelope, row.attempts, &reason).await;
        };
        let version = envelope.schema_version().unwrap_or(1);
        if version > handler.version() {
            let reason = format!(
                "unsupported schema version {version} of `{}`: this consumer knows up to {}",
                envelope.event_type,
                handler.version()
            );
            self.metrics.gated();
            return match self.newer_versions {
                NewerVersions::Park { delay } => {
                    // Not an attempt: the count goes back to what it was.
                    self.reschedule(row, ParkedState::Newer, row.attempts, delay, &reason, true)
                        .await;
                    None
                }
                NewerVersions::DeadLetter => {
                    self.to_dead(row, envelope, row.attempts, &reason).await
                }
            };
        }
        // The claim counted this attempt. One that ended with its process
        // left the claim's reason behind: this one runs alone, and none runs
        // past the policy's attempts (plus the first death, which may have
        // been another message's), as for messages from the broker.
        let died = row.reason.as_deref() == Some(UNFINISHED_ATTEMPT);
        if died && attempt > self.retry.max_attempts().saturating_add(1) {
            let reason = format!(
                "{} attempts without success; the last ones stopped the process",
                row.attempts
            );
            return self.to_dead(row, envelope, row.attempts, &reason).await;
        }
        let result = if died {
            let _alone = self.isolation.write().await;
            tracing::info!(group = %self.group, id = %envelope.id, attempt, "an earlier attempt ended with its process: trying it alone");
            self.attempt(&handler, envelope, attempt).await
        } else {
            let _beside = self.isolation.read().await;
            self.attempt(&handler, envelope, attempt).await
        };
        match result {
            Ok(outcome) => {
                self.unpark(row).await;
                Some(outcome)
            }
            Err(failure) => {
                let (reason, permanent) = match failure {
                    Failure::Permanent(r) => (r, true),
                    Failure::Transient(r) => (r, false),
                };
                tracing::warn!(group = %self.group, id = %envelope.id, attempt, error = %reason, "handling a parked message failed");
                let once = self.mode == DeliveryMode::AtMostOnce;
                let delay = if permanent || once {
                    None
                } else {
                    self.retry.delay_before(attempt + 1)
                };
                match delay {
                    Some(delay) => {
                        self.metrics.retried();
                        self.reschedule(row, ParkedState::Retry, attempt, delay, &reason, true)
                            .await;
                        None
                    }
                    None => self.to_dead(row, envelope, attempt, &reason).await,
                }
            }
        }
    }

    /// Turns parked `row` into a dead letter: published to the broker (and
    /// the row deleted), or kept dead in the table.
    async fn to_dead(
        &self,
        row: &Parked,
        envelope: &Envelope,
        attempts: u32,
        reason: &str,
    ) -> Option<Outcome> {
        let holds = self.dead_letter_holds(envelope);
        let mut why = reason.to_owned();
        if !holds {
            let letter =
                dead_letter::for_event(envelope, &row.origin, &self.group, attempts, reason);
            match self.publish_dead_letter(&letter).await {
                Ok(()) => {
                    self.unpark(row).await;
                    return Some(Outcome::DeadLettered);
                }
                Err(refused) => {
                    why = format!("{reason} (dead-letter destination refused it: {refused})");
                }
            }
        }
        self.reschedule(
            row,
            ParkedState::Dead,
            attempts,
            Duration::ZERO,
            &why,
            holds,
        )
        .await;
        tracing::warn!(group = %self.group, id = %envelope.id, reason = %why, "dead-lettered in the parked table");
        Some(Outcome::DeadLettered)
    }

    async fn reschedule(
        &self,
        row: &Parked,
        state: ParkedState,
        attempts: u32,
        delay: Duration,
        reason: &str,
        holds_key: bool,
    ) {
        let update = Reschedule {
            state,
            holds_key,
            attempts,
            due_at: Utc::now() + delay,
            reason: Some(reason),
        };
        if let Err(e) = DB::reschedule_parked(&self.pool, &self.inbox_table, row.id, &update).await
        {
            // The claim's lease brings it back for another attempt.
            tracing::warn!(group = %self.group, id = row.id, error = %e, "rescheduling a parked message failed");
        }
    }

    async fn unpark(&self, row: &Parked) {
        if let Err(e) = DB::unpark(&self.pool, &self.inbox_table, row.id).await {
            // Taken up again after its lease: the inbox recognises it
            // (effectively once) or the handler runs again (at least once).
            tracing::warn!(group = %self.group, id = row.id, error = %e, "deleting a parked message failed");
        }
    }
}

/// The background task that takes up the group's due parked messages, one
/// per key at a time, oldest first, until the consumer stops. Every member of
/// the group runs one; a claim keeps two from taking the same message.
pub(super) async fn take_up_parked<DB>(shared: Arc<Shared<DB>>)
where
    DB: InboxDatabase + OutboxDatabase,
{
    let lease = shared.handler_timeout.unwrap_or(Duration::ZERO) + LEASE_MARGIN;
    loop {
        let stopping = shared.stopping.notified();
        tokio::pin!(stopping);
        // Registered before the flag is read, so a stop in between still wakes us.
        stopping.as_mut().enable();
        if shared.stopped.load(Ordering::SeqCst) {
            return;
        }
        let due = DB::due_parked(
            &shared.pool,
            &shared.inbox_table,
            &shared.group,
            Utc::now(),
            DUE_BATCH,
        )
        .await;
        let mut took = false;
        match due {
            Ok(rows) => {
                for row in rows {
                    if shared.stopped.load(Ordering::SeqCst) {
                        return;
                    }
                    let lease_until = Utc::now() + lease;
                    match DB::claim_parked(&shared.pool, &shared.inbox_table, &row, lease_until)
                        .await
                    {
                        Ok(true) => {
                            took = true;
                            shared.take_up(row).await;
                        }
                        Ok(false) => {}
                        Err(e) => {
                            tracing::warn!(group = %shared.group, error = %e, "claiming a parked message failed")
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(group = %shared.group, error = %e, "reading parked messages failed");
            }
        }
        if !took {
            tokio::select! {
                () = tokio::time::sleep(shared.parked_poll) => {}
                () = stopping => return,
            }
        }
    }
}
