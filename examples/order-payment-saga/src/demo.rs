//! The whole saga in one process: three services, a relay per service
//! database, the HTTP API, a load of orders, optional chaos, then the audit
//! and a summary.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use eventbus::relay::RelayMetrics;
use eventbus::saga::SagaStatus;
use eventbus::Publisher;
use futures::StreamExt;
use serde::Serialize;
use tokio::task::JoinHandle;

use crate::audit::{Check, Pools, Snapshot};
use crate::broker::{Broker, ChaosPublisher};
use crate::db::SagaDb;
use crate::order::{OrderService, OrderView, PlaceOrder, PAYMENT_TIMEOUT};
use crate::service::{self, ConsumerCounts, Service, Settings, Shutdown};
use crate::{Error, Result};

/// How a demo run goes.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Orders to place.
    pub orders: usize,
    /// Orders placed at once, at most.
    pub concurrency: usize,
    /// Orders placed per second; 0 places them as fast as `concurrency`
    /// allows, which measures the backlog more than the saga's latency.
    pub rate: u32,
    /// Send some events twice and restart relays during the run.
    pub chaos: bool,
    /// Shared service settings.
    pub settings: Settings,
    /// Where the order API listens (port 0: any free port).
    pub http: SocketAddr,
    /// Give up waiting for the saga to settle after this long.
    pub deadline: Duration,
}

/// The products on sale: (sku, price in cents). The last one is scarce, so
/// some orders are rejected.
pub const CATALOG: [(&str, i64); 3] = [
    ("espresso-beans", 1_250),
    ("grinder", 8_900),
    ("limited-kettle", 4_500),
];

/// Order `i` of a run: every tenth card is declined, every twentieth customer
/// gets a gateway that answers too late, every tenth order wants the scarce
/// product.
pub fn order_request(i: usize) -> PlaceOrder {
    let customer = if i % 10 == 3 {
        format!("declined-{i}")
    } else if i % 20 == 7 {
        format!("slow-{i}")
    } else {
        format!("customer-{i}")
    };
    let (sku, price) = if i % 10 == 5 {
        CATALOG[2]
    } else {
        CATALOG[i % 2]
    };
    let quantity = 1 + (i % 3) as i64;
    PlaceOrder {
        customer,
        sku: sku.into(),
        quantity,
        amount_cents: price * quantity,
    }
}

/// Initial stock: plenty of everything but the kettle.
pub fn initial_stock(orders: usize) -> Vec<(&'static str, i64)> {
    let plenty = (orders as i64) * 3 + 10;
    vec![
        (CATALOG[0].0, plenty),
        (CATALOG[1].0, plenty),
        (CATALOG[2].0, (orders as i64) / 50 + 2),
    ]
}

/// The outcome of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// What ran: databases and broker.
    pub setup: String,
    /// Orders placed.
    pub placed: usize,
    /// Orders placed per second (0: as fast as they were answered).
    pub rate: u32,
    /// Orders confirmed.
    pub confirmed: usize,
    /// Orders cancelled because the card was declined.
    pub cancelled_declined: usize,
    /// Orders cancelled because payment did not answer in time.
    pub cancelled_timeout: usize,
    /// Order sagas completed by their payment timeout: scheduled when stock
    /// was reserved, relayed when due and handled while the saga still
    /// waited for it.
    pub timeouts_fired: usize,
    /// Order sagas still active when the run ended.
    pub sagas_active: usize,
    /// Order sagas completed.
    pub sagas_completed: usize,
    /// Orders rejected for lack of stock.
    pub rejected: usize,
    /// Orders not final when the run ended.
    pub unfinished: usize,
    /// Events the relays sent to the broker (repeats after a restart included).
    pub events_relayed: u64,
    /// Messages the consumers handled.
    pub handled: u64,
    /// Repeated deliveries the inboxes absorbed.
    pub duplicates_absorbed: u64,
    /// Messages dead-lettered.
    pub dead_lettered: u64,
    /// Copies the chaos publisher sent.
    pub duplicates_injected: u64,
    /// Relays killed and restarted by chaos.
    pub relay_restarts: u64,
    /// Placed → final latency percentiles, ms: p50, p90, p99, max.
    pub latency_ms: [i64; 4],
    /// How long the run took, s.
    pub elapsed_s: f64,
    /// The invariants.
    pub checks: Vec<CheckReport>,
}

