//! [`SqsPublisher`]: sends envelopes to standard and FIFO queues with
//! `SendMessageBatch` (10 per call), entry by entry results, per-key order
//! and fan-out routes. Its options are in `builder` ([`SqsPublisherBuilder`]).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_sqs::types::SendMessageBatchRequestEntry;

mod builder;

pub use builder::SqsPublisherBuilder;

use super::queues::{QueueInfo, Queues};
use super::{
    deduplication_id, invalid_char, message_attributes, message_body, message_group_id,
    message_size, queue_name, sdk_attributes, timed, Failure, SYSTEM,
};
use super::{ConnectOptions, DEFAULT_BROKER_TIMEOUT};
use crate::hash::fnv1a;
use crate::transport::{Delivered, OutgoingMessage, PublishError, Publisher};

/// The default limit on one message, body and attributes as SQS counts them:
/// 1 MiB, SQS's largest message (and largest batch). A queue's own
/// `MaximumMessageSize`, when lower, is the limit for that queue.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 1024 * 1024;

/// SQS takes at most this many entries per `SendMessageBatch`.
const MAX_BATCH_ENTRIES: usize = 10;

/// Batches to one queue in flight at once: messages are spread over this
/// many streams by key, each sent in order.
const STREAMS: u64 = 8;

/// Picks the queues (as destinations) a destination's messages go to.
type Router = Arc<dyn Fn(&str) -> Vec<String> + Send + Sync>;

/// Publishes envelopes to Amazon SQS queues.
///
/// Each destination is a queue (see [`queue_name`]); the body is the
/// CloudEvents JSON event format, with the main attributes copied into
/// message attributes (see the [module docs](super)). FIFO queues get the
/// partition key as `MessageGroupId` (per-key order) and the event id as
/// `MessageDeduplicationId` (SQS drops a relay's re-send within five
/// minutes).
///
/// A batch goes out as `SendMessageBatch` calls of up to 10 messages, several
/// at once: messages are spread over streams by key, and each stream sends
/// its calls in order, so messages of one key reach SQS in input order. SQS
/// answers per entry: an entry it refuses fails with
/// [`PublishError::Rejected`] and the later messages of its key are held back
/// ([`PublishError::NotSent`]); when SQS refuses a whole call, its messages
/// are sent one by one to find the refused one. Messages over the size limit
/// are refused before sending, with the sizes in the error.
///
/// # Examples
///
/// ```no_run
/// # async fn demo() -> eventbus::Result<()> {
/// use eventbus::transport::sqs::SqsPublisher;
/// use eventbus::{Envelope, OutgoingMessage, Publisher};
///
/// let publisher = SqsPublisher::builder()
///     .endpoint("http://127.0.0.1:4566") // a local server; omit for AWS
///     .fifo(true)
///     .connect()
///     .await?;
/// publisher.ensure_destination("orders").await?; // the queue `orders.fifo`
///
/// let mut envelope = Envelope::new(
///     "urn:service:orders",
///     "com.example.order.placed",
///     br#"{"order_id":"o-1"}"#.to_vec(),
/// );
/// envelope.partition_key = Some("o-1".into());
/// let batch = [OutgoingMessage { destination: "orders".into(), envelope }];
/// for result in publisher.publish_batch(&batch).await {
///     result?;
/// }
/// # Ok(()) }
/// ```
pub struct SqsPublisher {
    describe: String,
    queues: Queues,
    broker_timeout: Duration,
    fifo: bool,
    routes: HashMap<String, Vec<String>>,
    router: Option<Router>,
    create_queues: bool,
    max_message_size: usize,
}

impl fmt::Debug for SqsPublisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqsPublisher")
            .field("endpoint", &self.describe)
            .field("fifo", &self.fifo)
            .field("routes", &self.routes)
            .field("create_queues", &self.create_queues)
            .field("max_message_size", &self.max_message_size)
            .finish_non_exhaustive()
    }
}

/// One message on its way to one queue.
struct Entry<'a> {
    /// Its message's index in the batch.
    message: usize,
    queue: Arc<QueueInfo>,
    /// What keeps its order: the message group, or the partition key.
    key: String,
    body: String,
    attributes: Vec<(String, String)>,
    size: usize,
    envelope: &'a crate::envelope::Envelope,
}

