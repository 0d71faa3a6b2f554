//! The migration loop every database runs under its own lock: each step not
//! yet recorded in `eventbus_migrations` is applied and recorded, in order.

use sqlx::{ColumnIndex, Decode, Executor, IntoArguments, Type};

use crate::backend::sql::{composed, Bind, SqlDatabase};
use crate::error::Result;
use crate::migrate::Migrator;

/// One database's migration steps per component, oldest first; each step is
/// the statements it runs. A step's version is its place in its list, so
/// versions can neither skip nor repeat, and a released step is never edited,
/// only followed by a new one.
pub(crate) struct Steps {
    /// The saga table's steps.
    pub(crate) sagas: Vec<Vec<String>>,
    /// The outbox table's steps (with its partitions and relays tables).
    pub(crate) outbox: Vec<Vec<String>>,
    /// The inbox table's steps.
    pub(crate) inbox: Vec<Vec<String>>,
}

impl Steps {
    /// The steps as [`apply_steps`] takes them — (component, version,
    /// statements) — with the components named after `m`'s tables.
    pub(crate) fn numbered(self, m: &Migrator) -> Vec<(String, i32, Vec<String>)> {
        let named = [
            (format!("sagas:{}", m.sagas), self.sagas),
            (format!("outbox:{}", m.outbox), self.outbox),
            (format!("inbox:{}", m.inbox), self.inbox),
        ];
        named
            .into_iter()
            .flat_map(|(component, steps)| {
                (1..)
                    .zip(steps)
                    .map(move |(version, statements)| (component.clone(), version, statements))
            })
            .collect()
    }
}

/// Applies the `steps` — (component, version, statements) — not yet
/// recorded in `eventbus_migrations`, on `conn`, whose caller holds the
/// migration lock and created that table.
pub(crate) async fn apply_steps<DB>(
    conn: &mut DB::Connection,
    steps: impl IntoIterator<Item = (String, i32, Vec<String>)>,
) -> Result<()>
where
    DB: SqlDatabase,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    usize: ColumnIndex<DB::Row>,
    i64: for<'r> Decode<'r, DB> + Type<DB>,
    i32: Bind<DB>,
    String: Bind<DB>,
{
    let d = DB::DIALECT;
    let recorded = format!(
        "SELECT count(*) FROM eventbus_migrations WHERE component = {} AND version = {}",
        d.param(1),
        d.param(2)
    );
    let record = format!(
        "INSERT INTO eventbus_migrations (component, version) VALUES ({}, {})",
        d.param(1),
        d.param(2)
    );
    for (component, version, statements) in steps {
        let done: i64 = sqlx::query_scalar(composed(&recorded))
            .bind(component.clone())
            .bind(version)
            .fetch_one(&mut *conn)
            .await?;
        if done > 0 {
            continue;
        }
        for statement in &statements {
            // No arguments: sent as text, so DDL, trigger bodies and (where
            // the database allows) several statements at once are fine.
            conn.execute(composed(statement)).await?;
        }
        sqlx::query(composed(&record))
            .bind(component.clone())
            .bind(version)
            .execute(&mut *conn)
            .await?;
        tracing::info!(%component, version, "applied eventbus migration");
    }
    Ok(())
}
