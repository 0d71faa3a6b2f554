use eventbus::Event;
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize, schemars::JsonSchema)]
#[event(type = "com.example.order.placed", destination = "orders", key = order)]
struct OrderPlaced {
    order_id: String,
}

fn main() {}
