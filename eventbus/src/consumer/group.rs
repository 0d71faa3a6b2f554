//! Group commit (effectively once): consecutive messages of a lane with
//! single-event handlers, handled in one database transaction — a savepoint
//! per message around its inbox row and handler — committed once, and
//! acknowledged only after that commit.
//!
//! A handler that fails rolls back its own savepoint: the messages before it
//! commit and are acknowledged, it goes on through the single-message path
//! (its retries follow its failed first attempt), and the messages behind it
//! go back to the lane, to be handled after it. A transaction that cannot
//! commit acknowledges nothing: its messages go back to the lane, to be
//! handled one by one.

use std::collections::HashSet;
use std::time::Duration;

use super::batch::{Lane, Work};
use super::given_back::GivenBack;
use super::handler::Failure;
use super::{supervise, telemetry, Context, Outcome, Queued, Shared};
use crate::envelope::Envelope;
use crate::error::Error;
use crate::inbox::{InboxDatabase, InboxKey, Savepoint};
use crate::outbox::OutboxDatabase;
use crate::telemetry::span::MessagingSpan;
use crate::transport::Received;

/// How many messages a group may hold, and how long a lane waits after the
/// first for more.
#[derive(Debug, Clone, Copy)]
pub(super) struct GroupCommit {
    pub(super) max: usize,
    pub(super) window: Duration,
}

/// What handling a group leaves to its lane.
pub(super) struct Handled {
    /// The messages given back to the broker, to be awaited.
    pub(super) given_back: Vec<GivenBack>,
    /// The messages not handled, to be put back at the head of the lane.
    pub(super) rest: Vec<Queued>,
    /// How many of `rest`, from the first, are to be handled alone.
    pub(super) alone: usize,
}

/// Whether `message` may join a group: live, a CloudEvent of a type with a
/// single-event handler (not a saga step) that knows its schema version.
fn groupable<DB: sqlx::Database>(shared: &Shared<DB>, message: &Received) -> bool {
    shared.group_commit.is_some()
        && message.settle.is_current()
        && message.envelope.as_ref().is_ok_and(|e| {
            shared
                .registry
                .groupable(&e.event_type)
                .is_some_and(|r| e.schema_version().unwrap_or(1) <= r.version)
        })
}

impl Lane {
    /// `first` alone, or `first` and the groupable messages right behind it
    /// that are queued or arrive within the window, up to the group's size.
    pub(super) async fn group<DB: sqlx::Database>(
        &mut self,
        shared: &Shared<DB>,
        first: Queued,
    ) -> Work<DB> {
        let bounds = match shared.group_commit {
            Some(bounds) if groupable(shared, &first.0) => bounds,
            _ => return Work::One(Box::new(first)),
        };
        let deadline = tokio::time::Instant::now() + bounds.window;
        let mut group = vec![first];
        while group.len() < bounds.max {
            let Some(next) = self.following(shared, bounds.window, deadline).await else {
                break;
            };
            if !groupable(shared, &next.0) {
                // It ends the group and is handled after it, in order.
                self.pending.push_front(next);
                break;
            }
            group.push(next);
        }
        match group.len() {
            1 => match group.pop() {
                Some(one) => Work::One(Box::new(one)),
                None => Work::Group(group),
            },
            _ => Work::Group(group),
        }
    }
}

/// How a group's transaction ended: the outcomes of the messages it
/// committed, in order, and the failure of the one after them, if a handler
/// failed; or why nothing committed.
type GroupRun = Result<(Vec<Outcome>, Option<Failure>), String>;

