//! The six workloads and what they share: options, the run context,
//! brokers, filling an outbox, an in-process relay, a paced writer, waiting.
//!
//! | module | measures |
//! | --- | --- |
//! | `w1_write` | the write path: `Outbox::publish` vs hand-written SQL into the outbox table and into a plain table |
//! | `w2_drain` | draining a backlog with the `outbox-relay` process vs a raw producer and a database-only loop |
//! | `w3_latency` | steady-state commit→ack and commit→handler latency, NOTIFY vs polling, vs a dual write |
//! | `w4_consumer` | the effectively-once consumer vs the same consumer without an inbox |
//! | `w5_peer` | the published peer `outbox-core` + `outbox-postgres` + `outbox-kafka` on W2 and W3 |
//! | `w6_cost` | the relay's cost curve: claim time and drain rate against backlog, relay processes and payload size |

pub(crate) mod w1_write;
pub(crate) mod w2_drain;
pub(crate) mod w3_latency;
pub(crate) mod w4_consumer;
pub(crate) mod w5_peer;
pub(crate) mod w6_cost;

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use eventbus::relay::{Relay, RelayConfig, RelayStore};
use eventbus::transport::kafka::KafkaPublisher;
use eventbus::transport::rabbitmq::RabbitPublisher;
use eventbus::{Metadata, Outbox, Publisher};
use indicatif::ProgressBar;
use sqlx::PgPool;
use tokio::sync::oneshot;

use crate::env::Services;
use crate::error::{BenchError, Result};
use crate::event::Tick;
use crate::plot::Series;
use crate::progress::Progress;
use crate::report::LatencyRow;
use crate::stats::summarize;
use crate::timeline::Latencies;

/// Counts and durations of a run.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    /// Small counts for CI.
    pub(crate) quick: bool,
    /// W1: events per configuration (each side).
    pub(crate) w1_events: usize,
    /// W1: events per side of the one-event-transaction configurations.
    pub(crate) w1_single_events: usize,
    /// W2: pending events to drain.
    pub(crate) w2_events: usize,
    /// W3: target rates, events/s.
    pub(crate) w3_rates: Vec<u32>,
    /// W3: seconds per rate.
    pub(crate) w3_seconds: u64,
    /// W4: messages per consumer mode.
    pub(crate) w4_messages: usize,
    /// W5: pending events drained by each library.
    pub(crate) w5_events: usize,
    /// W5: seconds per rate of the latency part.
    pub(crate) w5_seconds: u64,
    /// Brokers for W2 and W4.
    pub(crate) brokers: Vec<Broker>,
    /// Brokers for W3.
    pub(crate) w3_brokers: Vec<Broker>,
    /// W6: sizes and counts of the cost curve.
    pub(crate) w6: W6Options,
}

/// Sizes and counts of W6, the cost curve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct W6Options {
    /// Backlog sizes (pending rows) of the first curve.
    pub(crate) backlogs: Vec<usize>,
    /// Timed claims per backlog size.
    pub(crate) claims: usize,
    /// Rows the relay drains from each backlog (at most the backlog).
    pub(crate) drain_rows: usize,
    /// Numbers of relay processes of the second curve.
    pub(crate) relays: Vec<usize>,
    /// The backlog they drain together.
    pub(crate) relay_backlog: usize,
    /// Payload sizes in bytes of the third curve.
    pub(crate) payloads: Vec<usize>,
    /// Rows drained per payload size.
    pub(crate) payload_rows: usize,
}

/// What every workload gets.
#[derive(Debug)]
pub(crate) struct Ctx {
    /// Where the services are.
    pub(crate) services: Services,
    /// Progress bars and log lines.
    pub(crate) progress: Progress,
    /// Counts and durations.
    pub(crate) options: Options,
    /// Unique to this run: names databases, topics, exchanges.
    pub(crate) run_id: String,
    /// Output directory.
    pub(crate) out: PathBuf,
    /// `--relay-bin`, if given.
    pub(crate) relay_bin: Option<PathBuf>,
}

/// A broker the relay can publish to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Broker {
    /// Kafka protocol (tansu here).
    Kafka,
    /// RabbitMQ (AMQP 0-9-1).
    RabbitMq,
}

impl Broker {
    /// Short name for labels and file names.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Broker::Kafka => "kafka",
            Broker::RabbitMq => "rabbitmq",
        }
    }

    /// The broker URL `outbox-relay --broker` takes.
    pub(crate) fn relay_url(self, services: &Services) -> String {
        match self {
            Broker::Kafka => format!("kafka://{}", services.kafka_brokers),
            Broker::RabbitMq => services.amqp_url.clone(),
        }
    }

    /// Fails with a clear message if the broker does not answer.
    pub(crate) async fn check(self, services: &Services) -> Result<()> {
        match self {
            Broker::Kafka => services.check_kafka().await,
            Broker::RabbitMq => services.check_rabbitmq().await,
        }
    }

    /// Our publisher for this broker.
    pub(crate) async fn publisher(self, services: &Services) -> Result<Arc<dyn Publisher>> {
        self.check(services).await?;
        Ok(match self {
            Broker::Kafka => Arc::new(KafkaPublisher::builder(&services.kafka_brokers).build()?),
            Broker::RabbitMq => Arc::new(RabbitPublisher::connect(&services.amqp_url).await?),
        })
    }
}

