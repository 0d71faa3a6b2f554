//! What a failed SQS request means ([`Failure`]): unavailable, no such
//! queue, or refused, with the SDK's error kept as the source; and running a
//! request under a timeout.

use std::time::Duration;

use aws_sdk_sqs::config::http::HttpResponse;
use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

use crate::transport::{Cause, PublishError};

/// What an SQS request failure means for the caller; the cause keeps the
/// SDK's error as its source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Failure {
    /// SQS as a whole cannot be reached or will not serve us now.
    Unavailable(Cause),
    /// The queue does not exist.
    NoQueue(Cause),
    /// SQS refused this request for what it asked.
    Refused(Cause),
}

impl Failure {
    pub(super) fn into_publish_error(self) -> PublishError {
        match self {
            Failure::Unavailable(cause) => PublishError::Unavailable(cause),
            Failure::NoQueue(cause) | Failure::Refused(cause) => PublishError::Rejected(cause),
        }
    }

    /// What went wrong, whatever the kind.
    pub(super) fn into_cause(self) -> Cause {
        match self {
            Failure::Unavailable(cause) | Failure::NoQueue(cause) | Failure::Refused(cause) => {
                cause
            }
        }
    }
}

/// Error codes that mean "not now", whatever was asked.
pub(super) const TRANSIENT_CODES: [&str; 8] = [
    "RequestThrottled",
    "ThrottlingException",
    "KmsThrottled",
    "ServiceUnavailable",
    "InternalError",
    "InternalFailure",
    "RequestTimeout",
    "OverLimit",
];

/// Error codes about who we are: they fail every request alike, so they are
/// SQS being unavailable to us, not a message's fault.
pub(super) const CREDENTIAL_CODES: [&str; 8] = [
    "InvalidClientTokenId",
    "UnrecognizedClientException",
    "SignatureDoesNotMatch",
    "MissingAuthenticationToken",
    "IncompleteSignature",
    "ExpiredToken",
    "InvalidSecurity",
    "RequestExpired",
];

/// Sorts an SDK error: transport trouble, throttling, server faults and
/// credential problems are [`Failure::Unavailable`]; a missing queue is
/// [`Failure::NoQueue`]; any other refusal is [`Failure::Refused`].
pub(super) fn classify<E>(what: &str, e: SdkError<E, HttpResponse>) -> Failure
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let text = format!("{what}: {}", DisplayErrorContext(&e));
    let kind = match &e {
        SdkError::ServiceError(context) => {
            let code = e.code().unwrap_or_default();
            let server_fault = context.raw().status().is_server_error();
            if code == "QueueDoesNotExist" || code == "AWS.SimpleQueueService.NonExistentQueue" {
                Failure::NoQueue
            } else if server_fault
                || TRANSIENT_CODES.contains(&code)
                || CREDENTIAL_CODES.contains(&code)
            {
                Failure::Unavailable
            } else {
                Failure::Refused
            }
        }
        _ => Failure::Unavailable,
    };
    kind(Cause::with_source(text, e))
}

/// Runs one SQS request under `timeout`.
pub(super) async fn timed<T, E>(
    what: &str,
    timeout: Duration,
    request: impl std::future::Future<Output = std::result::Result<T, SdkError<E, HttpResponse>>>,
) -> std::result::Result<T, Failure>
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match tokio::time::timeout(timeout, request).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(classify(what, e)),
        Err(_) => Err(Failure::Unavailable(
            format!("{what}: no answer from SQS within {timeout:?}").into(),
        )),
    }
}
