//! The transactional outbox: [`Outbox::publish`] writes events into the outbox
//! table inside the caller's database transaction.
//!
//! The relay later forwards committed rows to the broker. The table layout is a
//! public contract, described in `docs/outbox-table.md`.

mod record;
pub mod schedule;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::envelope::Envelope;
use crate::error::{Error, Result};
use crate::event::Event;
use crate::table::TableName;

pub use record::OutboxRecord;
pub use schedule::{ScheduledDatabase, ScheduledStats, SCHEDULED_SUFFIX};

/// The default outbox table name.
pub const DEFAULT_TABLE: &str = "eventbus_outbox";

/// The default limit on one event's serialized payload: 1 MiB, Kafka's default
/// `message.max.bytes` less room for headers.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 1_000_000;

/// Writes events into the outbox table within a caller's transaction.
///
/// ```no_run
/// # #[cfg(feature = "postgres")]
/// # async fn demo(pool: sqlx::PgPool) -> eventbus::Result<()> {
/// use eventbus::{Event, Outbox};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Event, Serialize, Deserialize, schemars::JsonSchema)]
/// #[event(type = "com.example.order.placed", destination = "orders", key = order_id)]
/// struct OrderPlaced { order_id: String, amount_cents: i64 }
///
/// let outbox = Outbox::new("urn:service:orders");
/// let mut tx = pool.begin().await?;
/// sqlx::query("INSERT INTO orders (id, amount_cents) VALUES ($1, $2)")
///     .bind("o-1").bind(1250_i64)
///     .execute(&mut *tx).await?;
/// outbox.publish(&mut tx, &OrderPlaced { order_id: "o-1".into(), amount_cents: 1250 }).await?;
/// tx.commit().await?; // the order and its event exist together, or neither does
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Outbox {
    table: TableName,
    source: String,
    max_event_bytes: usize,
    validate_payloads: bool,
}

/// Correlation, causation and trace context attached to an event when it is
/// published.
///
/// ```
/// use eventbus::{Envelope, Metadata};
///
/// let incoming = Envelope::new("urn:svc:a", "com.example.order.placed", b"{}".to_vec());
/// let meta = Metadata::caused_by(&incoming);
/// assert_eq!(meta.causation_id.as_deref(), Some(incoming.id.as_str()));
/// assert_eq!(meta.correlation_id.as_deref(), Some(incoming.id.as_str()));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metadata {
    /// Shared by every event of one business flow.
    pub correlation_id: Option<String>,
    /// The id of the event that caused this one.
    pub causation_id: Option<String>,
    /// W3C `traceparent` of the publishing span.
    pub traceparent: Option<String>,
    /// W3C `tracestate` of the publishing span.
    pub tracestate: Option<String>,
    /// Further CloudEvents extension attributes.
    pub extensions: BTreeMap<String, String>,
}

impl Metadata {
    /// Metadata for an event caused by `incoming`: same correlation id (or the
    /// incoming id when it had none), causation id = incoming id, same trace.
    pub fn caused_by(incoming: &Envelope) -> Self {
        Metadata {
            correlation_id: Some(
                incoming
                    .correlation_id
                    .clone()
                    .unwrap_or_else(|| incoming.id.clone()),
            ),
            causation_id: Some(incoming.id.clone()),
            traceparent: incoming.traceparent.clone(),
            tracestate: incoming.tracestate.clone(),
            extensions: BTreeMap::new(),
        }
    }
}

/// One row to insert into the outbox: what [`Outbox::publish`] derives from a
/// typed event, or what [`Outbox::publish_entries`] takes directly.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxEntry {
    /// The event id (CloudEvents `id`).
    pub event_id: Uuid,
    /// CloudEvents `source`; `None` takes the source of the [`Outbox`] that
    /// writes the entry.
    pub source: Option<String>,
    /// Logical destination (topic / exchange).
    pub destination: String,
    /// Ordering key.
    pub partition_key: String,
    /// CloudEvents `type`.
    pub event_type: String,
    /// Schema version of the payload.
    pub schema_version: i32,
    /// CloudEvents `subject`.
    pub subject: Option<String>,
    /// Other CloudEvents attributes and extensions, as a JSON object of strings.
    pub headers: Value,
    /// The JSON payload, serialized.
    pub payload: String,
    /// CloudEvents `time`.
    pub created_at: DateTime<Utc>,
}

