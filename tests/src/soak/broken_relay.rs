//! A deliberately broken relay (`soak relay <database-url> <amqp-url>
//! <prefix> drop|swap`), for the soak's negative controls: the library's
//! [`Relay`] over PostgreSQL, as `outbox-relay` runs it, publishing through
//! a [`Publisher`] wrapper that breaks the promise once per process — it
//! drops one message (reports it sent without sending it), or sends two
//! messages of one key in a batch in swapped order. The checker must then
//! report `lost>0` or `order_violations>0`. What it broke goes into the
//! `sabotage` table, so the summary line shows how often it did.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use eventbus::relay::{PgRelayStore, Relay, RelayConfig};
use eventbus::transport::rabbitmq::RabbitPublisher;
use eventbus::transport::{Delivered, OutgoingMessage, PublishError};
use eventbus::Publisher;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

use super::Result;
use crate::relay::Step;

/// The table the broken relay records its sabotage in.
pub(crate) const DDL: &str = "CREATE TABLE sabotage (what text NOT NULL, key text, seq bigint)";

/// Which message of a process the drop mode drops: not the first, so the
/// relay is well into its work, and early, so a short run sees it.
const DROP_NTH: u64 = 10;

/// How the broken relay breaks its promise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Breakage {
    /// One message reported sent and never sent: must be seen as lost.
    Drop,
    /// Two messages of one key sent in swapped order: must be seen as an
    /// order violation.
    Swap,
}

impl Breakage {
    pub(crate) fn parse(name: &str) -> Result<Breakage> {
        match name {
            "drop" => Ok(Breakage::Drop),
            "swap" => Ok(Breakage::Swap),
            other => Err(format!("unknown relay breakage {other} (drop or swap)").into()),
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Breakage::Drop => "drop",
            Breakage::Swap => "swap",
        }
    }
}

/// Runs the broken relay until Ctrl-C (or, as the soak ends it, SIGKILL).
/// Settings as the soak gives `outbox-relay`: 2 s leases, 200 ms polls.
pub(crate) async fn relay(db: &str, amqp: &str, prefix: &str, breakage: Breakage) -> Result<()> {
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(Duration::from_secs(10))
        .connect(db)
        .await?;
    let inner: Arc<dyn Publisher> = Arc::new(RabbitPublisher::connect(amqp).await?);
    let publisher = Arc::new(Broken {
        inner,
        breakage,
        pool: pool.clone(),
        seen: AtomicU64::new(0),
        done: AtomicBool::new(false),
    });
    let lease_ttl = Duration::from_secs(2);
    let config = RelayConfig {
        destination_prefix: prefix.to_owned(),
        lease_ttl,
        heartbeat_interval: lease_ttl / 4,
        poll_interval: Duration::from_millis(200),
        ..RelayConfig::default()
    };
    let store = Arc::new(PgRelayStore::new(pool, config.table.clone()));
    let relay = Relay::new(store, publisher, config)?;
    relay
        .run(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

/// The publisher that breaks the promise once.
#[derive(Debug)]
struct Broken {
    inner: Arc<dyn Publisher>,
    breakage: Breakage,
    pool: PgPool,
    /// Messages handed to this publisher so far.
    seen: AtomicU64,
    /// Whether it has broken the promise already.
    done: AtomicBool,
}

impl Broken {
    /// The message of `messages` to break, if this batch is the one.
    fn victim(&self, messages: &[OutgoingMessage]) -> Option<Victim> {
        let first = self.seen.fetch_add(messages.len() as u64, Ordering::SeqCst);
        if self.done.load(Ordering::SeqCst) {
            return None;
        }
        let victim = match self.breakage {
            Breakage::Drop => DROP_NTH
                .checked_sub(first + 1)
                .and_then(|n| usize::try_from(n).ok())
                .filter(|&n| n < messages.len())
                .map(Victim::Drop),
            // The first two messages of one key and destination.
            Breakage::Swap => (0..messages.len()).find_map(|j| {
                (0..j)
                    .find(|&i| same_key(&messages[i], &messages[j]))
                    .map(|i| Victim::Swap(i, j))
            }),
        };
        if victim.is_some() {
            self.done.store(true, Ordering::SeqCst);
        }
        victim
    }

    /// Writes down what was broken (best effort: the checker is the judge).
    async fn record(&self, what: &str, message: &OutgoingMessage) {
        let step: Option<Step> = serde_json::from_slice(&message.envelope.data).ok();
        let _ = sqlx::query("INSERT INTO sabotage (what, key, seq) VALUES ($1, $2, $3)")
            .bind(what)
            .bind(step.as_ref().map(|s| s.key.clone()))
            .bind(step.and_then(|s| i64::try_from(s.seq).ok()))
            .execute(&self.pool)
            .await;
        eprintln!(
            "soak relay: {what} message {} (key {:?})",
            message.envelope.id, message.envelope.partition_key
        );
    }
}

/// What one batch does wrong.
#[derive(Debug, Clone, Copy)]
enum Victim {
    /// The message at this index is not sent.
    Drop(usize),
    /// The messages at these indexes are sent in swapped order.
    Swap(usize, usize),
}

fn same_key(a: &OutgoingMessage, b: &OutgoingMessage) -> bool {
    a.destination == b.destination
        && a.envelope.partition_key.is_some()
        && a.envelope.partition_key == b.envelope.partition_key
}

// The trait is `#[async_trait]`; implemented by hand, as the macro would, to
// need no further dependency.
type Boxed<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

impl Publisher for Broken {
    fn system(&self) -> &'static str {
        self.inner.system()
    }

    fn publish_batch<'life0, 'life1, 'async_trait>(
        &'life0 self,
        messages: &'life1 [OutgoingMessage],
    ) -> Boxed<'async_trait, Vec<Result<Delivered, PublishError>>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move {
            let victim = self.victim(messages);
            let mut sent: Vec<usize> = (0..messages.len()).collect();
            match victim {
                Some(Victim::Drop(i)) => sent.retain(|&n| n != i),
                Some(Victim::Swap(i, j)) => sent.swap(i, j),
                None => {}
            }
            let batch: Vec<OutgoingMessage> = sent.iter().map(|&i| messages[i].clone()).collect();
            let outcomes = self.inner.publish_batch(&batch).await;
            // Back into input order; the dropped one "succeeded".
            let mut results: Vec<Result<Delivered, PublishError>> =
                vec![Ok(Delivered::default()); messages.len()];
            for (&i, outcome) in sent.iter().zip(outcomes) {
                results[i] = outcome;
            }
            match victim {
                Some(Victim::Drop(i)) => self.record("dropped", &messages[i]).await,
                Some(Victim::Swap(i, _)) => self.record("swapped", &messages[i]).await,
                None => {}
            }
            results
        })
    }

    fn ensure_destination<'life0, 'life1, 'async_trait>(
        &'life0 self,
        destination: &'life1 str,
    ) -> Boxed<'async_trait, Result<(), PublishError>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move { self.inner.ensure_destination(destination).await })
    }
}
