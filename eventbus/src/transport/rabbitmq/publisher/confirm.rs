//! Sending a batch on confirm-mode channels: checks before sending,
//! pipelined publishes and their confirms, returned (unroutable) messages,
//! and finding the one message a broker refused by closing the channel.

use std::time::Duration;

use lapin::message::BasicReturnMessage;
use lapin::options::{BasicPublishOptions, ExchangeDeclareOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, Confirmation, ExchangeKind};

use super::channels::lock;
use super::{
    check_destination, check_short, delivered, fill, Attempt, ChannelFailure, RabbitPublisher,
    ISOLATION_RECONNECTS,
};
use crate::transport::rabbitmq::unroutable::Unroutable;
use crate::transport::rabbitmq::{
    is_soft, message_properties, with_sent_at, HEADER_PREFIX, SHORT_STRING_MAX,
};
use crate::transport::{Cause, Delivered, OutgoingMessage, PublishError};

impl RabbitPublisher {
    /// Checks what the broker would refuse by closing the channel, or what lapin
    /// cannot encode.
    pub(super) fn validate(&self, message: &OutgoingMessage) -> Result<(), PublishError> {
        let envelope = &message.envelope;
        check_destination(&message.destination)?;
        if envelope.data.len() > self.max_message_size {
            return Err(PublishError::Rejected(
                format!(
                    "message body is {} bytes, more than the limit of {} bytes (max_message_size)",
                    envelope.data.len(),
                    self.max_message_size
                )
                .into(),
            ));
        }
        check_short("event type (the routing key)", &envelope.event_type)?;
        check_short("event id (the message_id property)", &envelope.id)?;
        if let Some(ct) = &envelope.datacontenttype {
            check_short("datacontenttype (the content_type property)", ct)?;
        }
        for (name, _) in envelope.attributes() {
            if HEADER_PREFIX.len() + name.len() > SHORT_STRING_MAX {
                return Err(PublishError::Rejected(format!(
                    "attribute name `{name}` is too long for an AMQP header name ({SHORT_STRING_MAX} bytes)"
                ).into()));
            }
        }
        Ok(())
    }

    /// Sends `items` (indices into `messages`) on `channel`, then awaits every
    /// confirm. Returns one attempt per item, in order.
    pub(super) async fn pipeline(
        &self,
        channel: &Channel,
        messages: &[OutgoingMessage],
        items: &[usize],
    ) -> Vec<(usize, Attempt)> {
        let mut confirms = Vec::with_capacity(items.len());
        let mut out = Vec::with_capacity(items.len());
        // One deadline for sending and confirming: a blocked connection (broker
        // resource alarm) stalls the sending, not only the confirms.
        let deadline = tokio::time::Instant::now() + self.broker_timeout;
        let mut send_failure = None;
        for (pos, &i) in items.iter().enumerate() {
            let message = &messages[i];
            let envelope = &message.envelope;
            let sending = channel.basic_publish(
                message.destination.as_str().into(),
                envelope.event_type.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    immediate: false,
                },
                &envelope.data,
                with_sent_at(message_properties(envelope, self.app_id.as_deref())),
            );
            match tokio::time::timeout_at(deadline, sending).await {
                Ok(Ok(confirm)) => confirms.push((i, confirm)),
                Ok(Err(e)) => {
                    send_failure = Some((pos, ChannelFailure::Lapin(e)));
                    break;
                }
                Err(_) => {
                    send_failure = Some((pos, ChannelFailure::Timeout));
                    break;
                }
            }
        }

