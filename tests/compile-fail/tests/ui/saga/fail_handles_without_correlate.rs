// A handler must say which instance its event belongs to.
use eventbus::saga::{Handles, Saga, SagaContext, SagaDatabase};
use eventbus::{BoxError, Event};
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize, schemars::JsonSchema)]
#[event(type = "com.example.payment.charged", destination = "payments", key = order_id)]
struct PaymentCharged {
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
impl<DB: SagaDatabase> Handles<PaymentCharged, DB> for Checkout {
    async fn handle(&mut self, _: &SagaContext<DB>, _: PaymentCharged) -> Result<(), BoxError> {
        self.paid = true;
        Ok(())
    }
}

fn main() {}
