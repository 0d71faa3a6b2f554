//! Payload validation: whether a JSON value matches an event's JSON Schema,
//! for the subset of JSON Schema 2020-12 that schemars emits.
//!
//! A focused validator rather than a general one (such as the `jsonschema`
//! crate): the schemas come from our own derive, so the keywords are known,
//! and the SDK stays free of a regex engine, a URI resolver and their builds.
//!
//! Checked: `type` (one or several, `"null"` for `Option`), `enum`, `const`,
//! `$ref` into the same document (`#`, `#/$defs/…`, `#/definitions/…`),
//! `allOf`/`anyOf`/`oneOf`/`not`, `properties`, `required`,
//! `additionalProperties`, `minProperties`/`maxProperties`, `items`,
//! `prefixItems`, `minItems`/`maxItems`, `uniqueItems`,
//! `minLength`/`maxLength`, `minimum`/`maximum`,
//! `exclusiveMinimum`/`exclusiveMaximum`, `multipleOf`, and the integer
//! `format`s (`int8` … `uint64`). Not checked (accepted as they are): `pattern`,
//! `patternProperties`, string `format`s (`date-time`, `uuid`, `email`, …),
//! conditionals (`if`/`then`/`else`, `dependent*`). A `$ref` to another
//! document cannot be resolved and is reported as a violation. Why a
//! validator of our own: `docs/adr/0009-hand-written-json-schema-validator.md`.

use std::fmt;

use serde_json::{Map, Value};

/// At most this many violations are collected: the first few say what is wrong.
const MAX_VIOLATIONS: usize = 20;
/// Deeper nesting (of the value, or of `$ref`s) than this is reported, not followed.
const MAX_DEPTH: usize = 128;

/// One way a payload breaks its schema: where, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The JSON path of the offending value: `$` is the payload,
    /// `$.lines[2].sku` a field of an array item.
    pub path: String,
    /// What is wrong, e.g. `expected integer, found string`.
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// A payload that does not match the JSON Schema of its event type and
/// version: what [`Outbox`](crate::Outbox) refuses to write when it validates
/// payloads, with every [`Violation`] found (up to 20).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "payload of event `{event_type}` v{version} does not match its schema: {}",
    list(violations)
)]
pub struct ValidationError {
    /// The CloudEvents type.
    pub event_type: String,
    /// The schema version.
    pub version: u32,
    /// What is wrong, in document order; never empty.
    pub violations: Vec<Violation>,
}

