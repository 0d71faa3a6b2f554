//! End-to-end runs of the saga binary: the embedded default, PostgreSQL with
//! the Kafka-protocol broker, with RabbitMQ and with SQS, MySQL with RabbitMQ
//! — each with `--chaos` — and the services as separate processes behind `outbox-relay`
//! sidecars. After each run the test reads the three databases itself and
//! checks the invariants.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use eventbus_tests::harness::{free_port, sibling_binary};
use eventbus_tests::{
    amqp_url, database_url, kafka_brokers, mysql_url, replace_db_name, sqs_endpoint, unique_name,
};
use order_payment_saga::audit::{Pools, Snapshot};
use order_payment_saga::db;
use order_payment_saga::demo::order_request;
use order_payment_saga::order::{OrderView, PlaceOrder, PAYMENT_TIMEOUT};
use serde_json::Value;
use tokio::process::{Child, Command};

const SAGA: &str = env!("CARGO_BIN_EXE_order-payment-saga");

/// Runs the demo with `args`; returns its JSON report.
async fn run_demo(args: &[&str]) -> Value {
    let dir = tempfile::tempdir().expect("temp dir");
    let report = dir.path().join("report.json");
    let output = Command::new(SAGA)
        .args(args)
        .arg("--report")
        .arg(&report)
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(300), output)
        .await
        .expect("the demo finishes within 5 minutes")
        .expect("the demo starts");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "demo failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    let text = std::fs::read(&report).expect("the demo writes its report");
    let report: Value = serde_json::from_slice(&text).expect("the report is JSON");
    println!("{stdout}");
    report
}

fn figure(report: &Value, name: &str) -> u64 {
    report[name]
        .as_u64()
        .unwrap_or_else(|| panic!("report has no figure `{name}`: {report}"))
}

