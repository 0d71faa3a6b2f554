//! `outbox-relay dlq …` against RabbitMQ and PostgreSQL: `redrive` sends a
//! group's broker dead letters back to the destination they came from (so
//! every group gets them again); `import` + `replay` send them back to the
//! group that gave up on them only; `list`, `show` and `replay` of dead
//! letters kept in the parked table (`DeadLetterKeys::Block`).

use std::sync::Arc;
use std::time::Duration;

use eventbus::consumer::{
    dead_letter, Consumer, Context, DeadLetterKeys, DeliveryMode, RetryPolicy,
};
use eventbus::transport::rabbitmq::{RabbitPublisher, RabbitSubscriber};
use eventbus::transport::Subscriber;
use eventbus::{BoxError, Envelope, OutgoingMessage, Publisher};
use eventbus_tests::consumer::{
    create_effects, envelope, publish, record, run, scalar, wait_count, wait_until, Running,
};
use eventbus_tests::harness::cli_ok;
use eventbus_tests::rabbitmq::{self, TestQueue};
use eventbus_tests::relay::Step;
use eventbus_tests::{amqp_url, unique_name, TestDb};
use sqlx::{PgPool, Postgres};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_redrive_sends_dead_letters_back_to_their_origin() {
    let url = amqp_url().await;
    let origin = unique_name("orders");
    let dead = dead_letter::destination_of(&origin, "billing");
    let group = unique_name("replay");
    // The replay group's queue must exist before dead letters arrive.
    let mut queue = RabbitSubscriber::builder(url.clone())
        .group(group.clone())
        .bind_all(dead.clone())
        .connect()
        .await
        .expect("declare the replay queue");
    queue.close().await.expect("close");
    let mut target = TestQueue::bind_all(&origin).await;

    let mut original = Envelope::new(
        "urn:test",
        "com.example.order.placed",
        br#"{"n":1}"#.to_vec(),
    );
    original.partition_key = Some("k".into());
    let mut letter = original.clone();
    for (k, v) in [
        (dead_letter::ORIGIN, origin.as_str()),
        (dead_letter::REASON, "handler failed: boom"),
        (dead_letter::ATTEMPTS, "3"),
        (dead_letter::GROUP, "billing"),
    ] {
        letter.extensions.insert(k.into(), v.into());
    }
    let publisher = RabbitPublisher::connect(&url).await.expect("connect");
    let sent = publisher
        .publish_batch(&[OutgoingMessage {
            destination: dead.clone(),
            envelope: letter,
        }])
        .await;
    assert!(sent.iter().all(Result::is_ok), "{sent:?}");

    let stdout = cli_ok(
        env!("CARGO_BIN_EXE_outbox-relay"),
        &[
            "dlq",
            "redrive",
            &origin,
            "--consumer",
            "billing",
            "--broker",
            &url,
            "--reader",
            &group,
            "--idle-ms",
            "1500",
        ],
    )
    .await;
    assert!(stdout.contains("1 re-driven"), "{stdout}");
    assert!(!stdout.contains("guest:guest"), "no credentials in output");

    let back = target.read_envelopes(1, Duration::from_secs(10)).await;
    assert_eq!(back[0].id, original.id);
    assert_eq!(back[0].data, original.data);
    let extensions: Vec<&String> = back[0].extensions.keys().collect();
    assert_eq!(
        extensions,
        [eventbus::consumer::dead_letter::REDRIVEN_AT],
        "dead-letter attributes removed, the re-drive marked: {:?}",
        back[0].extensions
    );
    target.delete().await;
    rabbitmq::delete_group(&group).await;
    rabbitmq::delete_exchange(&dead).await;
    rabbitmq::delete_exchange(&origin).await;
}

// ------------------------------------------------------------ per-group replay

/// The effect label of the billing group's handler.
const BILLING: &str = "billing";
/// The effect label of the shipping group's handler.
const SHIPPING: &str = "shipping";

/// `outbox-relay --database-url <url> <args…>`; panics unless it succeeds.
/// Returns its standard output.
async fn relay_cli(database_url: &str, args: &[&str]) -> String {
    let mut all = vec!["--database-url", database_url];
    all.extend_from_slice(args);
    cli_ok(env!("CARGO_BIN_EXE_outbox-relay"), &all).await
}

