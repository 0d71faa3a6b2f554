//! Keeping held messages invisible to other consumers while they are
//! handled: every third of the visibility timeout, each held message's
//! visibility is extended.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::ChangeMessageVisibilityBatchRequestEntry;

use super::{lock, Shared, MAX_BATCH, MAX_VISIBILITY};
use crate::transport::sqs::queues::QueueInfo;
use crate::transport::sqs::{timed, Failure};

/// Keeps held messages invisible: every third of the visibility timeout, each
/// held message not extended for that long gets the whole timeout again.
pub(super) async fn extend_loop(shared: Arc<Shared>) {
    let third = (shared.visibility / 3).max(Duration::from_millis(200));
    let tick = (third / 2).max(Duration::from_millis(100));
    let mut warned_old = false;
    loop {
        tokio::time::sleep(tick).await;
        let now = Instant::now();
        let mut due: HashMap<String, DueExtensions> = HashMap::new();
        {
            let held = lock(&shared.held);
            for (token, h) in held.iter() {
                if now.duration_since(h.extended_at) < third {
                    continue;
                }
                // SQS keeps a message received for 12 hours at most.
                if now.duration_since(h.received_at) + shared.visibility >= MAX_VISIBILITY {
                    if !warned_old {
                        tracing::warn!(queue = %h.queue.name, "a message has been held for nearly 12 hours; SQS will deliver it again");
                        warned_old = true;
                    }
                    continue;
                }
                due.entry(h.queue.url.clone())
                    .or_insert_with(|| (Arc::clone(&h.queue), Vec::new()))
                    .1
                    .push((*token, h.receipt.clone()));
            }
        }
        for (queue, tokens) in due.into_values() {
            for chunk in tokens.chunks(MAX_BATCH) {
                extend(&shared, &queue, chunk, now).await;
            }
        }
    }
}

pub(super) async fn extend(
    shared: &Shared,
    queue: &QueueInfo,
    chunk: &[(u64, String)],
    at: Instant,
) {
    let entries: Vec<ChangeMessageVisibilityBatchRequestEntry> = chunk
        .iter()
        .enumerate()
        .filter_map(|(i, (_, receipt))| {
            ChangeMessageVisibilityBatchRequestEntry::builder()
                .id(i.to_string())
                .receipt_handle(receipt)
                .visibility_timeout(shared.visibility_seconds)
                .build()
                .ok()
        })
        .collect();
    let request = shared
        .client
        .change_message_visibility_batch()
        .queue_url(&queue.url)
        .set_entries(Some(entries))
        .send();
    let what = format!(
        "cannot extend the visibility of messages of queue `{}`",
        queue.name
    );
    match timed(&what, shared.broker_timeout, request).await {
        Ok(output) => {
            let mut held = lock(&shared.held);
            for ok in output.successful() {
                let token = ok.id().parse::<usize>().ok().and_then(|i| chunk.get(i));
                if let Some(h) = token.and_then(|(t, _)| held.get_mut(t)) {
                    h.extended_at = at;
                }
            }
            for failed in output.failed() {
                tracing::debug!(queue = %queue.name, code = failed.code(), "visibility not extended; the message may come back");
            }
        }
        Err(Failure::Unavailable(text) | Failure::NoQueue(text) | Failure::Refused(text)) => {
            tracing::warn!(error = %text, "extending visibility failed; retrying");
        }
    }
}

/// A queue and the (token, receipt handle) pairs whose visibility is due for
/// an extension.
pub(super) type DueExtensions = (Arc<QueueInfo>, Vec<(u64, String)>);