impl Entry<'_> {
    fn request_entry(&self, id: usize) -> Option<SendMessageBatchRequestEntry> {
        let mut entry = SendMessageBatchRequestEntry::builder()
            .id(id.to_string())
            .message_body(self.body.clone())
            .set_message_attributes(Some(sdk_attributes(&self.attributes)));
        if self.queue.fifo {
            entry = entry
                .message_group_id(message_group_id(self.envelope))
                .message_deduplication_id(deduplication_id(self.envelope));
        }
        entry.build().ok()
    }
}

/// What became of one entry.
type EntryResult = std::result::Result<(), PublishError>;

impl SqsPublisher {
    /// Options for a publisher; see [`SqsPublisherBuilder`].
    pub fn builder() -> SqsPublisherBuilder {
        SqsPublisherBuilder {
            connect: ConnectOptions::default(),
            broker_timeout: DEFAULT_BROKER_TIMEOUT,
            fifo: false,
            routes: HashMap::new(),
            router: None,
            create_queues: true,
            dead_letter_after: None,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
        }
    }

    /// The SDK client, for what this publisher does not do (reading queue
    /// attributes, purging).
    pub fn client(&self) -> &aws_sdk_sqs::Client {
        self.queues.client()
    }

    /// The queue names the messages of `destination` go to.
    ///
    /// # Errors
    ///
    /// [`PublishError::Rejected`] when a name cannot be an SQS queue's.
    pub fn queues_of(&self, destination: &str) -> std::result::Result<Vec<String>, PublishError> {
        let mut targets = self.routes.get(destination).cloned().unwrap_or_default();
        if targets.is_empty() {
            if let Some(router) = &self.router {
                targets = router(destination);
            }
        }
        if targets.is_empty() {
            targets.push(destination.to_owned());
        }
        targets
            .iter()
            .map(|t| {
                queue_name(t, self.fifo).map_err(|e| PublishError::Rejected(e.to_string().into()))
            })
            .collect()
    }

    async fn resolve(
        &self,
        queue: &str,
        create: bool,
    ) -> std::result::Result<Arc<QueueInfo>, PublishError> {
        self.queues
            .resolve(queue, create)
            .await
            .map_err(|f| match f {
                Failure::Unavailable(text) => {
                    PublishError::Unavailable(format!("{text} ({})", self.describe).into())
                }
                other => other.into_publish_error(),
            })
    }

