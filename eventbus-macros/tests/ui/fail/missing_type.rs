use eventbus::Event;
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize, schemars::JsonSchema)]
#[event(destination = "orders", key = order_id)]
struct OrderPlaced {
    order_id: String,
}

fn main() {}
