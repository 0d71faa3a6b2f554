//! Claims bounded by bytes, on every database: the store measures payloads
//! before loading them, stops a claim at its byte budget (always one row at
//! least), and returns a payload over `max_message_bytes` without it, marked
//! with its size. The relay process under these bounds (a 250 MB row, peak
//! memory) is `outbox-relay/tests/bounds.rs`.

use std::time::{Duration, Instant};

use eventbus::relay::{ClaimLimits, RelayStore};
use eventbus::OutboxRecord;
use eventbus_tests::mysql::TestMySql;
use eventbus_tests::relay::{publish_steps, Step};
use eventbus_tests::sqlite::TestSqlite;
use eventbus_tests::{TestDatabase, TestDb};
use uuid::Uuid;

/// Payload padding of the ordinary rows and of the oversized one.
const PAD: usize = 1_000;
const HUGE_PAD: usize = 50_000;
/// The largest payload loaded in these claims.
const MAX: u64 = 10_000;

fn step(key: &str, pad: usize) -> Step {
    Step {
        key: key.to_owned(),
        seq: 0,
        pad: "x".repeat(pad),
    }
}

/// The size of `step`'s payload as the outbox stores it (compact JSON).
fn size(step: &Step) -> u64 {
    serde_json::to_string(step).expect("serialize").len() as u64
}

/// Claims with `limits` the rows of every partition as relay `relay`.
async fn claim(
    store: &dyn RelayStore,
    relay: Uuid,
    partitions: &[i32],
    limits: ClaimLimits,
) -> Vec<OutboxRecord> {
    store
        .claim(relay, partitions, limits, &[])
        .await
        .expect("claim")
}

async fn claims_stop_at_the_byte_budget_and_withhold_oversized_payloads<D: TestDatabase>() {
    let db = D::migrated().await;
    // Five ordinary rows, an oversized one, three more: every key distinct,
    // so nothing waits behind another row of its key.
    let mut events: Vec<Step> = (0..5).map(|i| step(&format!("a{i}"), PAD)).collect();
    events.push(step("huge", HUGE_PAD));
    events.extend((0..3).map(|i| step(&format!("b{i}"), PAD)));
    // One row per transaction: ids in this order.
    publish_steps(db.pool(), &events, 1).await;
    let sizes: Vec<u64> = events.iter().map(size).collect();

    let store = D::relay_store(db.pool());
    let relay = Uuid::now_v7();
    let ttl = Duration::from_secs(30);
    let partitions = store.partitions().await.expect("partitions");
    store
        .heartbeat(relay, "test", ttl)
        .await
        .expect("heartbeat");
    store
        .acquire(relay, &partitions, ttl)
        .await
        .expect("acquire");
    let unbounded = ClaimLimits {
        rows: 100,
        bytes: u64::MAX,
        max_message_bytes: MAX,
    };
    // PostgreSQL releases rows once no older transaction is open: wait.
    let deadline = Instant::now() + Duration::from_secs(20);
    let all = loop {
        let rows = claim(store.as_ref(), relay, &partitions, unbounded).await;
        if rows.len() == events.len() || Instant::now() > deadline {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let keys: Vec<&str> = all.iter().map(|r| r.partition_key.as_str()).collect();
    let expected: Vec<&str> = events.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, expected, "every row, in id order");

    // The oversized row comes without its payload, marked with its size.
    let huge = &all[5];
    assert!(
        huge.payload.is_empty(),
        "not loaded: {} bytes",
        huge.payload.len()
    );
    let defect = huge.defect.clone().unwrap_or_default();
    assert!(
        defect.contains(&format!("payload is {} bytes", sizes[5]))
            && defect.contains(&format!("max_message_bytes = {MAX}")),
        "{defect}"
    );
    for (row, event) in all
        .iter()
        .zip(&events)
        .filter(|(r, _)| r.partition_key != "huge")
    {
        assert_eq!(row.defect, None, "{}", row.partition_key);
        let loaded: Step = serde_json::from_str(&row.payload).expect("a Step");
        assert_eq!(&loaded, event);
    }

    // A budget of three and a half rows: three rows.
    let budget = ClaimLimits {
        bytes: sizes[0] * 3 + sizes[0] / 2,
        ..unbounded
    };
    let rows = claim(store.as_ref(), relay, &partitions, budget).await;
    let keys: Vec<&str> = rows.iter().map(|r| r.partition_key.as_str()).collect();
    assert_eq!(
        keys,
        ["a0", "a1", "a2"],
        "the claim stops at the byte budget"
    );

    // A budget smaller than any row: still one row.
    let tiny = ClaimLimits {
        bytes: 1,
        ..unbounded
    };
    let rows = claim(store.as_ref(), relay, &partitions, tiny).await;
    assert_eq!(rows.len(), 1, "at least one row");
    assert_eq!(rows[0].partition_key, "a0");

    // The withheld payload counts nothing: five rows of budget take the five
    // ordinary ones before it, the oversized one and nothing after.
    let five = ClaimLimits {
        bytes: sizes[0] * 5,
        ..unbounded
    };
    let rows = claim(store.as_ref(), relay, &partitions, five).await;
    let keys: Vec<&str> = rows.iter().map(|r| r.partition_key.as_str()).collect();
    assert_eq!(keys, ["a0", "a1", "a2", "a3", "a4", "huge"]);

    // Row limits still apply.
    let two = ClaimLimits::rows(2);
    assert_eq!(
        claim(store.as_ref(), relay, &partitions, two).await.len(),
        2
    );
}

#[tokio::test]
async fn postgres_claims_stop_at_the_byte_budget_and_withhold_oversized_payloads() {
    claims_stop_at_the_byte_budget_and_withhold_oversized_payloads::<TestDb>().await;
}

#[tokio::test]
async fn mysql_claims_stop_at_the_byte_budget_and_withhold_oversized_payloads() {
    claims_stop_at_the_byte_budget_and_withhold_oversized_payloads::<TestMySql>().await;
}

#[tokio::test]
async fn sqlite_claims_stop_at_the_byte_budget_and_withhold_oversized_payloads() {
    claims_stop_at_the_byte_budget_and_withhold_oversized_payloads::<TestSqlite>().await;
}
