//! The saga's event schemas: the registry of its events and the
//! `schema export|check --dir <dir>` subcommand that commits them to
//! `schemas/` and checks changes against them in CI.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use eventbus::schema::{Registry, SchemaError};

use crate::{Error, Result};

/// The prefix of every saga event type.
pub const TYPE_PREFIX: &str = "com.example.saga.";

/// The saga's events: every `#[derive(Event)]` in the program whose type
/// starts with [`TYPE_PREFIX`] (those in [`crate::events`]), so a new event
/// joins without a list to keep up to date.
pub fn registry() -> Registry {
    let mut registry = Registry::derived();
    registry.retain(|e| e.event_type().starts_with(TYPE_PREFIX));
    registry
}

/// `schema export|check`: the saga's event schemas on disk.
#[derive(Debug, Clone, Args)]
pub struct SchemaArgs {
    #[command(subcommand)]
    action: SchemaAction,
}

#[derive(Debug, Clone, Subcommand)]
enum SchemaAction {
    /// Writes each event's JSON Schema to `<dir>/<type>/v<version>.json`.
    Export {
        /// The schema directory (the repository's is
        /// `examples/order-payment-saga/schemas`).
        #[arg(long)]
        dir: PathBuf,
    },
    /// Compares the events with the schemas in `<dir>` and fails (exit 1) on a
    /// backward-incompatible change.
    Check {
        /// The schema directory to check against.
        #[arg(long)]
        dir: PathBuf,
    },
}

/// Runs `schema export|check`; `Ok(false)` when the check finds an
/// incompatible change. The report goes to stdout.
///
/// # Errors
///
/// [`Error::Usage`] when the directory cannot be read or written, or the
/// registry holds two different schemas for one type and version.
pub fn run(args: SchemaArgs) -> Result<bool> {
    let registry = registry();
    let usage = |e: SchemaError| Error::Usage(e.to_string());
    match args.action {
        SchemaAction::Export { dir } => {
            let files = registry.export(&dir).map_err(usage)?;
            for file in &files {
                let state = if file.written { "wrote" } else { "unchanged" };
                println!("{state:9} {}", file.path.display());
            }
            Ok(true)
        }
        SchemaAction::Check { dir } => {
            let report = registry.check(&dir).map_err(usage)?;
            print!("{report}");
            Ok(report.passed())
        }
    }
}
