use eventbus::Event;
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize, schemars::JsonSchema)]
#[event(type = "com.example.user.renamed", destination = "users", key = user_id)]
struct UserRenamed {
    user_id: String,
    name: String,
}

fn main() {
    assert_eq!(UserRenamed::VERSION, 1);
    assert!(UserRenamed::dataschema().ends_with(":v1"));
    let event = UserRenamed {
        user_id: "u-1".into(),
        name: "Ada".into(),
    };
    assert_eq!(event.partition_key(), "u-1");
    assert_eq!(event.name, "Ada");
}
