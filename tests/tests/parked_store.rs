//! The parked-message store (`eventbus::inbox::ParkedDatabase`, table
//! `<inbox>_parked`) on PostgreSQL, MySQL and SQLite: parking and
//! redeliveries, key holds per consumer group, only the head of a key being
//! due, claims by one member, rescheduling, listing, replaying dead rows of
//! one group, and long partition keys. One scenario, run on each database.

use eventbus::inbox::{
    message_key, ParkRequest, Parked, ParkedDatabase, ParkedState, Reschedule, DEFAULT_TABLE,
};
use eventbus::{Envelope, TableName};
use eventbus_tests::mysql::TestMySql;
use eventbus_tests::sqlite::TestSqlite;
use eventbus_tests::{unique_name, TestDatabase, TestDb};
use sqlx::types::chrono::{DateTime, Utc};

const ORIGIN: &str = "orders";

/// An event of partition key `key`, with data naming it.
fn event(key: &str, n: u32) -> Envelope {
    let mut e = Envelope::new(
        "urn:service:orders",
        "com.example.order.placed",
        format!(r#"{{"n":{n}}}"#).into_bytes(),
    );
    e.partition_key = Some(key.to_owned());
    e
}

/// Now, cut to the milliseconds the table keeps.
fn now_ms() -> DateTime<Utc> {
    DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).expect("a valid time")
}

const SECOND: i64 = 1_000;
const HOUR: i64 = 3_600 * SECOND;

/// `t` moved by `ms` milliseconds.
fn shift(t: DateTime<Utc>, ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(t.timestamp_millis() + ms).expect("a valid time")
}

/// The parked table on `D`, with the calls spelled short.
struct Store<'a, D: TestDatabase> {
    db: &'a D,
    inbox: TableName,
}

