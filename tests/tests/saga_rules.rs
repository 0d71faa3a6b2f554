//! The bookkeeping rules of saga timeouts and the consumer's refusals, on
//! SQLite with the in-process broker (the rules are the library's, the same
//! on every database; `saga_*.rs` drive whole sagas through real brokers):
//!
//! - cancelling a timeout type, then requesting it again in one step,
//!   restarts the clock: the old timeout leaves the scheduled table and the
//!   instance, the new one takes its place;
//! - a timeout requested and cancelled in one step is never written;
//! - completing cancels what is pending, and what the completing step
//!   requested is never written;
//! - `build` refuses a saga outside effectively-once mode, and a saga
//!   with no event.

use std::sync::Arc;
use std::time::{Duration, Instant};

use eventbus::consumer::{Consumer, DeliveryMode};
use eventbus::saga::{
    Handles, Saga, SagaContext, SagaDatabase, SagaDefinition, SagaInstance, SagaStatus, Sagas,
    StartedBy,
};
use eventbus::transport::memory::MemoryBroker;
use eventbus::{BoxError, Envelope, Error, Publisher};
use eventbus_tests::consumer::{publish, run};
use eventbus_tests::saga::envelope_of;
use eventbus_tests::sqlite::TestSqlite;
use eventbus_tests::TestDatabase;
use serde::{Deserialize, Serialize};

const TOPIC: &str = "clocks";
const DAY: Duration = Duration::from_secs(86_400);

/// What happens to clock `clock`.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema, eventbus::Event)]
#[event(type = "com.example.test.clock.changed", destination = "clocks", key = clock)]
struct ClockChanged {
    clock: String,
    change: Change,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
enum Change {
    /// Starts it, ringing in a day.
    Start,
    /// Cancels its rings, then rings in a day again.
    Reset,
    /// Asks for a ring and takes it back in the same step.
    Snooze,
    /// Asks for a ring, then completes.
    Stop,
}

/// The ring a clock asks for.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema, eventbus::Event)]
#[event(type = "com.example.test.clock.ring", destination = "clocks", key = clock)]
struct Ring {
    clock: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct Clock {
    changes: Vec<Change>,
}

impl Saga for Clock {
    const NAME: &'static str = "clock";
}

#[eventbus::saga::async_trait]
impl<DB: SagaDatabase> StartedBy<ClockChanged, DB> for Clock {
    fn correlate(e: &ClockChanged) -> String {
        e.clock.clone()
    }

    async fn start(ctx: &SagaContext<DB>, e: ClockChanged) -> Result<Self, BoxError> {
        ctx.request_timeout(DAY, &Ring { clock: e.clock })?;
        Ok(Clock {
            changes: vec![e.change],
        })
    }
}

#[eventbus::saga::async_trait]
impl<DB: SagaDatabase> Handles<ClockChanged, DB> for Clock {
    fn correlate(e: &ClockChanged) -> String {
        e.clock.clone()
    }

    async fn handle(&mut self, ctx: &SagaContext<DB>, e: ClockChanged) -> Result<(), BoxError> {
        self.changes.push(e.change);
        let ring = Ring {
            clock: e.clock.clone(),
        };
        match e.change {
            Change::Start => {}
            Change::Reset => {
                ctx.cancel_timeouts::<Ring>();
                ctx.request_timeout(DAY, &ring)?;
            }
            Change::Snooze => {
                let id = ctx.request_timeout(DAY, &ring)?;
                ctx.cancel_timeout(id);
            }
            Change::Stop => {
                ctx.request_timeout(DAY, &ring)?;
                ctx.complete();
            }
        }
        Ok(())
    }
}

#[eventbus::saga::async_trait]
impl<DB: SagaDatabase> Handles<Ring, DB> for Clock {
    fn correlate(e: &Ring) -> String {
        e.clock.clone()
    }

