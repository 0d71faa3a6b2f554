//! The relay over a MySQL/MariaDB outbox (`MYSQL_URL`), with RabbitMQ, SQS and the
//! Kafka-protocol broker: the shared relay suite
//! (`eventbus_tests::suites::relay`), the same scenarios and assertions as on
//! PostgreSQL.

// The shared scenarios this binary runs: its row in `tests/src/matrix.rs`.
eventbus_tests::matrix!(relay_mysql);
