//! `Consumer<Sqlite>` over real RabbitMQ: the shared consumer suite
//! (`eventbus_tests::suites::consumer`, also run on PostgreSQL and MySQL) —
//! the inbox on SQLite makes redelivered events change nothing, for single and
//! batch handlers, and follow-up events land in the SQLite outbox in the
//! handler's transaction.

use eventbus_tests::sqlite::TestSqlite;
use eventbus_tests::suites::consumer;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redelivered_events_change_nothing_on_sqlite() {
    consumer::redelivered_events_change_nothing::<TestSqlite>().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batch_handlers_skip_redelivered_events_on_sqlite() {
    consumer::batch_handlers_skip_redelivered_events::<TestSqlite>().await;
}
