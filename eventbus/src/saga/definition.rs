//! [`SagaDefinition`]: which events drive a saga, and how a step is run —
//! correlate, lock the instance, apply the rules, call the handler, save
//! the state with its timeouts in the consumer's transaction.

use std::marker::PhantomData;
use std::sync::Arc;

use futures::future::BoxFuture;
use uuid::Uuid;

use super::context::SagaContext;
use super::store::{
    check_instance_id, decode_state, now_ms, state_json, PendingTimeout, SagaStatus, Sagas,
    StoredInstance,
};
use super::{Handles, Saga, SagaDatabase, StartedBy};
use crate::consumer::{ConsumerBuilder, Context};
use crate::error::{BoxError, Error};
use crate::event::Event;
use crate::table::TableName;

/// What a step does with an event whose instance does not exist, or has
/// completed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Unmatched {
    /// Record the message as processed and change nothing (the default).
    #[default]
    Ignore,
    /// Fail the step, as a handler error does: the consumer retries it per
    /// its retry policy, then dead-letters it. For events that can overtake
    /// the one that starts their instance (they come by another route).
    Retry,
}

/// The rules a saga's steps share.
#[derive(Debug)]
struct Settings {
    sagas: Sagas,
    missing: Unmatched,
    completed: Unmatched,
}

/// How an event type takes part in the saga.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Starts an instance; ignored if it exists.
    Start,
    /// Starts an instance, or is a step of the existing one.
    StartOrHandle,
    /// A step of an existing instance.
    Handle,
    /// A timeout: a step only while the instance waits for its id.
    Timeout,
}

type Register<DB> =
    Box<dyn FnOnce(ConsumerBuilder<DB>, Arc<Settings>) -> ConsumerBuilder<DB> + Send>;

/// A saga's events and rules, to be joined to a consumer with
/// [`ConsumerBuilder::saga`]. See the [module documentation](super) for a
/// complete example.
pub struct SagaDefinition<S: Saga, DB: SagaDatabase> {
    sagas: Sagas,
    missing: Unmatched,
    completed: Unmatched,
    registrations: Vec<Register<DB>>,
    events: Vec<&'static str>,
    _saga: PhantomData<fn() -> S>,
}

impl<S: Saga, DB: SagaDatabase> std::fmt::Debug for SagaDefinition<S, DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SagaDefinition")
            .field("saga", &S::NAME)
            .field("table", self.sagas.table_name())
            .field("events", &self.events)
            .field("missing", &self.missing)
            .field("completed", &self.completed)
            .finish()
    }
}

impl<S: Saga, DB: SagaDatabase> Default for SagaDefinition<S, DB> {
    fn default() -> Self {
        Self::new()
    }
}

impl<S: Saga, DB: SagaDatabase> SagaDefinition<S, DB> {
    /// A saga with no events yet, stored in the default table.
    pub fn new() -> Self {
        SagaDefinition {
            sagas: Sagas::new(),
            missing: Unmatched::Ignore,
            completed: Unmatched::Ignore,
            registrations: Vec::new(),
            events: Vec::new(),
            _saga: PhantomData,
        }
    }

    /// Stores the instances in `sagas`' table.
    pub fn store(mut self, sagas: Sagas) -> Self {
        self.sagas = sagas;
        self
    }

    /// What an event (not a timeout) does when its instance does not exist.
    /// Default [`Unmatched::Ignore`].
    pub fn when_missing(mut self, rule: Unmatched) -> Self {
        self.missing = rule;
        self
    }

    /// What an event (not a timeout) does when its instance has completed.
    /// Default [`Unmatched::Ignore`]. Timeouts of a completed instance are
    /// always ignored.
    pub fn when_completed(mut self, rule: Unmatched) -> Self {
        self.completed = rule;
        self
    }

    /// Names of the event types registered so far.
    pub fn events(&self) -> &[&'static str] {
        &self.events
    }

    /// `E` starts an instance ([`StartedBy`]).
    pub fn starts<E: Event>(self) -> Self
    where
        S: StartedBy<E, DB>,
    {
        self.register(Step {
            role: Role::Start,
            correlate: <S as StartedBy<E, DB>>::correlate,
            start: Some(start::<S, E, DB>),
            handle: None,
        })
    }

    /// `E` starts an instance when there is none, and is a step of the
    /// instance when there is one: for events that may arrive in either
    /// order. Its instance is the one [`StartedBy::correlate`] names.
    pub fn starts_or_handles<E: Event>(self) -> Self
    where
        S: StartedBy<E, DB> + Handles<E, DB>,
    {
        self.register(Step {
            role: Role::StartOrHandle,
            correlate: <S as StartedBy<E, DB>>::correlate,
            start: Some(start::<S, E, DB>),
            handle: Some(handle::<S, E, DB>),
        })
    }

