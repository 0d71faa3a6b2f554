// Publishing a type without the derive points at the fix.
#[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
struct OrderPlaced {
    order_id: String,
}

fn needs_event<E: eventbus::Event>(_: &E) {}

fn main() {
    needs_event(&OrderPlaced {
        order_id: "o".into(),
    });
}
