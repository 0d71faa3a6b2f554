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

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde_json::{Map, Value};

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

/// What kind of difference a [`Change`] is, described from the old schema to
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

fn list(values: &[Value]) -> String {
    values
        .iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join(", ")
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

/// Deeper than any real event; only a pathological schema gets here.
const MAX_DEPTH: usize = 64;

/// Keywords that document but do not constrain.
const ANNOTATIONS: &[&str] = &[
    "title",
    "description",
    "examples",
    "$comment",
    "deprecated",
    "readOnly",
    "writeOnly",
    "$schema",
    "$id",
    "$anchor",
];

/// Keywords the walk interprets; any other keyword that differs is reported
/// as [`ChangeKind::Unsupported`].
const INTERPRETED: &[&str] = &[
    "$ref",
    "$defs",
    "definitions",
    "type",
    "enum",
    "const",
    "anyOf",
    "oneOf",
    "allOf",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "prefixItems",
    "format",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "uniqueItems",
    "pattern",
    "default",
];

/// A JSON type. The order is the order types are listed in reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Null,
    Boolean,
    Integer,
    Number,
    String,
    Array,
    Object,
}

impl Kind {
    fn parse(name: &str) -> Option<Kind> {
        Some(match name {
            "null" => Kind::Null,
            "boolean" => Kind::Boolean,
            "integer" => Kind::Integer,
            "number" => Kind::Number,
            "string" => Kind::String,
            "array" => Kind::Array,
            "object" => Kind::Object,
            _ => return None,
        })
    }

    fn of(value: &Value) -> Kind {
        match value {
            Value::Null => Kind::Null,
            Value::Bool(_) => Kind::Boolean,
            Value::Number(n) if n.is_i64() || n.is_u64() => Kind::Integer,
            Value::Number(_) => Kind::Number,
            Value::String(_) => Kind::String,
            Value::Array(_) => Kind::Array,
            Value::Object(_) => Kind::Object,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Null => "null",
            Kind::Boolean => "boolean",
            Kind::Integer => "integer",
            Kind::Number => "number",
            Kind::String => "string",
            Kind::Array => "array",
            Kind::Object => "object",
        }
    }

    /// Whether a reader of `self` also reads every value of `other`: JSON has
    /// one number type, so a `number` reader reads integers.
    fn covers(self, other: Kind) -> bool {
        self == other || (self == Kind::Number && other == Kind::Integer)
    }
}

/// One alternative of a schema: a single JSON type (or anything), with the
/// keywords that constrain it and the values an `enum`/`const` allows.
#[derive(Debug, Clone)]
struct Alt {
    kind: Option<Kind>,
    /// Whether it came from an `anyOf`/`oneOf` branch, whose own keywords the
    /// node-level comparison has not seen.
    branch: bool,
    schema: Map<String, Value>,
    values: Option<Vec<Value>>,
}

/// Which side of the comparison a schema belongs to, for `$ref` resolution.
#[derive(Debug, Clone, Copy)]
enum Side {
    Old,
    New,
}

struct Walk<'a> {
    old_root: &'a Value,
    new_root: &'a Value,
    changes: Vec<Change>,
    /// `$ref` pairs being compared, so recursive types end.
    visiting: BTreeSet<(String, String)>,
}

