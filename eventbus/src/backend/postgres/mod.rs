//! PostgreSQL: the outbox insert (`UNNEST` arrays), the inbox and its
//! attempt counts, the migrations, the relay store (snapshot-safe claims,
//! LISTEN/NOTIFY) and the operator view.

mod attempts;
mod inbox;
#[doc(hidden)]
pub mod log;
mod migrate;
mod outbox;
mod relay;

pub use relay::PgRelayStore;

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgQueryResult, PgRow};
use sqlx::Row;
use uuid::Uuid;

use crate::backend::dialect::Dialect;
use crate::backend::sql::{SqlDatabase, Towards};
use crate::table::TableName;

/// The LISTEN/NOTIFY channel of outbox `table` (schema and name joined by
/// `_`), named by the migration's trigger and listened to by the relay.
pub(crate) fn channel(table: &TableName) -> String {
    match table.schema() {
        Some(schema) => format!("{schema}_{}", table.name()),
        None => table.name().to_owned(),
    }
}

/// `d` in whole milliseconds, for `$n * interval '1 millisecond'`.
pub(crate) fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Native types: UUIDs, arrays, timestamps with time zone.
impl SqlDatabase for sqlx::Postgres {
    const DIALECT: Dialect = Dialect::POSTGRES;
    type Uuid = Uuid;
    type List = Vec<i64>;
    type Partitions = Vec<i32>;
    type Span = i64;
    type Time = DateTime<Utc>;

    fn uuid(id: Uuid) -> Uuid {
        id
    }

    fn list(values: &[i64]) -> Vec<i64> {
        values.to_vec()
    }

    fn partitions(partitions: &[i32]) -> Vec<i32> {
        partitions.to_vec()
    }

    fn span(span: Duration, _towards: Towards) -> i64 {
        millis(span)
    }

    fn time(time: &DateTime<Utc>) -> DateTime<Utc> {
        *time
    }

    fn rows_affected(done: &PgQueryResult) -> u64 {
        done.rows_affected()
    }

    fn uuid_at(row: &PgRow, column: &str) -> Result<Uuid, sqlx::Error> {
        row.try_get(column)
    }

    fn text_at(row: &PgRow, column: &str) -> Result<String, sqlx::Error> {
        row.try_get(column)
    }

    fn time_at(row: &PgRow, column: &str) -> Result<DateTime<Utc>, sqlx::Error> {
        row.try_get(column)
    }
}

impl crate::backend::BackendDatabase for sqlx::Postgres {
    const KIND: crate::backend::DatabaseKind = crate::backend::DatabaseKind::Postgres;

    fn relay_store(
        pool: sqlx::Pool<Self>,
        table: crate::TableName,
    ) -> std::sync::Arc<dyn crate::relay::RelayStore> {
        std::sync::Arc::new(PgRelayStore::new(pool, table))
    }

    fn admin(pool: sqlx::Pool<Self>, table: crate::TableName) -> crate::relay::OutboxAdmin {
        crate::relay::OutboxAdmin::new(pool, table)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_channel_joins_schema_and_name() {
        let t = TableName::parse("svc.outbox").expect("valid");
        assert_eq!(channel(&t), "svc_outbox");
        assert_eq!(channel(&TableName::default_outbox()), "eventbus_outbox");
    }
}
