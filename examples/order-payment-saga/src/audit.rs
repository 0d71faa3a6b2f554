//! The saga's invariants, checked from the three services' databases once the
//! run is over: every order final, money charged equals confirmed orders, no
//! order charged twice, stock adds up and nothing stays reserved; and on the
//! order service's saga table: every final order's saga completed, every
//! payment-timeout cancellation made by a handled timeout, no timeout left
//! waiting for a completed saga.

use std::collections::{HashMap, HashSet};
use std::fmt;

use eventbus::saga::{Saga, SagaQuery, SagaRecord, SagaStatus, Sagas};
use sqlx::Pool;

use crate::db::SagaDb;
use crate::inventory::{Reservation, Stock};
use crate::order::{OrderSaga, OrderView, PAYMENT_TIMEOUT};
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
    /// Every instance of the order saga (read after the orders).
    pub sagas: Vec<SagaRecord>,
    /// The orders whose payment timeout waits in the order outbox's
    /// scheduled table (read after the sagas).
    pub waiting_timeouts: Vec<String>,
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
    /// Reads all three databases. Orders, then sagas, then waiting timeouts:
    /// a saga completes in the transaction that makes its order final and
    /// drops its timeouts, so the checks need no common snapshot — an order
    /// read final has its saga read completed, and a timeout read waiting
    /// cannot belong to a saga read completed.
    pub async fn snapshot(&self) -> Result<Snapshot> {
        let orders = DB::orders(&self.order).await?;
        let query = SagaQuery::new().saga(OrderSaga::NAME).limit(u32::MAX);
        let sagas = Sagas::new().list(&self.order, &query).await?;
        let waiting_timeouts = DB::waiting_payment_timeouts(&self.order).await?;
        Ok(Snapshot {
            orders,
            stock: DB::stock(&self.inventory).await?,
            reservations: DB::reservations(&self.inventory).await?,
            ledger: DB::ledger(&self.payment).await?,
            sagas,
            waiting_timeouts,
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

    /// The orders cancelled because payment did not answer in time.
    pub fn cancelled_by_timeout(&self) -> impl Iterator<Item = &OrderView> {
        self.orders
            .iter()
            .filter(|o| o.state == "cancelled" && o.reason.as_deref() == Some(PAYMENT_TIMEOUT))
    }

    /// The order sagas completed by their payment timeout: the timeout came
    /// back through the broker while the saga still waited for it.
    pub fn completed_by_timeout(&self) -> impl Iterator<Item = &SagaRecord> {
        self.sagas.iter().filter(|s| {
            s.status == SagaStatus::Completed
                && serde_json::from_value::<OrderSaga>(s.state.clone())
                    .is_ok_and(|state| state.timed_out_by.is_some())
        })
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
        checks.extend(self.saga_checks(&orders));
        checks
    }

    /// The order saga's invariants.
    fn saga_checks(&self, orders: &HashMap<&str, &OrderView>) -> Vec<Check> {
        let sagas: HashMap<&str, &SagaRecord> = self
            .sagas
            .iter()
            .map(|s| (s.instance_id.as_str(), s))
            .collect();
        let mut checks = Vec::new();

        // Sagas completed after the orders were read are left out: their
        // order was not final yet.
        let by_timeout: HashSet<&str> = self
            .completed_by_timeout()
            .map(|s| s.instance_id.as_str())
            .filter(|id| orders.get(id).is_some_and(|o| o.is_final()))
            .collect();
        let cancelled: HashSet<&str> = self.cancelled_by_timeout().map(|o| o.id.as_str()).collect();
        let not_by_timeout = cancelled.difference(&by_timeout).count();
        let not_cancelled = by_timeout.difference(&cancelled).count();
        checks.push(Check {
            name: "every payment-timeout cancellation was made by a handled saga timeout",
            ok: not_by_timeout == 0 && not_cancelled == 0,
            detail: format!(
                "{} orders cancelled for payment timeout, {} sagas completed by their timeout; \
                 {not_by_timeout} cancellations without a handled timeout, {not_cancelled} timeouts without the cancellation",
                cancelled.len(),
                by_timeout.len()
            ),
        });

        let finals: Vec<&OrderView> = self.orders.iter().filter(|o| o.is_final()).collect();
        let open = finals
            .iter()
            .filter(|o| {
                sagas
                    .get(o.id.as_str())
                    .is_none_or(|s| s.status != SagaStatus::Completed)
            })
            .count();
        checks.push(Check {
            name: "every final order's saga is completed",
            ok: open == 0,
            detail: format!(
                "{} final orders, {open} without a completed saga",
                finals.len()
            ),
        });

        let completed: Vec<&SagaRecord> = self
            .sagas
            .iter()
            .filter(|s| s.status == SagaStatus::Completed)
            .collect();
        let still_pending = completed.iter().filter(|s| !s.timeouts.is_empty()).count();
        let orphaned = self
            .waiting_timeouts
            .iter()
            .filter(|id| {
                sagas
                    .get(id.as_str())
                    .is_some_and(|s| s.status == SagaStatus::Completed)
            })
            .count();
        checks.push(Check {
            name: "no completed saga still waits for a timeout",
            ok: still_pending == 0 && orphaned == 0,
            detail: format!(
                "{} completed sagas, {still_pending} with pending timeouts; {} timeouts scheduled, {orphaned} of them for a completed saga",
                completed.len(),
                self.waiting_timeouts.len()
            ),
        });
        checks
    }

    /// Whether every invariant holds.
    pub fn holds(&self) -> bool {
        self.checks().iter().all(|c| c.ok)
    }
}
