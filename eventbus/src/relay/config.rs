//! [`RelayConfig`]: batch sizes, intervals, retry policy, retention and the
//! mapping from logical destinations to broker names.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use crate::backoff::exponential;
use crate::dead_letter::is_dead_letter_name;
use crate::error::{Error, Result};
use crate::table::TableName;

/// What happens to a row once the broker acknowledged it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retention {
    /// Delete it at once (default: cheapest, no table bloat).
    Delete,
    /// Mark it `published` and delete it after this long, in batches.
    Keep(Duration),
}

/// Settings of a [`Relay`](super::Relay). Start from [`RelayConfig::default`].
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// The outbox table.
    pub table: TableName,
    /// A name for this relay instance, shown by `status`.
    pub name: String,
    /// CloudEvents `source` for rows that have none.
    pub default_source: String,
    /// Rows claimed and published per batch.
    pub batch_size: u32,
    /// Payload bytes claimed per batch, measured in the database before
    /// anything is loaded: a batch stops at this budget (but always holds at
    /// least one row), which bounds the relay's memory whatever the writers
    /// stored.
    pub claim_bytes: usize,
    /// Fallback poll interval when no notification arrives.
    pub poll_interval: Duration,
    /// Wake up as soon as code in this process writes to the outbox through
    /// [`Outbox`](crate::Outbox) on SQLite or MySQL, instead of waiting for
    /// the poll (default `true`). The wake-up is a hint given before the
    /// writer commits: an idle relay then looks at once and a few times over
    /// the next 250 ms, and falls back to `poll_interval` after that. Off,
    /// such a relay finds new rows by polling alone. PostgreSQL wakes relays by `NOTIFY`, in any
    /// process, whatever this says.
    pub in_process_wakeups: bool,
    /// How often the relay heartbeats, renews leases and rebalances.
    pub heartbeat_interval: Duration,
    /// Lease length; a crashed relay's partitions are taken over after this.
    pub lease_ttl: Duration,
    /// Attempts before a rejected row is parked as `failed`.
    pub max_attempts: u32,
    /// First retry delay of a rejected row; doubles per attempt.
    pub retry_initial: Duration,
    /// Longest retry delay of a rejected row.
    pub retry_max: Duration,
    /// First pause when the broker is unavailable; doubles while it stays so.
    pub outage_initial: Duration,
    /// Longest pause when the broker is unavailable.
    pub outage_max: Duration,
    /// Rows whose payload is larger are rejected without being sent.
    pub max_message_bytes: usize,
    /// What to do with published rows.
    pub retention: Retention,
    /// Prefix added to every destination (e.g. `prod.`).
    pub destination_prefix: String,
    /// Explicit destination → broker name mapping (applied before the prefix).
    pub destination_map: HashMap<String, String>,
    /// Create missing topics/exchanges before first use.
    pub create_destinations: bool,
    /// Strict mode: when set, only these logical destinations (as written in
    /// the outbox, before mapping and prefix) may be published to; a row for
    /// any other is parked at once, never sent, its destination never
    /// created. `None` (default): any destination but a dead-letter one. See
    /// [`RelayConfig::check_destination`].
    pub allowed_destinations: Option<BTreeSet<String>>,
    /// How often backlog statistics are refreshed.
    pub stats_interval: Duration,
    /// Pipeline the relay (default `true`): while a full batch is sent, the
    /// next one is claimed, and a sent batch's rows are deleted (or marked)
    /// in the background while the next is sent. Per-key order, fencing and
    /// at-least-once hold either way (ADR 14); off, the relay claims, sends
    /// and acknowledges one batch after the other, with one database
    /// connection busy at a time.
    pub pipeline: bool,
    /// Deliberate defects, for the project's negative controls only: tests
    /// switch one on to see their check fail. Leave at the default.
    #[doc(hidden)]
    pub defects: Defects,
}

/// Deliberate defects of the relay, each breaking one promise, so that a
/// test can show its check catches it. All off by default.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Defects {
    /// Send a claimed-ahead batch's rows even when an earlier row of their
    /// key from the batch before stayed pending.
    pub keep_prefetched_rows_of_pending_keys: bool,
    /// Give up a failed background acknowledgement at once, so its rows are
    /// claimed and sent again while this relay holds their lease.
    pub forget_failed_acknowledgements: bool,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            table: crate::outbox::default_table(),
            name: default_name(),
            default_source: "urn:eventbus:outbox-relay".into(),
            batch_size: 1000,
            claim_bytes: DEFAULT_CLAIM_BYTES,
            poll_interval: Duration::from_secs(1),
            in_process_wakeups: true,
            heartbeat_interval: Duration::from_millis(1000),
            lease_ttl: Duration::from_secs(5),
            max_attempts: 5,
            retry_initial: Duration::from_millis(500),
            retry_max: Duration::from_secs(60),
            outage_initial: Duration::from_millis(200),
            outage_max: Duration::from_secs(10),
            max_message_bytes: crate::outbox::DEFAULT_MAX_EVENT_BYTES,
            retention: Retention::Delete,
            destination_prefix: String::new(),
            destination_map: HashMap::new(),
            create_destinations: true,
            allowed_destinations: None,
            stats_interval: Duration::from_secs(2),
            pipeline: true,
            defects: Defects::default(),
        }
    }
}

