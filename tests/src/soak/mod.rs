//! The soak with faults: for a while, writer tasks that share keys publish
//! the steps of aggregates (`seq` rising per key in commit order) through
//! the outbox while relays and consumers run as processes, and faults are
//! injected at random — a relay or a consumer SIGKILLed, the broker
//! unreachable (every connection cut, new ones refused, through a proxy in
//! front of RabbitMQ), the broker crashed and restarted (its Erlang VM
//! SIGKILLed, then booted again on the same data: it recovers its durable
//! queues), PostgreSQL crashed and restarted (`pg_ctl stop -m immediate`,
//! then started, so it recovers from its WAL). Then the harness waits for
//! the backlog to drain and checks, from the database: every committed step
//! applied (none lost), each exactly once (no duplicate effects), and per
//! key in commit order.
//!
//! ```text
//! soak run [--seconds 120] [--rate 150] [--writers 4] [--long-writers 2] [--keys 200]
//!          [--fault-every-ms 4000] [--no-faults] [--seed N] [--at-least-once]
//!          [--broken-relay drop|swap]
//! ```
//!
//! The writers (`writers.rs`) do what services do: each transaction locks
//! its aggregates' rows (`SELECT … FOR UPDATE` on a table holding each
//! key's next `seq`) before it publishes their next steps, so a key's `seq`
//! rises in the order its writes commit, whichever writer makes them; half
//! of them take their transaction id early (`SELECT pg_current_xact_id()`
//! or a write to an unrelated table) and pause before they lock; a few roll
//! back. Long-running writers keep a transaction on an unrelated table open
//! for up to 3 s now and then. The per-key order check is therefore "the
//! consumer applies a key's steps in the commit order of the aggregate's
//! writes".
//!
//! The negative controls show that the checker catches what it must:
//! `--at-least-once` runs the consumers without their inbox (duplicate
//! effects), `--broken-relay drop` and `--broken-relay swap` replace
//! `outbox-relay` by `soak relay …`, the library's relay publishing through
//! a wrapper that drops one message, or sends two of one key swapped, per
//! process (`broken_relay.rs`): lost and reordered steps.
//!
//! PostgreSQL is a private cluster on a free port (the machine's PostgreSQL
//! binaries, run as the `postgres` user when started as root) and RabbitMQ a
//! private node on free ports (the machine's `rabbitmq-server`, see
//! [`crate::rabbit_node`]), reached through the proxy, so crashing them
//! disturbs nothing else. It prints one line a script can check:
//!
//! ```text
//! soak: seconds=120 seed=1796570812810503630 relay=outbox-relay delivery=effectively-once events=16596 commits=3424 early_xid=1705 rollbacks=157 long_txs=117 faults=22 relay_kills=4 consumer_kills=2 broker_outages=8 database_crashes=7 broker_restarts=1 parked=0 sabotaged=0 lost=0 duplicate_effects=0 order_violations=0
//! ```
//!
//! and exits 1 if `lost`, `duplicate_effects` or `order_violations` is not
//! zero (or nothing was written), 2 if it could not run. `soak consume …`
//! is the consumer process it starts, `soak relay …` the broken relay.

mod broken_relay;
mod checker;
mod consumer;
mod faults;
mod writers;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use eventbus::BoxError;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use tokio::process::Command;

use crate::postgres_cluster::PostgresCluster;
use crate::rabbit_node::RabbitNode;
use crate::rabbitmq::{url_with_host_port, TcpProxy};
use crate::relay::Step;
use broken_relay::Breakage;
use checker::Findings;
use faults::{Fault, Faults, Lcg, Supervised};
use writers::WriterStats;

type Result<T, E = BoxError> = std::result::Result<T, E>;

const USAGE: &str = "usage: soak run [--seconds N] [--rate N] [--writers N] [--long-writers N] \
     [--keys N] [--fault-every-ms N] [--no-faults] [--seed N] [--at-least-once] [--broken-relay drop|swap] \
     | soak consume <database-url> <amqp-url> <group> <exchange> <mode> \
     | soak relay <database-url> <amqp-url> <prefix> drop|swap";

/// Runs the `soak` command line (`args` without the program name) and
/// returns the process's exit code: 0 when the history is clean, 1 when the
/// checker found lost, duplicate or reordered steps, 2 when it could not run.
pub async fn cli(args: Vec<String>) -> i32 {
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
            consumer::consume(&args[1], &args[2], &args[3], &args[4], &args[5])
                .await
                .map(|()| true)
        }
        Some("relay") if args.len() == 5 => match Breakage::parse(&args[4]) {
            Ok(b) => broken_relay::relay(&args[1], &args[2], &args[3], b)
                .await
                .map(|()| true),
            Err(e) => Err(e),
        },
        _ => Err(USAGE.into()),
    };
    match outcome {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(e) => {
            eprintln!("soak: error: {e}");
            2
        }
    }
}