/// One invariant in the report.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    /// What is claimed.
    pub name: String,
    /// Whether it holds.
    pub ok: bool,
    /// The figures.
    pub detail: String,
}

impl From<Check> for CheckReport {
    fn from(c: Check) -> Self {
        CheckReport {
            name: c.name.into(),
            ok: c.ok,
            detail: c.detail,
        }
    }
}

impl Report {
    /// Whether every invariant holds.
    pub fn passed(&self) -> bool {
        self.unfinished == 0 && self.checks.iter().all(|c| c.ok)
    }

    /// The summary table.
    pub fn render(&self) -> String {
        let [p50, p90, p99, max] = self.latency_ms;
        let pace = match self.rate {
            0 => " (orders placed back to back)".to_owned(),
            n => format!(" (orders placed at {n}/s)"),
        };
        let mut out = format!(
            "\norder/payment saga on {}\n\n\
             | outcome                         | orders |\n\
             |---------------------------------|-------:|\n\
             | confirmed                       | {:>6} |\n\
             | cancelled: payment declined     | {:>6} |\n\
             | cancelled: payment timeout      | {:>6} |\n\
             |   fired by the saga's timeout   | {:>6} |\n\
             | rejected: out of stock          | {:>6} |\n\
             | not final (stuck)               | {:>6} |\n\
             | placed                          | {:>6} |\n\n\
             events relayed {} · handled {} · duplicates absorbed {} · dead-lettered {}\n\
             chaos: {} copies sent, {} relay restarts\n\
             order sagas: {} completed, {} active\n\
             placed → final latency{pace}: p50 {p50} ms · p90 {p90} ms · p99 {p99} ms · max {max} ms\n\
             ran {:.1} s\n\ninvariants:\n",
            self.setup,
            self.confirmed,
            self.cancelled_declined,
            self.cancelled_timeout,
            self.timeouts_fired,
            self.rejected,
            self.unfinished,
            self.placed,
            self.events_relayed,
            self.handled,
            self.duplicates_absorbed,
            self.dead_lettered,
            self.duplicates_injected,
            self.relay_restarts,
            self.sagas_completed,
            self.sagas_active,
            self.elapsed_s,
        );
        for c in &self.checks {
            let mark = if c.ok { "ok  " } else { "FAIL" };
            out.push_str(&format!("  {mark} {} ({})\n", c.name, c.detail));
        }
        out
    }
}

/// A relay task of the run, replaceable by chaos.
struct RelaySlot<DB: SagaDb> {
    service: Service,
    /// The service's pool, whose settings each new relay connects with.
    service_pool: sqlx::Pool<DB>,
    /// The relay's own connections.
    pool: sqlx::Pool<DB>,
    task: JoinHandle<()>,
    /// Every relay this slot ran, for the published total.
    metrics: Vec<Arc<RelayMetrics>>,
}

