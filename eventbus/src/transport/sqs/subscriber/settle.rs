//! Settling one received SQS message ([`SqsSettle`]): an acknowledgement
//! deletes it, batched with others that arrive within a moment; a release
//! makes it visible again at once.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_sqs::types::DeleteMessageBatchRequestEntry;
use tokio::sync::{mpsc, oneshot};

use super::{Held, Shared, DELETE_LINGER, MAX_BATCH};
use crate::error::{Error, Result};
use crate::transport::sqs::timed;
use crate::transport::{Settle, TransportError};

/// Settles one received message.
pub(super) struct SqsSettle {
    pub(super) token: u64,
    pub(super) queue: String,
    pub(super) shared: Arc<Shared>,
}

impl fmt::Debug for SqsSettle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqsSettle")
            .field("token", &self.token)
            .field("queue", &self.queue)
            .finish_non_exhaustive()
    }
}

impl SqsSettle {
    pub(super) fn held(&self) -> Result<Held> {
        self.shared.take(self.token).ok_or_else(|| {
            Error::Subscribe(TransportError::Unavailable(
                format!(
                    "message {} of queue `{}` was given back already (the subscriber closed)",
                    self.token, self.queue
                )
                .into(),
            ))
        })
    }
}

#[async_trait::async_trait]
impl Settle for SqsSettle {
    /// Deletes the message; returns once SQS has deleted it.
    async fn ack(self: Box<Self>) -> Result<()> {
        let held = self.held()?;
        let (reply, answer) = oneshot::channel();
        let request = DeleteRequest {
            queue_url: held.queue.url.clone(),
            queue_name: held.queue.name.clone(),
            receipt: held.receipt.clone(),
            reply,
        };
        if self.shared.deletes.send(request).is_err() {
            return Err(self
                .shared
                .unavailable("cannot delete the message: the subscriber is gone"));
        }
        let result = match answer.await {
            Ok(result) => result,
            Err(_) => Err(self
                .shared
                .unavailable("cannot delete the message: no answer")),
        };
        // Its in-flight slot is free once SQS has deleted it.
        drop(held);
        result
    }

    async fn release(self: Box<Self>) -> Result<()> {
        let held = self.held()?;
        self.shared.release(held).await
    }
}

/// One acknowledgement on its way to `DeleteMessageBatch`.
pub(super) struct DeleteRequest {
    pub(super) queue_url: String,
    pub(super) queue_name: String,
    pub(super) receipt: String,
    pub(super) reply: oneshot::Sender<Result<()>>,
}

/// Deletes acknowledged messages in batches: what arrives within
/// [`DELETE_LINGER`] of the first goes in one call per queue (10 at most).
pub(super) async fn delete_loop(
    client: aws_sdk_sqs::Client,
    timeout: Duration,
    mut rx: mpsc::UnboundedReceiver<DeleteRequest>,
) {
    while let Some(first) = rx.recv().await {
        let mut pending = vec![first];
        let linger = tokio::time::sleep(DELETE_LINGER);
        tokio::pin!(linger);
        while pending.len() < MAX_BATCH * 8 {
            tokio::select! {
                more = rx.recv() => match more {
                    Some(request) => pending.push(request),
                    None => break,
                },
                () = &mut linger => break,
            }
        }
        let mut by_queue: HashMap<String, Vec<DeleteRequest>> = HashMap::new();
        for request in pending {
            by_queue
                .entry(request.queue_url.clone())
                .or_default()
                .push(request);
        }
        let calls = by_queue.into_values().flat_map(|requests| {
            let mut chunks = Vec::new();
            let mut requests = requests.into_iter().peekable();
            while requests.peek().is_some() {
                chunks.push(requests.by_ref().take(MAX_BATCH).collect::<Vec<_>>());
            }
            chunks
        });
        let client = &client;
        futures::future::join_all(calls.map(|chunk| delete_batch(client, timeout, chunk))).await;
    }
}

pub(super) async fn delete_batch(
    client: &aws_sdk_sqs::Client,
    timeout: Duration,
    chunk: Vec<DeleteRequest>,
) {
    let Some(first) = chunk.first() else {
        return;
    };
    let (url, name) = (first.queue_url.clone(), first.queue_name.clone());
    let entries: Vec<DeleteMessageBatchRequestEntry> = chunk
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            DeleteMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .receipt_handle(&r.receipt)
                .build()
                .ok()
        })
        .collect();
    let request = client
        .delete_message_batch()
        .queue_url(&url)
        .set_entries(Some(entries))
        .send();
    let what = format!("cannot delete messages from queue `{name}`");
    let mut results: Vec<Option<Result<()>>> = (0..chunk.len()).map(|_| None).collect();
    match timed(&what, timeout, request).await {
        Ok(output) => {
            for ok in output.successful() {
                if let Some(slot) = ok
                    .id()
                    .parse::<usize>()
                    .ok()
                    .and_then(|i| results.get_mut(i))
                {
                    *slot = Some(Ok(()));
                }
            }
            for failed in output.failed() {
                if let Some(slot) = failed
                    .id()
                    .parse::<usize>()
                    .ok()
                    .and_then(|i| results.get_mut(i))
                {
                    // Typically an expired receipt handle: the message became
                    // visible and may be delivered again.
                    *slot = Some(Err(Error::Subscribe(TransportError::Rejected(format!(
                        "SQS did not delete the message from queue `{name}`: {} {}; it may be delivered again",
                        failed.code(),
                        failed.message().unwrap_or_default()
                    ).into()))));
                }
            }
        }
        Err(failure) => {
            let text = failure.into_cause();
            for slot in &mut results {
                *slot = Some(Err(Error::Subscribe(TransportError::Unavailable(
                    text.clone(),
                ))));
            }
        }
    }
    for (request, result) in chunk.into_iter().zip(results) {
        let result = result.unwrap_or_else(|| {
            Err(Error::Subscribe(TransportError::Unavailable(
                format!("SQS said nothing of a delete from queue `{name}`").into(),
            )))
        });
        let _ = request.reply.send(result);
    }
}