impl Walk<'_> {
    fn push(&mut self, path: &str, kind: ChangeKind, backward: Impact, forward: Impact) {
        self.changes.push(Change {
            path: path.to_owned(),
            kind,
            backward,
            forward,
        });
    }

    fn unsupported(&mut self, path: &str, keyword: &str, detail: impl Into<String>) {
        let detail = detail.into();
        let why = format!("cannot judge `{keyword}`; review this change by hand");
        self.push(
            path,
            ChangeKind::Unsupported {
                keyword: keyword.to_owned(),
                detail,
            },
            Impact::breaking(why.clone()),
            Impact::breaking(why),
        );
    }

    fn root(&self, side: Side) -> &Value {
        match side {
            Side::Old => self.old_root,
            Side::New => self.new_root,
        }
    }

    /// The schema as one map: `$ref` followed (siblings of `$ref` win) and
    /// `allOf` merged. `true` is `{}`, `false` is `{"not": {}}`.
    fn resolve(&self, side: Side, schema: &Value) -> Result<Map<String, Value>, String> {
        self.resolve_depth(side, schema, 0)
    }

    fn resolve_depth(
        &self,
        side: Side,
        schema: &Value,
        depth: usize,
    ) -> Result<Map<String, Value>, String> {
        if depth > MAX_DEPTH {
            return Err("`$ref` chain too deep or circular".to_owned());
        }
        let map = match schema {
            Value::Bool(true) => return Ok(Map::new()),
            Value::Bool(false) => {
                let mut never = Map::new();
                never.insert("not".to_owned(), Value::Object(Map::new()));
                return Ok(never);
            }
            Value::Object(map) => map,
            other => return Err(format!("{other} is not a schema")),
        };
        let mut out = match map.get("$ref") {
            Some(Value::String(reference)) => {
                let target = lookup(self.root(side), reference)
                    .ok_or_else(|| format!("`$ref` `{reference}` does not resolve"))?;
                let mut resolved = self.resolve_depth(side, target, depth + 1)?;
                for (k, v) in map {
                    if k != "$ref" {
                        resolved.insert(k.clone(), v.clone());
                    }
                }
                resolved
            }
            Some(other) => return Err(format!("`$ref` {other} is not a string")),
            None => map.clone(),
        };
        if let Some(Value::Array(parts)) = out.remove("allOf") {
            for part in &parts {
                let part = self.resolve_depth(side, part, depth + 1)?;
                merge_all_of(&mut out, part)?;
            }
        }
        Ok(out)
    }

    /// Compares two schemas found at `path`.
    fn node(&mut self, old: &Value, new: &Value, path: &str, depth: usize) {
        if depth > MAX_DEPTH {
            self.unsupported(path, "$ref", "nesting too deep to compare");
            return;
        }
        // `false` accepts no value: whatever the other side accepts is new.
        let never = Value::Bool(false);
        if *old == never || *new == never {
            if old != new {
                let side = |v: &Value| -> Vec<String> {
                    if *v == never {
                        vec!["nothing".to_owned()]
                    } else {
                        vec!["something".to_owned()]
                    }
                };
                let kind = ChangeKind::TypeChanged {
                    old: side(old),
                    new: side(new),
                };
                let backward = Impact::when(*new == never, || {
                    "the new schema accepts no value here, old messages may carry one".to_owned()
                });
                let forward = Impact::when(*old == never, || {
                    "readers of the old schema accept no value here, new messages may carry one"
                        .to_owned()
                });
                self.push(path, kind, backward, forward);
            }
            return;
        }
        if let (Some(o), Some(n)) = (ref_of(old), ref_of(new)) {
            let key = (o.to_owned(), n.to_owned());
            if self.visiting.contains(&key) {
                // Already being compared further up: a recursive type. Whatever
                // differs is reported there.
                return;
            }
            self.visiting.insert(key.clone());
            self.node_resolved(old, new, path, depth);
            self.visiting.remove(&key);
        } else {
            self.node_resolved(old, new, path, depth);
        }
    }

    fn node_resolved(&mut self, old: &Value, new: &Value, path: &str, depth: usize) {
        let (o, n) = match (self.resolve(Side::Old, old), self.resolve(Side::New, new)) {
            (Ok(o), Ok(n)) => (o, n),
            (Err(e), _) | (_, Err(e)) => {
                if old != new {
                    self.unsupported(path, "$ref", e);
                }
                return;
            }
        };
        self.keywords(&o, &n, path);
        let old_alts = match self.alternatives(Side::Old, &o) {
            Ok(alts) => alts,
            Err(e) => return self.unsupported(path, "anyOf", e),
        };
        let new_alts = match self.alternatives(Side::New, &n) {
            Ok(alts) => alts,
            Err(e) => return self.unsupported(path, "anyOf", e),
        };
        self.alternatives_diff(&old_alts, &new_alts, path, depth);
    }

    /// Annotations, `default` and keywords the walk does not interpret.
    fn keywords(&mut self, o: &Map<String, Value>, n: &Map<String, Value>, path: &str) {
        let keys: BTreeSet<&String> = o.keys().chain(n.keys()).collect();
        for key in keys {
            let (ov, nv) = (o.get(key), n.get(key));
            if ov == nv {
                continue;
            }
            if ANNOTATIONS.contains(&key.as_str()) || key.starts_with("x-") {
                self.push(
                    path,
                    ChangeKind::AnnotationChanged {
                        keyword: key.clone(),
                    },
                    Impact::Safe,
                    Impact::Safe,
                );
            } else if key == "default" {
                self.push(
                    path,
                    ChangeKind::DefaultChanged {
                        old: ov.cloned(),
                        new: nv.cloned(),
                    },
                    Impact::Safe,
                    Impact::Safe,
                );
            } else if !INTERPRETED.contains(&key.as_str()) {
                let show =
                    |v: Option<&Value>| v.map_or_else(|| "absent".to_owned(), |v| v.to_string());
                self.unsupported(path, key, format!("{} before, {} now", show(ov), show(nv)));
            }
        }
    }

    /// Splits a resolved schema into single-type alternatives.
    fn alternatives(&self, side: Side, schema: &Map<String, Value>) -> Result<Vec<Alt>, String> {
        let mut out = Vec::new();
        self.collect_alternatives(side, schema, &mut out, 0)?;
        Ok(out)
    }

    fn collect_alternatives(
        &self,
        side: Side,
        schema: &Map<String, Value>,
        out: &mut Vec<Alt>,
        depth: usize,
    ) -> Result<(), String> {
        if depth > MAX_DEPTH {
            return Err("unions nested too deep".to_owned());
        }
        let union = match (schema.get("anyOf"), schema.get("oneOf")) {
            (Some(_), Some(_)) => return Err("both `anyOf` and `oneOf` on one schema".to_owned()),
            (Some(Value::Array(u)), None) | (None, Some(Value::Array(u))) => Some(u),
            (Some(_), None) | (None, Some(_)) => return Err("a union that is not an array".into()),
            (None, None) => None,
        };
        if let Some(branches) = union {
            // Keywords next to the union (other than documentation) apply to
            // every branch.
            let mut shared = schema.clone();
            shared.remove("anyOf");
            shared.remove("oneOf");
            for key in ANNOTATIONS {
                shared.remove(*key);
            }
            shared.remove("default");
            for branch in branches {
                let mut resolved = self.resolve(side, branch)?;
                for (k, v) in &shared {
                    resolved.entry(k.clone()).or_insert_with(|| v.clone());
                }
                self.collect_alternatives(side, &resolved, out, depth + 1)?;
            }
            return Ok(());
        }
        if schema.contains_key("not") && schema.len() == 1 {
            // `false`: no value at all, so no alternative.
            return Ok(());
        }
        let values: Option<Vec<Value>> = match (schema.get("enum"), schema.get("const")) {
            (Some(Value::Array(values)), _) => Some(values.clone()),
            (Some(_), _) => return Err("`enum` is not an array".to_owned()),
            (None, Some(value)) => Some(vec![value.clone()]),
            (None, None) => None,
        };
        let declared: Option<Vec<Kind>> = match schema.get("type") {
            Some(Value::String(t)) => {
                Some(vec![Kind::parse(t).ok_or(format!("unknown type `{t}`"))?])
            }
            Some(Value::Array(ts)) => Some(
                ts.iter()
                    .map(|t| {
                        t.as_str()
                            .and_then(Kind::parse)
                            .ok_or(format!("unknown type {t}"))
                    })
                    .collect::<Result<_, _>>()?,
            ),
            Some(other) => return Err(format!("`type` {other} is neither a string nor an array")),
            None => None,
        };
        if let Some(values) = values {
            // Values decide the kinds; `type` only filters them.
            let mut by_kind: BTreeMap<Kind, Vec<Value>> = BTreeMap::new();
            for value in values {
                let kind = Kind::of(&value);
                let allowed = declared
                    .as_ref()
                    .is_none_or(|ks| ks.iter().any(|k| k.covers(kind)));
                if allowed {
                    let kind = match declared.as_ref() {
                        // `{"type": "number", "enum": [1]}`: the value is a number.
                        Some(ks) if !ks.contains(&kind) => Kind::Number,
                        _ => kind,
                    };
                    by_kind.entry(kind).or_default().push(value);
                }
            }
            for (kind, values) in by_kind {
                out.push(Alt {
                    kind: Some(kind),
                    branch: depth > 0,
                    schema: schema.clone(),
                    values: Some(values),
                });
            }
            return Ok(());
        }
        let kinds = declared.unwrap_or_else(|| implied_kinds(schema));
        if kinds.is_empty() {
            out.push(Alt {
                kind: None,
                branch: depth > 0,
                schema: schema.clone(),
                values: None,
            });
        }
        for kind in kinds {
            out.push(Alt {
                kind: Some(kind),
                branch: depth > 0,
                schema: schema.clone(),
                values: None,
            });
        }
        Ok(())
    }

    fn alternatives_diff(&mut self, old: &[Alt], new: &[Alt], path: &str, depth: usize) {
        let old_any = old.iter().any(|a| a.kind.is_none());
        let new_any = new.iter().any(|a| a.kind.is_none());
        let kinds =
            |alts: &[Alt]| -> BTreeSet<Kind> { alts.iter().filter_map(|a| a.kind).collect() };
        let (old_kinds, new_kinds) = (kinds(old), kinds(new));
        let names = |any: bool, ks: &BTreeSet<Kind>| -> Vec<String> {
            if any {
                vec!["any".to_owned()]
            } else {
                ks.iter().map(|k| k.name().to_owned()).collect()
            }
        };
        if old_any || new_any {
            if old_any != new_any {
                let kind = ChangeKind::TypeChanged {
                    old: names(old_any, &old_kinds),
                    new: names(new_any, &new_kinds),
                };
                let backward = Impact::when(old_any, || {
                    "old messages may carry any value here, the new schema accepts fewer".to_owned()
                });
                let forward = Impact::when(new_any, || {
                    "new messages may carry any value here, readers of the old schema accept fewer"
                        .to_owned()
                });
                self.push(path, kind, backward, forward);
            }
            return;
        }

        let non_null = |ks: &BTreeSet<Kind>| -> BTreeSet<Kind> {
            ks.iter().copied().filter(|k| *k != Kind::Null).collect()
        };
        let (old_types, new_types) = (non_null(&old_kinds), non_null(&new_kinds));
        if old_types != new_types {
            let uncovered = |from: &BTreeSet<Kind>, by: &BTreeSet<Kind>| -> Vec<&'static str> {
                from.iter()
                    .filter(|k| !by.iter().any(|b| b.covers(**k)))
                    .map(|k| k.name())
                    .collect()
            };
            let lost = uncovered(&old_kinds, &new_kinds);
            let gained = uncovered(&new_kinds, &old_kinds);
            let kind = ChangeKind::TypeChanged {
                old: names(false, &old_kinds),
                new: names(false, &new_kinds),
            };
            let backward = Impact::when(!lost.is_empty(), || {
                format!(
                    "old messages may carry {} here, which the new schema does not accept",
                    lost.join(" or ")
                )
            });
            let forward = Impact::when(!gained.is_empty(), || {
                format!(
                    "new messages may carry {} here, which readers of the old schema do not accept",
                    gained.join(" or ")
                )
            });
            self.push(path, kind, backward, forward);
        } else {
            match (
                old_kinds.contains(&Kind::Null),
                new_kinds.contains(&Kind::Null),
            ) {
                (true, false) => self.push(
                    path,
                    ChangeKind::NullDisallowed,
                    Impact::breaking("old messages may carry null here"),
                    Impact::Safe,
                ),
                (false, true) => self.push(
                    path,
                    ChangeKind::NullAllowed,
                    Impact::Safe,
                    Impact::breaking("readers of the old schema do not accept null here"),
                ),
                _ => {}
            }
        }
        for kind in old_types.intersection(&new_types) {
            let pick = |alts: &[Alt]| -> Vec<Alt> {
                alts.iter()
                    .filter(|a| a.kind == Some(*kind))
                    .cloned()
                    .collect()
            };
            self.kind_diff(*kind, &pick(old), &pick(new), path, depth);
        }
    }

    /// Compares the alternatives of one JSON type.
    fn kind_diff(&mut self, kind: Kind, old: &[Alt], new: &[Alt], path: &str, depth: usize) {
        let values = |alts: &[Alt]| -> Option<Vec<Value>> {
            let mut all = Vec::new();
            for alt in alts {
                for v in alt.values.as_ref()? {
                    if !all.contains(v) {
                        all.push(v.clone());
                    }
                }
            }
            Some(all)
        };
        match (values(old), values(new)) {
            (Some(o), Some(n)) => {
                let removed: Vec<Value> = o.iter().filter(|v| !n.contains(v)).cloned().collect();
                let added: Vec<Value> = n.iter().filter(|v| !o.contains(v)).cloned().collect();
                if !removed.is_empty() {
                    let why = format!("old messages may carry {}", list(&removed));
                    self.push(
                        path,
                        ChangeKind::ValuesRemoved { values: removed },
                        Impact::breaking(why),
                        Impact::Safe,
                    );
                }
                if !added.is_empty() {
                    let why = format!("readers of the old schema reject {}", list(&added));
                    self.push(
                        path,
                        ChangeKind::ValuesAdded { values: added },
                        Impact::Safe,
                        Impact::breaking(why),
                    );
                }
                return;
            }
            (Some(o), None) => {
                let why = format!("readers of the old schema accept only {}", list(&o));
                self.push(
                    path,
                    ChangeKind::ValuesUnrestricted { values: o },
                    Impact::Safe,
                    Impact::breaking(why),
                );
                return;
            }
            (None, Some(n)) => {
                let why = format!("old messages may carry values other than {}", list(&n));
                self.push(
                    path,
                    ChangeKind::ValuesRestricted { values: n },
                    Impact::breaking(why),
                    Impact::Safe,
                );
                return;
            }
            (None, None) => {}
        }
        // Some alternatives list values and some do not: the free ones decide.
        let free = |alts: &[Alt]| -> Vec<Alt> {
            alts.iter()
                .filter(|a| a.values.is_none())
                .cloned()
                .collect()
        };
        let (old, new) = (free(old), free(new));
        if let ([o], [n]) = (old.as_slice(), new.as_slice()) {
            if o.branch || n.branch {
                self.keywords(&o.schema, &n.schema, path);
            }
        }
        match kind {
            Kind::Null | Kind::Boolean => {}
            Kind::Integer | Kind::Number => self.numbers(kind, &old, &new, path),
            Kind::Object => self.objects(&old, &new, path, depth),
            Kind::String | Kind::Array => match (old.as_slice(), new.as_slice()) {
                ([o], [n]) if kind == Kind::String => self.string(&o.schema, &n.schema, path),
                ([o], [n]) => self.array(&o.schema, &n.schema, path, depth),
                _ => self.pairwise(&old, &new, path, depth),
            },
        }
    }

    /// Several alternatives of one type without tags (an untagged enum):
    /// compared in order, when the counts match.
    fn pairwise(&mut self, old: &[Alt], new: &[Alt], path: &str, depth: usize) {
        if old.len() != new.len() {
            let same = old
                .iter()
                .map(|a| &a.schema)
                .eq(new.iter().map(|a| &a.schema));
            if !same {
                self.unsupported(
                    path,
                    "anyOf",
                    format!(
                        "an untagged union went from {} to {} alternatives of one type",
                        old.len(),
                        new.len()
                    ),
                );
            }
            return;
        }
        for (o, n) in old.iter().zip(new) {
            let (o, n) = (
                Value::Object(o.schema.clone()),
                Value::Object(n.schema.clone()),
            );
            self.node(&o, &n, path, depth + 1);
        }
    }

    fn numbers(&mut self, kind: Kind, old: &[Alt], new: &[Alt], path: &str) {
        let span = |alts: &[Alt]| -> Range {
            alts.iter()
                .map(|a| numeric_range(kind, &a.schema))
                .reduce(Range::hull)
                .unwrap_or(Range::ANY)
        };
        let (o, n) = (span(old), span(new));
        let format = |alts: &[Alt]| -> Option<String> {
            alts.first()
                .and_then(|a| a.schema.get("format"))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        let (of, nf) = (format(old), format(new));
        let backward = Impact::when(!n.contains(&o), || {
            format!("old messages may carry values in {o}, the new schema accepts {n}")
        });
        let forward = Impact::when(!o.contains(&n), || {
            format!("new messages may carry values in {n}, readers of the old schema accept {o}")
        });
        if of != nf {
            self.push(
                path,
                ChangeKind::FormatChanged { old: of, new: nf },
                backward,
                forward,
            );
        } else if o != n {
            self.push(
                path,
                ChangeKind::ConstraintChanged {
                    constraint: "range".to_owned(),
                    old: o.to_string(),
                    new: n.to_string(),
                },
                backward,
                forward,
            );
        }
    }

    fn string(&mut self, o: &Map<String, Value>, n: &Map<String, Value>, path: &str) {
        let text =
            |m: &Map<String, Value>, k: &str| m.get(k).and_then(Value::as_str).map(str::to_owned);
        for (keyword, constraint) in [("format", false), ("pattern", true)] {
            let (ov, nv) = (text(o, keyword), text(n, keyword));
            if ov == nv {
                continue;
            }
            let backward = Impact::when(nv.is_some(), || {
                format!(
                    "old messages need not match the new {keyword} `{}`",
                    nv.as_deref().unwrap_or_default()
                )
            });
            let forward = Impact::when(ov.is_some(), || {
                format!(
                    "readers of the old schema require {keyword} `{}`",
                    ov.as_deref().unwrap_or_default()
                )
            });
            let kind = if constraint {
                ChangeKind::ConstraintChanged {
                    constraint: keyword.to_owned(),
                    old: ov.unwrap_or_else(|| "none".to_owned()),
                    new: nv.unwrap_or_else(|| "none".to_owned()),
                }
            } else {
                ChangeKind::FormatChanged { old: ov, new: nv }
            };
            self.push(path, kind, backward, forward);
        }
        self.count_range(o, n, "minLength", "maxLength", "length", path);
    }

    fn array(&mut self, o: &Map<String, Value>, n: &Map<String, Value>, path: &str, depth: usize) {
        let items = |m: &Map<String, Value>| m.get("items").cloned().unwrap_or(Value::Bool(true));
        if o.contains_key("items") || n.contains_key("items") {
            self.node(&items(o), &items(n), &format!("{path}[]"), depth + 1);
        }
        let prefix = |m: &Map<String, Value>| -> Vec<Value> {
            m.get("prefixItems")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        };
        // Tuple positions only one side has are covered by the item counts.
        for (i, (op, np)) in prefix(o).iter().zip(prefix(n).iter()).enumerate() {
            self.node(op, np, &format!("{path}[{i}]"), depth + 1);
        }
        self.count_range(o, n, "minItems", "maxItems", "item count", path);
        let unique = |m: &Map<String, Value>| {
            m.get("uniqueItems")
                .and_then(Value::as_bool)
                .unwrap_or(false)
        };
        let (ou, nu) = (unique(o), unique(n));
        if ou != nu {
            self.push(
                path,
                ChangeKind::ConstraintChanged {
                    constraint: "uniqueItems".to_owned(),
                    old: ou.to_string(),
                    new: nu.to_string(),
                },
                Impact::when(nu, || "old messages may repeat items".to_owned()),
                Impact::when(ou, || {
                    "readers of the old schema reject repeated items".to_owned()
                }),
            );
        }
    }

    fn count_range(
        &mut self,
        o: &Map<String, Value>,
        n: &Map<String, Value>,
        min: &str,
        max: &str,
        constraint: &str,
        path: &str,
    ) {
        let range = |m: &Map<String, Value>| Range {
            lo: m.get(min).and_then(Value::as_f64),
            hi: m.get(max).and_then(Value::as_f64),
        };
        let (or, nr) = (range(o), range(n));
        if or == nr {
            return;
        }
        let backward = Impact::when(!nr.contains(&or), || {
            format!("old messages may have a {constraint} in {or}, the new schema accepts {nr}")
        });
        let forward = Impact::when(!or.contains(&nr), || {
            format!("new messages may have a {constraint} in {nr}, readers of the old schema accept {or}")
        });
        self.push(
            path,
            ChangeKind::ConstraintChanged {
                constraint: constraint.to_owned(),
                old: or.to_string(),
                new: nr.to_string(),
            },
            backward,
            forward,
        );
    }

    /// Object alternatives: one on each side is a struct; several are the
    /// variants of a tagged enum, matched by tag.
    fn objects(&mut self, old: &[Alt], new: &[Alt], path: &str, depth: usize) {
        if let ([o], [n]) = (old, new) {
            return self.object(&o.schema, &n.schema, path, depth);
        }
        let tagged = |alts: &[Alt], side: Side| -> Option<BTreeMap<Tag, Map<String, Value>>> {
            let mut out = BTreeMap::new();
            for alt in alts {
                let tag = self.tag(side, &alt.schema)?;
                if out.insert(tag, alt.schema.clone()).is_some() {
                    return None;
                }
            }
            Some(out)
        };
        let (Some(o), Some(n)) = (tagged(old, Side::Old), tagged(new, Side::New)) else {
            return self.pairwise(old, new, path, depth);
        };
        for (tag, schema) in &o {
            match n.get(tag) {
                Some(new_schema) => {
                    let path = match tag {
                        Tag::Internal { .. } => format!("{path}[{}]", tag.label()),
                        // The tag is a property: the field walk names it.
                        Tag::External(_) => path.to_owned(),
                    };
                    self.keywords(schema, new_schema, &path);
                    self.object(schema, new_schema, &path, depth);
                }
                None => {
                    let why = format!("old messages may carry variant `{}`", tag.variant());
                    self.push(
                        path,
                        ChangeKind::VariantRemoved {
                            variant: tag.variant().to_owned(),
                        },
                        Impact::breaking(why),
                        Impact::Safe,
                    );
                }
            }
        }
        for tag in n.keys().filter(|t| !o.contains_key(*t)) {
            let why = format!(
                "readers of the old schema do not know variant `{}`",
                tag.variant()
            );
            self.push(
                path,
                ChangeKind::VariantAdded {
                    variant: tag.variant().to_owned(),
                },
                Impact::Safe,
                Impact::breaking(why),
            );
        }
    }

    /// The tag of an enum variant's object schema: a property with a single
    /// constant value (internally or adjacently tagged), or the one required
    /// property of a closed object (externally tagged).
    fn tag(&self, side: Side, schema: &Map<String, Value>) -> Option<Tag> {
        let props = schema.get("properties").and_then(Value::as_object);
        for (name, prop) in props.into_iter().flatten() {
            let resolved = self.resolve(side, prop).ok()?;
            let constant = match (resolved.get("const"), resolved.get("enum")) {
                (Some(c), _) => Some(c.clone()),
                (None, Some(Value::Array(values))) if values.len() == 1 => values.first().cloned(),
                _ => None,
            };
            if let Some(Value::String(value)) = constant {
                return Some(Tag::Internal {
                    field: name.clone(),
                    value,
                });
            }
        }
        let required = schema.get("required").and_then(Value::as_array)?;
        let closed = schema.get("additionalProperties") == Some(&Value::Bool(false));
        match (props, required.as_slice()) {
            (Some(props), [Value::String(name)]) if closed && props.len() == 1 => {
                Some(Tag::External(name.clone()))
            }
            _ => None,
        }
    }

    fn object(&mut self, o: &Map<String, Value>, n: &Map<String, Value>, path: &str, depth: usize) {
        let props = |m: &Map<String, Value>| -> Map<String, Value> {
            m.get("properties")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default()
        };
        let required = |m: &Map<String, Value>| -> BTreeSet<String> {
            m.get("required")
                .and_then(Value::as_array)
                .map(|r| {
                    r.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default()
        };
        let (op, np) = (props(o), props(n));
        let (or, nr) = (required(o), required(n));
        let (oa, na) = (
            o.get("additionalProperties")
                .cloned()
                .unwrap_or(Value::Bool(true)),
            n.get("additionalProperties")
                .cloned()
                .unwrap_or(Value::Bool(true)),
        );
        let names: BTreeSet<&String> = op.keys().chain(np.keys()).collect();
        for name in names {
            let field = field_path(path, name);
            match (op.get(name), np.get(name)) {
                (Some(ov), Some(nv)) => {
                    let new_default = self.default_of(Side::New, nv);
                    let old_default = self.default_of(Side::Old, ov);
                    match (or.contains(name), nr.contains(name)) {
                        (false, true) => {
                            let backward = Impact::when(new_default.is_none(), || {
                                "old messages may omit it and it has no default".to_owned()
                            });
                            self.push(
                                &field,
                                ChangeKind::FieldBecameRequired {
                                    name: name.clone(),
                                    default: new_default,
                                },
                                backward,
                                Impact::Safe,
                            );
                        }
                        (true, false) => {
                            let forward = Impact::when(old_default.is_none(), || {
                                "readers of the old schema require it and new messages may omit it"
                                    .to_owned()
                            });
                            self.push(
                                &field,
                                ChangeKind::FieldBecameOptional { name: name.clone() },
                                Impact::Safe,
                                forward,
                            );
                        }
                        _ => {}
                    }
                    self.node(ov, nv, &field, depth + 1);
                }
                (Some(ov), None) => {
                    let was_required = or.contains(name);
                    let backward =
                        self.undeclared(&na, ov, Side::Old, &field, "old messages still carry it");
                    let forward = Impact::when(
                        was_required && self.default_of(Side::Old, ov).is_none(),
                        || {
                            "readers of the old schema require it and new messages no longer carry it".to_owned()
                        },
                    );
                    self.push(
                        &field,
                        ChangeKind::FieldRemoved {
                            name: name.clone(),
                            required: was_required,
                        },
                        backward,
                        forward,
                    );
                }
                (None, Some(nv)) => {
                    let is_required = nr.contains(name);
                    let default = self.default_of(Side::New, nv);
                    let backward = Impact::when(is_required && default.is_none(), || {
                        "old messages do not carry it and it has no default".to_owned()
                    });
                    let forward =
                        self.undeclared(&oa, nv, Side::New, &field, "new messages carry it");
                    self.push(
                        &field,
                        ChangeKind::FieldAdded {
                            name: name.clone(),
                            required: is_required,
                            default,
                        },
                        backward,
                        forward,
                    );
                }
                (None, None) => {}
            }
        }
        let open = |v: &Value| -> Option<&'static str> {
            match v {
                Value::Bool(true) => Some("allowed"),
                Value::Bool(false) => Some("rejected"),
                _ => None,
            }
        };
        match (open(&oa), open(&na)) {
            (Some(a), Some(b)) if a != b => self.push(
                path,
                ChangeKind::AdditionalPropertiesChanged {
                    old: a.to_owned(),
                    new: b.to_owned(),
                },
                Impact::Safe,
                Impact::Safe,
            ),
            (Some(_), Some(_)) => {}
            // A map (`HashMap<String, T>`): its values are compared like items.
            _ if oa != na => self.node(&oa, &na, &format!("{path}.*"), depth + 1),
            _ => {}
        }
    }

    /// What a reader whose `additionalProperties` is `reader` does with a field
    /// it does not declare, whose schema on the writer's side is `field`.
    fn undeclared(
        &self,
        reader: &Value,
        field: &Value,
        writer: Side,
        path: &str,
        carried: &str,
    ) -> Impact {
        match reader {
            Value::Bool(true) => Impact::Safe,
            Value::Bool(false) => Impact::breaking(format!(
                "{carried}, and readers that do not declare it reject unknown fields \
                 (`additionalProperties: false`, serde `deny_unknown_fields`)"
            )),
            schema => {
                // A map reader: the field must fit the map's value schema.
                let mut inner = Walk {
                    old_root: self.old_root,
                    new_root: self.new_root,
                    changes: Vec::new(),
                    visiting: BTreeSet::new(),
                };
                let (writer_schema, reader_schema, mode) = match writer {
                    Side::Old => (field, schema, Mode::Backward),
                    Side::New => (schema, field, Mode::Forward),
                };
                inner.node(writer_schema, reader_schema, path, 0);
                Impact::when(inner.changes.iter().any(|c| c.breaks(mode)), || {
                    format!(
                        "{carried}, and it does not fit the other side's `additionalProperties`"
                    )
                })
            }
        }
    }

    /// The `default` of a property schema, following `$ref`.
    fn default_of(&self, side: Side, schema: &Value) -> Option<Value> {
        self.resolve(side, schema).ok()?.get("default").cloned()
    }
}

/// A variant tag: which variant an object alternative is.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Tag {
    /// `{"kind": "card", …}`.
    Internal { field: String, value: String },
    /// `{"Card": {…}}`.
    External(String),
}

