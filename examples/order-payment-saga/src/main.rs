//! `order-payment-saga`: runs the saga demo (the default), one service per
//! process, or the audit. See `docs/saga.md`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use order_payment_saga::audit::Pools;
use order_payment_saga::broker::Broker;
use order_payment_saga::db::{self, SagaDb, Storage};
use order_payment_saga::demo::{self, DemoOptions};
use order_payment_saga::order::OrderService;
use order_payment_saga::service::{self, Service, Settings, Shutdown};
use order_payment_saga::{Error, Result};
use sqlx::{MySql, Postgres, Sqlite};

/// The eventbus order/payment saga: order, inventory and payment services
/// choreographed through outboxes, relays, a broker and inboxes.
///
/// Without a command, runs the demo: all three services and their relays in
/// this process (SQLite and the in-memory broker unless told otherwise),
/// places orders, waits until every order is final, prints a summary and
/// exits non-zero if an invariant fails.
#[derive(Debug, Parser)]
#[command(
    name = "order-payment-saga",
    version,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    demo: DemoArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The demo (also what runs without a command).
    Demo(DemoArgs),
    /// The order service alone, with its HTTP API.
    Order(ServiceArgs),
    /// The inventory service alone.
    Inventory(ServiceArgs),
    /// The payment service alone.
    Payment(ServiceArgs),
    /// Checks the saga's invariants across the three services' databases.
    Check(ConnectArgs),
    /// Exports the events' JSON Schemas, or checks them against a directory.
    Schema(order_payment_saga::schemas::SchemaArgs),
}

#[derive(Debug, Clone, Args)]
struct ConnectArgs {
    /// `postgres://…` or `mysql://…` (one database per service:
    /// `<name>_order`, …) or `sqlite://<directory>` (one file per service). Demo default: SQLite in
    /// a new temporary directory.
    #[arg(long, env = "SAGA_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
}

#[derive(Debug, Clone, Args)]
struct SagaArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    /// `memory://` (demo only), `kafka://host:port`, `amqp://user:pass@host:5672/%2f`
    /// or `sqs://` (`sqs+http://host:port` for a local server).
    #[arg(long, env = "SAGA_BROKER", hide_env_values = true)]
    broker: Option<String>,
    /// Prefix of topics and consumer groups. Demo default: a new one per run.
    #[arg(long, env = "SAGA_NAMESPACE")]
    namespace: Option<String>,
    /// How long an order waits for payment before it is cancelled, in ms.
    #[arg(long, default_value_t = 4000)]
    payment_timeout_ms: u64,
    /// How long the simulated gateway takes for `slow-…` customers, in ms.
    #[arg(long, default_value_t = 6000)]
    gateway_delay_ms: u64,
}