/// Runs the demo on `pools` and `broker`.
///
/// # Errors
///
/// When a database, the broker or the HTTP API fails; a run whose
/// invariants fail is not an error: see [`Report::passed`].
pub async fn run<DB: SagaDb>(
    pools: Pools<DB>,
    broker: Broker,
    setup: String,
    options: DemoOptions,
) -> Result<Report> {
    let started = Instant::now();
    let settings = options.settings.clone();
    for (service, pool) in services(&pools) {
        service::migrate(pool, service).await?;
        DB::reset(pool).await?;
    }
    DB::clear_orders(&pools.order).await?;
    DB::clear_payments(&pools.payment).await?;
    for (sku, units) in initial_stock(options.orders) {
        DB::restock(&pools.inventory, sku, units).await?;
    }

    // Kafka clusters (and tansu) may not create topics on first use.
    let publisher = broker.publisher().await?;
    for topic in settings.topics() {
        publisher
            .ensure_destination(&topic)
            .await
            .map_err(eventbus::Error::from)?;
    }
    let duplicated = Arc::new(AtomicU64::new(0));
    let relay_publisher: Arc<dyn Publisher> = if options.chaos {
        Arc::new(ChaosPublisher::new(publisher, 10, Arc::clone(&duplicated)))
    } else {
        publisher
    };

    let (trigger, shutdown) = Shutdown::new();
    let mut consumers = Vec::new();
    let mut background = Vec::new();
    for (service, pool) in services(&pools) {
        let consumer = service::consumer(service, pool.clone(), &broker, &settings).await?;
        let stop = shutdown.clone();
        consumers.push(tokio::spawn(service::consume(consumer, stop)));
        let (pool, settings, stop) = (
            pool_of(&pools, service).clone(),
            options.settings.clone(),
            shutdown.clone(),
        );
        background.push(tokio::spawn(async move {
            service::background(service, pool, &settings, stop).await
        }));
    }

    // Relays start once every consumer is subscribed: an event relayed
    // before its queue is bound would be unroutable.
    let mut slots = Vec::new();
    for (service, pool) in services(&pools) {
        slots.push(
            start_relay(
                service,
                pool.clone(),
                &relay_publisher,
                &settings,
                &shutdown,
                Vec::new(),
            )
            .await?,
        );
    }

    let api = Arc::new(OrderService::new(
        pools.order.clone(),
        settings.payment_timeout,
    ));
    let listener = tokio::net::TcpListener::bind(options.http)
        .await
        .map_err(|e| Error::Usage(format!("cannot listen on {}: {e}", options.http)))?;
    let address = listener
        .local_addr()
        .map_err(|e| Error::Http(e.to_string()))?;
    let server = tokio::spawn({
        let stop = shutdown.clone();
        async move {
            axum::serve(listener, api.router())
                .with_graceful_shutdown(stop.signalled())
                .await
        }
    });
    tracing::info!(%address, "order API listening");

    let keeper_stop = Arc::new(tokio::sync::Notify::new());
    let restarts = Arc::new(AtomicU64::new(0));
    let keeper = tokio::spawn(keep_relays(
        slots,
        options.chaos,
        Arc::clone(&relay_publisher),
        settings.clone(),
        shutdown.clone(),
        Arc::clone(&keeper_stop),
        Arc::clone(&restarts),
    ));

    let placed = place_orders(address, options.orders, options.concurrency, options.rate).await?;
    let snapshot = settle(&pools, options.deadline).await?;

    keeper_stop.notify_one();
    let slots = keeper
        .await
        .map_err(|e| Error::Http(format!("relay keeper: {e}")))?;
    trigger.trigger();
    let mut counts = ConsumerCounts::default();
    for task in consumers {
        match task.await {
            Ok(Ok(c)) => {
                counts.handled += c.handled;
                counts.duplicates += c.duplicates;
                counts.dead_lettered += c.dead_lettered;
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "a consumer failed"),
            Err(e) => tracing::warn!(error = %e, "a consumer task failed"),
        }
    }
    for task in background {
        let _ = task.await;
    }
    let _ = server.await;
    let mut relayed = 0;
    for slot in slots {
        let _ = slot.task.await;
        relayed += slot
            .metrics
            .iter()
            .map(|m| service::published(m))
            .sum::<u64>();
    }

    let tally = Tally {
        placed,
        rate: options.rate,
        counts,
        relayed,
        duplicates_injected: duplicated.load(Ordering::Relaxed),
        relay_restarts: restarts.load(Ordering::Relaxed),
        elapsed_s: started.elapsed().as_secs_f64(),
    };
    Ok(report(setup, &snapshot, tally))
}