impl Tag {
    fn variant(&self) -> &str {
        match self {
            Tag::Internal { value, .. } => value,
            Tag::External(name) => name,
        }
    }

    fn label(&self) -> String {
        match self {
            Tag::Internal { field, value } => format!("{field}={value}"),
            Tag::External(name) => name.clone(),
        }
    }
}

/// An inclusive numeric interval; `None` is unbounded.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Range {
    lo: Option<f64>,
    hi: Option<f64>,
}

impl Range {
    const ANY: Range = Range { lo: None, hi: None };

    fn contains(&self, other: &Range) -> bool {
        let lo = match (self.lo, other.lo) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(a), Some(b)) => a <= b,
        };
        let hi = match (self.hi, other.hi) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(a), Some(b)) => a >= b,
        };
        lo && hi
    }

    fn hull(self, other: Range) -> Range {
        Range {
            lo: self.lo.zip(other.lo).map(|(a, b)| a.min(b)),
            hi: self.hi.zip(other.hi).map(|(a, b)| a.max(b)),
        }
    }

    fn narrow(self, lo: Option<f64>, hi: Option<f64>) -> Range {
        Range {
            lo: match (self.lo, lo) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            },
            hi: match (self.hi, hi) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
        }
    }
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |v: Option<f64>, inf: &str| v.map_or_else(|| inf.to_owned(), |v| format!("{v}"));
        write!(f, "[{}, {}]", show(self.lo, "-inf"), show(self.hi, "inf"))
    }
}

