//! `outbox-relay`: the sidecar that moves events from the outbox to the broker.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Forwards events from the eventbus outbox table to Kafka or RabbitMQ.
#[derive(Debug, Parser)]
#[command(name = "outbox-relay", version, about)]
struct Cli {
    /// PostgreSQL URL of the service database holding the outbox.
    #[arg(
        long,
        env = "EVENTBUS_DATABASE_URL",
        global = true,
        hide_env_values = true
    )]
    database_url: Option<String>,

    /// Outbox table name (`table` or `schema.table`).
    #[arg(
        long,
        env = "EVENTBUS_OUTBOX_TABLE",
        global = true,
        default_value = "eventbus_outbox"
    )]
    outbox_table: String,

    /// Inbox table name (`table` or `schema.table`).
    #[arg(
        long,
        env = "EVENTBUS_INBOX_TABLE",
        global = true,
        default_value = "eventbus_inbox"
    )]
    inbox_table: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create or upgrade the outbox, relay and inbox tables (idempotent).
    Migrate {
        /// Number of logical partitions for a new outbox table.
        #[arg(long, env = "EVENTBUS_PARTITIONS", default_value_t = eventbus::migrate::DEFAULT_PARTITIONS)]
        partitions: u32,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("outbox-relay: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> eventbus::Result<()> {
    let url = cli.database_url.ok_or_else(|| {
        eventbus::Error::Config("--database-url (or EVENTBUS_DATABASE_URL) is required".into())
    })?;
    match cli.command {
        Command::Migrate { partitions } => {
            let pool = sqlx::PgPool::connect(&url).await?;
            eventbus::Migrator::new()
                .outbox_table(&cli.outbox_table)?
                .inbox_table(&cli.inbox_table)?
                .partitions(partitions)?
                .run(&pool)
                .await?;
            eprintln!("outbox-relay: migrations applied");
            Ok(())
        }
    }
}
