//! [`Unroutable`]: what a [`RabbitPublisher`](super::RabbitPublisher) does with
//! a message the broker routed to no queue, per destination.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

/// What happens to a message that no queue is bound for (RabbitMQ returns it
/// to the publisher, which sends with `mandatory` set to find out).
///
/// In publish/subscribe, publishing an event type nobody subscribes to yet is
/// normal, so the default is [`Unroutable::Drop`]: such an event must not hold
/// back the later events of its key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Unroutable {
    /// The message counts as published
    /// ([`Delivered::unroutable`](crate::transport::Delivered::unroutable) is
    /// set; the relay counts it in `eventbus_relay_unroutable_total` and logs
    /// it). Nobody receives it.
    #[default]
    Drop,
    /// The message fails with
    /// [`PublishError::Rejected`](crate::transport::PublishError::Rejected):
    /// the relay retries it and parks it after its last attempt, holding back
    /// the later events of its key meanwhile. For destinations where every
    /// event must reach some queue.
    Park,
}

impl Unroutable {
    /// The name used in configuration: `drop` or `park`.
    pub fn as_str(self) -> &'static str {
        match self {
            Unroutable::Drop => "drop",
            Unroutable::Park => "park",
        }
    }
}

impl fmt::Display for Unroutable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A policy name that is neither `drop` nor `park`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown unroutable policy `{0}`: use `drop` or `park`")]
pub struct UnknownUnroutable(pub String);

impl FromStr for Unroutable {
    type Err = UnknownUnroutable;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "drop" => Ok(Unroutable::Drop),
            "park" => Ok(Unroutable::Park),
            _ => Err(UnknownUnroutable(s.to_owned())),
        }
    }
}

/// The policy of every destination: a default and exceptions by exchange name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct UnroutablePolicies {
    pub(super) default: Unroutable,
    pub(super) by_exchange: HashMap<String, Unroutable>,
}

impl UnroutablePolicies {
    /// The policy for messages to `exchange`.
    pub(super) fn of(&self, exchange: &str) -> Unroutable {
        self.by_exchange
            .get(exchange)
            .copied()
            .unwrap_or(self.default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_exceptions_beat_the_default() {
        assert_eq!("drop".parse(), Ok(Unroutable::Drop));
        assert_eq!(" Park ".parse(), Ok(Unroutable::Park));
        assert!("bounce".parse::<Unroutable>().is_err());
        let mut policies = UnroutablePolicies::default();
        policies
            .by_exchange
            .insert("payments".into(), Unroutable::Park);
        assert_eq!(policies.of("payments"), Unroutable::Park);
        assert_eq!(policies.of("orders"), Unroutable::Drop);
    }
}