/// A database the outbox can write to. Implemented for each compiled-in backend.
#[async_trait::async_trait]
pub trait OutboxDatabase: sqlx::Database {
    /// Whether the database itself wakes relays when a transaction that
    /// wrote to the outbox commits (PostgreSQL's `NOTIFY`). Where it does
    /// not, a write through [`Outbox`] wakes the relays of this process
    /// instead ([`RelayConfig::in_process_wakeups`](crate::relay::RelayConfig::in_process_wakeups)).
    const NOTIFIES_RELAYS: bool = false;

    /// Inserts `entries` into `table` with one statement, on `conn`.
    async fn insert_entries(
        conn: &mut Self::Connection,
        table: &TableName,
        entries: &[OutboxEntry],
    ) -> Result<()>;
}

impl Outbox {
    /// An outbox of the service named `source`, writing to the default table
    /// `eventbus_outbox`.
    ///
    /// `source` is the CloudEvents `source` of every event it writes: a URI
    /// reference naming this service, such as `urn:service:orders`. It is
    /// stored in each row, so the event leaves under it whichever relay
    /// sends it. Keep it stable: together with the event id it identifies
    /// the event (`docs/adr/0007-event-source-and-inbox-key.md`). An empty
    /// source makes every publish fail with [`Error::Config`].
    pub fn new(source: impl Into<String>) -> Self {
        Outbox {
            table: default_table(),
            source: source.into(),
            max_event_bytes: DEFAULT_MAX_EVENT_BYTES,
            validate_payloads: cfg!(debug_assertions),
        }
    }

    /// The CloudEvents `source` this outbox writes.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Uses another table (validated; `schema.table` allowed).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for an invalid name.
    pub fn table(mut self, table: &str) -> Result<Self> {
        self.table = TableName::parse(table)?;
        Ok(self)
    }

    /// Sets the largest serialized payload [`publish`](Self::publish) accepts.
    /// Match it to the broker's limit (Kafka `message.max.bytes`, RabbitMQ
    /// `max_message_size`).
    pub fn max_event_bytes(mut self, limit: usize) -> Self {
        self.max_event_bytes = limit;
        self
    }

    /// Whether [`publish`](Self::publish) (and every typed publish) checks
    /// each payload against its event's JSON Schema before writing it.
    /// Default: on in debug builds (`cfg!(debug_assertions)`), off in release
    /// builds, where the check would cost every publish a parse of the
    /// payload for what tests already catch.
    ///
    /// It catches what the compiler cannot: a custom `Serialize` or
    /// `#[serde(serialize_with)]` that writes something else than the schema
    /// says, or a value outside `#[schemars(range(...))]`/`length(...)`
    /// constraints. [`publish_entries`](Self::publish_entries) writes
    /// prepared entries as they are. See [`schema::validate`](crate::schema::validate)
    /// for the keywords checked.
    ///
    /// ```
    /// use eventbus::{Error, Event, Outbox, Metadata};
    /// use serde::{Deserialize, Serialize};
    ///
    /// #[derive(Event, Serialize, Deserialize, schemars::JsonSchema)]
    /// #[event(type = "com.example.seat.booked", destination = "seats", key = seat)]
    /// struct SeatBooked {
    ///     seat: String,
    ///     #[schemars(range(min = 1, max = 8))]
    ///     passengers: u8,
    /// }
    ///
    /// let outbox = Outbox::new("urn:service:seats").validate_payloads(true);
    /// let err = outbox
    ///     .entry(&SeatBooked { seat: "12A".into(), passengers: 9 }, &Metadata::default())
    ///     .unwrap_err();
    /// assert!(matches!(err, Error::InvalidPayload(_)));
    /// assert_eq!(
    ///     err.to_string(),
    ///     "payload of event `com.example.seat.booked` v1 does not match its schema: \
    ///      $.passengers: 9 is more than the maximum 8"
    /// );
    /// ```
    pub fn validate_payloads(mut self, on: bool) -> Self {
        self.validate_payloads = on;
        self
    }

