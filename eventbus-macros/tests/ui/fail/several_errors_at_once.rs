// Every problem is reported in one compile, not one per attempt.
use eventbus::Event;
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize, schemars::JsonSchema)]
#[event(type = "", version = 0, destination = "orders", key = missing)]
struct OrderPlaced {
    order_id: String,
}

fn main() {}
