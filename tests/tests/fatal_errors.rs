//! Fatal broker errors (`TransportError::Fatal`) end the relay and the
//! consumer with that error instead of being retried forever; the other kinds
//! keep them running as before. Over SQLite, with brokers that fail on
//! purpose.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use eventbus::consumer::{Consumer, Context};
use eventbus::relay::{Relay, SqliteRelayStore};
use eventbus::transport::memory::MemoryBroker;
use eventbus::transport::{
    Delivered, OutgoingMessage, PublishError, Received, Subscriber, TransportError,
};
use eventbus::{Error, Publisher, TableName};
use eventbus_tests::relay::{pending, publish_steps, steps, test_config, Step};
use eventbus_tests::sqlite::TestSqlite;
use sqlx::Sqlite;

// The traits are `#[async_trait]`; implemented by hand, as the macro would,
// to need no further dependency.
type Boxed<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A publisher whose every send and destination fails with `failure`.
#[derive(Debug)]
struct Failing {
    failure: PublishError,
}

impl Publisher for Failing {
    fn system(&self) -> &'static str {
        "failing"
    }

    fn publish_batch<'life0, 'life1, 'async_trait>(
        &'life0 self,
        messages: &'life1 [OutgoingMessage],
    ) -> Boxed<'async_trait, Vec<Result<Delivered, PublishError>>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        let results = messages.iter().map(|_| Err(self.failure.clone())).collect();
        Box::pin(async move { results })
    }

    fn ensure_destination<'life0, 'life1, 'async_trait>(
        &'life0 self,
        _destination: &'life1 str,
    ) -> Boxed<'async_trait, Result<(), PublishError>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async { Ok(()) })
    }
}

/// A subscriber that reports `script` in turn, then ends.
#[derive(Debug)]
struct Scripted {
    script: VecDeque<TransportError>,
}

impl Subscriber for Scripted {
    fn next<'life0, 'async_trait>(
        &'life0 mut self,
    ) -> Boxed<'async_trait, Option<eventbus::Result<Received>>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        let next = self.script.pop_front().map(|e| Err(Error::Subscribe(e)));
        Box::pin(async move { next })
    }

    fn close<'life0, 'async_trait>(&'life0 mut self) -> Boxed<'async_trait, eventbus::Result<()>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async { Ok(()) })
    }
}

async fn relay_with(db: &TestSqlite, failure: PublishError) -> Relay {
    let store = SqliteRelayStore::new(
        db.pool.clone(),
        TableName::parse("eventbus_outbox").expect("valid"),
    );
    Relay::new(
        Arc::new(store),
        Arc::new(Failing { failure }),
        test_config("fatal."),
    )
    .expect("valid relay config")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fatal_publish_error_stops_the_relay_with_it_and_keeps_the_rows() {
    let db = TestSqlite::migrated().await;
    publish_steps(&db.pool, &steps(3, 1), 3).await;
    let relay = relay_with(&db, PublishError::Fatal("credentials revoked".into())).await;
    let ran = tokio::time::timeout(Duration::from_secs(20), relay.run(std::future::pending()))
        .await
        .expect("the relay stops by itself");
    match ran {
        Err(Error::Publish(e)) => {
            assert!(e.is_fatal(), "{e}");
            assert!(e.to_string().contains("credentials revoked"), "{e}");
        }
        other => panic!("expected the fatal error, got {other:?}"),
    }
    assert_eq!(pending(&db.pool).await, 3, "nothing was acknowledged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unavailable_broker_does_not_stop_the_relay() {
    let db = TestSqlite::migrated().await;
    publish_steps(&db.pool, &steps(3, 1), 3).await;
    let relay = relay_with(&db, PublishError::Unavailable("down".into())).await;
    let ran = tokio::time::timeout(Duration::from_secs(2), relay.run(std::future::pending())).await;
    assert!(
        ran.is_err(),
        "the relay keeps waiting for the broker: {ran:?}"
    );
    assert_eq!(pending(&db.pool).await, 3);
}

async fn consume(script: Vec<TransportError>) -> eventbus::Result<()> {
    let db = TestSqlite::migrated().await;
    let subscriber = Scripted {
        script: script.into(),
    };
    let consumer = Consumer::<Sqlite>::builder("fatal")
        .on(|_ctx: Context<Sqlite>, _step: Step| async { Ok(()) })
        .build(
            db.pool.clone(),
            Box::new(subscriber),
            Arc::new(MemoryBroker::new().publisher()),
        )
        .expect("valid consumer");
    tokio::time::timeout(
        Duration::from_secs(20),
        consumer.run(std::future::pending()),
    )
    .await
    .expect("the consumer stops by itself")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fatal_receive_error_stops_the_consumer_with_it() {
    let never_reached = TransportError::Unavailable("after the fatal one".into());
    let ran = consume(vec![
        TransportError::Fatal("fenced by another instance".into()),
        never_reached,
    ])
    .await;
    match ran {
        Err(e @ Error::Subscribe(_)) => {
            assert!(e.is_fatal(), "{e}");
            assert!(e.to_string().contains("fenced"), "{e}");
        }
        other => panic!("expected the fatal error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unavailable_broker_does_not_stop_the_consumer() {
    // The consumer retries after the error and ends only when the
    // subscription does.
    let ran = consume(vec![TransportError::Unavailable("connection lost".into())]).await;
    assert!(ran.is_ok(), "{ran:?}");
}
