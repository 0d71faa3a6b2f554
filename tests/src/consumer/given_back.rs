//! Messages a consumer gives back to the broker (the parked table could not
//! be written, so a delayed retry cannot be parked) keep their keys' order
//! on any [`Broker`]: each key given back waits for its first message to come
//! round again, however many other keys were given back meanwhile.
//!
//! The soak found the interleaving this pins down: with the database
//! restarting, one lane gave back a step of key `a`, then one of key `b`, and
//! the database was back when the next step of `a` arrived; the lane awaited
//! only the last message it gave back (`b`'s), so it applied `a`'s next step
//! before the one it had given back.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventbus::consumer::{Consumer, Context, RetryPolicy};
use eventbus::BoxError;
use sqlx::{PgPool, Postgres};

use super::{create_effects, envelope, publish, record, run, wait_count, Broker};
use crate::relay::Step;
use crate::{unique_name, TestDb};

/// A trigger that makes the parked table refuse the rows of keys containing
/// `marker`, as an unreachable database would (not a data exception, which
/// the consumer dead-letters instead).
async fn refuse_parking(pool: &PgPool, marker: &str) {
    sqlx::query(
        "CREATE FUNCTION refuse_parking() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN \
           IF position(TG_ARGV[0] in NEW.message_key) > 0 THEN \
             RAISE EXCEPTION 'the test refuses to park %', NEW.message_key; \
           END IF; \
           RETURN NEW; \
         END $$",
    )
    .execute(pool)
    .await
    .expect("create the refusing function");
    let trigger = format!(
        "CREATE TRIGGER refuse_parking BEFORE INSERT ON eventbus_inbox_parked \
         FOR EACH ROW EXECUTE FUNCTION refuse_parking('{marker}')"
    );
    sqlx::query(crate::composed(&trigger))
        .execute(pool)
        .await
        .expect("create the refusing trigger");
}

/// The `seq`s of `key`'s effects, in the order they were written.
async fn seqs_of(pool: &PgPool, key: &str) -> Vec<i64> {
    sqlx::query_scalar("SELECT seq FROM effects WHERE key = $1 ORDER BY id")
        .bind(key)
        .fetch_all(pool)
        .await
        .expect("read effects")
}

/// One lane receives a0, b0, a1, b1. The first attempts at a0 and b0 fail;
/// their delayed retries cannot be parked, so both go back to the broker,
/// one after the other. a1 and b1 must then wait for them: the effects of
/// each key are 0, 1, each once.
pub async fn given_back_keys_keep_order_scenario(broker: &Broker) {
    let db = TestDb::migrated().await;
    create_effects(&db.pool).await;
    let marker = unique_name("given_back");
    refuse_parking(&db.pool, &marker).await;
    let (destination, publisher) = broker.destination("given_back", 1).await;
    let group = unique_name("given_back");
    let subscriber = broker.one_lane_subscriber(&group, &destination, 64).await;
    let failed: Arc<Mutex<HashSet<String>>> = Arc::default();
    let consumer = Consumer::builder(&group)
        .on({
            let failed = Arc::clone(&failed);
            move |ctx: Context<Postgres>, step: Step| {
                let failed = Arc::clone(&failed);
                async move {
                    let first = step.seq == 0
                        && failed
                            .lock()
                            .map_err(|e| e.to_string())?
                            .insert(step.key.clone());
                    if first {
                        return Err::<(), BoxError>("the first attempt fails".into());
                    }
                    record(&ctx, "c", &step).await
                }
            }
        })
        .retry(RetryPolicy {
            immediate: 0,
            immediate_delay: Duration::from_millis(10),
            delayed: 3,
            delayed_initial: Duration::from_millis(50),
            delayed_max: Duration::from_millis(50),
        })
        .build(db.pool.clone(), subscriber, publisher.clone())
        .expect("consumer");
    let running = run(consumer);

    let (a, b) = (format!("{marker}-a"), format!("{marker}-b"));
    let step = |key: &str, seq: u64| {
        envelope(&Step {
            key: key.to_owned(),
            seq,
            pad: String::new(),
        })
    };
    let messages = [step(&a, 0), step(&b, 0), step(&a, 1), step(&b, 1)];
    publish(publisher.as_ref(), &destination, &messages).await;

    wait_count(
        &db.pool,
        "SELECT count(*) FROM effects",
        4,
        Duration::from_secs(60),
    )
    .await;
    let consumer = running.stop().await;
    assert_eq!(seqs_of(&db.pool, &a).await, [0, 1], "the order of key a");
    assert_eq!(seqs_of(&db.pool, &b).await, [0, 1], "the order of key b");
    assert!(
        consumer.metrics().released() >= 2,
        "a0 and b0 were given back to the broker (released {})",
        consumer.metrics().released()
    );
    broker.clean_up(&[&group], &[&destination]).await;
}
