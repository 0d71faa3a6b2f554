//! Typed handlers, erased so one consumer can hold handlers for many event
//! types: decoding the payload, checking the schema version, calling user code.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use futures::future::BoxFuture;

use super::context::Context;
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

/// Handlers by CloudEvents type.
pub(crate) struct Registry<DB: sqlx::Database> {
    by_type: HashMap<String, Registration<DB>>,
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
            Registration {
                version: E::VERSION,
                call,
            },
        );
    }

    pub(crate) fn get(&self, event_type: &str) -> Option<&Registration<DB>> {
        self.by_type.get(event_type)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.by_type.is_empty()
    }
}
