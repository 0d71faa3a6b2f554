//! The relay's configuration as an operator writes it: a TOML file plus
//! command-line flags. Anything is accepted with a valid result or refused
//! with an error, never a panic.
#![no_main]

use arbitrary::Arbitrary;
use clap::Parser;
use libfuzzer_sys::fuzz_target;

// The relay's own configuration module, compiled here unchanged.
#[allow(dead_code, unreachable_pub)]
#[path = "../../outbox-relay/src/config.rs"]
mod config;
#[allow(dead_code, unreachable_pub)]
#[path = "../../outbox-relay/src/destinations.rs"]
mod destinations;
#[allow(dead_code, unreachable_pub)]
#[path = "../../outbox-relay/src/redact.rs"]
mod redact;
#[allow(dead_code, unreachable_pub)]
#[path = "../../outbox-relay/src/duration.rs"]
mod duration;
// The listener's settings, not its server, stand in for `crate::http`.
#[allow(dead_code, unreachable_pub)]
#[path = "../../outbox-relay/src/http/settings.rs"]
mod http;

/// `outbox-relay run`'s settings.
#[derive(Debug, Parser)]
struct Run {
    #[command(flatten)]
    common: config::Common,
    #[command(flatten)]
    run: config::RunArgs,
}

#[derive(Debug, Arbitrary)]
struct Input {
    file: String,
    args: Vec<String>,
}

fuzz_target!(|input: Input| {
    let Ok(file) = config::FileConfig::parse(&input.file) else {
        return;
    };
    let args = std::iter::once("outbox-relay".to_owned()).chain(input.args);
    let Ok(cli) = Run::try_parse_from(args) else {
        return;
    };
    if let Ok(resolved) = config::resolve(&cli.common, &cli.run, file) {
        // A resolved configuration is one the relay accepts.
        resolved.relay.validate().expect("resolve returned an invalid configuration");
    }
});
