//! Wiring shared by the demo and the one-service-per-process commands: which
//! topics each service listens to, its database set-up, its consumer, and the
//! relay for its outbox.

use std::sync::Arc;
use std::time::Duration;

use eventbus::consumer::{Consumer, ConsumerBuilder, RetryPolicy};
use eventbus::relay::{Relay, RelayConfig, RelayMetrics};
use eventbus::Publisher;
use sqlx::Pool;
use tokio::sync::watch;

use crate::broker::Broker;
use crate::db::SagaDb;
use crate::events::{INVENTORY, ORDERS, ORDER_TIMEOUTS, PAYMENTS};
use crate::inventory;
use crate::order::{self, OrderService};
use crate::payment::{self, PaymentService};
use crate::Result;

/// One of the saga's services.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// Orders and the HTTP API.
    Order,
    /// Stock.
    Inventory,
    /// Money.
    Payment,
}

impl Service {
    /// All three.
    pub const ALL: [Service; 3] = [Service::Order, Service::Inventory, Service::Payment];

    /// Its name: also its database suffix and consumer group.
    pub fn name(self) -> &'static str {
        match self {
            Service::Order => order::GROUP,
            Service::Inventory => inventory::GROUP,
            Service::Payment => payment::GROUP,
        }
    }

    /// The topics it consumes: the order service also gets its saga's
    /// timeouts back, on a topic of their own.
    pub fn listens_to(self) -> &'static [&'static str] {
        match self {
            Service::Order => &[INVENTORY, PAYMENTS, ORDER_TIMEOUTS],
            Service::Inventory => &[ORDERS],
            Service::Payment => &[INVENTORY, ORDERS],
        }
    }
}

/// Settings shared by the services of one run.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Prefix of every topic and consumer group (`<namespace>.orders`), so
    /// runs sharing a broker stay apart.
    pub namespace: String,
    /// How long an order waits for payment.
    pub payment_timeout: Duration,
    /// How long the simulated gateway takes for `slow-…` customers.
    pub gateway_delay: Duration,
}

impl Settings {
    /// The broker name of a saga topic.
    pub fn topic(&self, topic: &str) -> String {
        format!("{}.{topic}", self.namespace)
    }

    /// The consumer group of a service.
    pub fn group(&self, service: Service) -> String {
        format!("{}.{}", self.namespace, service.name())
    }

    /// Every saga topic's broker name.
    pub fn topics(&self) -> Vec<String> {
        [ORDERS, INVENTORY, PAYMENTS, ORDER_TIMEOUTS]
            .iter()
            .map(|t| self.topic(t))
            .collect()
    }

    /// The relay settings for a service's outbox: quick polling (SQLite has no
    /// notifications) and short leases, so a restarted relay resumes quickly.
    /// The relay also moves the order saga's payment timeouts out of the
    /// order outbox's scheduled table when they come due.
    pub fn relay_config(&self, service: Service) -> RelayConfig {
        RelayConfig {
            name: format!("{}-relay", service.name()),
            destination_prefix: format!("{}.", self.namespace),
            batch_size: 256,
            poll_interval: Duration::from_millis(50),
            heartbeat_interval: Duration::from_millis(200),
            lease_ttl: Duration::from_secs(1),
            ..RelayConfig::default()
        }
    }
}

/// A shutdown signal many tasks can wait for.
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<bool>);

/// Triggers a [`Shutdown`].
#[derive(Debug)]
pub struct ShutdownTrigger(watch::Sender<bool>);

impl Shutdown {
    /// A new signal and its trigger.
    pub fn new() -> (ShutdownTrigger, Shutdown) {
        let (tx, rx) = watch::channel(false);
        (ShutdownTrigger(tx), Shutdown(rx))
    }

    /// Completes once triggered.
    pub async fn signalled(mut self) {
        let _ = self.0.wait_for(|stop| *stop).await;
    }
}

impl ShutdownTrigger {
    /// Tells every waiter to stop.
    pub fn trigger(&self) {
        let _ = self.0.send(true);
    }
}