/// `soak run`'s settings.
#[derive(Debug, Clone)]
struct Options {
    seconds: u64,
    /// Steps per second, all writers together: what the consumers sustain
    /// with faults, so that the backlog drains in the end.
    rate: u64,
    /// The consumers without their inbox: a check that the soak notices the
    /// duplicates that the inbox prevents.
    at_least_once: bool,
    /// Relays that break the promise on purpose, instead of `outbox-relay`.
    broken_relay: Option<Breakage>,
    writers: u64,
    long_writers: u64,
    keys: u64,
    fault_every: Duration,
    /// The workload alone: to tell a broken promise from a fault's doing.
    no_faults: bool,
    seed: u64,
}

impl Options {
    fn parse(args: &[String]) -> Result<Options> {
        let mut options = Options {
            seconds: 120,
            rate: 150,
            at_least_once: false,
            broken_relay: None,
            writers: 4,
            long_writers: 2,
            keys: 200,
            fault_every: Duration::from_secs(4),
            no_faults: false,
            seed: Lcg::clock_seed(),
        };
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            if flag == "--at-least-once" {
                options.at_least_once = true;
                continue;
            }
            if flag == "--no-faults" {
                options.no_faults = true;
                continue;
            }
            let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
            if flag == "--broken-relay" {
                options.broken_relay = Some(Breakage::parse(value)?);
                continue;
            }
            let value: u64 = value.parse().map_err(|e| format!("{flag}: {e}"))?;
            match flag.as_str() {
                "--seconds" => options.seconds = value,
                "--rate" => options.rate = value.max(1),
                "--writers" => options.writers = value.max(1),
                "--long-writers" => options.long_writers = value,
                "--keys" => options.keys = value.max(1),
                "--fault-every-ms" => options.fault_every = Duration::from_millis(value.max(100)),
                "--seed" => options.seed = value,
                other => return Err(format!("unknown flag {other}\n{USAGE}").into()),
            }
        }
        Ok(options)
    }
}

