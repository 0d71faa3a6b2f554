use eventbus::Event;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Event, Serialize, Deserialize, schemars::JsonSchema)]
#[event(type = "com.example.payment.captured", version = 2, destination = "payments", key = payment_id)]
struct PaymentCaptured {
    #[schemars(with = "String")]
    payment_id: Uuid,
    cents: i64,
}

fn main() {
    let id = Uuid::now_v7();
    let event = PaymentCaptured {
        payment_id: id,
        cents: 1,
    };
    assert_eq!(event.partition_key(), id.to_string());
    assert_eq!(event.cents, 1);
}
