//! Compile-fail tests of the eventbus saga API: the cases are in
//! `tests/ui/saga/`, run by `tests/saga_ui.rs` with trybuild. This library
//! is empty; the package exists so that trybuild builds the cases against
//! eventbus with the `macros` feature only.
