//! Version gating: what a consumer does with a message whose schema version is
//! newer than its handler knows — typically during a rolling deploy in which
//! producers were upgraded before this consumer.

use std::time::Duration;

use super::{Outcome, Shared};
use crate::envelope::Envelope;
use crate::inbox::InboxDatabase;
use crate::inbox::ParkedState;
use crate::outbox::OutboxDatabase;
use crate::telemetry::span::MessagingSpan;

/// What a consumer does with a message of a schema version newer than its
/// handler's [`Event::VERSION`](crate::Event::VERSION).
///
/// Such a message is not bad: this consumer is simply older than its producer.
/// By default it is parked ([`Park`](Self::Park)): taken off the broker into
/// the group's parked table (`<inbox>_parked`) and tried again every `delay`
/// by whichever member of the group comes to it, until one that knows the
/// version (the upgraded deployment) handles it. Its key waits behind it:
/// later events of the key are parked after it and handled after it, so the
/// key keeps its order, while other keys flow. Each time, the consumer logs a
/// warning with the reason and counts it in
/// [`ConsumerMetrics::version_gated`](super::ConsumerMetrics::version_gated)
/// (`eventbus_consumer_version_gated_total`).
///
/// In [`DeliveryMode::AtMostOnce`](super::DeliveryMode::AtMostOnce) the message
/// was acknowledged before its handler was looked up and cannot be given back:
/// it is dead-lettered with the reason whatever is chosen here, to be
/// replayed once the consumer is upgraded.
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
///     // Look at a parked newer message again every 30 s.
///     .newer_versions(NewerVersions::Park { delay: Duration::from_secs(30) })
///     .build(pool, subscriber, dead_letters)?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum NewerVersions {
    /// Park the message, and its key behind it, and look at it again every
    /// `delay`. The default, with a delay of 5 s.
    Park {
        /// How often a parked newer message is looked at again while no
        /// consumer of the group knows its version.
        delay: Duration,
    },
    /// Dead-letter it at once, with the reason; it is replayed after the
    /// upgrade.
    DeadLetter,
}

impl Default for NewerVersions {
    fn default() -> Self {
        NewerVersions::Park {
            delay: Self::default_delay(),
        }
    }
}

impl NewerVersions {
    /// How often a parked newer message is looked at again by default.
    pub(super) fn default_delay() -> Duration {
        Duration::from_secs(5)
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
            NewerVersions::Park { delay } if !once => delay,
            _ => return self.dead_letter(envelope, destination, 0, &reason).await,
        };
        tracing::warn!(
            group = %self.group,
            id = %envelope.id,
            %reason,
            ?delay,
            "message of a newer schema version: parked for a consumer that knows it"
        );
        self.park(
            envelope,
            destination,
            ParkedState::Newer,
            0,
            delay,
            Some(&reason),
            true,
            Outcome::Parked,
        )
        .await
    }
}
