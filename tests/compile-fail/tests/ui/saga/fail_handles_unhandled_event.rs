// An event registered with `handles` needs the saga's handler for it.
use eventbus::saga::{Saga, SagaDatabase, SagaDefinition};
use eventbus::Event;
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

fn checkout<DB: SagaDatabase>() -> SagaDefinition<Checkout, DB> {
    SagaDefinition::<Checkout, DB>::new().handles::<PaymentCharged>()
}

fn main() {}