/// What the run counted, besides the databases.
#[derive(Clone, Copy)]
struct Tally {
    placed: usize,
    rate: u32,
    counts: ConsumerCounts,
    relayed: u64,
    duplicates_injected: u64,
    relay_restarts: u64,
    elapsed_s: f64,
}

fn report(setup: String, snapshot: &Snapshot, tally: Tally) -> Report {
    let cancelled = |why: &str| {
        snapshot
            .orders
            .iter()
            .filter(|o| {
                o.state == "cancelled" && o.reason.as_deref().is_some_and(|r| r.starts_with(why))
            })
            .count()
    };
    let sagas = |status: SagaStatus| snapshot.sagas.iter().filter(|s| s.status == status).count();
    let mut latencies: Vec<i64> = snapshot
        .orders
        .iter()
        .filter_map(|o| o.finished_at_ms.map(|f| f - o.placed_at_ms))
        .collect();
    latencies.sort_unstable();
    let pick = |q: f64| {
        if latencies.is_empty() {
            return 0;
        }
        let i = ((latencies.len() - 1) as f64 * q).round() as usize;
        latencies[i.min(latencies.len() - 1)]
    };
    Report {
        setup,
        placed: tally.placed,
        rate: tally.rate,
        confirmed: snapshot.count("confirmed"),
        cancelled_declined: cancelled("payment declined"),
        cancelled_timeout: cancelled(PAYMENT_TIMEOUT),
        timeouts_fired: snapshot.completed_by_timeout().count(),
        sagas_active: sagas(SagaStatus::Active),
        sagas_completed: sagas(SagaStatus::Completed),
        rejected: snapshot.count("rejected"),
        unfinished: snapshot.unfinished(),
        events_relayed: tally.relayed,
        handled: tally.counts.handled,
        duplicates_absorbed: tally.counts.duplicates,
        dead_lettered: tally.counts.dead_lettered,
        duplicates_injected: tally.duplicates_injected,
        relay_restarts: tally.relay_restarts,
        latency_ms: [pick(0.5), pick(0.9), pick(0.99), pick(1.0)],
        elapsed_s: tally.elapsed_s,
        checks: snapshot
            .checks()
            .into_iter()
            .map(CheckReport::from)
            .collect(),
    }
}

fn services<DB: SagaDb>(pools: &Pools<DB>) -> [(Service, &sqlx::Pool<DB>); 3] {
    [
        (Service::Order, &pools.order),
        (Service::Inventory, &pools.inventory),
        (Service::Payment, &pools.payment),
    ]
}

fn pool_of<DB: SagaDb>(pools: &Pools<DB>, service: Service) -> &sqlx::Pool<DB> {
    match service {
        Service::Order => &pools.order,
        Service::Inventory => &pools.inventory,
        Service::Payment => &pools.payment,
    }
}

/// Starts a relay for `service` on connections of its own, as a sidecar
/// process has: when the chaos kills it, they are closed and the database
/// rolls back whatever it left open, instead of going back, mid-transaction,
/// to a pool the services' handlers use.
async fn start_relay<DB: SagaDb>(
    service: Service,
    service_pool: sqlx::Pool<DB>,
    publisher: &Arc<dyn Publisher>,
    settings: &Settings,
    shutdown: &Shutdown,
    mut metrics: Vec<Arc<RelayMetrics>>,
) -> Result<RelaySlot<DB>> {
    let pool = sqlx::pool::PoolOptions::<DB>::new()
        .max_connections(4)
        .connect_with((*service_pool.connect_options()).clone())
        .await?;
    let relay = service::relay(service, pool.clone(), Arc::clone(publisher), settings)?;
    metrics.push(relay.metrics());
    let stop = shutdown.clone();
    let task = tokio::spawn(async move {
        if let Err(e) = relay.run(stop.signalled()).await {
            tracing::error!(error = %e, "relay stopped with an error");
        }
    });
    Ok(RelaySlot {
        service,
        service_pool,
        pool,
        task,
        metrics,
    })
}

