//! Procedural macros for `eventbus`. Use them through the `eventbus` crate, which
//! re-exports [`macro@Event`] behind its `macros` feature.

mod event;

use proc_macro::TokenStream;

/// Derives `eventbus::Event` for a struct with named fields.
///
/// ```ignore
/// #[derive(Event, Serialize, Deserialize, JsonSchema)]
/// #[event(type = "order.placed", version = 2, destination = "orders", key = order_id)]
/// struct OrderPlaced { order_id: Uuid, amount_cents: i64 }
/// ```
///
/// Attributes:
/// - `type` (required): the CloudEvents `type`, e.g. `"com.example.order.placed"`.
/// - `destination` (required): the logical destination (Kafka topic, RabbitMQ exchange).
/// - `key` (required): the field whose value is the ordering (partition) key.
/// - `version` (optional, default `1`): the schema version, a positive integer.
/// - `crate` (optional): path to the `eventbus` crate if it was renamed.
///
/// A non-generic event also joins `eventbus::schema::Registry::derived()`, the
/// registry that schema export and check use.
#[proc_macro_derive(Event, attributes(event))]
pub fn derive_event(input: TokenStream) -> TokenStream {
    let input = syn::parse_macro_input!(input as syn::DeriveInput);
    event::expand(&input)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}
