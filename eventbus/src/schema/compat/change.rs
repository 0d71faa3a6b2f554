//! What kind of difference a change is, and how it reads in a report.

use std::fmt;

use serde_json::Value;

/// What kind of difference a [`Change`](super::Change) is, described from the old schema to
/// the new one.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ChangeKind {
    /// A field the old schema did not declare.
    FieldAdded {
        /// The field.
        name: String,
        /// Whether the new schema requires it.
        required: bool,
        /// Its default in the new schema, if any.
        default: Option<Value>,
    },
    /// A field the new schema no longer declares.
    FieldRemoved {
        /// The field.
        name: String,
        /// Whether the old schema required it.
        required: bool,
    },
    /// An optional field became required.
    FieldBecameRequired {
        /// The field.
        name: String,
        /// Its default in the new schema, if any.
        default: Option<Value>,
    },
    /// A required field became optional.
    FieldBecameOptional {
        /// The field.
        name: String,
    },
    /// The JSON types a value may have changed (`null` aside, see
    /// [`ChangeKind::NullAllowed`]). `any` stands for an unconstrained value.
    TypeChanged {
        /// The old types.
        old: Vec<String>,
        /// The new types.
        new: Vec<String>,
    },
    /// The value may now be `null` (a field became an `Option`).
    NullAllowed,
    /// The value may no longer be `null`.
    NullDisallowed,
    /// Enum values (or `const`s) that only the new schema allows.
    ValuesAdded {
        /// The values.
        values: Vec<Value>,
    },
    /// Enum values (or `const`s) that only the old schema allowed.
    ValuesRemoved {
        /// The values.
        values: Vec<Value>,
    },
    /// A value that could be anything of its type is now limited to a list.
    ValuesRestricted {
        /// The values the new schema allows.
        values: Vec<Value>,
    },
    /// A value limited to a list may now be anything of its type.
    ValuesUnrestricted {
        /// The values the old schema allowed.
        values: Vec<Value>,
    },
    /// A tagged-enum variant only the new schema has.
    VariantAdded {
        /// The variant's tag.
        variant: String,
    },
    /// A tagged-enum variant the new schema no longer has.
    VariantRemoved {
        /// The variant's tag.
        variant: String,
    },
    /// The `format` changed (`uuid`, `date-time`, `int32`, …).
    FormatChanged {
        /// The old format.
        old: Option<String>,
        /// The new format.
        new: Option<String>,
    },
    /// A validation keyword changed: a numeric range, a length, an item count,
    /// a `pattern` or `uniqueItems`.
    ConstraintChanged {
        /// Which constraint.
        constraint: String,
        /// The old value, rendered.
        old: String,
        /// The new value, rendered.
        new: String,
    },
    /// Whether an object accepts undeclared fields changed. On its own this
    /// breaks nothing, since producers write only declared fields; what it does
    /// to added or removed fields is reported with those fields.
    AdditionalPropertiesChanged {
        /// `allowed` or `rejected`.
        old: String,
        /// `allowed` or `rejected`.
        new: String,
    },
    /// The `default` changed: messages without the field now read differently.
    DefaultChanged {
        /// The old default.
        old: Option<Value>,
        /// The new default.
        new: Option<Value>,
    },
    /// Documentation changed (`description`, `title`, `examples`, …).
    AnnotationChanged {
        /// The keyword.
        keyword: String,
    },
    /// Only the order of `required`, or another detail without meaning, changed.
    Cosmetic,
    /// A keyword the classifier does not interpret changed; treated as breaking
    /// both ways so that a person looks at it.
    Unsupported {
        /// The keyword, or what could not be followed.
        keyword: String,
        /// Why it could not be judged.
        detail: String,
    },
}

impl fmt::Display for ChangeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChangeKind::FieldAdded {
                name,
                required,
                default,
            } => {
                write!(
                    f,
                    "field `{name}` added ({}",
                    if *required { "required" } else { "optional" }
                )?;
                match default {
                    Some(d) => write!(f, ", default {d})"),
                    None => f.write_str(")"),
                }
            }
            ChangeKind::FieldRemoved { name, required } => write!(
                f,
                "field `{name}` removed (was {})",
                if *required { "required" } else { "optional" }
            ),
            ChangeKind::FieldBecameRequired { name, default } => match default {
                Some(d) => write!(f, "field `{name}` became required (default {d})"),
                None => write!(f, "field `{name}` became required"),
            },
            ChangeKind::FieldBecameOptional { name } => {
                write!(f, "field `{name}` became optional")
            }
            ChangeKind::TypeChanged { old, new } => write!(
                f,
                "type changed from {} to {}",
                old.join(" | "),
                new.join(" | ")
            ),
            ChangeKind::NullAllowed => f.write_str("null is now allowed"),
            ChangeKind::NullDisallowed => f.write_str("null is no longer allowed"),
            ChangeKind::ValuesAdded { values } => {
                write!(f, "enum values added: {}", list(values))
            }
            ChangeKind::ValuesRemoved { values } => {
                write!(f, "enum values removed: {}", list(values))
            }
            ChangeKind::ValuesRestricted { values } => {
                write!(f, "values restricted to {}", list(values))
            }
            ChangeKind::ValuesUnrestricted { values } => {
                write!(f, "values no longer restricted to {}", list(values))
            }
            ChangeKind::VariantAdded { variant } => write!(f, "variant `{variant}` added"),
            ChangeKind::VariantRemoved { variant } => {
                write!(f, "variant `{variant}` removed")
            }
            ChangeKind::FormatChanged { old, new } => write!(
                f,
                "format changed from {} to {}",
                old.as_deref().unwrap_or("none"),
                new.as_deref().unwrap_or("none")
            ),
            ChangeKind::ConstraintChanged {
                constraint,
                old,
                new,
            } => write!(f, "{constraint} changed from {old} to {new}"),
            ChangeKind::AdditionalPropertiesChanged { old, new } => {
                write!(f, "undeclared fields: {old} before, {new} now")
            }
            ChangeKind::DefaultChanged { old, new } => write!(
                f,
                "default changed from {} to {}",
                old.as_ref()
                    .map_or_else(|| "none".to_owned(), Value::to_string),
                new.as_ref()
                    .map_or_else(|| "none".to_owned(), Value::to_string)
            ),
            ChangeKind::AnnotationChanged { keyword } => write!(f, "`{keyword}` changed"),
            ChangeKind::Cosmetic => f.write_str("only ordering or layout changed"),
            ChangeKind::Unsupported { keyword, detail } => {
                write!(f, "`{keyword}` changed: {detail}")
            }
        }
    }
}

pub(super) fn list(values: &[Value]) -> String {
    values
        .iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
