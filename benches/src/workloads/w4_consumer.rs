//! W4, the consumer: a backlog of messages handled by the effectively-once
//! consumer (inbox row + handler writes in one transaction) against the same
//! consumer in at-least-once mode, doing the same handler work without an inbox,
//! and (Kafka) against a raw rdkafka consumer that only decodes the messages.

use std::sync::Arc;
use std::time::{Duration, Instant};

use eventbus::consumer::{Consumer, Context, DeliveryMode};
use eventbus::transport::kafka::{KafkaPublisher, KafkaSubscriber};
use eventbus::transport::rabbitmq::{RabbitPublisher, RabbitSubscriber};
use eventbus::transport::Subscriber;
use eventbus::{Event, Publisher};
use sqlx::Postgres;
use tokio::sync::oneshot;

use super::{Broker, Ctx};
use crate::cpu;
use crate::env::BenchDb;
use crate::error::{BenchError, Result};
use crate::event::{messages, ticks, Tick};
use crate::report::{Row, WorkloadReport};
use crate::stats::rate;

/// Kafka group timeouts that suit tansu.
const GROUP_TIMEOUT: Duration = Duration::from_secs(6);

/// Runs W4.
pub(crate) async fn run(ctx: &Ctx, report: &mut WorkloadReport) -> Result<()> {
    let n = ctx.options.w4_messages;
    report.title = "consumer: effectively-once (inbox) vs at-least-once, same handler".into();
    report
        .parameters
        .insert("messages_per_mode".into(), n.into());
    report.parameters.insert("max_in_flight".into(), 64.into());
    for &broker in &ctx.options.brokers {
        let db = BenchDb::migrated(
            &ctx.services,
            &ctx.run_id,
            &format!("w4_{}", broker.name()),
            12,
        )
        .await?;
        sqlx::query(
            "CREATE TABLE effects (id bigserial PRIMARY KEY, key uuid NOT NULL, \
             pad_bytes int NOT NULL, handled_at timestamptz NOT NULL DEFAULT now())",
        )
        .execute(&db.pool)
        .await?;
        // Effectively once (group commit), at least once, effectively once
        // without group commit.
        let mut rates = [0.0f64; 3];
        let mut costs = [Cost::default(); 3];
        let mut raw = 0.0f64;
        // Alternate the sides (ABBA, the raw reader in the middle) to spread
        // the machine's drift.
        let mut order = vec![
            Side::Eo,
            Side::EoAlone,
            Side::Alo,
            Side::Alo,
            Side::EoAlone,
            Side::Eo,
        ];
        if broker == Broker::Kafka {
            order.splice(3..3, [Side::Raw, Side::Raw]);
        }
        for (round, side) in order.into_iter().enumerate() {
            let (mode, grouped, slot) = match side {
                Side::Eo => (DeliveryMode::EffectivelyOnce, true, 0),
                Side::Alo => (DeliveryMode::AtLeastOnce, true, 1),
                Side::EoAlone => (DeliveryMode::EffectivelyOnce, false, 2),
                Side::Raw => {
                    raw += raw_kafka(ctx, n / 2, round).await? / 2.0;
                    continue;
                }
            };
            let (r, cost) = one_mode(ctx, &db, broker, (mode, grouped), n / 2, round).await?;
            rates[slot] += r / 2.0;
            costs[slot].add_half(&cost);
        }
        let b = broker.name();
        ctx.progress.log(format!(
            "W4 {b}: effectively-once {:.0}/s, at-least-once {:.0}/s, effectively-once without group commit {:.0}/s{}",
            rates[0],
            rates[1],
            rates[2],
            if raw > 0.0 {
                format!(", raw consumer {raw:.0}/s")
            } else {
                String::new()
            }
        ));
        report.rows.push(Row::throughput(
            format!("{b}: consumer"),
            rates[0],
            "at-least-once, no inbox",
            rates[1],
            Some(0.9),
        ));
        report.rows.push(Row::throughput(
            format!("{b}: consumer vs no group commit"),
            rates[0],
            "effectively-once, a transaction per message",
            rates[2],
            None,
        ));
        for (cost, side) in costs.iter().zip([
            "effectively-once (group commit)",
            "at-least-once",
            "effectively-once without group commit",
        ]) {
            report
                .notes
                .push(format!("{b}, {side}: {}", cost.describe()));
        }
        if raw > 0.0 {
            report.rows.push(Row::throughput(
                format!("{b}: consumer vs raw"),
                rates[0],
                "raw rdkafka consumer, decode only, no database",
                raw,
                Some(0.25),
            ));
        }
    }
    report.notes.push(
        "Both modes run the same `Consumer` and handler (one insert into an `effects` table in the \
         message's transaction); effectively-once adds the inbox insert to that transaction, and groups \
         consecutive messages of a lane into one transaction (a savepoint each; group commit, opt-in, \
         here `group_commit(64, 2 ms)`), which it is also measured without. The rate is \
         measured from the first handled message to the last, so joining the group is not counted; each \
         side runs twice on half the messages, in the order EO, EO without group commit, ALO, ALO, EO \
         without group commit, EO, and the rates are averaged. \
         On Kafka a raw rdkafka consumer (a group of its own, from the earliest offset, no offset \
         commits, no database) reads and decodes (`envelope_from_message`, then the JSON payload) the same number of \
         messages twice between the two ALO runs."
            .into(),
    );
    if ctx.options.brokers.contains(&Broker::Kafka) {
        report.notes.push(
            "Kafka messages are produced one per record batch: tansu 0.6 skips the rest of a batch when \
             a fetch starts inside it (as after a pause/resume), which would lose messages."
                .into(),
        );
    }
    Ok(())
}

