//! The containers that stand in for unset services: what each one is (image,
//! tag, environment, ports, readiness) as plain values, and how one is found
//! or started: a named container per service and image, reused by every test
//! process, started under a file lock so that concurrent test processes start
//! it once, then checked to answer.
//!
//! They are never removed by the suite: the next test process, and the next
//! run, reuse them. `docker rm -f $(docker ps -aq --filter label=org.eventbus.tests)`
//! removes them all.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use testcontainers::core::{ContainerPort, IntoContainerPort, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerRequest, GenericImage, Image, ImageExt, ReuseDirective};
use testcontainers_modules::kafka::apache::{Kafka, KAFKA_PORT};
use testcontainers_modules::mariadb::Mariadb;
use testcontainers_modules::postgres::Postgres;
use testcontainers_modules::rabbitmq::RabbitMq;

use super::{Service, Unavailable};

/// The label every stand-in container carries, valued with its service's
/// [`Service::key`].
pub const LABEL: &str = "org.eventbus.tests";

/// How long a container may take to start (pulling its image included), and
/// then how long it may take to answer.
pub const STARTUP: Duration = Duration::from_secs(300);

/// The PostgreSQL image tag (the major version CI's Debian server has).
pub const POSTGRES_TAG: &str = "15-alpine";

/// The MariaDB image tag (the version CI's Debian server has).
pub const MARIADB_TAG: &str = "10.11";

/// The RabbitMQ image tag.
pub const RABBITMQ_TAG: &str = "3.13-management-alpine";

/// The SQS-compatible server CI runs, moto, as an image: no module has it.
pub const MOTO_IMAGE: (&str, &str) = ("motoserver/moto", "5.1.0");

/// The port moto listens on in its image.
pub const MOTO_PORT: u16 = 5000;

/// The port the service listens on inside its container.
pub fn container_port(service: Service) -> ContainerPort {
    match service {
        Service::Postgres => 5432.tcp(),
        Service::MySql => 3306.tcp(),
        Service::RabbitMq => 5672.tcp(),
        Service::Kafka => KAFKA_PORT,
        Service::Sqs => MOTO_PORT.tcp(),
    }
}

/// The value of the service's variable for its container published on
/// 127.0.0.1:`host_port`.
pub fn value(service: Service, host_port: u16) -> String {
    match service {
        Service::Postgres => format!("postgres://postgres@127.0.0.1:{host_port}/postgres"),
        Service::MySql => format!("mysql://root@127.0.0.1:{host_port}"),
        Service::RabbitMq => format!("amqp://guest:guest@127.0.0.1:{host_port}/%2f"),
        Service::Kafka => format!("127.0.0.1:{host_port}"),
        Service::Sqs => format!("http://127.0.0.1:{host_port}"),
    }
}

/// The name of the container standing in for `service` with the image
/// `descriptor` (`name:tag`): the same in every test process, so they all
/// find one container, and another when the image changes.
pub fn container_name(service: Service, descriptor: &str) -> String {
    let image: String = descriptor
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("eventbus-tests-{}-{image}", service.key())
}

/// `request` named for `service`, labelled, reused across test processes
/// (never removed when its handle drops) and given [`STARTUP`] to start.
fn reused<I: Image>(
    service: Service,
    request: impl Into<ContainerRequest<I>>,
) -> ContainerRequest<I> {
    let request = request.into();
    let name = container_name(service, &request.descriptor());
    request
        .with_container_name(name)
        .with_label(LABEL, service.key())
        .with_reuse(ReuseDirective::Always)
        .with_startup_timeout(STARTUP)
}

/// PostgreSQL accepting the `postgres` user without a password.
pub fn postgres() -> ContainerRequest<Postgres> {
    reused(
        Service::Postgres,
        Postgres::default().with_host_auth().with_tag(POSTGRES_TAG),
    )
}

/// MariaDB with a `root` user without a password.
pub fn mariadb() -> ContainerRequest<Mariadb> {
    reused(Service::MySql, Mariadb::default().with_tag(MARIADB_TAG))
}

