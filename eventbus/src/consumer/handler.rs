//! Typed handlers, erased so one consumer can hold handlers for many event
//! types: decoding the payload (upcast from older schema versions), calling
//! user code — one event at a time, or a batch of events of one type.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use futures::future::BoxFuture;

use super::context::{BatchContext, Context};
use crate::envelope::Envelope;
use crate::event::Event;
use crate::inbox::BoxError;
use crate::schema::{SchemaError, Upcasters};

/// Why a handler invocation did not succeed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Retrying cannot help (payload does not decode): dead-letter at once.
    Permanent(String),
    /// The handler (or the database) failed: retry per policy.
    Transient(String),
}

type Erased<DB> = Arc<
    dyn Fn(Context<DB>, &Envelope, &Upcasters) -> BoxFuture<'static, Result<(), Failure>>
        + Send
        + Sync,
>;

/// A registered handler: the newest schema version it understands, and the call.
pub(crate) struct Registration<DB: sqlx::Database> {
    pub(crate) version: u32,
    pub(crate) call: Erased<DB>,
}

impl<DB: sqlx::Database> Clone for Registration<DB> {
    fn clone(&self) -> Self {
        Registration {
            version: self.version,
            call: Arc::clone(&self.call),
        }
    }
}

type ErasedBatch<DB> = Arc<
    dyn Fn(BatchContext<DB>, &Upcasters) -> BoxFuture<'static, Result<(), Failure>> + Send + Sync,
>;

/// A registered batch handler: the newest schema version it understands, the
/// most events it takes at once, and the call (which decodes the payloads of
/// the context's envelopes).
pub(crate) struct BatchRegistration<DB: sqlx::Database> {
    pub(crate) version: u32,
    pub(crate) max: usize,
    pub(crate) call: ErasedBatch<DB>,
}

impl<DB: sqlx::Database> Clone for BatchRegistration<DB> {
    fn clone(&self) -> Self {
        BatchRegistration {
            version: self.version,
            max: self.max,
            call: Arc::clone(&self.call),
        }
    }
}

/// What handles an event type.
pub(crate) enum Handler<DB: sqlx::Database> {
    /// One event per call.
    One(Registration<DB>),
    /// Up to `max` events per call.
    Batch(BatchRegistration<DB>),
}

impl<DB: sqlx::Database> Clone for Handler<DB> {
    fn clone(&self) -> Self {
        match self {
            Handler::One(r) => Handler::One(r.clone()),
            Handler::Batch(r) => Handler::Batch(r.clone()),
        }
    }
}

impl<DB: sqlx::Database> Handler<DB> {
    /// The newest schema version the handler understands.
    pub(crate) fn version(&self) -> u32 {
        match self {
            Handler::One(r) => r.version,
            Handler::Batch(r) => r.version,
        }
    }
}

/// Decodes `envelope`'s payload as `E`, upcast from the message's schema
/// version when `E` has upcasters. Failing is permanent: dead-letter at once.
fn decode<E: Event>(envelope: &Envelope, upcasters: &Upcasters) -> Result<E, Failure> {
    let version = envelope.schema_version().unwrap_or(1);
    upcasters
        .decode::<E>(version, &envelope.data)
        .map_err(|e| Failure::Permanent(e.to_string()))
}

/// Handlers by CloudEvents type, and the upcasters their decoding applies.
pub(crate) struct Registry<DB: sqlx::Database> {
    by_type: HashMap<String, Handler<DB>>,
    /// Types whose messages are never group-committed (saga steps).
    ungrouped: std::collections::HashSet<String>,
    pub(crate) upcasters: Upcasters,
    /// The first upcaster that could not be registered, reported by `build`.
    pub(crate) invalid_upcaster: Option<SchemaError>,
}

impl<DB: sqlx::Database> std::fmt::Debug for Registry<DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("handlers", &self.by_type.keys().collect::<Vec<_>>())
            .field("upcasters", &self.upcasters)
            .finish()
    }
}

