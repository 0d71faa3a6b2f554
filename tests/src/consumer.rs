//! What the consumer suites share, whatever the broker: the test event's
//! envelope, the `effects` table handlers write their side effects to, a
//! consumer running in a task, a subscriber that counts unsettled messages,
//! and scenarios written once and run on Kafka, RabbitMQ and SQS ([`Broker`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use eventbus::consumer::{dead_letter, BatchContext, Consumer, Context};
use eventbus::transport::kafka::envelope_from_message;
use eventbus::transport::rabbitmq::RabbitPublisher;
use eventbus::transport::{Received, Settle, Subscriber};
use eventbus::{BoxError, Envelope, Event, OutgoingMessage, Publisher};
use sqlx::{PgPool, Postgres};
use tokio::sync::oneshot;

use crate::relay::Step;
use crate::{kafka, rabbitmq, sqs, unique_name, TestDb};

// ------------------------------------------------------------ events, effects

/// The CloudEvent the outbox would make of `step`.
pub fn envelope(step: &Step) -> Envelope {
    let data = serde_json::to_vec(step).expect("a Step serializes");
    let mut e = Envelope::new("urn:test:consumer", Step::TYPE, data);
    e.partition_key = Some(step.key.clone());
    e.subject = Some(step.key.clone());
    e.dataschema = Some(Step::dataschema());
    e
}

/// Publishes `envelopes` to `destination` in batches of 1,000; panics unless
/// the broker acknowledges every one.
pub async fn publish<P: Publisher + ?Sized>(
    publisher: &P,
    destination: &str,
    envelopes: &[Envelope],
) {
    for chunk in envelopes.chunks(1_000) {
        let batch: Vec<OutgoingMessage> = chunk
            .iter()
            .map(|e| OutgoingMessage {
                destination: destination.to_owned(),
                envelope: e.clone(),
            })
            .collect();
        for (i, result) in publisher
            .publish_batch(&batch)
            .await
            .into_iter()
            .enumerate()
        {
            if let Err(e) = result {
                panic!(
                    "publishing {} to {destination} failed: {e}",
                    batch[i].envelope.id
                );
            }
        }
    }
}

/// Creates the `effects` table: one row per side effect of a handler, with
/// the consumer (`member`) that wrote it; `id` gives the order of writing.
pub async fn create_effects(pool: &PgPool) {
    sqlx::query(
        "CREATE TABLE effects (id bigserial PRIMARY KEY, member text NOT NULL DEFAULT '', \
         key text NOT NULL, seq bigint NOT NULL, event_id text NOT NULL)",
    )
    .execute(pool)
    .await
    .expect("create effects");
}

