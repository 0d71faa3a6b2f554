//! Schema evolution: the compatibility classifier on a table of real schema
//! changes (schemars output of Rust struct pairs, and hand-written JSON), the
//! registry `#[derive(Event)]` fills, and export → check round trips in a
//! temporary directory, including the report a failing check prints.

use std::fmt::Write as _;

use eventbus::schema::{
    diff, ChangeKind, CheckOptions, EventSchema, FindingKind, Mode, Registry, SchemaError, Verdict,
};
use eventbus::Event;
use schemars::{schema_for, JsonSchema};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use Verdict::{Breaking, Compatible, Identical};

/// The schemas of two versions of one Rust type, each written as the items of
/// a module whose root type is `Event` (so both have the same `title`).
macro_rules! evolve {
    ({ $($old:tt)* } => { $($new:tt)* }) => {{
        #[allow(dead_code, unreachable_pub)]
        mod old {
            use super::*;
            $($old)*
        }
        #[allow(dead_code, unreachable_pub)]
        mod new {
            use super::*;
            $($new)*
        }
        (schema_for!(old::Event).to_value(), schema_for!(new::Event).to_value())
    }};
}

/// One row of the classification table.
struct Case {
    name: &'static str,
    schemas: (Value, Value),
    /// New readers, old messages.
    backward: Verdict,
    /// Old readers, new messages.
    forward: Verdict,
    /// Text one reported change must contain (`path: what`); empty for none.
    change: &'static str,
}

