//! The [`Registry`] of event types: each [`EventSchema`] by type and version,
//! filled by `#[derive(Event)]` or by hand.

use std::collections::BTreeMap;

use serde_json::Value;

use super::{SchemaError, ValidationError};
use crate::Event;

/// One event type at one version: what `dataschema` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventSchema {
    event_type: String,
    version: u32,
    destination: String,
    rust_type: Option<String>,
    schema: Value,
}

impl EventSchema {
    /// The schema of `E`, as its [`Event`] implementation describes it.
    ///
    /// ```
    /// use eventbus::schema::EventSchema;
    /// # use eventbus::Event;
    /// # #[derive(Event, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
    /// # #[event(type = "com.example.order.placed", version = 2, destination = "orders", key = order_id)]
    /// # struct OrderPlaced { order_id: String }
    ///
    /// let schema = EventSchema::of::<OrderPlaced>();
    /// assert_eq!(schema.version(), 2);
    /// assert_eq!(schema.dataschema(), "urn:eventbus:schema:com.example.order.placed:v2");
    /// ```
    pub fn of<E: Event>() -> Self {
        EventSchema {
            event_type: E::TYPE.to_owned(),
            version: E::VERSION,
            destination: E::DESTINATION.to_owned(),
            rust_type: Some(std::any::type_name::<E>().to_owned()),
            schema: <E as Event>::json_schema(),
        }
    }

    /// A schema without a Rust type behind it: for events another service owns,
    /// or for tests.
    pub fn new(
        event_type: impl Into<String>,
        version: u32,
        destination: impl Into<String>,
        schema: Value,
    ) -> Self {
        EventSchema {
            event_type: event_type.into(),
            version,
            destination: destination.into(),
            rust_type: None,
            schema,
        }
    }

    /// The CloudEvents `type`.
    pub fn event_type(&self) -> &str {
        &self.event_type
    }

    /// The schema version.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The logical destination (topic or exchange).
    pub fn destination(&self) -> &str {
        &self.destination
    }

    /// The Rust type, for messages; `None` for [`EventSchema::new`]. Its exact
    /// text is [`std::any::type_name`]'s and not stable.
    pub fn rust_type(&self) -> Option<&str> {
        self.rust_type.as_deref()
    }

    /// The payload's JSON Schema.
    pub fn schema(&self) -> &Value {
        &self.schema
    }

    /// The CloudEvents `dataschema` URI that names this type and version.
    pub fn dataschema(&self) -> String {
        crate::envelope::dataschema_uri(&self.event_type, self.version)
    }

    /// Checks `payload` against this schema (see [`validate`](super::validate)
    /// for the keywords checked).
    ///
    /// # Errors
    ///
    /// [`ValidationError`] with every violation found.
    pub fn validate(&self, payload: &Value) -> Result<(), ValidationError> {
        let violations = super::validate(&self.schema, payload);
        if violations.is_empty() {
            return Ok(());
        }
        Err(ValidationError {
            event_type: self.event_type.clone(),
            version: self.version,
            violations,
        })
    }

    fn same_contract(&self, other: &EventSchema) -> bool {
        self.schema == other.schema && self.destination == other.destination
    }

    fn describe(&self) -> String {
        self.rust_type
            .clone()
            .unwrap_or_else(|| format!("a schema for {} v{}", self.event_type, self.version))
    }
}

