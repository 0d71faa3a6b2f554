//! The relay store on its own: claiming in order behind failures, fencing
//! every write on the lease, membership.

use super::*;

/// The (id, key, seq) of claimed rows, in claim order.
async fn claim(store: &dyn RelayStore, relay: Uuid, partitions: &[i32]) -> Vec<(i64, String, u64)> {
    store
        .claim(relay, partitions, ClaimLimits::rows(100), &[])
        .await
        .expect("claim")
        .iter()
        .map(|r| {
            let s: Step = serde_json::from_str(&r.payload).expect("a Step");
            (r.id, s.key, s.seq)
        })
        .collect()
}

/// Claims until something comes back (at most 20 s): on PostgreSQL a fresh
/// row is held back while any older transaction of the server is open.
async fn claim_fresh(
    store: &dyn RelayStore,
    relay: Uuid,
    partitions: &[i32],
) -> Vec<(i64, String, u64)> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let rows = claim(store, relay, partitions).await;
        if !rows.is_empty() || Instant::now() > deadline {
            return rows;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `partitions` in ascending order (PostgreSQL returns them in row order).
fn sorted(leases: &[Lease]) -> Vec<i32> {
    let mut partitions: Vec<i32> = leases.iter().map(|l| l.partition).collect();
    partitions.sort_unstable();
    partitions
}

fn names(rows: &[(i64, String, u64)]) -> Vec<String> {
    rows.iter().map(|(_, k, s)| format!("{k}{s}")).collect()
}

fn rejection(id: i64, park: bool, retry_in: Duration) -> Rejection {
    Rejection {
        id,
        park,
        retry_in,
        error: "broker said no".into(),
    }
}

/// The relay store against a real database: membership, leases that cannot
/// be taken while held and can once expired, claiming in id order behind
/// failed and retrying rows of the same key only, every row write fenced on
/// the lease, retries due only when due, parking, statistics, retention.
pub async fn store_claims_in_order_behind_failures_and_fences_every_write<D: TestDatabase>() {
    let db = D::migrated().await;
    publish_steps(
        db.pool(),
        &[
            step("a", 0),
            step("b", 0),
            step("a", 1),
            step("b", 1),
            step("a", 2),
        ],
        5,
    )
    .await;
    let store = D::relay_store(db.pool());
    let all = store.partitions().await.expect("partitions");
    assert_eq!(all.len(), D::PARTITIONS as usize);
    let ttl = Duration::from_secs(30);
    let (r1, r2) = (Uuid::now_v7(), Uuid::now_v7());
    assert_eq!(store.heartbeat(r1, "one", ttl).await.expect("hb"), [r1]);
    assert_eq!(store.heartbeat(r2, "two", ttl).await.expect("hb"), [r1, r2]);
    let first = store.acquire(r1, &all, ttl).await.expect("acquire");
    assert_eq!(sorted(&first), all);
    assert!(
        store
            .acquire(r2, &all, ttl)
            .await
            .expect("acquire")
            .is_empty(),
        "a held lease cannot be taken"
    );
    let rows = claim_fresh(store.as_ref(), r1, &all).await;
    assert_eq!(names(&rows), ["a0", "b0", "a1", "b1", "a2"], "id order");
    assert!(
        store
            .claim(r2, &all, ClaimLimits::rows(100), &[])
            .await
            .expect("claim")
            .is_empty(),
        "nothing is claimed without the lease"
    );
    let id = |name: &str| {
        rows.iter()
            .find(|(_, k, s)| format!("{k}{s}") == name)
            .map(|(id, _, _)| *id)
            .expect("row present")
    };

    // A retrying row holds back the later rows of its key only.
    store
        .reject(
            r1,
            &first,
            &[rejection(id("a0"), false, Duration::from_secs(3600))],
        )
        .await
        .expect("reject");
    assert_eq!(names(&claim(store.as_ref(), r1, &all).await), ["b0", "b1"]);

    // Writes are fenced: a relay without the lease changes nothing.
    assert_eq!(
        store
            .acknowledge(r2, &first, &[id("b0")], Retention::Delete)
            .await
            .expect("ack"),
        0
    );
    store
        .reject(r2, &first, &[rejection(id("b1"), true, Duration::ZERO)])
        .await
        .expect("fenced reject");
    assert_eq!(names(&claim(store.as_ref(), r1, &all).await), ["b0", "b1"]);

    // Acknowledged rows leave: deleted, or kept as published.
    assert_eq!(
        store
            .acknowledge(r1, &first, &[id("b0")], Retention::Delete)
            .await
            .expect("ack"),
        1
    );
    let keep = Retention::Keep(Duration::from_secs(3600));
    assert_eq!(
        store
            .acknowledge(r1, &first, &[id("b1")], keep)
            .await
            .expect("ack"),
        1
    );
    assert!(claim(store.as_ref(), r1, &all).await.is_empty());

    // Parking keeps the key blocked; statistics see it.
    store
        .reject(r1, &first, &[rejection(id("a0"), true, Duration::ZERO)])
        .await
        .expect("park");
    let row = |column: &str| {
        format!(
            "SELECT {column} FROM eventbus_outbox WHERE id = {}",
            id("a0")
        )
    };
    assert_eq!(
        db.texts(&row("state")).await,
        [Some("failed".to_owned())],
        "parked"
    );
    assert_eq!(db.scalar(&row("attempts")).await, 2);
    assert_eq!(
        db.texts(&row("last_error")).await,
        [Some("broker said no".to_owned())]
    );
    let snap = store.stats(&all).await.expect("stats");
    assert_eq!(snap.backlog.values().sum::<u64>(), 2, "a1 and a2 wait");
    assert_eq!(snap.parked_rows, 1);
    assert_eq!(snap.held_back_seconds, 0.0);
    assert!(
        (0.0..60.0).contains(&snap.oldest_pending_seconds),
        "{}",
        snap.oldest_pending_seconds
    );

    // A retry is claimed again once it is due, not before.
    publish_steps(db.pool(), &[step("c", 0)], 1).await;
    let c0 = claim_fresh(store.as_ref(), r1, &all).await;
    assert_eq!(names(&c0), ["c0"]);
    store
        .reject(
            r1,
            &first,
            &[rejection(c0[0].0, false, Duration::from_millis(400))],
        )
        .await
        .expect("reject");
    assert!(
        claim(store.as_ref(), r1, &all).await.is_empty(),
        "not due yet"
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    let again = store
        .claim(r1, &all, ClaimLimits::rows(100), &[])
        .await
        .expect("claim");
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].attempts, 1);

    // Retention: kept rows go once older than the window, in batches.
    assert_eq!(
        store
            .delete_published(Duration::from_secs(3600), 100)
            .await
            .expect("cleanup"),
        0
    );
    assert_eq!(
        store
            .delete_published(Duration::ZERO, 100)
            .await
            .expect("cleanup"),
        1
    );

    // Releasing hands the partitions over; an expired lease can be taken.
    store.release(r1, &all).await.expect("release");
    assert_eq!(
        sorted(
            &store
                .acquire(r2, &all, Duration::from_millis(300))
                .await
                .expect("acquire")
        ),
        all
    );
    assert!(store.renew(r1, &all, ttl).await.expect("renew").is_empty());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let again = store.acquire(r1, &all, ttl).await.expect("take over");
    assert_eq!(sorted(&again), all, "an expired lease is free");
    assert!(store.renew(r2, &all, ttl).await.expect("renew").is_empty());
    assert_eq!(
        sorted(&store.renew(r1, &all, ttl).await.expect("renew")),
        all
    );

    // Writes are fenced on the tenure too: r1 holds the partitions again, but
    // a write from its first tenure (a batch claimed before it lost them)
    // changes nothing.
    assert!(
        again.iter().all(|l| first
            .iter()
            .any(|f| f.partition == l.partition && f.epoch < l.epoch)),
        "every acquisition starts a new epoch: {first:?} then {again:?}"
    );
    assert_eq!(
        store
            .acknowledge(r1, &again, &[c0[0].0], Retention::Delete)
            .await
            .expect("ack the retried row"),
        1
    );
    publish_steps(db.pool(), &[step("d", 0)], 1).await;
    let d0 = claim_fresh(store.as_ref(), r1, &all).await;
    assert_eq!(names(&d0), ["d0"]);
    assert_eq!(
        store
            .acknowledge(r1, &first, &[d0[0].0], Retention::Delete)
            .await
            .expect("stale ack"),
        0,
        "an acknowledgement from an earlier tenure is refused"
    );
    store
        .reject(r1, &first, &[rejection(d0[0].0, true, Duration::ZERO)])
        .await
        .expect("stale reject");
    assert_eq!(names(&claim(store.as_ref(), r1, &all).await), ["d0"]);
    assert_eq!(
        store
            .acknowledge(r1, &again, &[d0[0].0], Retention::Delete)
            .await
            .expect("ack"),
        1
    );

    store.deregister(r1).await.expect("deregister");
    assert_eq!(store.heartbeat(r2, "two", ttl).await.expect("hb"), [r2]);
}
