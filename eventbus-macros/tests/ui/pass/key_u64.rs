use eventbus::Event;
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize, schemars::JsonSchema)]
#[event(type = "com.example.account.credited", destination = "accounts", key = account)]
struct AccountCredited {
    account: u64,
    cents: i64,
}

fn main() {
    let event = AccountCredited {
        account: 42,
        cents: 100,
    };
    assert_eq!(event.partition_key(), "42");
    assert_eq!(event.cents, 100);
}
