//! The order service: takes orders over HTTP, and drives each one to a final
//! state from what inventory and payment say — confirmed, cancelled (payment
//! declined or timed out, with compensation) or rejected (out of stock).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use eventbus::consumer::{ConsumerBuilder, Context, UnknownTypes};
use eventbus::{BoxError, Outbox};
use serde::{Deserialize, Serialize};
use sqlx::{Pool, Transaction};

use crate::db::{for_each_database, Dialect, SagaDb};
use crate::events::{
    OrderCancelled, OrderConfirmed, OrderPlaced, OrderRejected, PaymentCharged, PaymentDeclined,
    StockReserved, StockUnavailable,
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
    /// Starts the payment clock of a `pending` order.
    async fn await_payment(
        tx: &mut Transaction<'static, Self>,
        id: &str,
        deadline_ms: i64,
    ) -> sqlx::Result<bool>;
    /// Orders waiting for payment past their deadline.
    async fn overdue(pool: &Pool<Self>, now_ms: i64) -> sqlx::Result<Vec<String>>;
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
                // MySQL indexes only bounded text, and creates indexes with
                // the table (it has no `CREATE INDEX IF NOT EXISTS`).
                let index = match $dialect {
                    Dialect::MySql => ", KEY orders_awaiting (state, deadline_ms)",
                    Dialect::Postgres | Dialect::Sqlite => "",
                };
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "CREATE TABLE IF NOT EXISTS orders (
                        id             VARCHAR(255) PRIMARY KEY,
                        customer       TEXT NOT NULL,
                        sku            TEXT NOT NULL,
                        quantity       BIGINT NOT NULL,
                        amount_cents   BIGINT NOT NULL,
                        state          VARCHAR(32) NOT NULL,
                        reason         TEXT,
                        placed_at_ms   BIGINT NOT NULL,
                        deadline_ms    BIGINT,
                        finished_at_ms BIGINT{index})",
                )))
                .execute(pool)
                .await?;
                if $dialect != Dialect::MySql {
                    sqlx::query("CREATE INDEX IF NOT EXISTS orders_awaiting ON orders (state, deadline_ms)")
                        .execute(pool)
                        .await?;
                }
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

            async fn await_payment(tx: &mut Transaction<'static, Self>, id: &str, deadline_ms: i64) -> sqlx::Result<bool> {
                let done = sqlx::query($dialect.sql(
                    "UPDATE orders SET state = 'awaiting_payment', deadline_ms = $1
                     WHERE id = $2 AND state = 'pending'",
                ))
                .bind(deadline_ms)
                .bind(id)
                .execute(&mut **tx)
                .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn overdue(pool: &Pool<Self>, now_ms: i64) -> sqlx::Result<Vec<String>> {
                sqlx::query_scalar($dialect.sql(
                    "SELECT id FROM orders WHERE state = 'awaiting_payment' AND deadline_ms < $1",
                ))
                .bind(now_ms)
                .fetch_all(pool)
                .await
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

/// The order service's settings.
#[derive(Debug, Clone)]
pub struct OrderService<DB: SagaDb> {
    /// Its database.
    pub pool: Pool<DB>,
    /// Where its events go.
    pub outbox: Outbox,
    /// How long an order waits for payment before it is cancelled.
    pub payment_timeout: Duration,
}

impl<DB: SagaDb> OrderService<DB> {
    /// The service on `pool`.
    pub fn new(pool: Pool<DB>, payment_timeout: Duration) -> Self {
        OrderService {
            pool,
            outbox: Outbox::new(SOURCE),
            payment_timeout,
        }
    }

    /// Places an order: the row and its `OrderPlaced` event commit together.
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
        self.outbox.publish(&mut tx, &placed).await?;
        tx.commit().await?;
        DB::order(&self.pool, &placed.order_id)
            .await?
            .ok_or_else(|| crate::Error::Invariant("a committed order vanished".into()))
    }

    /// The handlers that move orders on, for the service's consumer.
    pub fn handlers(&self, builder: ConsumerBuilder<DB>) -> ConsumerBuilder<DB> {
        let timeout = i64::try_from(self.payment_timeout.as_millis()).unwrap_or(i64::MAX);
        builder
            .outbox(self.outbox.clone())
            // Stock released / payment refunded are for other services' records.
            .unknown_types(UnknownTypes::Skip)
            .on(move |ctx: Context<DB>, e: StockReserved| async move {
                let mut tx = ctx.tx().await?;
                DB::await_payment(&mut tx, &e.order_id, now_ms().saturating_add(timeout)).await?;
                Ok::<_, BoxError>(())
            })
            .on(|ctx: Context<DB>, e: StockUnavailable| async move {
                let reason = format!(
                    "out of stock: {} of {} wanted, {} left",
                    e.requested, e.sku, e.available
                );
                if finish(&ctx, &e.order_id, &["pending"], "rejected", &reason).await? {
                    ctx.publish(&OrderRejected {
                        order_id: e.order_id,
                        reason,
                    })
                    .await?;
                }
                Ok(())
            })
            // Payment may answer before stock's event reaches us (another
            // topic): `pending` confirms as well as `awaiting_payment`.
            .on(|ctx: Context<DB>, e: PaymentCharged| async move {
                if finish(
                    &ctx,
                    &e.order_id,
                    &["pending", "awaiting_payment"],
                    "confirmed",
                    "",
                )
                .await?
                {
                    ctx.publish(&OrderConfirmed {
                        order_id: e.order_id,
                    })
                    .await?;
                }
                // A charge for an order already cancelled is refunded by payment
                // when it sees OrderCancelled.
                Ok(())
            })
            .on(|ctx: Context<DB>, e: PaymentDeclined| async move {
                let reason = format!("payment declined: {}", e.reason);
                if finish(
                    &ctx,
                    &e.order_id,
                    &["pending", "awaiting_payment"],
                    "cancelled",
                    &reason,
                )
                .await?
                {
                    ctx.publish(&OrderCancelled {
                        order_id: e.order_id,
                        reason,
                    })
                    .await?;
                }
                Ok(())
            })
    }

    /// Cancels orders whose payment did not come in time, until `shutdown`.
    pub async fn expire_unpaid(&self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            if let Err(e) = self.expire_once().await {
                tracing::warn!(error = %e, "expiring unpaid orders failed; trying again");
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
                () = &mut shutdown => return,
            }
        }
    }

    async fn expire_once(&self) -> crate::Result<()> {
        for id in DB::overdue(&self.pool, now_ms()).await? {
            let mut tx = self.pool.begin().await?;
            let reason = "payment timeout";
            if DB::transition(
                &mut tx,
                &id,
                &["awaiting_payment"],
                "cancelled",
                Some(reason),
            )
            .await?
            {
                let cancelled = OrderCancelled {
                    order_id: id,
                    reason: reason.into(),
                };
                self.outbox.publish(&mut tx, &cancelled).await?;
            }
            tx.commit().await?;
        }
        Ok(())
    }

    /// The HTTP API: `POST /orders`, `GET /orders/{id}`.
    pub fn router(self: Arc<Self>) -> Router {
        Router::new()
            .route("/orders", post(place::<DB>))
            .route("/orders/{id}", get(show::<DB>))
            .with_state(self)
    }
}

/// Moves the order in the handler's transaction; whether it moved.
async fn finish<DB: SagaDb>(
    ctx: &Context<DB>,
    id: &str,
    from: &[&str],
    to: &str,
    reason: &str,
) -> Result<bool, BoxError> {
    let mut tx = ctx.tx().await?;
    let reason = (!reason.is_empty()).then_some(reason);
    Ok(DB::transition(&mut tx, id, from, to, reason).await?)
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
