//! Settings about destinations: which ones rows may name (the allow-list),
//! how Kafka topics are created, and what RabbitMQ does with an event no
//! queue is bound for.

use std::collections::{BTreeSet, HashMap};

use clap::{Args, ValueEnum};
use eventbus::relay::RelayConfig;
use eventbus::{Error, Result};
use serde::Deserialize;

/// The key of the `[unroutable]` table that sets the policy of every
/// destination not named there.
const EVERY_DESTINATION: &str = "*";

/// What RabbitMQ publishing does with an event no queue is bound for (the
/// transport's `Unroutable`, kept apart so that configuration needs no broker
/// client).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Unroutable {
    /// Counted as published and in `eventbus_relay_unroutable_total`.
    #[default]
    Drop,
    /// Rejected, retried, parked.
    Park,
}

/// Flags of `outbox-relay run` about destinations.
#[derive(Debug, Default, Args)]
pub(crate) struct DestinationArgs {
    /// Strict mode: only destinations named in the `[destinations]` table or
    /// by `--allow-destination` may be published to; rows for any other are
    /// parked at once, never sent, never created.
    #[arg(long, env = "EVENTBUS_STRICT_DESTINATIONS")]
    pub(crate) strict_destinations: bool,

    /// A destination rows may name (turns strict mode on); repeatable, or
    /// comma-separated in the environment variable.
    #[arg(
        long = "allow-destination",
        value_name = "DESTINATION",
        env = "EVENTBUS_ALLOWED_DESTINATIONS",
        value_delimiter = ','
    )]
    pub(crate) allow_destination: Vec<String>,

    /// Partition count of Kafka topics the relay creates [default: the
    /// cluster's `num.partitions`].
    #[arg(long, env = "EVENTBUS_TOPIC_PARTITIONS")]
    pub(crate) topic_partitions: Option<u32>,

    /// Replication factor of Kafka topics the relay creates [default: the
    /// cluster's `default.replication.factor`].
    #[arg(long, env = "EVENTBUS_TOPIC_REPLICATION_FACTOR")]
    pub(crate) topic_replication_factor: Option<u32>,

    /// RabbitMQ: what happens to an event no queue is bound for, `drop`
    /// (counted as published and in `eventbus_relay_unroutable_total`) or
    /// `park` (rejected, retried, parked) [default: drop].
    #[arg(long, env = "EVENTBUS_UNROUTABLE", value_enum)]
    pub(crate) unroutable: Option<Unroutable>,
}

/// The TOML keys about destinations (flattened into the file's top level by
/// the caller, field by field).
#[derive(Debug, Default, Deserialize)]
pub(crate) struct DestinationFile {
    pub(crate) strict_destinations: Option<bool>,
    #[serde(default)]
    pub(crate) allowed_destinations: Vec<String>,
    pub(crate) topic_partitions: Option<u32>,
    pub(crate) topic_replication_factor: Option<u32>,
    /// Logical destination (or `*` for every other) → `drop` / `park`.
    #[serde(default)]
    pub(crate) unroutable: HashMap<String, Unroutable>,
}

/// How the publisher treats destinations, resolved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Publishing {
    /// Kafka: partitions of created topics; `None` for the cluster's default.
    pub(crate) topic_partitions: Option<u32>,
    /// Kafka: replication factor of created topics; `None` for the cluster's.
    pub(crate) topic_replication_factor: Option<u32>,
    /// RabbitMQ: the policy of destinations not in `unroutable_by_exchange`.
    pub(crate) unroutable: Unroutable,
    /// RabbitMQ: policies by broker-level exchange name.
    pub(crate) unroutable_by_exchange: Vec<(String, Unroutable)>,
}

