//! The soak with faults: for a while, writer tasks publish steps (`seq`
//! rising per key) through the outbox while relays and consumers run as
//! processes, and faults are injected at random — a relay or a consumer
//! SIGKILLed, the broker unreachable (every connection cut, new ones refused,
//! through a proxy in front of RabbitMQ), the broker crashed and restarted
//! (its Erlang VM SIGKILLed, then booted again on the same data: it recovers
//! its durable queues), PostgreSQL crashed and restarted (`pg_ctl stop -m
//! immediate`, then started, so it recovers from its WAL). Then the
//! harness waits for the backlog to drain and checks, from the database:
//! every committed step applied (none lost), each exactly once (no duplicate
//! effects), and in `seq` order per key.
//!
//! ```text
//! soak run [--seconds 120] [--rate 150] [--writers 4] [--keys 200] [--fault-every-ms 4000]
//!          [--at-least-once]
//! ```
//!
//! PostgreSQL is a private cluster on a free port (the machine's PostgreSQL
//! binaries, run as the `postgres` user when started as root) and RabbitMQ a
//! private node on free ports (the machine's `rabbitmq-server`, see
//! [`eventbus_tests::rabbit_node`]), reached through the proxy, so crashing
//! them disturbs nothing else. It prints one line a script can check:
//!
//! ```text
//! soak: seconds=120 events=15234 faults=24 relay_kills=5 consumer_kills=6 broker_outages=5 database_crashes=5 broker_restarts=3 lost=0 duplicate_effects=0 order_violations=0
//! ```
//!
//! and exits non-zero unless `lost`, `duplicate_effects` and
//! `order_violations` are all zero. `soak consume …` is the consumer process
//! it starts.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use eventbus::consumer::{Consumer, Context, DeliveryMode, RetryPolicy};
use eventbus::outbox::Outbox;
use eventbus::transport::rabbitmq::{RabbitPublisher, RabbitSubscriber};
use eventbus::BoxError;
use eventbus_tests::postgres_cluster::PostgresCluster;
use eventbus_tests::rabbit_node::RabbitNode;
use eventbus_tests::rabbitmq::{url_with_host_port, TcpProxy};
use eventbus_tests::relay::Step;
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Postgres};
use tokio::process::{Child, Command};

type Result<T, E = BoxError> = std::result::Result<T, E>;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let outcome = match args.first().map(String::as_str) {
        Some("run") => match Options::parse(&args[1..]) {
            // Interrupted, `run` is dropped: the private PostgreSQL and
            // RabbitMQ and the child processes stop on drop.
            Ok(options) => tokio::select! {
                outcome = run(options) => outcome,
                _ = tokio::signal::ctrl_c() => Err("interrupted".into()),
            },
            Err(e) => Err(e),
        },
        Some("consume") if args.len() == 6 => {
            consume(&args[1], &args[2], &args[3], &args[4], &args[5]).await
        }
        _ => Err(
            "usage: soak run [--seconds N] [--writers N] [--keys N] [--fault-every-ms N] \
                  [--at-least-once] | soak consume <database-url> <amqp-url> <group> <exchange> <mode>"
                .into(),
        ),
    };
    if let Err(e) = outcome {
        eprintln!("soak: error: {e}");
        std::process::exit(2);
    }
}

/// `soak run`'s settings.
#[derive(Debug, Clone)]
struct Options {
    seconds: u64,
    /// Events per second, all writers together: what the consumers sustain
    /// with faults, so that the backlog drains in the end.
    rate: u64,
    /// The consumers without their inbox: a check that the soak notices the
    /// duplicates (and the reordering) that the inbox prevents.
    at_least_once: bool,
    writers: u64,
    keys: u64,
    fault_every: Duration,
}

