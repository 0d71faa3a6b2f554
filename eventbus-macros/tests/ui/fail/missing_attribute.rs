use eventbus::Event;
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize, schemars::JsonSchema)]
struct OrderPlaced {
    order_id: String,
}

fn main() {}