fn list(violations: &[Violation]) -> String {
    violations
        .iter()
        .map(Violation::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Checks `value` against `schema` (a schemars-generated JSON Schema, whose
/// `$ref`s point into itself). Returns every violation found, up to 20; an
/// empty list means the value matches.
///
/// See the module documentation for the keywords checked.
///
/// ```
/// use serde_json::json;
///
/// let schema = json!({
///     "type": "object",
///     "properties": { "amount_cents": { "type": "integer", "format": "int64" } },
///     "required": ["amount_cents"]
/// });
/// assert!(eventbus::schema::validate(&schema, &json!({ "amount_cents": 5 })).is_empty());
///
/// let violations = eventbus::schema::validate(&schema, &json!({ "amount_cents": "5" }));
/// assert_eq!(violations[0].to_string(), "$.amount_cents: expected integer, found string");
/// ```
pub fn validate(schema: &Value, value: &Value) -> Vec<Violation> {
    let mut validator = Validator {
        root: schema,
        violations: Vec::new(),
    };
    let mut path = String::from("$");
    validator.check(schema, value, &mut path, 0);
    validator.violations
}

/// Checks `payload`, a serialized `E`, against `E`'s JSON Schema, generated
/// once per type and kept for the life of the process.
pub(crate) fn check_event<E: crate::Event>(payload: &str) -> Result<(), ValidationError> {
    use std::any::TypeId;
    use std::collections::HashMap;
    use std::sync::{Arc, OnceLock, PoisonError, RwLock};

    static SCHEMAS: OnceLock<RwLock<HashMap<TypeId, Arc<Value>>>> = OnceLock::new();
    let schemas = SCHEMAS.get_or_init(RwLock::default);
    let cached = schemas
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&TypeId::of::<E>())
        .cloned();
    let schema = match cached {
        Some(schema) => schema,
        None => {
            let schema = Arc::new(<E as crate::Event>::json_schema());
            schemas
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(TypeId::of::<E>(), Arc::clone(&schema));
            schema
        }
    };
    let violations = match serde_json::from_str::<Value>(payload) {
        Ok(value) => validate(&schema, &value),
        Err(e) => vec![Violation {
            path: "$".into(),
            message: format!("not JSON: {e}"),
        }],
    };
    if violations.is_empty() {
        return Ok(());
    }
    Err(ValidationError {
        event_type: E::TYPE.to_owned(),
        version: E::VERSION,
        violations,
    })
}

struct Validator<'s> {
    root: &'s Value,
    violations: Vec<Violation>,
}

impl<'s> Validator<'s> {
    fn report(&mut self, path: &str, message: impl Into<String>) {
        if self.violations.len() < MAX_VIOLATIONS {
            self.violations.push(Violation {
                path: path.to_owned(),
                message: message.into(),
            });
        }
    }

    /// Whether `value` matches `schema`, without recording why not.
    fn matches(&self, schema: &'s Value, value: &Value, path: &mut String, depth: usize) -> bool {
        let mut probe = Validator {
            root: self.root,
            violations: Vec::new(),
        };
        probe.check(schema, value, path, depth);
        probe.violations.is_empty()
    }

    fn check(&mut self, schema: &'s Value, value: &Value, path: &mut String, depth: usize) {
        if self.violations.len() >= MAX_VIOLATIONS {
            return;
        }
        if depth > MAX_DEPTH {
            self.report(path, "nested too deeply to validate");
            return;
        }
        let schema = match schema {
            Value::Bool(true) => return,
            Value::Bool(false) => {
                self.report(path, "no value is allowed here");
                return;
            }
            Value::Object(schema) => schema,
            // Not a schema: nothing to check against.
            _ => return,
        };
        if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
            match resolve(self.root, reference) {
                Some(target) => self.check(target, value, path, depth + 1),
                None => self.report(path, format!("unresolvable $ref `{reference}`")),
            }
        }
        if let Some(types) = schema.get("type") {
            if !type_matches(types, value) {
                self.report(
                    path,
                    format!("expected {}, found {}", describe_types(types), kind(value)),
                );
                // The other keywords would only repeat the mismatch.
                return;
            }
        }
        if let Some(Value::Array(allowed)) = schema.get("enum") {
            if !allowed.iter().any(|a| json_eq(a, value)) {
                self.report(
                    path,
                    format!("{} is not one of {}", short(value), short_list(allowed)),
                );
            }
        }
        if let Some(constant) = schema.get("const") {
            if !json_eq(constant, value) {
                self.report(
                    path,
                    format!("expected {}, found {}", short(constant), short(value)),
                );
            }
        }
        self.check_combinators(schema, value, path, depth);
        match value {
            Value::Object(object) => self.check_object(schema, object, path, depth),
            Value::Array(items) => self.check_array(schema, items, path, depth),
            Value::String(s) => self.check_string(schema, s, path),
            Value::Number(_) => self.check_number(schema, value, path),
            Value::Null | Value::Bool(_) => {}
        }
    }

    fn check_combinators(
        &mut self,
        schema: &'s Map<String, Value>,
        value: &Value,
        path: &mut String,
        depth: usize,
    ) {
        if let Some(Value::Array(all)) = schema.get("allOf") {
            for sub in all {
                self.check(sub, value, path, depth + 1);
            }
        }
        if let Some(Value::Array(any)) = schema.get("anyOf") {
            if !any
                .iter()
                .any(|sub| self.matches(sub, value, path, depth + 1))
            {
                self.report(
                    path,
                    format!("matches none of the {} alternatives (anyOf)", any.len()),
                );
            }
        }
        if let Some(Value::Array(one)) = schema.get("oneOf") {
            let matching = one
                .iter()
                .filter(|sub| self.matches(sub, value, path, depth + 1))
                .count();
            if matching != 1 {
                self.report(
                    path,
                    format!(
                        "matches {matching} of the {} alternatives, not exactly one (oneOf)",
                        one.len()
                    ),
                );
            }
        }
        if let Some(not) = schema.get("not") {
            if self.matches(not, value, path, depth + 1) {
                self.report(path, "matches a schema it must not match (not)");
            }
        }
    }

    fn check_object(
        &mut self,
        schema: &'s Map<String, Value>,
        object: &Map<String, Value>,
        path: &mut String,
        depth: usize,
    ) {
        if let Some(Value::Array(required)) = schema.get("required") {
            for name in required.iter().filter_map(Value::as_str) {
                if !object.contains_key(name) {
                    self.report(path, format!("required field `{name}` is missing"));
                }
            }
        }
        let properties = schema.get("properties").and_then(Value::as_object);
        // Keys matching a pattern are not checked (no regex engine here), so
        // they are not "additional" either.
        let open = schema.contains_key("patternProperties");
        let additional = schema.get("additionalProperties");
        for (name, field) in object {
            let len = path.len();
            push_field(path, name);
            match properties.and_then(|p| p.get(name)) {
                Some(sub) => self.check(sub, field, path, depth + 1),
                None if open => {}
                None => match additional {
                    Some(Value::Bool(false)) => {
                        path.truncate(len);
                        self.report(path, format!("field `{name}` is not allowed"));
                    }
                    Some(sub) => self.check(sub, field, path, depth + 1),
                    None => {}
                },
            }
            path.truncate(len);
        }
        let count = object.len() as u64;
        if let Some(min) = schema.get("minProperties").and_then(Value::as_u64) {
            if count < min {
                self.report(path, format!("has {count} fields, fewer than {min}"));
            }
        }
        if let Some(max) = schema.get("maxProperties").and_then(Value::as_u64) {
            if count > max {
                self.report(path, format!("has {count} fields, more than {max}"));
            }
        }
    }

    fn check_array(
        &mut self,
        schema: &'s Map<String, Value>,
        items: &[Value],
        path: &mut String,
        depth: usize,
    ) {
        let prefix = schema
            .get("prefixItems")
            .and_then(Value::as_array)
            .map_or(&[][..], Vec::as_slice);
        for (i, item) in items.iter().enumerate() {
            let sub = match prefix.get(i) {
                Some(sub) => sub,
                None => match schema.get("items") {
                    Some(sub) => sub,
                    None => continue,
                },
            };
            let len = path.len();
            path.push_str(&format!("[{i}]"));
            if matches!(sub, Value::Bool(false)) {
                path.truncate(len);
                self.report(
                    path,
                    format!(
                        "has {} items, at most {} allowed",
                        items.len(),
                        prefix.len()
                    ),
                );
                break;
            }
            self.check(sub, item, path, depth + 1);
            path.truncate(len);
        }
        let count = items.len() as u64;
        if let Some(min) = schema.get("minItems").and_then(Value::as_u64) {
            if count < min {
                self.report(path, format!("has {count} items, fewer than {min}"));
            }
        }
        if let Some(max) = schema.get("maxItems").and_then(Value::as_u64) {
            if count > max {
                self.report(path, format!("has {count} items, more than {max}"));
            }
        }
        if schema.get("uniqueItems") == Some(&Value::Bool(true)) {
            let repeated = items
                .iter()
                .enumerate()
                .any(|(i, a)| items[..i].iter().any(|b| json_eq(a, b)));
            if repeated {
                self.report(path, "items are not unique");
            }
        }
    }

    fn check_string(&mut self, schema: &Map<String, Value>, s: &str, path: &str) {
        let chars = s.chars().count() as u64;
        if let Some(min) = schema.get("minLength").and_then(Value::as_u64) {
            if chars < min {
                self.report(
                    path,
                    format!("is {chars} characters long, shorter than {min}"),
                );
            }
        }
        if let Some(max) = schema.get("maxLength").and_then(Value::as_u64) {
            if chars > max {
                self.report(
                    path,
                    format!("is {chars} characters long, longer than {max}"),
                );
            }
        }
    }

    fn check_number(&mut self, schema: &Map<String, Value>, value: &Value, path: &str) {
        let Some(n) = value.as_f64() else { return };
        let bound = |key: &str| schema.get(key).and_then(Value::as_f64);
        if let Some(min) = bound("minimum") {
            if n < min {
                self.report(path, format!("{value} is less than the minimum {min}"));
            }
        }
        if let Some(max) = bound("maximum") {
            if n > max {
                self.report(path, format!("{value} is more than the maximum {max}"));
            }
        }
        if let Some(min) = bound("exclusiveMinimum") {
            if n <= min {
                self.report(path, format!("{value} is not more than {min}"));
            }
        }
        if let Some(max) = bound("exclusiveMaximum") {
            if n >= max {
                self.report(path, format!("{value} is not less than {max}"));
            }
        }
        if let Some(step) = bound("multipleOf").filter(|s| *s > 0.0) {
            let q = n / step;
            if (q - q.round()).abs() > 1e-9 {
                self.report(path, format!("{value} is not a multiple of {step}"));
            }
        }
        if let Some(format) = schema.get("format").and_then(Value::as_str) {
            if let Some((lo, hi)) = integer_range(format) {
                let fits = match (value.as_i64(), value.as_u64()) {
                    (Some(i), _) => i128::from(i) >= lo && i128::from(i) <= hi,
                    (None, Some(u)) => i128::from(u) <= hi,
                    (None, None) => false,
                };
                if !fits {
                    self.report(path, format!("{value} does not fit format `{format}`"));
                }
            }
        }
    }
}

