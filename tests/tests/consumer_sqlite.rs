//! `Consumer<Sqlite>` over real RabbitMQ: the shared consumer suite
//! (`eventbus_tests::suites::consumer`, also run on PostgreSQL and MySQL) —
//! the inbox on SQLite makes redelivered events change nothing, for single and
//! batch handlers, and follow-up events land in the SQLite outbox in the
//! handler's transaction.

// The shared scenarios this binary runs: its row in `tests/src/matrix.rs`.
eventbus_tests::matrix!(consumer_sqlite);
