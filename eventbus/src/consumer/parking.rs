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

/// The lease of a parked message's attempt when handlers have no timeout.
const UNBOUNDED_LEASE: Duration = Duration::from_secs(15 * 60);

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
            due_at: after(delay),
            reason,
        };
        match DB::park(&self.pool, &self.inbox_table, &request).await {
            Ok(_) => {
                tracing::info!(group = %self.group, id = %envelope.id, state = state.as_str(), ?delay, "parked");
                outcome
            }
            Err(e) if refuses_the_row(&e) => {
                // The database will never take this row (a value it refuses):
                // giving it back would loop, so it goes to the broker's
                // dead letters with why.
                let why = format!("it cannot be parked: {e}");
                tracing::error!(group = %self.group, id = %envelope.id, error = %e, "the parked table refuses this message; dead-lettering it");
                let letter = dead_letter::for_event(envelope, origin, &self.group, attempts, &why);
                match self.publish_dead_letter(&letter).await {
                    Ok(()) => Outcome::DeadLettered,
                    Err(refused) => {
                        tracing::error!(group = %self.group, id = %envelope.id, error = %refused, "the dead-letter destination refuses it too; giving the message back");
                        tokio::time::sleep(PARK_FAILED_PAUSE).await;
                        Outcome::Released
                    }
                }
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
        let Some(why) = self
            .to_broker(holds, envelope, origin, attempts, reason)
            .await
        else {
            return Outcome::DeadLettered;
        };
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

    /// Sends the dead letter of `envelope` to the group's dead-letter
    /// destination unless it `holds` its key; `None` once the broker took
    /// it, else the reason to keep it in the parked table with.
    async fn to_broker(
        &self,
        holds: bool,
        envelope: &Envelope,
        origin: &str,
        attempts: u32,
        reason: &str,
    ) -> Option<String> {
        if holds {
            return Some(reason.to_owned());
        }
        let letter = dead_letter::for_event(envelope, origin, &self.group, attempts, reason);
        match self.publish_dead_letter(&letter).await {
            Ok(()) => {
                tracing::warn!(group = %self.group, id = %envelope.id, destination = %letter.destination, %reason, "dead-lettered");
                None
            }
            Err(refused) => {
                tracing::error!(group = %self.group, id = %envelope.id, destination = %letter.destination, error = %refused, "the broker did not take the dead letter; keeping it in the parked table");
                Some(format!(
                    "the dead-letter destination refused it ({refused}); {reason}"
                ))
            }
        }
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

    /// Takes up `row`, claimed for one attempt: its count is now `claimed`.
    async fn take_up(&self, row: Parked, claimed: u32) {
        let envelope = match row.envelope() {
            Ok(e) => e,
            Err(e) => {
                let reason = format!("the parked event cannot be read: {e}");
                let dead = Reschedule {
                    state: ParkedState::Dead,
                    holds_key: true,
                    attempts: claimed,
                    due_at: Utc::now(),
                    reason: Some(&reason),
                };
                self.reschedule(&row, claimed, &dead).await;
                return;
            }
        };
        let info = MessageInfo::new("parked");
        let span = telemetry::process_span(&self.group, &row.origin, &envelope, &info);
        let claim = Claim { row: &row, claimed };
        let outcome = span.scope(self.attempt_parked(claim, &envelope)).await;
        if let Some(outcome) = outcome {
            self.metrics.record(&outcome);
            telemetry::finish(span, &outcome, claimed);
        } else {
            telemetry::finish(span, &Outcome::Parked, claimed);
        }
    }

    /// One attempt at a claimed parked message; the outcome once it left the
    /// table, `None` while it stays parked.
    async fn attempt_parked(&self, claim: Claim<'_>, envelope: &Envelope) -> Option<Outcome> {
        let row = claim.row;
        let attempt = claim.claimed;
        let Some(handler) = self.registry.get(&envelope.event_type).cloned() else {
            if row.state != ParkedState::Waiting {
                // Parked by a member that handles its type (a rolling deploy
                // adding it): left for one, not counted.
                let reason = format!("no handler here for event type `{}`", envelope.event_type);
                self.later(claim, row.state, row.attempts, self.look_again(), &reason)
                    .await;
                return None;
            }
            if self.unknown == UnknownTypes::Skip {
                self.unpark(claim).await;
                return Some(Outcome::Handled);
            }
            let reason = format!("no handler for event type `{}`", envelope.event_type);
            return self.to_dead(claim, envelope, row.attempts, &reason).await;
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
                    self.later(claim, ParkedState::Newer, row.attempts, delay, &reason)
                        .await;
                    None
                }
                NewerVersions::DeadLetter => {
                    self.to_dead(claim, envelope, row.attempts, &reason).await
                }
            };
        }
        // The claim counted this attempt: none runs past the policy's
        // attempts, plus the first death (which may have been another
        // message's), as for messages from the broker.
        if attempt > self.retry.max_attempts().saturating_add(1) {
            let reason = format!(
                "{} attempts without success (later ones may have stopped the process); {}",
                row.attempts,
                row.reason.as_deref().unwrap_or("no failure noted")
            );
            return self.to_dead(claim, envelope, row.attempts, &reason).await;
        }
        match self.attempt(&handler, envelope, attempt).await {
            Ok(outcome) => {
                self.unpark(claim).await;
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
                        self.later(claim, ParkedState::Retry, attempt, delay, &reason)
                            .await;
                        None
                    }
                    None => self.to_dead(claim, envelope, attempt, &reason).await,
                }
            }
        }
    }

    /// How long a parked message waits when this member cannot handle it.
    fn look_again(&self) -> Duration {
        match self.newer_versions {
            NewerVersions::Park { delay } => delay,
            NewerVersions::DeadLetter => NewerVersions::default_delay(),
        }
    }

    /// Turns the claimed row into a dead letter: published to the broker
    /// (and the row deleted), or kept dead in the table.
    async fn to_dead(
        &self,
        claim: Claim<'_>,
        envelope: &Envelope,
        attempts: u32,
        reason: &str,
    ) -> Option<Outcome> {
        let holds = self.dead_letter_holds(envelope);
        let origin = &claim.row.origin;
        let Some(why) = self
            .to_broker(holds, envelope, origin, attempts, reason)
            .await
        else {
            self.unpark(claim).await;
            return Some(Outcome::DeadLettered);
        };
        let dead = Reschedule {
            state: ParkedState::Dead,
            holds_key: holds,
            attempts,
            due_at: Utc::now(),
            reason: Some(&why),
        };
        self.reschedule(claim.row, claim.claimed, &dead).await;
        tracing::warn!(group = %self.group, id = %envelope.id, reason = %why, "dead-lettered in the parked table");
        Some(Outcome::DeadLettered)
    }

    /// Parks the claimed row again, holding its key, due after `delay`.
    async fn later(
        &self,
        claim: Claim<'_>,
        state: ParkedState,
        attempts: u32,
        delay: Duration,
        reason: &str,
    ) {
        let update = Reschedule {
            state,
            holds_key: true,
            attempts,
            due_at: after(delay),
            reason: Some(reason),
        };
        self.reschedule(claim.row, claim.claimed, &update).await;
    }

    async fn reschedule(&self, row: &Parked, claimed: u32, update: &Reschedule<'_>) {
        match DB::reschedule_parked(&self.pool, &self.inbox_table, row.id, claimed, update).await {
            Ok(true) => {}
            // Claimed by another member meanwhile (this attempt outlived its
            // lease): that member's attempt decides.
            Ok(false) => {
                tracing::warn!(group = %self.group, id = row.id, "a parked message was claimed again during its attempt; leaving it to that claim")
            }
            // The claim's lease brings it back for another attempt.
            Err(e) => {
                tracing::warn!(group = %self.group, id = row.id, error = %e, "rescheduling a parked message failed")
            }
        }
    }

    async fn unpark(&self, claim: Claim<'_>) {
        let row = claim.row;
        match DB::unpark(&self.pool, &self.inbox_table, row.id, claim.claimed).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(group = %self.group, id = row.id, "a parked message was claimed again during its attempt; leaving it to that claim")
            }
            // Taken up again after its lease: the inbox recognises it
            // (effectively once) or the handler runs again (at least once).
            Err(e) => {
                tracing::warn!(group = %self.group, id = row.id, error = %e, "deleting a parked message failed")
            }
        }
    }
}

