//! A consumer process running the trip saga ([`eventbus_tests::saga`]) for
//! the saga suite: two of them race on one instance, or one is SIGKILLed
//! mid-step.
//!
//! `saga_worker <database-url> <broker-url> <group> <destination> <member> [unlocked]`
//! with a `postgres://`, `mysql://` or `sqlite://` database and a
//! `kafka://`, `amqp://` or `sqs+http://` broker; `member` names this process in the
//! effects it writes; `unlocked` runs the race's negative control
//! ([`saga::unlocked_trip_consumer`]) instead of the saga. Prints `ready`
//! on stdout once consuming; stops on SIGINT.

use eventbus::Result;
use eventbus_tests::harness::worker;
use eventbus_tests::mysql::TestMySql;
use eventbus_tests::sqlite::TestSqlite;
use eventbus_tests::{saga, TestDatabase, TestDb};

/// The in-flight bound.
const MAX_IN_FLIGHT: usize = 64;

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if !(6..=7).contains(&args.len()) {
        eprintln!(
            "usage: saga_worker <database-url> <broker-url> <group> <destination> <member> [unlocked]"
        );
        std::process::exit(2);
    }
    match args[1].split_once("://").map(|(scheme, _)| scheme) {
        Some("postgres" | "postgresql") => work::<TestDb>(&args).await,
        Some("mysql") => work::<TestMySql>(&args).await,
        Some("sqlite") => work::<TestSqlite>(&args).await,
        _ => panic!("unsupported database URL {}", args[1]),
    }
}

/// Consumes until SIGINT with the database `D` of `args[1]`.
async fn work<D: TestDatabase>(args: &[String]) -> Result<()> {
    let (db, broker, group, destination) = (&args[1], &args[2], &args[3], &args[4]);
    saga::set_member(&args[5]);
    let pool = worker::pool::<D::DB>(db).await?;
    let (subscriber, dead_letters) =
        worker::connections(broker, group, destination, MAX_IN_FLIGHT).await?;
    let consumer = if args.get(6).map(String::as_str) == Some("unlocked") {
        saga::unlocked_trip_consumer::<D>(pool, group, subscriber, dead_letters, MAX_IN_FLIGHT)?
    } else {
        saga::trip_consumer::<D>(pool, group, subscriber, dead_letters, MAX_IN_FLIGHT)?
    };
    println!("ready");
    consumer
        .run(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
}