        let mut returned: Vec<BasicReturnMessage> = Vec::new();
        let mut timed_out = false;
        for (i, confirm) in confirms {
            if timed_out {
                out.push((i, Attempt::ChannelLost(ChannelFailure::Timeout)));
                continue;
            }
            let attempt = match tokio::time::timeout_at(deadline, confirm).await {
                Ok(Ok(Confirmation::Ack(ret))) => {
                    returned.extend(ret);
                    Attempt::Confirmed
                }
                Ok(Ok(Confirmation::Nack(ret))) => {
                    returned.extend(ret);
                    Attempt::Failed(PublishError::Rejected(
                        "the broker nacked the message (negative publisher confirm)".into(),
                    ))
                }
                Ok(Ok(Confirmation::NotRequested)) => {
                    Attempt::ChannelLost(ChannelFailure::NotConfirmMode)
                }
                Ok(Err(e)) => Attempt::ChannelLost(ChannelFailure::Lapin(e)),
                Err(_) => {
                    timed_out = true;
                    Attempt::ChannelLost(ChannelFailure::Timeout)
                }
            };
            out.push((i, attempt));
        }
        if let Some((pos, failure)) = send_failure {
            for &i in &items[pos..] {
                out.push((i, Attempt::ChannelLost(failure.clone())));
            }
        }