impl Options {
    fn parse(args: &[String]) -> Result<Options> {
        let mut options = Options {
            seconds: 120,
            rate: 150,
            at_least_once: false,
            writers: 4,
            keys: 200,
            fault_every: Duration::from_secs(4),
        };
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            if flag == "--at-least-once" {
                options.at_least_once = true;
                continue;
            }
            let value: u64 = it
                .next()
                .ok_or_else(|| format!("{flag} needs a value"))?
                .parse()
                .map_err(|e| format!("{flag}: {e}"))?;
            match flag.as_str() {
                "--seconds" => options.seconds = value,
                "--rate" => options.rate = value.max(1),
                "--writers" => options.writers = value.max(1),
                "--keys" => options.keys = value.max(1),
                "--fault-every-ms" => options.fault_every = Duration::from_millis(value.max(100)),
                other => return Err(format!("unknown flag {other}").into()),
            }
        }
        Ok(options)
    }
}

// ---------------------------------------------------------------- the driver

/// A fault the driver injects.
#[derive(Debug, Clone, Copy)]
enum Fault {
    RelayKill,
    ConsumerKill,
    BrokerOutage,
    DatabaseCrash,
    BrokerRestart,
}

/// How often each fault is chosen, relative to the others. A broker restart
/// keeps RabbitMQ away for the 5 to 15 s a node takes to boot (and the
/// relays' back-off a little longer), so it comes half as often as each of
/// the others: chosen as often, restarts and cut-offs together would keep the
/// broker away for about a third of the run, and the backlog would take long
/// to drain.
const FAULT_WEIGHTS: [(Fault, u64); 5] = [
    (Fault::RelayKill, 2),
    (Fault::ConsumerKill, 2),
    (Fault::BrokerOutage, 2),
    (Fault::DatabaseCrash, 2),
    (Fault::BrokerRestart, 1),
];

impl Fault {
    fn pick(rng: &mut Lcg) -> Fault {
        let total: u64 = FAULT_WEIGHTS.iter().map(|(_, w)| w).sum();
        let mut roll = rng.below(total);
        for (fault, weight) in FAULT_WEIGHTS {
            if roll < weight {
                return fault;
            }
            roll -= weight;
        }
        Fault::RelayKill
    }
}

/// Counts of what was injected.
#[derive(Debug, Default)]
struct Faults {
    relay_kills: u64,
    consumer_kills: u64,
    broker_outages: u64,
    database_crashes: u64,
    broker_restarts: u64,
    /// How long the restarted node took to accept connections, in all and at most.
    restart_time: Duration,
    longest_restart: Duration,
}

impl Faults {
    fn total(&self) -> u64 {
        self.relay_kills
            + self.consumer_kills
            + self.broker_outages
            + self.database_crashes
            + self.broker_restarts
    }
}

