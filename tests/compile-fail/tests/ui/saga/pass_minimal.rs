// A saga started by one event, moved on by another, with a timeout: what
// the fail_* cases get wrong, done right.
use std::time::Duration;

use eventbus::saga::{Handles, Saga, SagaContext, SagaDatabase, SagaDefinition, StartedBy};
use eventbus::{BoxError, Event};
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize, schemars::JsonSchema)]
#[event(type = "com.example.order.placed", destination = "orders", key = order_id)]
struct OrderPlaced {
    order_id: String,
}

#[derive(Event, Serialize, Deserialize, schemars::JsonSchema)]
#[event(type = "com.example.payment.charged", destination = "payments", key = order_id)]
struct PaymentCharged {
    order_id: String,
}

#[derive(Event, Serialize, Deserialize, schemars::JsonSchema)]
#[event(type = "com.example.order.payment_due", destination = "order-timeouts", key = order_id)]
struct PaymentDue {
    order_id: String,
}

#[derive(Serialize, Deserialize)]
struct Checkout {
    paid: bool,
}

impl Saga for Checkout {
    const NAME: &'static str = "checkout";
}

#[eventbus::saga::async_trait]
impl<DB: SagaDatabase> StartedBy<OrderPlaced, DB> for Checkout {
    fn correlate(event: &OrderPlaced) -> String {
        event.order_id.clone()
    }

    async fn start(ctx: &SagaContext<DB>, event: OrderPlaced) -> Result<Self, BoxError> {
        let due = PaymentDue {
            order_id: event.order_id,
        };
        ctx.request_timeout(Duration::from_secs(900), &due)?;
        Ok(Checkout { paid: false })
    }
}

#[eventbus::saga::async_trait]
impl<DB: SagaDatabase> Handles<PaymentCharged, DB> for Checkout {
    fn correlate(event: &PaymentCharged) -> String {
        event.order_id.clone()
    }

    async fn handle(&mut self, ctx: &SagaContext<DB>, _: PaymentCharged) -> Result<(), BoxError> {
        self.paid = true;
        ctx.complete();
        Ok(())
    }
}

#[eventbus::saga::async_trait]
impl<DB: SagaDatabase> Handles<PaymentDue, DB> for Checkout {
    fn correlate(event: &PaymentDue) -> String {
        event.order_id.clone()
    }

    async fn handle(&mut self, ctx: &SagaContext<DB>, _: PaymentDue) -> Result<(), BoxError> {
        ctx.complete();
        Ok(())
    }
}

// Generic over the database: the case builds whichever backend features are on.
#[allow(dead_code)]
fn checkout<DB: SagaDatabase>() -> SagaDefinition<Checkout, DB> {
    SagaDefinition::new()
        .starts::<OrderPlaced>()
        .handles::<PaymentCharged>()
        .timeout::<PaymentDue>()
}

fn main() {}