#[derive(Debug, Clone, Args)]
struct DemoArgs {
    #[command(flatten)]
    saga: SagaArgs,
    /// Orders to place.
    #[arg(long, default_value_t = 200)]
    orders: usize,
    /// Orders placed at once, at most.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Orders placed per second, on a schedule; 0 places them back to back
    /// (a load test: the latency then measures the backlog).
    #[arg(long, default_value_t = 25)]
    rate: u32,
    /// Send every tenth event twice and kill and restart a relay every 1.5 s.
    #[arg(long)]
    chaos: bool,
    /// Where the order API listens.
    #[arg(long, default_value = "127.0.0.1:0")]
    http: SocketAddr,
    /// Give up waiting for the saga to settle after this many seconds.
    #[arg(long, default_value_t = 120)]
    deadline_secs: u64,
    /// Also write the summary as JSON to this file.
    #[arg(long)]
    report: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
struct ServiceArgs {
    #[command(flatten)]
    saga: SagaArgs,
    /// Where the order API listens (order service only).
    #[arg(long, default_value = "127.0.0.1:8080")]
    http: SocketAddr,
    /// Run a relay for this service's outbox in the process too, instead of
    /// the `outbox-relay` sidecar.
    #[arg(long)]
    relay: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let telemetry = order_payment_saga::telemetry::init("order-payment-saga", "warn");
    let code = run(Cli::parse()).await;
    // Flush spans off the runtime's threads: the exporter blocks.
    let _ = tokio::task::spawn_blocking(move || drop(telemetry)).await;
    code
}

async fn run(cli: Cli) -> ExitCode {
    let outcome = match cli.command.unwrap_or(Command::Demo(cli.demo)) {
        Command::Demo(args) => run_demo(args).await,
        Command::Order(args) => run_service(Service::Order, args).await.map(|()| true),
        Command::Inventory(args) => run_service(Service::Inventory, args).await.map(|()| true),
        Command::Payment(args) => run_service(Service::Payment, args).await.map(|()| true),
        Command::Check(args) => run_check(args).await,
        Command::Schema(args) => order_payment_saga::schemas::run(args),
    };
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

/// The databases of all three services, on one backend or the other.
enum AnyPools {
    Sqlite(Pools<Sqlite>),
    Postgres(Pools<Postgres>),
    MySql(Pools<MySql>),
}

async fn connect_all(storage: &Storage) -> Result<AnyPools> {
    Ok(match storage {
        Storage::Sqlite(dir) => AnyPools::Sqlite(Pools {
            order: db::sqlite(dir, Service::Order.name()).await?,
            inventory: db::sqlite(dir, Service::Inventory.name()).await?,
            payment: db::sqlite(dir, Service::Payment.name()).await?,
        }),
        Storage::Postgres(url) => AnyPools::Postgres(Pools {
            order: db::postgres(url, Service::Order.name()).await?,
            inventory: db::postgres(url, Service::Inventory.name()).await?,
            payment: db::postgres(url, Service::Payment.name()).await?,
        }),
        Storage::MySql(url) => AnyPools::MySql(Pools {
            order: db::mysql(url, Service::Order.name()).await?,
            inventory: db::mysql(url, Service::Inventory.name()).await?,
            payment: db::mysql(url, Service::Payment.name()).await?,
        }),
    })
}

fn settings(args: &SagaArgs, default_namespace: String) -> Settings {
    Settings {
        namespace: args.namespace.clone().unwrap_or(default_namespace),
        payment_timeout: Duration::from_millis(args.payment_timeout_ms),
        gateway_delay: Duration::from_millis(args.gateway_delay_ms),
    }
}

async fn run_demo(args: DemoArgs) -> Result<bool> {
    let storage = match &args.saga.connect.database_url {
        Some(url) => Storage::parse(url)?,
        None => Storage::Sqlite(
            std::env::temp_dir().join(format!("order-payment-saga-{}", uuid::Uuid::now_v7())),
        ),
    };
    let broker = Broker::parse(args.saga.broker.as_deref().unwrap_or("memory://"))?;
    let run_id = uuid::Uuid::now_v7().simple().to_string();
    let settings = settings(&args.saga, format!("saga-{}", &run_id[run_id.len() - 8..]));
    let setup = format!("{} and {}", storage.describe(), broker.describe());
    eprintln!(
        "placing {} orders on {setup}{}…",
        args.orders,
        if args.chaos { ", with chaos" } else { "" }
    );
    let options = DemoOptions {
        orders: args.orders,
        concurrency: args.concurrency,
        rate: args.rate,
        chaos: args.chaos,
        settings,
        http: args.http,
        deadline: Duration::from_secs(args.deadline_secs),
    };
    let report = match connect_all(&storage).await? {
        AnyPools::Sqlite(pools) => demo::run(pools, broker, setup, options).await?,
        AnyPools::Postgres(pools) => demo::run(pools, broker, setup, options).await?,
        AnyPools::MySql(pools) => demo::run(pools, broker, setup, options).await?,
    };
    println!("{}", report.render());
    if let Some(path) = &args.report {
        let json = serde_json::to_vec_pretty(&report).map_err(|e| Error::Usage(e.to_string()))?;
        std::fs::write(path, json)
            .map_err(|e| Error::Usage(format!("cannot write {}: {e}", path.display())))?;
    }
    Ok(report.passed())
}

async fn run_service(service: Service, args: ServiceArgs) -> Result<()> {
    let url = args.saga.connect.database_url.clone().ok_or_else(|| {
        Error::Usage("--database-url is required to run a service on its own".into())
    })?;
    let broker = match args.saga.broker.as_deref() {
        None | Some("memory://") => {
            return Err(Error::Usage(
                "a service on its own needs a real broker: --broker kafka://…, amqp://… or sqs://… (memory:// works only in the demo)".into(),
            ))
        }
        Some(url) => Broker::parse(url)?,
    };
    let settings = settings(&args.saga, "saga".into());
    match Storage::parse(&url)? {
        Storage::Sqlite(dir) => {
            let pool = db::sqlite(&dir, service.name()).await?;
            serve(service, pool, broker, settings, args).await
        }
        Storage::Postgres(url) => {
            let pool = db::postgres(&url, service.name()).await?;
            serve(service, pool, broker, settings, args).await
        }
        Storage::MySql(url) => {
            let pool = db::mysql(&url, service.name()).await?;
            serve(service, pool, broker, settings, args).await
        }
    }
}

/// Runs one service until Ctrl-C or SIGTERM.
async fn serve<DB: SagaDb>(
    service: Service,
    pool: sqlx::Pool<DB>,
    broker: Broker,
    settings: Settings,
    args: ServiceArgs,
) -> Result<()> {
    service::migrate(&pool, service).await?;
    let publisher = broker.publisher().await?;
    for topic in settings.topics() {
        publisher
            .ensure_destination(&topic)
            .await
            .map_err(eventbus::Error::from)?;
    }
    let (trigger, shutdown) = Shutdown::new();
    let mut tasks = tokio::task::JoinSet::new();
    // Subscribed (its queues bound) before anything is relayed or served.
    let consumer = service::consumer(service, pool.clone(), &broker, &settings).await?;
    {
        let stop = shutdown.clone();
        tasks.spawn(async move { service::consume(consumer, stop).await.map(|_| ()) });
    }
    {
        let (pool, settings, stop) = (pool.clone(), settings.clone(), shutdown.clone());
        tasks.spawn(async move {
            service::background(service, pool, &settings, stop).await;
            Ok(())
        });
    }
    if args.relay {
        let relay = service::relay(service, pool.clone(), publisher, &settings)?;
        let stop = shutdown.clone();
        tasks.spawn(async move { Ok(relay.run(stop.signalled()).await?) });
    }
    if service == Service::Order {
        let api = std::sync::Arc::new(OrderService::new(pool.clone(), settings.payment_timeout));
        let listener = tokio::net::TcpListener::bind(args.http)
            .await
            .map_err(|e| Error::Usage(format!("cannot listen on {}: {e}", args.http)))?;
        eprintln!("order API on http://{}", args.http);
        let stop = shutdown.clone();
        tasks.spawn(async move {
            axum::serve(listener, api.router())
                .with_graceful_shutdown(stop.signalled())
                .await
                .map_err(|e| Error::Http(e.to_string()))
        });
    }
    eprintln!(
        "{} service running on {}; Ctrl-C to stop",
        service.name(),
        broker.describe()
    );
    wait_for_signal().await;
    trigger.trigger();
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(Err(e)) => eprintln!("error: {e}"),
            Err(e) => eprintln!("error: a task failed: {e}"),
            Ok(Ok(())) => {}
        }
    }
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn run_check(args: ConnectArgs) -> Result<bool> {
    let url = args
        .database_url
        .ok_or_else(|| Error::Usage("--database-url is required for check".into()))?;
    let snapshot = match connect_all(&Storage::parse(&url)?).await? {
        AnyPools::Sqlite(pools) => pools.snapshot().await?,
        AnyPools::Postgres(pools) => pools.snapshot().await?,
        AnyPools::MySql(pools) => pools.snapshot().await?,
    };
    let checks = snapshot.checks();
    for check in &checks {
        println!("{check}");
    }
    Ok(checks.iter().all(|c| c.ok))
}
