//! The saga's committed event schemas (`schemas/`) match its events, and every
//! change since they were committed is compatible: CI fails when someone breaks
//! a saga event. Also runs the `schema export|check` subcommand end to end.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use order_payment_saga::schemas;

fn committed() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas")
}

fn saga(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_order-payment-saga"))
        .args(args)
        .output()
        .expect("run order-payment-saga")
}

#[test]
fn committed_schemas_are_compatible_and_up_to_date() {
    let registry = schemas::registry();
    assert_eq!(registry.len(), 11, "every saga event is registered");
    let report = registry.check(committed()).expect("schemas/ is readable");
    assert!(
        report.passed(),
        "a saga event changed incompatibly:\n{report}"
    );
    assert!(
        report.is_up_to_date(),
        "schemas/ is out of date; run `cargo run -p order-payment-saga -- schema export \
         --dir examples/order-payment-saga/schemas` and commit the result:\n{report}"
    );
}

#[test]
fn schema_subcommand_exports_checks_and_fails_on_a_breaking_edit() {
    let dir = tempfile::tempdir().expect("temp dir");
    let dir_arg = dir.path().to_str().expect("UTF-8 temp path");

    let export = saga(&["schema", "export", "--dir", dir_arg]);
    assert!(export.status.success(), "{export:?}");
    let file = dir
        .path()
        .join("com.example.saga.order.placed")
        .join("v1.json");
    let text = std::fs::read_to_string(&file).expect("exported");
    assert_eq!(
        text,
        std::fs::read_to_string(committed().join("com.example.saga.order.placed/v1.json"))
            .expect("committed"),
        "export reproduces the committed file byte for byte"
    );

    let check = saga(&["schema", "check", "--dir", dir_arg]);
    assert!(check.status.success(), "{check:?}");

    // Pretend the committed `quantity` was a string: the code's integer breaks
    // readers both ways.
    let mut doc: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    doc["properties"]["quantity"] = serde_json::json!({"type": "string"});
    std::fs::write(&file, doc.to_string()).expect("edit");
    let check = saga(&["schema", "check", "--dir", dir_arg]);
    let stdout = String::from_utf8_lossy(&check.stdout);
    assert_eq!(check.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("FAIL com.example.saga.order.placed v1: changed in place, breaking"),
        "{stdout}"
    );
    assert!(
        stdout.contains("$.quantity: type changed from string to integer"),
        "{stdout}"
    );

    let missing = saga(&["schema", "check", "--dir", "/nonexistent/schemas"]);
    assert_eq!(missing.status.code(), Some(2), "{missing:?}");
    assert!(String::from_utf8_lossy(&missing.stderr).contains("does not exist"));
}