    /// Encodes `envelope` for `queue`, refusing what SQS would refuse.
    fn encode<'a>(
        &self,
        message: usize,
        queue: Arc<QueueInfo>,
        envelope: &'a crate::envelope::Envelope,
    ) -> std::result::Result<Entry<'a>, PublishError> {
        let body = message_body(envelope);
        let attributes = message_attributes(envelope);
        let size = message_size(&body, &attributes);
        let limit = queue
            .max_message_size
            .map_or(self.max_message_size, |q| q.min(self.max_message_size));
        if size > limit {
            return Err(PublishError::Rejected(
                format!(
                "event `{}` is {size} bytes as an SQS message (body and attributes), more than \
                 the limit of {limit} bytes for queue `{}`",
                envelope.id, queue.name
            )
                .into(),
            ));
        }
        let text = std::iter::once(body.as_str()).chain(attributes.iter().map(|(_, v)| v.as_str()));
        for part in text {
            if let Some(c) = invalid_char(part) {
                return Err(PublishError::Rejected(
                    format!(
                    "event `{}` has the character U+{:04X}, which SQS does not accept in messages",
                    envelope.id,
                    u32::from(c)
                )
                    .into(),
                ));
            }
        }
        let key = if queue.fifo {
            message_group_id(envelope)
        } else {
            envelope.partition_key.clone().unwrap_or_default()
        };
        Ok(Entry {
            message,
            queue,
            key,
            body,
            attributes,
            size,
            envelope,
        })
    }

    /// Sends one stream's entries in order, in batches; a refused entry holds
    /// back the later entries of its key.
    async fn send_stream(&self, entries: &[Entry<'_>], out: &mut Vec<(usize, EntryResult)>) {
        let mut failed_keys: HashSet<&str> = HashSet::new();
        let mut rest = entries;
        while !rest.is_empty() {
            let mut take = 0;
            let mut bytes = 0;
            while take < rest.len() && take < MAX_BATCH_ENTRIES {
                if take > 0 && bytes + rest[take].size > self.max_message_size {
                    break;
                }
                bytes += rest[take].size;
                take += 1;
            }
            let (chunk, after) = rest.split_at(take);
            rest = after;
            let mut sendable = Vec::with_capacity(chunk.len());
            for (i, entry) in chunk.iter().enumerate() {
                if failed_keys.contains(entry.key.as_str()) {
                    out.push((i_of(entry), Err(held_back())));
                } else {
                    sendable.push(&chunk[i]);
                }
            }
            if sendable.is_empty() {
                continue;
            }
            if let Err(stop) = self.send_chunk(&sendable, &mut failed_keys, out).await {
                // SQS is not answering (or the queue is gone): the rest of the
                // stream would fare no better.
                for entry in rest {
                    out.push((i_of(entry), Err(stop.clone())));
                }
                return;
            }
        }
    }

    /// One `SendMessageBatch`; `Err` when the rest of the stream must not be
    /// sent.
    async fn send_chunk<'e>(
        &self,
        chunk: &[&'e Entry<'_>],
        failed_keys: &mut HashSet<&'e str>,
        out: &mut Vec<(usize, EntryResult)>,
    ) -> std::result::Result<(), PublishError> {
        let queue = &chunk[0].queue;
        let request_entries: Vec<SendMessageBatchRequestEntry> = chunk
            .iter()
            .enumerate()
            .filter_map(|(id, e)| e.request_entry(id))
            .collect();
        let sending = self
            .client()
            .send_message_batch()
            .queue_url(&queue.url)
            .set_entries(Some(request_entries))
            .send();
        let what = format!("cannot send to queue `{}`", queue.name);
        match timed(&what, self.broker_timeout, sending).await {
            Ok(output) => {
                let mut answered = vec![false; chunk.len()];
                for ok in output.successful() {
                    if let Some(i) = ok.id().parse::<usize>().ok().filter(|i| *i < chunk.len()) {
                        answered[i] = true;
                        out.push((chunk[i].message, Ok(())));
                    }
                }
                for failed in output.failed() {
                    let Some(i) = failed
                        .id()
                        .parse::<usize>()
                        .ok()
                        .filter(|i| *i < chunk.len())
                    else {
                        continue;
                    };
                    answered[i] = true;
                    let reason = format!(
                        "SQS refused event `{}` for queue `{}`: {} {}",
                        chunk[i].envelope.id,
                        queue.name,
                        failed.code(),
                        failed.message().unwrap_or_default()
                    );
                    let error = if failed.sender_fault() {
                        PublishError::Rejected(reason.into())
                    } else {
                        PublishError::Unavailable(reason.into())
                    };
                    failed_keys.insert(chunk[i].key.as_str());
                    out.push((chunk[i].message, Err(error)));
                }
                for (i, answered) in answered.into_iter().enumerate() {
                    if !answered {
                        out.push((
                            chunk[i].message,
                            Err(PublishError::Unavailable(
                                format!(
                                    "SQS said nothing of event `{}` in its answer",
                                    chunk[i].envelope.id
                                )
                                .into(),
                            )),
                        ));
                    }
                }
                Ok(())
            }
            Err(Failure::Unavailable(text)) => {
                let e = PublishError::Unavailable(format!("{text} ({})", self.describe).into());
                for entry in chunk {
                    out.push((entry.message, Err(e.clone())));
                }
                Err(e)
            }
            Err(Failure::NoQueue(text)) => {
                self.queues.forget(&queue.name);
                let e = PublishError::Rejected(text);
                for entry in chunk {
                    out.push((entry.message, Err(e.clone())));
                }
                Err(e)
            }
            Err(Failure::Refused(text)) => {
                // SQS refused the whole call for one entry (some servers do
                // instead of answering per entry): find it by sending alone.
                tracing::warn!(queue = %queue.name, reason = %text, entries = chunk.len(), "SQS refused a batch; sending its messages one by one");
                // Its limits may have changed since we read them.
                self.queues.forget(&queue.name);
                self.isolate(chunk, failed_keys, out).await
            }
        }
    }

    /// Sends `chunk`'s entries one at a time, in order.
    async fn isolate<'e>(
        &self,
        chunk: &[&'e Entry<'_>],
        failed_keys: &mut HashSet<&'e str>,
        out: &mut Vec<(usize, EntryResult)>,
    ) -> std::result::Result<(), PublishError> {
        for (n, entry) in chunk.iter().enumerate() {
            if failed_keys.contains(entry.key.as_str()) {
                out.push((entry.message, Err(held_back())));
                continue;
            }
            let mut request = self
                .client()
                .send_message()
                .queue_url(&entry.queue.url)
                .message_body(entry.body.clone())
                .set_message_attributes(Some(sdk_attributes(&entry.attributes)));
            if entry.queue.fifo {
                request = request
                    .message_group_id(message_group_id(entry.envelope))
                    .message_deduplication_id(deduplication_id(entry.envelope));
            }
            let what = format!(
                "SQS refused event `{}` for queue `{}`",
                entry.envelope.id, entry.queue.name
            );
            match timed(&what, self.broker_timeout, request.send()).await {
                Ok(_) => out.push((entry.message, Ok(()))),
                Err(Failure::Unavailable(text)) => {
                    let e = PublishError::Unavailable(text);
                    for rest in &chunk[n..] {
                        out.push((rest.message, Err(e.clone())));
                    }
                    return Err(e);
                }
                Err(failure) => {
                    failed_keys.insert(entry.key.as_str());
                    out.push((entry.message, Err(failure.into_publish_error())));
                }
            }
        }
        Ok(())
    }
}

