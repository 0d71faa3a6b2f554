//! `outbox-relay sagas list|show` on PostgreSQL, MySQL and SQLite: instances
//! started with `Sagas::start`, then moved on (versions, times, a completion,
//! pending timeouts) with plain SQL, are summarized per saga and status,
//! listed newest change first and filtered as asked; `show` prints one
//! instance whole, and fails for one that does not exist.

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use eventbus::saga::{Saga, SagaDatabase, Sagas};
use eventbus_tests::backend::TestDatabase;
use eventbus_tests::harness;
use eventbus_tests::mysql::TestMySql;
use eventbus_tests::sqlite::TestSqlite;
use eventbus_tests::TestDb;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The binary under test.
const BIN: &str = env!("CARGO_BIN_EXE_outbox-relay");

/// The timeouts' event type.
const PAYMENT_DUE: &str = "com.example.checkout.payment_due";

// Fields in alphabetical order: the state comes back as a JSON object whose
// key order is then the same whichever way serde_json keeps maps.
#[derive(Serialize, Deserialize)]
struct Checkout {
    items: Vec<String>,
    paid: bool,
}

impl Saga for Checkout {
    const NAME: &'static str = "checkout";
}

#[derive(Serialize, Deserialize)]
struct Shipping {
    parcels: u32,
}

impl Saga for Shipping {
    const NAME: &'static str = "shipping";
}

/// What the seed wrote that the output must show.
struct Seeded {
    /// When `checkout/o-1` started.
    o1_started: DateTime<Utc>,
    /// `checkout/o-1`'s timeouts, the sooner first: (id, due).
    o1_timeouts: [(Uuid, DateTime<Utc>); 2],
    /// When `checkout/o-3` completed.
    o3_completed: DateTime<Utc>,
}

/// Starts four instances and moves them on: `checkout/o-1` active since 2
/// days 3 hours, changed 5 hours ago, version 2, waiting for two timeouts
/// (due in 1 and 2 days); `checkout/o-2` just started; `checkout/o-3`
/// started 8 hours ago, completed 4 hours ago, version 3; `shipping/s-1`
/// started 6 hours ago, changed 2 hours ago. (Whole hours: what the command
/// prints of them stays the same for the minute the test takes.)
async fn seed<D: TestDatabase>(db: &D) -> Seeded
where
    D::DB: SagaDatabase,
{
    let sagas = Sagas::new();
    let mut tx = db.pool().begin().await.expect("begin");
    for id in ["o-1", "o-2", "o-3"] {
        let state = Checkout {
            items: vec!["mug".into(), "grinder".into()],
            paid: false,
        };
        assert!(sagas.start(&mut tx, id, &state).await.expect("start"));
    }
    assert!(sagas
        .start(&mut tx, "s-1", &Shipping { parcels: 2 })
        .await
        .expect("start"));
    tx.commit().await.expect("commit");

    let now = Utc::now();
    let ms = |ago: TimeDelta| (now - ago).timestamp_millis();
    let o1_started = now - TimeDelta::hours(51);
    let o1_timeouts = [
        (Uuid::new_v4(), now + TimeDelta::days(1)),
        (Uuid::new_v4(), now + TimeDelta::days(2)),
    ];
    // Written the later first: the output orders them by due time.
    let timeouts = format!(
        r#"[{{"id":"{}","type":"{PAYMENT_DUE}","due_ms":{}}},{{"id":"{}","type":"{PAYMENT_DUE}","due_ms":{}}}]"#,
        o1_timeouts[1].0,
        o1_timeouts[1].1.timestamp_millis(),
        o1_timeouts[0].0,
        o1_timeouts[0].1.timestamp_millis(),
    );
    let o3_completed = now - TimeDelta::hours(4);
    for sql in [
        format!(
            "UPDATE eventbus_sagas SET version = 2, timeouts = '{timeouts}', started_at = {}, \
             updated_at = {} WHERE saga = 'checkout' AND instance_id = 'o-1'",
            o1_started.timestamp_millis(),
            ms(TimeDelta::hours(5)),
        ),
        format!(
            "UPDATE eventbus_sagas SET version = 3, status = 'completed', started_at = {}, \
             updated_at = {c}, completed_at = {c} WHERE saga = 'checkout' AND instance_id = 'o-3'",
            ms(TimeDelta::hours(8)),
            c = o3_completed.timestamp_millis(),
        ),
        format!(
            "UPDATE eventbus_sagas SET started_at = {}, updated_at = {} \
             WHERE saga = 'shipping' AND instance_id = 's-1'",
            ms(TimeDelta::hours(6)),
            ms(TimeDelta::hours(2)),
        ),
    ] {
        assert_eq!(db.execute(&sql).await.expect(&sql), 1, "{sql}");
    }
    Seeded {
        o1_started,
        o1_timeouts,
        o3_completed,
    }
}