/// What one message cost each party of a run, averaged over its two runs.
#[derive(Debug, Clone, Copy, Default)]
struct Cost {
    /// CPU µs per message in the benchmark's process (the consumer).
    consumer_us: f64,
    /// CPU µs per message in PostgreSQL.
    postgres_us: f64,
    /// CPU µs per message in the broker.
    broker_us: f64,
    /// Transactions committed per message.
    commits: f64,
    /// Rows inserted, updated or deleted per message, every table.
    row_writes: f64,
}

impl Cost {
    fn add_half(&mut self, other: &Self) {
        self.consumer_us += other.consumer_us / 2.0;
        self.postgres_us += other.postgres_us / 2.0;
        self.broker_us += other.broker_us / 2.0;
        self.commits += other.commits / 2.0;
        self.row_writes += other.row_writes / 2.0;
    }

    fn describe(&self) -> String {
        format!(
            "per message {:.0} µs of CPU in the consumer, {:.0} µs in PostgreSQL, {:.0} µs in the \
             broker; {:.2} transactions (an autocommit statement is one) and {:.2} row writes in the database (`pg_stat_database`, \
             `pg_stat_user_tables`; CPU from `/proc`)",
            self.consumer_us, self.postgres_us, self.broker_us, self.commits, self.row_writes
        )
    }
}

/// The database's counters of committed transactions and written rows.
async fn db_counters(db: &BenchDb) -> Result<(f64, f64)> {
    // Backends report their counters about once a second when idle: wait
    // for the last ones of the consumer's pool.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let (commits, writes): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()), \
                (SELECT COALESCE(sum(n_tup_ins + n_tup_upd + n_tup_del), 0)::bigint FROM pg_stat_user_tables)",
    )
    .fetch_one(&db.pool)
    .await?;
    Ok((commits as f64, writes as f64))
}

/// One side of the comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    /// The effectively-once consumer.
    Eo,
    /// The at-least-once consumer.
    Alo,
    /// The effectively-once consumer without group commit.
    EoAlone,
    /// The raw rdkafka reader (Kafka only).
    Raw,
}