/// The message index of an entry.
fn i_of(entry: &Entry<'_>) -> usize {
    entry.message
}

fn held_back() -> PublishError {
    PublishError::NotSent("an earlier event of the same key was refused".into())
}

#[async_trait::async_trait]
impl Publisher for SqsPublisher {
    fn system(&self) -> &'static str {
        SYSTEM
    }

    async fn publish_batch(
        &self,
        messages: &[OutgoingMessage],
    ) -> Vec<std::result::Result<Delivered, PublishError>> {
        // Per message: its entries' results, and how many entries it has.
        let mut early: Vec<Option<PublishError>> = vec![None; messages.len()];
        let mut refused_keys: BTreeSet<(&str, Option<&str>)> = BTreeSet::new();
        let mut entries: Vec<Entry<'_>> = Vec::with_capacity(messages.len());
        let mut expected = vec![0_usize; messages.len()];
        for (i, message) in messages.iter().enumerate() {
            let key = (
                message.destination.as_str(),
                message.envelope.partition_key.as_deref(),
            );
            if refused_keys.contains(&key) {
                early[i] = Some(held_back());
                continue;
            }
            let prepared = async {
                let mut mine = Vec::new();
                for queue in self.queues_of(&message.destination)? {
                    let info = self.resolve(&queue, self.create_queues).await?;
                    mine.push(self.encode(i, info, &message.envelope)?);
                }
                Ok::<_, PublishError>(mine)
            }
            .await;
            match prepared {
                Ok(mine) => {
                    expected[i] = mine.len();
                    entries.extend(mine);
                }
                Err(e) => {
                    refused_keys.insert(key);
                    early[i] = Some(e);
                }
            }
        }

        // Streams: per queue, by a hash of the key, in input order.
        let mut streams: HashMap<(String, u64), Vec<Entry<'_>>> = HashMap::new();
        for entry in entries {
            let lane = if entry.key.is_empty() {
                fnv1a(entry.envelope.id.as_bytes()) % STREAMS
            } else {
                fnv1a(entry.key.as_bytes()) % STREAMS
            };
            streams
                .entry((entry.queue.name.clone(), lane))
                .or_default()
                .push(entry);
        }
        let sends = streams.values().map(|stream| async move {
            let mut out = Vec::with_capacity(stream.len());
            self.send_stream(stream, &mut out).await;
            out
        });
        let mut results: Vec<Vec<EntryResult>> = vec![Vec::new(); messages.len()];
        for out in futures::future::join_all(sends).await {
            for (i, result) in out {
                results[i].push(result);
            }
        }

        (0..messages.len())
            .map(|i| {
                if let Some(e) = early[i].take() {
                    return Err(e);
                }
                combine(&results[i], expected[i])
            })
            .collect()
    }

    async fn ensure_destination(&self, destination: &str) -> std::result::Result<(), PublishError> {
        for queue in self.queues_of(destination)? {
            self.resolve(&queue, true).await?;
        }
        Ok(())
    }
}

/// One message's result from its entries' (one per queue it goes to): the
/// worst of them.
fn combine(
    results: &[EntryResult],
    expected: usize,
) -> std::result::Result<Delivered, PublishError> {
    let worst = |rank: fn(&PublishError) -> bool| {
        results
            .iter()
            .filter_map(|r| r.as_ref().err())
            .find(|e| rank(e))
            .cloned()
    };
    if let Some(e) = worst(|e| matches!(e, PublishError::Rejected(_))) {
        return Err(e);
    }
    if let Some(e) = worst(PublishError::is_unavailable) {
        return Err(e);
    }
    if let Some(e) = worst(|_| true) {
        return Err(e);
    }
    if results.len() < expected {
        return Err(PublishError::Unavailable(
            "the message was not sent to SQS".into(),
        ));
    }
    Ok(Delivered::default())
}

#[cfg(test)]
mod tests;