/// Sets `relay.allowed_destinations` and returns the publisher settings;
/// `relay`'s destination map and prefix must already be set.
pub(crate) fn resolve(
    args: &DestinationArgs,
    file: &DestinationFile,
    relay: &mut RelayConfig,
) -> Result<Publishing> {
    let listed = !args.allow_destination.is_empty() || !file.allowed_destinations.is_empty();
    if args.strict_destinations || file.strict_destinations.unwrap_or(false) || listed {
        let allowed: BTreeSet<String> = relay
            .destination_map
            .keys()
            .chain(&args.allow_destination)
            .chain(&file.allowed_destinations)
            .map(|d| d.trim().to_owned())
            .filter(|d| !d.is_empty())
            .collect();
        if allowed.is_empty() {
            return Err(Error::Config(
                "strict destinations allow nothing: name destinations in [destinations], \
                 allowed_destinations or --allow-destination"
                    .into(),
            ));
        }
        relay.allowed_destinations = Some(allowed);
    }

    let mut unroutable = args.unroutable;
    let mut unroutable_by_exchange = Vec::new();
    for (destination, &policy) in &file.unroutable {
        if destination == EVERY_DESTINATION {
            // The flag beats the file.
            unroutable.get_or_insert(policy);
        } else {
            unroutable_by_exchange.push((relay.broker_destination(destination), policy));
        }
    }
    Ok(Publishing {
        topic_partitions: args.topic_partitions.or(file.topic_partitions),
        topic_replication_factor: args
            .topic_replication_factor
            .or(file.topic_replication_factor),
        unroutable: unroutable.unwrap_or_default(),
        unroutable_by_exchange,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> DestinationFile {
        toml::from_str(text).expect("valid TOML")
    }

    #[test]
    fn strict_mode_allows_the_mapped_and_the_listed_destinations() {
        let mut relay = RelayConfig::default();
        relay
            .destination_map
            .insert("orders".into(), "shop.orders".into());
        let args = DestinationArgs {
            allow_destination: vec!["payments".into()],
            ..DestinationArgs::default()
        };
        resolve(
            &args,
            &file("allowed_destinations = [\"audit\"]"),
            &mut relay,
        )
        .expect("resolves");
        let allowed: Vec<&str> = relay
            .allowed_destinations
            .as_ref()
            .expect("strict")
            .iter()
            .map(String::as_str)
            .collect();
        assert_eq!(allowed, ["audit", "orders", "payments"]);
    }

    #[test]
    fn flags_environment_and_file_keys_reach_the_settings() {
        #[derive(Debug, clap::Parser)]
        struct Cli {
            #[command(flatten)]
            destinations: DestinationArgs,
        }
        let cli = <Cli as clap::Parser>::try_parse_from([
            "relay",
            "--unroutable",
            "park",
            "--allow-destination",
            "orders",
            "--topic-replication-factor",
            "3",
        ])
        .expect("valid flags");
        assert_eq!(cli.destinations.unroutable, Some(Unroutable::Park));
        assert_eq!(cli.destinations.allow_destination, ["orders"]);
        assert_eq!(cli.destinations.topic_replication_factor, Some(3));
        let err = <Cli as clap::Parser>::try_parse_from(["relay", "--unroutable", "bounce"])
            .expect_err("unknown policy");
        assert!(err.to_string().contains("bounce"), "{err}");

        let file = crate::config::FileConfig::parse(
            "strict_destinations = true\nallowed_destinations = [\"orders\"]\n\
             topic_partitions = 6\ntopic_replication_factor = 3\n[unroutable]\npayments = \"park\"\n",
        )
        .expect("the file takes the destination keys");
        assert_eq!(file.strict_destinations, Some(true));
        assert_eq!(file.allowed_destinations, ["orders"]);
        assert_eq!(
            (file.topic_partitions, file.topic_replication_factor),
            (Some(6), Some(3))
        );
        assert_eq!(file.unroutable.get("payments"), Some(&Unroutable::Park));
    }

    #[test]
    fn without_strict_mode_every_destination_is_allowed() {
        let mut relay = RelayConfig::default();
        resolve(&DestinationArgs::default(), &file(""), &mut relay).expect("resolves");
        assert_eq!(relay.allowed_destinations, None);

        let err = resolve(
            &DestinationArgs::default(),
            &file("strict_destinations = true"),
            &mut relay,
        )
        .expect_err("strict mode with an empty list");
        assert!(err.to_string().contains("allow nothing"), "{err}");
    }

    #[test]
    fn unroutable_policies_are_mapped_to_exchanges_and_the_flag_beats_the_file() {
        let mut relay = RelayConfig {
            destination_prefix: "prod.".into(),
            ..RelayConfig::default()
        };
        let text = "topic_partitions = 6\n[unroutable]\n\"*\" = \"park\"\npayments = \"park\"\nnews = \"drop\"\n";
        let publishing =
            resolve(&DestinationArgs::default(), &file(text), &mut relay).expect("resolves");
        assert_eq!(publishing.unroutable, Unroutable::Park);
        assert_eq!(publishing.topic_partitions, Some(6));
        assert_eq!(publishing.topic_replication_factor, None);
        let mut by_exchange = publishing.unroutable_by_exchange;
        by_exchange.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            by_exchange,
            [
                ("prod.news".to_owned(), Unroutable::Drop),
                ("prod.payments".to_owned(), Unroutable::Park)
            ]
        );

        let args = DestinationArgs {
            unroutable: Some(Unroutable::Drop),
            topic_partitions: Some(2),
            ..DestinationArgs::default()
        };
        let publishing = resolve(&args, &file(text), &mut relay).expect("resolves");
        assert_eq!(publishing.unroutable, Unroutable::Drop);
        assert_eq!(publishing.topic_partitions, Some(2));

        let err = crate::config::FileConfig::parse("[unroutable]\norders = \"bounce\"\n")
            .expect_err("unknown policy");
        assert!(err.to_string().contains("bounce"), "{err}");
    }
}
