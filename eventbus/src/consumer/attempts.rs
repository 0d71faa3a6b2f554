//! Durable attempt counting for effectively-once consumers: each attempt is
//! counted in the `<inbox>_attempts` table
//! ([`AttemptsDatabase`](crate::inbox::AttemptsDatabase)) before the handler
//! runs, so that a message whose handler kills the process (abort, out of
//! memory) is dead-lettered once the retry policy's attempts are used up,
//! instead of being redelivered and run again after every restart.
//!
//! The count is deleted with the inbox row when an attempt commits, and after
//! a dead letter is published.

use crate::envelope::Envelope;
use crate::inbox::InboxDatabase;
use crate::outbox::OutboxDatabase;
use crate::telemetry::span::MessagingSpan;

use super::handler::Failure;
use super::{Outcome, Shared};

/// What counting an attempt found.
pub(super) enum Count<'a> {
    /// Go ahead with attempt `n`, holding `guard` while it runs.
    Go(u32, Guard<'a>),
    /// `n` attempts were started before and none succeeded: the policy's
    /// attempts are used up.
    UsedUp(u32),
}

/// Held while an attempt runs: shared with the other attempts, or alone.
pub(super) enum Guard<'a> {
    /// Alongside other attempts.
    Shared {
        /// Released when the attempt ends.
        _held: tokio::sync::RwLockReadGuard<'a, ()>,
    },
    /// With no other attempt running in this consumer.
    Alone {
        /// Released when the attempt ends.
        _held: tokio::sync::RwLockWriteGuard<'a, ()>,
    },
}

/// The highest recorded count that may still run: the policy's attempts,
/// plus the first one if the process died during it. That one ran beside
/// other messages, so it is not held against this message (any of them may
/// have killed the process); every later attempt after a death runs alone.
fn limit(max_attempts: u32) -> u32 {
    max_attempts.saturating_add(1)
}

/// Counts one more attempt at `envelope` in its own statement, before the
/// handler runs; `first_here` says whether this process has tried it
/// before. A database error is the attempt's failure.
///
/// A message whose count shows an attempt that ended with its process (a
/// count above one on the first try here) is a suspect: it runs alone, so
/// that if it kills the process again, no other message's attempt dies with
/// it, and its count grows only once it really runs.
pub(super) async fn count<'a, DB>(
    shared: &'a Shared<DB>,
    envelope: &Envelope,
    first_here: bool,
) -> Result<Count<'a>, Failure>
where
    DB: InboxDatabase + OutboxDatabase,
{
    let failed =
        |e: crate::error::Error| Failure::Transient(format!("counting the attempt failed: {e}"));
    let limit = limit(shared.retry.max_attempts());
    let beside = shared.isolation.read().await;
    let mut conn = shared.pool.acquire().await.map_err(|e| failed(e.into()))?;
    let n = DB::record_attempt(&mut *conn, &shared.inbox_table, &shared.group, envelope)
        .await
        .map_err(failed)?;
    if n > limit {
        return Ok(Count::UsedUp(n - 1));
    }
    if !first_here || n < 2 {
        return Ok(Count::Go(n, Guard::Shared { _held: beside }));
    }
    // Not run yet: take the count back while waiting for the others to end,
    // so that a death meanwhile (another suspect's) does not count here.
    DB::uncount_attempt(&mut *conn, &shared.inbox_table, &shared.group, envelope)
        .await
        .map_err(failed)?;
    drop(conn);
    drop(beside);
    let alone = shared.isolation.write().await;
    tracing::info!(group = %shared.group, id = %envelope.id, attempt = n, "an earlier attempt ended with its process: trying it alone");
    let mut conn = shared.pool.acquire().await.map_err(|e| failed(e.into()))?;
    let n = DB::record_attempt(&mut *conn, &shared.inbox_table, &shared.group, envelope)
        .await
        .map_err(failed)?;
    if n > limit {
        return Ok(Count::UsedUp(n - 1));
    }
    Ok(Count::Go(n, Guard::Alone { _held: alone }))
}

/// Notes why attempt `attempt` failed, for the dead letter of a later
/// process. Best effort: without it the letter only says less.
pub(super) async fn note_failure<DB>(
    shared: &Shared<DB>,
    envelope: &Envelope,
    attempt: u32,
    reason: &str,
) where
    DB: InboxDatabase + OutboxDatabase,
{
    let noted = format!("attempt {attempt}: {reason}");
    if let Err(e) = DB::note_failure(
        &shared.pool,
        &shared.inbox_table,
        &shared.group,
        envelope,
        &noted,
    )
    .await
    {
        tracing::warn!(group = %shared.group, id = %envelope.id, error = %e, "noting a failed attempt failed");
    }
}

/// Dead-letters `envelope` without running its handler again: `attempts`
/// attempts were started (by this process or ones that died) and none
/// succeeded.
pub(super) async fn give_up<DB>(
    shared: &Shared<DB>,
    destination: &str,
    envelope: &Envelope,
    attempts: u32,
    span: &MessagingSpan,
) -> Outcome
where
    DB: InboxDatabase + OutboxDatabase,
{
    let last = DB::last_failure(&shared.pool, &shared.inbox_table, &shared.group, envelope)
        .await
        .unwrap_or_else(|e| {
            tracing::warn!(group = %shared.group, id = %envelope.id, error = %e, "reading the last failure failed");
            None
        });
    let reason = match last {
        Some(last) => format!(
            "{attempts} attempts without success (later ones may have stopped the process); \
             last failure noted: {last}"
        ),
        None => format!(
            "{attempts} attempts without success, none of which ended \
             (each stopped the process)"
        ),
    };
    span.fail("attempts_exhausted", &reason);
    let outcome = shared
        .dead_letter(envelope, destination, attempts, &reason)
        .await;
    forget(shared, envelope, &outcome).await;
    outcome
}

/// Deletes the count of `envelope` once `outcome` settled it for good (dead
/// letter published, or handled by a batch of one); a released message keeps
/// its count.
pub(super) async fn forget<DB>(shared: &Shared<DB>, envelope: &Envelope, outcome: &Outcome)
where
    DB: InboxDatabase + OutboxDatabase,
{
    if matches!(outcome, Outcome::Released) {
        return;
    }
    let forgotten = match shared.pool.acquire().await {
        Ok(mut conn) => {
            DB::forget_attempts(&mut *conn, &shared.inbox_table, &shared.group, envelope).await
        }
        Err(e) => Err(e.into()),
    };
    if let Err(e) = forgotten {
        // A leftover count only shortens the retries of a later redelivery
        // of this message (a re-drive).
        tracing::warn!(group = %shared.group, id = %envelope.id, error = %e, "deleting an attempt count failed");
    }
}
