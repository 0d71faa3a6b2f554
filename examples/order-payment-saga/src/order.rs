//! The order service: takes orders over HTTP and orchestrates each one with
//! an [`OrderSaga`] (`eventbus::saga`) to a final state from what inventory
//! and payment say — confirmed, cancelled (payment declined, or no answer
//! before the saga's payment timeout, with compensation) or rejected (out
//! of stock).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use eventbus::consumer::{ConsumerBuilder, UnknownTypes};
use eventbus::saga::{Handles, Saga, SagaContext, SagaDefinition, Sagas};
use eventbus::{BoxError, Outbox};
use serde::{Deserialize, Serialize};
use sqlx::{Pool, Transaction};

use crate::db::{for_each_database, SagaDb};
use crate::events::{
    OrderCancelled, OrderConfirmed, OrderPlaced, OrderRejected, PaymentCharged, PaymentDeclined,
    PaymentTimedOut, StockReserved, StockUnavailable,
};
use crate::now_ms;

/// The consumer group (and inbox consumer name) of the order service.
pub const GROUP: &str = "order";
/// The CloudEvents source of the order service's events.
pub const SOURCE: &str = "urn:saga:order";

/// An order as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderView {
    /// Its id.
    pub id: String,
    /// Who pays.
    pub customer: String,
    /// What.
    pub sku: String,
    /// How many.
    pub quantity: i64,
    /// Price in cents.
    pub amount_cents: i64,
    /// `pending`, `awaiting_payment`, `confirmed`, `cancelled` or `rejected`.
    pub state: String,
    /// Why it was cancelled or rejected.
    pub reason: Option<String>,
    /// When it was placed (ms since the epoch).
    pub placed_at_ms: i64,
    /// When it reached its final state.
    pub finished_at_ms: Option<i64>,
}

impl OrderView {
    /// Whether the saga is over for this order.
    pub fn is_final(&self) -> bool {
        matches!(self.state.as_str(), "confirmed" | "cancelled" | "rejected")
    }
}

/// The body of `POST /orders`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlaceOrder {
    /// Who pays.
    pub customer: String,
    /// What.
    pub sku: String,
    /// How many (≥ 1).
    pub quantity: i64,
    /// Price in cents (≥ 1).
    pub amount_cents: i64,
}