impl<DB> Shared<DB>
where
    DB: InboxDatabase + OutboxDatabase,
{
    /// Handles a group (see the module docs) and settles what it handled.
    pub(super) async fn handle_group(&self, mut group: Vec<Queued>) -> Handled {
        let envelopes: Vec<Envelope> = group
            .iter()
            .filter_map(|(m, _)| m.envelope.as_ref().ok().cloned())
            .collect();
        // Up to the first message of a key a parked message holds: that one
        // is parked behind it by the single-message path.
        let cut = match self.held_keys(&envelopes).await {
            Some(held) if envelopes.len() == group.len() => envelopes
                .iter()
                .position(|e| e.partition_key.as_ref().is_some_and(|k| held.contains(k)))
                .unwrap_or(envelopes.len()),
            _ => 0,
        };
        // Counted before the group runs, as a single message's attempt is: a
        // group that kills the process leaves its counts behind, and next
        // time its messages go one by one, a suspect alone.
        if cut < 2 || !self.count_batch(&envelopes[..cut]).await {
            return self.first_alone(group).await;
        }
        let mut rest = group.split_off(cut);
        let envelopes = &envelopes[..cut];
        let spans: Vec<MessagingSpan> = group
            .iter()
            .zip(envelopes)
            .map(|((m, _), e)| telemetry::process_span(&self.group, &m.destination, e, &m.info))
            .collect();
        let started = std::time::Instant::now();
        let run = {
            // Beside other attempts; never beside a suspect running alone.
            let _beside = self.isolation.read().await;
            self.run_group(envelopes, &spans).await
        };
        let (outcomes, failed) = match run {
            Ok(run) => run,
            Err(reason) => {
                // Nothing committed, nothing acknowledged: each message is
                // handled alone, as if the group had never been.
                tracing::warn!(group = %self.group, size = group.len(), error = %reason, "group commit failed; its messages are handled one by one");
                for span in spans {
                    span.fail("group_commit_failed", &reason);
                    span.end();
                }
                let alone = group.len();
                group.append(&mut rest);
                return Handled {
                    given_back: Vec::new(),
                    rest: group,
                    alone,
                };
            }
        };
        self.metrics
            .group_committed(outcomes.len() + usize::from(failed.is_some()));
        let took = started.elapsed();
        let mut spans = spans.into_iter();
        let mut members = group.into_iter();
        for (outcome, span) in outcomes.iter().zip(spans.by_ref()) {
            let Some((message, permit)) = members.next() else {
                break;
            };
            if let Ok(envelope) = &message.envelope {
                telemetry::arrived(&self.metrics, envelope, &message.info);
            }
            self.metrics.handling(took);
            telemetry::finish(span, outcome, 1);
            self.metrics.record(outcome);
            if let Err(e) = message.settle.ack().await {
                // It will be delivered again; the inbox absorbs the repeat.
                tracing::warn!(group = %self.group, error = %e, "settling a message failed");
            }
            drop(permit);
        }
        let mut given_back = Vec::new();
        if let Some(failure) = failed {
            if let (Some((message, _permit)), Some(span)) = (members.next(), spans.next()) {
                if let Ok(envelope) = &message.envelope {
                    telemetry::arrived(&self.metrics, envelope, &message.info);
                    let reason = match &failure {
                        Failure::Permanent(r) | Failure::Transient(r) => r,
                    };
                    super::attempts::note_failure(self, envelope, 1, reason).await;
                }
                given_back.extend(self.handle_after(message, Some((span, failure))).await);
            }
        }
        let mut left: Vec<Queued> = members.collect();
        left.append(&mut rest);
        Handled {
            given_back,
            rest: left,
            alone: 0,
        }
    }

    /// The first message of `group` through the single-message path; the
    /// rest back to the lane.
    async fn first_alone(&self, group: Vec<Queued>) -> Handled {
        let mut members = group.into_iter();
        let mut given_back = Vec::new();
        if let Some((message, _permit)) = members.next() {
            given_back.extend(self.handle(message).await);
        }
        Handled {
            given_back,
            rest: members.collect(),
            alone: 0,
        }
    }

    /// The group's transaction: per message a savepoint, its inbox row (a
    /// duplicate stops there), its handler in its `process` span; stops at
    /// the first handler that fails, after rolling back its savepoint; then
    /// the commit.
    async fn run_group(&self, envelopes: &[Envelope], spans: &[MessagingSpan]) -> GroupRun {
        let lost = |e: Error| e.to_string();
        let mut tx = self.pool.begin().await.map_err(|e| lost(e.into()))?;
        let mut outcomes = Vec::with_capacity(envelopes.len());
        let mut failed = None;
        for (envelope, span) in envelopes.iter().zip(spans) {
            DB::savepoint(&mut *tx, Savepoint::Set)
                .await
                .map_err(lost)?;
            let fresh = DB::try_record(&mut *tx, &self.inbox_table, &self.group, envelope)
                .await
                .map_err(lost)?;
            // The count goes with the inbox row, as for a single message.
            DB::forget_attempts(&mut *tx, &self.inbox_table, &self.group, envelope)
                .await
                .map_err(lost)?;
            if !fresh {
                DB::savepoint(&mut *tx, Savepoint::Release)
                    .await
                    .map_err(lost)?;
                outcomes.push(Outcome::Duplicate);
                continue;
            }
            let Some(registration) = self.registry.groupable(&envelope.event_type) else {
                return Err(format!("no handler for `{}`", envelope.event_type));
            };
            let ctx = Context::new(
                envelope.clone(),
                1,
                self.outbox.clone(),
                tx,
                span.trace_context(),
            );
            let result = span
                .scope(supervise::supervised(self.handler_timeout, || {
                    (registration.call)(ctx.clone(), envelope, &self.registry.upcasters)
                }))
                .await;
            if let Err(f) = result {
                // A guard still out (a task the handler spawned) keeps the
                // transaction, and with it the messages before this one.
                let Some(back) = ctx.abandon() else {
                    return Err("a task of a failed handler kept the transaction".into());
                };
                tx = back;
                // Fails where the database dropped the whole transaction
                // (a MySQL deadlock): then nothing commits.
                DB::savepoint(&mut *tx, Savepoint::RollBack)
                    .await
                    .map_err(lost)?;
                failed = Some(f);
                break;
            }
            tx = match ctx.finish().await {
                Ok(Some(tx)) => tx,
                Ok(None) => return Err("the handler's transaction vanished".into()),
                Err(e) => return Err(lost(e)),
            };
            DB::savepoint(&mut *tx, Savepoint::Release)
                .await
                .map_err(lost)?;
            outcomes.push(Outcome::Handled);
        }
        if failed.is_some() {
            // The messages behind the failed one did not run: their counts
            // are taken back, so that they come to their turn as new
            // messages, not as suspects of a process death.
            let done = outcomes.len();
            let mut ran: HashSet<InboxKey<'_>> =
                envelopes[..=done].iter().map(InboxKey::of).collect();
            for envelope in &envelopes[done + 1..] {
                if ran.insert(InboxKey::of(envelope)) {
                    DB::uncount_attempt(&mut *tx, &self.inbox_table, &self.group, envelope)
                        .await
                        .map_err(lost)?;
                }
            }
        }
        tx.commit().await.map_err(|e| lost(e.into()))?;
        Ok((outcomes, failed))
    }
}
