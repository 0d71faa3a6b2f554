//! Batch handling: how a lane takes consecutive messages of a batch-handled
//! type off its queue, and how a batch is handled — one transaction, one inbox
//! insert, split in halves when it fails — and settled.

use std::collections::{HashSet, VecDeque};
use std::ops::Range;
use std::sync::atomic::Ordering;

use tokio::sync::mpsc::{self, error::TryRecvError};
use tokio::sync::OwnedSemaphorePermit;

use super::context::BatchContext;
use super::given_back::{Arrival, Arrived, GivenBack};
use super::handler::{BatchRegistration, Failure};
use super::{DeliveryMode, Outcome, Queued, Shared};
use crate::envelope::Envelope;
use crate::error::Error;
use crate::inbox::InboxDatabase;
use crate::outbox::OutboxDatabase;
use crate::transport::{MessageInfo, Received, Settle};

/// What a lane worker does next.
pub(super) enum Work<DB: sqlx::Database> {
    /// Handle one message on its own.
    One(Box<Queued>),
    /// Handle consecutive messages of one batch-handled type together.
    Batch(BatchRegistration<DB>, Vec<Batched>),
    /// Handle consecutive messages of single-event handlers in one
    /// transaction (`group` module).
    Group(Vec<Queued>),
}

impl<DB: sqlx::Database> Arrival for Work<DB> {
    fn arrived(&self) -> Vec<Arrived<'_>> {
        match self {
            Work::One(queued) => queued
                .0
                .envelope
                .as_ref()
                .map(|e| vec![arrived(e, queued.0.settle.as_ref())])
                .unwrap_or_default(),
            Work::Batch(_, batch) => batch
                .iter()
                .map(|b| arrived(&b.envelope, b.settle.as_ref()))
                .collect(),
            Work::Group(group) => group
                .iter()
                .filter_map(|(m, _)| {
                    m.envelope
                        .as_ref()
                        .ok()
                        .map(|e| arrived(e, m.settle.as_ref()))
                })
                .collect(),
        }
    }
}

/// `envelope`, settled through `settle`, as the wait sees it.
fn arrived<'a>(envelope: &'a Envelope, settle: &dyn Settle) -> Arrived<'a> {
    Arrived {
        id: envelope.id.as_str(),
        key: envelope.partition_key.as_deref(),
        live: settle.is_current(),
    }
}

impl<DB: sqlx::Database> Work<DB> {
    /// Gives every message back to the broker (shutdown before it started).
    pub(super) async fn release(self) {
        let settles: Vec<Box<dyn Settle>> = match self {
            Work::One(queued) => vec![queued.0.settle],
            Work::Batch(_, batch) => batch.into_iter().map(|b| b.settle).collect(),
            Work::Group(group) => group.into_iter().map(|(m, _)| m.settle).collect(),
        };
        for settle in settles {
            if let Err(e) = settle.release().await {
                tracing::debug!(error = %e, "releasing a message on shutdown failed");
            }
        }
    }
}

/// The messages of a batch that go together: `indices` into the batch's
/// destinations, infos and envelopes.
struct Together<'a, DB: sqlx::Database> {
    registration: &'a BatchRegistration<DB>,
    destinations: &'a [String],
    infos: &'a [MessageInfo],
    envelopes: &'a [Envelope],
    indices: &'a [usize],
}

/// A message taken into a batch: a decoded CloudEvent of the batch's type.
pub(super) struct Batched {
    destination: String,
    envelope: Envelope,
    info: MessageInfo,
    settle: Box<dyn Settle>,
    /// The consumer's in-flight slot, held until the message is settled.
    permit: OwnedSemaphorePermit,
}

/// The queue of one lane, with the messages taken off it to look at but not
/// handled yet (the first one after a batch, of another type).
pub(super) struct Lane {
    pub(super) rx: mpsc::UnboundedReceiver<Queued>,
    pub(super) pending: VecDeque<Queued>,
    /// How many of the first pending messages go alone (what a group commit
    /// that failed as a whole hands back).
    alone: usize,
}