    /// `E` is a step of an existing instance ([`Handles`]).
    pub fn handles<E: Event>(self) -> Self
    where
        S: Handles<E, DB>,
    {
        self.register(Step {
            role: Role::Handle,
            correlate: <S as Handles<E, DB>>::correlate,
            start: None,
            handle: Some(handle::<S, E, DB>),
        })
    }

    /// `E` is a timeout the saga requests with
    /// [`SagaContext::request_timeout`]: handled only while the instance
    /// waits for that very event (not cancelled, saga not completed), so at
    /// most once; otherwise ignored.
    pub fn timeout<E: Event>(self) -> Self
    where
        S: Handles<E, DB>,
    {
        self.register(Step {
            role: Role::Timeout,
            correlate: <S as Handles<E, DB>>::correlate,
            start: None,
            handle: Some(handle::<S, E, DB>),
        })
    }

    fn register<E: Event>(mut self, step: Step<S, E, DB>) -> Self {
        self.events.push(E::TYPE);
        self.registrations.push(Box::new(
            move |builder: ConsumerBuilder<DB>, settings: Arc<Settings>| {
                builder.on(move |ctx: Context<DB>, event: E| {
                    run(step, Arc::clone(&settings), ctx, event)
                })
            },
        ));
        self
    }

    /// Registers every event's step with `builder`.
    pub(crate) fn register_with(self, mut builder: ConsumerBuilder<DB>) -> ConsumerBuilder<DB> {
        let settings = Arc::new(Settings {
            sagas: self.sagas,
            missing: self.missing,
            completed: self.completed,
        });
        for register in self.registrations {
            builder = register(builder, Arc::clone(&settings));
        }
        builder
    }

    /// The event types registered.
    pub(crate) fn event_types(&self) -> &[&'static str] {
        &self.events
    }

    /// Whether no event type is registered.
    pub(crate) fn is_empty(&self) -> bool {
        self.registrations.is_empty()
    }
}

type Starter<S, DB, E> = for<'a> fn(&'a SagaContext<DB>, E) -> BoxFuture<'a, Result<S, BoxError>>;
type Handler<S, DB, E> =
    for<'a> fn(&'a mut S, &'a SagaContext<DB>, E) -> BoxFuture<'a, Result<(), BoxError>>;

/// How one event type drives the saga.
struct Step<S, E, DB: sqlx::Database> {
    role: Role,
    correlate: fn(&E) -> String,
    start: Option<Starter<S, DB, E>>,
    handle: Option<Handler<S, DB, E>>,
}

impl<S, E, DB: sqlx::Database> Clone for Step<S, E, DB> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<S, E, DB: sqlx::Database> Copy for Step<S, E, DB> {}

fn start<'a, S, E, DB>(ctx: &'a SagaContext<DB>, event: E) -> BoxFuture<'a, Result<S, BoxError>>
where
    E: Event,
    DB: SagaDatabase,
    S: StartedBy<E, DB>,
{
    S::start(ctx, event)
}

fn handle<'a, S, E, DB>(
    state: &'a mut S,
    ctx: &'a SagaContext<DB>,
    event: E,
) -> BoxFuture<'a, Result<(), BoxError>>
where
    E: Event,
    DB: SagaDatabase,
    S: Handles<E, DB>,
{
    state.handle(ctx, event)
}

/// Why a step changed nothing.
#[derive(Debug, Clone, Copy)]
enum Ignored {
    Missing,
    Completed,
    AlreadyStarted,
    NotAwaited,
}

impl Ignored {
    fn as_str(self) -> &'static str {
        match self {
            Ignored::Missing => "no such instance",
            Ignored::Completed => "instance completed",
            Ignored::AlreadyStarted => "instance already started",
            Ignored::NotAwaited => "timeout not awaited (cancelled or already handled)",
        }
    }
}