/// What every chaos run must show: all four outcomes happened, every
/// payment-timeout cancellation came from a saga timeout and every order
/// saga completed, chaos really injected copies and restarts, the inboxes
/// absorbed repeats, and the databases (read here, not by the demo) satisfy
/// every invariant, the saga table's included.
fn assert_chaos_run(report: &Value, snapshot: &Snapshot, orders: usize) {
    for outcome in [
        "confirmed",
        "cancelled_declined",
        "cancelled_timeout",
        "rejected",
    ] {
        assert!(
            figure(report, outcome) > 0,
            "no `{outcome}` order: {report}"
        );
    }
    assert_eq!(figure(report, "unfinished"), 0, "{report}");
    // Payment timeouts are the order saga's scheduled timeouts, not a sweep.
    assert_eq!(
        figure(report, "timeouts_fired"),
        figure(report, "cancelled_timeout"),
        "{report}"
    );
    assert_eq!(figure(report, "sagas_active"), 0, "{report}");
    assert_eq!(figure(report, "sagas_completed"), orders as u64, "{report}");
    assert!(
        figure(report, "duplicates_injected") > 0,
        "chaos sent no copies: {report}"
    );
    assert!(
        figure(report, "relay_restarts") > 0,
        "chaos restarted no relay: {report}"
    );
    assert!(
        figure(report, "duplicates_absorbed") > 0,
        "no repeat reached an inbox: {report}"
    );
    assert_eq!(snapshot.orders.len(), orders);
    assert_eq!(
        snapshot.count("confirmed") as u64,
        figure(report, "confirmed")
    );
    for check in snapshot.checks() {
        assert!(check.ok, "{check}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_default_with_chaos_keeps_every_invariant() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().display());
    let report = run_demo(&["--orders", "200", "--chaos", "--database-url", &url]).await;
    assert_eq!(figure(&report, "placed"), 200);
    let pools = Pools {
        order: db::sqlite(dir.path(), "order").await.expect("order db"),
        inventory: db::sqlite(dir.path(), "inventory")
            .await
            .expect("inventory db"),
        payment: db::sqlite(dir.path(), "payment").await.expect("payment db"),
    };
    let snapshot = pools.snapshot().await.expect("read the databases");
    assert_chaos_run(&report, &snapshot, 200);
}

/// Three PostgreSQL databases `<base>_<service>`, dropped at the end.
struct SagaDatabases {
    admin: String,
    base: String,
}

impl SagaDatabases {
    async fn new() -> Self {
        SagaDatabases {
            admin: database_url().await,
            base: unique_name("saga"),
        }
    }

    fn url(&self) -> String {
        replace_db_name(&self.admin, &self.base)
    }

    async fn snapshot(&self) -> Snapshot {
        let url = self.url();
        let pools = Pools {
            order: db::postgres(&url, "order").await.expect("order db"),
            inventory: db::postgres(&url, "inventory").await.expect("inventory db"),
            payment: db::postgres(&url, "payment").await.expect("payment db"),
        };
        pools.snapshot().await.expect("read the databases")
    }
}

impl Drop for SagaDatabases {
    fn drop(&mut self) {
        let names = ["order", "inventory", "payment"].map(|s| format!("{}_{s}", self.base));
        eventbus_tests::drop_databases(&self.admin, &names);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_and_kafka_with_chaos_keep_every_invariant() {
    let dbs = SagaDatabases::new().await;
    let broker = format!("kafka://{}", kafka_brokers().await);
    // Generous payment clock: joining a tansu consumer group takes seconds.
    let report = run_demo(&[
        "--orders",
        "150",
        "--chaos",
        "--database-url",
        &dbs.url(),
        "--broker",
        &broker,
        "--payment-timeout-ms",
        "15000",
        "--gateway-delay-ms",
        "20000",
    ])
    .await;
    assert_chaos_run(&report, &dbs.snapshot().await, 150);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_and_rabbitmq_with_chaos_keep_every_invariant() {
    let dbs = SagaDatabases::new().await;
    let broker = amqp_url().await;
    let report = run_demo(&[
        "--orders",
        "200",
        "--chaos",
        "--database-url",
        &dbs.url(),
        "--broker",
        &broker,
    ])
    .await;
    assert_chaos_run(&report, &dbs.snapshot().await, 200);
}

/// Three MySQL/MariaDB databases `<base>_<service>`, dropped at the end.
struct MySqlSagaDatabases {
    admin: String,
    base: String,
}

impl MySqlSagaDatabases {
    async fn new() -> Self {
        MySqlSagaDatabases {
            admin: mysql_url().await,
            base: unique_name("saga"),
        }
    }

    fn url(&self) -> String {
        replace_db_name(&self.admin, &self.base)
    }

    async fn snapshot(&self) -> Snapshot {
        let url = self.url();
        let pools = Pools {
            order: db::mysql(&url, "order").await.expect("order db"),
            inventory: db::mysql(&url, "inventory").await.expect("inventory db"),
            payment: db::mysql(&url, "payment").await.expect("payment db"),
        };
        pools.snapshot().await.expect("read the databases")
    }
}

impl Drop for MySqlSagaDatabases {
    fn drop(&mut self) {
        for service in ["order", "inventory", "payment"] {
            eventbus_tests::mysql::drop_database(&self.admin, &format!("{}_{service}", self.base));
        }
    }
}

/// The saga on MySQL/MariaDB (one database per service) and RabbitMQ, with
/// chaos: the same run and invariants as on PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_and_rabbitmq_with_chaos_keep_every_invariant() {
    let dbs = MySqlSagaDatabases::new().await;
    let broker = amqp_url().await;
    let report = run_demo(&[
        "--orders",
        "200",
        "--chaos",
        "--database-url",
        &dbs.url(),
        "--broker",
        &broker,
    ])
    .await;
    assert_chaos_run(&report, &dbs.snapshot().await, 200);
}

/// The saga over SQS FIFO queues (one per topic and listening service) on
/// the local SQS-compatible server, with chaos: copies of events (sent past
/// FIFO deduplication, as redeliveries) and relay restarts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_and_sqs_with_chaos_keep_every_invariant() {
    let dbs = SagaDatabases::new().await;
    let endpoint = sqs_endpoint().await;
    let broker = match endpoint.split_once("://") {
        Some(("http", host)) => format!("sqs+http://{host}"),
        Some((_, host)) => format!("sqs://{host}"),
        None => panic!("SQS_ENDPOINT `{endpoint}` is not a URL"),
    };
    let report = run_demo(&[
        "--orders",
        "120",
        "--chaos",
        "--database-url",
        &dbs.url(),
        "--broker",
        &broker,
    ])
    .await;
    assert_chaos_run(&report, &dbs.snapshot().await, 120);
}

/// A child process, killed when the test ends whatever happens.
struct Process {
    _child: Child,
}

impl Process {
    fn spawn(program: &Path, args: &[String]) -> Process {
        let child = Command::new(program)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
        Process { _child: child }
    }
}

/// The `outbox-relay` binary next to this test's binaries.
fn relay_binary() -> PathBuf {
    sibling_binary("outbox-relay").unwrap_or_else(|| {
        panic!("outbox-relay is missing: build it with `cargo build -p outbox-relay`")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_as_processes_with_relay_sidecars_over_http() {
    let dbs = SagaDatabases::new().await;
    let broker = amqp_url().await;
    let namespace = unique_name("saga");
    let port = free_port();
    let common = |service: &str| -> Vec<String> {
        let mut args = vec![
            service.to_owned(),
            "--database-url".into(),
            dbs.url(),
            "--broker".into(),
            broker.clone(),
            "--namespace".into(),
            namespace.clone(),
        ];
        if service == "order" {
            args.extend(["--http".into(), format!("127.0.0.1:{port}")]);
        }
        if service == "payment" {
            // Well past the order saga's 4 s payment timeout: the slow
            // customers' orders are cancelled by their timeout, which only
            // the order database's sidecar relay can bring back.
            args.extend(["--gateway-delay-ms".into(), "10000".into()]);
        }
        args
    };
    let mut processes = Vec::new();
    for service in ["order", "inventory", "payment"] {
        processes.push(Process::spawn(Path::new(SAGA), &common(service)));
    }
    // Each service's database gets its own relay sidecar, as in production.
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    wait_for_api(&client, &base).await;
    // Each service binds its queue after it says it is running; a relay that
    // starts before then finds no queue for its first events (unroutable), and
    // parks them after its few retries. Production sidecars have the same
    // race at a first deployment; here the test waits for the queues.
    wait_for_queues(
        &broker,
        &["order", "inventory", "payment"].map(|s| format!("{namespace}.{s}")),
    )
    .await;
    let relay = relay_binary();
    for service in ["order", "inventory", "payment"] {
        let db_url = replace_db_name(&dbs.admin, &format!("{}_{service}", dbs.base));
        // A relay exits when its outbox is not migrated yet (its supervisor
        // restarts it); here nothing restarts it, so start it after the service
        // has created and migrated its database.
        wait_for_outbox(&db_url).await;
        processes.push(Process::spawn(
            &relay,
            &[
                "--database-url".into(),
                db_url,
                "run".into(),
                "--broker".into(),
                broker.clone(),
                "--destination-prefix".into(),
                format!("{namespace}."),
                "--http".into(),
                "127.0.0.1:0".into(),
                "--poll-interval-ms".into(),
                "100".into(),
            ],
        ));
    }

    let mut ids = Vec::new();
    for i in 0..40 {
        let response = client
            .post(format!("{base}/orders"))
            .json(&order_request(i))
            .send()
            .await
            .expect("POST /orders");
        assert_eq!(response.status(), reqwest::StatusCode::CREATED);
        let order: OrderView = response.json().await.expect("an order");
        assert_eq!(order.state, "pending");
        ids.push(order.id);
    }
    let bad = PlaceOrder {
        customer: "x".into(),
        sku: "grinder".into(),
        quantity: 0,
        amount_cents: 10,
    };
    let refused = client
        .post(format!("{base}/orders"))
        .json(&bad)
        .send()
        .await
        .expect("POST /orders");
    assert_eq!(refused.status(), reqwest::StatusCode::UNPROCESSABLE_ENTITY);
    let missing = client
        .get(format!("{base}/orders/nope"))
        .send()
        .await
        .expect("GET");
    assert_eq!(missing.status(), reqwest::StatusCode::NOT_FOUND);

    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let mut finals = Vec::new();
    for id in &ids {
        loop {
            let order: OrderView = client
                .get(format!("{base}/orders/{id}"))
                .send()
                .await
                .expect("GET /orders/{id}")
                .json()
                .await
                .expect("an order");
            if order.is_final() {
                finals.push(order);
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "order {id} stuck in {}",
                order.state
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    assert!(finals.iter().any(|o| o.state == "confirmed"));
    assert!(finals.iter().any(|o| o.state == "cancelled"));
    assert!(
        finals
            .iter()
            .any(|o| o.reason.as_deref() == Some(PAYMENT_TIMEOUT)),
        "no order was cancelled by its payment timeout: {finals:?}"
    );

    // The audit subcommand agrees once compensations have landed.
    let mut passed = false;
    for _ in 0..50 {
        let status = Command::new(SAGA)
            .args(["check", "--database-url", &dbs.url()])
            .stdout(Stdio::null())
            .status()
            .await
            .expect("run check");
        if status.success() {
            passed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let snapshot = dbs.snapshot().await;
    assert!(passed, "check kept failing: {:?}", snapshot.checks());
    for check in snapshot.checks() {
        assert!(check.ok, "{check}");
    }
    drop(processes);
}

/// Waits (up to 60 s) until every queue of `queues` exists on the RabbitMQ
/// server at `amqp` (a passive declare, on a fresh channel each time: a
/// failed one closes its channel).
async fn wait_for_queues(amqp: &str, queues: &[String]) {
    use eventbus::transport::rabbitmq::lapin::options::QueueDeclareOptions;
    use eventbus::transport::rabbitmq::lapin::types::FieldTable;
    use eventbus::transport::rabbitmq::lapin::{Connection, ConnectionProperties};
    let connection = Connection::connect(amqp, ConnectionProperties::default())
        .await
        .expect("connect to RabbitMQ");
    for queue in queues {
        let mut found = false;
        for _ in 0..300 {
            let channel = connection.create_channel().await.expect("a channel");
            let passive = QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            };
            if channel
                .queue_declare(queue.as_str().into(), passive, FieldTable::default())
                .await
                .is_ok()
            {
                found = true;
                let _ = channel.close(200, "".into()).await;
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(
            found,
            "the services did not declare queue {queue} within 60 s"
        );
    }
    let _ = connection.close(200, "".into()).await;
}

/// Waits (up to 60 s) until the database at `url` exists and has the outbox
/// table.
async fn wait_for_outbox(url: &str) {
    for _ in 0..300 {
        if let Ok(pool) = sqlx::PgPool::connect(url).await {
            let table: Option<String> =
                sqlx::query_scalar("SELECT to_regclass('eventbus_outbox')::text")
                    .fetch_one(&pool)
                    .await
                    .unwrap_or(None);
            pool.close().await;
            if table.is_some() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("the service did not migrate its outbox at {url} within 60 s");
}

async fn wait_for_api(client: &reqwest::Client, base: &str) {
    for _ in 0..150 {
        if client
            .get(format!("{base}/orders/none"))
            .send()
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the order service did not start listening on {base}");
}