impl Lane {
    pub(super) fn new(rx: mpsc::UnboundedReceiver<Queued>) -> Self {
        Lane {
            rx,
            pending: VecDeque::new(),
            alone: 0,
        }
    }

    /// Puts `messages` back at the head of the queue, in order, the first
    /// `alone` of them to be handled alone.
    pub(super) fn put_back(&mut self, messages: Vec<Queued>, alone: usize) {
        self.alone += alone.min(messages.len());
        for queued in messages.into_iter().rev() {
            self.pending.push_front(queued);
        }
    }

    /// The next message alone, or the next batch: the next message and, if its
    /// type has a batch handler, the messages of that type right behind it
    /// that are queued (or arrive within the linger), up to the handler's
    /// maximum; or, with `may_group`, a group commit's messages (`group`
    /// module). `None` once the lane is closed and empty.
    pub(super) async fn next<DB>(
        &mut self,
        shared: &Shared<DB>,
        may_group: bool,
    ) -> Option<Work<DB>>
    where
        DB: InboxDatabase + OutboxDatabase,
    {
        let first = match self.pending.pop_front() {
            Some(queued) => queued,
            None => self.rx.recv().await?,
        };
        if self.alone > 0 {
            self.alone -= 1;
            return Some(Work::One(Box::new(first)));
        }
        let Some(registration) = batch_handler(shared, &first.0).cloned() else {
            if may_group {
                return Some(self.group(shared, first).await);
            }
            return Some(Work::One(Box::new(first)));
        };
        let first = match batched(first) {
            Ok(first) => first,
            Err(first) => return Some(Work::One(first)),
        };
        let event_type = first.envelope.event_type.clone();
        let deadline = tokio::time::Instant::now() + shared.batch_linger;
        let mut batch = Vec::with_capacity(registration.max.min(64));
        batch.push(first);
        while batch.len() < registration.max {
            let Some(next) = self.following(shared, shared.batch_linger, deadline).await else {
                break;
            };
            let same_type = matches!(&next.0.envelope, Ok(e) if e.event_type == event_type)
                && batch_handler(shared, &next.0).is_some();
            if !same_type {
                // Another type ends the batch: it is handled after it, in order.
                self.pending.push_front(next);
                break;
            }
            match batched(next) {
                Ok(next) => batch.push(next),
                Err(next) => {
                    self.pending.push_front(*next);
                    break;
                }
            }
        }
        Some(Work::Batch(registration, batch))
    }

    /// The next message for a batch or group that has begun: one queued
    /// already, or one arriving before `deadline` (`window` after the first;
    /// zero waits not at all); `None` if none came, the lane closed, or the
    /// consumer is stopping.
    pub(super) async fn following<DB: sqlx::Database>(
        &mut self,
        shared: &Shared<DB>,
        window: std::time::Duration,
        deadline: tokio::time::Instant,
    ) -> Option<Queued> {
        if let Some(queued) = self.pending.pop_front() {
            return Some(queued);
        }
        match self.rx.try_recv() {
            Ok(queued) => return Some(queued),
            Err(TryRecvError::Disconnected) => return None,
            Err(TryRecvError::Empty) => {}
        }
        if window.is_zero() {
            return None;
        }
        let stopping = shared.stopping.notified();
        tokio::pin!(stopping);
        // Registered before the flag is read, so a stop in between still wakes us.
        stopping.as_mut().enable();
        if shared.stopped.load(Ordering::SeqCst) {
            return None;
        }
        tokio::select! {
            queued = self.rx.recv() => queued,
            () = tokio::time::sleep_until(deadline) => None,
            () = stopping => None,
        }
    }
}

/// The batch handler for `message`, if its type has one and it is a CloudEvent
/// of a schema version the handler knows (others take the single-message
/// path, which sets them aside: see [`super::NewerVersions`]).
fn batch_handler<'s, DB>(
    shared: &'s Shared<DB>,
    message: &Received,
) -> Option<&'s BatchRegistration<DB>>
where
    DB: sqlx::Database,
{
    let envelope = message.envelope.as_ref().ok()?;
    let registration = shared.registry.batch(&envelope.event_type)?;
    (envelope.schema_version().unwrap_or(1) <= registration.version).then_some(registration)
}

