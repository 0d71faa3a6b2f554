//! The pipelined relay's two dangers (ADR 14), on any database: a batch
//! claimed while the one before was in flight must not send rows of a key
//! that batch left pending, and a background acknowledgement that fails
//! must not let its rows be claimed and sent again behind the next batch.
//! Each scenario runs with the relay as built and, as its negative control,
//! with the matching deliberate defect ([`Defects`]): the check must then
//! report the violation.

use std::sync::Arc;
use std::time::Duration;

use eventbus::relay::{Defects, RelayConfig};
use eventbus::transport::PublishError;

use crate::backend::TestDatabase;
use crate::failing_publisher::FailsOnce;
use crate::failing_store::AckFailsOnce;
use crate::history::{check, Verdict};
use crate::relay::{spawn_relay_on, test_config, Step};
use crate::suites::commit_order::{commit_at_once, rabbit, read_until_quiet, step};
use crate::suites::relay::wait_drained;

/// Rows per batch: small, so one commit fills several batches and the
/// relay claims ahead.
const BATCH: u32 = 4;

/// A relay config with [`BATCH`]-row batches and `defects`.
fn config(prefix: &str, defects: Defects) -> RelayConfig {
    RelayConfig {
        batch_size: BATCH,
        defects,
        ..test_config(prefix)
    }
}

/// What [`a_batch_claimed_ahead_holds_back_the_keys_left_pending`] saw.
#[derive(Debug)]
pub struct AheadRun {
    /// (key, seq) of the batch sent after the failing one.
    pub next_batch: Vec<(String, u64)>,
    /// The judged history.
    pub verdict: Verdict,
}

/// Key `k` has events 0..6 and `other` 0..3, committed at once, sent four
/// at a time: the first batch is `k#0..k#3`, and while it is in flight the
/// relay claims `k#4 k#5 other#0 other#1` ahead. The broker rejects `k#2`
/// (once) and accepts `k#3`. The batch sent next must hold nothing of `k`:
/// `k#4` and `k#5` wait behind `k#2`'s retry. Returns what was sent next and
/// the judged history (every event arrives; the last delivery of each key
/// is its latest event).
pub async fn a_batch_claimed_ahead_holds_back_the_keys_left_pending<D: TestDatabase>(
    defects: Defects,
) -> AheadRun {
    let db = D::migrated().await;
    let (inner, prefix, mut queue) = rabbit("claimed_ahead").await;
    let failure = PublishError::Rejected("nacked".into());
    // Slow to report the failure: the claim ahead has read `k#4` and `k#5`
    // before `k#2`'s rejection is written (which would hold them back in
    // the database, and leave the negative control nothing to catch).
    let publisher = Arc::new(
        FailsOnce::new(inner, "k", 2, failure).slow_failing_batch(Duration::from_millis(500)),
    );
    let events: Vec<Step> = (0..6)
        .map(|s| step("k", s))
        .chain((0..3).map(|s| step("other", s)))
        .collect();
    let mut history = commit_at_once(&db, &events).await;
    let relay = spawn_relay_on(
        D::relay_store(db.pool()),
        Arc::clone(&publisher) as Arc<dyn eventbus::Publisher>,
        config(&prefix, defects),
    );
    publisher.wait_next_batch(Duration::from_secs(30)).await;
    assert_eq!(
        publisher.later_in_failing_batch(),
        [3],
        "{}: the failing batch is k#0..k#3 (else the scenario proves nothing)",
        D::NAME
    );
    let next_batch = publisher.next_batch();
    publisher.resume();
    read_until_quiet(&db, &mut queue, &mut history, Duration::from_secs(30)).await;
    let verdict = check(&history);
    wait_drained(&db, Duration::from_secs(10)).await;
    relay.stop().await;
    queue.delete().await;
    AheadRun {
        next_batch,
        verdict,
    }
}

/// Key `k` has events 0..8, committed at once, sent four at a time. The
/// first acknowledgement (of `k#0..k#3`) fails once while `k#4..k#7`, claimed
/// ahead, are sent. Returns the acknowledgement that failed and the judged
/// history: with the retry, every event arrives exactly once, in order.
pub async fn a_failed_acknowledgement_is_retried_not_resent<D: TestDatabase>(
    defects: Defects,
) -> (Vec<i64>, Verdict) {
    let db = D::migrated().await;
    let (publisher, prefix, mut queue) = rabbit("failed_ack").await;
    let store = Arc::new(AckFailsOnce::new(D::relay_store(db.pool())));
    let events: Vec<Step> = (0..8).map(|s| step("k", s)).collect();
    let mut history = commit_at_once(&db, &events).await;
    let relay = spawn_relay_on(
        Arc::clone(&store) as Arc<dyn eventbus::relay::RelayStore>,
        publisher,
        config(&prefix, defects),
    );
    read_until_quiet(&db, &mut queue, &mut history, Duration::from_secs(30)).await;
    let verdict = check(&history);
    wait_drained(&db, Duration::from_secs(10)).await;
    relay.stop().await;
    queue.delete().await;
    (store.failed_ids(), verdict)
}

/// Asserts the relay as built passed [`a_batch_claimed_ahead_holds_back_the_keys_left_pending`].
pub fn assert_held_back(name: &str, run: &AheadRun) {
    let of_k: Vec<u64> = run
        .next_batch
        .iter()
        .filter(|(key, _)| key == "k")
        .map(|(_, seq)| *seq)
        .collect();
    assert!(
        of_k.is_empty() && run.verdict.keeps_last_values() && run.verdict.lost().is_empty(),
        "{name}: the batch after the failing one sent k#{of_k:?} (must hold nothing of k); \
         final history: {}",
        run.verdict
    );
}

/// Asserts the negative control of [`assert_held_back`] was caught.
pub fn assert_caught_ahead(name: &str, run: &AheadRun) {
    assert!(
        run.next_batch.iter().any(|(key, _)| key == "k") && !run.verdict.keeps_last_values(),
        "{name}, with the claimed-ahead rows of k kept: the check must see k sent early and \
         the history end on an old value of k; it saw next batch {:?}, history {}",
        run.next_batch,
        run.verdict
    );
}

/// Asserts the relay as built passed [`a_failed_acknowledgement_is_retried_not_resent`].
pub fn assert_acknowledged_once(name: &str, failed: &[i64], verdict: &Verdict) {
    assert_eq!(
        failed.len(),
        BATCH as usize,
        "{name}: the first batch's acknowledgement failed (else the scenario proves nothing)"
    );
    assert!(
        verdict.anomalies.is_empty() && verdict.duplicates == 0,
        "{name}: after a failed acknowledgement, every event must arrive once and in order: {verdict}"
    );
}

/// Asserts the negative control of [`assert_acknowledged_once`] was caught.
pub fn assert_caught_resent(name: &str, verdict: &Verdict) {
    assert!(
        verdict.duplicates > 0 && !verdict.keeps_last_values(),
        "{name}, with failed acknowledgements forgotten: the check must see k#0..k#3 again \
         after k#7; it saw {verdict}"
    );
}
