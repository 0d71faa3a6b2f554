// A saga's state is stored as JSON: it must serialize.
use eventbus::saga::Saga;
use serde::Deserialize;

#[derive(Deserialize)]
struct Checkout {
    paid: bool,
}

impl Saga for Checkout {
    const NAME: &'static str = "checkout";
}

fn main() {}
