//! Dead letters: what goes to a consumer group's dead-letter destination
//! `<destination>.<group>.dlq` — the original event with the reason, attempt
//! count, origin and group as extension attributes — and how a dead letter is
//! turned back into its original event.
//!
//! Where a dead letter goes follows [`DeadLetterKeys`]: to the broker (and,
//! when the broker will not take it, to the consumer's parked table), or,
//! when it must hold its key, straight to the parked table.

use crate::envelope::Envelope;
use crate::transport::OutgoingMessage;

pub use crate::dead_letter::{
    destination_of, ATTEMPTS, GROUP, ORIGIN, REASON, REDRIVEN_AT, UNDECODABLE_TYPE,
};

/// What a dead letter does to the later messages of its key.
///
/// ```
/// use eventbus::consumer::DeadLetterKeys;
///
/// assert_eq!(DeadLetterKeys::default(), DeadLetterKeys::Continue);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum DeadLetterKeys {
    /// The dead letter goes to the group's dead-letter destination on the
    /// broker and the key goes on: later events of the key are handled, and a
    /// replayed dead letter lands after them. The default, as in most
    /// messaging frameworks: one bad event does not stop its aggregate.
    #[default]
    Continue,
    /// The dead letter stays in the consumer's parked table and holds its
    /// key, as the relay's parked rows do: every later event of the key is
    /// parked behind it, in order, until it is replayed (`outbox-relay dlq
    /// replay`), so no event of the key is applied before it. Events without
    /// a partition key hold nothing.
    Block,
}

/// A dead letter for an event that could not be handled.
pub(crate) fn for_event(
    envelope: &Envelope,
    origin: &str,
    group: &str,
    attempts: u32,
    reason: &str,
) -> OutgoingMessage {
    let mut dead = envelope.clone();
    annotate(&mut dead, origin, group, attempts, reason);
    OutgoingMessage {
        destination: destination_of(origin, group),
        envelope: dead,
    }
}

/// Bytes that were not a CloudEvent at all, wrapped untouched in an envelope
/// of type [`UNDECODABLE_TYPE`] to be dead-lettered.
pub(crate) fn wrap_body(body: &[u8], group: &str) -> Envelope {
    let mut dead = Envelope::new(
        format!("urn:eventbus:consumer:{group}"),
        UNDECODABLE_TYPE,
        body.to_vec(),
    );
    dead.datacontenttype = Some("application/octet-stream".into());
    dead
}

fn annotate(e: &mut Envelope, origin: &str, group: &str, attempts: u32, reason: &str) {
    e.extensions.insert(REASON.into(), reason.to_owned());
    e.extensions.insert(ATTEMPTS.into(), attempts.to_string());
    e.extensions.insert(ORIGIN.into(), origin.to_owned());
    e.extensions.insert(GROUP.into(), group.to_owned());
}

/// The original event of a dead letter and the destination it came from, for
/// re-driving; `None` for an undecodable original or a message that is not a
/// dead letter.
///
/// ```
/// use eventbus::Envelope;
/// use eventbus::consumer::dead_letter;
///
/// let mut dead = Envelope::new("urn:svc", "com.example.order.placed", b"{}".to_vec());
/// dead.extensions.insert(dead_letter::ORIGIN.into(), "orders".into());
/// dead.extensions.insert(dead_letter::REASON.into(), "boom".into());
/// let (origin, original) = dead_letter::original(&dead).unwrap();
/// assert_eq!(origin, "orders");
/// assert!(original.extensions.is_empty());
/// ```
pub fn original(dead: &Envelope) -> Option<(String, Envelope)> {
    if dead.event_type == UNDECODABLE_TYPE {
        return None;
    }
    let origin = dead.extensions.get(ORIGIN)?.clone();
    let mut e = dead.clone();
    for key in [REASON, ATTEMPTS, ORIGIN, GROUP] {
        e.extensions.remove(key);
    }
    Some((origin, e))
}

/// Re-drives dead letters: reads `subscriber` (subscribed to `*.dlq`
/// destinations) and publishes each original event, marked with
/// [`REDRIVEN_AT`], back to the destination it came from, until no message arrives for `idle`. Returns how many were
/// re-driven, and how many dead letters were skipped because they cannot be
/// re-driven (undecodable originals, messages that are not dead letters).
///
/// Skipped dead letters are held unsettled until the run ends and then given
/// back untouched, so that none comes round again during the run (which would
/// count it twice, or stop the run before the letters behind it). Each one
/// takes a slot of the subscriber's in-flight bound (prefetch): with more of
/// them than that bound in a row, the run sees nothing more and ends on `idle`.
///
/// # Errors
///
/// [`crate::Error::Publish`] if the broker refuses a re-driven event (that dead
/// letter is given back and the run stops); any error of the subscriber.
pub async fn redrive(
    subscriber: &mut dyn crate::transport::Subscriber,
    publisher: &dyn crate::transport::Publisher,
    idle: std::time::Duration,
) -> crate::Result<(u64, u64)> {
    let mut redriven = 0;
    let mut held = Vec::new();
    let result = redrive_until_idle(subscriber, publisher, idle, &mut redriven, &mut held).await;
    let skipped = held.len() as u64;
    // Not something we can put back: give it back for a human.
    let mut released = Ok(());
    for settle in held {
        released = released.and(settle.release().await);
    }
    result?;
    released?;
    subscriber.close().await?;
    Ok((redriven, skipped))
}

async fn redrive_until_idle(
    subscriber: &mut dyn crate::transport::Subscriber,
    publisher: &dyn crate::transport::Publisher,
    idle: std::time::Duration,
    redriven: &mut u64,
    held: &mut Vec<Box<dyn crate::transport::Settle>>,
) -> crate::Result<()> {
    loop {
        let next = tokio::time::timeout(idle, subscriber.next()).await;
        let message = match next {
            Err(_) | Ok(None) => return Ok(()),
            Ok(Some(Err(e))) => return Err(e),
            Ok(Some(Ok(m))) => m,
        };
        let original = message.envelope.as_ref().ok().and_then(original);
        let Some((origin, mut envelope)) = original else {
            held.push(message.settle);
            continue;
        };
        envelope.extensions.insert(
            REDRIVEN_AT.into(),
            chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        );
        let out = OutgoingMessage {
            destination: origin,
            envelope,
        };
        match publisher
            .publish_batch(std::slice::from_ref(&out))
            .await
            .pop()
        {
            Some(Ok(_)) => {
                message.settle.ack().await?;
                *redriven += 1;
            }
            Some(Err(e)) => {
                message.settle.release().await?;
                return Err(e.into());
            }
            None => {
                message.settle.release().await?;
                return Ok(());
            }
        }
    }
}
