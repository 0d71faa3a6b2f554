//! [`Dialect`]: the SQL that differs between the databases only in spelling —
//! how a table and the objects named after it are quoted, how a parameter
//! is written, the current time, a time shifted by a bound span, and how a
//! list travels as one parameter. Statements whose shape is the same on every
//! database are written once against it.

use crate::table::TableName;

/// How one database spells the things eventbus's statements have in common.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Dialect {
    /// Quotes identifiers: `"` (standard SQL) or `` ` `` (MySQL, whose double
    /// quotes delimit strings unless the server runs with `ANSI_QUOTES`).
    quote: char,
    /// How parameter `n` is written.
    placeholder: Placeholder,
    /// The current time, in the form the timestamp columns hold.
    now: &'static str,
    /// The current time shifted by the span bound as parameter `{}`.
    shifted: Shift,
    /// How a list of integers is bound as one parameter.
    list: List,
    /// Whether `UPDATE … RETURNING` exists (not on MySQL).
    returning: bool,
}

// Each feature alone constructs only its own database's spelling.
#[cfg_attr(
    not(all(feature = "postgres", feature = "mysql", feature = "sqlite")),
    allow(dead_code)
)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placeholder {
    /// `$1`, `$2`, … (PostgreSQL).
    Dollar,
    /// `?1`, `?2`, … (SQLite): a parameter may be used twice.
    Numbered,
    /// `?` (MySQL): one per use, bound in order.
    Positional,
}

// Each feature alone constructs only its own database's spelling.
#[cfg_attr(
    not(all(feature = "postgres", feature = "mysql", feature = "sqlite")),
    allow(dead_code)
)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shift {
    /// `now() ± $n * interval '1 millisecond'`, milliseconds bound.
    Millis,
    /// `UTC_TIMESTAMP(6) ± INTERVAL ? MICROSECOND`, microseconds bound.
    Micros,
    /// `strftime(…, 'now', ?n)`, a signed SQLite modifier bound.
    Modifier,
}

// Each feature alone constructs only its own database's spelling.
#[cfg_attr(
    not(all(feature = "postgres", feature = "mysql", feature = "sqlite")),
    allow(dead_code)
)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum List {
    /// An array: `= ANY($n)`.
    Array,
    /// Comma-separated text: `FIND_IN_SET(column, ?)`.
    CommaSeparated,
    /// A JSON array: `IN (SELECT value FROM json_each(?n))`.
    Json,
}

impl Dialect {
    /// PostgreSQL.
    #[cfg(feature = "postgres")]
    pub(crate) const POSTGRES: Dialect = Dialect {
        quote: '"',
        placeholder: Placeholder::Dollar,
        now: "now()",
        shifted: Shift::Millis,
        list: List::Array,
        returning: true,
    };

    /// MySQL and MariaDB: timestamps in UTC with microseconds.
    #[cfg(feature = "mysql")]
    pub(crate) const MYSQL: Dialect = Dialect {
        quote: '`',
        placeholder: Placeholder::Positional,
        now: crate::backend::mysql::NOW,
        shifted: Shift::Micros,
        list: List::CommaSeparated,
        returning: false,
    };

    /// SQLite: timestamps as fixed-width RFC 3339 text (see [`crate::sqlite`]).
    #[cfg(feature = "sqlite")]
    pub(crate) const SQLITE: Dialect = Dialect {
        quote: '"',
        placeholder: Placeholder::Numbered,
        now: crate::backend::sqlite::NOW,
        shifted: Shift::Modifier,
        list: List::Json,
        returning: true,
    };

    /// `table`, schema-qualified and quoted.
    pub(crate) fn table(self, table: &TableName) -> String {
        self.object(table, "")
    }

    /// The object named after `table` with `suffix` (`_partitions`,
    /// `_relays`, …), in the same schema, quoted.
    pub(crate) fn object(self, table: &TableName, suffix: &str) -> String {
        let q = self.quote;
        match table.schema() {
            Some(schema) => format!("{q}{schema}{q}.{q}{}{suffix}{q}", table.name()),
            None => format!("{q}{}{suffix}{q}", table.name()),
        }
    }

    /// The object named after `table` with `suffix`, quoted without its
    /// schema: PostgreSQL names an index in its table's schema, SQLite
    /// names the table of an index without one.
    #[cfg(any(feature = "postgres", feature = "sqlite"))]
    pub(crate) fn local(self, table: &TableName, suffix: &str) -> String {
        let q = self.quote;
        format!("{q}{}{suffix}{q}", table.name())
    }

    /// Parameter `n` (1-based).
    pub(crate) fn param(self, n: usize) -> String {
        match self.placeholder {
            Placeholder::Dollar => format!("${n}"),
            Placeholder::Numbered => format!("?{n}"),
            Placeholder::Positional => "?".to_owned(),
        }
    }

    /// The current time less the span bound as parameter `n` (a modifier
    /// already negative on SQLite).
    pub(crate) fn ago(self, n: usize) -> String {
        self.shift(n, '-')
    }

    /// The current time plus the span bound as parameter `n`.
    pub(crate) fn later(self, n: usize) -> String {
        self.shift(n, '+')
    }

    fn shift(self, n: usize, sign: char) -> String {
        let p = self.param(n);
        match self.shifted {
            Shift::Millis => format!("now() {sign} {p} * interval '1 millisecond'"),
            Shift::Micros => format!("{} {sign} INTERVAL {p} MICROSECOND", self.now),
            Shift::Modifier => format!("strftime('%Y-%m-%dT%H:%M:%fZ', 'now', {p})"),
        }
    }

