//! [`FailsOnce`]: a [`Publisher`] around a real broker's that reports one
//! chosen event as failed, once, while the rest of its batch goes through —
//! a failure reported late, after later events of the key reached the
//! broker — and lets a test look at the outbox before the relay's next send.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use eventbus::transport::{Delivered, OutgoingMessage, PublishError, Publisher};
use tokio::sync::{Notify, Semaphore};

use crate::relay::Step;

/// Reports `failure` for event `seq` of `key` the first time it is sent
/// (without sending it), and sends everything else through `inner`. The
/// relay's next batch after that waits until the test calls
/// [`resume`](FailsOnce::resume).
#[derive(Debug)]
pub struct FailsOnce {
    inner: Arc<dyn Publisher>,
    key: String,
    seq: u64,
    failure: PublishError,
    state: Mutex<State>,
    next_batch: Notify,
    resume: Semaphore,
    slow_failing_batch: Duration,
}

#[derive(Debug, Default)]
struct State {
    failed: bool,
    gate_passed: bool,
    later_in_failing_batch: Vec<u64>,
    next_batch: Vec<(String, u64)>,
}

impl FailsOnce {
    /// Fails event `seq` of `key` once with `failure`; sends through `inner`.
    pub fn new(inner: Arc<dyn Publisher>, key: &str, seq: u64, failure: PublishError) -> Self {
        FailsOnce {
            inner,
            key: key.to_owned(),
            seq,
            failure,
            state: Mutex::new(State::default()),
            next_batch: Notify::new(),
            resume: Semaphore::new(0),
            slow_failing_batch: Duration::ZERO,
        }
    }

    /// Reports the failing batch's results only after `delay`: a slow
    /// broker, so that whatever the relay does meanwhile (claiming the next
    /// batch) is done before it learns of the failure.
    pub fn slow_failing_batch(mut self, delay: Duration) -> Self {
        self.slow_failing_batch = delay;
        self
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until the relay starts the batch after the failing one (so it
    /// has recorded the failing batch's outcome); panics after `timeout`.
    pub async fn wait_next_batch(&self, timeout: Duration) {
        tokio::time::timeout(timeout, self.next_batch.notified())
            .await
            .unwrap_or_else(|_| panic!("no batch after the failing one within {timeout:?}"));
    }

    /// Lets the waiting batch go on.
    pub fn resume(&self) {
        self.resume.add_permits(1);
    }

    /// The later events of the failing key sent in the failing batch.
    pub fn later_in_failing_batch(&self) -> Vec<u64> {
        self.state().later_in_failing_batch.clone()
    }

    /// (key, seq) of the events in the batch after the failing one.
    pub fn next_batch(&self) -> Vec<(String, u64)> {
        self.state().next_batch.clone()
    }

    /// (key, seq) of a message carrying a [`Step`].
    fn step_of(message: &OutgoingMessage) -> Option<(String, u64)> {
        serde_json::from_slice::<Step>(&message.envelope.data)
            .ok()
            .map(|s| (s.key, s.seq))
    }

    /// [`Publisher::publish_batch`], failing the chosen event once.
    async fn publish(&self, messages: &[OutgoingMessage]) -> Vec<Result<Delivered, PublishError>> {
        let steps: Vec<Option<(String, u64)>> = messages.iter().map(Self::step_of).collect();
        let target = steps.iter().position(|s| {
            s.as_ref()
                .is_some_and(|(k, q)| *k == self.key && *q == self.seq)
        });
        let (fail_now, wait) = {
            let mut state = self.state();
            match target {
                Some(_) if !state.failed => {
                    state.failed = true;
                    state.later_in_failing_batch = steps
                        .iter()
                        .flatten()
                        .filter(|(k, q)| *k == self.key && *q > self.seq)
                        .map(|(_, q)| *q)
                        .collect();
                    (target, false)
                }
                _ if state.failed && !state.gate_passed => {
                    state.gate_passed = true;
                    state.next_batch = steps.iter().flatten().cloned().collect();
                    (None, true)
                }
                _ => (None, false),
            }
        };
        if wait {
            self.next_batch.notify_one();
            if let Ok(permit) = self.resume.acquire().await {
                permit.forget();
            }
        }
        let Some(failing) = fail_now else {
            return self.inner.publish_batch(messages).await;
        };
        let rest: Vec<OutgoingMessage> = messages
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != failing)
            .map(|(_, m)| m.clone())
            .collect();
        let mut sent = self.inner.publish_batch(&rest).await.into_iter();
        tokio::time::sleep(self.slow_failing_batch).await;
        (0..messages.len())
            .map(|i| {
                if i == failing {
                    Err(self.failure.clone())
                } else {
                    sent.next().unwrap_or_else(|| {
                        Err(PublishError::Unavailable(
                            "no result from the broker".into(),
                        ))
                    })
                }
            })
            .collect()
    }
}

// The trait is `#[async_trait]`; implemented by hand, as the macro would, to
// need no further dependency.
type Boxed<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

impl Publisher for FailsOnce {
    fn system(&self) -> &'static str {
        self.inner.system()
    }

    fn publish_batch<'life0, 'life1, 'async_trait>(
        &'life0 self,
        messages: &'life1 [OutgoingMessage],
    ) -> Boxed<'async_trait, Vec<Result<Delivered, PublishError>>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(self.publish(messages))
    }

    fn ensure_destination<'life0, 'life1, 'async_trait>(
        &'life0 self,
        destination: &'life1 str,
    ) -> Boxed<'async_trait, Result<(), PublishError>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move { self.inner.ensure_destination(destination).await })
    }
}