/// A time as the command prints it.
fn stamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// `sagas list` output cut up: the summary rows and the instance rows as
/// words (headers dropped), and the closing line.
struct Listing {
    summary: Vec<Vec<String>>,
    instances: Vec<Vec<String>>,
    footer: String,
    text: String,
}

impl Listing {
    fn parse(text: String) -> Self {
        let words = |line: &str| line.split_whitespace().map(str::to_owned).collect();
        let (summary, rest) = text
            .split_once("\n\n")
            .unwrap_or_else(|| panic!("a summary, a blank line, the instances:\n{text}"));
        let summary: Vec<Vec<String>> = summary.lines().skip(1).map(words).collect();
        let mut lines: Vec<&str> = rest.lines().collect();
        let footer = lines.pop().unwrap_or_default().to_owned();
        let instances = lines.iter().skip(1).map(|l| words(l)).collect();
        assert!(
            summary.iter().all(|r| r.len() >= 5)
                && lines.first().is_some_and(|h| h.starts_with("SAGA")),
            "a header above each part:\n{text}"
        );
        Listing {
            summary,
            instances,
            footer,
            text,
        }
    }

    /// The summary's (saga, status, instances, timeouts).
    fn counts(&self) -> Vec<[&str; 4]> {
        self.summary
            .iter()
            .map(|r| [&*r[0], &*r[1], &*r[2], &*r[3]])
            .collect()
    }

    /// The listed instances' `saga/id`, in order.
    fn ids(&self) -> Vec<String> {
        self.instances
            .iter()
            .map(|r| format!("{}/{}", r[0], r[1]))
            .collect()
    }

    /// The line of instance `id`, as words.
    fn row(&self, id: &str) -> &[String] {
        self.instances
            .iter()
            .find(|r| r[1] == id)
            .unwrap_or_else(|| panic!("no line for {id}:\n{}", self.text))
    }
}

async fn list(url: &str, filters: &[&str]) -> Listing {
    let mut args = vec!["sagas", "list", "--database-url", url];
    args.extend_from_slice(filters);
    Listing::parse(harness::cli_ok(BIN, &args).await)
}