        // lapin hands a returned message to whichever confirm completes next, which
        // with the broker's `multiple` acks need not be its own: match returns to
        // messages by what they carry instead.
        for ret in returned {
            let id = ret
                .delivery
                .properties
                .message_id()
                .as_ref()
                .map(ShortString::as_str);
            let exchange = ret.delivery.exchange.as_str();
            let routing_key = ret.delivery.routing_key.as_str();
            let owner = out.iter_mut().find(|(i, attempt)| {
                let m = &messages[*i];
                !matches!(attempt, Attempt::Failed(_) | Attempt::Dropped)
                    && id == Some(m.envelope.id.as_str())
                    && m.destination == exchange
                    && m.envelope.event_type == routing_key
            });
            match owner {
                // Routing happens before the confirm: the broker has decided,
                // even if the channel died before its ack arrived.
                Some((_, attempt)) if self.unroutable.of(exchange) == Unroutable::Drop => {
                    *attempt = Attempt::Dropped;
                }
                Some((_, attempt)) => {
                    *attempt = Attempt::Failed(PublishError::Rejected(format!(
                        "unroutable: no queue is bound to exchange `{exchange}` for routing key `{routing_key}` (broker returned {} {})",
                        ret.reply_code, ret.reply_text
                    ).into()));
                }
                None => tracing::warn!(
                    exchange,
                    routing_key,
                    message_id = ?id,
                    "RabbitMQ returned a message that matches none in the batch"
                ),
            }
        }
        out
    }

    pub(super) fn describe(&self, failure: &ChannelFailure) -> Cause {
        match failure {
            ChannelFailure::Lapin(e) => {
                let text = self.secrets.scrub(e);
                if text == e.to_string() {
                    Cause::with_source(text, e.clone())
                } else {
                    text.into()
                }
            }
            ChannelFailure::Timeout => format!(
                "RabbitMQ did not take and confirm the messages within {:?} \
                 (connection blocked by a resource alarm, or broker unresponsive)",
                self.broker_timeout
            )
            .into(),
            ChannelFailure::NotConfirmMode => {
                "the channel is not in confirm mode, so the publish was not confirmed".into()
            }
        }
    }

    /// Resends messages whose channel died one at a time, each on a healthy
    /// channel, to find the one the broker refuses: that one is
    /// [`PublishError::Rejected`], the others go through.
    ///
    /// The connection itself may die on the way: lapin sends its `channel.close-ok`
    /// ahead of publish frames still queued for the closed channel, and RabbitMQ
    /// answers those with a connection-level CHANNEL_ERROR. Reconnecting a few
    /// times is allowed for that; a broker that stays away makes the rest
    /// [`PublishError::Unavailable`].
    pub(super) async fn isolate(
        &self,
        messages: &[OutgoingMessage],
        items: &[usize],
        results: &mut [Option<Result<Delivered, PublishError>>],
    ) {
        let mut reconnects_left = ISOLATION_RECONNECTS;
        // Keys whose message failed: their later messages are not sent, so
        // that none lands ahead of it (the relay sends them again after it).
        let mut failed_keys: std::collections::BTreeSet<(&str, Option<&str>)> =
            std::collections::BTreeSet::new();
        let key_of = |i: usize| {
            let m = &messages[i];
            (m.destination.as_str(), m.envelope.partition_key.as_deref())
        };
        let mut pos = 0;
        while let Some(&i) = items.get(pos) {
            if failed_keys.contains(&key_of(i)) {
                results[i] = Some(Err(PublishError::NotSent(
                    "an earlier event of the same key failed".into(),
                )));
                pos += 1;
                continue;
            }
            let attempt = match self.acquire().await {
                Ok(pooled) => {
                    let attempt = self
                        .pipeline(&pooled.channel, messages, &[i])
                        .await
                        .pop()
                        .map_or(Attempt::ChannelLost(ChannelFailure::Timeout), |(_, a)| a);
                    self.release(pooled);
                    attempt
                }
                Err(e) => Attempt::Failed(e),
            };
            let unavailable = match attempt {
                Attempt::Confirmed | Attempt::Dropped => {
                    results[i] = Some(Ok(delivered(&attempt)));
                    pos += 1;
                    continue;
                }
                Attempt::Failed(e) if !e.is_unavailable() => {
                    results[i] = Some(Err(e));
                    failed_keys.insert(key_of(i));
                    pos += 1;
                    continue;
                }
                Attempt::ChannelLost(ChannelFailure::Lapin(e)) if is_soft(&e) => {
                    results[i] = Some(Err(PublishError::Rejected(
                        self.lapin_cause("RabbitMQ refused the message and closed the channel", &e),
                    )));
                    failed_keys.insert(key_of(i));
                    pos += 1;
                    continue;
                }
                Attempt::Failed(e) => e,
                Attempt::ChannelLost(failure) => PublishError::Unavailable(self.describe(&failure)),
            };
            if reconnects_left == 0 {
                fill(results, &items[pos..], &unavailable);
                return;
            }
            reconnects_left -= 1;
            // Let the dying connection be noticed, so that `acquire` reconnects.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Declares `destination` as a durable topic exchange or, when `passive`,
    /// only checks that an exchange of that name exists.
    pub(super) async fn declare(
        &self,
        destination: &str,
        passive: bool,
    ) -> Result<(), PublishError> {
        check_destination(destination)?;
        let pooled = self.acquire().await?;
        let declaring = pooled.channel.exchange_declare(
            destination.into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                passive,
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        );
        let what = if passive {
            format!("cannot find exchange `{destination}`")
        } else {
            format!("cannot declare topic exchange `{destination}`")
        };
        self.answer(&what, declaring).await?;
        lock(&self.declared).insert(destination.to_owned());
        self.release(pooled);
        Ok(())
    }

    /// Waits for the broker's answer to a declaration, at most the broker
    /// timeout: a refusal of the declaration is `Rejected` (a soft error,
    /// the channel closed), anything else `Unavailable`; `what` says what
    /// failed.
    pub(super) async fn answer(
        &self,
        what: &str,
        declaring: impl std::future::Future<Output = lapin::Result<()>>,
    ) -> Result<(), PublishError> {
        match tokio::time::timeout(self.broker_timeout, declaring).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) if is_soft(&e) => Err(PublishError::Rejected(self.lapin_cause(what, &e))),
            Ok(Err(e)) => Err(PublishError::Unavailable(self.lapin_cause(what, &e))),
            Err(_) => Err(PublishError::Unavailable(
                format!(
                    "{what}: no answer from RabbitMQ within {:?}",
                    self.broker_timeout
                )
                .into(),
            )),
        }
    }

    /// Before publishing: declares the exchange, and when the broker refuses
    /// (no `configure` permission, an existing exchange of another kind) accepts
    /// any existing exchange of that name.
    pub(super) async fn declare_for_publish(&self, destination: &str) -> Result<(), PublishError> {
        match self.declare(destination, false).await {
            Err(PublishError::Rejected(reason)) => match self.declare(destination, true).await {
                Ok(()) => {
                    tracing::warn!(
                        exchange = destination,
                        reason = %reason,
                        "cannot declare the exchange; publishing to the existing one"
                    );
                    Ok(())
                }
                Err(PublishError::Rejected(_)) => Err(PublishError::Rejected(reason)),
                Err(e) => Err(e),
            },
            other => other,
        }
    }
}