/// Whether `error` is the database refusing the row itself (a value it does
/// not take: too long, a byte it refuses), as opposed to being unreachable or
/// not migrated, which passes.
fn refuses_the_row(error: &crate::Error) -> bool {
    match error {
        crate::Error::Database(sqlx::Error::Database(db)) => {
            // SQLSTATE class 22: data exception (PostgreSQL; MySQL and
            // SQLite map theirs to it where they give one).
            db.code().is_some_and(|c| c.starts_with("22"))
                || matches!(db.kind(), sqlx::error::ErrorKind::CheckViolation)
        }
        crate::Error::Database(sqlx::Error::Encode(_)) => true,
        _ => false,
    }
}

/// A parked row this member claimed, and the count its claim left.
#[derive(Clone, Copy)]
struct Claim<'a> {
    row: &'a Parked,
    claimed: u32,
}

/// Now plus `delay`, saturating at the end of time rather than overflowing.
fn after(delay: Duration) -> chrono::DateTime<Utc> {
    chrono::TimeDelta::from_std(delay)
        .ok()
        .and_then(|d| Utc::now().checked_add_signed(d))
        .unwrap_or(chrono::DateTime::<Utc>::MAX_UTC)
}

/// The background task that takes up the group's due parked messages, one
/// per key at a time, oldest first, until the consumer stops. Every member of
/// the group runs one; a claim keeps two from taking the same message.
///
/// A claim leases the message for the handler timeout plus a margin (without
/// a handler timeout, [`UNBOUNDED_LEASE`]): an attempt that outlives its
/// lease may be claimed again by another member, and then only the later
/// claim's end is written. Members' clocks must agree to well within the
/// margin.
pub(super) async fn take_up_parked<DB>(shared: Arc<Shared<DB>>)
where
    DB: InboxDatabase + OutboxDatabase,
{
    let lease = shared
        .handler_timeout
        .map_or(UNBOUNDED_LEASE, |t| t.saturating_add(LEASE_MARGIN));
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
                    took |= take_up_one(&shared, row, lease).await;
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

/// Claims `row` and runs its attempt; whether it was claimed. A row whose
/// last attempt ended with its process runs alone: the isolation is taken
/// before the claim, so that waiting for it does not eat the lease.
async fn take_up_one<DB>(shared: &Shared<DB>, row: Parked, lease: Duration) -> bool
where
    DB: InboxDatabase + OutboxDatabase,
{
    let died = row.reason.as_deref() == Some(UNFINISHED_ATTEMPT);
    let _alone = if died {
        Some(shared.isolation.write().await)
    } else {
        None
    };
    let _beside = if died {
        None
    } else {
        Some(shared.isolation.read().await)
    };
    match DB::claim_parked(&shared.pool, &shared.inbox_table, &row, after(lease)).await {
        Ok(true) => {
            if died {
                tracing::info!(group = %shared.group, id = row.id, "an earlier attempt at a parked message ended with its process: trying it alone");
            }
            let claimed = row.attempts.saturating_add(1);
            shared.take_up(row, claimed).await;
            true
        }
        Ok(false) => false,
        Err(e) => {
            tracing::warn!(group = %shared.group, error = %e, "claiming a parked message failed");
            false
        }
    }
}
