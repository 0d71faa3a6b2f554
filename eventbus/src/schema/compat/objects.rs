//! Objects: properties, `required`, additional properties and the variants
//! of tagged enums.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

use super::alternatives::Alt;
use super::walk::{field_path, Side, Walk};
use super::{ChangeKind, Impact, Mode};

impl Walk<'_> {
    /// Object alternatives: one on each side is a struct; several are the
    /// variants of a tagged enum, matched by tag.
    pub(super) fn objects(&mut self, old: &[Alt], new: &[Alt], path: &str, depth: usize) {
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
    pub(super) fn tag(&self, side: Side, schema: &Map<String, Value>) -> Option<Tag> {
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

    pub(super) fn object(
        &mut self,
        o: &Map<String, Value>,
        n: &Map<String, Value>,
        path: &str,
        depth: usize,
    ) {
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
    pub(super) fn undeclared(
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
    pub(super) fn default_of(&self, side: Side, schema: &Value) -> Option<Value> {
        self.resolve(side, schema).ok()?.get("default").cloned()
    }
}

/// A variant tag: which variant an object alternative is.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Tag {
    /// `{"kind": "card", …}`.
    Internal { field: String, value: String },
    /// `{"Card": {…}}`.
    External(String),
}

impl Tag {
    pub(super) fn variant(&self) -> &str {
        match self {
            Tag::Internal { value, .. } => value,
            Tag::External(name) => name,
        }
    }

    pub(super) fn label(&self) -> String {
        match self {
            Tag::Internal { field, value } => format!("{field}={value}"),
            Tag::External(name) => name.clone(),
        }
    }
}