/// Reads and decodes `n` pre-published messages with a plain rdkafka
/// consumer, no database; returns messages per second, timed as
/// [`one_mode`] times the consumer (first message to last).
async fn raw_kafka(ctx: &Ctx, n: usize, round: usize) -> Result<f64> {
    use eventbus::transport::kafka::{envelope_from_message, rdkafka};
    use futures::StreamExt;
    use rdkafka::consumer::{Consumer as _, StreamConsumer};

    let label = format!("kafka_raw_{round}");
    let destination = format!("bench_{}_w4_{label}_{}", ctx.run_id, Tick::DESTINATION);
    Broker::Kafka.check(&ctx.services).await?;
    let publisher = KafkaPublisher::builder(&ctx.services.kafka_brokers)
        .set("batch.num.messages", "1")
        .build()?;
    publisher.ensure_destination(&destination).await?;
    let events = ticks(n);
    let msgs = messages(&events, &destination)?;
    let bar = ctx.progress.bar(format!("W4 {label} publish"), n as u64);
    for chunk in msgs.chunks(1_000) {
        for result in publisher.publish_batch(chunk).await {
            result?;
        }
        bar.inc(chunk.len() as u64);
    }
    ctx.progress.done(&bar);
    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &ctx.services.kafka_brokers)
        .set("group.id", format!("bench_{}_w4_{label}", ctx.run_id))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", GROUP_TIMEOUT.as_millis().to_string())
        .set("fetch.wait.max.ms", crate::raw::FETCH_WAIT_MS)
        .create()
        .map_err(|e| BenchError::Broker(format!("cannot create the raw consumer: {e}")))?;
    consumer
        .subscribe(&[destination.as_str()])
        .map_err(|e| BenchError::Broker(format!("cannot subscribe to {destination}: {e}")))?;
    let bar = ctx.progress.bar(format!("W4 {label} consume"), n as u64);
    let timeout = Duration::from_secs(120 + n as u64 / 200);
    let mut stream = consumer.stream();
    let mut first: Option<Instant> = None;
    let mut read = 0usize;
    let read_all = async {
        while read < n {
            let Some(message) = stream.next().await else {
                break;
            };
            let message = message.map_err(|e| BenchError::Broker(format!("raw consumer: {e}")))?;
            let envelope = envelope_from_message(&message)
                .map_err(|e| BenchError::Broker(format!("not a CloudEvent: {e}")))?;
            let _tick: Tick = serde_json::from_slice(&envelope.data).map_err(BenchError::Json)?;
            first.get_or_insert_with(Instant::now);
            read += 1;
            if read.is_multiple_of(1_000) {
                bar.set_position(read as u64);
            }
        }
        Ok::<Instant, BenchError>(Instant::now())
    };
    let last = tokio::time::timeout(timeout, read_all)
        .await
        .map_err(|_| BenchError::Timeout {
            what: format!("W4 {label}: raw consumer"),
            after: timeout,
        })??;
    ctx.progress.done(&bar);
    if read < n {
        return Err(BenchError::Broker(format!(
            "W4 {label}: the raw consumer's stream ended after {read} of {n}"
        )));
    }
    let first = first.unwrap_or(last);
    Ok(rate(n.saturating_sub(1) as u64, last - first))
}

