//! A schema split into single-type alternatives, and how the alternatives
//! of the old and the new schema are paired.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

use super::change::list;
use super::walk::{Side, Walk, ANNOTATIONS, MAX_DEPTH};
use super::{ChangeKind, Impact};

/// A JSON type. The order is the order types are listed in reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Kind {
    Null,
    Boolean,
    Integer,
    Number,
    String,
    Array,
    Object,
}

impl Kind {
    pub(super) fn parse(name: &str) -> Option<Kind> {
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

    pub(super) fn of(value: &Value) -> Kind {
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

    pub(super) fn name(self) -> &'static str {
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
    pub(super) fn covers(self, other: Kind) -> bool {
        self == other || (self == Kind::Number && other == Kind::Integer)
    }
}

/// One alternative of a schema: a single JSON type (or anything), with the
/// keywords that constrain it and the values an `enum`/`const` allows.
#[derive(Debug, Clone)]
pub(super) struct Alt {
    pub(super) kind: Option<Kind>,
    /// Whether it came from an `anyOf`/`oneOf` branch, whose own keywords the
    /// node-level comparison has not seen.
    pub(super) branch: bool,
    pub(super) schema: Map<String, Value>,
    pub(super) values: Option<Vec<Value>>,
}

impl Walk<'_> {
    /// Splits a resolved schema into single-type alternatives.
    pub(super) fn alternatives(
        &self,
        side: Side,
        schema: &Map<String, Value>,
    ) -> Result<Vec<Alt>, String> {
        let mut out = Vec::new();
        self.collect_alternatives(side, schema, &mut out, 0)?;
        Ok(out)
    }

    pub(super) fn collect_alternatives(
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

    pub(super) fn alternatives_diff(&mut self, old: &[Alt], new: &[Alt], path: &str, depth: usize) {
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
    pub(super) fn kind_diff(
        &mut self,
        kind: Kind,
        old: &[Alt],
        new: &[Alt],
        path: &str,
        depth: usize,
    ) {
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
    pub(super) fn pairwise(&mut self, old: &[Alt], new: &[Alt], path: &str, depth: usize) {
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
}

/// The types a schema without `type` constrains, judged by its keywords.
pub(super) fn implied_kinds(schema: &Map<String, Value>) -> Vec<Kind> {
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