/// Writes `ticks` through the outbox in one transaction (statements of 1,000
/// events), so that they all become pending at the same instant: the commit.
pub(crate) async fn fill_outbox(pool: &PgPool, ticks: &[Tick], bar: &ProgressBar) -> Result<()> {
    let outbox = Outbox::new("urn:bench");
    let mut tx = pool.begin().await?;
    for chunk in ticks.chunks(1_000) {
        outbox
            .publish_all(&mut tx, chunk.iter(), &Metadata::default())
            .await?;
        bar.inc(chunk.len() as u64);
    }
    tx.commit().await?;
    Ok(())
}

/// Whether some relay holds every partition of the default outbox.
pub(crate) async fn partitions_held(pool: &PgPool) -> Result<bool> {
    let (held, all): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE owner IS NOT NULL AND lease_expires_at > now()), count(*) \
         FROM eventbus_outbox_partitions",
    )
    .fetch_one(pool)
    .await?;
    Ok(all > 0 && held == all)
}

/// Polls `progress` every `every` until it reaches `target`; returns when it
/// did. Fails after `timeout`.
pub(crate) async fn wait_for<F, Fut>(
    what: &str,
    target: u64,
    timeout: Duration,
    every: Duration,
    bar: Option<&ProgressBar>,
    mut progress: F,
) -> Result<Instant>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<u64>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let now = progress().await?;
        if let Some(bar) = bar {
            bar.set_position(now.min(target));
        }
        if now >= target {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            return Err(BenchError::Timeout {
                what: format!("{what} ({now} of {target})"),
                after: timeout,
            });
        }
        tokio::time::sleep(every).await;
    }
}

/// A relay running as a task of this process.
#[derive(Debug)]
pub(crate) struct InProcessRelay {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<eventbus::Result<()>>,
}

impl InProcessRelay {
    /// Starts a relay over `store`, publishing through `publisher`.
    pub(crate) fn start(
        store: Arc<dyn RelayStore>,
        publisher: Arc<dyn Publisher>,
        config: RelayConfig,
    ) -> Result<Self> {
        let relay = Relay::new(store, publisher, config)?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            relay
                .run(async {
                    let _ = stopped.await;
                })
                .await
        });
        Ok(InProcessRelay {
            stop: Some(stop),
            task,
        })
    }

    /// Waits until it holds every partition of the outbox in `pool`.
    pub(crate) async fn wait_ready(&self, pool: &PgPool) -> Result<()> {
        wait_for(
            "relay holding all partitions",
            1,
            Duration::from_secs(60),
            Duration::from_millis(50),
            None,
            || async { Ok(u64::from(partitions_held(pool).await?)) },
        )
        .await?;
        Ok(())
    }

    /// Stops it and waits (30 s at most).
    pub(crate) async fn stop(mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match tokio::time::timeout(Duration::from_secs(30), &mut self.task).await {
            Ok(joined) => Ok(joined??),
            Err(_) => {
                self.task.abort();
                Err(BenchError::Timeout {
                    what: "relay shutdown".into(),
                    after: Duration::from_secs(30),
                })
            }
        }
    }
}

/// Runs `write(i)` for i in 0..rate×seconds, the i-th starting at i/rate
/// seconds, on `writers` concurrent tasks. Returns how many were written.
pub(crate) async fn paced<F, Fut>(
    rate: u32,
    seconds: u64,
    writers: usize,
    bar: &ProgressBar,
    write: F,
) -> Result<u64>
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    let total = u64::from(rate) * seconds;
    let next = Arc::new(AtomicU64::new(0));
    let write = Arc::new(write);
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..writers.max(1) {
        let (next, write, bar) = (Arc::clone(&next), Arc::clone(&write), bar.clone());
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return Ok::<_, BenchError>(());
                }
                let at = start + Duration::from_secs_f64(i as f64 / f64::from(rate));
                tokio::time::sleep_until(at).await;
                write(i).await?;
                bar.inc(1);
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(total)
}

/// Latency rows and plot lines of one measured run.
pub(crate) fn latency_rows(
    case: &str,
    handled_path: &str,
    mut lat: Latencies,
    rows: &mut Vec<LatencyRow>,
    series: &mut Vec<Series>,
) -> (Option<f64>, Option<f64>) {
    let ack = summarize(&mut lat.ack, lat.ack_missing);
    let handled = summarize(&mut lat.handled, lat.handled_missing);
    let p99 = (ack.p99_ms, handled.p99_ms);
    if ack.count + ack.missing > 0 && !(ack.count == 0 && handled.count > 0) {
        series.push(Series {
            label: format!("{case}: commit→ack"),
            samples_ms: lat.ack,
            missing: lat.ack_missing,
        });
        rows.push(LatencyRow {
            case: case.to_owned(),
            path: "commit→ack".into(),
            summary: ack,
        });
    }
    series.push(Series {
        label: format!("{case}: {handled_path}"),
        samples_ms: lat.handled,
        missing: lat.handled_missing,
    });
    rows.push(LatencyRow {
        case: case.to_owned(),
        path: handled_path.to_owned(),
        summary: handled,
    });
    p99
}