impl<DB: sqlx::Database> Default for Registry<DB> {
    fn default() -> Self {
        Registry {
            by_type: HashMap::new(),
            ungrouped: std::collections::HashSet::new(),
            upcasters: Upcasters::new(),
            invalid_upcaster: None,
        }
    }
}

impl<DB: sqlx::Database> Registry<DB> {
    pub(crate) fn add<E, F, Fut>(&mut self, handler: F)
    where
        E: Event,
        F: Fn(Context<DB>, E) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
    {
        let handler = Arc::new(handler);
        let call: Erased<DB> = Arc::new(move |ctx, envelope, upcasters| {
            let decoded = decode::<E>(envelope, upcasters);
            let handler = Arc::clone(&handler);
            Box::pin(async move {
                handler(ctx, decoded?)
                    .await
                    .map_err(|e| Failure::Transient(format!("handler failed: {e}")))
            })
        });
        self.by_type.insert(
            E::TYPE.to_owned(),
            Handler::One(Registration {
                version: E::VERSION,
                call,
            }),
        );
    }

    /// Registers a batch handler for `E`, replacing any handler of `E`.
    pub(crate) fn add_batch<E, F, Fut>(&mut self, max: usize, handler: F)
    where
        E: Event,
        F: Fn(BatchContext<DB>, Vec<E>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
    {
        let handler = Arc::new(handler);
        let call: ErasedBatch<DB> = Arc::new(move |ctx: BatchContext<DB>, upcasters| {
            // Decoded on every call: a batch that is split after a failure
            // hands its events to the handler again, by value.
            let decoded: Result<Vec<E>, Failure> = ctx
                .envelopes()
                .iter()
                .map(|envelope| decode::<E>(envelope, upcasters))
                .collect();
            let handler = Arc::clone(&handler);
            Box::pin(async move {
                handler(ctx, decoded?)
                    .await
                    .map_err(|e| Failure::Transient(format!("batch handler failed: {e}")))
            })
        });
        self.by_type.insert(
            E::TYPE.to_owned(),
            Handler::Batch(BatchRegistration {
                version: E::VERSION,
                max: max.max(1),
                call,
            }),
        );
    }

    /// Adds the step of `E` from version `from`; an invalid one is kept for
    /// `build` to report.
    pub(crate) fn upcast<E: Event>(
        &mut self,
        from: u32,
        step: impl Fn(serde_json::Value) -> Result<serde_json::Value, BoxError> + Send + Sync + 'static,
    ) {
        if let Err(e) = self.upcasters.register::<E>(from, step) {
            self.invalid_upcaster.get_or_insert(e);
        }
    }

    /// Adds every step of `upcasters`.
    pub(crate) fn add_upcasters(&mut self, upcasters: Upcasters) {
        if let Err(e) = self.upcasters.merge(upcasters) {
            self.invalid_upcaster.get_or_insert(e);
        }
    }

    pub(crate) fn get(&self, event_type: &str) -> Option<&Handler<DB>> {
        self.by_type.get(event_type)
    }

    /// The batch handler of `event_type`, if it has one.
    pub(crate) fn batch(&self, event_type: &str) -> Option<&BatchRegistration<DB>> {
        match self.by_type.get(event_type) {
            Some(Handler::Batch(r)) => Some(r),
            _ => None,
        }
    }

    /// Keeps messages of `event_type` out of group commits.
    pub(crate) fn ungroup(&mut self, event_type: &str) {
        self.ungrouped.insert(event_type.to_owned());
    }

    /// The single-event handler of `event_type`, if one may run in a group
    /// commit.
    pub(crate) fn groupable(&self, event_type: &str) -> Option<&Registration<DB>> {
        match self.by_type.get(event_type) {
            Some(Handler::One(r)) if !self.ungrouped.contains(event_type) => Some(r),
            _ => None,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.by_type.is_empty()
    }
}
