//! The queues a publisher or subscriber uses: their URLs, looked up once per
//! process; their creation when asked (FIFO attributes, a redrive policy to
//! their dead-letter queue); the message size limit each one has.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use aws_sdk_sqs::types::QueueAttributeName;

use super::{is_fifo_queue, timed, Failure, FIFO_SUFFIX};

/// What a publisher or subscriber needs to know of one queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct QueueInfo {
    /// The queue's name.
    pub(super) name: String,
    /// Its URL: what every request names.
    pub(super) url: String,
    /// Whether it is a FIFO queue.
    pub(super) fifo: bool,
    /// Its `MaximumMessageSize`, when SQS told us.
    pub(super) max_message_size: Option<usize>,
}

/// Queue URLs by name, and how to create missing queues.
#[derive(Debug)]
pub(super) struct Queues {
    client: aws_sdk_sqs::Client,
    timeout: Duration,
    /// Give created (and used) queues a redrive policy to their dead-letter
    /// queue after this many receives.
    dead_letter_after: Option<u32>,
    known: Mutex<HashMap<String, Arc<QueueInfo>>>,
}

impl Queues {
    pub(super) fn new(
        client: aws_sdk_sqs::Client,
        timeout: Duration,
        dead_letter_after: Option<u32>,
    ) -> Self {
        Queues {
            client,
            timeout,
            dead_letter_after,
            known: Mutex::new(HashMap::new()),
        }
    }

    pub(super) fn client(&self) -> &aws_sdk_sqs::Client {
        &self.client
    }

    /// The queue `name`, looked up (and created when `create`) on first use.
    pub(super) async fn resolve(
        &self,
        name: &str,
        create: bool,
    ) -> Result<Arc<QueueInfo>, Failure> {
        if let Some(info) = lock(&self.known).get(name) {
            return Ok(Arc::clone(info));
        }
        let url = match self.url_of(name).await {
            Ok(url) => url,
            Err(Failure::NoQueue(_)) if create => self.create(name).await?,
            Err(Failure::NoQueue(text)) => {
                return Err(Failure::NoQueue(
                    format!("{text} (queue `{name}` does not exist and creating queues is off)")
                        .into(),
                ))
            }
            Err(e) => return Err(e),
        };
        if let Some(after) = self.dead_letter_after {
            if !crate::dead_letter::is_dead_letter_name(name) {
                self.redrive(name, &url, after).await?;
            }
        }
        let info = Arc::new(QueueInfo {
            name: name.to_owned(),
            fifo: is_fifo_queue(name),
            max_message_size: self.max_message_size(name, &url).await?,
            url,
        });
        lock(&self.known).insert(name.to_owned(), Arc::clone(&info));
        Ok(info)
    }

    /// Forgets what is known of `name` (it was deleted, or its limits changed).
    pub(super) fn forget(&self, name: &str) {
        lock(&self.known).remove(name);
    }

    async fn url_of(&self, name: &str) -> Result<String, Failure> {
        let output = timed(
            &format!("cannot find queue `{name}`"),
            self.timeout,
            self.client.get_queue_url().queue_name(name).send(),
        )
        .await?;
        output.queue_url().map(str::to_owned).ok_or_else(|| {
            Failure::Unavailable(format!("SQS returned no URL for queue `{name}`").into())
        })
    }

    /// Creates `name`: a FIFO queue (deduplication by the ids we set, not by
    /// content) when its name says so, a standard queue otherwise.
    async fn create(&self, name: &str) -> Result<String, Failure> {
        let mut request = self.client.create_queue().queue_name(name);
        if is_fifo_queue(name) {
            request = request
                .attributes(QueueAttributeName::FifoQueue, "true")
                .attributes(QueueAttributeName::ContentBasedDeduplication, "false");
        }
        match timed(
            &format!("cannot create queue `{name}`"),
            self.timeout,
            request.send(),
        )
        .await
        {
            Ok(output) => {
                tracing::debug!(queue = name, "created SQS queue");
                output.queue_url().map(str::to_owned).ok_or_else(|| {
                    Failure::Unavailable(format!("SQS returned no URL for queue `{name}`").into())
                })
            }
            // Created meanwhile by someone else, maybe with other attributes:
            // use it as it is.
            Err(Failure::Refused(text)) => match self.url_of(name).await {
                Ok(url) => Ok(url),
                Err(_) => Err(Failure::Refused(text)),
            },
            Err(e) => Err(e),
        }
    }

