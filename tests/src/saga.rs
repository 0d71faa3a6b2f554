//! The saga the saga suites drive ([`crate::suites::saga`]) and the
//! `saga_worker` binary runs: a trip of a few legs, started by
//! [`TripBooked`], completed when every leg is confirmed
//! ([`LegConfirmed`]) or when its deadline ([`TripDeadline`], a timeout)
//! comes first. Every step writes one `effects` row (key: the trip; seq: 0
//! for the booking, the leg's number, or [`DEADLINE_SEQ`]) in its
//! transaction, as a service's own writes would be, and the completing step
//! publishes [`TripClosed`].
//!
//! Legs are keyed by trip and leg, so the legs of one trip travel in
//! different lanes (partitions, RabbitMQ key lanes) and reach different
//! consumers at once: the saga's row lock is what orders them.

use std::marker::PhantomData;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use eventbus::consumer::{Consumer, RetryPolicy, UnknownTypes};
use eventbus::saga::{Handles, Saga, SagaContext, SagaDefinition, StartedBy, Unmatched};
use eventbus::transport::Subscriber;
use eventbus::{BoxError, Envelope, Event, Publisher};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::backend::TestDatabase;

/// The `effects` seq of a handled deadline.
pub const DEADLINE_SEQ: i64 = 100;

/// Books trip `trip` of `legs` legs; a deadline `deadline_ms` from the
/// booking's handling (none when 0).
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema, eventbus::Event)]
#[event(type = "com.example.test.trip.booked", destination = "steps", key = trip)]
pub struct TripBooked {
    /// The trip: the saga instance.
    pub trip: String,
    /// Legs to confirm.
    pub legs: u32,
    /// Milliseconds until the deadline; 0 for none.
    pub deadline_ms: u64,
}

/// Leg `leg` of `trip` is confirmed; its handler holds the instance for
/// `hold_ms` first (a slow step).
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema, eventbus::Event)]
#[event(type = "com.example.test.trip.leg_confirmed", destination = "steps", key = lane)]
pub struct LegConfirmed {
    /// The trip.
    pub trip: String,
    /// The leg, from 1.
    pub leg: u32,
    /// The ordering key: trip and leg, so legs take different lanes.
    pub lane: String,
    /// How long the step takes.
    pub hold_ms: u64,
}

impl LegConfirmed {
    /// Leg `leg` of `trip`, its step taking `hold_ms`.
    pub fn new(trip: &str, leg: u32, hold_ms: u64) -> Self {
        LegConfirmed {
            trip: trip.to_owned(),
            leg,
            lane: format!("{trip}/{leg}"),
            hold_ms,
        }
    }
}

/// The trip's deadline: a timeout the booking requests.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema, eventbus::Event)]
#[event(type = "com.example.test.trip.deadline", destination = "steps", key = trip)]
pub struct TripDeadline {
    /// The trip.
    pub trip: String,
}

/// The trip's end: `confirmed` or `expired`.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema, eventbus::Event)]
#[event(type = "com.example.test.trip.closed", destination = "steps", key = trip)]
pub struct TripClosed {
    /// The trip.
    pub trip: String,
    /// How it ended.
    pub outcome: String,
}

/// The trip saga's state, for database `D` (whose effects table the steps
/// write).
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
pub struct Trip<D> {
    /// Legs to confirm.
    pub legs: u32,
    /// Legs confirmed, in the order their steps applied.
    pub confirmed: Vec<u32>,
    /// The deadline's timeout id.
    pub deadline: Option<Uuid>,
    /// `confirmed` or `expired` once closed.
    pub outcome: Option<String>,
    #[serde(skip)]
    db: PhantomData<fn() -> D>,
}

impl<D> std::fmt::Debug for Trip<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trip")
            .field("legs", &self.legs)
            .field("confirmed", &self.confirmed)
            .field("deadline", &self.deadline)
            .field("outcome", &self.outcome)
            .finish()
    }
}