/// One line of `dlq list`.
#[derive(Debug)]
struct Listed {
    id: i64,
    consumer: String,
    state: String,
    key: String,
    reason: String,
}

/// The rows of `dlq list` output, below its header.
fn listed(stdout: &str) -> Vec<Listed> {
    let mut lines = stdout.lines();
    assert_eq!(
        lines.next(),
        Some("id\tconsumer\tstate\tattempts\tparked_at\tkey\ttype\treason"),
        "{stdout}"
    );
    lines
        .map(|line| {
            let cols: Vec<&str> = line.split('\t').collect();
            assert_eq!(cols.len(), 8, "{line}");
            Listed {
                id: cols[0].parse().expect("a numeric id"),
                consumer: cols[1].to_owned(),
                state: cols[2].to_owned(),
                key: cols[5].to_owned(),
                reason: cols[7].to_owned(),
            }
        })
        .collect()
}

/// Creates the `fail` table: events listed there make billing's handler
/// fail, until the test deletes the row (the fix).
async fn create_fail_table(pool: &PgPool) {
    sqlx::query("CREATE TABLE fail (event_id text PRIMARY KEY)")
        .execute(pool)
        .await
        .expect("create fail");
}

async fn mark_failing(pool: &PgPool, event: &Envelope) {
    sqlx::query("INSERT INTO fail (event_id) VALUES ($1)")
        .bind(&event.id)
        .execute(pool)
        .await
        .expect("mark the event failing");
}

async fn fix(pool: &PgPool) {
    sqlx::query("DELETE FROM fail")
        .execute(pool)
        .await
        .expect("fix: delete the fail rows");
}

/// Billing's handler: fails while the event is listed in `fail`, otherwise
/// writes its effect in the handler's transaction.
async fn bill(ctx: &Context<Postgres>, step: &Step) -> Result<(), BoxError> {
    let failing: bool = {
        let mut tx = ctx.tx().await?;
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM fail WHERE event_id = $1)")
            .bind(&ctx.envelope().id)
            .fetch_one(&mut **tx)
            .await?
    };
    if failing {
        return Err(format!("billing cannot take {} yet", ctx.envelope().id).into());
    }
    record(ctx, BILLING, step).await
}

/// The billing consumer: effectively once, no retries (the first failure
/// dead-letters), dead letters per `keys`.
async fn billing_consumer(
    pool: &PgPool,
    url: &str,
    group: &str,
    destination: &str,
    publisher: &Arc<dyn Publisher>,
    keys: DeadLetterKeys,
) -> Running {
    let consumer = Consumer::builder(group)
        .retry(RetryPolicy::none())
        .dead_letter_keys(keys)
        .parked_poll_interval(Duration::from_millis(50))
        .on(|ctx: Context<Postgres>, step: Step| async move { bill(&ctx, &step).await })
        .build(
            pool.clone(),
            rabbitmq::subscriber(url, group, &[destination], 16).await,
            Arc::clone(publisher),
        )
        .expect("billing consumer");
    run(consumer)
}

/// How many effects `member` wrote per event id, by event id.
async fn effects_of(pool: &PgPool, member: &str) -> Vec<(String, i64)> {
    sqlx::query_as(
        "SELECT event_id, count(*) FROM effects WHERE member = $1 GROUP BY event_id \
         ORDER BY event_id",
    )
    .bind(member)
    .fetch_all(pool)
    .await
    .expect("read effects")
}

/// `member`'s effects of event `id`.
fn effects_sql(member: &str, id: &str) -> String {
    format!("SELECT count(*) FROM effects WHERE member = '{member}' AND event_id = '{id}'")
}

/// Parked rows of `group` (the default inbox's parked table).
fn parked_sql(group: &str) -> String {
    format!("SELECT count(*) FROM eventbus_inbox_parked WHERE consumer = '{group}'")
}

/// Two consumer groups on one exchange — billing (effectively once, dead
/// letters to the broker) and shipping (at least once: a second delivery is
/// a second effect) — after four events, one of which (`x`) billing failed
/// and dead-lettered to its broker destination `dlq`.
struct TwoGroups {
    db: TestDb,
    url: String,
    destination: String,
    billing: String,
    shipping: String,
    dlq: String,
    events: Vec<Envelope>,
    x: Envelope,
    billing_run: Running,
    shipping_run: Running,
}