/// The values a number schema accepts: its `format`'s range narrowed by
/// `minimum`/`maximum` (and their exclusive forms).
fn numeric_range(kind: Kind, schema: &Map<String, Value>) -> Range {
    let format = schema.get("format").and_then(Value::as_str).unwrap_or("");
    let bits = |n: i32| 2f64.powi(n);
    let by_format = match format {
        "int8" => Range {
            lo: Some(-bits(7)),
            hi: Some(bits(7) - 1.0),
        },
        "int16" => Range {
            lo: Some(-bits(15)),
            hi: Some(bits(15) - 1.0),
        },
        "int32" => Range {
            lo: Some(-bits(31)),
            hi: Some(bits(31) - 1.0),
        },
        "int64" | "int" => Range {
            lo: Some(-bits(63)),
            hi: Some(bits(63) - 1.0),
        },
        "int128" => Range {
            lo: Some(-bits(127)),
            hi: Some(bits(127) - 1.0),
        },
        "uint8" => Range {
            lo: Some(0.0),
            hi: Some(bits(8) - 1.0),
        },
        "uint16" => Range {
            lo: Some(0.0),
            hi: Some(bits(16) - 1.0),
        },
        "uint32" => Range {
            lo: Some(0.0),
            hi: Some(bits(32) - 1.0),
        },
        "uint64" | "uint" => Range {
            lo: Some(0.0),
            hi: Some(bits(64) - 1.0),
        },
        "uint128" => Range {
            lo: Some(0.0),
            hi: Some(bits(128) - 1.0),
        },
        "float" if kind == Kind::Number => Range {
            lo: Some(f64::from(f32::MIN)),
            hi: Some(f64::from(f32::MAX)),
        },
        _ => Range::ANY,
    };
    let num = |k: &str| schema.get(k).and_then(Value::as_f64);
    // For integers an exclusive bound is the next integer in; for numbers the
    // difference does not matter to a reader's type.
    let step = if kind == Kind::Integer { 1.0 } else { 0.0 };
    let lo = [num("minimum"), num("exclusiveMinimum").map(|v| v + step)]
        .into_iter()
        .flatten()
        .reduce(f64::max);
    let hi = [num("maximum"), num("exclusiveMaximum").map(|v| v - step)]
        .into_iter()
        .flatten()
        .reduce(f64::min);
    by_format.narrow(lo, hi)
}