    async fn handle(&mut self, ctx: &SagaContext<DB>, _: Ring) -> Result<(), BoxError> {
        ctx.complete();
        Ok(())
    }
}

fn clocks<DB: SagaDatabase>() -> SagaDefinition<Clock, DB> {
    SagaDefinition::new()
        .starts_or_handles::<ClockChanged>()
        .timeout::<Ring>()
}

fn change(clock: &str, change: Change) -> Envelope {
    envelope_of(&ClockChanged {
        clock: clock.into(),
        change,
    })
}

/// The scheduled rings, by event id.
async fn scheduled(db: &TestSqlite) -> Vec<String> {
    db.texts("SELECT event_id FROM eventbus_outbox_scheduled ORDER BY id")
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// Waits until clock `clock` has seen `changes` changes.
async fn wait_changes(db: &TestSqlite, clock: &str, changes: usize) -> SagaInstance<Clock> {
    let start = Instant::now();
    loop {
        let found = Sagas::new()
            .load::<Clock, _>(db.pool(), clock)
            .await
            .expect("load the clock");
        if let Some(c) = found {
            if c.state.changes.len() >= changes {
                return c;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "clock {clock} did not see {changes} changes within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_are_cancelled_restarted_and_never_written_when_taken_back() {
    let db = TestSqlite::migrated().await;
    let broker = MemoryBroker::new();
    let consumer = Consumer::builder("clocks")
        .saga(clocks::<sqlx::Sqlite>())
        .build(
            db.pool().clone(),
            Box::new(broker.subscribe("clocks", &[TOPIC])),
            Arc::new(broker.publisher()),
        )
        .expect("the clock consumer");
    let running = run(consumer);
    let publisher = broker.publisher();
    let send = |envelopes: Vec<Envelope>| {
        let publisher = publisher.clone();
        async move { publish(&publisher as &dyn Publisher, TOPIC, &envelopes).await }
    };

    send(vec![change("a", Change::Start)]).await;
    let started = wait_changes(&db, "a", 1).await;
    assert_eq!(started.timeouts.len(), 1, "{started:?}");
    let first = started.timeouts[0].id;
    assert_eq!(scheduled(&db).await, vec![first.to_string()]);

    // Reset: the first ring goes, a new one takes its place.
    send(vec![change("a", Change::Reset)]).await;
    let reset = wait_changes(&db, "a", 2).await;
    assert_eq!(reset.timeouts.len(), 1, "{reset:?}");
    let second = reset.timeouts[0].id;
    assert_ne!(second, first, "the reset asked for a new ring");
    assert_eq!(scheduled(&db).await, vec![second.to_string()]);

    // Snooze: asked for and taken back in one step, never written.
    send(vec![change("a", Change::Snooze)]).await;
    let snoozed = wait_changes(&db, "a", 3).await;
    assert_eq!(
        snoozed.timeouts.iter().map(|t| t.id).collect::<Vec<_>>(),
        vec![second]
    );
    assert_eq!(scheduled(&db).await, vec![second.to_string()]);

    // Stop: completes; the pending ring is cancelled and the one the
    // completing step asked for is never written.
    send(vec![change("a", Change::Stop)]).await;
    let stopped = wait_changes(&db, "a", 4).await;
    assert_eq!(stopped.status, SagaStatus::Completed);
    assert!(stopped.timeouts.is_empty(), "{stopped:?}");
    assert!(scheduled(&db).await.is_empty());
    assert_eq!(stopped.version, 4);

    // Completed: a later change is ignored by the default rule.
    let after = running.consumer.metrics().handled();
    send(vec![change("a", Change::Reset)]).await;
    eventbus_tests::consumer::wait_until(
        "the late change is settled",
        Duration::from_secs(30),
        || running.consumer.metrics().handled() > after,
    )
    .await;
    let ignored = wait_changes(&db, "a", 4).await;
    assert_eq!(ignored.version, 4, "nothing changes after completion");
    assert!(scheduled(&db).await.is_empty());
    running.stop().await;
}

#[tokio::test]
async fn build_refuses_a_saga_outside_effectively_once_and_a_saga_with_no_event() {
    let db = TestSqlite::migrated().await;
    let broker = MemoryBroker::new();
    for mode in [DeliveryMode::AtLeastOnce, DeliveryMode::AtMostOnce] {
        let refused = Consumer::builder("clocks")
            .mode(mode)
            .saga(clocks::<sqlx::Sqlite>())
            .build(
                db.pool().clone(),
                Box::new(broker.subscribe("clocks", &[TOPIC])),
                Arc::new(broker.publisher()),
            );
        match refused {
            Err(Error::Config(message)) => {
                assert!(message.contains("effectively-once"), "{message}");
            }
            other => panic!("{mode:?}: a saga outside effectively-once mode: {other:?}"),
        }
    }
    let refused = Consumer::builder("clocks")
        .on(|_: eventbus::consumer::Context<sqlx::Sqlite>, _: Ring| async { Ok(()) })
        .saga(SagaDefinition::<Clock, sqlx::Sqlite>::new())
        .build(
            db.pool().clone(),
            Box::new(broker.subscribe("clocks", &[TOPIC])),
            Arc::new(broker.publisher()),
        );
    match refused {
        Err(Error::Config(message)) => assert!(message.contains("has no event"), "{message}"),
        other => panic!("a saga with no event: {other:?}"),
    }
}
