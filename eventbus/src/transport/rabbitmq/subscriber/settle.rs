//! Settling one delivery on the channel it arrived on ([`RabbitSettle`]):
//! `basic.ack` or `basic.nack` with requeue, failing at once when the channel
//! is closed (the broker then delivers the message again).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use lapin::options::{BasicAckOptions, BasicNackOptions, BasicQosOptions};
use lapin::{Acker, Channel};
use tokio::sync::watch;

use super::CHANNEL_CHECK_INTERVAL;
use crate::error::{Error, Result};
use crate::transport::{Settle, TransportError};

/// Settles one delivery on the channel it arrived on.
pub(super) struct RabbitSettle {
    pub(super) acker: Acker,
    pub(super) delivery_tag: u64,
    /// The delivery's channel: a tag means nothing on any other.
    pub(super) channel: Channel,
    /// The channel's prefetch, re-sent by [`Settle::ack_durably`].
    pub(super) prefetch: u16,
    pub(super) settling: Arc<watch::Sender<usize>>,
    pub(super) timeout: Duration,
}

impl fmt::Debug for RabbitSettle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitSettle")
            .field("delivery_tag", &self.delivery_tag)
            .finish_non_exhaustive()
    }
}

/// Counts an acknowledgement on its way to the broker while it lives.
pub(super) struct SettlingGuard(Arc<watch::Sender<usize>>);

impl SettlingGuard {
    pub(super) fn new(settling: &Arc<watch::Sender<usize>>) -> Self {
        settling.send_modify(|n| *n += 1);
        SettlingGuard(Arc::clone(settling))
    }
}

impl Drop for SettlingGuard {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl RabbitSettle {
    pub(super) async fn settle(&self, ack: bool) -> Result<()> {
        let what = if ack { "basic.ack" } else { "basic.nack" };
        if !self.channel.status().connected() {
            // The broker already took the message back when the channel died.
            return Err(Error::Subscribe(TransportError::Unavailable(format!(
                "cannot {what} delivery {}: its channel is closed; RabbitMQ delivers the message again",
                self.delivery_tag
            ).into())));
        }
        let _counted = SettlingGuard::new(&self.settling);
        let sending = async {
            if ack {
                self.acker.ack(BasicAckOptions::default()).await
            } else {
                self.acker
                    .nack(BasicNackOptions {
                        multiple: false,
                        requeue: true,
                    })
                    .await
            }
        };
        // An acknowledgement sent as the connection dies may never be answered
        // by lapin: stop waiting as soon as the channel is known to be closed.
        let closed = async {
            while self.channel.status().connected() {
                tokio::time::sleep(CHANNEL_CHECK_INTERVAL).await;
            }
        };
        let sending = async {
            tokio::select! {
                sent = sending => Some(sent),
                () = closed => None,
            }
        };
        match tokio::time::timeout(self.timeout, sending).await {
            Ok(None) => Err(Error::Subscribe(TransportError::Unavailable(format!(
                "cannot {what} delivery {}: its channel closed; RabbitMQ delivers the message again",
                self.delivery_tag
            ).into()))),
            Ok(Some(Ok(true))) => Ok(()),
            // lapin sends nothing for a delivery whose channel failed, or one
            // already settled.
            Ok(Some(Ok(false))) => Err(Error::Subscribe(TransportError::Unavailable(format!(
                "cannot {what} delivery {}: its channel failed or it was already settled; \
                 RabbitMQ delivers the message again unless it was settled",
                self.delivery_tag
            ).into()))),
            Ok(Some(Err(e))) => Err(Error::Subscribe(TransportError::unavailable_from(
                format_args!("cannot {what} delivery {}", self.delivery_tag),
                e,
            ))),
            Err(_) => Err(Error::Subscribe(TransportError::Unavailable(format!(
                "cannot {what} delivery {}: no answer within {:?}",
                self.delivery_tag, self.timeout
            ).into()))),
        }
    }
}

#[async_trait::async_trait]
impl Settle for RabbitSettle {
    async fn ack(self: Box<Self>) -> Result<()> {
        self.settle(true).await
    }

    /// `basic.ack`, then a synchronous round trip on the same channel
    /// (`basic.qos` with the prefetch it already has). RabbitMQ does not answer
    /// acknowledgements, and a process killed with unread deliveries in its
    /// socket resets the connection, discarding what it had not sent yet; the
    /// broker handles a channel's frames in order, so once `qos-ok` is back the
    /// acknowledgement has been applied.
    async fn ack_durably(self: Box<Self>) -> Result<()> {
        self.settle(true).await?;
        let _counted = SettlingGuard::new(&self.settling);
        let options = BasicQosOptions { global: false };
        match tokio::time::timeout(self.timeout, self.channel.basic_qos(self.prefetch, options))
            .await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Error::Subscribe(TransportError::Unavailable(
                format!(
                    "acknowledged delivery {}, but cannot confirm RabbitMQ applied it: {e}",
                    self.delivery_tag
                )
                .into(),
            ))),
            Err(_) => Err(Error::Subscribe(TransportError::Unavailable(
                format!(
                    "acknowledged delivery {}, but RabbitMQ did not confirm it within {:?}",
                    self.delivery_tag, self.timeout
                )
                .into(),
            ))),
        }
    }

    async fn release(self: Box<Self>) -> Result<()> {
        self.settle(false).await
    }

    fn is_current(&self) -> bool {
        self.channel.status().connected()
    }
}