/// The side effect of handling a step: a row in the handler's transaction.
///
/// # Errors
///
/// The database's, or a `seq` beyond `i64`.
pub async fn record(ctx: &Context<Postgres>, member: &str, step: &Step) -> Result<(), BoxError> {
    let mut tx = ctx.tx().await?;
    sqlx::query("INSERT INTO effects (member, key, seq, event_id) VALUES ($1, $2, $3, $4)")
        .bind(member)
        .bind(&step.key)
        .bind(i64::try_from(step.seq)?)
        .bind(&ctx.envelope().id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// The side effects of a batch: one row per step, in the batch's order, all
/// written by one statement in the batch's transaction.
///
/// # Errors
///
/// The database's, or a `seq` beyond `i64`.
pub async fn record_batch(
    ctx: &BatchContext<Postgres>,
    member: &str,
    steps: &[Step],
) -> Result<(), BoxError> {
    let keys: Vec<&str> = steps.iter().map(|s| s.key.as_str()).collect();
    let seqs = steps
        .iter()
        .map(|s| i64::try_from(s.seq))
        .collect::<Result<Vec<i64>, _>>()?;
    let ids: Vec<&str> = ctx.envelopes().iter().map(|e| e.id.as_str()).collect();
    let mut tx = ctx.tx().await?;
    sqlx::query(
        "INSERT INTO effects (member, key, seq, event_id) \
         SELECT $1, k, s, e FROM UNNEST($2::text[], $3::bigint[], $4::text[]) \
         WITH ORDINALITY AS u(k, s, e, n) ORDER BY n",
    )
    .bind(member)
    .bind(&keys)
    .bind(&seqs)
    .bind(&ids)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Effects of distinct steps.
pub const DISTINCT_EFFECTS: &str = "SELECT count(*) FROM (SELECT DISTINCT key, seq FROM effects) d";
/// Effects in all.
pub const ALL_EFFECTS: &str = "SELECT count(*) FROM effects";
/// Steps with more than one effect.
pub const REPEATED_EFFECTS: &str =
    "SELECT count(*) FROM (SELECT key, seq FROM effects GROUP BY key, seq HAVING count(*) > 1) d";

/// The value of a `SELECT count(*)`-like query.
pub async fn scalar(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Waits until `sql` (a count) reaches `target`; panics with the last value
/// after `timeout`. Returns how long it took.
pub async fn wait_count(pool: &PgPool, sql: &str, target: i64, timeout: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let n = scalar(pool, sql).await;
        if n >= target {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < timeout,
            "`{sql}` reached {n} of {target} within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `done()` holds; panics with `what` after `timeout`. Returns
/// how long it took.
pub async fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < timeout, "{what}: not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    start.elapsed()
}

/// The steps of the `effects` rows, in the order they were written.
pub async fn effects_in_order(pool: &PgPool) -> Vec<Step> {
    let rows: Vec<(String, i64)> = sqlx::query_as("SELECT key, seq FROM effects ORDER BY id")
        .fetch_all(pool)
        .await
        .expect("read effects");
    rows.into_iter()
        .map(|(key, seq)| Step {
            key,
            seq: u64::try_from(seq).expect("seq is never negative"),
            pad: String::new(),
        })
        .collect()
}

// ------------------------------------------------------------ running consumers

/// A consumer running in a task of the test, on any database.
#[derive(Debug)]
pub struct Running<DB: sqlx::Database = Postgres> {
    /// The consumer, for its metrics.
    pub consumer: Arc<Consumer<DB>>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<eventbus::Result<()>>,
}

/// Runs `consumer` in a task until [`Running::stop`].
pub fn run<DB>(consumer: Consumer<DB>) -> Running<DB>
where
    DB: eventbus::inbox::InboxDatabase + eventbus::outbox::OutboxDatabase,
{
    let consumer = Arc::new(consumer);
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn({
        let consumer = Arc::clone(&consumer);
        async move {
            consumer
                .run(async {
                    let _ = stopped.await;
                })
                .await
        }
    });
    Running {
        consumer,
        stop: Some(stop),
        task,
    }
}

impl<DB: sqlx::Database> Running<DB> {
    /// Whether the consumer is still running.
    pub fn is_running(&self) -> bool {
        !self.task.is_finished()
    }

    /// Asks the consumer to stop and waits (up to 60 s) for it to leave
    /// cleanly; panics otherwise.
    pub async fn stop(mut self) -> Arc<Consumer<DB>> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(60), &mut self.task)
            .await
            .expect("consumer stops within 60 s")
            .expect("consumer task")
            .expect("consumer closed its subscription cleanly");
        self.consumer
    }
}

/// A current and a highest value.
#[derive(Debug, Default)]
pub struct Gauge {
    now: AtomicUsize,
    max: AtomicUsize,
}

impl Gauge {
    /// One more.
    pub fn up(&self) {
        let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(n, Ordering::SeqCst);
    }

    /// One less.
    pub fn down(&self) {
        self.now.fetch_sub(1, Ordering::SeqCst);
    }

    /// The current value.
    pub fn now(&self) -> usize {
        self.now.load(Ordering::SeqCst)
    }

    /// The highest value so far.
    pub fn max(&self) -> usize {
        self.max.load(Ordering::SeqCst)
    }
}

/// A subscriber that counts the messages it handed out and has not seen
/// settled: the bound the consumer promises.
#[derive(Debug)]
pub struct Counting {
    /// The real subscriber.
    pub inner: Box<dyn Subscriber>,
    /// Messages handed out and not settled.
    pub unsettled: Arc<Gauge>,
}

#[derive(Debug)]
struct CountedSettle {
    inner: Box<dyn Settle>,
    unsettled: Arc<Gauge>,
}

// The traits are `#[async_trait]`; this crate implements them by hand, as the
// macro would, to need no further dependency.
type Boxed<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

impl Subscriber for Counting {
    fn next<'life0, 'async_trait>(
        &'life0 mut self,
    ) -> Boxed<'async_trait, Option<eventbus::Result<Received>>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move {
            let mut message = match self.inner.next().await? {
                Ok(m) => m,
                Err(e) => return Some(Err(e)),
            };
            self.unsettled.up();
            let inner = std::mem::replace(&mut message.settle, Box::new(Nothing));
            message.settle = Box::new(CountedSettle {
                inner,
                unsettled: Arc::clone(&self.unsettled),
            });
            Some(Ok(message))
        })
    }

    fn close<'life0, 'async_trait>(&'life0 mut self) -> Boxed<'async_trait, eventbus::Result<()>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move { self.inner.close().await })
    }
}

