//! Group commit on any [`Broker`]: a lane's backlog handled in shared
//! transactions, a savepoint per message. A handler that fails inside a group
//! costs only its own message a retry; an acknowledgement lost after the
//! commit is absorbed by the inbox.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventbus::consumer::{Consumer, Context, RetryPolicy};
use eventbus::transport::{Received, Settle, Subscriber};
use eventbus::{BoxError, Envelope};
use sqlx::{PgPool, Postgres};

use super::{create_effects, envelope, publish, record, run, wait_count, wait_until, Broker};
use crate::relay::Step;
use crate::{unique_name, TestDb};

/// Keys of the scenarios, and steps per key.
const KEYS: u64 = 8;
const STEPS: u64 = 25;

/// `KEYS` × `STEPS` steps, interleaved by key, and a copy (same id: a
/// redelivery) right behind every tenth.
fn backlog(tag: &str) -> (Vec<Envelope>, usize) {
    let mut messages = Vec::new();
    let mut copies = 0;
    for seq in 0..STEPS {
        for k in 0..KEYS {
            let e = envelope(&Step {
                key: format!("{tag}-{k}"),
                seq,
                pad: String::new(),
            });
            messages.push(e.clone());
            if messages.len().is_multiple_of(10) {
                messages.push(e);
                copies += 1;
            }
        }
    }
    (messages, copies)
}

/// Every step's effect exactly once, each key's in order.
async fn assert_once_in_order(pool: &PgPool) {
    let rows: Vec<(String, i64)> = sqlx::query_as("SELECT key, seq FROM effects ORDER BY id")
        .fetch_all(pool)
        .await
        .expect("read effects");
    let mut by_key: HashMap<String, Vec<i64>> = HashMap::new();
    for (key, seq) in rows {
        by_key.entry(key).or_default().push(seq);
    }
    assert_eq!(by_key.len() as u64, KEYS, "keys with effects");
    let expected: Vec<i64> = (0..i64::try_from(STEPS).expect("small")).collect();
    for (key, seqs) in by_key {
        assert_eq!(
            seqs, expected,
            "the effects of key {key}, in the order written"
        );
    }
}

/// Counts one more call of the handler for step `id`; returns the count.
fn count_call(calls: &Mutex<HashMap<String, u32>>, id: String) -> Result<u32, BoxError> {
    let mut calls = calls.lock().map_err(|e| e.to_string())?;
    let n = calls.entry(id).or_insert(0);
    *n += 1;
    Ok(*n)
}