async fn sagas_scenario<D: TestDatabase>()
where
    D::DB: SagaDatabase,
{
    let db = D::migrated().await;
    let empty = harness::cli_ok(BIN, &["sagas", "list", "--database-url", db.url()]).await;
    assert_eq!(empty.trim(), "no saga instances in eventbus_sagas match");

    let seeded = seed(&db).await;

    // Everything: the summary per saga and status, the instances newest
    // change first.
    let all = list(db.url(), &[]).await;
    assert_eq!(
        all.counts(),
        vec![
            ["checkout", "active", "2", "2"],
            ["checkout", "completed", "1", "0"],
            ["shipping", "active", "1", "0"],
        ],
        "{}",
        all.text
    );
    assert_eq!(
        all.summary[0][4],
        stamp(seeded.o1_started),
        "the oldest active checkout started with o-1:\n{}",
        all.text
    );
    assert_eq!(
        all.ids(),
        [
            "checkout/o-2",
            "shipping/s-1",
            "checkout/o-3",
            "checkout/o-1"
        ],
        "{}",
        all.text
    );
    assert_eq!(all.footer, "4 instances shown");
    // saga, id, status, version, age, changed, timeouts, next due.
    let o1 = all.row("o-1");
    assert_eq!(
        o1[..8],
        ["checkout", "o-1", "active", "2", "2d3h", "5h0m", "ago", "2"],
        "{}",
        all.text
    );
    assert_eq!(
        o1[8..11],
        [&stamp(seeded.o1_timeouts[0].1), "(in", "23h59m)"],
        "the sooner timeout is the next due:\n{}",
        all.text
    );
    assert_eq!(
        all.row("o-3"),
        [
            "checkout",
            "o-3",
            "completed",
            "3",
            "8h0m",
            "4h0m",
            "ago",
            "0",
            "-"
        ]
    );
    assert_eq!(
        all.row("s-1"),
        ["shipping", "s-1", "active", "1", "6h0m", "2h0m", "ago", "0", "-"]
    );

    // Filters apply to the summary and the list alike.
    let active = list(db.url(), &["--saga", "checkout", "--status", "active"]).await;
    assert_eq!(active.counts(), vec![["checkout", "active", "2", "2"]]);
    assert_eq!(active.ids(), ["checkout/o-2", "checkout/o-1"]);
    let completed = list(db.url(), &["--status", "completed"]).await;
    assert_eq!(
        completed.counts(),
        vec![["checkout", "completed", "1", "0"]]
    );
    assert_eq!(completed.ids(), ["checkout/o-3"]);
    let newest = list(db.url(), &["--limit", "1"]).await;
    assert_eq!(newest.ids(), ["checkout/o-2"]);
    assert_eq!(newest.counts().len(), 3, "the summary counts them all");
    assert_eq!(
        newest.footer,
        "1 instance shown (the 1 most recently changed; --limit for more)"
    );

    // One instance whole: times, timeouts by due time, the state as JSON.
    let show = |id: &'static str| {
        let url = db.url().to_owned();
        async move {
            harness::cli_ok(
                BIN,
                &["sagas", "show", "checkout", id, "--database-url", &url],
            )
            .await
        }
    };
    let o1 = show("o-1").await;
    let lines: Vec<&str> = o1.lines().collect();
    assert_eq!(
        lines[..4],
        [
            "saga:         checkout",
            "instance:     o-1",
            "status:       active",
            "version:      2"
        ],
        "{o1}"
    );
    assert_eq!(
        lines[4],
        format!("started at:   {} (2d3h ago)", stamp(seeded.o1_started))
    );
    assert!(
        lines[5].starts_with("updated at:   ") && lines[5].ends_with(" (5h0m ago)"),
        "{o1}"
    );
    assert_eq!(lines[6], "completed at: -");
    assert_eq!(lines[7], "timeouts:     2");
    for (line, (id, due)) in lines[8..10].iter().zip(&seeded.o1_timeouts) {
        let expected = format!("  {id}  {PAYMENT_DUE}  due {} (in ", stamp(*due));
        assert!(
            line.starts_with(&expected),
            "{line:?} starts with {expected:?}:\n{o1}"
        );
    }
    assert_eq!(
        lines[10..].join("\n"),
        "state:\n{\n  \"items\": [\n    \"mug\",\n    \"grinder\"\n  ],\n  \"paid\": false\n}",
        "{o1}"
    );
    let o3 = show("o-3").await;
    assert!(
        o3.contains("status:       completed\nversion:      3\n"),
        "{o3}"
    );
    assert!(
        o3.contains(&format!(
            "completed at: {} (4h0m ago)\ntimeouts:     0\nstate:\n",
            stamp(seeded.o3_completed)
        )),
        "{o3}"
    );

    // No such instance: said so, exit status 1.
    let missing = harness::output(
        BIN,
        &[
            "sagas",
            "show",
            "checkout",
            "o-404",
            "--database-url",
            db.url(),
        ],
    )
    .await;
    assert!(!missing.status.success(), "{}", harness::text(&missing));
    assert!(missing.stdout.is_empty(), "{}", harness::text(&missing));
    assert!(
        String::from_utf8_lossy(&missing.stderr)
            .contains("saga `checkout`, instance `o-404`: no such instance in eventbus_sagas"),
        "{}",
        harness::text(&missing)
    );

    // Another table: one that does not exist is named as such.
    let other = harness::output(
        BIN,
        &[
            "sagas",
            "list",
            "--table",
            "shop_sagas",
            "--database-url",
            db.url(),
        ],
    )
    .await;
    assert!(!other.status.success(), "{}", harness::text(&other));
    assert!(
        harness::text(&other).contains("shop_sagas does not exist"),
        "{}",
        harness::text(&other)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sagas_list_and_show_on_postgres() {
    sagas_scenario::<TestDb>().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sagas_list_and_show_on_mysql() {
    sagas_scenario::<TestMySql>().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sagas_list_and_show_on_sqlite() {
    sagas_scenario::<TestSqlite>().await;
}

/// `--status` takes the two statuses only.
#[tokio::test]
async fn sagas_list_refuses_an_unknown_status() {
    let out = harness::output(BIN, &["sagas", "list", "--status", "stuck"]).await;
    assert!(!out.status.success());
    assert!(
        harness::text(&out).contains("possible values: active, completed"),
        "{}",
        harness::text(&out)
    );
}

/// `migrate --saga-table` creates the saga table under that name, where
/// `Sagas::table` and `sagas list --table` find it.
#[tokio::test]
async fn migrate_creates_the_saga_table_it_is_given() {
    let db = TestSqlite::new().await;
    harness::cli_ok(
        BIN,
        &[
            "migrate",
            "--database-url",
            db.url(),
            "--saga-table",
            "checkout_sagas",
        ],
    )
    .await;
    let sagas = Sagas::new().table("checkout_sagas").expect("a valid name");
    let mut tx = db.pool().begin().await.expect("begin");
    assert!(sagas
        .start(
            &mut tx,
            "o-9",
            &Checkout {
                items: vec!["book".into()],
                paid: false,
            },
        )
        .await
        .expect("start in the table migrate created"));
    tx.commit().await.expect("commit");
    let listing = list(db.url(), &["--table", "checkout_sagas"]).await;
    assert_eq!(listing.ids(), ["checkout/o-9"], "{}", listing.text);
}
