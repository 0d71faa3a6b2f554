use eventbus::Event;
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize, schemars::JsonSchema)]
#[event(type = "com.example.order.changed", destination = "orders", key = order_id)]
enum OrderChanged {
    Placed { order_id: String },
    Cancelled { order_id: String },
}

fn main() {}
