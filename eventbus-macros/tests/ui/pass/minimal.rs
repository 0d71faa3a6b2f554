use eventbus::Event;
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize, schemars::JsonSchema)]
#[event(type = "com.example.order.placed", version = 3, destination = "orders", key = order_id)]
struct OrderPlaced {
    order_id: String,
    amount_cents: i64,
}

fn main() {
    let event = OrderPlaced {
        order_id: "o-1".into(),
        amount_cents: 5,
    };
    assert_eq!(OrderPlaced::TYPE, "com.example.order.placed");
    assert_eq!(OrderPlaced::VERSION, 3);
    assert_eq!(OrderPlaced::DESTINATION, "orders");
    assert_eq!(event.partition_key(), "o-1");
    assert_eq!(event.subject().as_deref(), Some("o-1"));
    assert_eq!(
        OrderPlaced::dataschema(),
        "urn:eventbus:schema:com.example.order.placed:v3"
    );
    assert_eq!(event.amount_cents, 5);
}
