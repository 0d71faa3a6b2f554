//! The payment service: charges reserved orders through a simulated card
//! gateway, and refunds or voids when an order is cancelled. Every money
//! movement is a row in its ledger, which the demo audits.
//!
//! The simulated gateway decides by customer name: `declined-…` cards are
//! declined; `slow-…` customers are answered only after the gateway delay
//! (longer than the order service's payment timeout, to exercise the timeout
//! path); everyone else is charged at once.

use std::time::Duration;

use eventbus::consumer::{ConsumerBuilder, Context, UnknownTypes};
use eventbus::{BoxError, Outbox};
use sqlx::{Pool, Transaction};

use crate::db::{for_each_database, SagaDb};
use crate::events::{
    OrderCancelled, PaymentCharged, PaymentDeclined, PaymentRefunded, StockReserved,
};
use crate::now_ms;

/// The consumer group (and inbox consumer name) of the payment service.
pub const GROUP: &str = "payment";
/// The CloudEvents source of the payment service's events.
pub const SOURCE: &str = "urn:saga:payment";

/// One money movement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerEntry {
    /// The order.
    pub order_id: String,
    /// `charge` or `refund`.
    pub kind: String,
    /// Cents moved.
    pub amount_cents: i64,
}

/// What the gateway said about a charge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charge {
    /// Charged now.
    Charged,
    /// Declined.
    Declined,
    /// The gateway will answer later.
    Pending,
    /// Nothing done: the order already has a payment (a repeat) or was
    /// cancelled first.
    Skipped,
}

/// The payment service's SQL.
#[async_trait::async_trait]
pub trait PaymentDb: sqlx::Database {
    /// Creates the service's tables.
    async fn create_payment_tables(pool: &Pool<Self>) -> sqlx::Result<()>;
    /// Records the gateway's answer for a reserved order.
    async fn charge(
        tx: &mut Transaction<'static, Self>,
        e: &StockReserved,
        answer: Charge,
        due_at_ms: i64,
    ) -> sqlx::Result<Charge>;
    /// Charges that the gateway answers now.
    async fn due(pool: &Pool<Self>, now_ms: i64) -> sqlx::Result<Vec<String>>;
    /// Completes a pending charge; its amount if it was still pending.
    async fn complete(
        tx: &mut Transaction<'static, Self>,
        order_id: &str,
    ) -> sqlx::Result<Option<i64>>;
    /// Undoes the order's payment: refund (returns the amount) or void.
    async fn cancel(
        tx: &mut Transaction<'static, Self>,
        order_id: &str,
    ) -> sqlx::Result<Option<i64>>;
    /// Moves the order's payment from state `from` to `to`; its amount if it
    /// did.
    async fn move_payment(
        tx: &mut Transaction<'static, Self>,
        order_id: &str,
        from: &str,
        to: &str,
    ) -> sqlx::Result<Option<i64>>;
    /// Appends a money movement to the ledger.
    async fn record(
        tx: &mut Transaction<'static, Self>,
        order_id: &str,
        kind: &str,
        amount_cents: i64,
    ) -> sqlx::Result<()>;
    /// The ledger.
    async fn ledger(pool: &Pool<Self>) -> sqlx::Result<Vec<LedgerEntry>>;
    /// Deletes every payment (a fresh demo run).
    async fn clear_payments(pool: &Pool<Self>) -> sqlx::Result<()>;
}