/// The event types a program knows, each at one or more versions, keyed by
/// (type, version).
///
/// [`Registry::derived`] holds every `#[derive(Event)]` type linked into the
/// program; [`Registry::register`] adds types by hand. A registry exports its
/// schemas to a directory ([`Registry::export`]) and checks itself against one
/// ([`Registry::check`]).
///
/// Two registrations of one (type, version) must agree on schema and
/// destination; a second identical registration is ignored.
///
/// # Examples
///
/// ```
/// use eventbus::schema::Registry;
/// use eventbus::Event;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Event, Serialize, Deserialize, schemars::JsonSchema)]
/// #[event(type = "com.example.order.placed", version = 2, destination = "orders", key = order_id)]
/// struct OrderPlaced { order_id: String, amount_cents: i64 }
///
/// # fn main() -> Result<(), eventbus::schema::SchemaError> {
/// // Every derived event, narrowed to this service's own:
/// let mut registry = Registry::derived();
/// registry.retain(|e| e.event_type().starts_with("com.example.order."));
/// assert_eq!(registry.latest("com.example.order.placed").map(|e| e.version()), Some(2));
///
/// // Or by hand:
/// let mut by_hand = Registry::new();
/// by_hand.register::<OrderPlaced>()?;
/// assert_eq!(by_hand.get("com.example.order.placed", 2), registry.get("com.example.order.placed", 2));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
pub struct Registry {
    events: BTreeMap<(String, u32), EventSchema>,
    /// Derived registrations that disagree with one already held: reported by
    /// export and check, unless [`Registry::retain`] drops them first.
    conflicts: Vec<EventSchema>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Registry::default()
    }

    /// Every event type that `#[derive(Event)]` registered in this program
    /// (generic structs excepted: register those by hand).
    ///
    /// Two derived types with the same type and version but different schemas
    /// do not fail here, so that a program can [`retain`](Registry::retain) only
    /// the events it owns; [`Registry::conflict`] reports them, and export and
    /// check refuse to run while one is left.
    pub fn derived() -> Self {
        let mut all: Vec<EventSchema> = inventory::iter::<Registration>
            .into_iter()
            .map(|r| (r.schema)())
            .collect();
        // Link order is arbitrary: sort so which of two conflicting types is
        // kept does not change from build to build.
        all.sort_by(|a, b| {
            (&a.event_type, a.version, &a.rust_type).cmp(&(&b.event_type, b.version, &b.rust_type))
        });
        let mut registry = Registry::new();
        for schema in all {
            if let Err(rejected) = registry.add(schema) {
                registry.conflicts.push(rejected);
            }
        }
        registry
    }

    /// Registers `E`.
    ///
    /// # Errors
    ///
    /// [`SchemaError::Conflict`] if another schema or destination is already
    /// registered for `E::TYPE` at `E::VERSION`.
    ///
    /// # Examples
    ///
    /// ```
    /// # use eventbus::Event;
    /// # #[derive(Event, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
    /// # #[event(type = "com.example.order.placed", destination = "orders", key = order_id)]
    /// # struct OrderPlaced { order_id: String }
    /// # #[derive(Event, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
    /// # #[event(type = "com.example.order.shipped", destination = "orders", key = order_id)]
    /// # struct OrderShipped { order_id: String }
    /// let mut registry = eventbus::schema::Registry::new();
    /// registry.register::<OrderPlaced>()?.register::<OrderShipped>()?;
    /// assert_eq!(registry.len(), 2);
    /// # Ok::<(), eventbus::schema::SchemaError>(())
    /// ```
    pub fn register<E: Event>(&mut self) -> Result<&mut Self, SchemaError> {
        self.insert(EventSchema::of::<E>())
    }

    /// Registers a schema built by hand.
    ///
    /// # Errors
    ///
    /// [`SchemaError::Conflict`] as for [`Registry::register`].
    pub fn insert(&mut self, schema: EventSchema) -> Result<&mut Self, SchemaError> {
        match self.add(schema) {
            Ok(()) => Ok(self),
            Err(rejected) => Err(self.conflict_error(&rejected)),
        }
    }

    fn add(&mut self, schema: EventSchema) -> Result<(), EventSchema> {
        let key = (schema.event_type.clone(), schema.version);
        match self.events.get(&key) {
            Some(held) if held.same_contract(&schema) => Ok(()),
            Some(_) => Err(schema),
            None => {
                self.events.insert(key, schema);
                Ok(())
            }
        }
    }

    fn conflict_error(&self, rejected: &EventSchema) -> SchemaError {
        let key = (rejected.event_type.clone(), rejected.version);
        SchemaError::Conflict {
            event_type: rejected.event_type.clone(),
            version: rejected.version,
            first: self
                .events
                .get(&key)
                .map(EventSchema::describe)
                .unwrap_or_default(),
            second: rejected.describe(),
        }
    }

    /// The first conflicting registration [`Registry::derived`] found and
    /// [`Registry::retain`] kept, as the error export and check return.
    pub fn conflict(&self) -> Option<SchemaError> {
        self.conflicts.first().map(|c| self.conflict_error(c))
    }

    /// Keeps only the events `keep` accepts (conflicting registrations
    /// included).
    pub fn retain(&mut self, mut keep: impl FnMut(&EventSchema) -> bool) {
        self.events.retain(|_, e| keep(e));
        self.conflicts.retain(|e| keep(e));
    }

    /// The schema of `event_type` at `version`.
    pub fn get(&self, event_type: &str, version: u32) -> Option<&EventSchema> {
        self.events.get(&(event_type.to_owned(), version))
    }

    /// Checks `payload` against the schema of `event_type` at `version`;
    /// `None` if that (type, version) is not registered.
    ///
    /// ```
    /// use eventbus::schema::EventSchema;
    /// use serde_json::json;
    ///
    /// let mut registry = eventbus::schema::Registry::new();
    /// registry.insert(EventSchema::new("com.example.ping", 1, "pings", json!({
    ///     "type": "object", "properties": { "n": { "type": "integer" } }, "required": ["n"]
    /// })))?;
    /// assert!(matches!(registry.validate("com.example.ping", 1, &json!({ "n": 1 })), Some(Ok(()))));
    /// assert!(matches!(registry.validate("com.example.ping", 1, &json!({})), Some(Err(_))));
    /// assert!(registry.validate("com.example.ping", 2, &json!({})).is_none());
    /// # Ok::<(), eventbus::schema::SchemaError>(())
    /// ```
    pub fn validate(
        &self,
        event_type: &str,
        version: u32,
        payload: &Value,
    ) -> Option<Result<(), ValidationError>> {
        self.get(event_type, version).map(|e| e.validate(payload))
    }

    /// The highest registered version of `event_type`.
    pub fn latest(&self, event_type: &str) -> Option<&EventSchema> {
        self.versions(event_type).last()
    }

    /// Every registered version of `event_type`, oldest first.
    pub fn versions(&self, event_type: &str) -> impl Iterator<Item = &EventSchema> + '_ {
        self.events
            .range((event_type.to_owned(), 0)..=(event_type.to_owned(), u32::MAX))
            .map(|(_, e)| e)
    }

    /// Every schema, by type and then version.
    pub fn iter(&self) -> impl Iterator<Item = &EventSchema> {
        self.events.values()
    }

    /// How many (type, version) pairs are registered.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Whether nothing is registered.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
}

impl<'a> IntoIterator for &'a Registry {
    type Item = &'a EventSchema;
    type IntoIter = std::collections::btree_map::Values<'a, (String, u32), EventSchema>;

    fn into_iter(self) -> Self::IntoIter {
        self.events.values()
    }
}

/// One `#[derive(Event)]` type, submitted to the distributed registry by the
/// generated code. Not public API.
#[doc(hidden)]
#[derive(Debug)]
pub struct Registration {
    schema: fn() -> EventSchema,
}

impl Registration {
    /// The registration of `E`. Not public API.
    #[doc(hidden)]
    pub const fn of<E: Event>() -> Self {
        Registration {
            schema: EventSchema::of::<E>,
        }
    }
}

inventory::collect!(Registration);