/// The range of an integer `format` schemars emits.
fn integer_range(format: &str) -> Option<(i128, i128)> {
    Some(match format {
        "int8" => (i128::from(i8::MIN), i128::from(i8::MAX)),
        "int16" => (i128::from(i16::MIN), i128::from(i16::MAX)),
        "int32" => (i128::from(i32::MIN), i128::from(i32::MAX)),
        "int64" | "int" => (i128::from(i64::MIN), i128::from(i64::MAX)),
        "uint8" => (0, i128::from(u8::MAX)),
        "uint16" => (0, i128::from(u16::MAX)),
        "uint32" => (0, i128::from(u32::MAX)),
        "uint64" | "uint" => (0, i128::from(u64::MAX)),
        _ => return None,
    })
}

/// The schema a same-document `$ref` points to: `#`, or a JSON pointer after `#`.
fn resolve<'s>(root: &'s Value, reference: &str) -> Option<&'s Value> {
    let pointer = reference.strip_prefix('#')?;
    if pointer.is_empty() {
        return Some(root);
    }
    root.pointer(&pointer.replace("%25", "%"))
}

fn type_matches(types: &Value, value: &Value) -> bool {
    match types {
        Value::String(t) => is_type(t, value),
        Value::Array(ts) => ts
            .iter()
            .filter_map(Value::as_str)
            .any(|t| is_type(t, value)),
        _ => true,
    }
}

