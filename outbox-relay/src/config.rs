//! Relay settings from three layers: command-line flags, `EVENTBUS_*`
//! environment variables (both through clap) and an optional TOML file, in that
//! order of precedence.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use eventbus::relay::{RelayConfig, Retention};
use eventbus::{Error, Result, TableName};
use serde::Deserialize;

use crate::destinations::{DestinationArgs, DestinationFile, Publishing, Unroutable};
use crate::duration;
use crate::http::{HttpArgs, HttpSettings};

/// Settings shared by every subcommand.
#[derive(Debug, Args)]
pub(crate) struct Common {
    /// URL of the database holding the outbox: `postgres://…`, `mysql://…`
    /// (MySQL 8 or MariaDB 10.6+), or a SQLite file `sqlite://path.db`
    /// (opened in WAL mode; one relay per file).
    #[arg(
        long,
        env = "EVENTBUS_DATABASE_URL",
        global = true,
        hide_env_values = true
    )]
    pub(crate) database_url: Option<String>,

    /// A file holding the database URL (a mounted secret), instead of
    /// `--database-url`.
    #[arg(long, env = "EVENTBUS_DATABASE_URL_FILE", global = true)]
    pub(crate) database_url_file: Option<PathBuf>,

    /// Outbox table (`table` or `schema.table`) [default: eventbus_outbox].
    #[arg(long, env = "EVENTBUS_OUTBOX_TABLE", global = true)]
    pub(crate) outbox_table: Option<String>,

    /// TOML configuration file; flags and environment variables override it.
    #[arg(long, short = 'c', env = "EVENTBUS_CONFIG", global = true)]
    pub(crate) config: Option<PathBuf>,
}

/// Settings of `outbox-relay run`.
#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// Broker URL: Kafka `kafka://host:port[,host:port]`, RabbitMQ
    /// `amqp://user:pass@host:port/vhost` or `amqps://…`, Amazon SQS `sqs://`,
    /// `sqs://host[:port]` or `sqs+http://host:port`.
    #[arg(long, env = "EVENTBUS_BROKER", hide_env_values = true)]
    pub(crate) broker: Option<String>,

    #[command(flatten)]
    pub(crate) broker_options: BrokerArgs,

    #[command(flatten)]
    pub(crate) http: HttpArgs,

    /// CloudEvents `source` for rows that have none [default: urn:eventbus:outbox-relay].
    #[arg(long, env = "EVENTBUS_SOURCE")]
    pub(crate) source: Option<String>,

    /// Instance name shown by `status` [default: host name and process id].
    #[arg(long, env = "EVENTBUS_RELAY_NAME")]
    pub(crate) name: Option<String>,

    /// Rows per batch [default: 1000].
    #[arg(long, env = "EVENTBUS_BATCH_SIZE")]
    pub(crate) batch_size: Option<u32>,

    /// Payload bytes per batch, measured in the database before loading
    /// (at least one row per batch) [default: 4194304].
    #[arg(long, env = "EVENTBUS_CLAIM_BYTES")]
    pub(crate) claim_bytes: Option<usize>,

    /// Claim the next batch while one is sent, and acknowledge sent rows in
    /// the background: `true` or `false` [default: true].
    #[arg(long, env = "EVENTBUS_PIPELINE")]
    pub(crate) pipeline: Option<bool>,

    /// Fallback poll interval: `200ms`, `1s`; a bare number is milliseconds [default: 1s].
    #[arg(long, visible_alias = "poll-interval", env = "EVENTBUS_POLL_INTERVAL_MS", value_parser = duration::millis)]
    pub(crate) poll_interval_ms: Option<Duration>,

    /// Lease length, the takeover time after a crash: `5s`; a bare number is
    /// milliseconds [default: 5s].
    #[arg(long, visible_alias = "lease-ttl", env = "EVENTBUS_LEASE_TTL_MS", value_parser = duration::millis)]
    pub(crate) lease_ttl_ms: Option<Duration>,

    /// Attempts before a rejected event is parked [default: 5].
    #[arg(long, env = "EVENTBUS_MAX_ATTEMPTS")]
    pub(crate) max_attempts: Option<u32>,

    /// First retry delay of a rejected event, doubling: `500ms`; a bare
    /// number is milliseconds [default: 500ms].
    #[arg(long, visible_alias = "retry-initial", env = "EVENTBUS_RETRY_INITIAL_MS", value_parser = duration::millis)]
    pub(crate) retry_initial_ms: Option<Duration>,

    /// Largest event payload in bytes; larger ones are rejected [default: 1000000].
    #[arg(long, env = "EVENTBUS_MAX_MESSAGE_BYTES")]
    pub(crate) max_message_bytes: Option<usize>,

    /// Keep published rows this long instead of deleting them at once:
    /// `90m`, `24h`; a bare number is seconds.
    #[arg(long, visible_alias = "keep-published", env = "EVENTBUS_KEEP_PUBLISHED_SECS", value_parser = duration::secs)]
    pub(crate) keep_published_secs: Option<Duration>,

    /// Prefix for every topic/exchange name.
    #[arg(long, env = "EVENTBUS_DESTINATION_PREFIX")]
    pub(crate) destination_prefix: Option<String>,

    /// Do not create missing topics/exchanges.
    #[arg(long, env = "EVENTBUS_NO_CREATE_DESTINATIONS")]
    pub(crate) no_create_destinations: bool,

    /// Extra producer setting `key=value` (Kafka client properties); repeatable.
    #[arg(long = "producer-set", value_name = "KEY=VALUE")]
    pub(crate) producer_set: Vec<String>,

    #[command(flatten)]
    pub(crate) destinations: DestinationArgs,
}

