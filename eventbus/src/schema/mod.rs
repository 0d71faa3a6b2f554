//! Event schemas and their evolution: a [`Registry`] of every event type and
//! version with its JSON Schema, export to committed files, and a check that
//! fails on backward-incompatible changes.
//!
//! `#[derive(Event)]` registers each (non-generic) event type, so
//! [`Registry::derived`] knows them all without a list to maintain. A CI step
//! exports the schemas once ([`Registry::export`]), commits them, and from then
//! on checks every change against them ([`Registry::check`]):
//!
//! ```
//! use eventbus::schema::Registry;
//! use eventbus::Event;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Event, Serialize, Deserialize, schemars::JsonSchema)]
//! #[event(type = "com.example.invoice.issued", version = 1, destination = "invoices", key = invoice_id)]
//! struct InvoiceIssued { invoice_id: String, total_cents: i64 }
//!
//! # fn main() -> Result<(), eventbus::schema::SchemaError> {
//! let dir = std::env::temp_dir().join(format!("schemas-{}", uuid::Uuid::now_v7()));
//! let mut registry = Registry::derived();
//! registry.retain(|e| e.event_type().starts_with("com.example.invoice."));
//! registry.export(&dir)?; // dir/com.example.invoice.issued/v1.json
//!
//! let report = registry.check(&dir)?;
//! assert!(report.passed() && report.is_up_to_date());
//! # std::fs::remove_dir_all(&dir).ok();
//! # Ok(()) }
//! ```
//!
//! Which changes pass, and in which direction, is decided by [`diff`]; the
//! rules and a worked example are in `docs/schema-evolution.md`.
//!
//! Consumers bring older messages to the version their handler knows with
//! [`Upcasters`] (JSON steps `v1 → v2 → v3`), and set aside messages newer
//! than it (see [`NewerVersions`](crate::consumer::NewerVersions)). The
//! outbox checks each payload against its event's schema before writing it
//! ([`validate`], [`Outbox::validate_payloads`](crate::Outbox::validate_payloads)).

mod compat;
mod error;
mod registry;
mod snapshot;
mod upcast;
mod validate;

pub use compat::{diff, Change, ChangeKind, Impact, Mode, SchemaDiff, Verdict};
pub use error::SchemaError;
pub use registry::{EventSchema, Registry};
pub use snapshot::{
    to_canonical_json, CheckOptions, CheckReport, ExportedFile, Finding, FindingKind,
};
pub use upcast::{UpcastError, Upcasters};
pub(crate) use validate::check_event;
pub use validate::{validate, ValidationError, Violation};

/// Support for code `#[derive(Event)]` generates. Not public API: it may change
/// in any release.
#[doc(hidden)]
pub mod __private {
    pub use super::registry::Registration;
    pub use inventory;
}