fn is_type(t: &str, value: &Value) -> bool {
    match t {
        "null" => value.is_null(),
        "boolean" => value.is_boolean(),
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "number" => value.is_number(),
        "integer" => is_integer(value),
        _ => false,
    }
}

fn is_integer(value: &Value) -> bool {
    match value {
        Value::Number(n) => {
            n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.fract() == 0.0)
        }
        _ => false,
    }
}

/// JSON equality, with `1` and `1.0` equal as JSON Schema says.
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(x), Some(y)) => x == y,
            _ => match (x.as_u64(), y.as_u64()) {
                (Some(x), Some(y)) => x == y,
                _ => x.as_f64() == y.as_f64(),
            },
        },
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_eq(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, a)| y.get(k).is_some_and(|b| json_eq(a, b)))
        }
        _ => a == b,
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() && !is_integer(value) => "number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn describe_types(types: &Value) -> String {
    match types {
        Value::String(t) => t.clone(),
        Value::Array(ts) => ts
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(" or "),
        other => other.to_string(),
    }
}

/// A value for a message: its JSON, cut short.
fn short(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() <= 60 {
        return text;
    }
    let cut: String = text.chars().take(57).collect();
    format!("{cut}...")
}

fn short_list(values: &[Value]) -> String {
    let shown: Vec<String> = values.iter().take(10).map(short).collect();
    let more = values.len().saturating_sub(10);
    if more > 0 {
        format!("[{}, and {more} more]", shown.join(", "))
    } else {
        format!("[{}]", shown.join(", "))
    }
}

fn push_field(path: &mut String, name: &str) {
    let plain = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if plain {
        path.push('.');
        path.push_str(name);
    } else {
        path.push_str(&format!("[{}]", Value::String(name.to_owned())));
    }
}

#[cfg(test)]
mod tests {
    use serde::Serialize;
    use serde_json::json;

    use super::*;

    #[derive(Serialize, schemars::JsonSchema)]
    #[serde(rename_all = "snake_case")]
    enum Channel {
        Web,
        Phone,
    }

    #[derive(Serialize, schemars::JsonSchema)]
    #[serde(tag = "kind", rename_all = "snake_case")]
    enum Payment {
        Card { last4: String },
        Invoice { days: u8 },
    }