impl TwoGroups {
    async fn start(tag: &str) -> Self {
        let db = TestDb::migrated().await;
        create_effects(&db.pool).await;
        create_fail_table(&db.pool).await;
        let url = amqp_url().await;
        let destination = unique_name(tag);
        let billing = unique_name("billing");
        let shipping = unique_name("shipping");
        let dlq = dead_letter::destination_of(&destination, &billing);
        let publisher: Arc<dyn Publisher> = Arc::new(
            RabbitPublisher::connect(&url)
                .await
                .expect("connect to RabbitMQ"),
        );
        let events: Vec<Envelope> = (0..4)
            .map(|i| {
                envelope(&Step {
                    key: format!("order-{i}"),
                    seq: 1,
                    pad: String::new(),
                })
            })
            .collect();
        let x = events[1].clone();
        mark_failing(&db.pool, &x).await;

        // Both groups' queues are declared (by their subscribers) before
        // anything is published: RabbitMQ drops what no queue is bound for.
        let billing_run = billing_consumer(
            &db.pool,
            &url,
            &billing,
            &destination,
            &publisher,
            DeadLetterKeys::Continue,
        )
        .await;
        let shipping_consumer =
            Consumer::builder(shipping.clone())
                .mode(DeliveryMode::AtLeastOnce)
                .on(|ctx: Context<Postgres>, step: Step| async move {
                    record(&ctx, SHIPPING, &step).await
                })
                .build(
                    db.pool.clone(),
                    rabbitmq::subscriber(&url, &shipping, &[&destination], 16).await,
                    Arc::clone(&publisher),
                )
                .expect("shipping consumer");
        let shipping_run = run(shipping_consumer);
        publish(publisher.as_ref(), &destination, &events).await;

        wait_until(
            "billing handles 3 and dead-letters x, shipping handles 4",
            Duration::from_secs(30),
            || {
                let (b, s) = (
                    billing_run.consumer.metrics(),
                    shipping_run.consumer.metrics(),
                );
                b.handled() >= 3 && b.dead_lettered() >= 1 && s.handled() >= 4
            },
        )
        .await;
        let b = billing_run.consumer.metrics();
        assert_eq!((b.handled(), b.dead_lettered()), (3, 1), "{b:?}");
        // Dead-lettered to the broker (the default), not kept in the table.
        assert_eq!(scalar(&db.pool, &parked_sql(&billing)).await, 0);
        assert_eq!(
            scalar(&db.pool, &effects_sql(BILLING, &x.id)).await,
            0,
            "x failed in billing"
        );
        let shipped = effects_of(&db.pool, SHIPPING).await;
        let mut ids: Vec<(String, i64)> = events.iter().map(|e| (e.id.clone(), 1)).collect();
        ids.sort();
        assert_eq!(shipped, ids, "shipping handled every event once");

        TwoGroups {
            db,
            url,
            destination,
            billing,
            shipping,
            dlq,
            events,
            x,
            billing_run,
            shipping_run,
        }
    }

    /// Stops both consumers and removes both groups' queues, the dead-letter
    /// queue and exchange, and the exchange.
    async fn stop(self) -> TestDb {
        self.billing_run.stop().await;
        self.shipping_run.stop().await;
        for queue in [&self.billing, &self.shipping, &self.dlq] {
            rabbitmq::delete_group(queue).await;
        }
        rabbitmq::delete_exchange(&self.dlq).await;
        rabbitmq::delete_exchange(&self.destination).await;
        self.db
    }
}