/// The order service's SQL.
#[async_trait::async_trait]
pub trait OrderDb: sqlx::Database {
    /// Creates the service's tables.
    async fn create_order_tables(pool: &Pool<Self>) -> sqlx::Result<()>;
    /// Stores a new `pending` order.
    async fn insert_order(
        tx: &mut Transaction<'static, Self>,
        order: &OrderPlaced,
    ) -> sqlx::Result<()>;
    /// Moves the order from one of `from` to `to`; whether it did.
    async fn transition(
        tx: &mut Transaction<'static, Self>,
        id: &str,
        from: &[&str],
        to: &str,
        reason: Option<&str>,
    ) -> sqlx::Result<bool>;
    /// Moves a `pending` order to `awaiting_payment`; whether it did.
    async fn await_payment(tx: &mut Transaction<'static, Self>, id: &str) -> sqlx::Result<bool>;
    /// One order.
    async fn order(pool: &Pool<Self>, id: &str) -> sqlx::Result<Option<OrderView>>;
    /// All orders.
    async fn orders(pool: &Pool<Self>) -> sqlx::Result<Vec<OrderView>>;
    /// Deletes every order (a fresh demo run).
    async fn clear_orders(pool: &Pool<Self>) -> sqlx::Result<()>;
}

type Row = (
    String,
    String,
    String,
    i64,
    i64,
    String,
    Option<String>,
    i64,
    Option<i64>,
);

fn view(r: Row) -> OrderView {
    OrderView {
        id: r.0,
        customer: r.1,
        sku: r.2,
        quantity: r.3,
        amount_cents: r.4,
        state: r.5,
        reason: r.6,
        placed_at_ms: r.7,
        finished_at_ms: r.8,
    }
}

const COLUMNS: &str =
    "id, customer, sku, quantity, amount_cents, state, reason, placed_at_ms, finished_at_ms";

macro_rules! order_sql {
    ($db:ty, $dialect:expr) => {
        #[async_trait::async_trait]
        impl OrderDb for $db {
            async fn create_order_tables(pool: &Pool<Self>) -> sqlx::Result<()> {
                // Payment timeouts are the order saga's: no deadline column,
                // no index to poll.
                sqlx::query(
                    "CREATE TABLE IF NOT EXISTS orders (
                        id             VARCHAR(255) PRIMARY KEY,
                        customer       TEXT NOT NULL,
                        sku            TEXT NOT NULL,
                        quantity       BIGINT NOT NULL,
                        amount_cents   BIGINT NOT NULL,
                        state          VARCHAR(32) NOT NULL,
                        reason         TEXT,
                        placed_at_ms   BIGINT NOT NULL,
                        finished_at_ms BIGINT)",
                )
                .execute(pool)
                .await?;
                Ok(())
            }

            async fn insert_order(tx: &mut Transaction<'static, Self>, o: &OrderPlaced) -> sqlx::Result<()> {
                sqlx::query($dialect.sql(
                    "INSERT INTO orders (id, customer, sku, quantity, amount_cents, state, placed_at_ms)
                     VALUES ($1, $2, $3, $4, $5, 'pending', $6)",
                ))
                .bind(&o.order_id)
                .bind(&o.customer)
                .bind(&o.sku)
                .bind(o.quantity)
                .bind(o.amount_cents)
                .bind(now_ms())
                .execute(&mut **tx)
                .await?;
                Ok(())
            }

            async fn transition(
                tx: &mut Transaction<'static, Self>,
                id: &str,
                from: &[&str],
                to: &str,
                reason: Option<&str>,
            ) -> sqlx::Result<bool> {
                let mut moved = false;
                // A guarded UPDATE per allowed state: whoever changes the row first
                // wins, the others match nothing (the row lock orders them).
                for state in from {
                    let done = sqlx::query($dialect.sql(
                        "UPDATE orders SET state = $1, reason = $2, finished_at_ms = $3
                         WHERE id = $4 AND state = $5",
                    ))
                    .bind(to)
                    .bind(reason)
                    .bind(now_ms())
                    .bind(id)
                    .bind(*state)
                    .execute(&mut **tx)
                    .await?;
                    moved |= done.rows_affected() == 1;
                }
                Ok(moved)
            }

            async fn await_payment(tx: &mut Transaction<'static, Self>, id: &str) -> sqlx::Result<bool> {
                let done = sqlx::query($dialect.sql(
                    "UPDATE orders SET state = 'awaiting_payment' WHERE id = $1 AND state = 'pending'",
                ))
                .bind(id)
                .execute(&mut **tx)
                .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn order(pool: &Pool<Self>, id: &str) -> sqlx::Result<Option<OrderView>> {
                let row: Option<Row> = sqlx::query_as($dialect.sql(&format!("SELECT {COLUMNS} FROM orders WHERE id = $1")))
                    .bind(id)
                    .fetch_optional(pool)
                    .await?;
                Ok(row.map(view))
            }

            async fn orders(pool: &Pool<Self>) -> sqlx::Result<Vec<OrderView>> {
                let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM orders ORDER BY placed_at_ms")))
                    .fetch_all(pool)
                    .await?;
                Ok(rows.into_iter().map(view).collect())
            }

            async fn clear_orders(pool: &Pool<Self>) -> sqlx::Result<()> {
                sqlx::query("DELETE FROM orders").execute(pool).await?;
                Ok(())
            }
        }
    };
}
for_each_database!(order_sql);

/// Where an order's saga stands: the same words as the `orders` row's
/// `state`, which each step moves in its own transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Placed; inventory has not answered.
    Pending,
    /// Stock reserved; the payment timeout runs.
    AwaitingPayment,
    /// Paid (final).
    Confirmed,
    /// Payment declined or timed out; compensated by inventory and payment
    /// (final).
    Cancelled,
    /// Out of stock (final).
    Rejected,
}

impl Stage {
    /// The word in the `orders` table.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Pending => "pending",
            Stage::AwaitingPayment => "awaiting_payment",
            Stage::Confirmed => "confirmed",
            Stage::Cancelled => "cancelled",
            Stage::Rejected => "rejected",
        }
    }

    /// Whether the order is over: its saga completes with this step.
    pub fn is_final(self) -> bool {
        matches!(self, Stage::Confirmed | Stage::Cancelled | Stage::Rejected)
    }
}

/// The reason of an order cancelled by its payment timeout.
pub const PAYMENT_TIMEOUT: &str = "payment timeout";

/// The order saga: one instance per order, keyed by the order id, started
/// with the order ([`OrderService::place`]) and driven by what inventory and
/// payment say, and by its own payment timeout. The service orchestrates
/// its orders with it; inventory and payment still choreograph between
/// themselves and never see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderSaga {
    /// Where the order stands.
    pub stage: Stage,
    /// How long payment may take once stock is reserved, in ms: the
    /// service's setting when the order was placed.
    pub payment_timeout_ms: u64,
    /// The id of the payment timeout that cancelled the order, if one did.
    #[serde(default)]
    pub timed_out_by: Option<String>,
}

