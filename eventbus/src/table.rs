//! [`TableName`]: a validated, quotable SQL table name taken from configuration.

use std::fmt;

use crate::error::{Error, Result};

/// A table name from configuration, optionally schema-qualified (`schema.table`).
///
/// Names are validated (lowercase ASCII letters, digits and `_`, not starting with
/// a digit) and always quoted when spliced into SQL, so configuration text can
/// never change a statement.
///
/// ```
/// use eventbus::TableName;
///
/// let t = TableName::parse("billing.eventbus_outbox").unwrap();
/// assert_eq!(t.quoted(), r#""billing"."eventbus_outbox""#);
/// assert!(TableName::parse("outbox; drop table users").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TableName {
    schema: Option<String>,
    name: String,
}

/// PostgreSQL truncates identifiers at 63 bytes; we keep room for the suffixes of
/// derived objects (indexes, triggers, lease tables).
const MAX_LEN: usize = 48;

impl TableName {
    /// Parses and validates `table` or `schema.table`.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if a part is empty, too long or has a character outside
    /// `[a-z0-9_]`.
    pub fn parse(text: &str) -> Result<Self> {
        let (schema, name) = match text.split_once('.') {
            Some((schema, name)) => (Some(schema), name),
            None => (None, text),
        };
        if let Some(schema) = schema {
            validate(schema, text)?;
        }
        validate(name, text)?;
        Ok(TableName {
            schema: schema.map(str::to_owned),
            name: name.to_owned(),
        })
    }

    /// A name known to be valid at compile time (our defaults).
    pub(crate) fn from_static(name: &'static str) -> Self {
        debug_assert!(
            validate(name, name).is_ok(),
            "invalid built-in table name {name}"
        );
        TableName {
            schema: None,
            name: name.to_owned(),
        }
    }

    /// The bare table name, without schema.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The schema, when the name is qualified.
    pub fn schema(&self) -> Option<&str> {
        self.schema.as_deref()
    }

    /// The name quoted as standard SQL spells identifiers, in double quotes,
    /// e.g. `"public"."eventbus_outbox"`: what PostgreSQL and SQLite read.
    /// MySQL reads double quotes as strings (unless `ANSI_QUOTES`): quote for
    /// it with `eventbus::mysql::quoted`.
    pub fn quoted(&self) -> String {
        self.with_suffix("")
    }

    /// A related object's name in standard SQL quoting (as
    /// [`quoted`](Self::quoted)): the table name plus `suffix`, in the same
    /// schema.
    pub fn with_suffix(&self, suffix: &str) -> String {
        match &self.schema {
            Some(schema) => format!("\"{schema}\".\"{}{suffix}\"", self.name),
            None => format!("\"{}{suffix}\"", self.name),
        }
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.schema {
            Some(schema) => write!(f, "{schema}.{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

fn validate(part: &str, whole: &str) -> Result<()> {
    let ok = !part.is_empty()
        && part.len() <= MAX_LEN
        && !part.starts_with(|c: char| c.is_ascii_digit())
        && part
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(Error::config(format!(
            "invalid table name `{whole}`: use `table` or `schema.table` made of lowercase \
             letters, digits and `_` (at most {MAX_LEN} characters each, not starting with a digit)"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_anything_that_could_change_sql() {
        for bad in [
            "",
            ".",
            "a.",
            ".a",
            "a.b.c",
            "Outbox",
            "out box",
            "x\"y",
            "1abc",
            "a;b",
            "a-b",
            &"x".repeat(49),
        ] {
            assert!(TableName::parse(bad).is_err(), "{bad:?} must be rejected");
        }
    }

    #[test]
    fn accepts_plain_and_qualified_names() {
        let t = TableName::parse("eventbus_outbox").expect("valid");
        assert_eq!(t.quoted(), "\"eventbus_outbox\"");
        assert_eq!(t.schema(), None);
        let t = TableName::parse("svc.outbox").expect("valid");
        assert_eq!(
            t.with_suffix("_partitions"),
            "\"svc\".\"outbox_partitions\""
        );
        assert_eq!(t.schema(), Some("svc"));
        assert_eq!(t.to_string(), "svc.outbox");
    }
}