/// Runs the soak; `Ok(false)` when the checker found the history broken.
async fn run(options: Options) -> Result<bool> {
    let began = Instant::now();
    // Both take seconds to start: side by side.
    let (rabbit, postgres) =
        tokio::join!(RabbitNode::start("eventbus-soak"), PostgresCluster::start());
    let (mut rabbit, postgres) = (rabbit?, postgres?);
    let amqp = rabbit.url();
    let db = postgres.url();
    let pool = connect(&db, 4).await?;
    eventbus::migrate::migrate(&pool).await?;
    let run_id = crate::unique_name("soak");
    let keys: Arc<Vec<String>> = Arc::new(
        (0..options.keys)
            .map(|k| format!("{run_id}-k{k}"))
            .collect(),
    );
    writers::prepare(&pool, &keys).await?;
    for ddl in consumer::DDL.into_iter().chain([broken_relay::DDL]) {
        sqlx::query(ddl).execute(&pool).await?;
    }

    let proxy = TcpProxy::start(&rabbit.addr()).await;
    let proxied = url_with_host_port(&amqp, &proxy.addr().to_string());
    let prefix = format!("{run_id}.");
    let exchange = format!("{prefix}{}", <Step as eventbus::Event>::DESTINATION);
    let group = format!("{run_id}-consumer");
    let self_bin = std::env::current_exe()?;
    let relay_bin = match options.broken_relay {
        None => sibling("outbox-relay")?,
        Some(_) => self_bin.clone(),
    };

    let mut relays: Vec<Supervised> = (0..2)
        .map(|i| {
            let (bin, db, broker, prefix) = (
                relay_bin.clone(),
                db.clone(),
                proxied.clone(),
                prefix.clone(),
            );
            let broken = options.broken_relay;
            Supervised::new(format!("relay-{i}"), move || {
                let mut cmd = Command::new(&bin);
                match broken {
                    None => {
                        cmd.args(["run", "--database-url", &db, "--broker", &broker])
                            .args(["--destination-prefix", &prefix, "--http", "127.0.0.1:0"])
                            .args(["--lease-ttl-ms", "2000", "--poll-interval-ms", "200"]);
                    }
                    Some(b) => {
                        cmd.args(["relay", &db, &broker, &prefix, b.name()]);
                    }
                }
                cmd
            })
        })
        .collect();
    consumer::declare_exchange(&amqp, &exchange).await?;
    let mode = if options.at_least_once {
        "at-least-once"
    } else {
        "effectively-once"
    };
    let mut consumers: Vec<Supervised> = (0..2)
        .map(|i| {
            let (bin, db, broker, group, exchange) = (
                self_bin.clone(),
                db.clone(),
                proxied.clone(),
                group.clone(),
                exchange.clone(),
            );
            Supervised::new(format!("consumer-{i}"), move || {
                let mut cmd = Command::new(&bin);
                cmd.args(["consume", &db, &broker, &group, &exchange, mode]);
                cmd
            })
        })
        .collect();

    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(WriterStats::default());
    let per_writer = options.rate as f64 / options.writers as f64;
    let mut tasks: Vec<_> = (0..options.writers)
        .map(|w| {
            let rng = Lcg::fork(options.seed, w);
            let task = writers::aggregate_writer(
                db.clone(),
                Arc::clone(&keys),
                per_writer,
                rng,
                Arc::clone(&stats),
                Arc::clone(&stop),
            );
            tokio::spawn(task)
        })
        .collect();
    tasks.extend((0..options.long_writers).map(|l| {
        let rng = Lcg::fork(options.seed, 1000 + l);
        let task = writers::long_writer(db.clone(), rng, Arc::clone(&stats), Arc::clone(&stop));
        tokio::spawn(task)
    }));

    // Consumers first: until their queue is bound, what the relays publish is
    // unroutable, refused and, after a few attempts, parked.
    for s in &mut consumers {
        s.ensure();
    }
    consumer::wait_subscribed(&amqp, &group, Duration::from_secs(60)).await?;

    let started = Instant::now();
    let mut faults = Faults::default();
    let mut rng = Lcg::fork(options.seed, u64::MAX);
    while started.elapsed() < Duration::from_secs(options.seconds) {
        for s in relays.iter_mut().chain(consumers.iter_mut()) {
            s.ensure();
        }
        let left = Duration::from_secs(options.seconds).saturating_sub(started.elapsed());
        let pause = if options.no_faults {
            Duration::from_secs(1)
        } else {
            options.fault_every.mul_f64(0.5 + rng.unit())
        };
        tokio::time::sleep(pause.min(left)).await;
        if options.no_faults || pause > left {
            continue;
        }
        let mut fault = Fault::pick(&mut rng);
        // Every run restarts the broker at least once: by chance alone,
        // about one two-minute run in ten would not.
        if faults.broker_restarts == 0
            && started.elapsed() > Duration::from_secs(options.seconds) / 2
        {
            fault = Fault::BrokerRestart;
        }
        // The at-least-once control must see duplicates: a consumer killed
        // between its commit and its acknowledgement makes them, so a short
        // run gets one such kill early whatever the dice say.
        if options.at_least_once
            && faults.consumer_kills == 0
            && started.elapsed() > Duration::from_secs(options.seconds) / 4
        {
            fault = Fault::ConsumerKill;
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
    for t in tasks {
        t.await??;
    }
    // Faults stop; everything committed must now arrive.
    let draining = Instant::now();
    {
        let mut processes: Vec<&mut Supervised> =
            relays.iter_mut().chain(consumers.iter_mut()).collect();
        checker::wait_drained(&pool, &mut processes, Duration::from_secs(60)).await?;
    }
    let drained = draining.elapsed();
    let findings = checker::check(&pool).await?;
    let sabotaged = checker::scalar(&pool, "SELECT count(*) FROM sabotage").await?;
    let samples = checker::violation_samples(&pool, 5).await?;
    let history = checker::violation_history(&pool).await?;
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
    eprintln!(
        "soak: {} writer transactions ended by a fault (committed or not, as the ledger says)",
        stats.failed.load(Ordering::Relaxed)
    );
    if !samples.is_empty() {
        eprintln!("soak: order violations (key: step after step), first ones: {samples:?}");
        eprintln!("soak: the effects around the first one, as applied:");
        for line in &history {
            eprintln!("soak:   {line}");
        }
        eprintln!(
            "soak: the processes' logs are {}/eventbus-soak-*.log",
            std::env::temp_dir().display()
        );
    }
    println!(
        "{}",
        summary(&options, &stats, &faults, &findings, sabotaged)
    );
    if findings.failed() {
        eprintln!(
            "soak: the checker found lost, duplicate or out-of-order steps (or none written)"
        );
    }
    Ok(!findings.failed())
}

/// The one line a script checks.
fn summary(
    options: &Options,
    stats: &WriterStats,
    faults: &Faults,
    findings: &Findings,
    sabotaged: i64,
) -> String {
    let n = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    format!(
        "soak: seconds={} seed={} relay={} delivery={} events={} commits={} early_xid={} \
         rollbacks={} long_txs={} faults={} relay_kills={} consumer_kills={} broker_outages={} \
         database_crashes={} broker_restarts={} parked={} sabotaged={sabotaged} lost={} \
         duplicate_effects={} order_violations={}",
        options.seconds,
        options.seed,
        options.broken_relay.map_or("outbox-relay", Breakage::name),
        if options.at_least_once {
            "at-least-once"
        } else {
            "effectively-once"
        },
        findings.committed,
        n(&stats.commits),
        n(&stats.early_xid),
        n(&stats.rollbacks),
        n(&stats.long),
        faults.total(),
        faults.relay_kills,
        faults.consumer_kills,
        faults.broker_outages,
        faults.database_crashes,
        faults.broker_restarts,
        findings.parked,
        findings.lost,
        findings.duplicates,
        findings.order_violations,
    )
}

/// A pool of at most `max` connections to `url`.
async fn connect(url: &str, max: u32) -> Result<PgPool> {
    Ok(PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(Duration::from_secs(5))
        .connect(url)
        .await?)
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
