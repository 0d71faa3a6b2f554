//! The machine and its services: where PostgreSQL, RabbitMQ and the Kafka
//! broker are, a fresh database per workload, and the versions and settings
//! recorded with every result.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use eventbus::transport::kafka::rdkafka;
use eventbus::transport::rabbitmq::lapin;
use eventbus_tests::{drop_databases, replace_db_name};
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde::Serialize;
use sqlx::{Connection, Executor, PgConnection, PgPool};

use crate::error::{BenchError, Result};

/// How long a service may take to answer the first time.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the services are: `DATABASE_URL`, `AMQP_URL`, `KAFKA_BROKERS`, with
/// the loopback defaults `scripts/services.sh` starts.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Services {
    /// PostgreSQL admin URL (a user allowed to create databases).
    pub(crate) database_url: String,
    /// RabbitMQ URL.
    pub(crate) amqp_url: String,
    /// Kafka bootstrap servers.
    pub(crate) kafka_brokers: String,
}

fn var_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| default.to_owned())
}

impl Services {
    /// From the environment, or the loopback defaults.
    pub(crate) fn from_env() -> Self {
        Services {
            database_url: var_or(
                "DATABASE_URL",
                "postgres://postgres@127.0.0.1:5432/postgres",
            ),
            amqp_url: var_or("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"),
            kafka_brokers: var_or("KAFKA_BROKERS", "127.0.0.1:9092"),
        }
    }

    /// Fails with a clear message if PostgreSQL does not answer.
    pub(crate) async fn check_postgres(&self) -> Result<()> {
        let connecting = PgConnection::connect(&self.database_url);
        match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
            Ok(Ok(c)) => {
                let _ = c.close().await;
                Ok(())
            }
            Ok(Err(e)) => Err(self.postgres_down(e.to_string())),
            Err(_) => Err(self.postgres_down("no answer".into())),
        }
    }

    fn postgres_down(&self, reason: String) -> BenchError {
        BenchError::Unreachable {
            service: "PostgreSQL",
            url: redact(&self.database_url),
            reason,
            hint: "start it (`source scripts/services.sh && ensure_postgres`) or set DATABASE_URL",
        }
    }

    /// Fails with a clear message if RabbitMQ does not answer.
    pub(crate) async fn check_rabbitmq(&self) -> Result<()> {
        let connecting =
            lapin::Connection::connect(&self.amqp_url, lapin::ConnectionProperties::default());
        let reason = match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
            Ok(Ok(c)) => {
                let _ = c.close(200, "bench check".into()).await;
                return Ok(());
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => "no answer".into(),
        };
        Err(BenchError::Unreachable {
            service: "RabbitMQ",
            url: redact(&self.amqp_url),
            reason,
            hint: "start it (`source scripts/services.sh && ensure_rabbitmq`) or set AMQP_URL",
        })
    }

    /// Fails with a clear message if the Kafka broker does not answer.
    pub(crate) async fn check_kafka(&self) -> Result<()> {
        let brokers = self.kafka_brokers.clone();
        let probe = tokio::task::spawn_blocking(move || -> std::result::Result<(), String> {
            let consumer: BaseConsumer = rdkafka::ClientConfig::new()
                .set("bootstrap.servers", &brokers)
                .create()
                .map_err(|e| e.to_string())?;
            consumer
                .fetch_metadata(None, CONNECT_TIMEOUT)
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
        .await?;
        probe.map_err(|reason| BenchError::Unreachable {
            service: "Kafka",
            url: self.kafka_brokers.clone(),
            reason,
            hint: "start tansu (`source scripts/services.sh && ensure_kafka`) or set KAFKA_BROKERS",
        })
    }
}

/// `url` without its password.
pub(crate) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &url[s + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// A database made for one workload, dropped when this value is dropped.
#[derive(Debug)]
pub(crate) struct BenchDb {
    /// Pool on the fresh database.
    pub(crate) pool: PgPool,
    /// Its URL (for the relay child process and extra pools).
    pub(crate) url: String,
    name: String,
    admin_url: String,
}

impl BenchDb {
    /// Creates an empty database `eventbus_bench_<run>_<label>`.
    pub(crate) async fn create(
        services: &Services,
        run_id: &str,
        label: &str,
        max_connections: u32,
    ) -> Result<Self> {
        services.check_postgres().await?;
        let admin_url = services.database_url.clone();
        let name = format!("eventbus_bench_{run_id}_{label}");
        let mut admin = PgConnection::connect(&admin_url).await?;
        admin
            .execute(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
            )))
            .await?;
        admin
            .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .await?;
        let _ = admin.close().await;
        let url = replace_db_name(&admin_url, &name);
        let pool = Self::pool_on(&url, max_connections).await?;
        Ok(BenchDb {
            pool,
            url,
            name,
            admin_url,
        })
    }

    /// Creates a database with the eventbus tables migrated.
    pub(crate) async fn migrated(
        services: &Services,
        run_id: &str,
        label: &str,
        max_connections: u32,
    ) -> Result<Self> {
        let db = Self::create(services, run_id, label, max_connections).await?;
        eventbus::migrate(&db.pool).await?;
        Ok(db)
    }

    /// Another pool on this database (the relay's, the consumer's).
    pub(crate) async fn another_pool(&self, max_connections: u32) -> Result<PgPool> {
        Self::pool_on(&self.url, max_connections).await
    }

    async fn pool_on(url: &str, max_connections: u32) -> Result<PgPool> {
        Ok(sqlx::postgres::PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(60))
            .connect(url)
            .await?)
    }
}

