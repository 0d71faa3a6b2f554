//! The saga suite, on any database and broker: the trip saga of
//! [`crate::saga`] driven through a real broker. Duplicates of every event
//! change nothing; a timeout fires exactly once, is ignored once the
//! instance completed or no longer waits for it, and a cancelled one never
//! comes; two consumer processes handling two events of one instance at the
//! same moment both apply, one after the other; a consumer process
//! SIGKILLed mid-step leaves no partial state behind.
//!
//! After every scenario, [`assert_consistent`] checks each instance against
//! the writes of its steps: the `effects` rows (the service's own writes),
//! the inbox, the [`TripClosed`] events in the outbox and the scheduled
//! table must all tell the same story as the stored state.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use eventbus::relay::{RelayConfig, Retention};
use eventbus::saga::{SagaInstance, SagaStatus, Sagas};
use eventbus::{Envelope, Event, Publisher};

use crate::backend::TestDatabase;
use crate::consumer::{publish, run, Broker};
use crate::harness::{spawn_ready, stop_cleanly};
use crate::relay::test_config;
use crate::saga::{
    envelope_of, trip_consumer, LegConfirmed, Trip, TripBooked, TripClosed, TripDeadline,
    DEADLINE_SEQ,
};
use crate::suites::relay::relay_on;
use crate::unique_name;

/// Partitions of a Kafka topic: the lanes of a Kafka consumer.
const PARTITIONS: u32 = 4;

/// The instance `trip`, if started.
async fn trip<D: TestDatabase>(db: &D, trip: &str) -> Option<SagaInstance<Trip<D>>> {
    Sagas::new()
        .load::<Trip<D>, _>(db.pool(), trip)
        .await
        .expect("load a trip")
}

