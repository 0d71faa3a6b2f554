//! The soak with faults: for a while, writer tasks publish steps (`seq`
//! rising per key) through the outbox while relays and consumers run as
//! processes, and faults are injected at random — a relay or a consumer
//! SIGKILLed, the broker unreachable (every connection cut, new ones refused,
//! through a proxy in front of RabbitMQ), PostgreSQL crashed and restarted
//! (`pg_ctl restart -m immediate`, so it recovers from its WAL). Then the
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
//! binaries, run as the `postgres` user when started as root), so crashing it
//! disturbs nothing else; RabbitMQ is the shared server (`AMQP_URL`), reached
//! through the proxy. It prints one line a script can check:
//!
//! ```text
//! soak: seconds=120 events=41234 faults=30 relay_kills=8 consumer_kills=7 broker_outages=8 database_crashes=7 lost=0 duplicate_effects=0 order_violations=0
//! ```
//!
//! and exits non-zero unless `lost`, `duplicate_effects` and
//! `order_violations` are all zero. `soak consume …` is the consumer process
//! it starts.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use eventbus::consumer::{Consumer, Context, DeliveryMode, RetryPolicy};
use eventbus::outbox::Outbox;
use eventbus::transport::rabbitmq::{RabbitPublisher, RabbitSubscriber};
use eventbus::BoxError;
use eventbus_tests::rabbitmq::{url_host_port, url_with_host_port, TcpProxy};
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
            Ok(options) => run(options).await,
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

/// Counts of what was injected.
#[derive(Debug, Default)]
struct Faults {
    relay_kills: u64,
    consumer_kills: u64,
    broker_outages: u64,
    database_crashes: u64,
}

async fn run(options: Options) -> Result<()> {
    let amqp = eventbus_tests::amqp_url().await;
    let postgres = PrivatePostgres::start().await?;
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

    let proxy = TcpProxy::start(&url_host_port(&amqp)).await;
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

    let started = Instant::now();
    let mut faults = Faults::default();
    let mut rng = Lcg::seeded();
    while started.elapsed() < Duration::from_secs(options.seconds) {
        for s in relays.iter_mut().chain(consumers.iter_mut()) {
            s.ensure();
        }
        tokio::time::sleep(options.fault_every.mul_f64(0.5 + rng.unit())).await;
        match rng.below(4) {
            0 => {
                relays[rng.below(2) as usize].kill().await;
                faults.relay_kills += 1;
            }
            1 => {
                consumers[rng.below(2) as usize].kill().await;
                faults.consumer_kills += 1;
            }
            2 => {
                proxy.refuse();
                proxy.cut().await;
                tokio::time::sleep(Duration::from_millis(1000 + 2000 * rng.below(2))).await;
                proxy.accept();
                faults.broker_outages += 1;
            }
            _ => {
                postgres.crash_and_restart().await?;
                faults.database_crashes += 1;
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
    let ledger = wait_drained(&pool, &mut relays, &mut consumers, Duration::from_secs(60)).await?;
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
    eventbus_tests::rabbitmq::delete_group(&group).await;
    println!(
        "soak: seconds={} events={ledger} faults={} relay_kills={} consumer_kills={} \
         broker_outages={} database_crashes={} lost={lost} duplicate_effects={duplicates} \
         order_violations={violations}",
        options.seconds,
        faults.relay_kills
            + faults.consumer_kills
            + faults.broker_outages
            + faults.database_crashes,
        faults.relay_kills,
        faults.consumer_kills,
        faults.broker_outages,
        faults.database_crashes,
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

// -------------------------------------------------------- private PostgreSQL

/// A PostgreSQL cluster of our own on a free port, to crash at will.
struct PrivatePostgres {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
}

impl PrivatePostgres {
    async fn start() -> Result<Self> {
        let bin = postgres_bin()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let dir = std::env::temp_dir().join(format!("eventbus-soak-pg-{port}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        as_postgres_owner(&dir).await?;
        let pg = PrivatePostgres { bin, dir, port };
        pg.pg(&[
            "initdb",
            "-D",
            &pg.data(),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
        ])
        .await?;
        pg.ctl(&["start"]).await?;
        Ok(pg)
    }

    fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops PostgreSQL as a crash would (no checkpoint, connections
    /// dropped), then starts it again: it recovers from its WAL.
    async fn crash_and_restart(&self) -> Result<()> {
        self.ctl(&["stop", "-m", "immediate"]).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        self.ctl(&["start"]).await
    }

    async fn ctl(&self, args: &[&str]) -> Result<()> {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=on \
             -c synchronous_commit=on -c max_connections=100",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("log").display().to_string();
        let data = self.data();
        let mut all = vec![
            "pg_ctl", "-D", &data, "-w", "-t", "60", "-l", &log, "-o", &options,
        ];
        all.extend_from_slice(args);
        self.pg(&all).await
    }

    /// Runs a PostgreSQL program, as the `postgres` user when we are root
    /// (PostgreSQL refuses to run as root).
    async fn pg(&self, args: &[&str]) -> Result<()> {
        let program = self.bin.join(args[0]);
        let mut cmd = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&program);
            c
        } else {
            Command::new(&program)
        };
        let out = cmd.args(&args[1..]).stdin(Stdio::null()).output().await?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            )
            .into())
        }
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let pg_ctl = self.bin.join("pg_ctl");
        let data = self.data();
        let mut cmd = if is_root() {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&pg_ctl);
            c
        } else {
            std::process::Command::new(&pg_ctl)
        };
        let _ = cmd.args(["-D", &data, "stop", "-m", "immediate"]).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The newest PostgreSQL server binaries on this machine.
fn postgres_bin() -> Result<PathBuf> {
    let root = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(root)
        .map_err(|_| "PostgreSQL server binaries not found under /usr/lib/postgresql: install postgresql (apt-get install postgresql)")?
        .filter_map(|e| e.ok())
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin)| bin.join("initdb").exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .ok_or_else(|| "no PostgreSQL with initdb under /usr/lib/postgresql".into())
}

fn is_root() -> bool {
    std::env::var("USER").is_ok_and(|u| u == "root")
        || std::process::Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// Gives `dir` to the `postgres` user when we are root.
async fn as_postgres_owner(dir: &Path) -> Result<()> {
    if is_root() {
        let status = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir)
            .status()
            .await?;
        if !status.success() {
            return Err(format!("chown postgres {} failed", dir.display()).into());
        }
    }
    Ok(())
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