impl RelayConfig {
    /// Checks the settings for values that cannot work.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the bad setting.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::config(m));
        if self.batch_size == 0 || self.batch_size > 100_000 {
            return bad("batch_size must be between 1 and 100000");
        }
        if self.claim_bytes == 0 {
            return bad("claim_bytes must be at least 1");
        }
        if self.max_attempts == 0 {
            return bad("max_attempts must be at least 1");
        }
        if self.lease_ttl < self.heartbeat_interval * 2 {
            return bad("lease_ttl must be at least twice heartbeat_interval");
        }
        if self.poll_interval.is_zero() || self.heartbeat_interval.is_zero() {
            return bad("poll_interval and heartbeat_interval must be positive");
        }
        if self.default_source.is_empty() {
            return bad("default_source must not be empty");
        }
        Ok(())
    }

    /// The broker-level name of a logical destination.
    pub fn broker_destination(&self, destination: &str) -> String {
        let mapped = self
            .destination_map
            .get(destination)
            .map_or(destination, String::as_str);
        format!("{}{mapped}", self.destination_prefix)
    }

    /// Whether rows for the logical `destination` may be published; `Err`
    /// says why not, for the row's `last_error`.
    ///
    /// A dead-letter destination is never valid, strict mode or not: its name
    /// (logical or broker-level) ends in `.dlq`, what consumers dead-letter to
    /// (or in `-dlq`, the SQS queue of such a destination), before an optional
    /// `.fifo`. In strict mode ([`allowed_destinations`](Self::allowed_destinations)
    /// set) the destination must also be in the allow-list.
    ///
    /// # Errors
    ///
    /// The reason the destination is refused.
    pub fn check_destination(&self, destination: &str) -> std::result::Result<(), String> {
        let broker = self.broker_destination(destination);
        if is_dead_letter_name(destination) || is_dead_letter_name(&broker) {
            return Err(format!(
                "destination `{destination}` (`{broker}` on the broker) is a dead-letter \
                 destination, which only consumers publish to: refused without sending"
            ));
        }
        match &self.allowed_destinations {
            Some(allowed) if !allowed.contains(destination) => Err(format!(
                "destination `{destination}` is not in the relay's allowed destinations \
                 (strict mode): refused without sending or creating it"
            )),
            _ => Ok(()),
        }
    }

    /// The retry delay after `attempts` failed attempts (exponential, capped).
    pub fn retry_delay(&self, attempts: u32) -> Duration {
        exponential(
            self.retry_initial,
            self.retry_max,
            attempts.saturating_sub(1),
        )
    }
}

/// Payload bytes claimed per batch unless configured: 4 MiB. The pipelined
/// relay holds up to two batches (one sent, one claimed ahead), and 4 MiB
/// is still thousands of the usual small events per batch.
pub(crate) const DEFAULT_CLAIM_BYTES: usize = 4 * 1024 * 1024;

fn default_name() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "relay".into());
    format!("{host}-{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_doubles_and_caps() {
        let c = RelayConfig {
            retry_initial: Duration::from_millis(100),
            retry_max: Duration::from_secs(1),
            ..RelayConfig::default()
        };
        // Jittered into the upper half of 100 ms * 2^(attempts - 1), capped.
        for (attempts, ceiling) in [(1, 100), (2, 200), (4, 800), (5, 1_000), (60, 1_000)] {
            let ceiling = Duration::from_millis(ceiling);
            for _ in 0..100 {
                let d = c.retry_delay(attempts);
                assert!(d >= ceiling / 2 && d <= ceiling, "{attempts}: {d:?}");
            }
        }
    }

    #[test]
    fn destinations_are_mapped_then_prefixed() {
        let mut c = RelayConfig {
            destination_prefix: "prod.".into(),
            ..RelayConfig::default()
        };
        c.destination_map
            .insert("orders".into(), "shop-orders".into());
        assert_eq!(c.broker_destination("orders"), "prod.shop-orders");
        assert_eq!(c.broker_destination("payments"), "prod.payments");
    }

    #[test]
    fn dead_letter_destinations_are_refused_and_strict_mode_allows_only_its_list() {
        let mut c = RelayConfig::default();
        assert_eq!(c.check_destination("orders"), Ok(()));
        for dead in [
            "orders.dlq",
            "orders-dlq",
            "orders.fifo.dlq",
            "orders-dlq.fifo",
        ] {
            let reason = c.check_destination(dead).expect_err(dead);
            assert!(reason.contains("dead-letter"), "{reason}");
        }
        // A mapping onto a dead-letter destination is refused too.
        c.destination_map
            .insert("audit".into(), "orders.dlq".into());
        assert!(c.check_destination("audit").is_err());

        c.allowed_destinations = Some(["orders".to_owned()].into());
        assert_eq!(c.check_destination("orders"), Ok(()));
        let reason = c.check_destination("payments").expect_err("not allowed");
        assert!(
            reason.contains("`payments`") && reason.contains("allowed"),
            "{reason}"
        );
    }

    #[test]
    fn invalid_settings_are_refused() {
        let c = RelayConfig {
            batch_size: 0,
            ..RelayConfig::default()
        };
        assert!(c.validate().is_err());
        let c = RelayConfig {
            lease_ttl: Duration::from_millis(500),
            ..RelayConfig::default()
        };
        assert!(c.validate().is_err());
        assert!(RelayConfig::default().validate().is_ok());
    }
}
