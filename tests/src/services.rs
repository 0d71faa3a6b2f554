//! Where the real services are: environment first, then testcontainers.

use testcontainers::GenericImage;

use crate::{from_env_or_container, start_container, wait_stderr};

/// PostgreSQL admin URL (`DATABASE_URL`), e.g. `postgres://postgres@127.0.0.1:5432/postgres`.
pub async fn database_url() -> String {
    static CELL: crate::Held = crate::Held::const_new();
    from_env_or_container(
        "DATABASE_URL",
        "Set DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres (a user allowed to create databases).",
        &CELL,
        async {
            let image = GenericImage::new("postgres", "15-alpine")
                .with_wait_for(wait_stderr("database system is ready to accept connections"));
            let (port, c) = start_container(image, 5432, &[("POSTGRES_HOST_AUTH_METHOD", "trust")]).await;
            (format!("postgres://postgres@127.0.0.1:{port}/postgres"), c)
        },
    )
    .await
}

/// MySQL or MariaDB server URL without a database (`MYSQL_URL`), e.g.
/// `mysql://root@127.0.0.1:3306`: a user allowed to create databases.
pub async fn mysql_url() -> String {
    static CELL: crate::Held = crate::Held::const_new();
    from_env_or_container(
        "MYSQL_URL",
        "Set MYSQL_URL=mysql://root@127.0.0.1:3306 pointing at a running MySQL 8 or MariaDB 10.6+ \
         (a user allowed to create databases); scripts/services.sh starts the local MariaDB.",
        &CELL,
        async {
            let image = GenericImage::new("mariadb", "10.11")
                .with_wait_for(wait_stderr("port: 3306  mariadb.org binary distribution"));
            let (port, c) =
                start_container(image, 3306, &[("MARIADB_ALLOW_EMPTY_ROOT_PASSWORD", "1")]).await;
            (format!("mysql://root@127.0.0.1:{port}"), c)
        },
    )
    .await
}

/// RabbitMQ URL (`AMQP_URL`), e.g. `amqp://guest:guest@127.0.0.1:5672/%2f`.
pub async fn amqp_url() -> String {
    static CELL: crate::Held = crate::Held::const_new();
    from_env_or_container(
        "AMQP_URL",
        "Set AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f pointing at a running RabbitMQ.",
        &CELL,
        async {
            let image = GenericImage::new("rabbitmq", "3.13-alpine").with_wait_for(
                testcontainers::core::WaitFor::message_on_stdout("Server startup complete"),
            );
            let (port, c) = start_container(image, 5672, &[]).await;
            (format!("amqp://guest:guest@127.0.0.1:{port}/%2f"), c)
        },
    )
    .await
}

/// Kafka bootstrap servers (`KAFKA_BROKERS`), e.g. `127.0.0.1:9092`.
pub async fn kafka_brokers() -> String {
    static CELL: crate::Held = crate::Held::const_new();
    from_env_or_container(
        "KAFKA_BROKERS",
        "Set KAFKA_BROKERS=127.0.0.1:9092 pointing at a Kafka-protocol broker (scripts/test starts tansu).",
        &CELL,
        async {
            let image = GenericImage::new("apache/kafka", "3.8.0")
                .with_wait_for(testcontainers::core::WaitFor::message_on_stdout("Kafka Server started"));
            let (port, c) = start_container(image, 9092, &[]).await;
            (format!("127.0.0.1:{port}"), c)
        },
    )
    .await
}

/// The endpoint of an SQS-compatible server (`SQS_ENDPOINT`), e.g.
/// `http://127.0.0.1:4566` (moto in server mode, started by
/// `scripts/services.sh`).
pub async fn sqs_endpoint() -> String {
    static CELL: crate::Held = crate::Held::const_new();
    from_env_or_container(
        "SQS_ENDPOINT",
        "Set SQS_ENDPOINT=http://127.0.0.1:4566 pointing at an SQS-compatible server \
         (`pip install \"moto[server]\"` then `moto_server -H 127.0.0.1 -p 4566`).",
        &CELL,
        async {
            let image = GenericImage::new("motoserver/moto", "5.1.0").with_wait_for(
                testcontainers::core::WaitFor::message_on_stderr("Running on"),
            );
            let (port, c) = start_container(image, 5000, &[]).await;
            (format!("http://127.0.0.1:{port}"), c)
        },
    )
    .await
}
