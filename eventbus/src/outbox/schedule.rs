//! Scheduled messages: events written in the caller's transaction to be
//! published at or after a point in time, and cancelled in a transaction
//! while they wait.
//!
//! A scheduled event waits in the outbox's scheduled table
//! (`<outbox>_scheduled`, created by the migrations). When it is due, the
//! relay moves it into the outbox in one transaction (inserted, then deleted
//! from the scheduled table), and from there it is relayed like any event:
//! **it takes its place in its key's commit order when it comes due**, as if
//! it had been published at that moment. So the events of its key published
//! before it came due go before it, those published after go after it, and
//! scheduled events of one key due at the same time keep the order they
//! were scheduled in. Cancelling deletes the waiting row; once moved, an
//! event can no longer be cancelled ([`Outbox::cancel`] says which).
//!
//! Due times are compared with the relay's clock; keep the clocks of the
//! services and relays in agreement (NTP) to well within the precision you
//! need. An event is never published before its due time by that clock; it
//! is published after it within about the relay's poll interval.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{Metadata, Outbox, OutboxDatabase, OutboxEntry};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::table::TableName;

/// The suffix of the scheduled table's name: `eventbus_outbox_scheduled`
/// for the default outbox.
pub const SCHEDULED_SUFFIX: &str = "_scheduled";

/// What waits in a scheduled table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ScheduledStats {
    /// Events waiting, due or not.
    pub rows: u64,
    /// When the earliest of them is due.
    pub next_due: Option<DateTime<Utc>>,
}

/// A database that keeps scheduled events. Implemented for each compiled-in
/// backend.
#[async_trait::async_trait]
pub trait ScheduledDatabase: OutboxDatabase {
    /// Inserts `entries`, all due at `due`, into the scheduled table of
    /// outbox `table`, on `conn`.
    async fn insert_scheduled(
        conn: &mut Self::Connection,
        table: &TableName,
        entries: &[OutboxEntry],
        due: DateTime<Utc>,
    ) -> Result<()>;

    /// Deletes the scheduled event `event_id` of outbox `table`, on `conn`;
    /// whether it was still waiting.
    async fn cancel_scheduled(
        conn: &mut Self::Connection,
        table: &TableName,
        event_id: Uuid,
    ) -> Result<bool>;

    /// Moves up to `limit` events due at `now` into outbox `table`, earliest
    /// first, in one transaction; returns how many it moved.
    async fn release_due(
        pool: &sqlx::Pool<Self>,
        table: &TableName,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<u64>;

    /// What waits in the scheduled table of outbox `table`.
    async fn scheduled_stats(pool: &sqlx::Pool<Self>, table: &TableName) -> Result<ScheduledStats>;
}

impl Outbox {
    /// Writes `event` inside `tx`, to be published at `due` or later (never
    /// before); returns its event id, which [`cancel`](Self::cancel) takes.
    /// Like [`publish`](Self::publish), it exists once `tx` commits. See the
    /// [module documentation](crate::outbox::schedule) for where it goes in
    /// its key's order.
    ///
    /// ```no_run
    /// # #[cfg(feature = "postgres")]
    /// # async fn demo(pool: sqlx::PgPool) -> eventbus::Result<()> {
    /// use chrono::{Duration, Utc};
    /// use eventbus::{Event, Outbox};
    /// use serde::{Deserialize, Serialize};
    ///
    /// #[derive(Event, Serialize, Deserialize, schemars::JsonSchema)]
    /// #[event(type = "com.example.payment.timed_out", destination = "payments", key = order_id)]
    /// struct PaymentTimedOut { order_id: String }
    ///
    /// let outbox = Outbox::new("urn:service:orders");
    /// let mut tx = pool.begin().await?;
    /// let timeout = outbox
    ///     .publish_at(&mut tx, &PaymentTimedOut { order_id: "o-1".into() }, Utc::now() + Duration::minutes(15))
    ///     .await?;
    /// tx.commit().await?;
    ///
    /// // The payment came in time: the timeout never goes out.
    /// let mut tx = pool.begin().await?;
    /// let cancelled = outbox.cancel(&mut tx, timeout).await?;
    /// tx.commit().await?;
    /// assert!(cancelled);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As for [`publish`](Self::publish).
    pub async fn publish_at<DB, E>(
        &self,
        tx: &mut sqlx::Transaction<'_, DB>,
        event: &E,
        due: DateTime<Utc>,
    ) -> Result<Uuid>
    where
        DB: ScheduledDatabase,
        E: Event,
    {
        self.publish_at_with(tx, event, &Metadata::default(), due)
            .await
    }

    /// Like [`publish_at`](Self::publish_at), with correlation, causation
    /// and trace context.
    ///
    /// # Errors
    ///
    /// As for [`publish`](Self::publish).
    pub async fn publish_at_with<DB, E>(
        &self,
        tx: &mut sqlx::Transaction<'_, DB>,
        event: &E,
        meta: &Metadata,
        due: DateTime<Utc>,
    ) -> Result<Uuid>
    where
        DB: ScheduledDatabase,
        E: Event,
    {
        let entry = self.entry(event, meta)?;
        let id = entry.event_id;
        DB::insert_scheduled(&mut **tx, &self.table, std::slice::from_ref(&entry), due).await?;
        Ok(id)
    }

    /// Like [`publish_at`](Self::publish_at), due `delay` from now (by this
    /// process's clock).
    ///
    /// # Errors
    ///
    /// As for [`publish`](Self::publish), and [`Error::Config`] for a delay
    /// past the year 262,000.
    pub async fn publish_after<DB, E>(
        &self,
        tx: &mut sqlx::Transaction<'_, DB>,
        event: &E,
        delay: std::time::Duration,
    ) -> Result<Uuid>
    where
        DB: ScheduledDatabase,
        E: Event,
    {
        let due = chrono::TimeDelta::from_std(delay)
            .ok()
            .and_then(|d| Utc::now().checked_add_signed(d))
            .ok_or_else(|| Error::config(format!("a delay of {delay:?} is out of range")))?;
        self.publish_at(tx, event, due).await
    }

    /// Writes prepared entries inside `tx`, all due at `due`. An entry
    /// without a `source` is written with this outbox's.
    ///
    /// # Errors
    ///
    /// As for [`publish_entries`](Self::publish_entries).
    pub async fn schedule_entries<DB>(
        &self,
        tx: &mut sqlx::Transaction<'_, DB>,
        entries: &[OutboxEntry],
        due: DateTime<Utc>,
    ) -> Result<()>
    where
        DB: ScheduledDatabase,
    {
        let entries = self.sourced(entries)?;
        if entries.is_empty() {
            return Ok(());
        }
        DB::insert_scheduled(&mut **tx, &self.table, &entries, due).await
    }

    /// Cancels the scheduled event `event_id` inside `tx`: if `tx` commits,
    /// it is never published. Returns whether it was still waiting (`false`
    /// once it came due and moved to the outbox, or if it was cancelled
    /// before or never scheduled).
    ///
    /// # Errors
    ///
    /// [`Error::NotMigrated`] if the table is missing, or [`Error::Database`].
    pub async fn cancel<DB>(
        &self,
        tx: &mut sqlx::Transaction<'_, DB>,
        event_id: Uuid,
    ) -> Result<bool>
    where
        DB: ScheduledDatabase,
    {
        DB::cancel_scheduled(&mut **tx, &self.table, event_id).await
    }
}
