//! RabbitMQ transport (lapin): [`RabbitPublisher`] sends envelopes to durable topic
//! exchanges with publisher confirms, in the CloudEvents AMQP binary binding;
//! [`RabbitSubscriber`] reads them from a consumer group's durable queue with
//! manual acknowledgement; [`envelope_from_delivery`] decodes one delivery, in
//! binary or structured mode.
//!
//! | module | owns |
//! | --- | --- |
//! | this one | the runtime lapin runs on, connection loss, what a refusal is |
//! | `codec` | the wire format: envelope ↔ AMQP properties, headers and body |
//! | `publisher` | [`RabbitPublisher`]: confirms, batching, refusals, reconnection |
//! | `subscriber` | [`RabbitSubscriber`]: group queues, bindings, prefetch, lanes, settling |
//! | `unroutable` | [`Unroutable`]: what to do with a message no queue is bound for |
//! | `tls` | [`RabbitTls`]: private CAs and client certificates for `amqps://` |
//!
//! # Wire format
//!
//! The CloudEvents RabbitMQ protocol binding used by Knative eventing-rabbitmq,
//! binary mode:
//!
//! | AMQP | value |
//! | --- | --- |
//! | exchange | the destination: a durable `topic` exchange |
//! | routing key | the CloudEvents `type` |
//! | body | the payload bytes |
//! | header `ce-<attr>` (long string) | every attribute except `datacontenttype` |
//! | headers `traceparent`, `tracestate` | the W3C trace context, when set |
//! | header `timestamp_in_ms` | when the publisher sent it, in ms (for the consumer's broker-wait metric) |
//! | property `content_type` | `datacontenttype` (`application/json` when unset) |
//! | property `message_id` | the event `id` |
//! | property `timestamp` | the event `time`, in whole seconds |
//! | property `type` | the CloudEvents `type` |
//! | property `delivery_mode` | `2` (persistent) |
//! | property `app_id` | [`RabbitPublisherBuilder::app_id`], when set |
//!
//! Received messages may also be in structured mode (property `content_type`
//! `application/cloudevents+json` and the whole event, `data` included, as the
//! body), or in binary mode with the attribute headers named as the
//! CloudEvents AMQP binding names them, [`AMQP_BINDING_PREFIXES`]
//! (`cloudEvents_<attr>`, `cloudEvents:<attr>`; a `time` there may be an AMQP
//! timestamp or milliseconds since the epoch). A structured message that is
//! not a JSON CloudEvent fails to decode like a malformed binary one, and the
//! consumer dead-letters it the same way.
//!
//! # Consumer groups
//!
//! A group is a durable queue of the group's name, bound to the exchange of each
//! destination it subscribes to with topic patterns on the event type.
//! Subscribers of one group share that queue and compete for its messages
//! (point-to-point); each group has its own queue and gets every message
//! (publish-subscribe). See [`RabbitSubscriber`] for ordering and dead letters.

use std::time::Duration;

use std::str::FromStr;

use futures::StreamExt;
use lapin::uri::AMQPUri;
use lapin::Connection;

use crate::error::{Error, Result};

mod codec;
mod publisher;
mod subscriber;
mod tls;
mod unroutable;

pub use crate::redact::redact_url;
use crate::redact::Secrets;
use codec::{attribute_of, header_text, sent_at, with_sent_at};
pub use codec::{
    envelope_from_delivery, message_properties, AMQP_BINDING_PREFIXES, SENT_AT_HEADER,
};
pub use publisher::{RabbitPublisher, RabbitPublisherBuilder, DEFAULT_MAX_MESSAGE_SIZE};
pub use subscriber::{RabbitSubscriber, RabbitSubscriberBuilder, DEFAULT_LANES, DEFAULT_PREFETCH};
pub use tls::RabbitTls;
pub use unroutable::{UnknownUnroutable, Unroutable};

/// lapin, re-exported so that consumers name the same version as
/// [`envelope_from_delivery`] and [`message_properties`].
pub use lapin;

/// The prefix of CloudEvents attribute headers in the AMQP binding.
pub const HEADER_PREFIX: &str = "ce-";

/// The default time allowed to open the TCP connection and finish the AMQP handshake.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The default time allowed for the broker to answer: publisher confirms of a
/// batch, exchange declarations, channel opening.
pub const DEFAULT_BROKER_TIMEOUT: Duration = Duration::from_secs(30);

/// AMQP `shortstr` fields (exchange, routing key, most properties, header names)
/// hold at most this many bytes; lapin silently truncates the length byte of a
/// longer one, which corrupts the frame and kills the connection.
const SHORT_STRING_MAX: usize = 255;

/// AMQP `delivery_mode` of persistent messages.
const PERSISTENT: u8 = 2;

/// The runtime lapin runs a connection's tasks and IO on: the tokio runtime
/// of `handle`, rather than executor threads of its own.
fn tokio_runtime(handle: tokio::runtime::Handle) -> async_rs::TokioRuntime {
    async_rs::Runtime::tokio_with_handle(handle)
}

/// Calls `lost` once, with lapin's error, when `connection` dies; a channel
/// the broker closed leaves the connection up and is not reported. The
/// watching task ends with the connection.
fn on_connection_lost(
    connection: &Connection,
    runtime: &tokio::runtime::Handle,
    lost: impl FnOnce(&lapin::Error) + Send + 'static,
) {
    let status = connection.status().clone();
    let events = connection.events_listener();
    runtime.spawn(async move {
        let mut events = std::pin::pin!(events);
        while let Some(event) = events.next().await {
            if let lapin::Event::Error(e) = event {
                if !status.connected() {
                    lost(&e);
                    return;
                }
            }
        }
    });
}

/// The parsed URL of a publisher or subscriber, and the URL with its password
/// replaced by `***` for display.
///
/// # Errors
///
/// [`Error::Config`] for a URL that is not an AMQP URL (its text without the
/// password), or TLS settings with a plain `amqp://` URL.
fn amqp_uri(url: &str, tls: &RabbitTls) -> Result<(AMQPUri, String)> {
    let redacted_url = redact_url(url);
    let uri = AMQPUri::from_str(url).map_err(|e| {
        let reason = Secrets::from_url(url).scrub(&e);
        Error::Config(format!("invalid AMQP URL `{redacted_url}`: {reason}"))
    })?;
    tls::check_scheme(tls, &uri)?;
    Ok((uri, redacted_url))
}

/// Whether `e` is a channel-level refusal by the broker (AMQP soft error, such
/// as PRECONDITION_FAILED, NOT_FOUND, ACCESS_REFUSED), as opposed to a dead
/// connection.
fn is_soft(e: &lapin::Error) -> bool {
    e.is_amqp_soft_error()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn soft_errors_are_channel_refusals() {
        use lapin::protocol::{AMQPError, AMQPHardError, AMQPSoftError};
        use lapin::ErrorKind;
        let soft = lapin::Error::from(ErrorKind::ProtocolError(AMQPError::new(
            AMQPSoftError::NOTFOUND.into(),
            "NOT_FOUND - no exchange 'x'".into(),
        )));
        let hard = lapin::Error::from(ErrorKind::ProtocolError(AMQPError::new(
            AMQPHardError::CONNECTIONFORCED.into(),
            "CONNECTION_FORCED".into(),
        )));
        assert!(is_soft(&soft));
        assert!(!is_soft(&hard));
        assert!(!is_soft(&lapin::Error::from(
            ErrorKind::InvalidChannelState(lapin::ChannelState::Closed, "basic.publish")
        )));
    }
}
