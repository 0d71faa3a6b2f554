//! The inventory service: reserves stock for placed orders, releases it when
//! an order is cancelled (the compensation), and marks it sold on
//! confirmation.

use eventbus::consumer::{ConsumerBuilder, Context, UnknownTypes};
use eventbus::{BoxError, Outbox};
use sqlx::{Pool, Transaction};

use crate::db::{for_each_database, Dialect, SagaDb};
use crate::events::{
    OrderCancelled, OrderConfirmed, OrderPlaced, StockReleased, StockReserved, StockUnavailable,
};

/// The consumer group (and inbox consumer name) of the inventory service.
pub const GROUP: &str = "inventory";
/// The CloudEvents source of the inventory service's events.
pub const SOURCE: &str = "urn:saga:inventory";

/// A product's stock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stock {
    /// The product.
    pub sku: String,
    /// Units at the start.
    pub initial: i64,
    /// Units neither reserved nor sold.
    pub available: i64,
}

/// What happened to an order's reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    /// The order.
    pub order_id: String,
    /// The product.
    pub sku: String,
    /// Units.
    pub quantity: i64,
    /// `reserved`, `sold` or `released`.
    pub state: String,
}

/// The outcome of asking for stock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reserve {
    /// Set aside.
    Reserved,
    /// Not enough left; this many were.
    Unavailable(i64),
    /// This order already has a reservation (a repeat).
    AlreadyDone,
}

/// The inventory service's SQL.
#[async_trait::async_trait]
pub trait InventoryDb: sqlx::Database {
    /// Creates the service's tables.
    async fn create_inventory_tables(pool: &Pool<Self>) -> sqlx::Result<()>;
    /// Sets the stock of `sku` (a fresh demo run).
    async fn restock(pool: &Pool<Self>, sku: &str, units: i64) -> sqlx::Result<()>;
    /// Reserves the order's units if there are enough.
    async fn reserve(
        tx: &mut Transaction<'static, Self>,
        order: &OrderPlaced,
    ) -> sqlx::Result<Reserve>;
    /// Moves a reservation from `reserved` to `to`; its units if it did.
    async fn settle_reservation(
        tx: &mut Transaction<'static, Self>,
        order_id: &str,
        to: &str,
    ) -> sqlx::Result<Option<i64>>;
    /// Every product's stock.
    async fn stock(pool: &Pool<Self>) -> sqlx::Result<Vec<Stock>>;
    /// Every reservation.
    async fn reservations(pool: &Pool<Self>) -> sqlx::Result<Vec<Reservation>>;
}

