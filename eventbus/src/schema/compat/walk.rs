//! The walk over two schemas side by side: `$ref` resolution, the depth
//! bound, and the keywords every node compares.

use std::collections::BTreeSet;

use serde_json::{Map, Value};

use super::{Change, ChangeKind, Impact};

/// Deeper than any real event; only a pathological schema gets here.
pub(super) const MAX_DEPTH: usize = 64;

/// Keywords that document but do not constrain.
pub(super) const ANNOTATIONS: &[&str] = &[
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
pub(super) const INTERPRETED: &[&str] = &[
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

/// Which side of the comparison a schema belongs to, for `$ref` resolution.
#[derive(Debug, Clone, Copy)]
pub(super) enum Side {
    Old,
    New,
}

pub(super) struct Walk<'a> {
    pub(super) old_root: &'a Value,
    pub(super) new_root: &'a Value,
    pub(super) changes: Vec<Change>,
    /// `$ref` pairs being compared, so recursive types end.
    pub(super) visiting: BTreeSet<(String, String)>,
}

impl Walk<'_> {
    pub(super) fn push(&mut self, path: &str, kind: ChangeKind, backward: Impact, forward: Impact) {
        self.changes.push(Change {
            path: path.to_owned(),
            kind,
            backward,
            forward,
        });
    }

    pub(super) fn unsupported(&mut self, path: &str, keyword: &str, detail: impl Into<String>) {
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

    pub(super) fn root(&self, side: Side) -> &Value {
        match side {
            Side::Old => self.old_root,
            Side::New => self.new_root,
        }
    }

    /// The schema as one map: `$ref` followed (siblings of `$ref` win) and
    /// `allOf` merged. `true` is `{}`, `false` is `{"not": {}}`.
    pub(super) fn resolve(&self, side: Side, schema: &Value) -> Result<Map<String, Value>, String> {
        self.resolve_depth(side, schema, 0)
    }

    pub(super) fn resolve_depth(
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
    pub(super) fn node(&mut self, old: &Value, new: &Value, path: &str, depth: usize) {
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

    pub(super) fn node_resolved(&mut self, old: &Value, new: &Value, path: &str, depth: usize) {
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
    pub(super) fn keywords(&mut self, o: &Map<String, Value>, n: &Map<String, Value>, path: &str) {
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
}

/// Merges one `allOf` member into `into`: properties and `required` are
/// combined, other keywords must agree.
pub(super) fn merge_all_of(
    into: &mut Map<String, Value>,
    part: Map<String, Value>,
) -> Result<(), String> {
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
pub(super) fn ref_of(schema: &Value) -> Option<&str> {
    schema.get("$ref").and_then(Value::as_str)
}

/// Resolves a same-document reference (`#`, `#/$defs/Name`).
pub(super) fn lookup<'v>(root: &'v Value, reference: &str) -> Option<&'v Value> {
    let pointer = reference.strip_prefix('#')?;
    if pointer.is_empty() {
        return Some(root);
    }
    root.pointer(pointer)
}

pub(super) fn field_path(path: &str, name: &str) -> String {
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