/// RabbitMQ with its default `guest` user (the image lets it connect from
/// outside the container).
pub fn rabbitmq() -> ContainerRequest<RabbitMq> {
    reused(
        Service::RabbitMq,
        RabbitMq::default()
            .with_tag(RABBITMQ_TAG)
            // The module waits for "Server startup complete; 4 plugins
            // started.", which only its own tag prints.
            .with_ready_conditions(vec![WaitFor::message_on_stdout("Server startup complete")]),
    )
}

/// What the Kafka container advertises to clients when its listener (9092)
/// is published on `host_port`: the module writes this into the broker's
/// start script from the published port once the container runs, and the
/// request carries it too.
pub fn kafka_advertised_listeners(host_port: u16) -> String {
    format!("PLAINTEXT://127.0.0.1:{host_port},BROKER://localhost:9093")
}

/// Kafka (the module's JVM image, KRaft, one node) with its client listener
/// published on the fixed `host_port` and advertised there: a client given
/// [`value`]`(Kafka, host_port)` is sent back to the same address. The
/// mapping is fixed rather than left to the engine so that it survives a
/// restart of the reused container, and with it the advertised address.
pub fn kafka(host_port: u16) -> ContainerRequest<Kafka> {
    reused(
        Service::Kafka,
        Kafka::default()
            .with_jvm_image()
            .with_mapped_port(host_port, KAFKA_PORT)
            .with_env_var(
                "KAFKA_ADVERTISED_LISTENERS",
                kafka_advertised_listeners(host_port),
            ),
    )
}

/// moto in server mode, the SQS-compatible server CI runs.
pub fn moto() -> ContainerRequest<GenericImage> {
    reused(
        Service::Sqs,
        GenericImage::new(MOTO_IMAGE.0, MOTO_IMAGE.1)
            .with_exposed_port(MOTO_PORT.tcp())
            .with_wait_for(WaitFor::message_on_stderr("Running on")),
    )
}

/// The sockets testcontainers looks for an engine at when `DOCKER_HOST` is
/// unset, in its order.
pub fn engine_sockets(xdg_runtime_dir: Option<&Path>, home: Option<&Path>) -> Vec<PathBuf> {
    let mut sockets = vec![PathBuf::from("/var/run/docker.sock")];
    if let Some(dir) = xdg_runtime_dir {
        sockets.push(dir.join(".docker/run/docker.sock"));
    }
    if let Some(home) = home {
        sockets.push(home.join(".docker/run/docker.sock"));
        sockets.push(home.join(".docker/desktop/docker.sock"));
    }
    sockets
}

/// Whether testcontainers has an engine to talk to: `DOCKER_HOST` set, or
/// one of `sockets` present.
pub fn engine_configured(
    docker_host: Option<&str>,
    sockets: &[PathBuf],
    exists: impl Fn(&Path) -> bool,
) -> bool {
    docker_host.is_some_and(|h| !h.trim().is_empty()) || sockets.iter().any(|s| exists(s))
}

/// [`engine_configured`] on this machine.
fn engine_here() -> bool {
    let env_path = |var| std::env::var_os(var).map(PathBuf::from);
    let sockets = engine_sockets(
        env_path("XDG_RUNTIME_DIR").as_deref(),
        env_path("HOME").as_deref(),
    );
    engine_configured(
        std::env::var("DOCKER_HOST").ok().as_deref(),
        &sockets,
        Path::exists,
    )
}

/// Finds or starts the container standing in for `service`, waits until it
/// answers, and gives the value of the service's variable for it.
///
/// # Errors
///
/// [`Unavailable::NoEngine`] without an engine; [`Unavailable::Container`]
/// when the container does not start or answer within [`STARTUP`].
pub async fn stand_in(service: Service) -> Result<String, Unavailable> {
    if !engine_here() {
        return Err(Unavailable::NoEngine);
    }
    match service {
        Service::Postgres => run(service, postgres()).await,
        Service::MySql => run(service, mariadb()).await,
        Service::RabbitMq => run(service, rabbitmq()).await,
        Service::Kafka => {
            // Only used when this process creates the container: a reused one
            // keeps the port it was created with.
            let port = crate::harness::try_free_port().map_err(|e| Unavailable::Container {
                name: container_name(Service::Kafka, &kafka(0).descriptor()),
                error: format!("no free port to publish Kafka on: {e}"),
            })?;
            run(service, kafka(port)).await
        }
        Service::Sqs => run(service, moto()).await,
    }
}

