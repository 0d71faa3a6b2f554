use eventbus::Event;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, schemars::JsonSchema)]
struct OrderId {
    value: String,
}

#[derive(Event, Serialize, Deserialize, schemars::JsonSchema)]
#[event(type = "com.example.order.placed", destination = "orders", key = order_id)]
struct OrderPlaced {
    order_id: OrderId,
}

fn main() {}