macro_rules! payment_sql {
    ($db:ty, $dialect:expr) => {
        #[async_trait::async_trait]
        impl PaymentDb for $db {
            async fn create_payment_tables(pool: &Pool<Self>) -> sqlx::Result<()> {
                sqlx::query(
                    "CREATE TABLE IF NOT EXISTS payments (
                        order_id     VARCHAR(255) PRIMARY KEY,
                        amount_cents BIGINT NOT NULL,
                        state        TEXT NOT NULL,
                        due_at_ms    BIGINT)",
                )
                .execute(pool)
                .await?;
                // No uniqueness on (order, kind) on purpose: the audit checks that
                // the inbox alone keeps an order from being charged twice.
                sqlx::query(
                    "CREATE TABLE IF NOT EXISTS ledger (
                        entry_id     VARCHAR(64) PRIMARY KEY,
                        order_id     TEXT NOT NULL,
                        kind         TEXT NOT NULL,
                        amount_cents BIGINT NOT NULL,
                        at_ms        BIGINT NOT NULL)",
                )
                .execute(pool)
                .await?;
                Ok(())
            }

            async fn charge(tx: &mut Transaction<'static, Self>, e: &StockReserved, answer: Charge, due_at_ms: i64) -> sqlx::Result<Charge> {
                let state = match answer {
                    Charge::Charged => "charged",
                    Charge::Declined => "declined",
                    Charge::Pending | Charge::Skipped => "pending",
                };
                // A cancellation seen first left a `voided` row: nothing to do.
                let inserted = sqlx::query($dialect.insert_if_absent(
                    "payments",
                    "order_id, amount_cents, state, due_at_ms",
                    "$1, $2, $3, $4",
                ))
                .bind(&e.order_id)
                .bind(e.amount_cents)
                .bind(state)
                .bind(due_at_ms)
                .execute(&mut **tx)
                .await?;
                if inserted.rows_affected() == 0 {
                    return Ok(Charge::Skipped);
                }
                if answer == Charge::Charged {
                    Self::record(tx, &e.order_id, "charge", e.amount_cents).await?;
                }
                Ok(answer)
            }

            async fn due(pool: &Pool<Self>, now_ms: i64) -> sqlx::Result<Vec<String>> {
                sqlx::query_scalar($dialect.sql("SELECT order_id FROM payments WHERE state = 'pending' AND due_at_ms <= $1"))
                    .bind(now_ms)
                    .fetch_all(pool)
                    .await
            }

            async fn complete(tx: &mut Transaction<'static, Self>, order_id: &str) -> sqlx::Result<Option<i64>> {
                let amount = Self::move_payment(tx, order_id, "pending", "charged").await?;
                if let Some(amount) = amount {
                    Self::record(tx, order_id, "charge", amount).await?;
                }
                Ok(amount)
            }

            async fn cancel(tx: &mut Transaction<'static, Self>, order_id: &str) -> sqlx::Result<Option<i64>> {
                // No payment yet: leave a `voided` row so a late StockReserved
                // (another topic, no order between them) charges nothing.
                sqlx::query($dialect.insert_if_absent(
                    "payments",
                    "order_id, amount_cents, state",
                    "$1, 0, 'voided'",
                ))
                .bind(order_id)
                .execute(&mut **tx)
                .await?;
                sqlx::query($dialect.sql("UPDATE payments SET state = 'voided' WHERE order_id = $1 AND state = 'pending'"))
                    .bind(order_id)
                    .execute(&mut **tx)
                    .await?;
                let refunded = Self::move_payment(tx, order_id, "charged", "refunded").await?;
                if let Some(amount) = refunded {
                    Self::record(tx, order_id, "refund", amount).await?;
                }
                Ok(refunded)
            }

            async fn move_payment(
                tx: &mut Transaction<'static, Self>,
                order_id: &str,
                from: &str,
                to: &str,
            ) -> sqlx::Result<Option<i64>> {
                // Update, then read the amount (MySQL has no `UPDATE …
                // RETURNING`); the update's row lock holds the row.
                let moved = sqlx::query($dialect.sql(
                    "UPDATE payments SET state = $1 WHERE order_id = $2 AND state = $3",
                ))
                .bind(to)
                .bind(order_id)
                .bind(from)
                .execute(&mut **tx)
                .await?;
                if moved.rows_affected() == 0 {
                    return Ok(None);
                }
                sqlx::query_scalar($dialect.sql("SELECT amount_cents FROM payments WHERE order_id = $1"))
                    .bind(order_id)
                    .fetch_one(&mut **tx)
                    .await
                    .map(Some)
            }

            async fn record(tx: &mut Transaction<'static, Self>, order_id: &str, kind: &str, amount_cents: i64) -> sqlx::Result<()> {
                sqlx::query($dialect.sql(
                    "INSERT INTO ledger (entry_id, order_id, kind, amount_cents, at_ms) VALUES ($1, $2, $3, $4, $5)",
                ))
                .bind(uuid::Uuid::now_v7().to_string())
                .bind(order_id)
                .bind(kind)
                .bind(amount_cents)
                .bind(now_ms())
                .execute(&mut **tx)
                .await?;
                Ok(())
            }

            async fn ledger(pool: &Pool<Self>) -> sqlx::Result<Vec<LedgerEntry>> {
                let rows: Vec<(String, String, i64)> =
                    sqlx::query_as("SELECT order_id, kind, amount_cents FROM ledger ORDER BY at_ms")
                        .fetch_all(pool)
                        .await?;
                Ok(rows
                    .into_iter()
                    .map(|(order_id, kind, amount_cents)| LedgerEntry { order_id, kind, amount_cents })
                    .collect())
            }

            async fn clear_payments(pool: &Pool<Self>) -> sqlx::Result<()> {
                sqlx::query("DELETE FROM payments").execute(pool).await?;
                sqlx::query("DELETE FROM ledger").execute(pool).await?;
                Ok(())
            }
        }

    };
}
for_each_database!(payment_sql);

