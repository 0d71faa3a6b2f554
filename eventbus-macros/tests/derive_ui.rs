//! Compile-time checks of `#[derive(Event)]`: valid uses build and run, invalid
//! ones fail with the messages recorded next to them (`ui/fail/*.stderr`).
//!
//! After changing a message on purpose, regenerate the files with
//! `TRYBUILD=overwrite cargo nextest run -p eventbus-macros --test derive_ui` and
//! review the diff.

#[test]
fn derive_event_ui() {
    let t = trybuild::TestCases::new();
    // Globs from the package root, the tests' working directory: one that
    // matches nothing passes without a case run.
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/fail/*.rs");
}
