//! PostgreSQL: the outbox insert (`UNNEST` arrays), the inbox and its
//! attempt counts, the migrations, the relay store (snapshot-safe claims,
//! LISTEN/NOTIFY) and the operator view.

mod admin;
mod attempts;
mod inbox;
mod migrate;
mod outbox;
mod relay;

pub use relay::PgRelayStore;

use crate::table::TableName;

/// The LISTEN/NOTIFY channel of outbox `table` (schema and name joined by
/// `_`), named by the migration's trigger and listened to by the relay.
pub(crate) fn channel(table: &TableName) -> String {
    match table.schema() {
        Some(schema) => format!("{schema}_{}", table.name()),
        None => table.name().to_owned(),
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
