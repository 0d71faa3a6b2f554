// A timeout comes back through the broker: its type must be an event.
use eventbus::saga::{Saga, SagaDatabase, SagaDefinition};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, schemars::JsonSchema)]
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

fn checkout<DB: SagaDatabase>() -> SagaDefinition<Checkout, DB> {
    SagaDefinition::<Checkout, DB>::new().timeout::<PaymentDue>()
}

fn main() {}
