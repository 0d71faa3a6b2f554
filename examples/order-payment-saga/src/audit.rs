//! The saga's invariants, checked from the three services' databases once the
//! run is over: every order final, money charged equals confirmed orders, no
//! order charged twice, stock adds up and nothing stays reserved.

use std::collections::HashMap;
use std::fmt;

use sqlx::Pool;

use crate::db::SagaDb;
use crate::inventory::{Reservation, Stock};
use crate::order::OrderView;
use crate::payment::LedgerEntry;
use crate::Result;

/// The three services' databases.
#[derive(Debug, Clone)]
pub struct Pools<DB: SagaDb> {
    /// The order service's.
    pub order: Pool<DB>,
    /// The inventory service's.
    pub inventory: Pool<DB>,
    /// The payment service's.
    pub payment: Pool<DB>,
}

/// What the databases hold at one moment.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Every order.
    pub orders: Vec<OrderView>,
    /// Every product's stock.
    pub stock: Vec<Stock>,
    /// Every reservation.
    pub reservations: Vec<Reservation>,
    /// Every money movement.
    pub ledger: Vec<LedgerEntry>,
}

/// One invariant and whether it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// What is claimed.
    pub name: &'static str,
    /// Whether it holds.
    pub ok: bool,
    /// The figures behind the verdict.
    pub detail: String,
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mark = if self.ok { "ok  " } else { "FAIL" };
        write!(f, "{mark} {}: {}", self.name, self.detail)
    }
}

impl<DB: SagaDb> Pools<DB> {
    /// Reads all three databases.
    pub async fn snapshot(&self) -> Result<Snapshot> {
        Ok(Snapshot {
            orders: DB::orders(&self.order).await?,
            stock: DB::stock(&self.inventory).await?,
            reservations: DB::reservations(&self.inventory).await?,
            ledger: DB::ledger(&self.payment).await?,
        })
    }
}

impl Snapshot {
    /// Orders not yet confirmed, cancelled or rejected.
    pub fn unfinished(&self) -> usize {
        self.orders.iter().filter(|o| !o.is_final()).count()
    }

    /// How many orders ended in `state`.
    pub fn count(&self, state: &str) -> usize {
        self.orders.iter().filter(|o| o.state == state).count()
    }

    /// Every invariant of the saga.
    pub fn checks(&self) -> Vec<Check> {
        let orders: HashMap<&str, &OrderView> =
            self.orders.iter().map(|o| (o.id.as_str(), o)).collect();
        let confirmed: Vec<&OrderView> = self
            .orders
            .iter()
            .filter(|o| o.state == "confirmed")
            .collect();
        let mut checks = Vec::new();

        let stuck: Vec<&str> = self
            .orders
            .iter()
            .filter(|o| !o.is_final())
            .map(|o| o.id.as_str())
            .collect();
        checks.push(Check {
            name: "every order is confirmed, cancelled or rejected",
            ok: stuck.is_empty() && !self.orders.is_empty(),
            detail: if stuck.is_empty() {
                format!("{} orders, none stuck", self.orders.len())
            } else {
                format!("{} stuck, e.g. {}", stuck.len(), stuck[0])
            },
        });

        let mut net: HashMap<&str, i64> = HashMap::new();
        let mut charges: HashMap<&str, u32> = HashMap::new();
        for entry in &self.ledger {
            let sign = if entry.kind == "refund" { -1 } else { 1 };
            *net.entry(entry.order_id.as_str()).or_default() += sign * entry.amount_cents;
            if entry.kind == "charge" {
                *charges.entry(entry.order_id.as_str()).or_default() += 1;
            }
        }
        let charged: i64 = net.values().sum();
        let owed: i64 = confirmed.iter().map(|o| o.amount_cents).sum();
        let wrong: Vec<&str> = net
            .iter()
            .filter(|(id, cents)| {
                let expected = orders
                    .get(*id)
                    .filter(|o| o.state == "confirmed")
                    .map_or(0, |o| o.amount_cents);
                **cents != expected
            })
            .map(|(id, _)| *id)
            .collect();
        let unpaid = confirmed
            .iter()
            .filter(|o| !net.contains_key(o.id.as_str()))
            .count();
        checks.push(Check {
            name: "money charged equals the total of confirmed orders",
            ok: charged == owed && wrong.is_empty() && unpaid == 0,
            detail: format!(
                "charged {charged} cents net, confirmed {owed} cents; {} orders with a wrong balance, {unpaid} confirmed unpaid",
                wrong.len()
            ),
        });

        let twice = charges.values().filter(|n| **n > 1).count();
        checks.push(Check {
            name: "no order is charged twice",
            ok: twice == 0,
            detail: format!(
                "{} charges, {twice} orders charged more than once",
                charges.values().sum::<u32>()
            ),
        });

        let mut sold: HashMap<&str, i64> = HashMap::new();
        for o in &confirmed {
            *sold.entry(o.sku.as_str()).or_default() += o.quantity;
        }
        let off: Vec<String> = self
            .stock
            .iter()
            .filter(|s| s.available != s.initial - sold.get(s.sku.as_str()).copied().unwrap_or(0))
            .map(|s| format!("{} has {} of {}", s.sku, s.available, s.initial))
            .collect();
        checks.push(Check {
            name: "final stock = initial − confirmed quantities",
            ok: off.is_empty() && !self.stock.is_empty(),
            detail: if off.is_empty() {
                format!("{} products add up", self.stock.len())
            } else {
                off.join(", ")
            },
        });

        let held: Vec<&str> = self
            .reservations
            .iter()
            .filter(|r| {
                let state = orders
                    .get(r.order_id.as_str())
                    .map_or("unknown", |o| o.state.as_str());
                match state {
                    "confirmed" => r.state != "sold",
                    _ => r.state != "released",
                }
            })
            .map(|r| r.order_id.as_str())
            .collect();
        checks.push(Check {
            name: "stock of cancelled orders is released, of confirmed orders sold",
            ok: held.is_empty(),
            detail: format!(
                "{} reservations, {} not settled to match their order",
                self.reservations.len(),
                held.len()
            ),
        });
        checks
    }

    /// Whether every invariant holds.
    pub fn holds(&self) -> bool {
        self.checks().iter().all(|c| c.ok)
    }
}