impl<'a, D: TestDatabase> Store<'a, D> {
    fn new(db: &'a D) -> Self {
        Store {
            db,
            inbox: TableName::parse(DEFAULT_TABLE).expect("default inbox name"),
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn park(
        &self,
        consumer: &str,
        envelope: &Envelope,
        state: ParkedState,
        holds_key: bool,
        attempts: u32,
        due_at: DateTime<Utc>,
        reason: Option<&str>,
    ) -> bool {
        let request = ParkRequest {
            consumer,
            envelope,
            origin: ORIGIN,
            state,
            holds_key,
            attempts,
            due_at,
            reason,
        };
        D::DB::park(self.db.pool(), &self.inbox, &request)
            .await
            .unwrap_or_else(|e| panic!("{}: park: {e}", D::NAME))
    }

    async fn holds(&self, consumer: &str, key: &str) -> bool {
        D::DB::holds_key(self.db.pool(), &self.inbox, consumer, key)
            .await
            .unwrap_or_else(|e| panic!("{}: holds_key: {e}", D::NAME))
    }

    /// The ids `due_parked` returns at `now`.
    async fn due(&self, consumer: &str, now: DateTime<Utc>) -> Vec<i64> {
        D::DB::due_parked(self.db.pool(), &self.inbox, consumer, now, 100)
            .await
            .unwrap_or_else(|e| panic!("{}: due_parked: {e}", D::NAME))
            .iter()
            .map(|p| p.id)
            .collect()
    }

    async fn claim(&self, parked: &Parked, lease_until: DateTime<Utc>) -> bool {
        D::DB::claim_parked(self.db.pool(), &self.inbox, parked, lease_until)
            .await
            .unwrap_or_else(|e| panic!("{}: claim_parked: {e}", D::NAME))
    }

    /// The row's attempts now: what a claim left, to fence a write with.
    async fn claimed(&self, id: i64) -> u32 {
        self.by_id(id).await.expect("the row exists").attempts
    }

    async fn reschedule(&self, id: i64, update: &Reschedule<'_>) {
        let claimed = self.claimed(id).await;
        // A stale claim (another count) changes nothing.
        assert!(
            !D::DB::reschedule_parked(self.db.pool(), &self.inbox, id, claimed + 1, update)
                .await
                .unwrap_or_else(|e| panic!("{}: reschedule_parked: {e}", D::NAME)),
            "{}: a write fenced by a stale claim is refused",
            D::NAME
        );
        assert!(
            D::DB::reschedule_parked(self.db.pool(), &self.inbox, id, claimed, update)
                .await
                .unwrap_or_else(|e| panic!("{}: reschedule_parked: {e}", D::NAME)),
            "{}: reschedule_parked under the current claim",
            D::NAME
        );
    }

    async fn unpark(&self, id: i64) {
        let claimed = self.claimed(id).await;
        assert!(
            !D::DB::unpark(self.db.pool(), &self.inbox, id, claimed + 1)
                .await
                .unwrap_or_else(|e| panic!("{}: unpark: {e}", D::NAME)),
            "{}: a delete fenced by a stale claim is refused",
            D::NAME
        );
        assert!(
            D::DB::unpark(self.db.pool(), &self.inbox, id, claimed)
                .await
                .unwrap_or_else(|e| panic!("{}: unpark: {e}", D::NAME)),
            "{}: unpark under the current claim",
            D::NAME
        );
    }

    async fn list(&self, consumer: Option<&str>, state: Option<ParkedState>) -> Vec<Parked> {
        D::DB::list_parked(self.db.pool(), &self.inbox, consumer, state, 100)
            .await
            .unwrap_or_else(|e| panic!("{}: list_parked: {e}", D::NAME))
    }

    async fn by_id(&self, id: i64) -> Option<Parked> {
        D::DB::parked_by_id(self.db.pool(), &self.inbox, id)
            .await
            .unwrap_or_else(|e| panic!("{}: parked_by_id: {e}", D::NAME))
    }

    /// Row `id`, which must exist.
    async fn row(&self, id: i64) -> Parked {
        self.by_id(id)
            .await
            .unwrap_or_else(|| panic!("{}: no parked row {id}", D::NAME))
    }

    async fn replay(&self, consumer: &str, ids: Option<&[i64]>, now: DateTime<Utc>) -> u64 {
        D::DB::replay_dead(self.db.pool(), &self.inbox, consumer, ids, now)
            .await
            .unwrap_or_else(|e| panic!("{}: replay_dead: {e}", D::NAME))
    }

    /// Rows of `consumer`, counted in SQL of its own.
    async fn count(&self, consumer: &str) -> i64 {
        self.db
            .scalar(&format!(
                "SELECT COUNT(*) FROM {DEFAULT_TABLE}_parked WHERE consumer = '{consumer}'"
            ))
            .await
    }

    /// The id of the only row of `consumer` holding message `envelope`.
    async fn id_of(&self, consumer: &str, envelope: &Envelope) -> i64 {
        let rows: Vec<Parked> = self
            .list(Some(consumer), None)
            .await
            .into_iter()
            .filter(|p| p.envelope().expect("stored CloudEvent").id == envelope.id)
            .collect();
        assert_eq!(rows.len(), 1, "{}: rows of {}", D::NAME, envelope.id);
        rows[0].id
    }
}

/// The whole scenario on one database.
async fn parked_store<D: TestDatabase>() {
    let db = D::migrated().await;
    let store = Store::new(&db);
    let name = D::NAME;
    let group = unique_name("parked_group");
    let other = unique_name("parked_other");
    let start = now_ms();
    let now = start;

    // 1. Parking, and a redelivery of the same message.
    let first = event("k", 1);
    let key_k = message_key(&first);
    assert_eq!(key_k, "key:k");
    assert!(
        store
            .park(
                &group,
                &first,
                ParkedState::Retry,
                true,
                2,
                shift(now, HOUR),
                Some("boom")
            )
            .await,
        "{name}: a first park inserts"
    );
    assert!(
        !store
            .park(
                &group,
                &first,
                ParkedState::Retry,
                true,
                2,
                shift(now, HOUR),
                Some("boom")
            )
            .await,
        "{name}: parking the same message again is a redelivery"
    );
    assert_eq!(
        store.count(&group).await,
        1,
        "{name}: one row after the redelivery"
    );
    let first_id = store.id_of(&group, &first).await;

    // 2. Key holds, per key and per consumer group.
    assert!(store.holds(&group, &key_k).await, "{name}: k is held");
    assert!(
        !store.holds(&group, &message_key(&event("other", 0))).await,
        "{name}: another key is not held"
    );
    assert!(
        !store.holds(&other, &key_k).await,
        "{name}: another group does not share the hold"
    );

    // 3. Only due rows, and only the head of their key.
    assert!(
        store.due(&group, now).await.is_empty(),
        "{name}: nothing is due before its time"
    );
    assert_eq!(
        store.due(&group, shift(now, 2 * HOUR)).await,
        vec![first_id],
        "{name}: due once past due_at"
    );
    let second = event("k", 2);
    assert!(
        store
            .park(&group, &second, ParkedState::Waiting, true, 0, now, None)
            .await
    );
    let second_id = store.id_of(&group, &second).await;
    let third = event("j", 3);
    assert!(
        store
            .park(
                &group,
                &third,
                ParkedState::Retry,
                true,
                1,
                now,
                Some("flaky")
            )
            .await
    );
    let third_id = store.id_of(&group, &third).await;
    let dead = event("d", 4);
    assert!(
        store
            .park(
                &group,
                &dead,
                ParkedState::Dead,
                false,
                5,
                shift(now, -HOUR),
                Some("poison")
            )
            .await
    );
    let dead_id = store.id_of(&group, &dead).await;
    // The other group parks the first message too: its own dead row.
    assert!(
        store
            .park(
                &other,
                &first,
                ParkedState::Dead,
                false,
                9,
                now,
                Some("theirs")
            )
            .await,
        "{name}: another group parks the same message apart"
    );
    let other_dead_id = store.id_of(&other, &first).await;
    assert!(
        !store.holds(&other, &key_k).await,
        "{name}: the other group's dead row does not hold k"
    );
    assert_eq!(
        store.due(&group, now).await,
        vec![third_id],
        "{name}: the waiting row of k is behind the first; dead rows and other groups never due"
    );
    assert_eq!(
        store.due(&group, shift(now, 2 * HOUR)).await,
        vec![first_id, third_id],
        "{name}: past the first's due time, k's head and j are due, oldest first"
    );
    assert!(
        store.due(&other, shift(now, 2 * HOUR)).await.is_empty(),
        "{name}: a dead row is never due"
    );

    // 4. A claim by one member; a stale copy loses.
    let snapshot = store.row(first_id).await;
    assert_eq!((snapshot.attempts, snapshot.due_at), (2, shift(now, HOUR)));
    let lease_until = shift(now, 3 * HOUR + 123);
    assert!(
        store.claim(&snapshot, lease_until).await,
        "{name}: first claim"
    );
    assert!(
        !store.claim(&snapshot, lease_until).await,
        "{name}: a second claim with the stale row loses"
    );
    let claimed = store.row(first_id).await;
    assert_eq!(claimed.attempts, 3, "{name}: the claim counts an attempt");
    assert_eq!(
        claimed.due_at, lease_until,
        "{name}: due at the lease's end"
    );
    assert_eq!(claimed.state, ParkedState::Retry);
    assert_eq!(
        store.due(&group, shift(now, 2 * HOUR)).await,
        vec![third_id],
        "{name}: a leased row is not due, and k's next still waits"
    );

    // 5. The first goes dead and lets go of k: the waiting row holds it.
    store
        .reschedule(
            first_id,
            &Reschedule {
                state: ParkedState::Dead,
                holds_key: false,
                attempts: 3,
                due_at: now,
                reason: Some("gave up"),
            },
        )
        .await;
    assert!(
        store.holds(&group, &key_k).await,
        "{name}: the waiting row still holds k"
    );
    assert_eq!(
        store.due(&group, now).await,
        vec![second_id, third_id],
        "{name}: k's waiting row is now its head"
    );
    store.unpark(second_id).await;
    assert!(store.by_id(second_id).await.is_none(), "{name}: unparked");
    assert!(
        !store.holds(&group, &key_k).await,
        "{name}: nothing holds k once the waiting row is gone"
    );

    // 6. Listing.
    let dead_rows = store.list(Some(&group), Some(ParkedState::Dead)).await;
    let dead_ids: Vec<i64> = dead_rows.iter().map(|p| p.id).collect();
    assert_eq!(
        dead_ids,
        vec![first_id, dead_id],
        "{name}: the group's dead rows"
    );
    let row = &dead_rows[0];
    assert_eq!(row.consumer, group);
    assert_eq!(row.key, "key:k");
    assert_eq!(row.origin, ORIGIN);
    assert_eq!(row.state, ParkedState::Dead);
    assert!(!row.holds_key);
    assert_eq!(row.attempts, 3);
    assert_eq!(row.reason.as_deref(), Some("gave up"));
    assert!(
        row.parked_at >= shift(start, -SECOND) && row.parked_at <= now_ms(),
        "{name}: parked_at {} is the time of parking (start {start})",
        row.parked_at
    );
    let back = row.envelope().expect("the stored event is a CloudEvent");
    assert_eq!(back.id, first.id);
    assert_eq!(back.data, first.data);
    assert_eq!(back.partition_key, first.partition_key);
    assert_eq!(dead_rows[1].reason.as_deref(), Some("poison"));
    assert_eq!(dead_rows[1].attempts, 5);

    let all = store.list(None, None).await;
    let all_ids: Vec<i64> = all.iter().map(|p| p.id).collect();
    let mut expected = vec![first_id, third_id, dead_id, other_dead_id];
    expected.sort_unstable();
    assert_eq!(all_ids, expected, "{name}: every group's rows, by id");
    assert!(all.iter().any(|p| p.consumer == other));
    assert_eq!(
        D::DB::list_parked(db.pool(), &store.inbox, None, None, 2)
            .await
            .expect("list with a limit")
            .len(),
        2,
        "{name}: the limit is kept"
    );

    // 7. Replaying dead rows reaches one group only.
    let replay_at = shift(now, 300 * SECOND + 7);
    assert_eq!(store.replay(&group, Some(&[first_id]), replay_at).await, 1);
    assert_eq!(
        store
            .replay(&group, Some(&[other_dead_id]), replay_at)
            .await,
        0,
        "{name}: another group's dead row is not replayed"
    );
    assert_eq!(
        store.replay(&group, Some(&[third_id]), replay_at).await,
        0,
        "{name}: a row that is not dead is not replayed"
    );
    let replayed = store.row(first_id).await;
    assert_eq!(replayed.state, ParkedState::Retry);
    assert_eq!(replayed.attempts, 0);
    assert!(replayed.holds_key);
    assert_eq!(replayed.due_at, replay_at);
    assert!(
        store.holds(&group, &key_k).await,
        "{name}: a replayed row holds k"
    );
    assert_eq!(store.row(other_dead_id).await.state, ParkedState::Dead);

    assert_eq!(
        store.replay(&group, None, replay_at).await,
        1,
        "{name}: all of the group's remaining dead rows"
    );
    assert_eq!(store.row(dead_id).await.state, ParkedState::Retry);
    assert_eq!(
        store.row(other_dead_id).await.state,
        ParkedState::Dead,
        "{name}: the other group's dead row stays"
    );
    assert!(
        store
            .list(Some(&group), Some(ParkedState::Dead))
            .await
            .is_empty(),
        "{name}: no dead rows left in the group"
    );

    // 8. Long partition keys: shortened with a hash, still apart.
    let long = "é".repeat(400);
    let long_a = event(&long, 10);
    let long_b = event(&format!("{}e", "é".repeat(399)), 11);
    let (key_a, key_b) = (message_key(&long_a), message_key(&long_b));
    assert_ne!(key_a, key_b, "{name}: long keys differing at the end");
    assert!(
        key_a.chars().count() <= 255,
        "{name}: {key_a} fits the column"
    );
    let late = shift(now, 10 * HOUR);
    assert!(
        store
            .park(&group, &long_a, ParkedState::Retry, true, 1, late, None)
            .await,
        "{name}: a long key parks"
    );
    assert!(
        store.holds(&group, &key_a).await,
        "{name}: a long key holds"
    );
    assert!(
        !store.holds(&group, &key_b).await,
        "{name}: a long key differing at the end is not held"
    );
    assert!(
        store
            .park(&group, &long_b, ParkedState::Retry, true, 1, late, None)
            .await
    );
    let (id_a, id_b) = (
        store.id_of(&group, &long_a).await,
        store.id_of(&group, &long_b).await,
    );
    let stored = store.row(id_a).await;
    assert_eq!(stored.key, key_a, "{name}: the stored key is message_key");
    assert_eq!(
        stored
            .envelope()
            .expect("CloudEvent")
            .partition_key
            .as_deref(),
        Some(long.as_str()),
        "{name}: the event keeps the whole key"
    );
    let due_late: Vec<i64> = store
        .due(&group, late)
        .await
        .into_iter()
        .filter(|id| [id_a, id_b].contains(id))
        .collect();
    assert_eq!(
        due_late,
        vec![id_a, id_b],
        "{name}: two long keys are two queues, each its own head"
    );
}

#[tokio::test]
async fn parked_store_on_postgres() {
    parked_store::<TestDb>().await;
}

#[tokio::test]
async fn parked_store_on_mysql() {
    parked_store::<TestMySql>().await;
}

#[tokio::test]
async fn parked_store_on_sqlite() {
    parked_store::<TestSqlite>().await;
}