impl<D: TestDatabase> Saga for Trip<D> {
    const NAME: &'static str = "trip";
}

/// The member name this process writes into its effects.
static MEMBER: OnceLock<String> = OnceLock::new();

/// Names this process's effects (the `saga_worker` binary does, once).
pub fn set_member(name: &str) {
    let _ = MEMBER.set(name.to_owned());
}

fn member() -> &'static str {
    MEMBER.get().map_or("", String::as_str)
}

/// Writes the step's effect row in its transaction.
async fn effect<D: TestDatabase>(
    ctx: &SagaContext<D::DB>,
    trip: &str,
    seq: i64,
) -> Result<(), BoxError> {
    let row = [(trip.to_owned(), seq, ctx.envelope().id.clone())];
    let mut tx = ctx.tx().await?;
    D::insert_effects(&mut **tx, member(), &row).await?;
    Ok(())
}

#[eventbus::saga::async_trait]
impl<D: TestDatabase> StartedBy<TripBooked, D::DB> for Trip<D> {
    fn correlate(e: &TripBooked) -> String {
        e.trip.clone()
    }

    async fn start(ctx: &SagaContext<D::DB>, e: TripBooked) -> Result<Self, BoxError> {
        effect::<D>(ctx, &e.trip, 0).await?;
        let deadline = if e.deadline_ms > 0 {
            Some(ctx.request_timeout(
                Duration::from_millis(e.deadline_ms),
                &TripDeadline {
                    trip: e.trip.clone(),
                },
            )?)
        } else {
            None
        };
        Ok(Trip {
            legs: e.legs,
            confirmed: Vec::new(),
            deadline,
            outcome: None,
            db: PhantomData,
        })
    }
}

#[eventbus::saga::async_trait]
impl<D: TestDatabase> Handles<LegConfirmed, D::DB> for Trip<D> {
    fn correlate(e: &LegConfirmed) -> String {
        e.trip.clone()
    }

    async fn handle(&mut self, ctx: &SagaContext<D::DB>, e: LegConfirmed) -> Result<(), BoxError> {
        // The instance is locked from here to the commit.
        tokio::time::sleep(Duration::from_millis(e.hold_ms)).await;
        effect::<D>(ctx, &e.trip, i64::from(e.leg)).await?;
        self.confirmed.push(e.leg);
        if self.confirmed.len() >= self.legs as usize {
            self.outcome = Some("confirmed".into());
            ctx.publish(&TripClosed {
                trip: e.trip,
                outcome: "confirmed".into(),
            })
            .await?;
            ctx.complete();
        }
        Ok(())
    }
}

#[eventbus::saga::async_trait]
impl<D: TestDatabase> Handles<TripDeadline, D::DB> for Trip<D> {
    fn correlate(e: &TripDeadline) -> String {
        e.trip.clone()
    }

    async fn handle(&mut self, ctx: &SagaContext<D::DB>, e: TripDeadline) -> Result<(), BoxError> {
        effect::<D>(ctx, &e.trip, DEADLINE_SEQ).await?;
        self.outcome = Some("expired".into());
        ctx.publish(&TripClosed {
            trip: e.trip,
            outcome: "expired".into(),
        })
        .await?;
        ctx.complete();
        Ok(())
    }
}

/// The trip saga: legs that overtake their booking (another lane) are
/// retried until it is there.
pub fn trip_saga<D: TestDatabase>() -> SagaDefinition<Trip<D>, D::DB> {
    SagaDefinition::new()
        .starts::<TripBooked>()
        .handles::<LegConfirmed>()
        .timeout::<TripDeadline>()
        .when_missing(Unmatched::Retry)
}

/// Retries that bring a leg that overtook its booking back within a
/// second or two, for long enough that the booking is there.
fn overtaken_legs_retry() -> RetryPolicy {
    RetryPolicy {
        immediate: 5,
        immediate_delay: Duration::from_millis(200),
        delayed: 10,
        delayed_initial: Duration::from_millis(500),
        delayed_max: Duration::from_secs(2),
    }
}