// Counted as settled once the settlement is on its way: the inner handle frees
// the subscriber's slot before it returns, and the broker may hand out the
// next message before this one's count would otherwise go down.
impl Settle for CountedSettle {
    fn ack<'async_trait>(self: Box<Self>) -> Boxed<'async_trait, eventbus::Result<()>>
    where
        Self: 'async_trait,
    {
        Box::pin(async move {
            self.unsettled.down();
            self.inner.ack().await
        })
    }

    fn ack_durably<'async_trait>(self: Box<Self>) -> Boxed<'async_trait, eventbus::Result<()>>
    where
        Self: 'async_trait,
    {
        Box::pin(async move {
            self.unsettled.down();
            self.inner.ack_durably().await
        })
    }

    fn release<'async_trait>(self: Box<Self>) -> Boxed<'async_trait, eventbus::Result<()>>
    where
        Self: 'async_trait,
    {
        Box::pin(async move {
            self.unsettled.down();
            self.inner.release().await
        })
    }
}

/// A placeholder while a settle handle is being wrapped.
#[derive(Debug)]
struct Nothing;

impl Settle for Nothing {
    fn ack<'async_trait>(self: Box<Self>) -> Boxed<'async_trait, eventbus::Result<()>>
    where
        Self: 'async_trait,
    {
        Box::pin(async { Ok(()) })
    }

    fn release<'async_trait>(self: Box<Self>) -> Boxed<'async_trait, eventbus::Result<()>>
    where
        Self: 'async_trait,
    {
        Box::pin(async { Ok(()) })
    }
}

// ------------------------------------------------------------ brokers

/// The broker a shared scenario runs on.
#[derive(Debug, Clone)]
pub enum Broker {
    /// A Kafka-protocol broker at these bootstrap servers.
    Kafka(String),
    /// RabbitMQ at this URL.
    RabbitMq(String),
    /// An SQS-compatible server at this endpoint, with FIFO queues (per-key
    /// order). A FIFO queue drops a copy of an event sent within five
    /// minutes, so the scenarios' copies are sent as re-drives
    /// ([`sqs::Redelivering`]): they reach the consumer as redeliveries do.
    Sqs(String),
}

/// Where to read the dead letters of a destination from; made before anything
/// is dead-lettered.
#[derive(Debug)]
pub enum DeadLetters {
    /// A Kafka dead-letter topic, read from the start without a group.
    Kafka {
        /// Bootstrap servers.
        brokers: String,
        /// The dead-letter topic.
        topic: String,
    },
    /// A queue bound to the dead-letter exchange.
    RabbitMq(Box<dyn Subscriber>),
    /// A subscriber of the dead-letter queue.
    Sqs(Box<dyn Subscriber>),
}

