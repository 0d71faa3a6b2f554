//! Typed handlers, erased so one consumer can hold handlers for many event
//! types: decoding the payload, checking the schema version, calling user code
//! — one event at a time, or a batch of events of one type.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use futures::future::BoxFuture;

use super::context::{BatchContext, Context};
use crate::envelope::Envelope;
use crate::event::Event;
use crate::inbox::BoxError;

/// Why a handler invocation did not succeed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Retrying cannot help (payload does not decode): dead-letter at once.
    Permanent(String),
    /// The handler (or the database) failed: retry per policy.
    Transient(String),
}

type Erased<DB> =
    Arc<dyn Fn(Context<DB>, &Envelope) -> BoxFuture<'static, Result<(), Failure>> + Send + Sync>;

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

type ErasedBatch<DB> =
    Arc<dyn Fn(BatchContext<DB>) -> BoxFuture<'static, Result<(), Failure>> + Send + Sync>;

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

/// Handlers by CloudEvents type.
pub(crate) struct Registry<DB: sqlx::Database> {
    by_type: HashMap<String, Handler<DB>>,
}

impl<DB: sqlx::Database> std::fmt::Debug for Registry<DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.by_type.keys()).finish()
    }
}

impl<DB: sqlx::Database> Default for Registry<DB> {
    fn default() -> Self {
        Registry {
            by_type: HashMap::new(),
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
        let call: Erased<DB> = Arc::new(move |ctx, envelope| {
            let decoded = serde_json::from_slice::<E>(&envelope.data);
            let handler = Arc::clone(&handler);
            Box::pin(async move {
                let event = decoded.map_err(|e| {
                    Failure::Permanent(format!("payload does not decode as {}: {e}", E::TYPE))
                })?;
                handler(ctx, event)
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
        let call: ErasedBatch<DB> = Arc::new(move |ctx: BatchContext<DB>| {
            // Decoded on every call: a batch that is split after a failure
            // hands its events to the handler again, by value.
            let decoded: Result<Vec<E>, Failure> = ctx
                .envelopes()
                .iter()
                .map(|envelope| {
                    serde_json::from_slice::<E>(&envelope.data).map_err(|e| {
                        Failure::Permanent(format!("payload does not decode as {}: {e}", E::TYPE))
                    })
                })
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

    pub(crate) fn is_empty(&self) -> bool {
        self.by_type.is_empty()
    }
}
