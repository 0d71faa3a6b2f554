//! Where the real services are: the environment first, then a container
//! started with testcontainers when a Docker engine is configured.
//!
//! Each [`Service`] is one row: the variable the suites read, an example
//! value, how to start the service on this machine, and (in [`containers`])
//! the container that stands in for it when the variable is unset. Those
//! containers are named and reused: every test process (nextest runs each
//! test in its own) finds the one already running instead of starting its
//! own, so a run leaves at most one container per service, which the next run
//! reuses (`docs/testing.md`, "A missing service").

use std::fmt;

use tokio::sync::OnceCell;

pub mod containers;

/// A service the suites reach through an environment variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Service {
    /// PostgreSQL, `DATABASE_URL`.
    Postgres,
    /// MySQL or MariaDB, `MYSQL_URL`.
    MySql,
    /// RabbitMQ, `AMQP_URL`.
    RabbitMq,
    /// A Kafka-protocol broker, `KAFKA_BROKERS`.
    Kafka,
    /// An SQS-compatible server, `SQS_ENDPOINT`.
    Sqs,
}

impl Service {
    /// Every service, in the order of [`Service::index`].
    pub const ALL: [Service; 5] = [
        Service::Postgres,
        Service::MySql,
        Service::RabbitMq,
        Service::Kafka,
        Service::Sqs,
    ];

    /// The environment variable the suites read it from.
    pub const fn var(self) -> &'static str {
        match self {
            Service::Postgres => "DATABASE_URL",
            Service::MySql => "MYSQL_URL",
            Service::RabbitMq => "AMQP_URL",
            Service::Kafka => "KAFKA_BROKERS",
            Service::Sqs => "SQS_ENDPOINT",
        }
    }

    /// A value of [`Service::var`] for the service started locally by
    /// `scripts/services.sh`.
    pub const fn example(self) -> &'static str {
        match self {
            Service::Postgres => "postgres://postgres@127.0.0.1:5432/postgres",
            Service::MySql => "mysql://root@127.0.0.1:3306",
            Service::RabbitMq => "amqp://guest:guest@127.0.0.1:5672/%2f",
            Service::Kafka => "127.0.0.1:9092",
            Service::Sqs => "http://127.0.0.1:4566",
        }
    }

    /// A short name, used in container names and messages.
    pub const fn key(self) -> &'static str {
        match self {
            Service::Postgres => "postgres",
            Service::MySql => "mysql",
            Service::RabbitMq => "rabbitmq",
            Service::Kafka => "kafka",
            Service::Sqs => "sqs",
        }
    }

    /// What the variable must point at.
    const fn needs(self) -> &'static str {
        match self {
            Service::Postgres => "a running PostgreSQL (a user allowed to create databases)",
            Service::MySql => {
                "a running MySQL 8 or MariaDB 10.6+ (a user allowed to create databases)"
            }
            Service::RabbitMq => "a running RabbitMQ",
            Service::Kafka => "a Kafka-protocol broker (scripts/services.sh starts tansu)",
            Service::Sqs => {
                "an SQS-compatible server (`pip install \"moto[server]\"` then \
                 `moto_server -H 127.0.0.1 -p 4566`; AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY \
                 and AWS_REGION set to anything)"
            }
        }
    }

    /// The `scripts/services.sh` function that installs and starts it.
    pub const fn ensure_function(self) -> &'static str {
        match self {
            Service::Postgres => "ensure_postgres",
            Service::MySql => "ensure_mysql",
            Service::RabbitMq => "ensure_rabbitmq",
            Service::Kafka => "ensure_kafka",
            Service::Sqs => "ensure_sqs",
        }
    }

    /// Its position in [`Service::ALL`].
    pub const fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.key())
    }
}

/// Why an unset service could not be stood in for by a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unavailable {
    /// No Docker engine is configured: neither `DOCKER_HOST` nor a socket
    /// where testcontainers looks for one.
    NoEngine,
    /// The engine is there, but the container did not start or answer.
    Container {
        /// The container's name (`docker rm -f` it to start afresh).
        name: String,
        /// What went wrong.
        error: String,
    },
}

/// The message a test fails with when `service` is unset and `why` no
/// container can stand in for it: the variable to set, a value, and how to
/// start the service locally.
pub fn unavailable_message(service: Service, why: &Unavailable) -> String {
    let var = service.var();
    let first = match why {
        Unavailable::NoEngine => {
            format!("{var} is not set and no Docker engine is available to start one.")
        }
        Unavailable::Container { name, error } => format!(
            "{var} is not set and the container standing in for it ({name}) failed: {error}\n\
             (If it exists, `docker rm -f {name}` removes it; the next test starts it afresh.)"
        ),
    };
    format!(
        "{first}\nSet {var}={example} pointing at {needs}; \
         `source scripts/services.sh && {ensure}` installs and starts one on this machine.\n\
         (`bash scripts/test` starts every service the suite needs.)",
        example = service.example(),
        needs = service.needs(),
        ensure = service.ensure_function(),
    )
}