impl Broker {
    /// The Kafka-protocol broker of `KAFKA_BROKERS`.
    pub async fn kafka() -> Self {
        Broker::Kafka(crate::kafka_brokers().await)
    }

    /// The RabbitMQ of `AMQP_URL`.
    pub async fn rabbitmq() -> Self {
        Broker::RabbitMq(crate::amqp_url().await)
    }

    /// The SQS-compatible server of `SQS_ENDPOINT`.
    pub async fn sqs() -> Self {
        Broker::Sqs(crate::sqs_endpoint().await)
    }

    /// A fresh destination named after `tag` and a publisher for it (which
    /// also takes the dead letters). Kafka: a topic of `partitions`
    /// partitions, created now, every message in a record batch of its own
    /// (see [`kafka::one_per_batch_publisher`]). RabbitMQ: an exchange,
    /// declared by the first subscriber. SQS: a FIFO queue, created now.
    pub async fn destination(&self, tag: &str, partitions: u32) -> (String, Arc<dyn Publisher>) {
        let destination = format!("{}.{}", unique_name(tag), Step::DESTINATION);
        let publisher: Arc<dyn Publisher> = match self {
            Broker::Kafka(brokers) => {
                Arc::new(kafka::one_per_batch_publisher(brokers, &destination, partitions).await)
            }
            Broker::RabbitMq(url) => Arc::new(
                RabbitPublisher::connect(url)
                    .await
                    .expect("connect to RabbitMQ"),
            ),
            Broker::Sqs(_) => {
                let publisher = sqs::publisher(true).await;
                publisher
                    .ensure_destination(&destination)
                    .await
                    .unwrap_or_else(|e| panic!("create the queue of {destination}: {e}"));
                Arc::new(sqs::Redelivering::new(Arc::new(publisher)))
            }
        };
        (destination, publisher)
    }

    /// A subscriber of consumer group `group` to `destination`, at most
    /// `max_in_flight` messages unsettled. On RabbitMQ this declares the
    /// group's queue: make it before publishing.
    pub async fn subscriber(
        &self,
        group: &str,
        destination: &str,
        max_in_flight: usize,
    ) -> Box<dyn Subscriber> {
        match self {
            Broker::Kafka(brokers) => {
                kafka::subscriber(brokers, group, &[destination], max_in_flight).await
            }
            Broker::RabbitMq(url) => {
                rabbitmq::subscriber(url, group, &[destination], max_in_flight).await
            }
            // A queue is the group: `group` names only the consumer.
            Broker::Sqs(_) => sqs::subscriber(&[destination], true, max_in_flight).await,
        }
    }

    /// Prepares to read the dead letters of `destination`: the dead-letter
    /// topic exists (Kafka), a queue is bound to the dead-letter exchange
    /// (RabbitMQ keeps only what some queue is bound for).
    pub async fn dead_letters(&self, destination: &str, publisher: &dyn Publisher) -> DeadLetters {
        let dlq = dead_letter::destination_of(destination);
        match self {
            Broker::Kafka(brokers) => {
                publisher
                    .ensure_destination(&dlq)
                    .await
                    .unwrap_or_else(|e| panic!("create the dead-letter topic {dlq}: {e}"));
                DeadLetters::Kafka {
                    brokers: brokers.clone(),
                    topic: dlq,
                }
            }
            Broker::RabbitMq(url) => {
                let group = format!("{dlq}.reader");
                DeadLetters::RabbitMq(rabbitmq::subscriber(url, &group, &[&dlq], 64).await)
            }
            Broker::Sqs(_) => DeadLetters::Sqs(sqs::subscriber(&[&dlq], true, 64).await),
        }
    }