async fn run(options: Options) -> Result<()> {
    let began = Instant::now();
    // Both take seconds to start: side by side.
    let (rabbit, postgres) =
        tokio::join!(RabbitNode::start("eventbus-soak"), PostgresCluster::start());
    let (mut rabbit, postgres) = (rabbit?, postgres?);
    let amqp = rabbit.url();
    let db = postgres.url();
    let pool = connect(&db).await?;
    eventbus::migrate::migrate(&pool).await?;
    for ddl in [
        // What writers committed: the ground truth of what must arrive.
        "CREATE TABLE ledger (key text NOT NULL, seq bigint NOT NULL, PRIMARY KEY (key, seq))",
        // One row per handling, deliberately without a unique key: a
        // duplicate effect must be countable, not prevented here.
        "CREATE TABLE effects (key text NOT NULL, seq bigint NOT NULL)",
        "CREATE INDEX ON effects (key, seq)",
        "CREATE TABLE order_violations (key text NOT NULL, seq bigint NOT NULL, previous bigint)",
    ] {
        sqlx::query(ddl).execute(&pool).await?;
    }

    let proxy = TcpProxy::start(&rabbit.addr()).await;
    let proxied = url_with_host_port(&amqp, &proxy.addr().to_string());
    let run_id = eventbus_tests::unique_name("soak");
    let prefix = format!("{run_id}.");
    let exchange = format!("{prefix}{}", <Step as eventbus::Event>::DESTINATION);
    let group = format!("{run_id}-consumer");
    let relay_bin = sibling("outbox-relay")?;
    let self_bin = std::env::current_exe()?;

    let mut relays: Vec<Supervised> = (0..2)
        .map(|i| {
            Supervised::new(format!("relay-{i}"), {
                let (bin, db, broker, prefix) = (
                    relay_bin.clone(),
                    db.clone(),
                    proxied.clone(),
                    prefix.clone(),
                );
                move || {
                    let mut cmd = Command::new(&bin);
                    cmd.args(["run", "--database-url", &db, "--broker", &broker])
                        .args(["--destination-prefix", &prefix, "--http", "127.0.0.1:0"])
                        .args(["--lease-ttl-ms", "2000", "--poll-interval-ms", "200"]);
                    cmd
                }
            })
        })
        .collect();
    declare_exchange(&amqp, &exchange).await?;
    let mode = if options.at_least_once {
        "at-least-once"
    } else {
        "effectively-once"
    };
    let mut consumers: Vec<Supervised> = (0..2)
        .map(|i| {
            Supervised::new(format!("consumer-{i}"), {
                let (bin, db, broker, group, exchange) = (
                    self_bin.clone(),
                    db.clone(),
                    proxied.clone(),
                    group.clone(),
                    exchange.clone(),
                );
                move || {
                    let mut cmd = Command::new(&bin);
                    cmd.args(["consume", &db, &broker, &group, &exchange, mode]);
                    cmd
                }
            })
        })
        .collect();

    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..options.writers)
        .map(|w| {
            let keys: Vec<String> = (0..options.keys)
                .filter(|k| k % options.writers == w)
                .map(|k| format!("{run_id}-k{k}"))
                .collect();
            let per_writer = options.rate as f64 / options.writers as f64;
            tokio::spawn(write(db.clone(), keys, per_writer, stop.clone()))
        })
        .collect();

    // Consumers first: until their queue is bound, what the relays publish is
    // unroutable, refused and, after a few attempts, parked.
    for s in &mut consumers {
        s.ensure();
    }
    wait_subscribed(&amqp, &group, Duration::from_secs(60)).await?;

    let started = Instant::now();
    let mut faults = Faults::default();
    let mut rng = Lcg::seeded();
    while started.elapsed() < Duration::from_secs(options.seconds) {
        for s in relays.iter_mut().chain(consumers.iter_mut()) {
            s.ensure();
        }
        tokio::time::sleep(options.fault_every.mul_f64(0.5 + rng.unit())).await;
        let mut fault = Fault::pick(&mut rng);
        // Every run restarts the broker at least once: by chance alone,
        // about one two-minute run in ten would not.
        if faults.broker_restarts == 0
            && started.elapsed() > Duration::from_secs(options.seconds) / 2
        {
            fault = Fault::BrokerRestart;
        }
        match fault {
            Fault::RelayKill => {
                relays[rng.below(2) as usize].kill().await;
                faults.relay_kills += 1;
            }
            Fault::ConsumerKill => {
                consumers[rng.below(2) as usize].kill().await;
                faults.consumer_kills += 1;
            }
            Fault::BrokerOutage => {
                proxy.refuse();
                proxy.cut().await;
                tokio::time::sleep(Duration::from_millis(1000 + 2000 * rng.below(2))).await;
                proxy.accept();
                faults.broker_outages += 1;
            }
            Fault::DatabaseCrash => {
                postgres.crash_and_restart().await?;
                faults.database_crashes += 1;
            }
            Fault::BrokerRestart => {
                // The proxy stays: its connections end with the node, and
                // new ones fail until the node listens again.
                let took = rabbit.crash_and_restart().await?;
                faults.broker_restarts += 1;
                faults.restart_time += took;
                faults.longest_restart = faults.longest_restart.max(took);
            }
        }
    }
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.await??;
    }
    // Faults stop; everything committed must now arrive.
    for s in relays.iter_mut().chain(consumers.iter_mut()) {
        s.ensure();
    }
    let draining = Instant::now();
    let ledger = wait_drained(&pool, &mut relays, &mut consumers, Duration::from_secs(60)).await?;
    let drained = draining.elapsed();
    let lost: i64 = scalar(
        &pool,
        "SELECT count(*) FROM ledger l WHERE NOT EXISTS \
         (SELECT 1 FROM effects e WHERE e.key = l.key AND e.seq = l.seq)",
    )
    .await?;
    let duplicates: i64 = scalar(
        &pool,
        "SELECT coalesce(sum(n - 1), 0)::bigint FROM \
         (SELECT count(*) AS n FROM effects GROUP BY key, seq HAVING count(*) > 1) d",
    )
    .await?;
    let violations: i64 = scalar(&pool, "SELECT count(*) FROM order_violations").await?;
    for s in relays.iter_mut().chain(consumers.iter_mut()) {
        s.kill().await;
    }
    // The node stops, and its directory goes, when `rabbit` is dropped.
    // Where the time went, for the CI budget (not part of the summary line).
    eprintln!(
        "soak: set-up {:.1} s, faults {:.1} s, drain {:.1} s; a restarted broker took \
         {:.1} s on average to accept connections (at most {:.1} s)",
        (started - began).as_secs_f64(),
        (draining - started).as_secs_f64(),
        drained.as_secs_f64(),
        faults.restart_time.as_secs_f64() / faults.broker_restarts.max(1) as f64,
        faults.longest_restart.as_secs_f64(),
    );
    println!(
        "soak: seconds={} events={ledger} faults={} relay_kills={} consumer_kills={} \
         broker_outages={} database_crashes={} broker_restarts={} lost={lost} \
         duplicate_effects={duplicates} order_violations={violations}",
        options.seconds,
        faults.total(),
        faults.relay_kills,
        faults.consumer_kills,
        faults.broker_outages,
        faults.database_crashes,
        faults.broker_restarts,
    );
    if lost + duplicates + violations > 0 || ledger == 0 {
        return Err("the soak found lost, duplicate or out-of-order events (or wrote none)".into());
    }
    Ok(())
}

