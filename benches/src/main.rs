//! `eventbus-bench`: how close eventbus comes to the limits of the machine,
//! and how it compares with doing the same work without it, and with the
//! closest published Rust outbox.
//!
//! Every workload measures our figure and its baseline in the same run and
//! reports the ratio, with durability on everywhere (PostgreSQL
//! `synchronous_commit` as configured and recorded; Kafka `acks=all` with
//! idempotence; RabbitMQ persistent messages with publisher confirms).
//!
//! ```text
//! cargo run --release -p eventbus-bench -- all            # full run (about an hour)
//! cargo run --release -p eventbus-bench -- all --quick    # smoke run (under 3 minutes)
//! cargo run --release -p eventbus-bench -- w2 --w2-events 200000
//! cargo run --release -p eventbus-bench -- w6 --w6-backlogs 10k,100k,1M,5M
//! ```
//!
//! Output (default `target/bench/`): `results.json`, `summary.md`, PNG plots of
//! the latency distributions, and the relay's logs. See `docs/benchmarks.md`.
//!
//! | module | owns |
//! | --- | --- |
//! | `env` | services, a fresh database per workload, versions and settings |
//! | `event` | the 256-byte event and the messages the relay makes of it |
//! | `workloads` | W1 … W6 |
//! | `raw` | the baselines' plain rdkafka and lapin clients |
//! | `relay_process` | `outbox-relay` as a child process, CPU and peak RSS |
//! | `timeline` | commit / ack / handler instants; timed publisher, polling-only store |
//! | `stats`, `report`, `plot` | percentiles, JSON + Markdown, PNG |

mod cpu;
mod env;
mod error;
mod event;
mod plot;
mod progress;
mod raw;
mod relay_process;
mod report;
mod stats;
mod timeline;
mod workloads;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, ValueEnum};

use crate::env::{Environment, Services};
use crate::error::{BenchError, Result};
use crate::progress::Progress;
use crate::report::{Report, WorkloadReport};
use crate::workloads::{Broker, Ctx, Options, W6Options};

/// Benchmarks eventbus against baselines measured in the same run.
#[derive(Debug, Parser)]
#[command(name = "eventbus-bench", version, about)]
struct Cli {
    /// Workloads to run.
    #[arg(value_enum, required = true)]
    workloads: Vec<Which>,
    /// Small counts and short durations (under 3 minutes in all): checks that
    /// the benchmark runs, as CI does; the figures mean little.
    #[arg(long)]
    quick: bool,
    /// Directory for results.json, summary.md, the plots and relay logs.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// The `outbox-relay` binary [default: next to this executable].
    #[arg(long)]
    relay_bin: Option<PathBuf>,
    /// W1: events per case and side [default: 100000; quick 1000].
    #[arg(long)]
    w1_events: Option<usize>,
    /// W1: events per side of the one-event-transaction cases, which commit
    /// (and flush the WAL) once per event [default: --w1-events].
    #[arg(long)]
    w1_single_events: Option<usize>,
    /// W2: pending events drained [default: 1000000; quick 5000].
    #[arg(long)]
    w2_events: Option<usize>,
    /// W3 and W5: rates in events/s, comma-separated [default: 200,1000,3000; quick 200].
    #[arg(long, value_delimiter = ',')]
    rates: Option<Vec<u32>>,
    /// W3: seconds per rate [default: 60; quick 3].
    #[arg(long)]
    w3_seconds: Option<u64>,
    /// W4: messages per consumer mode [default: 100000; quick 1000].
    #[arg(long)]
    w4_messages: Option<usize>,
    /// W5: pending events each library drains [default: 10000; quick 300].
    #[arg(long)]
    w5_events: Option<usize>,
    /// W5: seconds per rate of the latency part [default: 30; quick 3].
    #[arg(long)]
    w5_seconds: Option<u64>,
    /// W2 and W4: brokers, comma-separated [default: kafka,rabbitmq].
    #[arg(long, value_delimiter = ',', value_enum)]
    brokers: Option<Vec<BrokerArg>>,
    /// W3: brokers, comma-separated [default: kafka].
    #[arg(long, value_delimiter = ',', value_enum)]
    w3_brokers: Option<Vec<BrokerArg>>,
    /// W6: backlog sizes (pending rows), comma-separated; `k` and `M`
    /// suffixes allowed [default: 10k,100k,1M,5M; quick 1k,10k].
    #[arg(long, value_delimiter = ',', value_parser = parse_count)]
    w6_backlogs: Option<Vec<usize>>,
    /// W6: timed claims per backlog size [default: 200; quick 20].
    #[arg(long, value_parser = parse_count)]
    w6_claims: Option<usize>,
    /// W6: rows the relay drains from each backlog (at most the backlog)
    /// [default: 50k; quick 1k].
    #[arg(long, value_parser = parse_count)]
    w6_drain_rows: Option<usize>,
    /// W6: numbers of relay processes, comma-separated [default: 1,2,4; quick 1,2].
    #[arg(long, value_delimiter = ',', value_parser = parse_count)]
    w6_relays: Option<Vec<usize>>,
    /// W6: the backlog the relay processes share [default: 200k; quick 10k].
    #[arg(long, value_parser = parse_count)]
    w6_relay_backlog: Option<usize>,
    /// W6: payload sizes in bytes, comma-separated; `KiB` and `MiB` suffixes
    /// allowed [default: 256,4KiB,64KiB; quick 256,4KiB].
    #[arg(long, value_delimiter = ',', value_parser = parse_count)]
    w6_payloads: Option<Vec<usize>>,
    /// W6: rows drained per payload size [default: 20k; quick 1k].
    #[arg(long, value_parser = parse_count)]
    w6_payload_rows: Option<usize>,
}

