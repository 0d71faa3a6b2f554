//! Compile-time checks of the saga API: a minimal correct saga builds, and
//! the usual mistakes fail with the messages recorded next to them
//! (`ui/saga/*.stderr`): a handler without its correlation, an event
//! registered without a handler, a state that is not serde, a timeout type
//! that is not an event.
//!
//! After a change of message on purpose, regenerate the files with
//! `TRYBUILD=overwrite cargo nextest run -p eventbus --all-features --test saga_ui`
//! and review the diff. The messages are rustc's, so a new toolchain
//! (`rust-toolchain.toml`) may reword them.
//!
//! The first run builds eventbus again, with the features of the test run,
//! in `<target>/tests/trybuild`: with `--all-features` that is librdkafka
//! and the AWS SDK too (about 9 minutes on 2 cores, 3.5 GB); later runs take
//! seconds.

// The cases derive their events.
#![cfg(feature = "macros")]

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
