//! The saga's events: what each service tells the others. Every event is keyed
//! by the order id, so all events of one order stay in order on every topic.

use eventbus::Event;
use serde::{Deserialize, Serialize};

/// Topic of the order service's events.
pub const ORDERS: &str = "orders";
/// Topic of the inventory service's events.
pub const INVENTORY: &str = "inventory";
/// Topic of the payment service's events.
pub const PAYMENTS: &str = "payments";
/// Topic of the order saga's timeouts: scheduled by the order service for
/// itself, consumed by no other service.
pub const ORDER_TIMEOUTS: &str = "order-timeouts";

/// A customer placed an order (order service).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema, Event)]
#[event(type = "com.example.saga.order.placed", version = 1, destination = "orders", key = order_id)]
pub struct OrderPlaced {
    /// The order.
    pub order_id: String,
    /// Who pays.
    pub customer: String,
    /// What is ordered.
    pub sku: String,
    /// How many.
    pub quantity: i64,
    /// The price, in cents.
    pub amount_cents: i64,
}

/// Payment went through: the order is final (order service).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema, Event)]
#[event(type = "com.example.saga.order.confirmed", version = 1, destination = "orders", key = order_id)]
pub struct OrderConfirmed {
    /// The order.
    pub order_id: String,
}

/// The order was given up after stock was reserved: payment declined or never
/// answered. Inventory releases the stock; payment refunds or voids (order
/// service).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema, Event)]
#[event(type = "com.example.saga.order.cancelled", version = 1, destination = "orders", key = order_id)]
pub struct OrderCancelled {
    /// The order.
    pub order_id: String,
    /// Why: `payment declined` or `payment timeout`.
    pub reason: String,
}

/// The order's payment did not come in time: the order saga's timeout,
/// scheduled in its own outbox when stock is reserved and delivered back to
/// the order service when due, unless the saga completed first (order
/// service, to itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema, Event)]
#[event(type = "com.example.saga.order.payment_timed_out", version = 1, destination = "order-timeouts", key = order_id)]
pub struct PaymentTimedOut {
    /// The order.
    pub order_id: String,
}

/// The order could not be served: nothing was reserved (order service).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema, Event)]
#[event(type = "com.example.saga.order.rejected", version = 1, destination = "orders", key = order_id)]
pub struct OrderRejected {
    /// The order.
    pub order_id: String,
    /// Why.
    pub reason: String,
}

/// Stock for the order is set aside (inventory service).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema, Event)]
#[event(type = "com.example.saga.stock.reserved", version = 1, destination = "inventory", key = order_id)]
pub struct StockReserved {
    /// The order.
    pub order_id: String,
    /// Who pays (copied from the order so payment needs no lookup).
    pub customer: String,
    /// The amount to charge, in cents.
    pub amount_cents: i64,
}

/// Not enough stock: nothing reserved (inventory service).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema, Event)]
#[event(type = "com.example.saga.stock.unavailable", version = 1, destination = "inventory", key = order_id)]
pub struct StockUnavailable {
    /// The order.
    pub order_id: String,
    /// The product.
    pub sku: String,
    /// How many were asked for.
    pub requested: i64,
    /// How many were left.
    pub available: i64,
}

/// A cancelled order's reservation went back on the shelf (inventory service).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema, Event)]
#[event(type = "com.example.saga.stock.released", version = 1, destination = "inventory", key = order_id)]
pub struct StockReleased {
    /// The order.
    pub order_id: String,
    /// How many came back.
    pub quantity: i64,
}

/// The customer was charged (payment service).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema, Event)]
#[event(type = "com.example.saga.payment.charged", version = 1, destination = "payments", key = order_id)]
pub struct PaymentCharged {
    /// The order.
    pub order_id: String,
    /// How much, in cents.
    pub amount_cents: i64,
}

/// The card was declined (payment service).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema, Event)]
#[event(type = "com.example.saga.payment.declined", version = 1, destination = "payments", key = order_id)]
pub struct PaymentDeclined {
    /// The order.
    pub order_id: String,
    /// The gateway's reason.
    pub reason: String,
}

/// A charge was paid back because its order was cancelled (payment service).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema, Event)]
#[event(type = "com.example.saga.payment.refunded", version = 1, destination = "payments", key = order_id)]
pub struct PaymentRefunded {
    /// The order.
    pub order_id: String,
    /// How much, in cents.
    pub amount_cents: i64,
}