/// A workload on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Which {
    /// W1 to W6.
    All,
    /// Write path.
    W1,
    /// Relay drain.
    W2,
    /// Steady-state latency.
    W3,
    /// Consumer.
    W4,
    /// The published peer.
    W5,
    /// The relay's cost curve.
    W6,
}

/// A broker on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BrokerArg {
    /// Kafka protocol.
    Kafka,
    /// RabbitMQ.
    Rabbitmq,
}

impl From<BrokerArg> for Broker {
    fn from(b: BrokerArg) -> Self {
        match b {
            BrokerArg::Kafka => Broker::Kafka,
            BrokerArg::Rabbitmq => Broker::RabbitMq,
        }
    }
}

impl Cli {
    fn options(&self) -> Options {
        let q = self.quick;
        let pick =
            |v: Option<usize>, full: usize, quick: usize| v.unwrap_or(if q { quick } else { full });
        let list = |v: &Option<Vec<usize>>, full: &[usize], quick: &[usize]| -> Vec<usize> {
            v.clone()
                .unwrap_or_else(|| if q { quick.to_vec() } else { full.to_vec() })
        };
        let brokers = |v: &Option<Vec<BrokerArg>>, default: &[Broker]| -> Vec<Broker> {
            v.as_ref().map_or_else(
                || default.to_vec(),
                |b| b.iter().map(|&b| b.into()).collect(),
            )
        };
        Options {
            quick: q,
            w1_events: pick(self.w1_events, 100_000, 1_000),
            w1_single_events: self
                .w1_single_events
                .unwrap_or_else(|| pick(self.w1_events, 100_000, 1_000)),
            w2_events: pick(self.w2_events, 1_000_000, 5_000),
            w3_rates: self.rates.clone().unwrap_or_else(|| {
                if q {
                    vec![200]
                } else {
                    vec![200, 1_000, 3_000]
                }
            }),
            w3_seconds: self.w3_seconds.unwrap_or(if q { 3 } else { 60 }),
            w4_messages: pick(self.w4_messages, 100_000, 1_000),
            w5_events: pick(self.w5_events, 10_000, 300),
            w5_seconds: self.w5_seconds.unwrap_or(if q { 3 } else { 30 }),
            brokers: brokers(&self.brokers, &[Broker::Kafka, Broker::RabbitMq]),
            w3_brokers: brokers(&self.w3_brokers, &[Broker::Kafka]),
            w6: W6Options {
                backlogs: list(
                    &self.w6_backlogs,
                    &[10_000, 100_000, 1_000_000, 5_000_000],
                    &[1_000, 10_000],
                ),
                claims: pick(self.w6_claims, 200, 20),
                drain_rows: pick(self.w6_drain_rows, 50_000, 1_000),
                relays: list(&self.w6_relays, &[1, 2, 4], &[1, 2]),
                relay_backlog: pick(self.w6_relay_backlog, 200_000, 10_000),
                payloads: list(&self.w6_payloads, &[256, 4_096, 65_536], &[256, 4_096]),
                payload_rows: pick(self.w6_payload_rows, 20_000, 1_000),
            },
        }
    }