macro_rules! inventory_sql {
    ($db:ty, $dialect:expr) => {
        #[async_trait::async_trait]
        impl InventoryDb for $db {
            async fn create_inventory_tables(pool: &Pool<Self>) -> sqlx::Result<()> {
                sqlx::query(
                    "CREATE TABLE IF NOT EXISTS stock (
                        sku       VARCHAR(255) PRIMARY KEY,
                        initial   BIGINT NOT NULL,
                        available BIGINT NOT NULL CHECK (available >= 0))",
                )
                .execute(pool)
                .await?;
                sqlx::query(
                    "CREATE TABLE IF NOT EXISTS reservations (
                        order_id VARCHAR(255) PRIMARY KEY,
                        sku      TEXT NOT NULL,
                        quantity BIGINT NOT NULL,
                        state    TEXT NOT NULL)",
                )
                .execute(pool)
                .await?;
                Ok(())
            }

            async fn restock(pool: &Pool<Self>, sku: &str, units: i64) -> sqlx::Result<()> {
                sqlx::query($dialect.sql("DELETE FROM reservations WHERE sku = $1"))
                    .bind(sku)
                    .execute(pool)
                    .await?;
                let upsert = match $dialect {
                    Dialect::MySql => {
                        "INSERT INTO stock (sku, initial, available) VALUES (?, ?, ?)
                         ON DUPLICATE KEY UPDATE initial = VALUES(initial), available = VALUES(available)"
                    }
                    Dialect::Postgres | Dialect::Sqlite => {
                        "INSERT INTO stock (sku, initial, available) VALUES ($1, $2, $3)
                         ON CONFLICT (sku) DO UPDATE SET initial = EXCLUDED.initial, available = EXCLUDED.available"
                    }
                };
                sqlx::query(upsert)
                    .bind(sku)
                    .bind(units)
                    .bind(units)
                    .execute(pool)
                    .await?;
                Ok(())
            }

            async fn reserve(tx: &mut Transaction<'static, Self>, o: &OrderPlaced) -> sqlx::Result<Reserve> {
                let known: Option<String> =
                    sqlx::query_scalar($dialect.sql("SELECT state FROM reservations WHERE order_id = $1"))
                        .bind(&o.order_id)
                        .fetch_optional(&mut **tx)
                        .await?;
                if known.is_some() {
                    return Ok(Reserve::AlreadyDone);
                }
                // Check and take in one statement: concurrent orders for the
                // same product cannot both take the last units.
                let taken = sqlx::query($dialect.sql(
                    "UPDATE stock SET available = available - $1 WHERE sku = $2 AND available >= $3",
                ))
                .bind(o.quantity)
                .bind(&o.sku)
                .bind(o.quantity)
                .execute(&mut **tx)
                .await?;
                if taken.rows_affected() == 0 {
                    let left: Option<i64> = sqlx::query_scalar($dialect.sql("SELECT available FROM stock WHERE sku = $1"))
                        .bind(&o.sku)
                        .fetch_optional(&mut **tx)
                        .await?;
                    return Ok(Reserve::Unavailable(left.unwrap_or(0)));
                }
                sqlx::query($dialect.sql(
                    "INSERT INTO reservations (order_id, sku, quantity, state) VALUES ($1, $2, $3, 'reserved')",
                ))
                .bind(&o.order_id)
                .bind(&o.sku)
                .bind(o.quantity)
                .execute(&mut **tx)
                .await?;
                Ok(Reserve::Reserved)
            }

            async fn settle_reservation(tx: &mut Transaction<'static, Self>, order_id: &str, to: &str) -> sqlx::Result<Option<i64>> {
                // Update, then read what was moved (MySQL has no
                // `UPDATE … RETURNING`); the update's row lock holds the row.
                let moved = sqlx::query($dialect.sql(
                    "UPDATE reservations SET state = $1 WHERE order_id = $2 AND state = 'reserved'",
                ))
                .bind(to)
                .bind(order_id)
                .execute(&mut **tx)
                .await?;
                if moved.rows_affected() == 0 {
                    return Ok(None);
                }
                let (sku, quantity): (String, i64) = sqlx::query_as($dialect.sql(
                    "SELECT sku, quantity FROM reservations WHERE order_id = $1",
                ))
                .bind(order_id)
                .fetch_one(&mut **tx)
                .await?;
                if to == "released" {
                    sqlx::query($dialect.sql("UPDATE stock SET available = available + $1 WHERE sku = $2"))
                        .bind(quantity)
                        .bind(&sku)
                        .execute(&mut **tx)
                        .await?;
                }
                Ok(Some(quantity))
            }

            async fn stock(pool: &Pool<Self>) -> sqlx::Result<Vec<Stock>> {
                let rows: Vec<(String, i64, i64)> =
                    sqlx::query_as("SELECT sku, initial, available FROM stock ORDER BY sku")
                        .fetch_all(pool)
                        .await?;
                Ok(rows.into_iter().map(|(sku, initial, available)| Stock { sku, initial, available }).collect())
            }

            async fn reservations(pool: &Pool<Self>) -> sqlx::Result<Vec<Reservation>> {
                let rows: Vec<(String, String, i64, String)> =
                    sqlx::query_as("SELECT order_id, sku, quantity, state FROM reservations")
                        .fetch_all(pool)
                        .await?;
                Ok(rows
                    .into_iter()
                    .map(|(order_id, sku, quantity, state)| Reservation { order_id, sku, quantity, state })
                    .collect())
            }
        }
    };
}
for_each_database!(inventory_sql);

/// The inventory service's handlers, for its consumer.
pub fn handlers<DB: SagaDb>(builder: ConsumerBuilder<DB>) -> ConsumerBuilder<DB> {
    builder
        .outbox(Outbox::new(SOURCE))
        // Rejected orders reserved nothing.
        .unknown_types(UnknownTypes::Skip)
        .on(|ctx: Context<DB>, e: OrderPlaced| async move {
            let outcome = {
                let mut tx = ctx.tx().await?;
                DB::reserve(&mut tx, &e).await?
            };
            match outcome {
                Reserve::Reserved => {
                    ctx.publish(&StockReserved {
                        order_id: e.order_id,
                        customer: e.customer,
                        amount_cents: e.amount_cents,
                    })
                    .await?;
                }
                Reserve::Unavailable(available) => {
                    ctx.publish(&StockUnavailable {
                        order_id: e.order_id,
                        sku: e.sku,
                        requested: e.quantity,
                        available,
                    })
                    .await?;
                }
                Reserve::AlreadyDone => {}
            }
            Ok::<_, BoxError>(())
        })
        // The compensation: a cancelled order's units go back on the shelf.
        .on(|ctx: Context<DB>, e: OrderCancelled| async move {
            let released = {
                let mut tx = ctx.tx().await?;
                DB::settle_reservation(&mut tx, &e.order_id, "released").await?
            };
            if let Some(quantity) = released {
                ctx.publish(&StockReleased {
                    order_id: e.order_id,
                    quantity,
                })
                .await?;
            }
            Ok(())
        })
        .on(|ctx: Context<DB>, e: OrderConfirmed| async move {
            let mut tx = ctx.tx().await?;
            DB::settle_reservation(&mut tx, &e.order_id, "sold").await?;
            Ok(())
        })
}