/// Starts `request` (or finds it running) under the lock of its name, and
/// waits until `service` answers on the published port.
async fn run<I: Image>(
    service: Service,
    request: ContainerRequest<I>,
) -> Result<String, Unavailable> {
    let name = request.container_name().clone().unwrap_or_default();
    let failed = |error: String| Unavailable::Container {
        name: name.clone(),
        error,
    };
    // Held until the container answers: another process waits here and then
    // finds it running and ready instead of creating a second one under the
    // same name.
    let _lock = lock(&name).await.map_err(failed)?;
    let container = request
        .start()
        .await
        .map_err(|e| failed(format!("cannot start it: {e}")))?;
    let host_port = container
        .get_host_port_ipv4(container_port(service))
        .await
        .map_err(|e| failed(format!("its port is not published: {e}")))?;
    // Marked for reuse, the container outlives its handle.
    drop(container);
    let value = value(service, host_port);
    wait_answering(service, &value, host_port)
        .await
        .map_err(failed)?;
    Ok(value)
}

/// An exclusive lock on a file named after the container, shared by every
/// process of the machine; released when the file is closed (the process
/// ending included).
async fn lock(name: &str) -> Result<std::fs::File, String> {
    let path = std::env::temp_dir().join(format!("{name}.lock"));
    tokio::task::spawn_blocking(move || {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| format!("cannot open the lock file {}: {e}", path.display()))?;
        file.lock()
            .map_err(|e| format!("cannot lock {}: {e}", path.display()))?;
        Ok(file)
    })
    .await
    .map_err(|e| format!("the lock task failed: {e}"))?
}

/// Why a service did not answer a probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// Not yet: it may still be starting.
    NotYet(String),
    /// It answers, wrongly, and waiting will not change that.
    Wrong(String),
}