    fn selected(&self) -> Vec<Which> {
        let all = [
            Which::W1,
            Which::W2,
            Which::W3,
            Which::W4,
            Which::W5,
            Which::W6,
        ];
        if self.workloads.contains(&Which::All) {
            return all.to_vec();
        }
        all.into_iter()
            .filter(|w| self.workloads.contains(w))
            .collect()
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the selected workloads; `Ok(false)` if any failed.
async fn run(cli: &Cli) -> Result<bool> {
    std::fs::create_dir_all(&cli.out).map_err(|e| BenchError::io(&cli.out, e))?;
    let services = Services::from_env();
    services.check_postgres().await?;
    let environment = Environment::read(&services).await;
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let ctx = Ctx {
        services,
        progress: Progress::new(),
        options: cli.options(),
        run_id,
        out: cli.out.clone(),
        relay_bin: cli.relay_bin.clone(),
    };
    let mut report = Report {
        started_at: now(),
        finished_at: String::new(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        quick: cli.quick,
        environment,
        workloads: Vec::new(),
    };
    let mut ok = true;
    for which in cli.selected() {
        let started = Instant::now();
        let mut w = WorkloadReport {
            id: match which {
                Which::W1 | Which::All => "W1",
                Which::W2 => "W2",
                Which::W3 => "W3",
                Which::W4 => "W4",
                Which::W5 => "W5",
                Which::W6 => "W6",
            },
            ..WorkloadReport::default()
        };
        ctx.progress.log(format!("── {} ──", w.id));
        let outcome = match which {
            Which::W1 | Which::All => workloads::w1_write::run(&ctx, &mut w).await,
            Which::W2 => workloads::w2_drain::run(&ctx, &mut w).await,
            Which::W3 => workloads::w3_latency::run(&ctx, &mut w).await,
            Which::W4 => workloads::w4_consumer::run(&ctx, &mut w).await,
            Which::W5 => workloads::w5_peer::run(&ctx, &mut w).await,
            Which::W6 => workloads::w6_cost::run(&ctx, &mut w).await,
        };
        if let Err(e) = outcome {
            ctx.progress.log(format!("{} failed: {e}", w.id));
            w.error = Some(e.to_string());
            ok = false;
        }
        w.seconds = started.elapsed().as_secs_f64();
        report.workloads.push(w);
        // Written after every workload, so a later failure keeps what was measured.
        report.finished_at = now();
        report.write(&cli.out)?;
    }
    println!("{}", report.markdown());
    ctx.progress.log(format!(
        "results: {} and {}",
        cli.out.join("results.json").display(),
        cli.out.join("summary.md").display()
    ));
    Ok(ok)
}

/// A count or a size: digits with an optional suffix, `k`/`M` (thousands,
/// millions) or `KiB`/`MiB` (1,024, 1,048,576); `_` separates digits.
fn parse_count(text: &str) -> std::result::Result<usize, String> {
    let text = text.trim();
    let digits_end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '_'))
        .unwrap_or(text.len());
    let (digits, suffix) = text.split_at(digits_end);
    let digits = digits.replace('_', "");
    if digits.is_empty() {
        return Err(format!(
            "`{text}` is not a count (e.g. 5000, 10k, 5M, 64KiB)"
        ));
    }
    let n: usize = digits
        .parse()
        .map_err(|e| format!("`{text}` is not a count: {e}"))?;
    let unit: usize = match suffix.trim() {
        "" => 1,
        "k" | "K" => 1_000,
        "M" => 1_000_000,
        "KiB" => 1_024,
        "MiB" => 1_048_576,
        other => return Err(format!("`{other}` in `{text}`: use k, M, KiB or MiB")),
    };
    n.checked_mul(unit)
        .ok_or_else(|| format!("`{text}` is too large"))
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_take_decimal_and_binary_suffixes() {
        assert_eq!(parse_count("5000"), Ok(5_000));
        assert_eq!(parse_count("10k"), Ok(10_000));
        assert_eq!(parse_count("5M"), Ok(5_000_000));
        assert_eq!(parse_count("64KiB"), Ok(65_536));
        assert_eq!(parse_count("1MiB"), Ok(1_048_576));
        assert_eq!(parse_count("1_000_000"), Ok(1_000_000));
        assert!(parse_count("").is_err());
        assert!(parse_count("k").is_err());
        assert!(parse_count("5G").is_err());
        assert!(parse_count("1.5M").is_err());
        assert!(parse_count("99999999999999999999M").is_err());
    }

    #[test]
    fn w6_flags_and_their_defaults() {
        let cli = Cli::try_parse_from([
            "eventbus-bench",
            "w6",
            "--w6-backlogs",
            "10000,100k,1M,5M",
            "--w6-payloads",
            "256,4KiB,64KiB",
            "--w6-relays",
            "1,2,4",
        ])
        .expect("parses");
        assert_eq!(cli.selected(), vec![Which::W6]);
        let w6 = cli.options().w6;
        assert_eq!(w6.backlogs, vec![10_000, 100_000, 1_000_000, 5_000_000]);
        assert_eq!(w6.payloads, vec![256, 4_096, 65_536]);
        assert_eq!(w6.relays, vec![1, 2, 4]);
        assert_eq!((w6.claims, w6.drain_rows), (200, 50_000));

        let quick = Cli::try_parse_from(["eventbus-bench", "all", "--quick"]).expect("parses");
        assert!(quick.selected().contains(&Which::W6));
        let w6 = quick.options().w6;
        assert_eq!(w6.backlogs, vec![1_000, 10_000]);
        assert_eq!(w6.relays, vec![1, 2]);
        assert_eq!(w6.payloads, vec![256, 4_096]);

        assert!(
            Cli::try_parse_from(["eventbus-bench", "w6", "--w6-backlogs", "10k,lots"]).is_err()
        );
    }
}