    /// The table this outbox writes to.
    pub fn table_name(&self) -> &TableName {
        &self.table
    }

    /// Writes `event` into the outbox inside `tx`. It becomes visible to the relay
    /// when `tx` commits and disappears if `tx` rolls back. Returns the event id.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # #[cfg(feature = "postgres")]
    /// # async fn demo(pool: sqlx::PgPool) -> eventbus::Result<()> {
    /// # use serde::{Deserialize, Serialize};
    /// #[derive(eventbus::Event, Serialize, Deserialize, schemars::JsonSchema)]
    /// #[event(type = "com.example.stock.reserved", destination = "stock", key = sku)]
    /// struct StockReserved { sku: String, quantity: u32 }
    ///
    /// let outbox = eventbus::Outbox::new("urn:service:inventory");
    /// let mut tx = pool.begin().await?;
    /// let id = outbox.publish(&mut tx, &StockReserved { sku: "a-1".into(), quantity: 2 }).await?;
    /// tx.commit().await?;
    /// println!("event {id} will be relayed");
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Serialize`] if the event does not serialize,
    /// [`Error::InvalidPayload`] if it does not match its schema (when
    /// [validating](Self::validate_payloads); nothing is written),
    /// [`Error::EventTooLarge`] above the size limit, [`Error::Config`] for an
    /// empty source, [`Error::NotMigrated`] if the table is missing, or
    /// [`Error::Database`].
    pub async fn publish<DB, E>(
        &self,
        tx: &mut sqlx::Transaction<'_, DB>,
        event: &E,
    ) -> Result<Uuid>
    where
        DB: OutboxDatabase,
        E: Event,
    {
        self.publish_with(tx, event, &Metadata::default()).await
    }

    /// Like [`publish`](Self::publish), with correlation, causation and trace
    /// context.
    ///
    /// With the `otel` feature, every publish runs in a `publish` span (see
    /// [`crate::telemetry`]): a child of `meta.traceparent` when set, else of
    /// the caller's active OpenTelemetry context; the span's context is what
    /// the row stores. Without it, `meta`'s trace context is stored as given.
    ///
    /// # Errors
    ///
    /// As for [`publish`](Self::publish).
    pub async fn publish_with<DB, E>(
        &self,
        tx: &mut sqlx::Transaction<'_, DB>,
        event: &E,
        meta: &Metadata,
    ) -> Result<Uuid>
    where
        DB: OutboxDatabase,
        E: Event,
    {
        let entry = self.entry(event, meta)?;
        let id = entry.event_id;
        self.insert_traced(tx, std::slice::from_ref(&entry)).await?;
        Ok(id)
    }

    /// Writes many events with one statement inside `tx`. Returns their ids in order.
    ///
    /// # Errors
    ///
    /// As for [`publish`](Self::publish); nothing is written if any event fails.
    pub async fn publish_all<'e, DB, E>(
        &self,
        tx: &mut sqlx::Transaction<'_, DB>,
        events: impl IntoIterator<Item = &'e E>,
        meta: &Metadata,
    ) -> Result<Vec<Uuid>>
    where
        DB: OutboxDatabase,
        E: Event,
    {
        let entries = events
            .into_iter()
            .map(|e| self.entry(e, meta))
            .collect::<Result<Vec<_>>>()?;
        self.publish_entries(tx, &entries).await?;
        Ok(entries.iter().map(|e| e.event_id).collect())
    }

    /// Writes prepared entries (of any event types) with one statement inside `tx`.
    /// An entry without a `source` is written with this outbox's.
    ///
    /// # Errors
    ///
    /// [`Error::EventTooLarge`], [`Error::Config`] for an empty source,
    /// [`Error::NotMigrated`] or [`Error::Database`].
    pub async fn publish_entries<DB>(
        &self,
        tx: &mut sqlx::Transaction<'_, DB>,
        entries: &[OutboxEntry],
    ) -> Result<()>
    where
        DB: OutboxDatabase,
    {
        let entries = self.sourced(entries)?;
        if entries.is_empty() {
            return Ok(());
        }
        self.insert_traced(tx, &entries).await
    }

    /// `entries` checked for size, each with a source (this outbox's where
    /// it has none).
    fn sourced<'e>(
        &self,
        entries: &'e [OutboxEntry],
    ) -> Result<std::borrow::Cow<'e, [OutboxEntry]>> {
        for entry in entries {
            self.check_size(&entry.event_type, entry.payload.len())?;
        }
        if entries.iter().all(|e| e.source.is_some()) {
            return Ok(std::borrow::Cow::Borrowed(entries));
        }
        let source = self.checked_source()?;
        Ok(entries
            .iter()
            .map(|e| OutboxEntry {
                source: e.source.clone().or_else(|| Some(source.to_owned())),
                ..e.clone()
            })
            .collect())
    }

    /// Inserts `entries` inside a `publish` span per event, whose trace
    /// context (with the `otel` feature) is what the rows store.
    async fn insert_traced<DB>(
        &self,
        tx: &mut sqlx::Transaction<'_, DB>,
        entries: &[OutboxEntry],
    ) -> Result<()>
    where
        DB: OutboxDatabase,
    {
        let (entries, spans) = crate::telemetry::span::publish_spans(&self.table, entries);
        let result = DB::insert_entries(&mut **tx, &self.table, &entries).await;
        if result.is_ok() && !DB::NOTIFIES_RELAYS {
            crate::relay::written(&self.table);
        }
        for span in spans {
            if let Err(e) = &result {
                span.fail("database", &e.to_string());
            }
            span.end();
        }
        result
    }

    /// Builds the outbox row for a typed event.
    ///
    /// # Errors
    ///
    /// [`Error::Serialize`], [`Error::InvalidPayload`] (when
    /// [validating](Self::validate_payloads)), [`Error::EventTooLarge`], or
    /// [`Error::Config`] for an empty source.
    pub fn entry<E: Event>(&self, event: &E, meta: &Metadata) -> Result<OutboxEntry> {
        let source = self.checked_source()?;
        let payload = serde_json::to_string(event).map_err(|source| Error::Serialize {
            event_type: E::TYPE.to_owned(),
            source,
        })?;
        self.check_size(E::TYPE, payload.len())?;
        if self.validate_payloads {
            crate::schema::check_event::<E>(&payload)?;
        }
        let mut headers = Map::new();
        let mut put = |name: &str, value: &Option<String>| {
            if let Some(v) = value {
                headers.insert(name.to_owned(), Value::String(v.clone()));
            }
        };
        put("correlationid", &meta.correlation_id);
        put("causationid", &meta.causation_id);
        put("traceparent", &meta.traceparent);
        put("tracestate", &meta.tracestate);
        for (k, v) in &meta.extensions {
            headers.insert(k.clone(), Value::String(v.clone()));
        }
        Ok(OutboxEntry {
            event_id: Uuid::now_v7(),
            source: Some(source.to_owned()),
            destination: E::DESTINATION.to_owned(),
            partition_key: event.partition_key(),
            event_type: E::TYPE.to_owned(),
            schema_version: i32::try_from(E::VERSION).unwrap_or(i32::MAX),
            subject: event.subject(),
            headers: Value::Object(headers),
            payload,
            created_at: Utc::now(),
        })
    }

    /// The source, refused when empty: CloudEvents requires one.
    fn checked_source(&self) -> Result<&str> {
        if self.source.is_empty() {
            return Err(Error::config(
                "the outbox source must not be empty: Outbox::new(\"urn:service:<name>\")",
            ));
        }
        Ok(&self.source)
    }

    fn check_size(&self, event_type: &str, size: usize) -> Result<()> {
        if size > self.max_event_bytes {
            return Err(Error::EventTooLarge {
                event_type: event_type.to_owned(),
                size,
                limit: self.max_event_bytes,
            });
        }
        Ok(())
    }
}

pub(crate) fn default_table() -> TableName {
    TableName::from_static(DEFAULT_TABLE)
}

impl TableName {
    /// The default outbox table, `eventbus_outbox` ([`DEFAULT_TABLE`]).
    pub fn default_outbox() -> Self {
        default_table()
    }
}