/// The payment service: its database and the simulated gateway's delay.
#[derive(Debug, Clone)]
pub struct PaymentService<DB: SagaDb> {
    /// Its database.
    pub pool: Pool<DB>,
    /// Where its events go.
    pub outbox: Outbox,
    /// How long the gateway takes to answer for `slow-…` customers.
    pub gateway_delay: Duration,
}

/// What the simulated gateway answers for `customer`.
pub fn gateway(customer: &str) -> Charge {
    if customer.starts_with("declined-") {
        Charge::Declined
    } else if customer.starts_with("slow-") {
        Charge::Pending
    } else {
        Charge::Charged
    }
}

impl<DB: SagaDb> PaymentService<DB> {
    /// The service on `pool`.
    pub fn new(pool: Pool<DB>, gateway_delay: Duration) -> Self {
        PaymentService {
            pool,
            outbox: Outbox::new(SOURCE),
            gateway_delay,
        }
    }

    /// The handlers that charge and refund, for the service's consumer.
    pub fn handlers(&self, builder: ConsumerBuilder<DB>) -> ConsumerBuilder<DB> {
        let delay = i64::try_from(self.gateway_delay.as_millis()).unwrap_or(i64::MAX);
        builder
            .outbox(self.outbox.clone())
            // Other stock and order events are not about money.
            .unknown_types(UnknownTypes::Skip)
            .on(move |ctx: Context<DB>, e: StockReserved| async move {
                let answer = {
                    let mut tx = ctx.tx().await?;
                    DB::charge(
                        &mut tx,
                        &e,
                        gateway(&e.customer),
                        now_ms().saturating_add(delay),
                    )
                    .await?
                };
                match answer {
                    Charge::Charged => {
                        ctx.publish(&PaymentCharged {
                            order_id: e.order_id,
                            amount_cents: e.amount_cents,
                        })
                        .await?;
                    }
                    Charge::Declined => {
                        ctx.publish(&PaymentDeclined {
                            order_id: e.order_id,
                            reason: "card declined".into(),
                        })
                        .await?;
                    }
                    Charge::Pending | Charge::Skipped => {}
                }
                Ok::<_, BoxError>(())
            })
            .on(|ctx: Context<DB>, e: OrderCancelled| async move {
                let refunded = {
                    let mut tx = ctx.tx().await?;
                    DB::cancel(&mut tx, &e.order_id).await?
                };
                if let Some(amount_cents) = refunded {
                    ctx.publish(&PaymentRefunded {
                        order_id: e.order_id,
                        amount_cents,
                    })
                    .await?;
                }
                Ok(())
            })
    }

    /// Delivers the slow gateway's late answers, until `shutdown`.
    pub async fn answer_late(&self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            if let Err(e) = self.answer_due().await {
                tracing::warn!(error = %e, "completing late charges failed; trying again");
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
                () = &mut shutdown => return,
            }
        }
    }

    async fn answer_due(&self) -> crate::Result<()> {
        for order_id in DB::due(&self.pool, now_ms()).await? {
            let mut tx = self.pool.begin().await?;
            if let Some(amount_cents) = DB::complete(&mut tx, &order_id).await? {
                self.outbox
                    .publish(
                        &mut tx,
                        &PaymentCharged {
                            order_id,
                            amount_cents,
                        },
                    )
                    .await?;
            }
            tx.commit().await?;
        }
        Ok(())
    }
}
