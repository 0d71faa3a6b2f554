//! The publication the log relay reads: the outbox table's inserts, the
//! columns an event needs and nothing else.
//!
//! A column list keeps a column a team adds to the table for its own use
//! out of the stream (it could have a type the relay cannot decode in
//! binary), and inserts only, because the relay's own updates and deletes
//! of rows are not events. Both need PostgreSQL 15.

use sqlx::PgPool;

use super::record::PUBLISHED_COLUMNS;
use crate::error::{Error, Result};
use crate::TableName;

/// The oldest server the log mode runs on: publication column lists and row
/// filters came with PostgreSQL 15.
const MIN_SERVER_VERSION: i32 = 150_000;

/// The longest identifier PostgreSQL keeps (`NAMEDATALEN - 1`).
const MAX_IDENTIFIER: usize = 63;

/// The publication of `table`'s events: `<schema>_<table>_log`, or
/// `<table>_log` for an unqualified name.
///
/// # Errors
///
/// [`Error::Config`] when the name would be longer than PostgreSQL keeps.
pub(crate) fn publication_name(table: &TableName) -> Result<String> {
    let name = format!("{}_log", super::super::channel(table));
    if name.len() > MAX_IDENTIFIER {
        return Err(Error::Config(format!(
            "the publication name `{name}` for outbox `{table}` is longer than PostgreSQL's \
             {MAX_IDENTIFIER} bytes; use a shorter table name"
        )));
    }
    Ok(name)
}

/// Creates the publication of `table`'s events, or sets an existing one
/// back to exactly the outbox's columns and inserts; returns its name.
/// Idempotent; concurrent callers serialise on a transaction lock.
///
/// # Errors
///
/// [`Error::Config`] on PostgreSQL before 15 or for a table name too long
/// (`<schema>_<table>_log` past 63 bytes); [`Error::Database`] when a statement fails
/// (the role must own the table to publish it).
pub async fn ensure_publication(pool: &PgPool, table: &TableName) -> Result<String> {
    let name = publication_name(table)?;
    let version: i32 = sqlx::query_scalar("SELECT current_setting('server_version_num')::int")
        .fetch_one(pool)
        .await?;
    if version < MIN_SERVER_VERSION {
        return Err(Error::Config(format!(
            "the log relay needs PostgreSQL 15 or later (publication column lists); \
             this server is {version}"
        )));
    }
    let columns = PUBLISHED_COLUMNS.join(", ");
    let target = format!("{} ({columns})", table.quoted());
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
        .bind(format!("eventbus publication {name}"))
        .execute(&mut *tx)
        .await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)")
            .bind(&name)
            .fetch_one(&mut *tx)
            .await?;
    let statements = if exists {
        vec![
            format!("ALTER PUBLICATION \"{name}\" SET TABLE {target}"),
            format!("ALTER PUBLICATION \"{name}\" SET (publish = 'insert')"),
        ]
    } else {
        vec![format!(
            "CREATE PUBLICATION \"{name}\" FOR TABLE {target} WITH (publish = 'insert')"
        )]
    };
    for statement in statements {
        sqlx::query(crate::backend::sql::composed(statement))
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_name_follows_the_table_and_its_schema() {
        let plain = TableName::parse("eventbus_outbox").expect("valid");
        assert_eq!(
            publication_name(&plain).expect("short"),
            "eventbus_outbox_log"
        );
        let qualified = TableName::parse("billing.outbox").expect("valid");
        assert_eq!(
            publication_name(&qualified).expect("short"),
            "billing_outbox_log"
        );
        let long =
            TableName::parse(&format!("{}.{}", "s".repeat(30), "t".repeat(30))).expect("valid");
        assert!(matches!(publication_name(&long), Err(Error::Config(_))));
    }
}
