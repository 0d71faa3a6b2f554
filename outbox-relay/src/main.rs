//! `outbox-relay`: the sidecar that moves events from the outbox table in
//! PostgreSQL, MySQL or SQLite to Kafka, RabbitMQ or Amazon SQS. The logic
//! lives in `eventbus::relay`; this is configuration, signals, the HTTP
//! listener and operator commands.

mod broker;
mod config;
mod dead_letters;
mod destinations;
mod duration;
mod healthcheck;
mod http;
mod inbox;
mod redact;
mod sagas;
mod telemetry;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use eventbus::backend::{connect, Create, DatabaseKind};
use eventbus::relay::{OutboxAdmin, Relay};
use eventbus::Result;

use config::{Common, FileConfig, RunArgs};

/// Forwards events from the eventbus outbox table in PostgreSQL, MySQL (or
/// MariaDB) or SQLite to Kafka, RabbitMQ or Amazon SQS, in order per key,
/// with any number of instances sharing the work.
#[derive(Debug, Parser)]
#[command(name = "outbox-relay", version, about)]
struct Cli {
    #[command(flatten)]
    common: Common,

    /// Log lines on stderr: `text`, or `json` (one object per line).
    #[arg(
        long,
        env = "EVENTBUS_LOG_FORMAT",
        global = true,
        value_enum,
        default_value_t = telemetry::LogFormat::Text
    )]
    log_format: telemetry::LogFormat,

    #[command(subcommand)]
    command: TopCommand,
}

#[derive(Debug, Subcommand)]
enum TopCommand {
    #[command(flatten)]
    Relay(Command),
    /// Ask a running relay's `/readyz`: exit status 0 when it answers 200,
    /// 1 otherwise (for a container HEALTHCHECK).
    Healthcheck(healthcheck::HealthcheckArgs),
}

/// The commands that work on the database or broker.
#[derive(Debug, Subcommand)]
enum Command {
    /// Relay events until SIGTERM or SIGINT.
    Run(Box<RunArgs>),
    /// Create or upgrade the outbox, relay, inbox and saga tables (idempotent); creates
    /// a SQLite database file that does not exist yet.
    Migrate {
        /// Number of logical partitions for a new outbox table (PostgreSQL and
        /// MySQL; a SQLite outbox always has one).
        #[arg(long, env = "EVENTBUS_PARTITIONS", default_value_t = eventbus::migrate::DEFAULT_PARTITIONS)]
        partitions: u32,
        /// Inbox table name.
        #[arg(long, env = "EVENTBUS_INBOX_TABLE", default_value = eventbus::inbox::DEFAULT_TABLE)]
        inbox_table: String,
        /// Saga table name (`eventbus::saga`).
        #[arg(long, env = "EVENTBUS_SAGA_TABLE", default_value = eventbus::saga::DEFAULT_TABLE)]
        saga_table: String,
    },
    /// Print backlog, oldest pending age, relays with their partitions, parked rows.
    Status,
    /// Inspect and release events parked after failing all their attempts.
    Failed {
        #[command(subcommand)]
        action: FailedAction,
    },
    /// Consumers' dead letters: list, show and replay those in a group's
    /// parked table (to that group only); import or re-drive those on the
    /// broker (`<destination>.<group>.dlq`).
    Dlq {
        #[command(subcommand)]
        action: dead_letters::DlqAction,
    },
    /// Maintain consumers' inbox tables.
    Inbox {
        #[command(subcommand)]
        action: inbox::InboxAction,
    },
    /// Inspect saga instances: a summary and a list, or one instance with
    /// its state and pending timeouts.
    Sagas {
        #[command(subcommand)]
        action: sagas::SagasAction,
    },
}

#[derive(Debug, Subcommand)]
enum FailedAction {
    /// List parked events.
    List {
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// Give parked events a fresh set of attempts (all when no id is given).
    Retry {
        /// Outbox row ids.
        ids: Vec<i64>,
    },
    /// Drop parked events for good, releasing their keys (all when no id is given).
    Skip {
        /// Outbox row ids.
        ids: Vec<i64>,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = match cli.command {
        // No logging or tracing set-up: a probe runs every few seconds.
        TopCommand::Healthcheck(args) => return probe(&cli.common, &args).await,
        TopCommand::Relay(command) => command,
    };
    let telemetry = telemetry::init("outbox-relay", "info", cli.log_format);
    let outcome = run(&cli.common, command).await;
    // Flush spans off the runtime's threads: the exporter blocks.
    let _ = tokio::task::spawn_blocking(move || drop(telemetry)).await;
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("outbox-relay: {}", redact::redact(&e.to_string()));
            ExitCode::FAILURE
        }
    }
}

