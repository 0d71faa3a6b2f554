// The attributes may be spread over several `#[event]` lines.
use eventbus::Event;
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize, schemars::JsonSchema)]
#[event(type = "com.example.order.shipped", version = 2)]
#[event(destination = "orders", key = order_id)]
struct OrderShipped {
    order_id: String,
}

fn main() {
    assert_eq!(OrderShipped::TYPE, "com.example.order.shipped");
    assert_eq!(OrderShipped::VERSION, 2);
    assert_eq!(OrderShipped::DESTINATION, "orders");
    assert_eq!(
        OrderShipped {
            order_id: "o".into()
        }
        .partition_key(),
        "o"
    );
}