/// Runs `consumer` until every step has its effect and all `messages` are
/// settled (handled or skipped as duplicates), then a little longer, room
/// for a wrong extra effect to show; returns it stopped.
async fn run_until_settled(
    pool: &PgPool,
    consumer: Consumer<Postgres>,
    messages: usize,
) -> Arc<Consumer<Postgres>> {
    let running = run(consumer);
    let total = i64::try_from(KEYS * STEPS).expect("small");
    wait_count(
        pool,
        "SELECT count(*) FROM effects",
        total,
        Duration::from_secs(60),
    )
    .await;
    let metrics = Arc::clone(&running.consumer);
    wait_until("every message settled", Duration::from_secs(30), || {
        metrics.metrics().handled() + metrics.metrics().duplicates() >= messages as u64
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    running.stop().await
}

/// One lane, a backlog of 200 steps (and 20 copies) waiting before the
/// consumer starts, groups of up to 32. The handler writes its effect and
/// then fails on the first attempt at three steps: each of those is rolled
/// back to its savepoint and retried alone, the others of its group commit.
/// Every step's effect exactly once and per key in order; the handler ran
/// once for every step but the three (twice each); the copies were skipped
/// as duplicates.
pub async fn group_commit_failure_scenario(broker: &Broker) {
    let db = TestDb::migrated().await;
    create_effects(&db.pool).await;
    let tag = unique_name("group");
    let (destination, publisher) = broker.destination("group", 1).await;
    let group = unique_name("group");
    // Before publishing: on RabbitMQ it declares the group's queue.
    let subscriber = broker.one_lane_subscriber(&group, &destination, 64).await;
    let (messages, copies) = backlog(&tag);
    publish(publisher.as_ref(), &destination, &messages).await;
    let failing: Vec<String> = [(1, 3), (5, 11), (2, 20)]
        .iter()
        .map(|(k, seq)| format!("{tag}-{k}/{seq}"))
        .collect();
    let calls: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let consumer = Consumer::builder(&group)
        .group_commit(32, Duration::from_millis(20))
        .on({
            let calls = Arc::clone(&calls);
            let failing = failing.clone();
            move |ctx: Context<Postgres>, step: Step| {
                let calls = Arc::clone(&calls);
                let id = format!("{}/{}", step.key, step.seq);
                let fails = failing.contains(&id);
                async move {
                    let n = count_call(&calls, id)?;
                    // Written first: the savepoint must take it back.
                    record(&ctx, "c", &step).await?;
                    if fails && n == 1 {
                        return Err::<(), BoxError>("the first attempt fails".into());
                    }
                    Ok(())
                }
            }
        })
        .retry(RetryPolicy {
            immediate: 2,
            immediate_delay: Duration::from_millis(10),
            delayed: 0,
            delayed_initial: Duration::from_millis(10),
            delayed_max: Duration::from_millis(10),
        })
        .build(db.pool.clone(), subscriber, publisher.clone())
        .expect("consumer");
    let consumer = run_until_settled(&db.pool, consumer, messages.len()).await;
    assert_once_in_order(&db.pool).await;
    let calls = calls.lock().expect("calls").clone();
    for (id, n) in &calls {
        let expected = if failing.contains(id) { 2 } else { 1 };
        assert_eq!(*n, expected, "handler calls for {id}");
    }
    assert_eq!(calls.len() as u64, KEYS * STEPS, "steps handled");
    let m = consumer.metrics();
    assert_eq!(m.handled(), KEYS * STEPS, "handled");
    assert_eq!(m.duplicates(), copies as u64, "duplicates");
    assert_eq!(m.dead_lettered(), 0, "dead letters");
    assert!(
        m.group_commits() > 0 && m.grouped_messages() > m.group_commits(),
        "groups formed: {} of {} messages",
        m.group_commits(),
        m.grouped_messages()
    );
    let text = m.render_prometheus();
    for (name, value) in [
        ("eventbus_consumer_group_commits_total", m.group_commits()),
        ("eventbus_consumer_grouped_total", m.grouped_messages()),
    ] {
        let line = format!("{name}{{group=\"{group}\"}} {value}");
        assert!(text.contains(&line), "/metrics lacks `{line}`:\n{text}");
    }
    eprintln!(
        "group commit on {}: {} groups, {} messages in them",
        broker.name(),
        m.group_commits(),
        m.grouped_messages()
    );
    broker.clean_up(&[&group], &[&destination]).await;
}

/// A group whose transaction cannot commit: one handler, on its first
/// attempt, writes a row that breaks a foreign key checked only at commit
/// (`DEFERRABLE INITIALLY DEFERRED`), so every handler of its group succeeds
/// and the commit fails. Nothing of that group may stay applied or be
/// acknowledged: its messages are handled again one by one, the culprit's
/// second attempt writes nothing wrong, and every step's effect ends up
/// exactly once, per key in order.
pub async fn group_commit_failed_commit_scenario(broker: &Broker) {
    let db = TestDb::migrated().await;
    create_effects(&db.pool).await;
    for ddl in [
        "CREATE TABLE commit_parent (id bigint PRIMARY KEY)",
        "CREATE TABLE commit_child (parent bigint REFERENCES commit_parent (id) \
         DEFERRABLE INITIALLY DEFERRED)",
    ] {
        sqlx::query(ddl)
            .execute(&db.pool)
            .await
            .expect("create the deferred foreign key");
    }
    let tag = unique_name("group_commit_fails");
    let (destination, publisher) = broker.destination("group_commit_fails", 1).await;
    let group = unique_name("group_commit_fails");
    let subscriber = broker.one_lane_subscriber(&group, &destination, 64).await;
    let (messages, copies) = backlog(&tag);
    publish(publisher.as_ref(), &destination, &messages).await;
    let culprit = format!("{tag}-3/7");
    let calls: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let consumer = Consumer::builder(&group)
        .group_commit(32, Duration::from_millis(20))
        .on({
            let calls = Arc::clone(&calls);
            let culprit = culprit.clone();
            move |ctx: Context<Postgres>, step: Step| {
                let calls = Arc::clone(&calls);
                let id = format!("{}/{}", step.key, step.seq);
                let breaks_the_commit = id == culprit;
                async move {
                    let n = count_call(&calls, id)?;
                    record(&ctx, "c", &step).await?;
                    if breaks_the_commit && n == 1 {
                        let mut tx = ctx.tx().await?;
                        sqlx::query("INSERT INTO commit_child (parent) VALUES (42)")
                            .execute(&mut **tx)
                            .await?;
                    }
                    Ok::<(), BoxError>(())
                }
            }
        })
        .build(db.pool.clone(), subscriber, publisher.clone())
        .expect("consumer");
    let consumer = run_until_settled(&db.pool, consumer, messages.len()).await;
    assert_once_in_order(&db.pool).await;
    let children: i64 = sqlx::query_scalar("SELECT count(*) FROM commit_child")
        .fetch_one(&db.pool)
        .await
        .expect("count");
    assert_eq!(children, 0, "the failed commit left nothing behind");
    let calls = calls.lock().expect("calls").clone();
    assert_eq!(calls.len() as u64, KEYS * STEPS, "steps handled");
    assert_eq!(
        calls.get(&culprit),
        Some(&2),
        "the culprit ran in its group, then alone"
    );
    let again = calls.values().filter(|n| **n == 2).count();
    assert!(
        again >= 2 && calls.values().all(|n| *n <= 2),
        "the failed group's messages ran once more each, nothing else did: {again} ran twice"
    );
    let m = consumer.metrics();
    assert_eq!(m.handled(), KEYS * STEPS, "handled");
    assert_eq!(m.duplicates(), copies as u64, "duplicates");
    assert_eq!(m.dead_lettered(), 0, "dead letters");
    assert!(m.group_commits() > 0, "groups formed");
    eprintln!(
        "failed group commit on {}: {again} messages ran again, {} groups committed",
        broker.name(),
        m.group_commits()
    );
    broker.clean_up(&[&group], &[&destination]).await;
}

/// Like [`group_commit_failure_scenario`]'s backlog, with the first 60
/// acknowledgements lost after their group committed (given back instead,
/// as a process killed between commit and acknowledgement leaves them): the
/// broker delivers them again, the inbox recognises them, and every effect
/// stays once.
pub async fn group_commit_lost_acks_scenario(broker: &Broker) {
    const LOST: usize = 60;
    let db = TestDb::migrated().await;
    create_effects(&db.pool).await;
    let tag = unique_name("group_acks");
    let (destination, publisher) = broker.destination("group_acks", 1).await;
    let group = unique_name("group_acks");
    // Before publishing: on RabbitMQ it declares the group's queue.
    let inner = broker.one_lane_subscriber(&group, &destination, 64).await;
    let (messages, _) = backlog(&tag);
    publish(publisher.as_ref(), &destination, &messages).await;
    let lost = Arc::new(AtomicUsize::new(LOST));
    let subscriber = Box::new(LosingAcks {
        inner,
        lost: Arc::clone(&lost),
    });
    let consumer = Consumer::builder(&group)
        .group_commit(32, Duration::from_millis(20))
        .on(|ctx: Context<Postgres>, step: Step| async move { record(&ctx, "c", &step).await })
        .build(db.pool.clone(), subscriber, publisher.clone())
        .expect("consumer");
    let running = run(consumer);
    let total = i64::try_from(KEYS * STEPS).expect("small");
    wait_count(
        &db.pool,
        "SELECT count(*) FROM effects",
        total,
        Duration::from_secs(60),
    )
    .await;
    let metrics = Arc::clone(&running.consumer);
    wait_until(
        "the lost acknowledgements redelivered",
        Duration::from_secs(60),
        || lost.load(Ordering::SeqCst) == 0 && metrics.metrics().duplicates() >= LOST as u64,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let consumer = running.stop().await;
    assert_once_in_order(&db.pool).await;
    let m = consumer.metrics();
    assert!(m.group_commits() > 0, "groups formed");
    eprintln!(
        "lost acknowledgements on {}: {} duplicates absorbed, {} groups",
        broker.name(),
        m.duplicates(),
        m.group_commits()
    );
    broker.clean_up(&[&group], &[&destination]).await;
}

/// A subscriber whose first `lost` acknowledgements give the message back
/// instead: to the broker the consumer never acknowledged it.
#[derive(Debug)]
struct LosingAcks {
    inner: Box<dyn Subscriber>,
    lost: Arc<AtomicUsize>,
}

#[derive(Debug)]
struct LosingSettle {
    inner: Box<dyn Settle>,
    lost: Arc<AtomicUsize>,
}

type Boxed<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

impl Subscriber for LosingAcks {
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
            let inner = std::mem::replace(&mut message.settle, Box::new(super::counting::Nothing));
            message.settle = Box::new(LosingSettle {
                inner,
                lost: Arc::clone(&self.lost),
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

impl Settle for LosingSettle {
    fn ack<'async_trait>(self: Box<Self>) -> Boxed<'async_trait, eventbus::Result<()>>
    where
        Self: 'async_trait,
    {
        Box::pin(async move {
            let lose = self
                .lost
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if lose {
                self.inner.release().await
            } else {
                self.inner.ack().await
            }
        })
    }

    fn release<'async_trait>(self: Box<Self>) -> Boxed<'async_trait, eventbus::Result<()>>
    where
        Self: 'async_trait,
    {
        Box::pin(async move { self.inner.release().await })
    }

    fn is_current(&self) -> bool {
        self.inner.is_current()
    }
}
