//! The attempt counts of this database: every statement is shared
//! (`backend::attempts`), the count returned by its upsert.

use sqlx::Sqlite;

use crate::backend::attempts::{attempts_database, record_returning};
use crate::backend::dialect::Dialect;

attempts_database!(Sqlite, Dialect::SQLITE, record = record_returning::<Sqlite>);