/// Creates the SDK's tables and the service's own in its database (and stocks
/// an empty inventory).
pub async fn migrate<DB: SagaDb>(pool: &Pool<DB>, service: Service) -> Result<()> {
    eventbus::migrate(pool).await?;
    match service {
        Service::Order => DB::create_order_tables(pool).await?,
        Service::Inventory => {
            DB::create_inventory_tables(pool).await?;
            // A first start puts the catalog on the shelves.
            if DB::stock(pool).await?.is_empty() {
                for (sku, units) in crate::demo::initial_stock(1_000) {
                    DB::restock(pool, sku, units).await?;
                }
            }
        }
        Service::Payment => DB::create_payment_tables(pool).await?,
    }
    Ok(())
}

/// What a consumer did, read when it stopped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConsumerCounts {
    /// Messages handled.
    pub handled: u64,
    /// Repeats the inbox recognised and skipped.
    pub duplicates: u64,
    /// Messages sent to a dead-letter topic.
    pub dead_lettered: u64,
}

/// Builds `service`'s consumer and subscribes it: once this returns, its
/// queues exist and are bound, so events relayed from now on reach it.
pub async fn consumer<DB: SagaDb>(
    service: Service,
    pool: Pool<DB>,
    broker: &Broker,
    settings: &Settings,
) -> Result<Consumer<DB>> {
    let group = settings.group(service);
    let topics: Vec<String> = service
        .listens_to()
        .iter()
        .map(|t| settings.topic(t))
        .collect();
    let builder = ConsumerBuilder::<DB>::new(group.clone())
        .max_in_flight(64)
        // Quick retries: a handler only fails here when its database is busy.
        .retry(RetryPolicy {
            immediate: 2,
            immediate_delay: Duration::from_millis(20),
            delayed: 5,
            delayed_initial: Duration::from_millis(200),
            delayed_max: Duration::from_secs(2),
        });
    let builder = match service {
        Service::Order => {
            OrderService::new(pool.clone(), settings.payment_timeout).handlers(builder)
        }
        Service::Inventory => inventory::handlers(builder),
        Service::Payment => {
            PaymentService::new(pool.clone(), settings.gateway_delay).handlers(builder)
        }
    };
    let subscriber = broker.subscribe(&group, &topics).await?;
    let dead_letters = broker.publisher().await?;
    Ok(builder.build(pool, subscriber, dead_letters)?)
}

/// Runs `consumer` until `shutdown` and says what it did.
pub async fn consume<DB: SagaDb>(
    consumer: Consumer<DB>,
    shutdown: Shutdown,
) -> Result<ConsumerCounts> {
    consumer.run(shutdown.signalled()).await?;
    let m = consumer.metrics();
    Ok(ConsumerCounts {
        handled: m.handled(),
        duplicates: m.duplicates(),
        dead_lettered: m.dead_lettered(),
    })
}

/// Runs a relay for `service`'s outbox until `shutdown`; its metrics are
/// readable while it runs.
pub fn relay<DB: SagaDb>(
    service: Service,
    pool: Pool<DB>,
    publisher: Arc<dyn Publisher>,
    settings: &Settings,
) -> Result<Relay> {
    Ok(Relay::new(
        DB::relay_store(pool),
        publisher,
        settings.relay_config(service),
    )?)
}

/// Keeps `service`'s background work going (the slow gateway's answers)
/// until `shutdown`. The order service has none: its payment timeouts are
/// scheduled events its saga gets back through the broker.
pub async fn background<DB: SagaDb>(
    service: Service,
    pool: Pool<DB>,
    settings: &Settings,
    shutdown: Shutdown,
) {
    match service {
        Service::Payment => {
            PaymentService::new(pool, settings.gateway_delay)
                .answer_late(shutdown.signalled())
                .await;
        }
        Service::Order | Service::Inventory => shutdown.signalled().await,
    }
}

/// The published count of a relay, for the summary.
pub fn published(metrics: &RelayMetrics) -> u64 {
    metrics.published_total()
}