/// Broker settings beside the URL, shared by `run` and `dlq replay`.
#[derive(Debug, Args)]
pub(crate) struct BrokerArgs {
    /// A file holding the broker URL (a mounted secret), instead of `--broker`.
    #[arg(long, env = "EVENTBUS_BROKER_FILE")]
    pub(crate) broker_file: Option<PathBuf>,

    /// PEM file of the certificate authorities that signed the broker's TLS
    /// certificate (`amqps://`; for Kafka it also turns on TLS).
    #[arg(long, env = "EVENTBUS_BROKER_CA_FILE")]
    pub(crate) broker_ca_file: Option<PathBuf>,

    /// PKCS#12 file (`.p12`) with the client certificate and key to present
    /// to the broker (mutual TLS; RabbitMQ `EXTERNAL` authentication).
    #[arg(long, env = "EVENTBUS_BROKER_CLIENT_IDENTITY")]
    pub(crate) broker_client_identity: Option<PathBuf>,

    /// A file holding the password of `--broker-client-identity`.
    #[arg(long, env = "EVENTBUS_BROKER_CLIENT_IDENTITY_PASSWORD_FILE")]
    pub(crate) broker_client_identity_password_file: Option<PathBuf>,

    /// Producer setting `key=path`, its value read from a file (a Kafka
    /// `sasl.password`, say); repeatable.
    #[arg(long = "producer-set-file", value_name = "KEY=PATH")]
    pub(crate) producer_set_file: Vec<String>,
}