/// Handles `n` pre-published messages in `mode` (with group commit if
/// `grouped`); returns messages per second.
async fn one_mode(
    ctx: &Ctx,
    db: &BenchDb,
    broker: Broker,
    (mode, grouped): (DeliveryMode, bool),
    n: usize,
    round: usize,
) -> Result<(f64, Cost)> {
    let label = format!(
        "{}_{}_{round}",
        broker.name(),
        match (mode, grouped) {
            (DeliveryMode::EffectivelyOnce, true) => "eo",
            (DeliveryMode::EffectivelyOnce, false) => "eo1",
            _ => "alo",
        }
    );
    let destination = format!("bench_{}_w4_{label}_{}", ctx.run_id, Tick::DESTINATION);
    let group = format!("bench_{}_w4_{label}", ctx.run_id);
    broker.check(&ctx.services).await?;
    let (publisher, subscriber): (Arc<dyn Publisher>, Box<dyn Subscriber>) = match broker {
        Broker::Kafka => {
            let publisher = KafkaPublisher::builder(&ctx.services.kafka_brokers)
                .set("batch.num.messages", "1")
                .build()?;
            publisher.ensure_destination(&destination).await?;
            let subscriber = KafkaSubscriber::builder(&ctx.services.kafka_brokers)
                .group(&group)
                .topics([destination.clone()])
                .session_timeout(GROUP_TIMEOUT)
                .max_poll_interval(GROUP_TIMEOUT)
                .set("fetch.wait.max.ms", crate::raw::FETCH_WAIT_MS)
                .build()?;
            (Arc::new(publisher), Box::new(subscriber))
        }
        Broker::RabbitMq => {
            // The queue exists (and is bound) before anything is published.
            let subscriber = RabbitSubscriber::builder(&ctx.services.amqp_url)
                .group(&group)
                .bind_all(&destination)
                .connect()
                .await?;
            let publisher = RabbitPublisher::connect(&ctx.services.amqp_url).await?;
            (Arc::new(publisher), Box::new(subscriber))
        }
    };
    let events = ticks(n);
    let msgs = messages(&events, &destination)?;
    let bar = ctx.progress.bar(format!("W4 {label} publish"), n as u64);
    for chunk in msgs.chunks(1_000) {
        for result in publisher.publish_batch(chunk).await {
            result?;
        }
        bar.inc(chunk.len() as u64);
    }
    ctx.progress.done(&bar);

    let builder = Consumer::builder(&group).mode(mode);
    // Group commit is opt-in; the handler below writes through `ctx.tx()` only.
    let builder = if grouped {
        builder.group_commit(64, Duration::from_millis(2))
    } else {
        builder.no_group_commit()
    };
    let consumer = Arc::new(
        builder
            .on(|ctx: Context<Postgres>, tick: Tick| async move {
                let mut tx = ctx.tx().await?;
                sqlx::query("INSERT INTO effects (key, pad_bytes) VALUES ($1, $2)")
                    .bind(tick.key)
                    .bind(i32::try_from(tick.pad.len())?)
                    .execute(&mut **tx)
                    .await?;
                Ok(())
            })
            .build(db.pool.clone(), subscriber, Arc::clone(&publisher))?,
    );
    let counters_before = db_counters(db).await?;
    let (stop, stopped) = oneshot::channel::<()>();
    let running = Arc::clone(&consumer);
    let task = tokio::spawn(async move {
        running
            .run(async {
                let _ = stopped.await;
            })
            .await
    });
    let bar = ctx.progress.bar(format!("W4 {label} consume"), n as u64);
    let timeout = Duration::from_secs(120 + n as u64 / 200);
    let deadline = Instant::now() + timeout;
    let mut first: Option<(Instant, cpu::Sample)> = None;
    let outcome = loop {
        let handled = consumer.metrics().handled();
        bar.set_position(handled);
        if handled >= 1 && first.is_none() {
            first = Some((Instant::now(), cpu::Sample::now()));
        }
        if handled >= n as u64 {
            break Ok((Instant::now(), cpu::Sample::now()));
        }
        if Instant::now() > deadline {
            break Err(BenchError::Timeout {
                what: format!("W4 {label}: {handled} of {n} handled"),
                after: timeout,
            });
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    ctx.progress.done(&bar);
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
    if broker == Broker::RabbitMq {
        // The group's durable queue would outlive the run.
        crate::raw::rabbit_delete_queue(&ctx.services.amqp_url, &group).await?;
    }
    let last = outcome?;
    let first = first.unwrap_or(last);
    let (commits, writes) = db_counters(db).await?;
    let messages = n.saturating_sub(1) as u64;
    let cpu = last.1.micros_per(&first.1, messages);
    let cost = Cost {
        consumer_us: cpu.own,
        postgres_us: cpu.postgres,
        broker_us: cpu.broker,
        commits: (commits - counters_before.0) / n.max(1) as f64,
        row_writes: (writes - counters_before.1) / n.max(1) as f64,
    };
    Ok((rate(messages, last.0 - first.0), cost))
}