/// Waits until `done` holds for every trip of `trips`; panics with the
/// first that does not after `timeout`.
async fn wait_trips<D: TestDatabase>(
    db: &D,
    trips: &[String],
    what: &str,
    timeout: Duration,
    done: impl Fn(&SagaInstance<Trip<D>>) -> bool,
) {
    let start = Instant::now();
    loop {
        let mut waiting = None;
        for id in trips {
            match trip(db, id).await {
                Some(t) if done(&t) => {}
                other => {
                    waiting = Some((id, other));
                    break;
                }
            }
        }
        let Some((id, state)) = waiting else { return };
        assert!(
            start.elapsed() < timeout,
            "{what}: trip {id} is not there within {timeout:?}: {state:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn completed<D>(t: &SagaInstance<Trip<D>>) -> bool {
    t.status == SagaStatus::Completed
}

/// `TripClosed` events in the outbox, per trip.
async fn closed_events<D: TestDatabase>(db: &D) -> HashMap<String, usize> {
    let mut closed = HashMap::new();
    for key in db
        .texts(&format!(
            "SELECT partition_key FROM eventbus_outbox WHERE event_type = '{}'",
            TripClosed::TYPE
        ))
        .await
        .into_iter()
        .flatten()
    {
        *closed.entry(key).or_default() += 1;
    }
    closed
}

/// Checks every instance in the saga table against its steps' writes:
///
/// - one `effects` row per applied step and none for another: the booking
///   (seq 0), each confirmed leg, the deadline if it ended the trip; no step
///   twice;
/// - version = steps applied;
/// - every effect's event has its inbox row;
/// - a completed trip published exactly one `TripClosed`, an active one none;
/// - a completed trip waits for no timeout and has none in the scheduled
///   table.
///
/// Returns the instances.
pub async fn assert_consistent<D: TestDatabase>(db: &D) -> Vec<SagaInstance<Trip<D>>> {
    let effects = db.effects().await;
    let inbox: HashSet<String> = db
        .texts("SELECT message_id FROM eventbus_inbox")
        .await
        .into_iter()
        .flatten()
        .collect();
    for e in &effects {
        assert!(
            inbox.contains(&e.event_id),
            "effect {e:?} has no inbox row: a step's write committed without its message"
        );
    }
    let mut steps: HashMap<&str, Vec<i64>> = HashMap::new();
    for e in &effects {
        steps.entry(e.key.as_str()).or_default().push(e.seq);
    }
    let closed = closed_events(db).await;
    let scheduled: HashSet<String> = db
        .texts("SELECT partition_key FROM eventbus_outbox_scheduled")
        .await
        .into_iter()
        .flatten()
        .collect();
    let records = Sagas::new()
        .list(
            db.pool(),
            &eventbus::saga::SagaQuery::new().saga("trip").limit(100_000),
        )
        .await
        .expect("list trips");
    let mut instances = Vec::new();
    for record in &records {
        let id = record.instance_id.as_str();
        let t = trip(db, id).await.expect("a listed trip loads");
        let mut expected: Vec<i64> = vec![0];
        expected.extend(t.state.confirmed.iter().map(|l| i64::from(*l)));
        if t.state.outcome.as_deref() == Some("expired") {
            expected.push(DEADLINE_SEQ);
        }
        let mut written = steps.remove(id).unwrap_or_default();
        written.sort_unstable();
        expected.sort_unstable();
        assert_eq!(
            written, expected,
            "trip {id}: the steps' writes and the stored state disagree ({t:?})"
        );
        assert_eq!(
            t.version,
            i64::try_from(expected.len()).expect("fits"),
            "trip {id}: one version per step ({t:?})"
        );
        let closes = closed.get(id).copied().unwrap_or(0);
        match t.status {
            SagaStatus::Completed => {
                assert_eq!(closes, 1, "trip {id} completed: one TripClosed ({t:?})");
                assert!(
                    t.timeouts.is_empty(),
                    "trip {id} completed but waits for {:?}",
                    t.timeouts
                );
                assert!(
                    !scheduled.contains(id),
                    "trip {id} completed but its deadline is still scheduled"
                );
            }
            SagaStatus::Active => assert_eq!(closes, 0, "trip {id} active: not closed"),
        }
        instances.push(t);
    }
    assert!(
        steps.is_empty(),
        "effects of trips with no instance: {:?}",
        steps.keys().collect::<Vec<_>>()
    );
    instances
}

/// A fresh destination, group and consumer of the trip saga on `broker`,
/// running in this process; returns what the scenario needs.
struct Setup<D: TestDatabase> {
    db: D,
    destination: String,
    group: String,
    publisher: Arc<dyn Publisher>,
}

impl<D: TestDatabase> Setup<D> {
    async fn new(broker: &Broker, tag: &str) -> Self {
        let db = D::migrated().await;
        db.create_effects().await;
        let (destination, publisher) = broker.destination(tag, PARTITIONS).await;
        let group = unique_name(&format!("{tag}_group"));
        broker.prepare_group(&group, &destination).await;
        Setup {
            db,
            destination,
            group,
            publisher,
        }
    }

    /// The trip consumer of the group, in this process.
    async fn consumer(&self, broker: &Broker) -> crate::consumer::Running<D::DB> {
        let subscriber = broker.subscriber(&self.group, &self.destination, 64).await;
        let consumer = trip_consumer::<D>(
            self.db.pool().clone(),
            &self.group,
            subscriber,
            Arc::clone(&self.publisher),
            64,
        )
        .expect("trip consumer");
        run(consumer)
    }

    async fn send(&self, envelopes: &[Envelope]) {
        publish(self.publisher.as_ref(), &self.destination, envelopes).await;
    }

    /// The relay's destination prefix: what makes `steps` this test's
    /// destination.
    fn prefix(&self) -> String {
        self.destination
            .strip_suffix(TripBooked::DESTINATION)
            .expect("the destination ends with `steps`")
            .to_owned()
    }

    async fn clean_up(&self, broker: &Broker) {
        broker.clean_up(&[&self.group], &[&self.destination]).await;
    }
}

/// 20 trips of 3 legs on `broker`, every event published twice (same id;
/// legs before bookings for half the trips, so their steps also meet the
/// missing-instance rule and are retried until the booking is there). Every
/// trip completes with exactly its four steps applied once: one effect each,
/// version 4, one `TripClosed`; the consumer counted 80 duplicates.
pub async fn duplicates_change_nothing<D: TestDatabase>(broker: &Broker) {
    let setup = Setup::<D>::new(broker, "saga_dup").await;
    let trips: Vec<String> = (0..20).map(|i| format!("dup-{i}")).collect();
    let mut stream = Vec::new();
    for (i, t) in trips.iter().enumerate() {
        let booked = envelope_of(&TripBooked {
            trip: t.clone(),
            legs: 3,
            deadline_ms: 0,
        });
        let legs: Vec<Envelope> = (1..=3)
            .map(|leg| envelope_of(&LegConfirmed::new(t, leg, 0)))
            .collect();
        if i % 2 == 0 {
            stream.push(booked.clone());
            stream.extend(legs.iter().cloned());
        } else {
            stream.extend(legs.iter().cloned());
            stream.push(booked.clone());
        }
        // The copies: right behind, and again after everything else.
        stream.push(booked);
        stream.extend(legs);
    }
    let again: Vec<Envelope> = stream.clone();
    let running = setup.consumer(broker).await;
    setup.send(&stream).await;
    wait_trips(
        &setup.db,
        &trips,
        "every trip completes",
        Duration::from_secs(90),
        completed,
    )
    .await;
    setup.send(&again).await;
    let messages = i64::try_from(stream.len() + again.len()).expect("fits");
    let start = Instant::now();
    let mut seen = u64::MAX;
    loop {
        let backlog = broker
            .backlog(&setup.group, &setup.destination, messages)
            .await;
        // Consumed, and nothing more handled for a second: the copies
        // prefetched but not yet settled are done too.
        let settled =
            running.consumer.metrics().handled() + running.consumer.metrics().duplicates();
        if backlog == 0 && settled == seen {
            break;
        }
        seen = settled;
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "{backlog} of {messages} messages not consumed within 90 s"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let consumer = running.stop().await;
    eprintln!(
        "saga duplicates on {} and {}: handled {}, duplicates {}",
        broker.name(),
        D::NAME,
        consumer.metrics().handled(),
        consumer.metrics().duplicates()
    );
    let instances = assert_consistent(&setup.db).await;
    assert_eq!(instances.len(), 20);
    for t in &instances {
        assert_eq!(t.version, 4, "{t:?}");
        let mut legs = t.state.confirmed.clone();
        legs.sort_unstable();
        assert_eq!(legs, vec![1, 2, 3], "{t:?}");
    }
    assert_eq!(
        setup.db.scalar("SELECT count(*) FROM effects").await,
        80,
        "each of the 80 events applied once"
    );
    assert_eq!(
        setup.db.scalar("SELECT count(*) FROM eventbus_inbox").await,
        80,
        "one inbox row per event"
    );
    setup.clean_up(broker).await;
}

/// Timeouts through the relay, on `broker`:
///
/// - trip `late` (deadline 1.5 s, no leg confirmed) expires: its deadline
///   is handled exactly once — its copy (same id) sent again is a
///   duplicate;
/// - trip `quick` (deadline 1.5 s) completes at once: its deadline is
///   cancelled, never relayed, never handled;
/// - trip `waiting` (deadline in 10 minutes): a `TripDeadline` under
///   another id is not the one it waits for, and changes nothing;
/// - trip `done` (deadline in 10 minutes) completes; then its awaited
///   deadline arrives anyway (sent as if already on its way when it
///   completed) and is ignored, as is a leg for the completed trip.
pub async fn timeouts_fire_once_and_never_after_completion<D: TestDatabase>(broker: &Broker) {
    let setup = Setup::<D>::new(broker, "saga_timeout").await;
    // Published rows are kept, for the checks to read.
    let relay = relay_on(
        &setup.db,
        Arc::clone(&setup.publisher),
        RelayConfig {
            retention: Retention::Keep(Duration::from_secs(3_600)),
            ..test_config(&setup.prefix())
        },
    );
    let running = setup.consumer(broker).await;
    let book = |trip: &str, legs: u32, deadline_ms: u64| {
        envelope_of(&TripBooked {
            trip: trip.into(),
            legs,
            deadline_ms,
        })
    };
    setup
        .send(&[
            book("late", 2, 1_500),
            book("quick", 1, 1_500),
            book("waiting", 1, 600_000),
            book("done", 1, 600_000),
        ])
        .await;
    let all: Vec<String> = ["late", "quick", "waiting", "done"]
        .map(String::from)
        .to_vec();
    wait_trips(
        &setup.db,
        &all,
        "every trip starts",
        Duration::from_secs(60),
        |_| true,
    )
    .await;
    let done = trip(&setup.db, "done").await.expect("done started");
    let awaited = done.state.deadline.expect("done waits for its deadline");
    assert_eq!(
        done.timeouts.iter().map(|t| t.id).collect::<Vec<_>>(),
        vec![awaited],
        "the instance records the timeout it waits for"
    );
    setup
        .send(&[
            envelope_of(&LegConfirmed::new("quick", 1, 0)),
            envelope_of(&LegConfirmed::new("done", 1, 0)),
        ])
        .await;
    wait_trips(
        &setup.db,
        &["quick".to_owned(), "done".to_owned()],
        "quick and done complete",
        Duration::from_secs(60),
        completed,
    )
    .await;

    // The awaited deadline of `done`, arriving after completion; a deadline
    // `waiting` does not wait for; a leg of the completed `done`.
    let mut stale = envelope_of(&TripDeadline {
        trip: "done".into(),
    });
    stale.id = awaited.to_string();
    setup
        .send(&[
            stale,
            envelope_of(&TripDeadline {
                trip: "waiting".into(),
            }),
            envelope_of(&LegConfirmed::new("done", 2, 0)),
        ])
        .await;
    wait_trips(
        &setup.db,
        &["late".to_owned()],
        "late expires",
        Duration::from_secs(60),
        completed,
    )
    .await;
    // Past `quick`'s deadline, and time for the stale events to be handled.
    crate::consumer::wait_until(
        "the stale events are settled",
        Duration::from_secs(60),
        || running.consumer.metrics().handled() > 4 + 2 + 3,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The deadline of `late`, again under its id: a duplicate.
    let late = trip(&setup.db, "late").await.expect("late");
    let late_deadline = late.state.deadline.expect("late had a deadline");
    let mut copy = envelope_of(&TripDeadline {
        trip: "late".into(),
    });
    copy.id = late_deadline.to_string();
    let duplicates = running.consumer.metrics().duplicates();
    setup.send(&[copy]).await;
    crate::consumer::wait_until(
        "the copy of late's deadline is a duplicate",
        Duration::from_secs(30),
        || running.consumer.metrics().duplicates() > duplicates,
    )
    .await;
    running.stop().await;
    relay.stop().await;

    let instances = assert_consistent(&setup.db).await;
    let by_id: HashMap<&str, &SagaInstance<Trip<D>>> = instances
        .iter()
        .map(|t| (t.instance_id.as_str(), t))
        .collect();
    assert_eq!(by_id["late"].state.outcome.as_deref(), Some("expired"));
    assert_eq!(by_id["quick"].state.outcome.as_deref(), Some("confirmed"));
    assert_eq!(by_id["done"].state.outcome.as_deref(), Some("confirmed"));
    assert_eq!(by_id["done"].version, 2, "nothing after completion");
    let waiting = by_id["waiting"];
    assert_eq!(waiting.status, SagaStatus::Active);
    assert_eq!(waiting.version, 1, "a deadline it does not wait for");
    assert_eq!(waiting.timeouts.len(), 1, "still waits for its own");
    let deadlines = setup
        .db
        .scalar(&format!(
            "SELECT count(*) FROM effects WHERE seq = {DEADLINE_SEQ}"
        ))
        .await;
    assert_eq!(deadlines, 1, "one deadline handled in all: late's, once");
    // `quick`'s deadline never left the scheduled table; `late`'s went out
    // through the outbox once.
    let relayed = setup
        .db
        .texts(&format!(
            "SELECT partition_key FROM eventbus_outbox WHERE event_type = '{}'",
            TripDeadline::TYPE
        ))
        .await;
    assert_eq!(relayed, vec![Some("late".to_owned())]);
    assert_eq!(
        setup
            .db
            .scalar("SELECT count(*) FROM eventbus_outbox_scheduled")
            .await,
        1,
        "only waiting's deadline still waits"
    );
    setup.clean_up(broker).await;
}

/// The `saga_worker` binary, running the trip saga in a process of its
/// own; killed if the test panics.
struct Worker {
    child: tokio::process::Child,
}

impl Worker {
    async fn start<D: TestDatabase>(
        bin: &str,
        broker: &Broker,
        db: &D,
        setup: &Setup<D>,
        member: &str,
    ) -> Self {
        Self::start_with(bin, broker, db, setup, &[member]).await
    }

    async fn start_with<D: TestDatabase>(
        bin: &str,
        broker: &Broker,
        db: &D,
        setup: &Setup<D>,
        args: &[&str],
    ) -> Self {
        let mut command = tokio::process::Command::new(bin);
        command
            .arg(db.url())
            .arg(broker.worker_url())
            .args([&setup.group, &setup.destination])
            .args(args);
        Worker {
            child: spawn_ready(command, "saga_worker").await,
        }
    }

    async fn kill(mut self) {
        self.child.start_kill().expect("SIGKILL the worker");
        self.child.wait().await.expect("reap the worker");
    }

    async fn interrupt(mut self) {
        stop_cleanly(&mut self.child, "INT", Duration::from_secs(60)).await;
    }
}

/// Bookings of `trips`, two legs each, no deadline.
fn bookings(trips: &[String]) -> Vec<Envelope> {
    trips
        .iter()
        .map(|t| {
            envelope_of(&TripBooked {
                trip: t.clone(),
                legs: 2,
                deadline_ms: 0,
            })
        })
        .collect()
}

/// Runs the race: 24 trips of 2 legs, booked, then both legs of each trip
/// published together in waves, each leg's step holding its trip for
/// 400 ms, consumed by two `saga_worker` processes of one group started
/// with `mode` (`[]` for the saga). Returns once every leg's message was
/// handled (its effect written), with the trips.
async fn race<D: TestDatabase>(
    setup: &Setup<D>,
    broker: &Broker,
    bin: &str,
    mode: &[&str],
) -> Vec<String> {
    let trips: Vec<String> = (0..24).map(|i| format!("race-{i}")).collect();
    setup.send(&bookings(&trips)).await;
    let args = |member: &'static str| [&[member][..], mode].concat();
    let first = Worker::start_with(bin, broker, &setup.db, setup, &args("a")).await;
    let second = Worker::start_with(bin, broker, &setup.db, setup, &args("b")).await;
    wait_trips(
        &setup.db,
        &trips,
        "every trip starts",
        Duration::from_secs(90),
        |_| true,
    )
    .await;
    // In waves, so that a Kafka group has settled its members by the later
    // ones.
    for wave in trips.chunks(8) {
        let legs: Vec<Envelope> = wave
            .iter()
            .flat_map(|t| {
                [
                    envelope_of(&LegConfirmed::new(t, 1, 400)),
                    envelope_of(&LegConfirmed::new(t, 2, 400)),
                ]
            })
            .collect();
        setup.send(&legs).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let start = Instant::now();
    let all = i64::try_from(trips.len() * 3).expect("fits");
    loop {
        let effects = setup.db.scalar("SELECT count(*) FROM effects").await;
        if effects >= all {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "{effects} of {all} steps handled within 120 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    first.interrupt().await;
    second.interrupt().await;
    trips
}

/// How many trips had their two legs handled by two different processes.
async fn shared_trips<D: TestDatabase>(db: &D) -> usize {
    let effects = db.effects().await;
    let mut members: HashMap<&str, HashSet<&str>> = HashMap::new();
    for e in effects.iter().filter(|e| e.seq > 0) {
        members
            .entry(e.key.as_str())
            .or_default()
            .insert(e.member.as_str());
    }
    members.values().filter(|m| m.len() == 2).count()
}

/// Two `saga_worker` processes of one group on `broker` race on 24 trips of
/// 2 legs, each leg's step holding its trip for 400 ms: both legs of each
/// trip published together, with different keys, so they take different
/// lanes and, mostly, different processes. Both legs of every trip apply — version 3, legs {1, 2}, one
/// effect each, trip completed — and for some trips the two legs were
/// handled by different processes, so two processes did meet on one
/// instance. [`unlocked_steps_lose_updates`] is the same race without the
/// saga's lock, and loses legs.
pub async fn concurrent_steps_of_one_instance_both_apply<D: TestDatabase>(
    broker: &Broker,
    bin: &str,
) {
    let setup = Setup::<D>::new(broker, "saga_race").await;
    let trips = race(&setup, broker, bin, &[]).await;
    let instances = assert_consistent(&setup.db).await;
    assert_eq!(instances.len(), trips.len());
    for t in &instances {
        let mut legs = t.state.confirmed.clone();
        legs.sort_unstable();
        assert_eq!(legs, vec![1, 2], "{t:?}");
        assert_eq!(t.version, 3, "{t:?}");
        assert_eq!(t.status, SagaStatus::Completed, "{t:?}");
    }
    let shared = shared_trips(&setup.db).await;
    eprintln!(
        "saga race on {} and {}: {shared} of {} trips had their legs applied by both processes",
        broker.name(),
        D::NAME,
        trips.len()
    );
    assert!(
        shared > 0,
        "no trip had its two legs handled by two processes: the race was not run"
    );
    setup.clean_up(broker).await;
}

/// The negative control of [`concurrent_steps_of_one_instance_both_apply`]:
/// the same race run by handlers that read the state without a lock and
/// write it back unchecked. Some trip loses a leg (its state lists fewer
/// legs than its leg steps wrote effects), and [`assert_consistent`] says
/// so: the race does reach one instance from two places at once, which is
/// what the saga's lock is there for.
pub async fn unlocked_steps_lose_updates<D: TestDatabase>(broker: &Broker, bin: &str) {
    let setup = Setup::<D>::new(broker, "saga_unlocked").await;
    let trips = race(&setup, broker, bin, &["unlocked"]).await;
    let mut lost = 0;
    for id in &trips {
        let t = trip(&setup.db, id).await.expect("booked");
        if t.state.confirmed.len() < 2 {
            lost += 1;
        }
    }
    eprintln!(
        "unlocked race on {} and {}: {lost} of {} trips lost a leg",
        broker.name(),
        D::NAME,
        trips.len()
    );
    assert!(lost > 0, "without the lock, some trip must lose a leg");
    setup.clean_up(broker).await;
    let caught = tokio::spawn(async move {
        assert_consistent(&setup.db).await;
    })
    .await;
    assert!(
        caught.is_err(),
        "assert_consistent must refuse the trips that lost a leg"
    );
}

/// A `saga_worker` SIGKILLed while steps hold their instances: 16 trips of
/// 2 legs, each leg step taking half a second (on SQLite, whose steps hold
/// the database's one write lock, they run one at a time). Killed once every trip started and
/// some legs applied; right after the kill, every instance agrees with its
/// steps' writes (no state without its writes, no writes without its state);
/// a second worker finishes the work, and every trip ends with both legs
/// applied once.
pub async fn killed_mid_step_leaves_no_partial_state<D: TestDatabase>(broker: &Broker, bin: &str) {
    let setup = Setup::<D>::new(broker, "saga_kill").await;
    let trips: Vec<String> = (0..16).map(|i| format!("kill-{i}")).collect();
    let mut stream = bookings(&trips);
    for t in &trips {
        stream.push(envelope_of(&LegConfirmed::new(t, 1, 500)));
        stream.push(envelope_of(&LegConfirmed::new(t, 2, 500)));
    }
    setup.send(&stream).await;
    let worker = Worker::start(bin, broker, &setup.db, &setup, "a").await;
    wait_trips(
        &setup.db,
        &trips,
        "every trip starts",
        Duration::from_secs(90),
        |_| true,
    )
    .await;
    let start = Instant::now();
    loop {
        let legs = setup
            .db
            .scalar("SELECT count(*) FROM effects WHERE seq > 0")
            .await;
        if legs >= 4 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{legs} legs applied within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Steps are half a second long: some hold their instances now.
    tokio::time::sleep(Duration::from_millis(250)).await;
    worker.kill().await;
    let at_kill = assert_consistent(&setup.db).await;
    let applied: i64 = at_kill.iter().map(|t| t.version).sum();
    assert!(
        applied < 48,
        "the kill came before the end ({applied} of 48 steps)"
    );

    let worker = Worker::start(bin, broker, &setup.db, &setup, "b").await;
    wait_trips(
        &setup.db,
        &trips,
        "every trip completes after the restart",
        Duration::from_secs(180),
        completed,
    )
    .await;
    worker.interrupt().await;
    let instances = assert_consistent(&setup.db).await;
    assert_eq!(instances.len(), trips.len());
    for t in &instances {
        assert_eq!(t.version, 3, "{t:?}");
    }
    setup.clean_up(broker).await;
}