    /// `column` is one of the list bound as parameter `n`.
    pub(crate) fn in_list(self, column: &str, n: usize) -> String {
        let p = self.param(n);
        match self.list {
            List::Array => format!("{column} = ANY({p})"),
            List::CommaSeparated => format!("FIND_IN_SET({column}, {p})"),
            List::Json => format!("{column} IN (SELECT value FROM json_each({p}))"),
        }
    }

    /// ` RETURNING {columns}` where the database has it, else nothing (the
    /// caller reads the rows back).
    pub(crate) fn returning(self, columns: &str) -> String {
        if self.returning {
            format!(" RETURNING {columns}")
        } else {
            String::new()
        }
    }

    /// The current time, in the form the timestamp columns hold.
    pub(crate) fn now(self) -> &'static str {
        self.now
    }

    /// Whether a parameter may be used twice in a statement (`$1`, `?1`);
    /// with positional `?` each use is bound again.
    pub(crate) fn reuses_params(self) -> bool {
        self.placeholder != Placeholder::Positional
    }

    /// Seconds from the point in time `expr` until now, as a float.
    pub(crate) fn age(self, expr: &str) -> String {
        match self.shifted {
            Shift::Millis => format!("extract(epoch FROM now() - {expr})::float8"),
            Shift::Micros => format!("TIMESTAMPDIFF(MICROSECOND, {expr}, {}) / 1e6", self.now),
            Shift::Modifier => format!("(julianday('now') - julianday({expr})) * 86400.0"),
        }
    }

    /// The timestamp column `column` as [`SqlDatabase::time_at`] reads it:
    /// on SQLite normalised to the one text form, whatever form was written.
    ///
    /// [`SqlDatabase::time_at`]: crate::backend::sql::SqlDatabase::time_at
    pub(crate) fn read_time(self, column: &str) -> String {
        match self.shifted {
            Shift::Modifier => format!("strftime('%Y-%m-%dT%H:%M:%fZ', {column})"),
            Shift::Millis | Shift::Micros => column.to_owned(),
        }
    }

    /// Whether `UPDATE … RETURNING` exists (not on MySQL).
    pub(crate) fn has_returning(self) -> bool {
        self.returning
    }

    /// The start of an upsert's update on a conflict over `key`, to be
    /// followed by its assignments.
    pub(crate) fn upsert(self, key: &str) -> String {
        match self.placeholder {
            Placeholder::Positional => "ON DUPLICATE KEY UPDATE".to_owned(),
            Placeholder::Dollar | Placeholder::Numbered => {
                format!("ON CONFLICT ({key}) DO UPDATE SET")
            }
        }
    }

    /// Deletes up to parameter `limit` rows of `table` (quoted) matching
    /// `condition`, its parameters numbered before `limit`. MySQL limits a
    /// `DELETE` itself but not an `IN` subquery; the others the reverse.
    pub(crate) fn limited_delete(self, table: &str, condition: &str, limit: usize) -> String {
        let limit = self.param(limit);
        match self.placeholder {
            Placeholder::Positional => {
                format!("DELETE FROM {table} WHERE {condition} LIMIT {limit}")
            }
            Placeholder::Dollar | Placeholder::Numbered => format!(
                "DELETE FROM {table} WHERE id IN \
                 (SELECT id FROM {table} WHERE {condition} LIMIT {limit})"
            ),
        }
    }

    /// `column` read as text: MySQL hands binary-collated columns back as
    /// bytes.
    pub(crate) fn text(self, column: &str) -> String {
        match self.placeholder {
            Placeholder::Positional => format!("CONVERT({column} USING utf8mb4)"),
            Placeholder::Dollar | Placeholder::Numbered => column.to_owned(),
        }
    }

    /// What a `SELECT` ends with to lock the rows it reads until the
    /// transaction ends. Nothing on SQLite, where a writing transaction
    /// already excludes every other writer.
    pub(crate) fn for_update(self) -> &'static str {
        match self.placeholder {
            Placeholder::Numbered => "",
            Placeholder::Dollar | Placeholder::Positional => " FOR UPDATE",
        }
    }

    /// `name` quoted as a column (for reserved words such as `partition`).
    pub(crate) fn column(self, name: &str) -> String {
        let q = self.quote;
        format!("{q}{name}{q}")
    }
}

// The test compares all three spellings, so it needs all three backends.
#[cfg(all(test, feature = "postgres", feature = "mysql", feature = "sqlite"))]
mod tests {
    use super::*;

    #[test]
    fn each_dialect_spells_the_same_statement() {
        let t = TableName::parse("svc.outbox").expect("valid");
        assert_eq!(
            Dialect::POSTGRES.object(&t, "_relays"),
            "\"svc\".\"outbox_relays\""
        );
        assert_eq!(
            Dialect::MYSQL.object(&t, "_relays"),
            "`svc`.`outbox_relays`"
        );
        assert_eq!(Dialect::SQLITE.local(&t, "_pending"), "\"outbox_pending\"");
        assert_eq!(Dialect::POSTGRES.param(2), "$2");
        assert_eq!(Dialect::SQLITE.param(2), "?2");
        assert_eq!(Dialect::MYSQL.param(2), "?");
        assert_eq!(
            Dialect::MYSQL.ago(1),
            "UTC_TIMESTAMP(6) - INTERVAL ? MICROSECOND"
        );
        assert_eq!(
            Dialect::SQLITE.in_list("id", 1),
            "id IN (SELECT value FROM json_each(?1))"
        );
        assert_eq!(Dialect::POSTGRES.in_list("id", 1), "id = ANY($1)");
        assert_eq!(Dialect::MYSQL.column("partition"), "`partition`");
    }
}