/// Runs one step of saga `S` for `event`, in `ctx`'s transaction.
async fn run<S, E, DB>(
    step: Step<S, E, DB>,
    settings: Arc<Settings>,
    ctx: Context<DB>,
    event: E,
) -> Result<(), BoxError>
where
    S: Saga,
    E: Event,
    DB: SagaDatabase,
{
    let id = (step.correlate)(&event);
    check_instance_id::<S>(&id)?;
    let table = settings.sagas.table_name();
    let stored = {
        let mut tx = ctx.tx().await?;
        if step.start.is_some() {
            DB::lock_to_start(&mut **tx, table, S::NAME, &id).await?
        } else {
            DB::lock_instance(&mut **tx, table, S::NAME, &id).await?
        }
    };
    let rule = |ignored: Ignored, rule: Unmatched| -> Result<(), BoxError> {
        match rule {
            Unmatched::Retry if step.role != Role::Timeout => Err(saga_error::<S>(
                &id,
                format!("{} for {}; retried", ignored.as_str(), E::TYPE),
            )),
            _ => {
                tracing::debug!(saga = S::NAME, instance = %id, event_type = E::TYPE,
                    id = %ctx.envelope().id, "saga event ignored: {}", ignored.as_str());
                Ok(())
            }
        }
    };
    let Some(mut instance) = stored else {
        let Some(start) = step.start else {
            return rule(Ignored::Missing, settings.missing);
        };
        let saga = SagaContext::new(ctx.clone(), S::NAME, id.clone(), Vec::new());
        let state = start(&saga, event).await?;
        let now = now_ms();
        let instance = StoredInstance {
            saga: S::NAME.to_owned(),
            instance_id: id,
            state: String::new(),
            status: SagaStatus::Active,
            version: 0,
            timeouts: Vec::new(),
            started_at: now,
            updated_at: now,
            completed_at: None,
        };
        return save(&saga, &ctx, table, instance, &state, None).await;
    };
    if instance.status == SagaStatus::Completed {
        return rule(Ignored::Completed, settings.completed);
    }
    match step.role {
        Role::Start => return rule(Ignored::AlreadyStarted, Unmatched::Ignore),
        Role::Timeout => {
            let awaited = Uuid::parse_str(&ctx.envelope().id)
                .ok()
                .and_then(|arrived| instance.timeouts.iter().position(|t| t.id == arrived));
            let Some(at) = awaited else {
                return rule(Ignored::NotAwaited, Unmatched::Ignore);
            };
            instance.timeouts.remove(at);
        }
        Role::Handle | Role::StartOrHandle => {}
    }
    let Some(handle) = step.handle else {
        return rule(Ignored::AlreadyStarted, Unmatched::Ignore);
    };
    let mut state: S = decode_state(&instance.state)?;
    let saga = SagaContext::new(ctx.clone(), S::NAME, id, instance.timeouts.clone());
    handle(&mut state, &saga, event).await?;
    let expected = instance.version;
    save(&saga, &ctx, table, instance, &state, Some(expected)).await
}

/// Writes the step's outcome into its transaction: timeouts scheduled and
/// cancelled, then the instance (inserted when `expected` is `None`).
async fn save<S, DB>(
    saga: &SagaContext<DB>,
    ctx: &Context<DB>,
    table: &TableName,
    mut instance: StoredInstance,
    state: &S,
    expected: Option<i64>,
) -> Result<(), BoxError>
where
    S: Saga,
    DB: SagaDatabase,
{
    let effects = saga.take_effects();
    let outbox = ctx.outbox();
    let now = now_ms();
    let mut cancel = Vec::new();
    let mut tx = ctx.tx().await?;
    if effects.complete {
        // Timeouts requested in the completing step are never written.
        cancel.extend(instance.timeouts.drain(..).map(|t| t.id));
        instance.status = SagaStatus::Completed;
        instance.completed_at = Some(now);
    } else {
        instance.timeouts.retain(|t| {
            let drop = effects.cancelled.contains(&t.id)
                || effects.cancelled_types.contains(&t.event_type);
            if drop {
                cancel.push(t.id);
            }
            !drop
        });
        for requested in effects.requested {
            let entry = requested.entry;
            if effects.cancelled.contains(&entry.event_id) {
                continue;
            }
            outbox
                .schedule_entries(&mut tx, std::slice::from_ref(&entry), requested.due)
                .await?;
            instance.timeouts.push(PendingTimeout {
                id: entry.event_id,
                event_type: entry.event_type,
                due_ms: requested.due.timestamp_millis(),
            });
        }
    }
    for id in cancel {
        // Gone already if it came due: its arrival then finds it no longer
        // awaited.
        outbox.cancel(&mut tx, id).await?;
    }
    instance.state = state_json(state)?;
    instance.version += 1;
    instance.updated_at = now;
    let saved = match expected {
        None => DB::insert_instance(&mut **tx, table, &instance).await?,
        Some(version) => DB::update_instance(&mut **tx, table, &instance, version).await?,
    };
    if !saved {
        let reason = match expected {
            None => "started meanwhile by another message; the step is retried",
            Some(_) => "changed meanwhile by another step; the step is retried",
        };
        return Err(saga_error::<S>(&instance.instance_id, reason));
    }
    Ok(())
}

fn saga_error<S: Saga>(instance: &str, reason: impl Into<String>) -> BoxError {
    Box::new(Error::Saga {
        saga: S::NAME.to_owned(),
        instance: instance.to_owned(),
        reason: reason.into(),
    })
}
