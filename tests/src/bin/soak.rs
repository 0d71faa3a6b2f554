//! `soak`: the whole data path under random faults, checked from a ledger
//! (nothing lost, no duplicate effects, order per key), with its negative
//! controls. See [`eventbus_tests::soak`] for what it does and prints.
//!
//! ```text
//! soak run [--seconds 120] [--rate 150] [--writers 4] [--long-writers 2] [--keys 200]
//!          [--fault-every-ms 4000] [--no-faults] [--seed N] [--at-least-once]
//!          [--broken-relay drop|swap]
//! ```
//!
//! Exit code 0: the history is clean; 1: the checker found lost, duplicate
//! or reordered steps; 2: the soak could not run.

#[tokio::main]
async fn main() {
    // The child processes (`consume`, `relay`) log to stderr, which the
    // soak sends to their files; `RUST_LOG` (set by the soak) filters.
    if std::env::args().nth(1).as_deref() != Some("run") {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .init();
    }
    let code = eventbus_tests::soak::cli(std::env::args().skip(1).collect()).await;
    std::process::exit(code);
}
