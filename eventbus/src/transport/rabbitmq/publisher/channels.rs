//! The publisher's connection and its pool of confirm-mode channels: opened
//! on demand, replaced when found dead, never reused across connections.

use std::sync::atomic::Ordering;
use std::sync::{Mutex as StdMutex, MutexGuard, PoisonError};

use lapin::options::ConfirmSelectOptions;
use lapin::{Channel, Connection, ConnectionProperties};

use super::{RabbitPublisher, MAX_IDLE_CHANNELS};
use crate::transport::rabbitmq::{on_connection_lost, tokio_runtime};
use crate::transport::PublishError;

pub(super) struct Link {
    pub(super) connection: Connection,
    pub(super) generation: u64,
}

pub(super) struct PooledChannel {
    pub(super) channel: Channel,
    pub(super) generation: u64,
}

impl RabbitPublisher {
    /// Opens a new connection.
    pub(super) async fn open(&self) -> Result<Link, PublishError> {
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        lock(&self.declared).clear();
        let mut properties = ConnectionProperties::default();
        if let Some(name) = &self.connection_name {
            properties = properties.with_connection_name(name.clone().into());
        }
        let connecting = Connection::connect_uri_with_config(
            self.uri.clone(),
            properties,
            self.tls.to_lapin(),
            tokio_runtime(self.runtime.clone()),
        );
        let connection = match tokio::time::timeout(self.connect_timeout, connecting).await {
            Ok(Ok(connection)) => connection,
            Ok(Err(e)) => {
                return Err(PublishError::Unavailable(self.lapin_cause(
                    format_args!("cannot connect to RabbitMQ at {}", self.redacted_url),
                    &e,
                )))
            }
            Err(_) => {
                return Err(PublishError::Unavailable(
                    format!(
                        "cannot connect to RabbitMQ at {}: no answer within {:?}",
                        self.redacted_url, self.connect_timeout
                    )
                    .into(),
                ))
            }
        };
        let url = self.redacted_url.clone();
        let secrets = self.secrets.clone();
        on_connection_lost(&connection, &self.runtime, move |e| {
            tracing::warn!(url = %url, error = %secrets.scrub(e), "RabbitMQ connection lost; reconnecting on the next publish");
        });
        tracing::debug!(url = %self.redacted_url, generation, "connected to RabbitMQ");
        Ok(Link {
            connection,
            generation,
        })
    }

    /// A confirm-mode channel: an idle one of the current connection, or a new
    /// one (reconnecting first when the connection is gone).
    pub(super) async fn acquire(&self) -> Result<PooledChannel, PublishError> {
        let current = self.generation.load(Ordering::Acquire);
        {
            let mut idle = lock(&self.idle);
            while let Some(pooled) = idle.pop() {
                if pooled.generation == current && pooled.channel.status().connected() {
                    return Ok(pooled);
                }
            }
        }
        let mut link = self.link.lock().await;
        let alive = link
            .as_ref()
            .is_some_and(|l| l.connection.status().connected());
        if !alive {
            // Dropping a dead connection only releases its resources.
            *link = None;
            lock(&self.idle).clear();
            *link = Some(self.open().await?);
        }
        let Some(link) = link.as_ref() else {
            return Err(PublishError::Unavailable(
                format!("no connection to RabbitMQ at {}", self.redacted_url).into(),
            ));
        };
        let opening = async {
            let channel = link.connection.create_channel().await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            Ok::<_, lapin::Error>(channel)
        };
        match tokio::time::timeout(self.broker_timeout, opening).await {
            Ok(Ok(channel)) => Ok(PooledChannel {
                channel,
                generation: link.generation,
            }),
            Ok(Err(e)) => Err(PublishError::Unavailable(self.lapin_cause(
                format_args!("cannot open a channel to RabbitMQ at {}", self.redacted_url),
                &e,
            ))),
            Err(_) => Err(PublishError::Unavailable(
                format!(
                    "RabbitMQ at {} did not open a channel within {:?}",
                    self.redacted_url, self.broker_timeout
                )
                .into(),
            )),
        }
    }

    /// Returns a healthy channel to the pool; a dead one is dropped.
    pub(super) fn release(&self, pooled: PooledChannel) {
        if pooled.channel.status().connected()
            && pooled.generation == self.generation.load(Ordering::Acquire)
        {
            let mut idle = lock(&self.idle);
            if idle.len() < MAX_IDLE_CHANNELS {
                idle.push(pooled);
            }
        }
    }
}

pub(super) fn lock<T>(mutex: &StdMutex<T>) -> MutexGuard<'_, T> {
    // The guarded data stays consistent even if a holder panicked.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