/// `queued` as a batch member, or back as it was if it is not a CloudEvent
/// (never the case for a message [`batch_handler`] accepted).
fn batched((message, permit): Queued) -> Result<Batched, Box<Queued>> {
    match message.envelope {
        Ok(envelope) => Ok(Batched {
            destination: message.destination,
            envelope,
            info: message.info,
            settle: message.settle,
            permit,
        }),
        Err(e) => Err(Box::new((
            Received {
                envelope: Err(e),
                ..message
            },
            permit,
        ))),
    }
}

impl<DB> Shared<DB>
where
    DB: InboxDatabase + OutboxDatabase,
{
    /// Handles a batch and settles its messages; what to await of those
    /// given back to the broker.
    pub(super) async fn handle_batch(
        &self,
        registration: BatchRegistration<DB>,
        batch: Vec<Batched>,
    ) -> Vec<GivenBack> {
        self.metrics.batch(batch.len());
        let mut destinations = Vec::with_capacity(batch.len());
        let mut infos = Vec::with_capacity(batch.len());
        let mut envelopes = Vec::with_capacity(batch.len());
        let mut settles = Vec::with_capacity(batch.len());
        let mut permits = Vec::with_capacity(batch.len());
        let once = self.mode == DeliveryMode::AtMostOnce;
        for member in batch {
            if !member.settle.is_current() {
                // The broker took it back and redelivers it (see `handle`).
                continue;
            }
            if once {
                // Acknowledge first, durably, as a single message would be.
                if let Err(e) = member.settle.ack_durably().await {
                    tracing::warn!(error = %e, "acknowledging failed; skipping the message");
                    continue;
                }
            } else {
                settles.push(member.settle);
            }
            super::telemetry::arrived(&self.metrics, &member.envelope, &member.info);
            destinations.push(member.destination);
            envelopes.push(member.envelope);
            infos.push(member.info);
            permits.push(member.permit);
        }
        // One `process` span for the batch, linked to each message's trace;
        // events left alone after a failure get spans of their own.
        let span = super::telemetry::batch_span(
            &self.group,
            destinations.first().map_or("", String::as_str),
            &envelopes,
            infos.first(),
        );
        let started = std::time::Instant::now();
        let outcomes = span
            .scope(self.run_batch(&registration, &destinations, &infos, &envelopes, once))
            .await;
        self.metrics.handling(started.elapsed());
        // The batch's outcome is its worst message's.
        let summary = outcomes
            .iter()
            .find(|o| matches!(o, Outcome::DeadLettered))
            .or_else(|| outcomes.iter().find(|o| matches!(o, Outcome::Released)))
            .unwrap_or(&Outcome::Handled);
        super::telemetry::finish(span, summary, 0);
        for outcome in &outcomes {
            self.metrics.record(outcome);
        }
        // Every one given back is awaited: the messages a release left
        // unstarted are of other keys, which must not be overtaken either.
        let released: Vec<GivenBack> = outcomes
            .iter()
            .zip(envelopes.iter().zip(&infos))
            .filter(|(o, _)| matches!(o, Outcome::Released))
            .map(|(_, (e, info))| GivenBack::of(e, info))
            .collect();
        for (outcome, settle) in outcomes.into_iter().zip(settles) {
            let settled = match outcome {
                Outcome::Released => settle.release().await,
                _ => settle.ack().await,
            };
            if let Err(e) = settled {
                // It will be delivered again; the inbox absorbs the repeat.
                tracing::warn!(group = %self.group, error = %e, "settling a message failed");
            }
        }
        drop(permits);
        if once {
            return Vec::new();
        }
        released
    }

    /// Handles `envelopes` in as few transactions as their failures allow.
    /// Messages of a key that a parked message holds take the single-message
    /// path (which parks them behind it); the others go together: the whole
    /// batch first; a failed part is split in halves, left half first, so
    /// that the events commit in order; an event that fails alone takes the
    /// single-message path (retries, then the dead-letter destination). One
    /// outcome per envelope, in order.
    async fn run_batch(
        &self,
        registration: &BatchRegistration<DB>,
        destinations: &[String],
        infos: &[MessageInfo],
        envelopes: &[Envelope],
        once: bool,
    ) -> Vec<Outcome> {
        let n = envelopes.len();
        let mut outcomes: Vec<Option<Outcome>> = (0..n).map(|_| None).collect();
        let held = self.held_keys(envelopes).await;
        let (alone, together): (Vec<usize>, Vec<usize>) = (0..n).partition(|&i| {
            held.as_ref().is_none_or(|keys| {
                envelopes[i]
                    .partition_key
                    .as_ref()
                    .is_some_and(|k| keys.contains(k))
            })
        });
        let mut stopped = false;
        for i in alone {
            let outcome = self
                .handle_event(&destinations[i], envelopes[i].clone(), once, &infos[i])
                .await;
            stopped = matches!(outcome, Outcome::Released);
            outcomes[i] = Some(outcome);
            if stopped {
                break;
            }
        }
        if !stopped {
            let part = Together {
                registration,
                destinations,
                infos,
                envelopes,
                indices: &together,
            };
            self.run_together(part, once, &mut outcomes).await;
        }
        // What was not started (stopping during retries) goes back.
        outcomes
            .into_iter()
            .map(|o| o.unwrap_or(Outcome::Released))
            .collect()
    }

    /// Handles the messages of `part` together, as [`run_batch`](Self::run_batch)
    /// says, writing each one's outcome at its index.
    async fn run_together(
        &self,
        part: Together<'_, DB>,
        once: bool,
        outcomes: &mut [Option<Outcome>],
    ) {
        let Together {
            registration,
            destinations,
            infos,
            envelopes,
            indices,
        } = part;
        let batch: std::borrow::Cow<'_, [Envelope]> = if indices.len() == envelopes.len() {
            std::borrow::Cow::Borrowed(envelopes)
        } else {
            indices.iter().map(|&i| envelopes[i].clone()).collect()
        };
        let m = batch.len();
        let mut one_by_one = false;
        if self.mode == DeliveryMode::EffectivelyOnce && m > 1 {
            // Counted before the batch runs, as a single message's attempt is:
            // a batch that kills the process leaves its counts behind, and
            // next time its messages go one by one, a suspect alone, so that
            // the killer is dead-lettered after its attempts.
            one_by_one = !self.count_batch(&batch).await;
        }
        // A stack of parts still to handle, the next one on top.
        let mut todo: Vec<Range<usize>> = Vec::new();
        todo.push(0..m);
        while let Some(part) = todo.pop() {
            if part.is_empty() {
                continue;
            }
            if one_by_one && part.len() > 1 {
                // A message of the batch was parked: the rest is checked
                // against the parked keys one by one.
                todo.extend(part.rev().map(|k| k..k + 1));
                continue;
            }
            if part.len() == 1 {
                let i = indices[part.start];
                let outcome = self
                    .handle_event(&destinations[i], envelopes[i].clone(), once, &infos[i])
                    .await;
                let released = matches!(outcome, Outcome::Released);
                one_by_one |= matches!(outcome, Outcome::Parked | Outcome::DeadLettered);
                outcomes[i] = Some(outcome);
                if released {
                    // Stopping during its retries: the rest was not started.
                    return;
                }
                continue;
            }
            match self
                .attempt_batch(registration, &batch[part.clone()], 1)
                .await
            {
                Ok(done) => {
                    for (k, outcome) in part.zip(done) {
                        outcomes[indices[k]] = Some(outcome);
                    }
                }
                Err(failure) => {
                    let reason = match failure {
                        Failure::Permanent(r) | Failure::Transient(r) => r,
                    };
                    tracing::warn!(group = %self.group, size = part.len(), error = %reason, "batch failed; splitting it");
                    self.metrics.batch_split();
                    let middle = part.start + part.len() / 2;
                    todo.push(middle..part.end);
                    todo.push(part.start..middle);
                }
            }
        }
    }

    /// Counts an attempt at each of `envelopes` in one transaction; `false`
    /// (and nothing counted) if one of them was attempted before and not
    /// finished — by a process that died — or the count failed: then they go
    /// one by one.
    pub(super) async fn count_batch(&self, envelopes: &[Envelope]) -> bool {
        let Ok(mut tx) = self.pool.begin().await else {
            return false;
        };
        // A copy of a message in the same batch (a redelivery right behind
        // it) is one message: counted once.
        let mut seen = std::collections::HashSet::new();
        for envelope in envelopes {
            if !seen.insert(crate::inbox::InboxKey::of(envelope)) {
                continue;
            }
            match DB::record_attempt(&mut *tx, &self.inbox_table, &self.group, envelope).await {
                Ok(1) => {}
                Ok(_) | Err(_) => {
                    let _ = tx.rollback().await;
                    return false;
                }
            }
        }
        tx.commit().await.is_ok()
    }

    /// The partition keys of `envelopes` that a parked message holds; `None`
    /// when the parked table cannot be read (then every message takes the
    /// single-message path, which decides for itself).
    pub(super) async fn held_keys(&self, envelopes: &[Envelope]) -> Option<HashSet<String>> {
        let mut seen = HashSet::new();
        let mut held = HashSet::new();
        for envelope in envelopes {
            let Some(key) = &envelope.partition_key else {
                continue;
            };
            if seen.insert(key.as_str()) && self.key_is_held(envelope).await.ok()? {
                held.insert(key.clone());
            }
        }
        Some(held)
    }

    /// One attempt at a batch: transaction, inbox rows of the whole batch in
    /// one statement (effectively once), the handler with the events not seen
    /// before, commit. One outcome per envelope.
    pub(super) async fn attempt_batch(
        &self,
        registration: &BatchRegistration<DB>,
        envelopes: &[Envelope],
        attempt: u32,
    ) -> Result<Vec<Outcome>, Failure> {
        let transient = |e: Error| Failure::Transient(e.to_string());
        let mut tx = self.pool.begin().await.map_err(|e| transient(e.into()))?;
        let fresh = if self.mode == DeliveryMode::EffectivelyOnce {
            let refs: Vec<&Envelope> = envelopes.iter().collect();
            let fresh = DB::try_record_many(&mut *tx, &self.inbox_table, &self.group, &refs)
                .await
                .map_err(transient)?;
            if fresh.len() != envelopes.len() {
                let _ = tx.rollback().await;
                return Err(Failure::Transient(format!(
                    "the inbox answered {} of {} messages",
                    fresh.len(),
                    envelopes.len()
                )));
            }
            // The attempt counts go with the inbox rows, as for one message.
            for envelope in envelopes {
                DB::forget_attempts(&mut *tx, &self.inbox_table, &self.group, envelope)
                    .await
                    .map_err(transient)?;
            }
            fresh
        } else {
            vec![true; envelopes.len()]
        };
        let outcomes: Vec<Outcome> = fresh
            .iter()
            .map(|&f| {
                if f {
                    Outcome::Handled
                } else {
                    Outcome::Duplicate
                }
            })
            .collect();
        let chosen: Vec<Envelope> = envelopes
            .iter()
            .zip(&fresh)
            .filter(|(_, &f)| f)
            .map(|(e, _)| e.clone())
            .collect();
        if chosen.is_empty() {
            // All seen before: nothing to keep but the counts' deletion;
            // should it fail, a later delivery deletes them.
            let _ = tx.commit().await;
            return Ok(outcomes);
        }
        let ctx = BatchContext::new(chosen, attempt, self.outbox.clone(), tx);
        let result = super::supervise::supervised(self.handler_timeout, || {
            (registration.call)(ctx.clone(), &self.registry.upcasters)
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
                Ok(outcomes)
            }
            None => Err(Failure::Transient(
                "the batch handler's transaction vanished".into(),
            )),
        }
    }
}
