//! `Consumer<MySql>` over real RabbitMQ and Kafka with the inbox and outbox on
//! MySQL/MariaDB (`MYSQL_URL`): the shared consumer suite
//! (`eventbus_tests::suites::consumer`), the same scenarios and assertions as
//! on PostgreSQL.

eventbus_tests::matrix!(consumer_mysql);