/// Holds the relays until told to stop. With chaos, kills one every 1.5 s
/// (abort: no clean hand-over, like SIGKILL) and starts a new one in its
/// place, one service after another.
#[allow(clippy::too_many_arguments)]
async fn keep_relays<DB: SagaDb>(
    mut slots: Vec<RelaySlot<DB>>,
    chaos: bool,
    publisher: Arc<dyn Publisher>,
    settings: Settings,
    shutdown: Shutdown,
    stop: Arc<tokio::sync::Notify>,
    restarts: Arc<AtomicU64>,
) -> Vec<RelaySlot<DB>> {
    if !chaos {
        stop.notified().await;
        return slots;
    }
    let mut next = 0;
    loop {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(1500)) => {}
            () = stop.notified() => return slots,
        }
        let slot = slots.remove(next % slots.len().max(1));
        slot.task.abort();
        let _ = slot.task.await;
        // Like the process dying: its connections go, and with them its open
        // transactions and locks.
        slot.pool.close().await;
        match start_relay(
            slot.service,
            slot.service_pool.clone(),
            &publisher,
            &settings,
            &shutdown,
            slot.metrics.clone(),
        )
        .await
        {
            Ok(fresh) => {
                tracing::info!(
                    service = slot.service.name(),
                    "chaos: relay killed and restarted"
                );
                restarts.fetch_add(1, Ordering::Relaxed);
                slots.insert(next % (slots.len() + 1), fresh);
            }
            Err(e) => {
                tracing::error!(error = %e, "chaos: relay restart failed");
                return slots;
            }
        }
        next += 1;
    }
}

/// Places `count` orders through the HTTP API, `rate` a second (0: as fast
/// as answered), at most `concurrency` at a time.
async fn place_orders(
    address: SocketAddr,
    count: usize,
    concurrency: usize,
    rate: u32,
) -> Result<usize> {
    let client = reqwest::Client::new();
    let url = format!("http://{address}/orders");
    let mut placed = 0;
    // On a schedule from the start, so a slow answer does not slow the
    // arrivals down (the latency then measures the saga, not the client).
    let start = tokio::time::Instant::now();
    let step = (rate > 0).then(|| Duration::from_secs_f64(1.0 / f64::from(rate)));
    let results = futures::stream::iter(0..count)
        .then(move |i| async move {
            if let Some(step) = step {
                let n = u32::try_from(i).unwrap_or(u32::MAX);
                tokio::time::sleep_until(start + step.saturating_mul(n)).await;
            }
            i
        })
        .map(|i| {
            let (client, url) = (client.clone(), url.clone());
            async move {
                let response = client
                    .post(&url)
                    .json(&order_request(i))
                    .send()
                    .await
                    .map_err(|e| Error::Http(e.to_string()))?;
                if !response.status().is_success() {
                    return Err(Error::Http(format!(
                        "POST /orders answered {}",
                        response.status()
                    )));
                }
                response
                    .json::<OrderView>()
                    .await
                    .map_err(|e| Error::Http(e.to_string()))
            }
        })
        .buffer_unordered(concurrency.max(1));
    let mut results = std::pin::pin!(results);
    while let Some(result) = results.next().await {
        result?;
        placed += 1;
    }
    Ok(placed)
}

/// Waits until every order is final and the invariants hold, or the deadline
/// passes; returns what the databases hold then.
async fn settle<DB: SagaDb>(pools: &Pools<DB>, deadline: Duration) -> Result<Snapshot> {
    let until = Instant::now() + deadline;
    loop {
        let snapshot = pools.snapshot().await?;
        // Final orders come first; compensations (releases, refunds) follow
        // a moment later, so wait for the invariants too.
        if (snapshot.unfinished() == 0 && snapshot.holds()) || Instant::now() >= until {
            return Ok(snapshot);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
