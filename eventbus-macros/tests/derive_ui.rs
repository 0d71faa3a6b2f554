//! Compile-time checks of `#[derive(Event)]`: valid uses build and run, invalid
//! ones fail with the messages recorded next to them (`ui/fail/*.stderr`).
//!
//! After changing a message on purpose, regenerate the files with
//! `TRYBUILD=overwrite cargo nextest run -p eventbus-macros --test derive_ui` and
//! review the diff.

#[test]
fn derive_event_ui() {
    let t = trybuild::TestCases::new();
    t.pass("ui/pass/*.rs");
    t.compile_fail("ui/fail/*.rs");
}
