//! The attempt counts of this database: every statement is shared
//! (`backend::attempts`), the count returned by its upsert.

use sqlx::Postgres;

use crate::backend::attempts::{attempts_database, record_returning};
use crate::backend::dialect::Dialect;

attempts_database!(
    Postgres,
    Dialect::POSTGRES,
    record = record_returning::<Postgres>
);
