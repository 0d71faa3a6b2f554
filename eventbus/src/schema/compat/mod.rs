//! The compatibility classifier: what changed between two JSON Schemas of one
//! event, and whether readers on either side of a rolling deploy still read the
//! messages.
//!
//! [`diff`] walks the old and the new schema together (resolving `$ref`s on each
//! side, so renamed `$defs` do not matter) and lists every [`Change`] with its
//! [`Impact`] in both directions:
//!
//! - **backward**: a reader with the *new* schema reads a message written with
//!   the *old* one (consumers upgraded first, or messages still in flight);
//! - **forward**: a reader with the *old* schema reads a message written with
//!   the *new* one (producers upgraded first).
//!
//! The rules assume what serde does: unknown fields are ignored unless the
//! reader says `additionalProperties: false` (`#[serde(deny_unknown_fields)]`),
//! a field outside `required` may be missing, and producers only write the
//! fields their schema declares.

mod alternatives;
mod change;
mod objects;
mod scalars;
mod walk;

use std::collections::BTreeSet;
use std::fmt;

use serde_json::Value;

pub use change::ChangeKind;
use walk::Walk;

/// Which readers must still understand which messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Mode {
    /// Readers with the new schema read messages written with the old one.
    Backward,
    /// Readers with the old schema read messages written with the new one.
    Forward,
    /// Both [`Mode::Backward`] and [`Mode::Forward`].
    Full,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Backward => "backward",
            Mode::Forward => "forward",
            Mode::Full => "full",
        })
    }
}

/// The classification of a [`SchemaDiff`] under a [`Mode`], from best to worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Verdict {
    /// The two schemas are the same JSON.
    Identical,
    /// Something changed, and the readers the mode cares about still read every
    /// message.
    Compatible,
    /// Some reader the mode cares about fails on some message.
    Breaking,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Identical => "identical",
            Verdict::Compatible => "compatible",
            Verdict::Breaking => "breaking",
        })
    }
}

/// What a [`Change`] does to readers in one direction.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Impact {
    /// Every message is still read.
    Safe,
    /// Some message is no longer read, and why.
    Breaking(String),
}

impl Impact {
    /// Whether this is [`Impact::Breaking`].
    pub fn is_breaking(&self) -> bool {
        matches!(self, Impact::Breaking(_))
    }

    fn breaking(reason: impl Into<String>) -> Self {
        Impact::Breaking(reason.into())
    }

    fn when(breaks: bool, reason: impl FnOnce() -> String) -> Self {
        if breaks {
            Impact::Breaking(reason())
        } else {
            Impact::Safe
        }
    }
}

/// One difference between the old and the new schema, where it is and what it
/// does to readers in each direction.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Change {
    /// Where, as a JSON path into the message: `$.items[].sku`; `[]` is every
    /// array element, `.*` every map value and `[kind=card]` one variant of an
    /// internally tagged enum.
    pub path: String,
    /// What changed.
    pub kind: ChangeKind,
    /// What it does to new readers reading old messages.
    pub backward: Impact,
    /// What it does to old readers reading new messages.
    pub forward: Impact,
}

impl Change {
    /// Whether this change breaks the readers `mode` cares about.
    pub fn breaks(&self, mode: Mode) -> bool {
        match mode {
            Mode::Backward => self.backward.is_breaking(),
            Mode::Forward => self.forward.is_breaking(),
            Mode::Full => self.backward.is_breaking() || self.forward.is_breaking(),
        }
    }
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.kind)
    }
}

/// Every difference between two schemas of one event; see [`diff`].
#[derive(Debug, Clone, PartialEq)]
pub struct SchemaDiff {
    changes: Vec<Change>,
    identical: bool,
}

impl SchemaDiff {
    /// The changes, in the order the walk met them (fields sorted by name).
    pub fn changes(&self) -> &[Change] {
        &self.changes
    }

    /// Whether the two schemas are the same JSON.
    pub fn is_identical(&self) -> bool {
        self.identical
    }

    /// The classification for the readers `mode` cares about.
    pub fn verdict(&self, mode: Mode) -> Verdict {
        if self.identical {
            Verdict::Identical
        } else if self.changes.iter().any(|c| c.breaks(mode)) {
            Verdict::Breaking
        } else {
            Verdict::Compatible
        }
    }

    /// The changes that break the readers `mode` cares about.
    pub fn breaking(&self, mode: Mode) -> impl Iterator<Item = &Change> + '_ {
        self.changes.iter().filter(move |c| c.breaks(mode))
    }
}

impl fmt::Display for SchemaDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.identical {
            return f.write_str("identical");
        }
        for change in &self.changes {
            writeln!(f, "{change}")?;
            if let Impact::Breaking(why) = &change.backward {
                writeln!(f, "    breaks backward (new readers, old messages): {why}")?;
            }
            if let Impact::Breaking(why) = &change.forward {
                writeln!(f, "    breaks forward (old readers, new messages): {why}")?;
            }
        }
        Ok(())
    }
}

