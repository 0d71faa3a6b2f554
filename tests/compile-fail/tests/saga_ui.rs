//! Compile-time checks of the saga API: a minimal correct saga builds, and
//! the usual mistakes fail with the messages recorded next to them
//! (`ui/saga/*.stderr`): a handler without its correlation, an event
//! registered without a handler, a state that is not serde, a timeout type
//! that is not an event.
//!
//! After a change of message on purpose, regenerate the files with
//! `TRYBUILD=overwrite cargo nextest run -p eventbus-compile-fail --test saga_ui`
//! and review the diff. The messages are rustc's, so a new toolchain
//! (`rust-toolchain.toml`) may reword them.
//!
//! trybuild builds the cases in `<target>/tests/trybuild` against this
//! package's dev-dependencies: eventbus with `macros` only, whatever the
//! features of the test run (the cases are generic over the database).

/// Where the cases are, from the package root (the tests' working
/// directory): a glob that matches nothing passes without testing anything.
const CASES: &str = "tests/ui/saga";

#[test]
fn saga_api_ui() {
    let cases = std::fs::read_dir(CASES)
        .unwrap_or_else(|e| panic!("{CASES}: {e}"))
        .filter_map(Result::ok)
        .filter(|f| f.path().extension().is_some_and(|x| x == "rs"))
        .count();
    assert!(
        cases >= 6,
        "{cases} cases in {CASES}; expected one pass_ and five fail_ at least"
    );
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/saga/pass_*.rs");
    t.compile_fail("tests/ui/saga/fail_*.rs");
}