fn table() -> Vec<Case> {
    vec![
        Case {
            name: "nothing changed",
            schemas: evolve!(
                { #[derive(JsonSchema)] pub struct Event { pub id: String } } =>
                { #[derive(JsonSchema)] pub struct Event { pub id: String } }
            ),
            backward: Identical,
            forward: Identical,
            change: "",
        },
        Case {
            name: "doc comment changed",
            schemas: evolve!(
                { #[derive(JsonSchema)] pub struct Event { /// The id.
                  pub id: String } } =>
                { #[derive(JsonSchema)] pub struct Event { /// The order's id.
                  pub id: String } }
            ),
            backward: Compatible,
            forward: Compatible,
            change: "$.id: `description` changed",
        },
        Case {
            name: "new optional field",
            schemas: evolve!(
                { #[derive(JsonSchema)] pub struct Event { pub id: String } } =>
                { #[derive(JsonSchema)] pub struct Event { pub id: String, pub note: Option<String> } }
            ),
            backward: Compatible,
            forward: Compatible,
            change: "$.note: field `note` added (optional)",
        },
        Case {
            name: "new field with serde default",
            schemas: evolve!(
                { #[derive(JsonSchema)] pub struct Event { pub id: String } } =>
                { #[derive(JsonSchema)] pub struct Event { pub id: String, #[serde(default)] pub priority: u8 } }
            ),
            backward: Compatible,
            forward: Compatible,
            change: "$.priority: field `priority` added (optional, default 0)",
        },
        Case {
            name: "new required field without default",
            schemas: evolve!(
                { #[derive(JsonSchema)] pub struct Event { pub id: String } } =>
                { #[derive(JsonSchema)] pub struct Event { pub id: String, pub currency: String } }
            ),
            backward: Breaking,
            forward: Compatible,
            change: "$.currency: field `currency` added (required)",
        },
        Case {
            name: "required field removed",
            schemas: evolve!(
                { #[derive(JsonSchema)] pub struct Event { pub id: String, pub sku: String } } =>
                { #[derive(JsonSchema)] pub struct Event { pub id: String } }
            ),
            backward: Compatible,
            forward: Breaking,
            change: "$.sku: field `sku` removed (was required)",
        },
        Case {
            name: "optional field removed",
            schemas: evolve!(
                { #[derive(JsonSchema)] pub struct Event { pub id: String, pub note: Option<String> } } =>
                { #[derive(JsonSchema)] pub struct Event { pub id: String } }
            ),
            backward: Compatible,
            forward: Compatible,
            change: "$.note: field `note` removed (was optional)",
        },
        Case {
            name: "field removed, reader rejects unknown fields",
            schemas: evolve!(
                { #[derive(JsonSchema)] #[serde(deny_unknown_fields)]
                  pub struct Event { pub id: String, pub note: Option<String> } } =>
                { #[derive(JsonSchema)] #[serde(deny_unknown_fields)]
                  pub struct Event { pub id: String } }
            ),
            backward: Breaking,
            forward: Compatible,
            change: "$.note: field `note` removed",
        },
        Case {
            name: "optional field added, old reader rejects unknown fields",
            schemas: evolve!(
                { #[derive(JsonSchema)] #[serde(deny_unknown_fields)]
                  pub struct Event { pub id: String } } =>
                { #[derive(JsonSchema)] #[serde(deny_unknown_fields)]
                  pub struct Event { pub id: String, pub note: Option<String> } }
            ),
            backward: Compatible,
            forward: Breaking,
            change: "$.note: field `note` added (optional)",
        },
        Case {
            name: "field renamed",
            schemas: evolve!(
                { #[derive(JsonSchema)] pub struct Event { pub amount: i64 } } =>
                { #[derive(JsonSchema)] pub struct Event { pub amount_cents: i64 } }
            ),
            backward: Breaking,
            forward: Breaking,
            change: "$.amount_cents: field `amount_cents` added (required)",
        },
        Case {
            name: "type changed (integer to string)",
            schemas: evolve!(
                { #[derive(JsonSchema)] pub struct Event { pub quantity: i64 } } =>
                { #[derive(JsonSchema)] pub struct Event { pub quantity: String } }
            ),
            backward: Breaking,
            forward: Breaking,
            change: "$.quantity: type changed from integer to string",
        },
        Case {
            name: "integer widened to number",
            schemas: evolve!(
                { #[derive(JsonSchema)] pub struct Event { pub amount: i64 } } =>
                { #[derive(JsonSchema)] pub struct Event { pub amount: f64 } }
            ),
            backward: Compatible,
            forward: Breaking,
            change: "$.amount: type changed from integer to number",
        },
        Case {
            name: "number narrowed to integer",
            schemas: evolve!(
                { #[derive(JsonSchema)] pub struct Event { pub amount: f64 } } =>
                { #[derive(JsonSchema)] pub struct Event { pub amount: i64 } }
            ),
            backward: Breaking,
            forward: Compatible,
            change: "$.amount: type changed from number to integer",
        },
        Case {
            name: "integer width grown (i32 to i64)",
            schemas: evolve!(
                { #[derive(JsonSchema)] pub struct Event { pub count: i32 } } =>
                { #[derive(JsonSchema)] pub struct Event { pub count: i64 } }
            ),
            backward: Compatible,
            forward: Breaking,
            change: "$.count: format changed from int32 to int64",
        },
        Case {
            name: "unsigned width shrunk (u16 to u8)",
            schemas: evolve!(
                { #[derive(JsonSchema)] pub struct Event { pub count: u16 } } =>
                { #[derive(JsonSchema)] pub struct Event { pub count: u8 } }
            ),
            backward: Breaking,
            forward: Compatible,
            change: "$.count: format changed from uint16 to uint8",
        },
        Case {
            name: "optional field became required",
            schemas: evolve!(
                { #[derive(JsonSchema)] pub struct Event { pub note: Option<String> } } =>
                { #[derive(JsonSchema)] pub struct Event { pub note: String } }
            ),
            backward: Breaking,
            forward: Compatible,
            change: "$.note: field `note` became required",
        },
        Case {
            name: "required field became optional",
            schemas: evolve!(
                { #[derive(JsonSchema)] pub struct Event { pub note: String } } =>
                { #[derive(JsonSchema)] pub struct Event { pub note: Option<String> } }
            ),
            backward: Compatible,
            forward: Breaking,
            change: "$.note: null is now allowed",
        },
        Case {
            name: "enum value added",
            schemas: evolve!(
                { #[derive(JsonSchema)] pub enum Status { Open, Paid }
                  #[derive(JsonSchema)] pub struct Event { pub status: Status } } =>
                { #[derive(JsonSchema)] pub enum Status { Open, Paid, Refunded }
                  #[derive(JsonSchema)] pub struct Event { pub status: Status } }
            ),
            backward: Compatible,
            forward: Breaking,
            change: "$.status: enum values added: \"Refunded\"",
        },
        Case {
            name: "enum value removed",
            schemas: evolve!(
                { #[derive(JsonSchema)] pub enum Status { Open, Paid, Refunded }
                  #[derive(JsonSchema)] pub struct Event { pub status: Status } } =>
                { #[derive(JsonSchema)] pub enum Status { Open, Paid }
                  #[derive(JsonSchema)] pub struct Event { pub status: Status } }
            ),
            backward: Breaking,
            forward: Compatible,
            change: "$.status: enum values removed: \"Refunded\"",
        },
        Case {
            name: "documented enum value added (oneOf of consts)",
            schemas: evolve!(
                { #[derive(JsonSchema)] pub enum Status { /// Open.
                  Open, /// Paid.
                  Paid }
                  #[derive(JsonSchema)] pub struct Event { pub status: Status } } =>
                { #[derive(JsonSchema)] pub enum Status { /// Open.
                  Open, /// Paid.
                  Paid, /// Gone.
                  Refunded }
                  #[derive(JsonSchema)] pub struct Event { pub status: Status } }
            ),
            backward: Compatible,
            forward: Breaking,
            change: "$.status: enum values added: \"Refunded\"",
        },
        Case {
            name: "free string restricted to an enum",
            schemas: evolve!(
                { #[derive(JsonSchema)] pub struct Event { pub status: String } } =>
                { #[derive(JsonSchema)] pub enum Status { Open, Paid }
                  #[derive(JsonSchema)] pub struct Event { pub status: Status } }
            ),
            backward: Breaking,
            forward: Compatible,
            change: "$.status: values restricted to \"Open\", \"Paid\"",
        },
        Case {
            name: "internally tagged variant added",
            schemas: evolve!(
                { #[derive(JsonSchema)] #[serde(tag = "kind", rename_all = "snake_case")]
                  pub enum Method { Cash, Card { last4: String } }
                  #[derive(JsonSchema)] pub struct Event { pub method: Method } } =>
                { #[derive(JsonSchema)] #[serde(tag = "kind", rename_all = "snake_case")]
                  pub enum Method { Cash, Card { last4: String }, Voucher { code: String } }
                  #[derive(JsonSchema)] pub struct Event { pub method: Method } }
            ),
            backward: Compatible,
            forward: Breaking,
            change: "$.method: variant `voucher` added",
        },
        Case {
            name: "internally tagged variant removed",
            schemas: evolve!(
                { #[derive(JsonSchema)] #[serde(tag = "kind", rename_all = "snake_case")]
                  pub enum Method { Cash, Card { last4: String } }
                  #[derive(JsonSchema)] pub struct Event { pub method: Method } } =>
                { #[derive(JsonSchema)] #[serde(tag = "kind", rename_all = "snake_case")]
                  pub enum Method { Card { last4: String } }
                  #[derive(JsonSchema)] pub struct Event { pub method: Method } }
            ),
            backward: Breaking,
            forward: Compatible,
            change: "$.method: variant `cash` removed",
        },
        Case {
            name: "field of a tagged variant retyped",
            schemas: evolve!(
                { #[derive(JsonSchema)] #[serde(tag = "kind", rename_all = "snake_case")]
                  pub enum Method { Cash, Card { last4: String } }
                  #[derive(JsonSchema)] pub struct Event { pub method: Method } } =>
                { #[derive(JsonSchema)] #[serde(tag = "kind", rename_all = "snake_case")]
                  pub enum Method { Cash, Card { last4: u16 } }
                  #[derive(JsonSchema)] pub struct Event { pub method: Method } }
            ),
            backward: Breaking,
            forward: Breaking,
            change: "$.method[kind=card].last4: type changed from string to integer",
        },
        Case {
            name: "externally tagged variant with data added",
            schemas: evolve!(
                { #[derive(JsonSchema)] pub enum Method { Cash, Card { last4: String } }
                  #[derive(JsonSchema)] pub struct Event { pub method: Method } } =>
                { #[derive(JsonSchema)] pub enum Method { Cash, Card { last4: String }, Voucher(String) }
                  #[derive(JsonSchema)] pub struct Event { pub method: Method } }
            ),
            backward: Compatible,
            forward: Breaking,
            change: "$.method: variant `Voucher` added",
        },
        Case {
            name: "required field added in a nested struct",
            schemas: evolve!(
                { #[derive(JsonSchema)] pub struct Customer { pub name: String }
                  #[derive(JsonSchema)] pub struct Event { pub customer: Customer } } =>
                { #[derive(JsonSchema)] pub struct Customer { pub name: String, pub email: String }
                  #[derive(JsonSchema)] pub struct Event { pub customer: Customer } }
            ),
            backward: Breaking,
            forward: Compatible,
            change: "$.customer.email: field `email` added (required)",
        },
        Case {
            name: "optional nested struct gains an optional field",
            schemas: evolve!(
                { #[derive(JsonSchema)] pub struct Address { pub city: String }
                  #[derive(JsonSchema)] pub struct Event { pub ship_to: Option<Address> } } =>
                { #[derive(JsonSchema)] pub struct Address { pub city: String, pub zip: Option<String> }
                  #[derive(JsonSchema)] pub struct Event { pub ship_to: Option<Address> } }
            ),
            backward: Compatible,
            forward: Compatible,
            change: "$.ship_to.zip: field `zip` added (optional)",
        },
        Case {
            name: "array item type changed",
            schemas: evolve!(
                { #[derive(JsonSchema)] pub struct Event { pub lines: Vec<i64> } } =>
                { #[derive(JsonSchema)] pub struct Event { pub lines: Vec<String> } }
            ),
            backward: Breaking,
            forward: Breaking,
            change: "$.lines[]: type changed from integer to string",
        },
        Case {
            name: "map value type changed",
            schemas: evolve!(
                { #[derive(JsonSchema)] pub struct Event { pub prices: std::collections::BTreeMap<String, i64> } } =>
                { #[derive(JsonSchema)] pub struct Event { pub prices: std::collections::BTreeMap<String, String> } }
            ),
            backward: Breaking,
            forward: Breaking,
            change: "$.prices.*: type changed from integer to string",
        },
        Case {
            name: "struct renamed, same shape ($defs renamed)",
            schemas: evolve!(
                { #[derive(JsonSchema)] pub struct Money { pub cents: i64 }
                  #[derive(JsonSchema)] pub struct Event { pub total: Money } } =>
                { #[derive(JsonSchema)] pub struct Amount { pub cents: i64 }
                  #[derive(JsonSchema)] pub struct Event { pub total: Amount } }
            ),
            backward: Compatible,
            forward: Compatible,
            change: "$: only ordering or layout changed",
        },
        Case {
            name: "hand-written: new required field with a default",
            schemas: (
                json!({"type": "object", "properties": {"id": {"type": "string"}}, "required": ["id"]}),
                json!({"type": "object",
                       "properties": {"id": {"type": "string"}, "tries": {"type": "integer", "default": 0}},
                       "required": ["id", "tries"]}),
            ),
            backward: Compatible,
            forward: Compatible,
            change: "$.tries: field `tries` added (required, default 0)",
        },
        Case {
            name: "hand-written: string format added",
            schemas: (
                json!({"type": "object", "properties": {"id": {"type": "string"}}, "required": ["id"]}),
                json!({"type": "object", "properties": {"id": {"type": "string", "format": "uuid"}}, "required": ["id"]}),
            ),
            backward: Breaking,
            forward: Compatible,
            change: "$.id: format changed from none to uuid",
        },
        Case {
            name: "hand-written: maxLength tightened",
            schemas: (
                json!({"type": "string", "maxLength": 64}),
                json!({"type": "string", "maxLength": 16}),
            ),
            backward: Breaking,
            forward: Compatible,
            change: "$: length changed from [-inf, 64] to [-inf, 16]",
        },
        Case {
            name: "hand-written: only the order of `required` changed",
            schemas: (
                json!({"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "string"}}, "required": ["a", "b"]}),
                json!({"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "string"}}, "required": ["b", "a"]}),
            ),
            backward: Compatible,
            forward: Compatible,
            change: "$: only ordering or layout changed",
        },
        Case {
            name: "hand-written: unknown keyword changed",
            schemas: (
                json!({"type": "integer", "multipleOf": 5}),
                json!({"type": "integer", "multipleOf": 10}),
            ),
            backward: Breaking,
            forward: Breaking,
            change: "$: `multipleOf` changed",
        },
    ]
}

#[test]
fn schema_changes_are_classified_per_direction() {
    let cases = table();
    assert!(cases.len() >= 12, "the table must have at least 12 cases");
    let mut rendered = String::from(
        "| change | backward (new reads old) | forward (old reads new) | full |\n|---|---|---|---|\n",
    );
    let mut failures = Vec::new();
    for case in &cases {
        let (old, new) = &case.schemas;
        let d = diff(old, new);
        let (backward, forward, full) = (
            d.verdict(Mode::Backward),
            d.verdict(Mode::Forward),
            d.verdict(Mode::Full),
        );
        let _ = writeln!(
            rendered,
            "| {} | {backward} | {forward} | {full} |",
            case.name
        );
        let lines: Vec<String> = d.changes().iter().map(ToString::to_string).collect();
        if backward != case.backward || forward != case.forward {
            failures.push(format!(
                "{}: expected backward {} / forward {}, got {backward} / {forward}\n{d}",
                case.name, case.backward, case.forward
            ));
        }
        if full != case.backward.max(case.forward) {
            failures.push(format!(
                "{}: full must be the worse of both, got {full}",
                case.name
            ));
        }
        if case.change.is_empty() {
            if !d.changes().is_empty() {
                failures.push(format!("{}: expected no change, got {lines:?}", case.name));
            }
        } else if !lines.iter().any(|l| l.contains(case.change)) {
            failures.push(format!(
                "{}: no change reads `{}`; got {lines:?}",
                case.name, case.change
            ));
        }
        // Every breaking direction says why.
        for change in d.changes() {
            for impact in [&change.backward, &change.forward] {
                if let eventbus::schema::Impact::Breaking(why) = impact {
                    assert!(
                        !why.is_empty(),
                        "{}: a breaking change without a reason",
                        case.name
                    );
                }
            }
        }
    }
    println!("{rendered}");
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn diff_is_symmetric_between_directions() {
    // Swapping old and new swaps what breaks backward and forward.
    for case in table() {
        let (old, new) = &case.schemas;
        let there = diff(old, new);
        let back = diff(new, old);
        assert_eq!(
            (there.verdict(Mode::Backward), there.verdict(Mode::Forward)),
            (back.verdict(Mode::Forward), back.verdict(Mode::Backward)),
            "{}",
            case.name
        );
    }
}

// ------------------------------------------------------------ registry

/// A test event type, registered by the derive.
#[derive(Debug, Serialize, Deserialize, JsonSchema, Event)]
#[event(type = "com.example.schematest.order.placed", version = 1, destination = "orders", key = order_id)]
struct OrderPlacedV1 {
    order_id: String,
    quantity: i64,
}

/// Version 2 of the same type: a new optional field.
#[derive(Debug, Serialize, Deserialize, JsonSchema, Event)]
#[event(type = "com.example.schematest.order.placed", version = 2, destination = "orders", key = order_id)]
struct OrderPlacedV2 {
    order_id: String,
    quantity: i64,
    gift_note: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema, Event)]
#[event(type = "com.example.schematest.order.shipped", destination = "orders", key = order_id)]
struct OrderShipped {
    order_id: String,
}

/// Two derived types that claim one type and version with different fields.
#[allow(unreachable_pub)]
mod clash {
    use super::*;

    #[derive(Debug, Serialize, Deserialize, JsonSchema, Event)]
    #[event(type = "com.example.schematest.clash", destination = "clash", key = id)]
    pub struct A {
        pub id: String,
    }

    #[derive(Debug, Serialize, Deserialize, JsonSchema, Event)]
    #[event(type = "com.example.schematest.clash", destination = "clash", key = id)]
    pub struct B {
        pub id: String,
        pub extra: i64,
    }
}

/// This file's derived events, without the deliberate clash.
fn test_registry() -> Registry {
    let mut registry = Registry::derived();
    registry.retain(|e| e.event_type().starts_with("com.example.schematest.order."));
    registry
}

#[test]
fn derive_registers_every_event_with_type_version_destination_and_schema() {
    let registry = test_registry();
    let versions: Vec<(&str, u32)> = registry
        .iter()
        .map(|e| (e.event_type(), e.version()))
        .collect();
    assert_eq!(
        versions,
        [
            ("com.example.schematest.order.placed", 1),
            ("com.example.schematest.order.placed", 2),
            ("com.example.schematest.order.shipped", 1),
        ]
    );
    let v2 = registry
        .get("com.example.schematest.order.placed", 2)
        .expect("v2 registered");
    assert_eq!(v2.destination(), "orders");
    assert_eq!(v2.schema(), &<OrderPlacedV2 as Event>::json_schema());
    assert_eq!(v2.dataschema(), OrderPlacedV2::dataschema());
    assert!(v2.rust_type().is_some_and(|t| t.ends_with("OrderPlacedV2")));
    assert_eq!(
        registry
            .latest("com.example.schematest.order.placed")
            .map(|e| e.version()),
        Some(2)
    );
}

#[test]
fn explicit_registration_matches_derived_and_is_idempotent() {
    let mut by_hand = Registry::new();
    by_hand
        .register::<OrderPlacedV1>()
        .and_then(|r| r.register::<OrderPlacedV2>())
        .and_then(|r| r.register::<OrderShipped>())
        .and_then(|r| r.register::<OrderShipped>())
        .expect("no conflicts");
    let derived = test_registry();
    assert_eq!(
        by_hand.iter().collect::<Vec<_>>(),
        derived.iter().collect::<Vec<_>>()
    );
}

#[test]
fn conflicting_registrations_are_typed_errors() {
    let mut registry = Registry::new();
    registry.register::<clash::A>().expect("first is fine");
    let err = registry.register::<clash::B>().expect_err("must conflict");
    match &err {
        SchemaError::Conflict {
            event_type,
            version,
            first,
            second,
        } => {
            assert_eq!(event_type, "com.example.schematest.clash");
            assert_eq!(*version, 1);
            assert!(
                first.ends_with("clash::A") && second.ends_with("clash::B"),
                "{err}"
            );
        }
        other => panic!("expected a conflict, got {other:?}"),
    }

    // Derived conflicts wait until export or check, so that a program can
    // keep only its own events.
    let derived = Registry::derived();
    assert!(derived.conflict().is_some());
    let dir = tempfile::tempdir().expect("temp dir");
    assert!(matches!(
        derived.export(dir.path()),
        Err(SchemaError::Conflict { .. })
    ));
    assert!(test_registry().conflict().is_none());
}

// ------------------------------------------------------------ export and check

fn schema_of<T: JsonSchema>() -> Value {
    schema_for!(T).to_value()
}

fn one(event_type: &str, version: u32, schema: Value) -> Registry {
    let mut registry = Registry::new();
    registry
        .insert(EventSchema::new(event_type, version, "orders", schema))
        .expect("no conflict");
    registry
}

#[test]
fn export_writes_stable_sorted_files_and_check_passes_on_them() {
    let dir = tempfile::tempdir().expect("temp dir");
    let registry = test_registry();
    let files = registry.export(dir.path()).expect("export");
    assert_eq!(files.len(), 3);
    assert!(files.iter().all(|f| f.written));

    let v1 = dir
        .path()
        .join("com.example.schematest.order.placed")
        .join("v1.json");
    let text = std::fs::read_to_string(&v1).expect("v1 written");
    let doc: Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(
        doc["$id"],
        "urn:eventbus:schema:com.example.schematest.order.placed:v1"
    );
    assert_eq!(doc["x-eventbus"]["destination"], "orders");
    assert_eq!(doc["x-eventbus"]["version"], 1);
    assert_eq!(doc["properties"]["quantity"]["type"], "integer");
    assert_eq!(
        text,
        eventbus::schema::to_canonical_json(&doc),
        "keys sorted, pretty"
    );
    assert!(text.ends_with("}\n"));

    let again = registry.export(dir.path()).expect("export again");
    assert!(again.iter().all(|f| !f.written), "nothing changed");
    assert_eq!(std::fs::read_to_string(&v1).expect("v1"), text);

    let report = registry.check(dir.path()).expect("check");
    assert!(report.passed(), "{report}");
    assert!(report.is_up_to_date(), "{report}");
    assert!(report
        .findings()
        .iter()
        .all(|f| f.kind == FindingKind::Unchanged));
}

#[test]
fn a_breaking_change_in_place_fails_with_a_readable_report() {
    #[derive(JsonSchema)]
    #[allow(dead_code)]
    struct Placed {
        order_id: String,
        quantity: i64,
    }
    let dir = tempfile::tempdir().expect("temp dir");
    one("com.example.t.placed", 1, schema_of::<Placed>())
        .export(dir.path())
        .expect("export");

    #[allow(unreachable_pub)]
    mod changed {
        #[derive(schemars::JsonSchema)]
        #[allow(dead_code)]
        pub struct Placed {
            pub order_id: String,
            pub quantity: String,
            pub currency: String,
        }
    }
    let report = one("com.example.t.placed", 1, schema_of::<changed::Placed>())
        .check(dir.path())
        .expect("check runs");
    assert!(!report.passed());
    let failures: Vec<_> = report.failures().collect();
    assert_eq!(failures.len(), 1);
    let FindingKind::Changed { diff, mode } = &failures[0].kind else {
        panic!("expected a change in place: {report}");
    };
    assert_eq!(*mode, Mode::Full);
    assert_eq!(diff.verdict(Mode::Backward), Breaking);
    let breaking: Vec<&str> = diff.breaking(Mode::Full).map(|c| c.path.as_str()).collect();
    assert_eq!(breaking, ["$.currency", "$.quantity"]);

    let text = report.to_string();
    println!("{text}");
    for expected in [
        "FAIL com.example.t.placed v1: changed in place, breaking (full compatibility required",
        "x $.currency: field `currency` added (required)",
        "breaks backward (new readers, old messages): old messages do not carry it and it has no default",
        "x $.quantity: type changed from integer to string",
        "breaks forward (old readers, new messages): new messages may carry string here",
        "FAILED: 1 event version, 1 incompatible",
    ] {
        assert!(text.contains(expected), "report lacks `{expected}`:\n{text}");
    }
}

#[test]
fn a_compatible_change_in_place_passes_but_the_snapshot_is_out_of_date() {
    #[derive(JsonSchema)]
    #[allow(dead_code)]
    struct Placed {
        order_id: String,
    }
    #[allow(unreachable_pub)]
    mod changed {
        #[derive(schemars::JsonSchema)]
        #[allow(dead_code)]
        pub struct Placed {
            pub order_id: String,
            pub note: Option<String>,
        }
    }
    let dir = tempfile::tempdir().expect("temp dir");
    one("com.example.t.placed", 1, schema_of::<Placed>())
        .export(dir.path())
        .expect("export");
    let report = one("com.example.t.placed", 1, schema_of::<changed::Placed>())
        .check(dir.path())
        .expect("check");
    assert!(report.passed(), "{report}");
    assert!(!report.is_up_to_date());
    assert!(
        report.to_string().contains("export to update it"),
        "{report}"
    );
}

/// The worked example of docs/schema-evolution.md: v1 → v2 (new optional
/// field, new enum value) → v3 (a new required field: without a default it
/// fails, with one it passes).
#[test]
fn v1_v2_v3_evolution_as_documented() {
    #[allow(unreachable_pub)]
    mod v1 {
        #[derive(schemars::JsonSchema)]
        #[allow(dead_code)]
        pub enum Channel {
            Web,
            Phone,
        }
        #[derive(schemars::JsonSchema)]
        #[allow(dead_code)]
        pub struct OrderPlaced {
            pub order_id: String,
            pub amount_cents: i64,
            pub channel: Channel,
        }
    }
    #[allow(unreachable_pub)]
    mod v2 {
        #[derive(schemars::JsonSchema)]
        #[allow(dead_code)]
        pub enum Channel {
            Web,
            Phone,
            Store,
        }
        #[derive(schemars::JsonSchema)]
        #[allow(dead_code)]
        pub struct OrderPlaced {
            pub order_id: String,
            pub amount_cents: i64,
            pub channel: Channel,
            pub coupon: Option<String>,
        }
    }
    #[allow(unreachable_pub)]
    mod v3 {
        #[derive(schemars::JsonSchema)]
        #[allow(dead_code)]
        pub enum Channel {
            Web,
            Phone,
            Store,
        }
        #[derive(schemars::JsonSchema)]
        #[allow(dead_code)]
        pub struct OrderPlaced {
            pub order_id: String,
            pub amount_cents: i64,
            pub channel: Channel,
            pub coupon: Option<String>,
            pub currency: String,
        }
    }
    #[allow(unreachable_pub)]
    mod v3_fixed {
        fn eur() -> String {
            "EUR".into()
        }
        #[derive(schemars::JsonSchema)]
        #[allow(dead_code)]
        pub enum Channel {
            Web,
            Phone,
            Store,
        }
        #[derive(schemars::JsonSchema)]
        #[allow(dead_code)]
        pub struct OrderPlaced {
            pub order_id: String,
            pub amount_cents: i64,
            pub channel: Channel,
            pub coupon: Option<String>,
            #[serde(default = "eur")]
            pub currency: String,
        }
    }
    let ty = "com.example.order.placed";
    let dir = tempfile::tempdir().expect("temp dir");
    let with = |schemas: &[(u32, Value)]| {
        let mut registry = Registry::new();
        for (version, schema) in schemas {
            registry
                .insert(EventSchema::new(ty, *version, "orders", schema.clone()))
                .expect("no conflict");
        }
        registry
    };
    let (s1, s2) = (
        schema_of::<v1::OrderPlaced>(),
        schema_of::<v2::OrderPlaced>(),
    );
    with(&[(1, s1.clone())]).export(dir.path()).expect("v1");

    // v2: an optional field and an enum value; v2 consumers read v1 messages.
    let report = with(&[(1, s1.clone()), (2, s2.clone())])
        .check(dir.path())
        .expect("check v2");
    println!("{report}");
    assert!(report.passed(), "{report}");
    let v2 = report
        .findings()
        .iter()
        .find(|f| f.version == 2)
        .expect("v2 finding");
    let FindingKind::NewVersion {
        previous: 1,
        diff,
        mode: Mode::Backward,
    } = &v2.kind
    else {
        panic!("v2 must be a new version over v1: {report}");
    };
    assert_eq!(diff.verdict(Mode::Backward), Compatible);
    // The new enum value would break v1 consumers: version gating parks v2
    // messages for them, so the report only notes it.
    assert_eq!(diff.verdict(Mode::Forward), Breaking);
    assert!(
        report.to_string().contains("note: would break forward"),
        "{report}"
    );
    // The same v2 changed in place (no version bump) must fail.
    let in_place = with(&[(1, s2.clone())]).check(dir.path()).expect("check");
    assert!(!in_place.passed(), "{in_place}");
    // Teams that cannot park messages ask for full compatibility.
    let strict = with(&[(1, s1.clone()), (2, s2.clone())])
        .check_with(dir.path(), &CheckOptions::new().new_version(Mode::Full))
        .expect("check strict");
    assert!(!strict.passed(), "{strict}");

    with(&[(1, s1), (2, s2.clone())])
        .export(dir.path())
        .expect("commit v2");

    // v3 adds `currency` without a default: v3 consumers cannot read v2 messages.
    let report = with(&[(2, s2.clone()), (3, schema_of::<v3::OrderPlaced>())])
        .check(dir.path())
        .expect("check v3");
    println!("{report}");
    assert!(!report.passed(), "{report}");
    assert!(report
        .to_string()
        .contains("FAIL com.example.order.placed v3: new version, breaking with v2"));
    // v1 is still committed but no longer registered: that is fine, it is
    // below the newest registered version.
    assert_eq!(report.failures().count(), 1, "{report}");

    // With a default, old messages read as EUR.
    let report = with(&[(2, s2), (3, schema_of::<v3_fixed::OrderPlaced>())])
        .check(dir.path())
        .expect("check v3 fixed");
    println!("{report}");
    assert!(report.passed(), "{report}");
    assert!(report
        .to_string()
        .contains("field `currency` added (optional, default \"EUR\")"));
}

#[test]
fn removed_types_versions_and_moved_destinations_fail() {
    let dir = tempfile::tempdir().expect("temp dir");
    let v = json!({"type": "object", "properties": {"id": {"type": "string"}}});
    let mut committed = Registry::new();
    for (ty, version) in [("t.kept", 1), ("t.kept", 2), ("t.gone", 1), ("t.moved", 1)] {
        committed
            .insert(EventSchema::new(ty, version, "orders", v.clone()))
            .expect("no conflict");
    }
    committed.export(dir.path()).expect("export");

    let mut now = Registry::new();
    now.insert(EventSchema::new("t.kept", 1, "orders", v.clone()))
        .and_then(|r| r.insert(EventSchema::new("t.moved", 1, "elsewhere", v.clone())))
        .expect("no conflict");
    let report = now.check(dir.path()).expect("check");
    let failures: Vec<(&str, u32, &FindingKind)> = report
        .failures()
        .map(|f| (f.event_type.as_str(), f.version, &f.kind))
        .collect();
    assert_eq!(
        failures,
        [
            ("t.gone", 1, &FindingKind::TypeRemoved),
            (
                "t.kept",
                2,
                &FindingKind::VersionRemoved {
                    newest_registered: 1
                }
            ),
            (
                "t.moved",
                1,
                &FindingKind::DestinationChanged {
                    committed: "orders".into(),
                    registered: "elsewhere".into()
                }
            ),
        ],
        "{report}"
    );
    let text = report.to_string();
    assert!(
        text.contains("FAIL t.gone v1: committed but no longer registered"),
        "{text}"
    );
}

#[test]
fn new_types_pass_and_ask_for_export() {
    let dir = tempfile::tempdir().expect("temp dir");
    let report = test_registry().check(dir.path()).expect("check empty dir");
    assert!(report.passed(), "{report}");
    assert!(!report.is_up_to_date());
    let kinds: Vec<&FindingKind> = report.findings().iter().map(|f| &f.kind).collect();
    // v1 has nothing to compare with; v2 is compared with the registered v1.
    assert!(matches!(kinds[0], FindingKind::NotInSnapshot));
    assert!(matches!(
        kinds[1],
        FindingKind::NewVersion { previous: 1, .. }
    ));
    assert!(matches!(kinds[2], FindingKind::NotInSnapshot));
}

#[test]
fn broken_snapshot_directories_are_typed_errors() {
    let dir = tempfile::tempdir().expect("temp dir");
    let registry = test_registry();

    let missing = dir.path().join("nope");
    assert!(matches!(
        registry.check(&missing),
        Err(SchemaError::SnapshotMissing { .. })
    ));

    let type_dir = dir.path().join("com.example.schematest.order.placed");
    std::fs::create_dir_all(&type_dir).expect("mkdir");
    std::fs::write(dir.path().join("README.md"), "ignored").expect("write");
    std::fs::write(type_dir.join("notes.txt"), "ignored").expect("write");
    std::fs::write(type_dir.join("latest.json"), "{}").expect("write");
    let err = registry.check(dir.path()).expect_err("bad name");
    assert!(matches!(err, SchemaError::InvalidSnapshot { .. }), "{err}");
    assert!(
        err.to_string().contains("expected a name like `v1.json`"),
        "{err}"
    );

    std::fs::remove_file(type_dir.join("latest.json")).expect("rm");
    std::fs::write(type_dir.join("v1.json"), "{ not json").expect("write");
    let err = registry.check(dir.path()).expect_err("bad JSON");
    assert!(err.to_string().contains("not JSON"), "{err}");

    std::fs::write(
        type_dir.join("v1.json"),
        r#"{"type": "object", "x-eventbus": {"type": "other", "version": 1}}"#,
    )
    .expect("write");
    let err = registry.check(dir.path()).expect_err("mismatched metadata");
    assert!(err.to_string().contains("names other v1"), "{err}");

    let bad = one("a/b", 1, json!({}));
    assert!(matches!(
        bad.export(dir.path()),
        Err(SchemaError::InvalidEventType { .. })
    ));
}

#[test]
fn diff_explains_the_path_to_a_nested_change() {
    let (old, new) = evolve!(
        { #[derive(JsonSchema)] pub struct Line { pub sku: String, pub qty: u32 }
          #[derive(JsonSchema)] pub struct Event { pub lines: Vec<Line> } } =>
        { #[derive(JsonSchema)] pub struct Line { pub sku: String }
          #[derive(JsonSchema)] pub struct Event { pub lines: Vec<Line> } }
    );
    let d = diff(&old, &new);
    let change = d.breaking(Mode::Forward).next().expect("forward-breaking");
    assert_eq!(change.path, "$.lines[].qty");
    assert_eq!(
        change.kind,
        ChangeKind::FieldRemoved {
            name: "qty".into(),
            required: true
        }
    );
}

/// A generic event: one event type only once its parameter is chosen.
#[derive(Debug, Serialize, Deserialize, JsonSchema, Event)]
#[serde(bound = "")]
#[event(type = "com.example.schematest.generic", destination = "generic", key = id)]
struct Generic<T: Serialize + serde::de::DeserializeOwned + JsonSchema + Send + Sync + 'static> {
    id: String,
    body: T,
}

#[test]
fn generic_events_are_registered_by_hand() {
    assert!(Registry::derived()
        .iter()
        .all(|e| e.event_type() != "com.example.schematest.generic"));
    let mut registry = Registry::new();
    registry
        .register::<Generic<u32>>()
        .expect("registers by hand");
    let schema = registry
        .get("com.example.schematest.generic", 1)
        .expect("registered");
    assert_eq!(schema.schema()["properties"]["body"]["format"], "uint32");
}