impl Drop for BenchDb {
    fn drop(&mut self) {
        drop_databases(&self.admin_url, std::slice::from_ref(&self.name));
    }
}

/// Versions and settings of everything measured, recorded with the results.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Environment {
    /// `eventbus` crate version.
    pub(crate) eventbus: String,
    /// Build profile of the harness (`release` or `debug`).
    pub(crate) profile: &'static str,
    /// `rustc --version`.
    pub(crate) rustc: String,
    /// `git rev-parse HEAD` of the work tree, and whether it had changes.
    pub(crate) git: String,
    /// CPUs, memory and kernel.
    pub(crate) host: BTreeMap<&'static str, String>,
    /// `SELECT version()`.
    pub(crate) postgres: String,
    /// Durability-relevant PostgreSQL settings.
    pub(crate) postgres_settings: BTreeMap<String, String>,
    /// RabbitMQ server version.
    pub(crate) rabbitmq: String,
    /// The Kafka-protocol broker (`tansu --version`).
    pub(crate) kafka_broker: String,
    /// librdkafka version used by every Kafka client here.
    pub(crate) librdkafka: String,
    /// Durability settings of the producers (ours and the baselines).
    pub(crate) durability: BTreeMap<&'static str, &'static str>,
    /// Peer crates measured in W5.
    pub(crate) peer: BTreeMap<&'static str, &'static str>,
    /// Where the services were.
    pub(crate) services: Services,
}

/// Runs `program args` and returns its first output line, or `unknown`.
fn command_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .find(|l| !l.trim().is_empty())
                .map(|l| l.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into())
}

