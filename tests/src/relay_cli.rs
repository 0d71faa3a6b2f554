//! Running the `outbox-relay` binary from a test: the helpers of
//! [`crate::harness`] under the path the relay's tests have always used.

pub use crate::harness::http::http_get;
pub use crate::harness::port::free_port;
pub use crate::harness::process::{cli_ok, command, output, sigterm, text};
