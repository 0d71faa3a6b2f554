//! Helpers of the transports' unit tests.

#![cfg_attr(not(any(feature = "rabbitmq", feature = "sqs")), allow(dead_code))]

use std::fmt::Debug;
use std::future::Future;

use crate::error::{Error, Result};

/// The configuration error `connecting` fails with; panics on anything else.
pub(crate) async fn config_error<T: Debug>(connecting: impl Future<Output = Result<T>>) -> String {
    match connecting.await {
        Err(Error::Config(text)) => text,
        other => panic!("expected a configuration error, got {other:?}"),
    }
}

/// Checks that a connection that failed with `err` may be retried and that
/// the error does not show `secret`.
pub(crate) fn assert_unavailable_hiding(err: &Error, secret: &str) {
    assert!(err.is_transient(), "{err:?}");
    assert!(!err.to_string().contains(secret), "{err}");
}

/// Credentials whose key id and secret (`AKIDEXAMPLE`, `hunter2`) a test
/// looks for in error and debug texts.
#[cfg(feature = "sqs")]
pub(crate) fn example_credentials() -> aws_sdk_sqs::config::Credentials {
    aws_sdk_sqs::config::Credentials::new("AKIDEXAMPLE", "hunter2", None, None, "test")
}