impl Saga for OrderSaga {
    const NAME: &'static str = "order";
}

impl OrderSaga {
    /// A new order's saga.
    pub fn new(payment_timeout: Duration) -> Self {
        OrderSaga {
            stage: Stage::Pending,
            payment_timeout_ms: u64::try_from(payment_timeout.as_millis()).unwrap_or(u64::MAX),
            timed_out_by: None,
        }
    }

    /// The saga's events: inventory's and payment's answers, and the
    /// payment timeout it schedules for itself.
    pub fn definition<DB: SagaDb>() -> SagaDefinition<OrderSaga, DB> {
        SagaDefinition::new()
            .handles::<StockReserved>()
            .handles::<StockUnavailable>()
            .handles::<PaymentCharged>()
            .handles::<PaymentDeclined>()
            .timeout::<PaymentTimedOut>()
    }

    /// Moves the saga and the order's row to `to` in the step's
    /// transaction, completing the saga on a final stage (which cancels the
    /// payment timeout, if one waits).
    async fn advance<DB: SagaDb>(
        &mut self,
        ctx: &SagaContext<DB>,
        to: Stage,
        reason: Option<&str>,
    ) -> Result<(), BoxError> {
        let id = ctx.instance_id();
        let mut tx = ctx.tx().await?;
        let moved = if to == Stage::AwaitingPayment {
            DB::await_payment(&mut tx, id).await?
        } else {
            DB::transition(&mut tx, id, &[self.stage.as_str()], to.as_str(), reason).await?
        };
        if !moved {
            // The row moves only with the saga, in the same transactions.
            return Err(Box::new(crate::Error::Invariant(format!(
                "order {id} is not `{}` in the orders table, as its saga is",
                self.stage.as_str()
            ))));
        }
        self.stage = to;
        if to.is_final() {
            ctx.complete();
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl<DB: SagaDb> Handles<StockReserved, DB> for OrderSaga {
    fn correlate(e: &StockReserved) -> String {
        e.order_id.clone()
    }

    async fn handle(&mut self, ctx: &SagaContext<DB>, e: StockReserved) -> Result<(), BoxError> {
        if self.stage != Stage::Pending {
            return Ok(());
        }
        self.advance(ctx, Stage::AwaitingPayment, None).await?;
        // Comes back to this saga when due, unless payment answers first.
        let after = Duration::from_millis(self.payment_timeout_ms);
        ctx.request_timeout(
            after,
            &PaymentTimedOut {
                order_id: e.order_id,
            },
        )?;
        Ok(())
    }
}

#[async_trait::async_trait]
impl<DB: SagaDb> Handles<StockUnavailable, DB> for OrderSaga {
    fn correlate(e: &StockUnavailable) -> String {
        e.order_id.clone()
    }

    async fn handle(&mut self, ctx: &SagaContext<DB>, e: StockUnavailable) -> Result<(), BoxError> {
        let reason = format!(
            "out of stock: {} of {} wanted, {} left",
            e.requested, e.sku, e.available
        );
        self.advance(ctx, Stage::Rejected, Some(&reason)).await?;
        ctx.publish(&OrderRejected {
            order_id: e.order_id,
            reason,
        })
        .await?;
        Ok(())
    }
}

// Payment may answer before stock's event reaches us (another topic): a
// `pending` order is confirmed or cancelled as well as one awaiting payment.
// A charge for an order cancelled first finds the saga completed and is
// ignored; payment refunds it when it sees `OrderCancelled`.
#[async_trait::async_trait]
impl<DB: SagaDb> Handles<PaymentCharged, DB> for OrderSaga {
    fn correlate(e: &PaymentCharged) -> String {
        e.order_id.clone()
    }

    async fn handle(&mut self, ctx: &SagaContext<DB>, e: PaymentCharged) -> Result<(), BoxError> {
        self.advance(ctx, Stage::Confirmed, None).await?;
        ctx.publish(&OrderConfirmed {
            order_id: e.order_id,
        })
        .await?;
        Ok(())
    }
}

#[async_trait::async_trait]
impl<DB: SagaDb> Handles<PaymentDeclined, DB> for OrderSaga {
    fn correlate(e: &PaymentDeclined) -> String {
        e.order_id.clone()
    }

    async fn handle(&mut self, ctx: &SagaContext<DB>, e: PaymentDeclined) -> Result<(), BoxError> {
        let reason = format!("payment declined: {}", e.reason);
        self.advance(ctx, Stage::Cancelled, Some(&reason)).await?;
        ctx.publish(&OrderCancelled {
            order_id: e.order_id,
            reason,
        })
        .await?;
        Ok(())
    }
}

// Registered as the saga's timeout: it runs only while the instance still
// waits for this very event, so never after payment answered.
#[async_trait::async_trait]
impl<DB: SagaDb> Handles<PaymentTimedOut, DB> for OrderSaga {
    fn correlate(e: &PaymentTimedOut) -> String {
        e.order_id.clone()
    }

    async fn handle(&mut self, ctx: &SagaContext<DB>, e: PaymentTimedOut) -> Result<(), BoxError> {
        self.advance(ctx, Stage::Cancelled, Some(PAYMENT_TIMEOUT))
            .await?;
        self.timed_out_by = Some(ctx.envelope().id.clone());
        ctx.publish(&OrderCancelled {
            order_id: e.order_id,
            reason: PAYMENT_TIMEOUT.into(),
        })
        .await?;
        Ok(())
    }
}

/// The order service's settings.
#[derive(Debug, Clone)]
pub struct OrderService<DB: SagaDb> {
    /// Its database.
    pub pool: Pool<DB>,
    /// Where its events go.
    pub outbox: Outbox,
    /// Where its orders' sagas live.
    pub sagas: Sagas,
    /// How long an order waits for payment before it is cancelled.
    pub payment_timeout: Duration,
}

impl<DB: SagaDb> OrderService<DB> {
    /// The service on `pool`.
    pub fn new(pool: Pool<DB>, payment_timeout: Duration) -> Self {
        OrderService {
            pool,
            outbox: Outbox::new(SOURCE),
            sagas: Sagas::new(),
            payment_timeout,
        }
    }

    /// Places an order: the row, its saga and its `OrderPlaced` event commit
    /// together.
    pub async fn place(&self, request: PlaceOrder) -> crate::Result<OrderView> {
        if request.quantity < 1 || request.amount_cents < 1 {
            return Err(crate::Error::Usage(
                "quantity and amount_cents must be at least 1".into(),
            ));
        }
        let placed = OrderPlaced {
            order_id: uuid::Uuid::now_v7().to_string(),
            customer: request.customer,
            sku: request.sku,
            quantity: request.quantity,
            amount_cents: request.amount_cents,
        };
        let mut tx = self.pool.begin().await?;
        DB::insert_order(&mut tx, &placed).await?;
        let saga = OrderSaga::new(self.payment_timeout);
        if !self.sagas.start(&mut tx, &placed.order_id, &saga).await? {
            return Err(crate::Error::Invariant(format!(
                "order {} has a saga already",
                placed.order_id
            )));
        }
        self.outbox.publish(&mut tx, &placed).await?;
        tx.commit().await?;
        DB::order(&self.pool, &placed.order_id)
            .await?
            .ok_or_else(|| crate::Error::Invariant("a committed order vanished".into()))
    }

    /// The order saga on the service's consumer: its steps run in the
    /// consumer's transaction, with the inbox row.
    pub fn handlers(&self, builder: ConsumerBuilder<DB>) -> ConsumerBuilder<DB> {
        builder
            .outbox(self.outbox.clone())
            // Stock released / payment refunded are for other services' records.
            .unknown_types(UnknownTypes::Skip)
            .saga(OrderSaga::definition::<DB>().store(self.sagas.clone()))
    }

    /// The HTTP API: `POST /orders`, `GET /orders/{id}`.
    pub fn router(self: Arc<Self>) -> Router {
        Router::new()
            .route("/orders", post(place::<DB>))
            .route("/orders/{id}", get(show::<DB>))
            .with_state(self)
    }
}

async fn place<DB: SagaDb>(
    State(service): State<Arc<OrderService<DB>>>,
    Json(request): Json<PlaceOrder>,
) -> Result<(StatusCode, Json<OrderView>), ApiError> {
    let order = service.place(request).await?;
    Ok((StatusCode::CREATED, Json(order)))
}

async fn show<DB: SagaDb>(
    State(service): State<Arc<OrderService<DB>>>,
    Path(id): Path<String>,
) -> Result<Json<OrderView>, ApiError> {
    match DB::order(&service.pool, &id).await {
        Ok(Some(order)) => Ok(Json(order)),
        Ok(None) => Err(ApiError(StatusCode::NOT_FOUND, format!("no order {id}"))),
        Err(e) => Err(crate::Error::from(e).into()),
    }
}

/// An error answered as `{"error": "..."}` with a status code.
#[derive(Debug)]
struct ApiError(StatusCode, String);

impl From<crate::Error> for ApiError {
    fn from(e: crate::Error) -> Self {
        let status = match e {
            crate::Error::Usage(_) => StatusCode::UNPROCESSABLE_ENTITY,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError(status, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}