/// The value of a service variable, when it says something (set and not blank).
pub fn configured(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.trim().is_empty())
}

/// Where `service` is: its variable when set, otherwise the value for the
/// container standing in for it (looked up or started once per process).
///
/// # Panics
///
/// When the variable is unset and no container can stand in for it, with
/// [`unavailable_message`].
pub async fn locate(service: Service) -> String {
    static FOUND: [OnceCell<String>; Service::ALL.len()] =
        [const { OnceCell::const_new() }; Service::ALL.len()];
    if let Some(value) = configured(std::env::var(service.var()).ok()) {
        return value;
    }
    FOUND[service.index()]
        .get_or_init(|| async {
            containers::stand_in(service)
                .await
                .unwrap_or_else(|why| panic!("{}", unavailable_message(service, &why)))
        })
        .await
        .clone()
}

/// PostgreSQL admin URL (`DATABASE_URL`), e.g. `postgres://postgres@127.0.0.1:5432/postgres`.
pub async fn database_url() -> String {
    locate(Service::Postgres).await
}

/// MySQL or MariaDB server URL without a database (`MYSQL_URL`), e.g.
/// `mysql://root@127.0.0.1:3306`: a user allowed to create databases.
pub async fn mysql_url() -> String {
    locate(Service::MySql).await
}

/// RabbitMQ URL (`AMQP_URL`), e.g. `amqp://guest:guest@127.0.0.1:5672/%2f`.
pub async fn amqp_url() -> String {
    locate(Service::RabbitMq).await
}

/// Kafka bootstrap servers (`KAFKA_BROKERS`), e.g. `127.0.0.1:9092`.
pub async fn kafka_brokers() -> String {
    locate(Service::Kafka).await
}

/// The endpoint of an SQS-compatible server (`SQS_ENDPOINT`), e.g.
/// `http://127.0.0.1:4566` (moto in server mode, started by
/// `scripts/services.sh`).
pub async fn sqs_endpoint() -> String {
    locate(Service::Sqs).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_variables_are_those_the_suites_and_scripts_use() {
        let vars: Vec<_> = Service::ALL.iter().map(|s| s.var()).collect();
        assert_eq!(
            vars,
            [
                "DATABASE_URL",
                "MYSQL_URL",
                "AMQP_URL",
                "KAFKA_BROKERS",
                "SQS_ENDPOINT"
            ]
        );
        for (i, service) in Service::ALL.iter().enumerate() {
            assert_eq!(service.index(), i, "{service}");
        }
        // scripts/services.sh exports each variable with the example as its
        // default and defines the function the message names.
        let script = include_str!("../../../scripts/services.sh");
        for service in Service::ALL {
            let default = format!("{}:-{}", service.var(), service.example());
            assert!(script.contains(&default), "services.sh lacks {default}");
            let function = format!("{}() {{", service.ensure_function());
            assert!(script.contains(&function), "services.sh lacks {function}");
        }
    }

    #[test]
    fn a_blank_variable_counts_as_unset() {
        assert_eq!(configured(None), None);
        assert_eq!(configured(Some(String::new())), None);
        assert_eq!(configured(Some("  \t".into())), None);
        assert_eq!(
            configured(Some("127.0.0.1:9092".into())),
            Some("127.0.0.1:9092".into())
        );
    }

    #[test]
    fn without_an_engine_the_message_names_the_variable_a_value_and_how_to_start_it() {
        for service in Service::ALL {
            let message = unavailable_message(service, &Unavailable::NoEngine);
            let var = service.var();
            assert!(
                message.starts_with(&format!(
                    "{var} is not set and no Docker engine is available to start one."
                )),
                "{message}"
            );
            assert!(
                message.contains(&format!("Set {var}={}", service.example())),
                "{message}"
            );
            assert!(
                message.contains(&format!(
                    "source scripts/services.sh && {}",
                    service.ensure_function()
                )),
                "{message}"
            );
            assert!(message.contains("bash scripts/test"), "{message}");
        }
        let kafka = unavailable_message(Service::Kafka, &Unavailable::NoEngine);
        assert!(kafka.contains("Kafka-protocol broker"), "{kafka}");
        let sqs = unavailable_message(Service::Sqs, &Unavailable::NoEngine);
        assert!(sqs.contains("moto_server -H 127.0.0.1 -p 4566"), "{sqs}");
    }

    #[test]
    fn a_failed_container_is_named_with_how_to_remove_it() {
        let why = Unavailable::Container {
            name: "eventbus-tests-rabbitmq-3.13-management-alpine".into(),
            error: "did not answer within 180 s".into(),
        };
        let message = unavailable_message(Service::RabbitMq, &why);
        assert!(
            message.starts_with("AMQP_URL is not set and the container"),
            "{message}"
        );
        assert!(message.contains("did not answer within 180 s"), "{message}");
        assert!(
            message.contains("docker rm -f eventbus-tests-rabbitmq-3.13-management-alpine"),
            "{message}"
        );
        assert!(
            message.contains("Set AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f"),
            "{message}"
        );
    }
}