/// A consumer of group `group` running the trip saga; [`TripClosed`] coming
/// back on the same destination is skipped.
///
/// # Errors
///
/// As for [`eventbus::consumer::ConsumerBuilder::build`].
pub fn trip_consumer<D: TestDatabase>(
    pool: sqlx::Pool<D::DB>,
    group: &str,
    subscriber: Box<dyn Subscriber>,
    dead_letters: Arc<dyn Publisher>,
    max_in_flight: usize,
) -> eventbus::Result<Consumer<D::DB>> {
    Consumer::builder(group)
        .max_in_flight(max_in_flight)
        .unknown_types(UnknownTypes::Skip)
        .retry(overtaken_legs_retry())
        .saga(trip_saga::<D>())
        .build(pool, subscriber, dead_letters)
}

/// The CloudEvent the outbox would make of `event`.
pub fn envelope_of<E: Event>(event: &E) -> Envelope {
    let data = serde_json::to_vec(event).expect("a test event serializes");
    let mut e = Envelope::new("urn:test:saga", E::TYPE, data);
    e.partition_key = Some(event.partition_key());
    e
}

/// The negative control of the race: the trip's legs handled by plain
/// handlers doing what the saga's step does without its row lock and
/// version check — read the state, take `hold_ms`, write it back. Two
/// processes running this on one trip overwrite each other's legs.
///
/// # Errors
///
/// As for [`eventbus::consumer::ConsumerBuilder::build`].
pub fn unlocked_trip_consumer<D: TestDatabase>(
    pool: sqlx::Pool<D::DB>,
    group: &str,
    subscriber: Box<dyn Subscriber>,
    dead_letters: Arc<dyn Publisher>,
    max_in_flight: usize,
) -> eventbus::Result<Consumer<D::DB>> {
    let reads = pool.clone();
    Consumer::builder(group)
        .max_in_flight(max_in_flight)
        .unknown_types(UnknownTypes::Skip)
        .on(
            |ctx: eventbus::consumer::Context<D::DB>, e: TripBooked| async move {
                let row = [(e.trip.clone(), 0, ctx.envelope().id.clone())];
                let trip = Trip::<D> {
                    legs: e.legs,
                    confirmed: Vec::new(),
                    deadline: None,
                    outcome: None,
                    db: PhantomData,
                };
                let mut tx = ctx.tx().await?;
                D::insert_effects(&mut **tx, member(), &row).await?;
                eventbus::saga::Sagas::new()
                    .start(&mut tx, &e.trip, &trip)
                    .await?;
                Ok(())
            },
        )
        .on(
            move |ctx: eventbus::consumer::Context<D::DB>, e: LegConfirmed| {
                let reads = reads.clone();
                async move {
                    let Some(mut trip) = eventbus::saga::Sagas::new()
                        .load::<Trip<D>, _>(&reads, &e.trip)
                        .await?
                    else {
                        return Err(format!("trip {} not booked yet", e.trip).into());
                    };
                    tokio::time::sleep(Duration::from_millis(e.hold_ms)).await;
                    trip.state.confirmed.push(e.leg);
                    let state = serde_json::to_string(&trip.state)?;
                    // Test data only: the state is JSON of numbers and ids.
                    let sql = format!(
                        "UPDATE eventbus_sagas SET state = '{state}', version = version + 1 \
                     WHERE saga = 'trip' AND instance_id = '{}'",
                        e.trip
                    );
                    let row = [(e.trip.clone(), i64::from(e.leg), ctx.envelope().id.clone())];
                    let mut tx = ctx.tx().await?;
                    D::insert_effects(&mut **tx, member(), &row).await?;
                    D::execute_in(&mut **tx, &sql).await?;
                    Ok(())
                }
            },
        )
        .retry(overtaken_legs_retry())
        .build(pool, subscriber, dead_letters)
}