    /// Gives queue `name` a redrive policy: after `after` receives a message
    /// moves to the dead-letter queue (created when missing).
    async fn redrive(&self, name: &str, url: &str, after: u32) -> Result<(), Failure> {
        let dead = dead_letter_queue_of(name);
        let dead_url = match self.url_of(&dead).await {
            Ok(url) => url,
            Err(Failure::NoQueue(_)) => self.create(&dead).await?,
            Err(e) => return Err(e),
        };
        let attributes = timed(
            &format!("cannot read the ARN of queue `{dead}`"),
            self.timeout,
            self.client
                .get_queue_attributes()
                .queue_url(&dead_url)
                .attribute_names(QueueAttributeName::QueueArn)
                .send(),
        )
        .await?;
        let arn = attributes
            .attributes()
            .and_then(|a| a.get(&QueueAttributeName::QueueArn))
            .ok_or_else(|| {
                Failure::Unavailable(format!("SQS returned no ARN for queue `{dead}`").into())
            })?;
        let policy = serde_json::json!({
            "deadLetterTargetArn": arn,
            "maxReceiveCount": after,
        })
        .to_string();
        timed(
            &format!("cannot set the redrive policy of queue `{name}`"),
            self.timeout,
            self.client
                .set_queue_attributes()
                .queue_url(url)
                .attributes(QueueAttributeName::RedrivePolicy, policy)
                .send(),
        )
        .await?;
        tracing::debug!(queue = name, dead_letter_queue = %dead, after, "redrive policy set");
        Ok(())
    }

    /// The queue's `MaximumMessageSize`; `None` when we may not read it.
    async fn max_message_size(&self, name: &str, url: &str) -> Result<Option<usize>, Failure> {
        let read = timed(
            &format!("cannot read the attributes of queue `{name}`"),
            self.timeout,
            self.client
                .get_queue_attributes()
                .queue_url(url)
                .attribute_names(QueueAttributeName::MaximumMessageSize)
                .send(),
        )
        .await;
        match read {
            Ok(output) => Ok(output
                .attributes()
                .and_then(|a| a.get(&QueueAttributeName::MaximumMessageSize))
                .and_then(|size| size.parse().ok())),
            // No permission to read attributes: the configured limit stands.
            Err(Failure::Refused(text)) => {
                tracing::debug!(queue = name, reason = %text, "cannot read the queue's size limit");
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
}

/// The dead-letter queue of queue `name`: `<stem>-dlq`, FIFO when it is (the
/// queue of the destination `<destination>.dlq`).
pub(super) fn dead_letter_queue_of(name: &str) -> String {
    match name.strip_suffix(FIFO_SUFFIX) {
        Some(stem) => format!("{stem}-dlq{FIFO_SUFFIX}"),
        None => format!("{name}-dlq"),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The map stays consistent even if a holder panicked.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::sqs::queue_name;

    #[test]
    fn dead_letter_queues_are_the_queues_of_dlq_destinations() {
        for (destination, fifo) in [
            ("orders", false),
            ("orders", true),
            ("ns.orders.fifo", false),
        ] {
            let queue = queue_name(destination, fifo).expect("valid");
            let dead = queue_name(&format!("{destination}.dlq"), fifo).expect("valid");
            assert_eq!(dead_letter_queue_of(&queue), dead, "{destination}");
            assert!(crate::dead_letter::is_dead_letter_name(&dead));
            assert!(!crate::dead_letter::is_dead_letter_name(&queue));
        }
    }
}
