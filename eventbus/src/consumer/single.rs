//! The single-message path: a message's handler with its retries, each
//! attempt in a database transaction of its own (inbox row, handler, commit),
//! until it is handled, parked, dead-lettered or given back.

use std::time::Duration;

use super::handler::{Failure, Handler};
use super::{attempts, supervise, telemetry, Context, DeliveryMode, Outcome, Shared, UnknownTypes};
use crate::envelope::Envelope;
use crate::error::Error;
use crate::inbox::{InboxDatabase, ParkedState};
use crate::outbox::OutboxDatabase;
use crate::telemetry::span::MessagingSpan;
use crate::transport::MessageInfo;

impl<DB> Shared<DB>
where
    DB: InboxDatabase + OutboxDatabase,
{
    /// Runs the handler with retries inside the message's `process` span
    /// (whose context is active for the handler); dead-letters what cannot be
    /// handled.
    pub(super) async fn handle_event(
        &self,
        destination: &str,
        envelope: Envelope,
        once: bool,
        info: &MessageInfo,
    ) -> Outcome {
        let span = telemetry::process_span(&self.group, destination, &envelope, info);
        self.handle_event_in(destination, envelope, once, span, None)
            .await
    }

    /// [`handle_event`](Self::handle_event) in `span`; `prior` is the failure
    /// of a first attempt made in a group commit, which the retries follow.
    pub(super) async fn handle_event_in(
        &self,
        destination: &str,
        envelope: Envelope,
        once: bool,
        span: MessagingSpan,
        prior: Option<Failure>,
    ) -> Outcome {
        let started = std::time::Instant::now();
        let attempts = std::sync::atomic::AtomicU32::new(0);
        let outcome = span
            .scope(async {
                let id = envelope.id.clone();
                let outcome = self
                    .run_handler(destination, envelope, once, &span, &attempts, prior)
                    .await;
                // Inside the span: the line carries the trace id.
                tracing::debug!(group = %self.group, %id, outcome = telemetry::outcome_name(&outcome), "message settled");
                outcome
            })
            .await;
        self.metrics.handling(started.elapsed());
        telemetry::finish(span, &outcome, attempts.into_inner());
        outcome
    }

    /// The retry loop of [`handle_event`](Self::handle_event); counts the
    /// attempts made into `attempts`.
    async fn run_handler(
        &self,
        destination: &str,
        envelope: Envelope,
        once: bool,
        span: &MessagingSpan,
        attempts: &std::sync::atomic::AtomicU32,
        mut prior: Option<Failure>,
    ) -> Outcome {
        // Behind a parked message of its key: parked too, to keep the order.
        match self.key_is_held(&envelope).await {
            Ok(false) => {}
            Ok(true) => {
                let outcome = self
                    .park(
                        &envelope,
                        destination,
                        ParkedState::Waiting,
                        0,
                        Duration::ZERO,
                        None,
                        true,
                        Outcome::Parked,
                    )
                    .await;
                if self.mode == DeliveryMode::EffectivelyOnce {
                    // A count a batch left for it: the parked row counts now.
                    attempts::forget(self, &envelope, &outcome).await;
                }
                return outcome;
            }
            Err(e) => {
                tracing::error!(group = %self.group, id = %envelope.id, error = %e, "cannot read the parked table; giving the message back");
                tokio::time::sleep(Duration::from_secs(1)).await;
                return Outcome::Released;
            }
        }
        let Some(handler) = self.registry.get(&envelope.event_type).cloned() else {
            return match self.unknown {
                UnknownTypes::Skip => Outcome::Handled,
                UnknownTypes::DeadLetter => {
                    let reason = format!("no handler for event type `{}`", envelope.event_type);
                    span.fail("no_handler", &reason);
                    self.dead_letter(&envelope, destination, 0, &reason).await
                }
            };
        };
        let version = envelope.schema_version().unwrap_or(1);
        if version > handler.version() {
            return self
                .gate(
                    destination,
                    &envelope,
                    version,
                    handler.version(),
                    once,
                    span,
                )
                .await;
        }
        // Effectively once, every attempt (immediate retries too: a process
        // can die in any of them) is counted in the database before it
        // starts, so the count survives the process (`attempts` module).
        let durable = self.mode == DeliveryMode::EffectivelyOnce;
        let mut attempt = 1;
        let mut first_here = true;
        loop {
            let result = if let Some(failure) = prior.take() {
                // Attempt 1 ran (and was counted) in a group commit and
                // failed: the retries go on from it.
                first_here = false;
                attempts.store(attempt, std::sync::atomic::Ordering::Relaxed);
                Err(failure)
            } else {
                let mut counted = Ok(None);
                if durable {
                    match attempts::count(self, &envelope, first_here).await {
                        Ok(attempts::Count::Go(n, guard)) => {
                            attempt = n;
                            counted = Ok(Some(guard));
                        }
                        Ok(attempts::Count::UsedUp(n)) => {
                            attempts.store(n, std::sync::atomic::Ordering::Relaxed);
                            return attempts::give_up(self, destination, &envelope, n, span).await;
                        }
                        Err(f) => counted = Err(f),
                    }
                }
                first_here = false;
                attempts.store(attempt, std::sync::atomic::Ordering::Relaxed);
                match counted {
                    Ok(_guard) => self.attempt(&handler, &envelope, attempt).await,
                    Err(f) => Err(f),
                }
            };
            let failure = match result {
                Ok(outcome) => return outcome,
                Err(f) => f,
            };
            let (reason, permanent) = match failure {
                Failure::Permanent(r) => (r, true),
                Failure::Transient(r) => (r, false),
            };
            tracing::warn!(group = %self.group, id = %envelope.id, attempt, error = %reason, "handling failed");
            if durable {
                attempts::note_failure(self, &envelope, attempt, &reason).await;
            }
            let delay = if permanent || once {
                None
            } else {
                self.retry.delay_before(attempt + 1)
            };
            let Some(delay) = delay else {
                let kind = if permanent {
                    "undecodable"
                } else {
                    "handler_failed"
                };
                span.fail(kind, &reason);
                let outcome = self
                    .dead_letter(&envelope, destination, attempt, &reason)
                    .await;
                if durable {
                    attempts::forget(self, &envelope, &outcome).await;
                }
                return outcome;
            };
            span.failed_attempt(attempt, &reason);
            self.metrics.retried();
            if attempt > self.retry.immediate {
                // A delayed retry: parked, so that the lane's other keys go
                // on meanwhile; its own key waits behind it.
                let outcome = self
                    .park(
                        &envelope,
                        destination,
                        ParkedState::Retry,
                        attempt,
                        delay,
                        Some(&reason),
                        true,
                        Outcome::Parked,
                    )
                    .await;
                if durable {
                    attempts::forget(self, &envelope, &outcome).await;
                }
                return outcome;
            }
            attempt += 1;
            let stopping = self.stopping.notified();
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = stopping => return Outcome::Released,
            }
            if self.stopped.load(std::sync::atomic::Ordering::SeqCst) {
                return Outcome::Released;
            }
        }
    }

    /// One attempt: transaction, inbox row (effectively once), handler, commit.
    pub(super) async fn attempt(
        &self,
        handler: &Handler<DB>,
        envelope: &Envelope,
        attempt: u32,
    ) -> std::result::Result<Outcome, Failure> {
        let registration = match handler {
            Handler::One(registration) => registration,
            Handler::Batch(registration) => {
                // A batch of one: an event left alone after its batch failed,
                // or one that came without neighbours of its type.
                let mut outcomes = self
                    .attempt_batch(registration, std::slice::from_ref(envelope), attempt)
                    .await?;
                // Its attempt count went with the batch's transaction.
                return outcomes.pop().ok_or_else(|| {
                    Failure::Transient("a batch of one ended without an outcome".into())
                });
            }
        };
        let transient = |e: Error| Failure::Transient(e.to_string());
        let mut tx = self.pool.begin().await.map_err(|e| transient(e.into()))?;
        if self.mode == DeliveryMode::EffectivelyOnce {
            let fresh = DB::try_record(&mut *tx, &self.inbox_table, &self.group, envelope)
                .await
                .map_err(transient)?;
            // The attempt count goes with the inbox row: gone if this commits
            // (handled, or found a duplicate), back if it rolls back.
            DB::forget_attempts(&mut *tx, &self.inbox_table, &self.group, envelope)
                .await
                .map_err(transient)?;
            if !fresh {
                // Nothing but the count's deletion to keep; should it fail,
                // a later delivery deletes it.
                let _ = tx.commit().await;
                return Ok(Outcome::Duplicate);
            }
        }
        // The `process` span active around us: follow-up events are its children.
        let trace = crate::telemetry::span::current();
        let ctx = Context::new(envelope.clone(), attempt, self.outbox.clone(), tx, trace);
        let result = supervise::supervised(self.handler_timeout, || {
            (registration.call)(ctx.clone(), envelope, &self.registry.upcasters)
        })
        .await;
        if let Err(f) = result {
            // Failed, panicked or timed out: nothing of the attempt stays.
            if let Some(tx) = ctx.abandon() {
                let _ = tx.rollback().await;
            }
            return Err(f);
        }
        match ctx.finish().await.map_err(transient)? {
            Some(tx) => {
                tx.commit().await.map_err(|e| transient(e.into()))?;
                Ok(Outcome::Handled)
            }
            None => Err(Failure::Transient(
                "the handler's transaction vanished".into(),
            )),
        }
    }
}
