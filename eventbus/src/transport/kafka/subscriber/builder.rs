//! [`KafkaSubscriberBuilder`]: the librdkafka properties of a consumer, with our
//! defaults, checked when it is built.

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rdkafka::consumer::Consumer;
use tokio::sync::Semaphore;

use super::{millis, KafkaSubscriber};
use crate::error::{Error, Result};
use crate::transport::kafka::partitions::Partitions;
use crate::transport::kafka::rebalance::{GroupConsumer, GroupContext};
use crate::transport::kafka::settings::{canonical_key, config_error, Settings};

/// Consumer settings applied unless overridden with [`KafkaSubscriberBuilder::set`].
pub(super) const DEFAULTS: &[(&str, &str)] = &[
    // Offsets are committed in the background, but only those stored by
    // acknowledgements: librdkafka must not store what it merely delivered.
    ("enable.auto.commit", "true"),
    ("enable.auto.offset.store", "false"),
    // A new group starts with the backlog: nothing published before its first
    // member joined is skipped.
    ("auto.offset.reset", "earliest"),
    // Keep the prefetch buffer modest: it is memory, and after a rebalance the
    // new owner fetches these messages again anyway.
    ("queued.max.messages.kbytes", "4096"),
    ("queued.min.messages", "1000"),
];

/// Configures a [`KafkaSubscriber`]; made by [`KafkaSubscriber::builder`].
#[must_use = "a builder does nothing until `build` is called"]
pub struct KafkaSubscriberBuilder {
    pub(super) settings: Settings,
    pub(super) topics: Vec<String>,
    pub(super) max_in_flight: usize,
    pub(super) session_timeout: Option<Duration>,
}

