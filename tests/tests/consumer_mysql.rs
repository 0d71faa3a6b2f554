//! `Consumer<MySql>` over real RabbitMQ and Kafka with the inbox and outbox on
//! MySQL/MariaDB (`MYSQL_URL`): the shared consumer suite
//! (`eventbus_tests::suites::consumer`), the same scenarios and assertions as
//! on PostgreSQL.

// The shared scenarios this binary runs: its row in `tests/src/matrix.rs`.
eventbus_tests::matrix!(consumer_mysql);
