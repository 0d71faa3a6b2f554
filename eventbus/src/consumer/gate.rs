//! Version gating: what a consumer does with a message whose schema version is
//! newer than its handler knows — typically during a rolling deploy in which
//! producers were upgraded before this consumer.

use std::time::Duration;

use super::{dead_letter, Outcome, Shared};
use crate::envelope::Envelope;
use crate::inbox::InboxDatabase;
use crate::outbox::OutboxDatabase;
use crate::telemetry::span::MessagingSpan;

/// What a consumer does with a message of a schema version newer than its
/// handler's [`Event::VERSION`](crate::Event::VERSION).
///
/// Such a message is not bad: this consumer is simply older than its producer.
/// By default it is held for a while and given back to the broker
/// ([`Release`](Self::Release)), again and again, until a consumer of the
/// group that knows the version (the upgraded deployment) takes it. It is
/// neither handled nor dead-lettered, and the inbox does not record it.
/// Each time, the consumer logs a warning with the reason and counts it in
/// [`ConsumerMetrics::version_gated`](super::ConsumerMetrics::version_gated)
/// (`eventbus_consumer_version_gated_total`) and in the released messages.
///
/// What "given back" means follows the broker, as for a shutdown
/// (see [`Settle::release`](crate::transport::Settle::release)): RabbitMQ
/// requeues the message, SQS makes it visible again, Kafka rewinds the
/// partition to it — so on Kafka nothing behind it in its partition is handled
/// by this consumer until it is, which keeps per-key order.
///
/// In [`DeliveryMode::AtMostOnce`](super::DeliveryMode::AtMostOnce) the message
/// was acknowledged before its handler was looked up and cannot be given back:
/// it is dead-lettered with the reason whatever is chosen here, so that
/// [`dead_letter::redrive`] can replay it once the consumer is upgraded.
///
/// ```no_run
/// # async fn demo(pool: sqlx::PgPool, subscriber: Box<dyn eventbus::transport::Subscriber>,
/// #               dead_letters: std::sync::Arc<dyn eventbus::Publisher>) -> eventbus::Result<()> {
/// use std::time::Duration;
/// use eventbus::consumer::{Consumer, Context, NewerVersions};
/// # #[derive(eventbus::Event, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
/// # #[event(type = "com.example.order.placed", destination = "orders", key = order_id)]
/// # struct OrderPlaced { order_id: String }
///
/// let consumer = Consumer::builder("billing")
///     .on(|_ctx: Context<sqlx::Postgres>, _event: OrderPlaced| async move { Ok(()) })
///     // Hold a newer message 30 s before giving it back.
///     .newer_versions(NewerVersions::Release { delay: Duration::from_secs(30) })
///     .build(pool, subscriber, dead_letters)?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum NewerVersions {
    /// Hold the message for `delay` (only its lane waits; a shutdown ends
    /// the wait at once), then give it back to the broker for redelivery.
    /// The default, with a delay of 5 s.
    Release {
        /// How long the message is held before it is given back: how often,
        /// at most, each such message comes round while no consumer of the
        /// group knows its version.
        delay: Duration,
    },
    /// Send it to the dead-letter destination at once, with the reason; it
    /// is replayed with [`dead_letter::redrive`] after the upgrade.
    DeadLetter,
}

impl Default for NewerVersions {
    fn default() -> Self {
        NewerVersions::Release {
            delay: Duration::from_secs(5),
        }
    }
}

impl<DB> Shared<DB>
where
    DB: InboxDatabase + OutboxDatabase,
{
    /// Sets aside `envelope`, of schema `version`, which is newer than the
    /// handler's `known`.
    pub(super) async fn gate(
        &self,
        destination: &str,
        envelope: &Envelope,
        version: u32,
        known: u32,
        once: bool,
        span: &MessagingSpan,
    ) -> Outcome {
        let reason = format!(
            "unsupported schema version {version} of `{}`: this consumer knows up to {known}",
            envelope.event_type
        );
        span.fail("unsupported_schema_version", &reason);
        self.metrics.gated();
        let delay = match self.newer_versions {
            NewerVersions::Release { delay } if !once => delay,
            _ => {
                return self
                    .dead_letter(dead_letter::for_event(
                        envelope,
                        destination,
                        &self.group,
                        0,
                        &reason,
                    ))
                    .await
            }
        };
        tracing::warn!(
            group = %self.group,
            id = %envelope.id,
            %reason,
            ?delay,
            "message of a newer schema version: giving it back for a consumer that knows it"
        );
        let stopping = self.stopping.notified();
        tokio::pin!(stopping);
        // Registered before the flag is read, so a stop in between still wakes us.
        stopping.as_mut().enable();
        if !self.stopped.load(std::sync::atomic::Ordering::SeqCst) {
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = stopping => {}
            }
        }
        Outcome::Released
    }
}
