// A saga's state is read back from JSON: it must deserialize.
use eventbus::saga::Saga;
use serde::Serialize;

#[derive(Serialize)]
struct Checkout {
    paid: bool,
}

impl Saga for Checkout {
    const NAME: &'static str = "checkout";
}

fn main() {}