/// `dlq import` + `dlq replay`: a dead letter of billing goes back to billing
/// only. Billing handles it once; shipping, which handled the event already
/// and would make a second effect of a second delivery, sees nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_replay_reaches_one_group_only() {
    let s = TwoGroups::start("orders").await;
    let pool = s.db.pool.clone();
    let shipped_before = effects_of(&pool, SHIPPING).await;

    let out = relay_cli(
        &s.db.url,
        &[
            "dlq",
            "import",
            &s.destination,
            "--consumer",
            &s.billing,
            "--broker",
            &s.url,
            "--idle-ms",
            "1500",
        ],
    )
    .await;
    assert!(
        out.contains(&format!("1 dead letters imported from {}", s.dlq)),
        "{out}"
    );
    assert!(!out.contains("guest:guest"), "no credentials in output");

    let rows = listed(&relay_cli(&s.db.url, &["dlq", "list", "--consumer", &s.billing]).await);
    assert_eq!(rows.len(), 1, "{rows:?}");
    let row = &rows[0];
    assert_eq!(
        (row.consumer.as_str(), row.state.as_str()),
        (s.billing.as_str(), "dead")
    );
    assert_eq!(row.key, "key:order-1");
    let reason = format!("billing cannot take {} yet", s.x.id);
    assert!(row.reason.contains(&reason), "{row:?}");

    let id = row.id.to_string();
    let shown = relay_cli(&s.db.url, &["dlq", "show", &id]).await;
    assert!(shown.contains(&reason), "{shown}");
    assert!(shown.contains(&s.x.id), "{shown}");
    assert!(shown.contains("state:     dead"), "{shown}");

    // Imported means moved: the broker's dead-letter queue is empty now.
    let again = relay_cli(
        &s.db.url,
        &[
            "dlq",
            "import",
            &s.destination,
            "--consumer",
            &s.billing,
            "--broker",
            &s.url,
            "--idle-ms",
            "500",
        ],
    )
    .await;
    assert!(again.contains("0 dead letters imported"), "{again}");

    fix(&pool).await;
    let out = relay_cli(&s.db.url, &["dlq", "replay", "--consumer", &s.billing, &id]).await;
    assert!(
        out.contains(&format!(
            "1 dead letters of consumer `{}` replayed",
            s.billing
        )),
        "{out}"
    );

    wait_count(
        &pool,
        &effects_sql(BILLING, &s.x.id),
        1,
        Duration::from_secs(30),
    )
    .await;
    // Time for a stray delivery to reach shipping, had one been sent.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(scalar(&pool, &effects_sql(BILLING, &s.x.id)).await, 1);
    assert_eq!(
        effects_of(&pool, BILLING).await.len(),
        s.events.len(),
        "billing has one effect of every event"
    );
    assert_eq!(
        effects_of(&pool, SHIPPING).await,
        shipped_before,
        "the replay did not reach shipping"
    );
    assert_eq!(scalar(&pool, &parked_sql(&s.billing)).await, 0);
    assert_eq!(s.shipping_run.consumer.metrics().handled(), 4);
    assert_eq!(s.billing_run.consumer.metrics().handled(), 4);
    s.stop().await;
}

/// The control for the test above: `dlq redrive` publishes billing's dead
/// letter back to the exchange, so every group receives it again — and
/// shipping, at least once, makes a second effect of it. This is why
/// `import` + `replay` exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_redrive_reaches_every_group() {
    let s = TwoGroups::start("orders").await;
    let pool = s.db.pool.clone();
    fix(&pool).await;
    // The reader is billing's dead-letter queue itself (`<dest>.<group>.dlq`).
    let out = relay_cli(
        &s.db.url,
        &[
            "dlq",
            "redrive",
            &s.destination,
            "--consumer",
            &s.billing,
            "--broker",
            &s.url,
            "--reader",
            &s.dlq,
            "--idle-ms",
            "1500",
        ],
    )
    .await;
    assert!(out.contains("1 re-driven"), "{out}");

    wait_count(
        &pool,
        &effects_sql(BILLING, &s.x.id),
        1,
        Duration::from_secs(30),
    )
    .await;
    wait_count(
        &pool,
        &effects_sql(SHIPPING, &s.x.id),
        2,
        Duration::from_secs(30),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(scalar(&pool, &effects_sql(BILLING, &s.x.id)).await, 1);
    assert_eq!(
        scalar(&pool, &effects_sql(SHIPPING, &s.x.id)).await,
        2,
        "shipping got x a second time"
    );
    s.stop().await;
}