    #[derive(Serialize, schemars::JsonSchema)]
    struct Line {
        sku: String,
        quantity: u32,
    }

    #[derive(Serialize, schemars::JsonSchema)]
    #[serde(deny_unknown_fields)]
    struct Order {
        order_id: String,
        amount_cents: i64,
        channel: Channel,
        coupon: Option<String>,
        lines: Vec<Line>,
        payment: Payment,
        tags: std::collections::BTreeMap<String, i16>,
        #[schemars(length(min = 3, max = 3))]
        currency: String,
        #[schemars(range(min = 1, max = 10))]
        priority: u8,
    }

    fn schema() -> Value {
        schemars::schema_for!(Order).to_value()
    }

    fn valid() -> Value {
        json!({
            "order_id": "o-1", "amount_cents": 1250, "channel": "web", "coupon": null,
            "lines": [{ "sku": "a", "quantity": 2 }],
            "payment": { "kind": "card", "last4": "4242" },
            "tags": { "vip": 1 }, "currency": "EUR", "priority": 3
        })
    }

    fn paths(value: &Value) -> Vec<String> {
        validate(&schema(), value)
            .into_iter()
            .map(|v| v.to_string())
            .collect()
    }

    #[test]
    fn what_serde_writes_is_valid() {
        let variants = [
            (Channel::Phone, Payment::Invoice { days: 30 }),
            (
                Channel::Web,
                Payment::Card {
                    last4: "4242".into(),
                },
            ),
        ];
        for (channel, payment) in variants {
            let order = Order {
                order_id: "o-1".into(),
                amount_cents: -5,
                channel,
                coupon: Some("X".into()),
                lines: vec![],
                payment,
                tags: Default::default(),
                currency: "SEK".into(),
                priority: 10,
            };
            let value = serde_json::to_value(&order).expect("serializes");
            assert_eq!(validate(&schema(), &value), vec![]);
        }
        assert_eq!(validate(&schema(), &valid()), vec![]);
    }

    #[test]
    fn each_keyword_reports_where_and_what() {
        let mut v = valid();
        v["amount_cents"] = json!("1250");
        v["channel"] = json!("store");
        v["lines"][0]["quantity"] = json!(-1);
        v["tags"]["vip"] = json!(40_000);
        v["currency"] = json!("EURO");
        v["priority"] = json!(11);
        v["extra"] = json!(true);
        v.as_object_mut().map(|o| o.remove("order_id"));
        let found = paths(&v);
        for expected in [
            "$: required field `order_id` is missing",
            "$.amount_cents: expected integer, found string",
            "$: field `extra` is not allowed",
            "$.lines[0].quantity: -1 is less than the minimum 0",
            "$.tags.vip: 40000 does not fit format `int16`",
            "$.currency: is 4 characters long, longer than 3",
            "$.priority: 11 is more than the maximum 10",
        ] {
            assert!(
                found.iter().any(|f| f == expected),
                "{expected} not in {found:#?}"
            );
        }
        assert!(
            found.iter().any(|f| f.starts_with("$.channel:")),
            "{found:#?}"
        );
    }

    #[test]
    fn tagged_variants_and_nullable_fields() {
        let mut v = valid();
        v["payment"] = json!({ "kind": "invoice", "days": "thirty" });
        v["coupon"] = json!(5);
        let found = paths(&v);
        assert!(
            found.iter().any(|f| f.starts_with("$.payment: matches 0")),
            "{found:#?}"
        );
        assert!(
            found
                .iter()
                .any(|f| f == "$.coupon: expected string or null, found integer"),
            "{found:#?}"
        );
    }

    #[test]
    fn references_and_boolean_schemas() {
        let schema = json!({
            "$defs": { "Node": { "type": "object", "properties": {
                "next": { "anyOf": [{ "$ref": "#/$defs/Node" }, { "type": "null" }] } } } },
            "$ref": "#/$defs/Node"
        });
        assert!(validate(&schema, &json!({ "next": { "next": null } })).is_empty());
        assert!(!validate(&schema, &json!({ "next": { "next": 1 } })).is_empty());
        assert_eq!(validate(&json!(false), &json!(1)).len(), 1);
        let dangling = validate(&json!({ "$ref": "#/$defs/Nope" }), &json!(1));
        assert_eq!(dangling[0].message, "unresolvable $ref `#/$defs/Nope`");
    }
}