    /// Removes what a test left on the broker (RabbitMQ queues of `groups`,
    /// exchanges `destinations` and their dead-letter exchanges; SQS queues of
    /// `destinations` and their dead letters); Kafka topics stay (tansu keeps
    /// them in memory).
    pub async fn clean_up(&self, groups: &[&str], destinations: &[&str]) {
        if let Broker::Sqs(_) = self {
            sqs::delete_queues(destinations, true).await;
        }
        if let Broker::RabbitMq(_) = self {
            for group in groups {
                rabbitmq::delete_group(group).await;
            }
            for destination in destinations {
                let dlq = dead_letter::destination_of(destination);
                rabbitmq::delete_group(&format!("{dlq}.reader")).await;
                rabbitmq::delete_exchange(&dlq).await;
                rabbitmq::delete_exchange(destination).await;
            }
        }
    }
}

impl DeadLetters {
    /// Reads the dead letters: exactly `expected` must arrive (within 60 s),
    /// and no more within a few seconds after.
    pub async fn read(self, expected: usize) -> Vec<Envelope> {
        let letters = match self {
            DeadLetters::Kafka { brokers, topic } => {
                kafka::read_all(&brokers, &topic, expected + 1, Duration::from_secs(15))
                    .await
                    .iter()
                    .map(|m| envelope_from_message(m).expect("a dead letter is a CloudEvent"))
                    .collect()
            }
            DeadLetters::RabbitMq(mut subscriber) | DeadLetters::Sqs(mut subscriber) => {
                let mut letters = Vec::new();
                loop {
                    let wait = if letters.len() < expected {
                        Duration::from_secs(60)
                    } else {
                        Duration::from_secs(3)
                    };
                    match tokio::time::timeout(wait, subscriber.next()).await {
                        Ok(Some(Ok(m))) => {
                            letters.push(m.envelope.expect("a dead letter is a CloudEvent"));
                            m.settle.ack().await.expect("acknowledge a dead letter");
                        }
                        Ok(Some(Err(e))) => panic!("reading dead letters: {e}"),
                        Ok(None) | Err(_) => break,
                    }
                }
                subscriber.close().await.expect("close");
                letters
            }
        };
        assert_eq!(
            letters.len(),
            expected,
            "dead letters: {:#?}",
            letters.iter().map(|l| &l.extensions).collect::<Vec<_>>()
        );
        letters
    }
}

// ------------------------------------------------------------ scenarios

/// What [`batch_handler_scenario`] saw, for the suite to print.
#[derive(Debug)]
pub struct BatchRun {
    /// Messages published (events and their copies).
    pub messages: usize,
    /// Calls of the batch handler, failed ones included.
    pub handler_calls: usize,
    /// Batches the consumer formed.
    pub batches: u64,
    /// The largest of them.
    pub largest_batch: u64,
    /// Times a failed batch was split.
    pub splits: u64,
    /// From the consumer's start until every message was settled.
    pub took: Duration,
}

/// A batch handler on `broker`: 2,000 steps over 20 keys on a 4-partition
/// topic (Kafka) or an exchange (RabbitMQ), with a copy of every tenth step
/// published again (same id: 200 redeliveries, half right behind their
/// original, half later), and one poison step whose batches fail.
///
/// Asserts: every good step has exactly one effect and one inbox row; the
/// handler was called far fewer times than there are messages; per key, the
/// effects were written in publication order; the failing batch was split
/// until the poison step stood alone, and only it went to the dead-letter
/// destination, with the handler's error as the reason after the retry
/// policy's three attempts.
///
/// On PostgreSQL; [`crate::suites::consumer::batch_handler`] runs it on any
/// database.
pub async fn batch_handler_scenario(broker: &Broker) -> BatchRun {
    crate::suites::consumer::batch_handler::<TestDb>(broker).await
}

/// `rate_limit(50)` on `broker`: 100 steps, all published before the consumer
/// starts, take at least 1.8 s from the first handler call to the last (99
/// gaps of 20 ms), and no second sees more than 60 handler calls — where
/// without the limit the backlog would go in a burst. Returns the span.
///
/// On PostgreSQL; [`crate::suites::consumer::rate_limit`] runs it on any
/// database.
pub async fn rate_limit_scenario(broker: &Broker) -> Duration {
    crate::suites::consumer::rate_limit::<TestDb>(broker).await
}