/// `healthcheck`: one request, its outcome on stdout or stderr.
async fn probe(common: &Common, args: &healthcheck::HealthcheckArgs) -> ExitCode {
    let url = match &args.url {
        Some(url) => url.clone(),
        None => match FileConfig::load(common.config.as_deref()) {
            Ok(file) => healthcheck::default_url(config::http_addr(args.http, file.http)),
            Err(e) => {
                eprintln!("outbox-relay: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    match healthcheck::check(&url, args.timeout).await {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(line) => {
            eprintln!("outbox-relay: {line}");
            ExitCode::FAILURE
        }
    }
}

async fn run(common: &Common, command: Command) -> Result<()> {
    let file = FileConfig::load(common.config.as_deref())?;
    match command {
        Command::Run(args) => {
            let resolved = config::resolve(common, &args, file)?;
            relay(resolved).await
        }
        Command::Migrate {
            partitions,
            inbox_table,
            saga_table,
        } => {
            let db = connect(
                config::database_url(common, &file)?.expose(),
                Create::IfMissing,
            )
            .await?;
            let table = config::table(common, &file)?;
            if db.kind() == DatabaseKind::Sqlite
                && partitions != eventbus::migrate::DEFAULT_PARTITIONS
            {
                tracing::warn!(
                    partitions,
                    "a SQLite outbox has one partition; --partitions ignored"
                );
            }
            let migrator = eventbus::Migrator::new()
                .outbox_table(&table.to_string())?
                .inbox_table(&inbox_table)?
                .saga_table(&saga_table)?
                .partitions(partitions)?;
            db.migrate(&migrator).await?;
            println!("migrations applied");
            Ok(())
        }
        Command::Status => {
            let admin = admin(common, &file).await?;
            let s = admin.status().await?;
            println!("pending: {}", s.pending);
            println!("oldest pending age: {:.1}s", s.oldest_pending_seconds);
            println!("failed (parked): {}", s.failed);
            println!("published (kept): {}", s.published);
            println!("unowned partitions: {}", s.unowned_partitions);
            match s.next_scheduled_due {
                Some(due) => println!(
                    "scheduled: {} (next due {})",
                    s.scheduled,
                    due.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                ),
                None => println!("scheduled: {}", s.scheduled),
            }
            println!("relays:");
            for (id, name, age, owned) in s.relays {
                println!("  {id}  {name}  heartbeat {age:.1}s ago  owns {owned} partitions");
            }
            Ok(())
        }
        Command::Dlq { action } => dead_letters::run(action, common, &file).await,
        Command::Inbox { action } => inbox::run(action, common, &file).await,
        Command::Sagas { action } => sagas::run(action, common, &file).await,
        Command::Failed { action } => {
            let admin = admin(common, &file).await?;
            match action {
                FailedAction::List { limit } => {
                    let rows = admin.failed(limit).await?;
                    println!(
                        "{:>10}  {:<36}  {:<20}  {:<24}  {:>8}  error",
                        "id", "event id", "key", "type", "attempts"
                    );
                    for r in &rows {
                        println!(
                            "{:>10}  {:<36}  {:<20}  {:<24}  {:>8}  {}",
                            r.id,
                            r.event_id,
                            r.partition_key,
                            r.event_type,
                            r.attempts,
                            r.last_error.as_deref().unwrap_or("")
                        );
                    }
                    println!("{} parked", rows.len());
                }
                FailedAction::Retry { ids } => {
                    println!("{} released for retry", admin.retry(&ids).await?)
                }
                FailedAction::Skip { ids } => println!("{} skipped", admin.skip(&ids).await?),
            }
            Ok(())
        }
    }
}

async fn admin(common: &Common, file: &FileConfig) -> Result<OutboxAdmin> {
    let url = config::database_url(common, file)?;
    let db = connect(url.expose(), Create::AsUrlSays).await?;
    Ok(db.admin(config::table(common, file)?))
}

async fn relay(cfg: config::Resolved) -> Result<()> {
    let db = connect(cfg.database_url.expose(), Create::AsUrlSays).await?;
    let publisher = broker::connect(&cfg.broker).await?;
    let store = db.relay_store(cfg.relay.table.clone());
    let relay = Relay::new(store, publisher, cfg.relay)?;
    let listener = http::bind(cfg.http.addr)
        .await
        .map_err(|e| eventbus::Error::Config(format!("cannot listen on {}: {e}", cfg.http.addr)))?;
    tracing::info!(http = %cfg.http.addr, broker = %redact::redact(cfg.broker.url.expose()), relay = %relay.id(), "relay starting");
    let server = tokio::spawn(http::serve(listener, relay.metrics(), cfg.http));
    let result = relay.run(shutdown_signal()).await;
    server.abort();
    result
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    tracing::info!("shutdown requested; finishing the in-flight batch");
}