/// The TOML file: every field optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileConfig {
    pub(crate) database_url: Option<String>,
    pub(crate) database_url_file: Option<PathBuf>,
    pub(crate) outbox_table: Option<String>,
    pub(crate) broker: Option<String>,
    pub(crate) broker_file: Option<PathBuf>,
    pub(crate) broker_ca_file: Option<PathBuf>,
    pub(crate) broker_client_identity: Option<PathBuf>,
    pub(crate) broker_client_identity_password_file: Option<PathBuf>,
    pub(crate) http: Option<SocketAddr>,
    pub(crate) source: Option<String>,
    pub(crate) name: Option<String>,
    pub(crate) batch_size: Option<u32>,
    pub(crate) claim_bytes: Option<usize>,
    pub(crate) pipeline: Option<bool>,
    /// Durations: `"500ms"`, `"5s"`, `"2m"`, or a bare number in the unit
    /// of the key's old name; the key may also be written without that unit.
    #[serde(
        default,
        alias = "poll_interval",
        deserialize_with = "duration::millis_opt"
    )]
    pub(crate) poll_interval_ms: Option<Duration>,
    #[serde(
        default,
        alias = "lease_ttl",
        deserialize_with = "duration::millis_opt"
    )]
    pub(crate) lease_ttl_ms: Option<Duration>,
    pub(crate) max_attempts: Option<u32>,
    #[serde(
        default,
        alias = "retry_initial",
        deserialize_with = "duration::millis_opt"
    )]
    pub(crate) retry_initial_ms: Option<Duration>,
    pub(crate) max_message_bytes: Option<usize>,
    #[serde(
        default,
        alias = "keep_published",
        deserialize_with = "duration::secs_opt"
    )]
    pub(crate) keep_published_secs: Option<Duration>,
    /// The HTTP listener's timeouts and connection cap.
    #[serde(default, deserialize_with = "duration::secs_opt")]
    pub(crate) http_read_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "duration::secs_opt")]
    pub(crate) http_request_timeout: Option<Duration>,
    pub(crate) http_max_connections: Option<usize>,
    pub(crate) destination_prefix: Option<String>,
    pub(crate) create_destinations: Option<bool>,
    /// Strict mode and allow-list, Kafka topic creation, RabbitMQ unroutable
    /// policies: see `crate::destinations`.
    pub(crate) strict_destinations: Option<bool>,
    #[serde(default)]
    pub(crate) allowed_destinations: Vec<String>,
    pub(crate) topic_partitions: Option<u32>,
    pub(crate) topic_replication_factor: Option<u32>,
    #[serde(default)]
    pub(crate) unroutable: HashMap<String, Unroutable>,
    /// Logical destination → broker name.
    #[serde(default)]
    pub(crate) destinations: HashMap<String, String>,
    /// Kafka producer properties.
    #[serde(default)]
    pub(crate) producer: HashMap<String, String>,
}

impl FileConfig {
    /// Reads the file named by `--config`, or an empty configuration.
    pub(crate) fn load(path: Option<&Path>) -> Result<Self> {
        let Some(path) = path else {
            return Ok(FileConfig::default());
        };
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::Config(format!("cannot read config file {}: {e}", path.display()))
        })?;
        Self::parse(&text).map_err(|e| match e {
            Error::Config(m) => Error::Config(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    pub(crate) fn parse(text: &str) -> Result<Self> {
        toml::from_str(text).map_err(|e| Error::Config(e.message().to_owned()))
    }
}

/// Everything `run` needs, resolved.
#[derive(Debug)]
pub(crate) struct Resolved {
    pub(crate) database_url: Secret,
    pub(crate) broker: Broker,
    pub(crate) http: HttpSettings,
    pub(crate) relay: RelayConfig,
}

/// A connection URL that may hold a password: `Debug` shows it redacted.
pub(crate) struct Secret(String);

impl Secret {
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&crate::redact::redact(&self.0))
    }
}

/// How to reach the broker: its URL and the client settings beside it.
#[derive(Debug)]
pub(crate) struct Broker {
    pub(crate) url: Secret,
    /// PEM file of extra trusted certificate authorities.
    pub(crate) ca_file: Option<PathBuf>,
    /// PKCS#12 client certificate and key, and its password.
    pub(crate) client_identity: Option<(PathBuf, Secret)>,
    /// Kafka producer properties; the connection ones (`security.protocol`,
    /// `ssl.*`, `sasl.*`) also apply to consumers. Values are redacted by the
    /// Kafka transport's `Debug`, never logged here.
    pub(crate) properties: Properties,
    /// Topic creation and unroutable policies (`run` only).
    pub(crate) publishing: Publishing,
}

/// Kafka client properties; `Debug` shows the keys only (values can be secrets).
#[derive(Default)]
pub(crate) struct Properties(pub(crate) Vec<(String, String)>);

impl std::fmt::Debug for Properties {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(k, _)| k))
            .finish()
    }
}