/// Compares the `old` and the `new` JSON Schema of one event (schemars output:
/// draft 2020-12 with `$defs`, or any schema in that style) and lists what
/// changed with its impact on readers in both directions.
///
/// The function is pure and never fails: what it cannot follow (a `$ref`
/// outside the document, a keyword such as `not` or `if` that changed) becomes
/// a [`ChangeKind::Unsupported`] change, breaking in both directions.
///
/// # Examples
///
/// ```
/// use eventbus::schema::{diff, Mode, Verdict};
/// use serde_json::json;
///
/// let v1 = json!({"type": "object", "properties": {"id": {"type": "string"}}, "required": ["id"]});
/// let v2 = json!({"type": "object",
///     "properties": {"id": {"type": "string"}, "note": {"type": ["string", "null"]}},
///     "required": ["id"]});
/// let v3 = json!({"type": "object",
///     "properties": {"id": {"type": "string"}, "note": {"type": "string"}},
///     "required": ["id", "note"]});
///
/// // A new optional field: both sides of a rolling deploy keep reading.
/// assert_eq!(diff(&v1, &v2).verdict(Mode::Full), Verdict::Compatible);
/// // A new required field without default: old messages lack it.
/// let d = diff(&v2, &v3);
/// assert_eq!(d.verdict(Mode::Backward), Verdict::Breaking);
/// assert_eq!(d.breaking(Mode::Backward).next().map(|c| c.path.as_str()), Some("$.note"));
/// ```
pub fn diff(old: &Value, new: &Value) -> SchemaDiff {
    let mut walk = Walk {
        old_root: old,
        new_root: new,
        changes: Vec::new(),
        // The root is being compared: a `{"$ref": "#"}` below it recurses.
        visiting: BTreeSet::from([("#".to_owned(), "#".to_owned())]),
    };
    walk.node(old, new, "$", 0);
    let identical = old == new;
    if !identical && walk.changes.is_empty() {
        walk.changes.push(Change {
            path: "$".to_owned(),
            kind: ChangeKind::Cosmetic,
            backward: Impact::Safe,
            forward: Impact::Safe,
        });
    }
    SchemaDiff {
        changes: walk.changes,
        identical,
    }
}

#[cfg(test)]
mod tests {
    use super::walk::field_path;
    use super::*;
    use serde_json::json;

    fn obj(props: &Value, required: &[&str]) -> Value {
        json!({"type": "object", "properties": props, "required": required})
    }

    #[test]
    fn renamed_defs_are_not_a_change() {
        let old = json!({"$ref": "#/$defs/A", "$defs": {"A": {"type": "string"}}});
        let new = json!({"$ref": "#/$defs/B", "$defs": {"B": {"type": "string"}}});
        let d = diff(&old, &new);
        assert_eq!(d.verdict(Mode::Full), Verdict::Compatible);
        assert_eq!(d.changes().len(), 1);
        assert_eq!(d.changes()[0].kind, ChangeKind::Cosmetic);
    }

    #[test]
    fn recursive_types_terminate_and_see_nested_changes() {
        let old = obj(
            &json!({"name": {"type": "string"}, "children": {"type": "array", "items": {"$ref": "#"}}}),
            &["name", "children"],
        );
        let new = obj(
            &json!({"name": {"type": "integer"}, "children": {"type": "array", "items": {"$ref": "#"}}}),
            &["name", "children"],
        );
        let d = diff(&old, &new);
        assert_eq!(d.verdict(Mode::Backward), Verdict::Breaking);
        let paths: Vec<&str> = d.changes().iter().map(|c| c.path.as_str()).collect();
        assert_eq!(paths, ["$.name"], "reported once, at the root");
    }

    #[test]
    fn integer_formats_are_ranges() {
        let i32s = json!({"type": "integer", "format": "int32"});
        let i64s = json!({"type": "integer", "format": "int64"});
        let d = diff(&i32s, &i64s);
        assert_eq!(d.verdict(Mode::Backward), Verdict::Compatible);
        assert_eq!(d.verdict(Mode::Forward), Verdict::Breaking);
        let u64s = json!({"type": "integer", "format": "uint64", "minimum": 0});
        assert_eq!(
            diff(&i64s, &u64s).verdict(Mode::Backward),
            Verdict::Breaking
        );
    }

    #[test]
    fn unresolvable_refs_are_unsupported_not_panics() {
        let old = json!({"$ref": "https://example.com/other.json"});
        let new = json!({"$ref": "#/$defs/Missing"});
        let d = diff(&old, &new);
        assert!(matches!(
            d.changes()[0].kind,
            ChangeKind::Unsupported { .. }
        ));
        assert_eq!(d.verdict(Mode::Full), Verdict::Breaking);
    }

    #[test]
    fn unknown_keywords_that_change_are_breaking() {
        let old = json!({"type": "integer", "multipleOf": 5});
        let new = json!({"type": "integer", "multipleOf": 3});
        assert_eq!(diff(&old, &new).verdict(Mode::Backward), Verdict::Breaking);
    }

    #[test]
    fn field_paths_quote_odd_names() {
        assert_eq!(field_path("$", "a_b"), "$.a_b");
        assert_eq!(field_path("$", "a b"), "$[\"a b\"]");
    }
}