/// Publishes steps for `keys` (this writer's own, so `seq` order per key is
/// commit order) in transactions of 1 to 10 events, recording each in the
/// ledger in the same transaction, until `stop`. A failed transaction is
/// retried; after a commit whose outcome is unknown (the connection broke),
/// the ledger says whether it happened.
async fn write(
    db: String,
    keys: Vec<String>,
    per_second: f64,
    stop: Arc<AtomicBool>,
) -> Result<()> {
    let outbox = Outbox::new();
    let mut next = vec![0_u64; keys.len()];
    let mut rng = Lcg::seeded();
    let mut pool = None;
    loop {
        if stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        let pool = match &pool {
            Some(p) => p,
            None => match connect(&db).await {
                Ok(p) => pool.insert(p),
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            },
        };
        let size = 1 + rng.below(10) as usize;
        let batch: Vec<(usize, Step)> = (0..size)
            .map(|_| {
                let k = rng.below(keys.len() as u64) as usize;
                (
                    k,
                    Step {
                        key: keys[k].clone(),
                        seq: 0,
                        pad: String::new(),
                    },
                )
            })
            .collect();
        // Number the steps in batch order, from each key's next seq.
        let mut seqs = next.clone();
        let batch: Vec<(usize, Step)> = batch
            .into_iter()
            .map(|(k, mut step)| {
                step.seq = seqs[k];
                seqs[k] += 1;
                (k, step)
            })
            .collect();
        match commit(pool, &outbox, &batch).await {
            Ok(()) => {}
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                // Did it commit before the connection broke?
                let (_, first) = &batch[0];
                match sqlx::query_scalar::<_, i64>(
                    "SELECT count(*) FROM ledger WHERE key = $1 AND seq = $2",
                )
                .bind(&first.key)
                .bind(i64::try_from(first.seq)?)
                .fetch_one(pool)
                .await
                {
                    Ok(1) => {}
                    // Not committed, or the database is still away: write
                    // the same steps again.
                    _ => continue,
                }
            }
        }
        next = seqs;
        tokio::time::sleep(Duration::from_secs_f64(size as f64 / per_second)).await;
    }
}