/// A value given directly or as a file to read it from, flags and environment
/// first, then the TOML file. Giving both forms in one layer is a mistake.
fn value_or_file(
    what: &str,
    flag: (Option<&String>, Option<&PathBuf>),
    file: (Option<&String>, Option<&PathBuf>),
) -> Result<Option<String>> {
    for (value, path) in [flag, file] {
        match (value, path) {
            (Some(_), Some(_)) => {
                return Err(Error::Config(format!(
                    "both the {what} and a file holding it are given: keep one"
                )))
            }
            (Some(v), None) => return Ok(Some(v.clone())),
            (None, Some(path)) => return read_secret(what, path).map(Some),
            (None, None) => {}
        }
    }
    Ok(None)
}

/// The largest secret file read: a URL or password is far smaller, and a
/// wrong path (a log, a device) must not be read whole.
const MAX_SECRET_BYTES: u64 = 64 * 1024;

/// The contents of a secret file, without the trailing newline editors add.
fn read_secret(what: &str, path: &Path) -> Result<String> {
    use std::io::Read;
    let cannot = |e: std::io::Error| {
        Error::Config(format!(
            "cannot read the {what} from {}: {e}",
            path.display()
        ))
    };
    let mut text = String::new();
    std::fs::File::open(path)
        .map_err(cannot)?
        .take(MAX_SECRET_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(cannot)?;
    if text.len() as u64 > MAX_SECRET_BYTES {
        return Err(Error::Config(format!(
            "the file {} meant to hold the {what} is larger than {MAX_SECRET_BYTES} bytes",
            path.display()
        )));
    }
    let value = text.trim();
    if value.is_empty() {
        return Err(Error::Config(format!(
            "the file {} meant to hold the {what} is empty",
            path.display()
        )));
    }
    Ok(value.to_owned())
}

pub(crate) fn database_url(common: &Common, file: &FileConfig) -> Result<Secret> {
    value_or_file(
        "database URL",
        (
            common.database_url.as_ref(),
            common.database_url_file.as_ref(),
        ),
        (file.database_url.as_ref(), file.database_url_file.as_ref()),
    )?
    .map(Secret)
    .ok_or_else(|| {
        Error::Config(
            "a database URL is required: --database-url, EVENTBUS_DATABASE_URL or \
             --database-url-file"
                .into(),
        )
    })
}

/// The broker settings of `run` or `dlq replay`: `url` from its flag, the rest
/// from `args`, then the TOML file.
pub(crate) fn broker(
    url: Option<&String>,
    args: &BrokerArgs,
    file: &FileConfig,
    mut properties: Vec<(String, String)>,
) -> Result<Broker> {
    let url = value_or_file(
        "broker URL",
        (url, args.broker_file.as_ref()),
        (file.broker.as_ref(), file.broker_file.as_ref()),
    )?
    .ok_or_else(|| {
        Error::Config("a broker URL is required: --broker, EVENTBUS_BROKER or --broker-file".into())
    })?;
    for kv in &args.producer_set_file {
        let (k, path) = kv.split_once('=').ok_or_else(|| {
            Error::Config(format!("--producer-set-file expects KEY=PATH, got `{kv}`"))
        })?;
        let k = k.trim();
        let value = read_secret(&format!("producer setting `{k}`"), Path::new(path.trim()))?;
        properties.push((k.to_owned(), value));
    }
    let identity = args
        .broker_client_identity
        .clone()
        .or_else(|| file.broker_client_identity.clone());
    let password_file = args
        .broker_client_identity_password_file
        .clone()
        .or_else(|| file.broker_client_identity_password_file.clone());
    let client_identity = match (identity, password_file) {
        (Some(identity), Some(password)) => Some((
            identity,
            Secret(read_secret("client identity password", &password)?),
        )),
        (Some(identity), None) => Some((identity, Secret(String::new()))),
        (None, Some(_)) => {
            return Err(Error::Config(
                "a client identity password file is given without --broker-client-identity".into(),
            ))
        }
        (None, None) => None,
    };
    Ok(Broker {
        url: Secret(url),
        ca_file: args
            .broker_ca_file
            .clone()
            .or_else(|| file.broker_ca_file.clone()),
        client_identity,
        properties: Properties(properties),
        publishing: Publishing::default(),
    })
}

pub(crate) fn table(common: &Common, file: &FileConfig) -> Result<TableName> {
    let name = common
        .outbox_table
        .as_deref()
        .or(file.outbox_table.as_deref())
        .unwrap_or(eventbus::outbox::DEFAULT_TABLE);
    TableName::parse(name)
}

pub(crate) fn resolve(common: &Common, run: &RunArgs, file: FileConfig) -> Result<Resolved> {
    let database_url = database_url(common, &file)?;
    let mut producer: Vec<(String, String)> = file.producer.clone().into_iter().collect();
    for kv in &run.producer_set {
        let (k, v) = kv.split_once('=').ok_or_else(|| {
            Error::Config(format!("--producer-set expects KEY=VALUE, got `{kv}`"))
        })?;
        producer.push((k.trim().to_owned(), v.trim().to_owned()));
    }
    let mut broker = broker(run.broker.as_ref(), &run.broker_options, &file, producer)?;
    let mut relay = RelayConfig {
        table: table(common, &file)?,
        ..RelayConfig::default()
    };
    if let Some(v) = run.source.clone().or(file.source) {
        relay.default_source = v;
    }
    if let Some(v) = run.name.clone().or(file.name) {
        relay.name = v;
    }
    if let Some(v) = run.batch_size.or(file.batch_size) {
        relay.batch_size = v;
    }
    if let Some(v) = run.claim_bytes.or(file.claim_bytes) {
        relay.claim_bytes = v;
    }
    if let Some(v) = run.pipeline.or(file.pipeline) {
        relay.pipeline = v;
    }
    if let Some(v) = run.poll_interval_ms.or(file.poll_interval_ms) {
        relay.poll_interval = v;
    }
    if let Some(v) = run.lease_ttl_ms.or(file.lease_ttl_ms) {
        relay.lease_ttl = v;
        relay.heartbeat_interval = relay.heartbeat_interval.min(relay.lease_ttl / 4);
    }
    if let Some(v) = run.max_attempts.or(file.max_attempts) {
        relay.max_attempts = v;
    }
    if let Some(v) = run.retry_initial_ms.or(file.retry_initial_ms) {
        relay.retry_initial = v;
    }
    if let Some(v) = run.max_message_bytes.or(file.max_message_bytes) {
        relay.max_message_bytes = v;
    }
    if let Some(v) = run.keep_published_secs.or(file.keep_published_secs) {
        relay.retention = Retention::Keep(v);
    }
    if let Some(v) = run.destination_prefix.clone().or(file.destination_prefix) {
        relay.destination_prefix = v;
    }
    relay.create_destinations =
        !run.no_create_destinations && file.create_destinations.unwrap_or(true);
    relay.destination_map = file.destinations;
    let destination_file = DestinationFile {
        strict_destinations: file.strict_destinations,
        allowed_destinations: file.allowed_destinations,
        topic_partitions: file.topic_partitions,
        topic_replication_factor: file.topic_replication_factor,
        unroutable: file.unroutable,
    };
    broker.publishing =
        crate::destinations::resolve(&run.destinations, &destination_file, &mut relay)?;
    relay.validate()?;

    let defaults = HttpSettings::default();
    let http = HttpSettings {
        addr: http_addr(run.http.http, file.http),
        read_timeout: run
            .http
            .http_read_timeout
            .or(file.http_read_timeout)
            .unwrap_or(defaults.read_timeout),
        request_timeout: run
            .http
            .http_request_timeout
            .or(file.http_request_timeout)
            .unwrap_or(defaults.request_timeout),
        max_connections: run
            .http
            .http_max_connections
            .or(file.http_max_connections)
            .unwrap_or(defaults.max_connections),
    };
    http.validate()?;
    Ok(Resolved {
        database_url,
        broker,
        http,
        relay,
    })
}

/// The HTTP listener's address: flag or environment, then the file, then
/// the default.
pub(crate) fn http_addr(flag: Option<SocketAddr>, file: Option<SocketAddr>) -> SocketAddr {
    flag.or(file).unwrap_or(crate::http::DEFAULT_ADDR)
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