/// The types a schema without `type` constrains, judged by its keywords.
fn implied_kinds(schema: &Map<String, Value>) -> Vec<Kind> {
    let has = |keys: &[&str]| keys.iter().any(|k| schema.contains_key(*k));
    if has(&["properties", "required", "additionalProperties"]) {
        vec![Kind::Object]
    } else if has(&["items", "prefixItems", "minItems", "maxItems"]) {
        vec![Kind::Array]
    } else if has(&["minLength", "maxLength", "pattern"]) {
        vec![Kind::String]
    } else {
        Vec::new()
    }
}

/// Merges one `allOf` member into `into`: properties and `required` are
/// combined, other keywords must agree.
fn merge_all_of(into: &mut Map<String, Value>, part: Map<String, Value>) -> Result<(), String> {
    for (key, value) in part {
        match (key.as_str(), into.get_mut(&key), value) {
            (_, None, value) => {
                into.insert(key, value);
            }
            ("properties", Some(Value::Object(props)), Value::Object(more)) => {
                props.extend(more);
            }
            ("required", Some(Value::Array(names)), Value::Array(more)) => {
                for name in more {
                    if !names.contains(&name) {
                        names.push(name);
                    }
                }
            }
            (_, Some(existing), value) if *existing == value => {}
            (k, _, _) if ANNOTATIONS.contains(&k) => {}
            (k, Some(_), _) => return Err(format!("`allOf` members disagree on `{k}`")),
        }
    }
    Ok(())
}

/// The `$ref` of a schema, if it is a reference.
fn ref_of(schema: &Value) -> Option<&str> {
    schema.get("$ref").and_then(Value::as_str)
}

/// Resolves a same-document reference (`#`, `#/$defs/Name`).
fn lookup<'v>(root: &'v Value, reference: &str) -> Option<&'v Value> {
    let pointer = reference.strip_prefix('#')?;
    if pointer.is_empty() {
        return Some(root);
    }
    root.pointer(pointer)
}

fn field_path(path: &str, name: &str) -> String {
    let plain = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if plain {
        format!("{path}.{name}")
    } else {
        format!("{path}[{}]", Value::String(name.to_owned()))
    }
}

#[cfg(test)]
mod tests {
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