async fn commit(pool: &PgPool, outbox: &Outbox, batch: &[(usize, Step)]) -> Result<()> {
    let mut tx = pool.begin().await?;
    for (_, step) in batch {
        outbox.publish(&mut tx, step).await?;
        sqlx::query("INSERT INTO ledger (key, seq) VALUES ($1, $2)")
            .bind(&step.key)
            .bind(i64::try_from(step.seq)?)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Waits until every ledger row has an effect (restarting processes that
/// died), for as long as the effects keep growing: it gives up after
/// `stall` without progress. Returns the number of ledger rows.
async fn wait_drained(
    pool: &PgPool,
    relays: &mut [Supervised],
    consumers: &mut [Supervised],
    stall: Duration,
) -> Result<i64> {
    let mut last = (-1, Instant::now());
    loop {
        for s in relays.iter_mut().chain(consumers.iter_mut()) {
            s.ensure();
        }
        let ledger: i64 = scalar(pool, "SELECT count(*) FROM ledger").await?;
        let applied: i64 = scalar(
            pool,
            "SELECT count(*) FROM (SELECT DISTINCT key, seq FROM effects) e",
        )
        .await?;
        if applied >= ledger {
            return Ok(ledger);
        }
        if applied > last.0 {
            last = (applied, Instant::now());
        } else if last.1.elapsed() > stall {
            eprintln!(
                "soak: no progress for {stall:?}: {applied} of {ledger} committed steps applied"
            );
            return Ok(ledger);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn scalar(pool: &PgPool, sql: &str) -> Result<i64> {
    Ok(sqlx::query_scalar(sql).fetch_one(pool).await?)
}

async fn connect(url: &str) -> Result<PgPool> {
    Ok(PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(5))
        .connect(url)
        .await?)
}

/// Declares `exchange` as the relay does (durable topic), so the consumers'
/// queue can bind to it before the first event is relayed.
async fn declare_exchange(amqp: &str, exchange: &str) -> Result<()> {
    use eventbus::transport::rabbitmq::lapin::options::ExchangeDeclareOptions;
    use eventbus::transport::rabbitmq::lapin::types::FieldTable;
    use eventbus::transport::rabbitmq::lapin::{Connection, ConnectionProperties, ExchangeKind};
    let connection = Connection::connect(amqp, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    channel
        .exchange_declare(
            exchange,
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    connection.close(0, "").await?;
    Ok(())
}

/// Waits until a consumer is subscribed to `group`'s queue (declared and
/// bound by then).
async fn wait_subscribed(amqp: &str, group: &str, timeout: Duration) -> Result<()> {
    use eventbus::transport::rabbitmq::lapin::options::QueueDeclareOptions;
    use eventbus::transport::rabbitmq::lapin::types::FieldTable;
    use eventbus::transport::rabbitmq::lapin::{Connection, ConnectionProperties};
    let connection = Connection::connect(amqp, ConnectionProperties::default()).await?;
    let deadline = Instant::now() + timeout;
    loop {
        // A missing queue closes the channel: a new one per look.
        let channel = connection.create_channel().await?;
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let queue = channel
            .queue_declare(group, passive, FieldTable::default())
            .await;
        if queue.is_ok_and(|q| q.consumer_count() > 0) {
            break;
        }
        let _ = channel.close(200, "").await;
        if Instant::now() > deadline {
            return Err(format!(
                "no consumer subscribed to queue {group} within {timeout:?} (see {})",
                std::env::temp_dir()
                    .join("eventbus-soak-consumer-0.log")
                    .display()
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Only a look: closing may race the broker closing a refused channel.
    let _ = connection.close(0, "").await;
    Ok(())
}

/// The binary `name` next to this one (same build profile).
fn sibling(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.with_file_name(name);
    if path.exists() {
        Ok(path)
    } else {
        Err(format!(
            "{} not found: build the workspace first (cargo build --workspace)",
            path.display()
        )
        .into())
    }
}

// ------------------------------------------------------------- the consumer

/// A consumer process: effectively once, RabbitMQ single active consumer
/// (so the standby takes over in order when the active one is killed),
/// retrying long enough to outlast a database restart.
async fn consume(db: &str, amqp: &str, group: &str, exchange: &str, mode: &str) -> Result<()> {
    let mode = match mode {
        "effectively-once" => DeliveryMode::EffectivelyOnce,
        "at-least-once" => DeliveryMode::AtLeastOnce,
        other => return Err(format!("unknown mode {other}").into()),
    };
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(Duration::from_secs(5))
        .connect(db)
        .await?;
    let subscriber = RabbitSubscriber::builder(amqp)
        .group(group)
        .prefetch(64)
        .single_active_consumer(true)
        .bind_all(exchange)
        .connect()
        .await?;
    let dead_letters: Arc<dyn eventbus::Publisher> =
        Arc::new(RabbitPublisher::connect(amqp).await?);
    let retry = RetryPolicy {
        delayed: 30,
        delayed_max: Duration::from_secs(2),
        ..RetryPolicy::default()
    };
    let consumer = Consumer::builder(group)
        .on(|ctx: Context<Postgres>, step: Step| async move { apply(&ctx, &step).await })
        .retry(retry)
        .mode(mode)
        .build(pool, Box::new(subscriber), dead_letters)?;
    consumer
        .run(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

/// The side effect: one `effects` row, and an order violation recorded when
/// `seq` does not follow the key's last applied step.
async fn apply(ctx: &Context<Postgres>, step: &Step) -> Result<()> {
    let seq = i64::try_from(step.seq)?;
    let mut tx = ctx.tx().await?;
    let previous: Option<i64> = sqlx::query_scalar("SELECT max(seq) FROM effects WHERE key = $1")
        .bind(&step.key)
        .fetch_one(&mut **tx)
        .await?;
    if previous.map_or(seq != 0, |p| seq != p + 1) {
        sqlx::query("INSERT INTO order_violations (key, seq, previous) VALUES ($1, $2, $3)")
            .bind(&step.key)
            .bind(seq)
            .bind(previous)
            .execute(&mut **tx)
            .await?;
    }
    sqlx::query("INSERT INTO effects (key, seq) VALUES ($1, $2)")
        .bind(&step.key)
        .bind(seq)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

// --------------------------------------------------------------- processes

/// A child process kept running: restarted by [`Supervised::ensure`] when it
/// is not running.
struct Supervised {
    name: String,
    command: Box<dyn Fn() -> Command + Send>,
    child: Option<Child>,
}

impl Supervised {
    fn new(name: String, command: impl Fn() -> Command + Send + 'static) -> Self {
        Supervised {
            name,
            command: Box::new(command),
            child: None,
        }
    }

    /// Starts the process unless it is running.
    fn ensure(&mut self) {
        if let Some(child) = &mut self.child {
            if matches!(child.try_wait(), Ok(None)) {
                return;
            }
        }
        let log = std::env::temp_dir().join(format!("eventbus-soak-{}.log", self.name));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log);
        let mut cmd = (self.command)();
        cmd.env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .kill_on_drop(true);
        if let Ok(log) = log {
            cmd.stderr(log);
        }
        self.child = cmd.spawn().ok();
    }

    /// SIGKILLs the process (no shutdown, no drain) and reaps it.
    async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }
}

// ------------------------------------------------------------------ random

/// A small deterministic generator (seeded from the clock): fault timing
/// needs no cryptographic randomness.
struct Lcg(u64);

impl Lcg {
    fn seeded() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        Lcg(nanos | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn unit(&mut self) -> f64 {
        self.below(1_000_000) as f64 / 1_000_000.0
    }
}