/// `DeadLetterKeys::Block`: a dead letter stays in billing's parked table and
/// holds its key; the next event of the key waits behind it, other keys go
/// on. `dlq list` shows the dead one (and with `--state all` the waiting
/// one); `dlq replay --all` after the fix handles both, in key order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_list_show_replay_of_blocking_dead_letters() {
    let db = TestDb::migrated().await;
    let pool = db.pool.clone();
    create_effects(&pool).await;
    create_fail_table(&pool).await;
    let url = amqp_url().await;
    let destination = unique_name("orders");
    let billing = unique_name("billing");
    let dlq = dead_letter::destination_of(&destination, &billing);
    let publisher: Arc<dyn Publisher> = Arc::new(
        RabbitPublisher::connect(&url)
            .await
            .expect("connect to RabbitMQ"),
    );
    // Whatever reached the broker's dead-letter exchange would show here.
    let mut broker_dlq = TestQueue::bind_all(&dlq).await;

    let step = |key: &str, seq| Step {
        key: key.into(),
        seq,
        pad: String::new(),
    };
    let (x, y, z) = (
        envelope(&step("k", 1)),
        envelope(&step("k", 2)),
        envelope(&step("other", 1)),
    );
    mark_failing(&pool, &x).await;
    let running = billing_consumer(
        &pool,
        &url,
        &billing,
        &destination,
        &publisher,
        DeadLetterKeys::Block,
    )
    .await;
    publish(
        publisher.as_ref(),
        &destination,
        &[x.clone(), y.clone(), z.clone()],
    )
    .await;
    wait_until(
        "z handled, x dead, y parked behind it",
        Duration::from_secs(30),
        || {
            let m = running.consumer.metrics();
            m.handled() >= 1 && m.dead_lettered() >= 1 && m.parked() >= 1
        },
    )
    .await;
    assert_eq!(scalar(&pool, &effects_sql(BILLING, &z.id)).await, 1);
    assert_eq!(
        scalar(&pool, "SELECT count(*) FROM effects WHERE key = 'k'").await,
        0
    );
    broker_dlq.assert_empty(Duration::from_millis(500)).await;

    let dead = listed(&relay_cli(&db.url, &["dlq", "list", "--consumer", &billing]).await);
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(
        (dead[0].state.as_str(), dead[0].key.as_str()),
        ("dead", "key:k")
    );
    assert!(
        dead[0]
            .reason
            .contains(&format!("billing cannot take {} yet", x.id)),
        "{dead:?}"
    );
    let shown = relay_cli(&db.url, &["dlq", "show", &dead[0].id.to_string()]).await;
    assert!(shown.contains(&x.id), "{shown}");
    assert!(shown.contains("holds key: true"), "{shown}");

    let all = listed(
        &relay_cli(
            &db.url,
            &["dlq", "list", "--consumer", &billing, "--state", "all"],
        )
        .await,
    );
    let states: Vec<(&str, &str)> = all
        .iter()
        .map(|r| (r.state.as_str(), r.key.as_str()))
        .collect();
    assert_eq!(states, [("dead", "key:k"), ("waiting", "key:k")], "{all:?}");
    assert_eq!(all[0].id, dead[0].id);
    let waiting = relay_cli(&db.url, &["dlq", "show", &all[1].id.to_string()]).await;
    assert!(waiting.contains(&y.id), "{waiting}");

    fix(&pool).await;
    let out = relay_cli(&db.url, &["dlq", "replay", "--consumer", &billing, "--all"]).await;
    assert!(
        out.contains(&format!("1 dead letters of consumer `{billing}` replayed")),
        "{out}"
    );
    wait_count(
        &pool,
        "SELECT count(*) FROM effects WHERE key = 'k'",
        2,
        Duration::from_secs(30),
    )
    .await;
    let order: Vec<String> =
        sqlx::query_scalar("SELECT event_id FROM effects WHERE key = 'k' ORDER BY id")
            .fetch_all(&pool)
            .await
            .expect("read effects");
    assert_eq!(order, [x.id.clone(), y.id.clone()], "x, then y");
    assert_eq!(scalar(&pool, &parked_sql(&billing)).await, 0);
    assert_eq!(
        scalar(&pool, "SELECT count(*) FROM eventbus_inbox_parked").await,
        0,
        "nothing left in the parked table"
    );
    broker_dlq.assert_empty(Duration::from_millis(200)).await;

    let consumer = running.stop().await;
    assert_eq!(consumer.metrics().handled(), 3);
    broker_dlq.delete().await;
    rabbitmq::delete_group(&billing).await;
    rabbitmq::delete_exchange(&dlq).await;
    rabbitmq::delete_exchange(&destination).await;
}