/// Waits until `service` answers at `value` (published on `host_port`).
async fn wait_answering(service: Service, value: &str, host_port: u16) -> Result<(), String> {
    let deadline = Instant::now() + STARTUP;
    loop {
        match probe(service, value, host_port).await {
            Ok(()) => return Ok(()),
            Err(Probe::Wrong(why)) => return Err(why),
            Err(Probe::NotYet(why)) if Instant::now() >= deadline => {
                return Err(format!(
                    "it did not answer on 127.0.0.1:{host_port} within {} s: {why}",
                    STARTUP.as_secs()
                ));
            }
            Err(Probe::NotYet(_)) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// One attempt to talk to `service` with its own protocol (a published port
/// accepts connections before the service inside listens).
async fn probe(service: Service, value: &str, host_port: u16) -> Result<(), Probe> {
    use sqlx::Connection;
    let not_yet = |e: &dyn std::fmt::Display| Probe::NotYet(e.to_string());
    match service {
        Service::Postgres => {
            let connection = sqlx::PgConnection::connect(value)
                .await
                .map_err(|e| not_yet(&e))?;
            let _ = connection.close().await;
        }
        Service::MySql => {
            let connection = sqlx::MySqlConnection::connect(value)
                .await
                .map_err(|e| not_yet(&e))?;
            let _ = connection.close().await;
        }
        Service::RabbitMq => {
            use eventbus::transport::rabbitmq::lapin;
            let connection =
                lapin::Connection::connect(value, lapin::ConnectionProperties::default())
                    .await
                    .map_err(|e| not_yet(&e))?;
            let _ = connection.close(200, "probe".into()).await;
        }
        Service::Kafka => {
            let advertised = kafka_brokers_advertised(value.to_owned()).await?;
            check_advertised(&advertised, host_port).map_err(Probe::Wrong)?;
        }
        Service::Sqs => {
            crate::harness::http_get(host_port, "/")
                .await
                .map_err(|e| not_yet(&e))?;
        }
    }
    Ok(())
}

/// The `host:port` of every broker the cluster at `brokers` advertises.
async fn kafka_brokers_advertised(brokers: String) -> Result<Vec<String>, Probe> {
    use eventbus::transport::kafka::rdkafka::config::ClientConfig;
    use eventbus::transport::kafka::rdkafka::consumer::{BaseConsumer, Consumer};
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .create()
            .map_err(|e| Probe::Wrong(format!("cannot create a Kafka client: {e}")))?;
        let metadata = consumer
            .fetch_metadata(None, Duration::from_secs(5))
            .map_err(|e| Probe::NotYet(e.to_string()))?;
        Ok(metadata
            .brokers()
            .iter()
            .map(|b| format!("{}:{}", b.host(), b.port()))
            .collect())
    })
    .await
    .map_err(|e| Probe::Wrong(format!("the Kafka probe failed: {e}")))?
}

/// That a broker advertises the published port on loopback, where the test
/// reaches it; any other address sends clients where nothing answers.
pub fn check_advertised(advertised: &[String], host_port: u16) -> Result<(), String> {
    let reachable = advertised.iter().any(|a| {
        a.rsplit_once(':').is_some_and(|(host, port)| {
            matches!(host, "127.0.0.1" | "localhost") && port == host_port.to_string()
        })
    });
    if reachable {
        Ok(())
    } else {
        Err(format!(
            "the broker advertises {advertised:?}, not 127.0.0.1:{host_port} where it is published"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The last value of `key` in `request`'s environment (the later entry
    /// overrides).
    fn env<I: Image>(request: &ContainerRequest<I>, key: &str) -> Option<String> {
        request
            .env_vars()
            .filter(|(k, _)| k == key)
            .last()
            .map(|(_, v)| v.into_owned())
    }

    fn waits(conditions: &[WaitFor]) -> String {
        format!("{conditions:?}")
    }

    #[test]
    fn the_values_point_at_the_published_port_as_the_examples_do() {
        let example_ports = [5432, 3306, 5672, 9092, 4566];
        for (service, port) in Service::ALL.into_iter().zip(example_ports) {
            assert_eq!(value(service, port), service.example(), "{service}");
        }
        assert_eq!(value(Service::Kafka, 49153), "127.0.0.1:49153");
    }

    #[test]
    fn the_kafka_listener_is_advertised_on_the_port_it_is_published_on() {
        let host_port = 49153;
        let request = kafka(host_port);
        let ports = request.ports().expect("a fixed mapping");
        assert_eq!(ports.len(), 1, "{ports:?}");
        assert_eq!(ports[0].host_port(), host_port);
        assert_eq!(ports[0].container_port(), KAFKA_PORT);
        assert_eq!(container_port(Service::Kafka), KAFKA_PORT);

        let advertised = env(&request, "KAFKA_ADVERTISED_LISTENERS").expect("advertised");
        assert_eq!(advertised, kafka_advertised_listeners(host_port));
        let plaintext = advertised
            .split(',')
            .find_map(|l| l.strip_prefix("PLAINTEXT://"))
            .expect("a PLAINTEXT listener");
        // What the test connects to is what the broker sends it back to.
        assert_eq!(plaintext, value(Service::Kafka, host_port));
        assert!(!advertised.contains(":9092"), "{advertised}");
        assert_eq!(request.descriptor(), "apache/kafka:3.8.0");
    }

    #[test]
    fn a_broker_advertising_another_port_is_refused() {
        assert_eq!(check_advertised(&["127.0.0.1:49153".into()], 49153), Ok(()));
        assert_eq!(check_advertised(&["localhost:49153".into()], 49153), Ok(()));
        let stale = check_advertised(&["localhost:9092".into()], 49153).expect_err("stale");
        assert!(stale.contains("not 127.0.0.1:49153"), "{stale}");
        assert!(check_advertised(&["kafka:49153".into()], 49153).is_err());
        assert!(check_advertised(&[], 49153).is_err());
    }

    #[test]
    fn every_container_is_named_labelled_and_reused() {
        let requests = [
            (
                Service::Postgres,
                postgres().descriptor(),
                postgres().container_name().clone(),
                postgres().labels().clone(),
                postgres().reuse(),
            ),
            (
                Service::MySql,
                mariadb().descriptor(),
                mariadb().container_name().clone(),
                mariadb().labels().clone(),
                mariadb().reuse(),
            ),
            (
                Service::RabbitMq,
                rabbitmq().descriptor(),
                rabbitmq().container_name().clone(),
                rabbitmq().labels().clone(),
                rabbitmq().reuse(),
            ),
            (
                Service::Kafka,
                kafka(1).descriptor(),
                kafka(2).container_name().clone(),
                kafka(3).labels().clone(),
                kafka(4).reuse(),
            ),
            (
                Service::Sqs,
                moto().descriptor(),
                moto().container_name().clone(),
                moto().labels().clone(),
                moto().reuse(),
            ),
        ];
        let mut names = Vec::new();
        for (service, descriptor, name, labels, reuse) in requests {
            let name = name.expect("named");
            // The Kafka name does not depend on the port: every process finds
            // the container whatever port it picked.
            assert_eq!(name, container_name(service, &descriptor), "{service}");
            assert!(
                name.starts_with(&format!("eventbus-tests-{}-", service.key())),
                "{name}"
            );
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')),
                "not a Docker name: {name}"
            );
            assert_eq!(labels.get(LABEL).map(String::as_str), Some(service.key()));
            assert_eq!(reuse, ReuseDirective::Always, "{service}");
            names.push(name);
        }
        names.sort();
        names.dedup();
        assert_eq!(names.len(), Service::ALL.len(), "{names:?}");
        assert_eq!(
            container_name(Service::Postgres, "postgres:15-alpine"),
            "eventbus-tests-postgres-postgres-15-alpine"
        );
        assert_eq!(
            container_name(Service::Kafka, "apache/kafka:3.8.0"),
            "eventbus-tests-kafka-apache-kafka-3.8.0"
        );
        assert_eq!(postgres().startup_timeout(), Some(STARTUP));
    }

    #[test]
    fn the_images_and_their_settings() {
        let pg = postgres();
        assert_eq!(pg.descriptor(), "postgres:15-alpine");
        assert_eq!(
            env(&pg, "POSTGRES_HOST_AUTH_METHOD").as_deref(),
            Some("trust")
        );
        assert_eq!(env(&pg, "POSTGRES_USER").as_deref(), Some("postgres"));
        assert!(waits(&pg.ready_conditions()).contains("ready to accept connections"));

        let maria = mariadb();
        assert_eq!(maria.descriptor(), "mariadb:10.11");
        assert_eq!(
            env(&maria, "MARIADB_ALLOW_EMPTY_ROOT_PASSWORD").as_deref(),
            Some("1")
        );

        let rabbit = rabbitmq();
        assert_eq!(rabbit.descriptor(), "rabbitmq:3.13-management-alpine");
        let rabbit_waits = waits(&rabbit.ready_conditions());
        assert!(
            rabbit_waits.contains("Server startup complete"),
            "{rabbit_waits}"
        );
        assert!(!rabbit_waits.contains("plugins"), "{rabbit_waits}");

        let sqs = moto();
        assert_eq!(sqs.descriptor(), "motoserver/moto:5.1.0");
        assert_eq!(sqs.expose_ports(), &[MOTO_PORT.tcp()]);
        assert!(waits(&sqs.ready_conditions()).contains("Running on"));
        // Published on a port the engine picks: only Kafka needs a fixed one.
        assert!(sqs.ports().is_none());
        assert!(pg.ports().is_none());
    }

    #[test]
    fn the_engine_is_docker_host_or_a_socket_where_testcontainers_looks() {
        let sockets = engine_sockets(
            Some(Path::new("/run/user/1000")),
            Some(Path::new("/home/u")),
        );
        assert_eq!(
            sockets,
            [
                PathBuf::from("/var/run/docker.sock"),
                PathBuf::from("/run/user/1000/.docker/run/docker.sock"),
                PathBuf::from("/home/u/.docker/run/docker.sock"),
                PathBuf::from("/home/u/.docker/desktop/docker.sock"),
            ]
        );
        let none = |_: &Path| false;
        assert!(!engine_configured(None, &sockets, none));
        assert!(!engine_configured(Some(" "), &sockets, none));
        assert!(engine_configured(
            Some("tcp://10.0.0.2:2375"),
            &sockets,
            none
        ));
        assert!(engine_configured(None, &sockets, |p| p
            == Path::new("/home/u/.docker/desktop/docker.sock")));
        assert_eq!(
            engine_sockets(None, None),
            [PathBuf::from("/var/run/docker.sock")]
        );
    }
}