impl KafkaSubscriberBuilder {
    /// The consumer group this subscriber joins (`group.id`); required.
    /// Subscribers of one group share the partitions; every group gets every
    /// message.
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.settings.insert("group.id", group.into());
        self
    }

    /// The topics to read (replacing any given before); at least one is required.
    pub fn topics<I, T>(mut self, topics: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.topics = topics.into_iter().map(Into::into).collect();
        self
    }

    /// At most this many messages are handed out and not yet settled (default
    /// [`DEFAULT_MAX_IN_FLIGHT`](crate::transport::kafka::DEFAULT_MAX_IN_FLIGHT)); [`Subscriber::next`](crate::transport::Subscriber::next) waits while the bound is
    /// reached.
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n;
        self
    }

    /// How long the group coordinator waits for a heartbeat before it declares
    /// this member dead and gives its partitions to others
    /// (`session.timeout.ms`); the heartbeat interval becomes a third of it
    /// unless `heartbeat.interval.ms` is [set](Self::set).
    ///
    /// Default: librdkafka's 45 s, suitable for production (a short network
    /// hiccup does not cause a rebalance). Tests use a few seconds (e.g. 6 s)
    /// so that a killed member's partitions move on quickly.
    pub fn session_timeout(mut self, timeout: Duration) -> Self {
        self.settings
            .insert("session.timeout.ms", millis(timeout).to_string());
        self.session_timeout = Some(timeout);
        self
    }

    /// The longest time between two calls of [`Subscriber::next`](crate::transport::Subscriber::next) before
    /// librdkafka leaves the group on this member's behalf
    /// (`max.poll.interval.ms`); it is also how long a rebalance waits for the
    /// members to rejoin. Must be at least the session timeout.
    ///
    /// Default: librdkafka's 300 s, suitable for production: keep it above the
    /// longest time all in-flight slots may be busy (a slow handler plus its
    /// retries). Tests against tansu use a few seconds (e.g. 6 s): its group
    /// coordinator is slow to complete a join otherwise.
    pub fn max_poll_interval(mut self, interval: Duration) -> Self {
        self.settings
            .insert("max.poll.interval.ms", millis(interval).to_string());
        self
    }

    /// Sets a librdkafka consumer property (see librdkafka's
    /// `CONFIGURATION.md`), overriding the defaults: `enable.auto.commit=true`,
    /// `auto.offset.reset=earliest`, `queued.max.messages.kbytes=4096`,
    /// `queued.min.messages=1000`. `enable.auto.offset.store` must stay
    /// `false`: the subscriber stores offsets of acknowledged messages itself.
    pub fn set(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        let key = key.into();
        self.settings
            .insert(canonical_key(key.trim()), value.into());
        self
    }

    /// Creates the consumer and subscribes it to the topics; it joins the group
    /// in the background, on the first calls of [`Subscriber::next`](crate::transport::Subscriber::next). Must be
    /// called inside a tokio runtime.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for no bootstrap servers, no group, no topic or an
    /// empty topic name, `max_in_flight` of zero, `enable.auto.offset.store`
    /// other than `false`, an unknown property or an invalid value (values of
    /// secret properties are never part of the message);
    /// [`Error::InvalidState`] with no tokio runtime.
    pub fn build(self) -> Result<KafkaSubscriber> {
        let KafkaSubscriberBuilder {
            mut settings,
            topics,
            max_in_flight,
            session_timeout,
        } = self;
        settings.check_common()?;
        let group = settings
            .get("group.id")
            .unwrap_or_default()
            .trim()
            .to_owned();
        if group.is_empty() {
            return Err(Error::config(
                "a Kafka subscriber needs a consumer group: call `.group(...)`",
            ));
        }
        if topics.is_empty() {
            return Err(Error::config(format!(
                "Kafka subscriber of group `{group}` has no topic: call `.topics([...])`"
            )));
        }
        if topics.iter().any(|t| t.trim().is_empty()) {
            return Err(Error::config("Kafka topic names must not be empty"));
        }
        if max_in_flight == 0 {
            return Err(Error::config("max_in_flight must be at least 1"));
        }
        if settings
            .get("enable.auto.offset.store")
            .is_some_and(|v| v.trim() != "false")
        {
            return Err(Error::config(
                "Kafka property `enable.auto.offset.store` must be `false`: the subscriber \
                 stores the offsets of acknowledged messages itself",
            ));
        }
        if let Some(timeout) = session_timeout {
            if !settings.contains("heartbeat.interval.ms") {
                let heartbeat = (millis(timeout) / 3).max(1);
                settings.insert("heartbeat.interval.ms", heartbeat.to_string());
            }
        }
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::invalid_state(
                "KafkaSubscriber must be built inside a tokio runtime",
            ));
        }

        let partitions = Arc::new(Partitions::default());
        let context = GroupContext {
            partitions: Arc::clone(&partitions),
            group: group.clone(),
            settings: settings.clone(),
            consumer: OnceLock::new(),
        };
        let consumer: GroupConsumer = settings
            .client_config()
            .create_with_context(context)
            .map_err(|e| config_error(&settings, &e, "consumer"))?;
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer.subscribe(&names).map_err(|e| {
            Error::config(format!(
                "cannot subscribe to Kafka topics {topics:?}: {}",
                settings.scrub(&e.to_string())
            ))
        })?;
        let consumer = Arc::new(consumer);
        // Weak: the consumer owns its context.
        let _ = consumer.context().consumer.set(Arc::downgrade(&consumer));
        let max_in_flight = max_in_flight.min(Semaphore::MAX_PERMITS);
        Ok(KafkaSubscriber {
            consumer: Some(consumer),
            partitions,
            error: None,
            in_flight: Arc::new(Semaphore::new(max_in_flight)),
            max_in_flight,
            group,
            topics,
            settings,
        })
    }
}

impl fmt::Debug for KafkaSubscriberBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaSubscriberBuilder")
            .field("settings", &self.settings)
            .field("topics", &self.topics)
            .field("max_in_flight", &self.max_in_flight)
            .finish()
    }
}