impl Environment {
    /// Reads versions and settings; services that do not answer read `unknown`.
    pub(crate) async fn read(services: &Services) -> Self {
        let mut host = BTreeMap::new();
        host.insert(
            "cpus",
            std::thread::available_parallelism().map_or("unknown".into(), |n| n.to_string()),
        );
        if let Ok(meminfo) = std::fs::read_to_string("/proc/meminfo") {
            if let Some(line) = meminfo.lines().find(|l| l.starts_with("MemTotal:")) {
                host.insert(
                    "memory",
                    line.trim_start_matches("MemTotal:").trim().to_owned(),
                );
            }
        }
        host.insert("kernel", command_line("uname", &["-r"]));
        if let Ok(cpuinfo) = std::fs::read_to_string("/proc/cpuinfo") {
            if let Some(line) = cpuinfo.lines().find(|l| l.starts_with("model name")) {
                host.insert(
                    "cpu_model",
                    line.split_once(':')
                        .map_or("", |(_, v)| v.trim())
                        .to_owned(),
                );
            }
        }
        let (postgres, postgres_settings) = postgres_facts(&services.database_url).await;
        let tansu = std::env::var("HOME")
            .map(|h| format!("{h}/.cargo/bin/tansu"))
            .unwrap_or_else(|_| "tansu".into());
        let mut kafka_broker = command_line("tansu", &["--version"]);
        if kafka_broker == "unknown" {
            kafka_broker = command_line(&tansu, &["--version"]);
        }
        let mut rabbitmq = command_line("rabbitmqctl", &["version"]);
        if rabbitmq == "unknown" {
            rabbitmq = command_line("dpkg-query", &["-W", "-f=${Version}", "rabbitmq-server"]);
        }
        let (_, librdkafka) = rdkafka::util::get_rdkafka_version();
        let dirty = Command::new("git")
            .args(["status", "--porcelain", "--untracked-files=no"])
            .output()
            .ok()
            .is_some_and(|o| !o.stdout.is_empty());
        let git = format!(
            "{}{}",
            command_line("git", &["rev-parse", "--short", "HEAD"]),
            if dirty {
                " (with uncommitted changes)"
            } else {
                ""
            }
        );
        let mut durability = BTreeMap::new();
        durability.insert(
            "kafka",
            "enable.idempotence=true, acks=all, partitioner=murmur2_random, compression=none, \
             linger.ms=1 (ours, the raw producers and the peer alike); topics: 4 partitions, replication 1",
        );
        durability.insert(
            "rabbitmq",
            "durable topic exchange and durable queue, delivery_mode=2 (persistent), \
             publisher confirms, mandatory=true",
        );
        durability.insert(
            "postgres",
            "synchronous_commit as configured (recorded in postgres_settings)",
        );
        let mut peer = BTreeMap::new();
        peer.insert("outbox-core", "0.6.0");
        peer.insert("outbox-postgres", "0.3.0");
        peer.insert("outbox-kafka", "0.2.1");
        Environment {
            eventbus: env!("CARGO_PKG_VERSION").to_owned(),
            profile: if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            },
            rustc: command_line("rustc", &["--version"]),
            git,
            host,
            postgres,
            postgres_settings,
            rabbitmq,
            kafka_broker,
            librdkafka,
            durability,
            peer,
            services: Services {
                database_url: redact(&services.database_url),
                amqp_url: redact(&services.amqp_url),
                kafka_brokers: services.kafka_brokers.clone(),
            },
        }
    }
}

async fn postgres_facts(url: &str) -> (String, BTreeMap<String, String>) {
    let mut settings = BTreeMap::new();
    let Ok(mut conn) = PgConnection::connect(url).await else {
        return ("unknown".into(), settings);
    };
    let version: String = sqlx::query_scalar("SELECT version()")
        .fetch_one(&mut conn)
        .await
        .unwrap_or_else(|_| "unknown".into());
    for name in [
        "synchronous_commit",
        "fsync",
        "wal_sync_method",
        "full_page_writes",
        "shared_buffers",
        "max_wal_size",
        "wal_level",
        "max_connections",
    ] {
        let value: Option<String> = sqlx::query_scalar("SELECT current_setting($1)")
            .bind(name)
            .fetch_one(&mut conn)
            .await
            .ok();
        settings.insert(name.to_owned(), value.unwrap_or_else(|| "unknown".into()));
    }
    let _ = conn.close().await;
    (version, settings)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_password() {
        assert_eq!(
            redact("amqp://guest:secret@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(
            redact("postgres://postgres@h/db"),
            "postgres://postgres@h/db"
        );
    }

    #[test]
    fn database_names_are_replaced() {
        assert_eq!(
            replace_db_name("postgres://u@h:5432/postgres?sslmode=disable", "x"),
            "postgres://u@h:5432/x?sslmode=disable"
        );
    }
}
