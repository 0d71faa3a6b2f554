//! Sagas on PostgreSQL, driven through Kafka and RabbitMQ: the shared saga
//! suite (`eventbus_tests::suites::saga`) — duplicates, timeouts, two
//! consumer processes on one instance, a consumer killed mid-step.

// The shared scenarios this binary runs: its row in `tests/src/matrix.rs`.
eventbus_tests::matrix!(saga_postgres);
