//! TLS and credentials end to end: the `outbox-relay` binary reaches a
//! PostgreSQL that accepts TLS connections only (with a password), RabbitMQ
//! over `amqps://` and Kafka over SSL, each verifying the server against a
//! private certificate authority and presenting a client certificate to the
//! brokers (mutual TLS); URLs and passwords come from files; an untrusted
//! server or a wrong password is a clear error; no password shows in any
//! output.
//!
//! The brokers sit behind a TLS-terminating proxy (`eventbus_tests::tls`), so
//! the relay's clients speak TLS exactly as to brokers with TLS listeners.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use eventbus::Event;
use eventbus_tests::harness::{command, free_port, output, sigterm, text};
use eventbus_tests::kafka::{consumer_config, read_all_with, start_tansu};
use eventbus_tests::postgres_cluster::{ClusterOptions, PostgresCluster};
use eventbus_tests::rabbitmq::TestQueue;
use eventbus_tests::relay::{assert_per_key_order, pending, publish_steps, steps, Step};
use eventbus_tests::tls::{Clients, TestCa, TlsProxy};
use eventbus_tests::{amqp_url, unique_name, TestDb};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::process::Child;

/// The binary under test.
const BIN: &str = env!("CARGO_BIN_EXE_outbox-relay");

/// The private cluster's superuser password: it must never appear in output.
const DB_PASSWORD: &str = "pg-Secret-7f3a9";

/// A PostgreSQL that takes TLS connections only, authenticated by password.
async fn tls_postgres(ca: &TestCa) -> PostgresCluster {
    let options = ClusterOptions::default()
        .password(DB_PASSWORD)
        .set("ssl", "on")
        .set("ssl_cert_file", "server.pem")
        .set("ssl_key_file", "server.key")
        .file("server.pem", ca.server_cert_pem())
        .file("server.key", ca.server_key_pem())
        // No `host` line: a connection without TLS matches nothing and is refused.
        .hba("local all all trust\nhostssl all all 127.0.0.1/32 scram-sha-256\n");
    PostgresCluster::start_with(options)
        .await
        .unwrap_or_else(|e| panic!("cannot start a private PostgreSQL with TLS: {e}"))
}

/// The URL of `cluster` with `password`, TLS mode `sslmode` and, when given,
/// the CA file clients verify the server with.
fn pg_url(cluster: &PostgresCluster, password: &str, sslmode: &str, ca: Option<&Path>) -> String {
    let mut url = format!(
        "postgres://postgres:{password}@127.0.0.1:{}/postgres?sslmode={sslmode}",
        cluster.port()
    );
    if let Some(ca) = ca {
        url.push_str(&format!("&sslrootcert={}", ca.display()));
    }
    url
}

/// Writes a secret into `dir/name`, readable by its owner only.
fn secret_file(dir: &Path, name: &str, value: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, format!("{value}\n")).expect("write the secret file");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .expect("restrict the secret file");
    path
}

/// A PKCS#12 client identity for `name` and a file holding its password;
/// returns both paths.
fn client_identity(ca: &TestCa, name: &str) -> (String, String) {
    let password = "p12-Secret-41c";
    let path = ca.dir().join(format!("{name}.p12"));
    std::fs::write(&path, ca.client_identity(name, password)).expect("write the identity");
    let password_file = secret_file(ca.dir(), &format!("{name}.p12.password"), password);
    (
        path.display().to_string(),
        password_file.display().to_string(),
    )
}

fn assert_no_password(what: &str, output: &str) {
    assert!(
        !output.contains(DB_PASSWORD),
        "{what} shows the database password:\n{output}"
    );
    assert!(
        !output.contains("guest:guest"),
        "{what} shows the broker password:\n{output}"
    );
}

/// `outbox-relay run` logging to `log`, with `args` after the common ones.
fn start_relay(args: &[&str], log: &Path) -> Child {
    let http = format!("127.0.0.1:{}", free_port());
    let mut all = vec![
        "run",
        "--http",
        &http,
        "--poll-interval-ms",
        "100",
        "--name",
        "tls-relay",
    ];
    all.extend_from_slice(args);
    let file = std::fs::File::create(log).expect("create the relay log");
    command(BIN, &all)
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .expect("start outbox-relay run")
}

async fn wait_pending_zero(pool: &PgPool, relay: &mut Child, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while pending(pool).await > 0 {
        if let Ok(Some(status)) = relay.try_wait() {
            panic!(
                "the relay exited ({status}):\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "the outbox did not drain within 60 s:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The `host:port` of `url`'s authority.
fn rabbit_addr(url: &str) -> SocketAddr {
    let host_port = eventbus_tests::rabbitmq::url_host_port(url);
    std::net::ToSocketAddrs::to_socket_addrs(&host_port)
        .expect("resolve the RabbitMQ address")
        .next()
        .expect("an address")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_takes_tls_only_and_verifies_the_server() {
    let ca = TestCa::new("postgres");
    let other_ca = TestCa::new("other");
    let cluster = tls_postgres(&ca).await;
    let connect = |url: String| async move {
        PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .connect(&url)
            .await
    };

    // Each refused connection, and what its error must say.
    let refused = [
        (DB_PASSWORD, "disable", None, "no encryption"),
        (
            DB_PASSWORD,
            "verify-full",
            Some(other_ca.ca_file()),
            "certificate",
        ),
        (
            "not-the-password",
            "verify-full",
            Some(ca.ca_file()),
            "password authentication failed",
        ),
    ];
    for (password, sslmode, root, says) in refused {
        let url = pg_url(&cluster, password, sslmode, root.as_deref());
        let err = connect(url)
            .await
            .expect_err("the connection must be refused");
        assert!(
            err.to_string().to_lowercase().contains(says),
            "sslmode={sslmode}: the error does not say `{says}`: {err}"
        );
    }

    let pool = connect(pg_url(
        &cluster,
        DB_PASSWORD,
        "verify-full",
        Some(&ca.ca_file()),
    ))
    .await
    .expect("TLS with the right CA and password");
    let (ssl, version): (bool, String) =
        sqlx::query_as("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(&pool)
            .await
            .expect("read pg_stat_ssl");
    assert!(ssl, "the session is not encrypted");
    assert!(version.starts_with("TLSv1."), "{version}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn relay_runs_over_tls_to_postgres_and_rabbitmq_with_urls_from_files() {
    let ca = TestCa::new("relay");
    let cluster = tls_postgres(&ca).await;
    let amqp = amqp_url().await;
    let proxy = TlsProxy::start(&ca, Clients::Certified, rabbit_addr(&amqp)).await;
    let secrets = ca.dir();
    let (identity, identity_password) = client_identity(&ca, "relay");
    let db_url = pg_url(&cluster, DB_PASSWORD, "verify-full", Some(&ca.ca_file()));
    let db_file = secret_file(secrets, "database-url", &db_url);
    let broker = format!("amqps://guest:guest@127.0.0.1:{}/%2f", proxy.port());
    let broker_file = secret_file(secrets, "broker-url", &broker);
    let db_file_arg = db_file.display().to_string();
    let broker_file_arg = broker_file.display().to_string();
    let ca_arg = ca.ca_file().display().to_string();

    let migrated = output(BIN, &["migrate", "--database-url-file", &db_file_arg]).await;
    assert!(migrated.status.success(), "{}", text(&migrated));
    assert_no_password("migrate", &text(&migrated));

    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect(&db_url)
        .await
        .expect("connect over TLS");
    let prefix = format!("{}.", unique_name("tls"));
    let mut queue = TestQueue::bind_all(&format!("{prefix}{}", Step::DESTINATION)).await;
    let events = steps(300, 10);
    publish_steps(&pool, &events, 50).await;

    // Without the CA the broker's certificate is not trusted: the relay stops
    // at start-up with the reason, and nothing is taken from the outbox.
    let untrusted = output(
        BIN,
        &[
            "run",
            "--database-url-file",
            &db_file_arg,
            "--broker-file",
            &broker_file_arg,
            "--http",
            &format!("127.0.0.1:{}", free_port()),
        ],
    )
    .await;
    assert!(!untrusted.status.success(), "{}", text(&untrusted));
    let said = text(&untrusted);
    assert!(
        said.to_lowercase().contains("certificate"),
        "the error does not name the certificate:\n{said}"
    );
    assert_no_password("the untrusted-broker error", &said);
    assert_eq!(pending(&pool).await, 300, "nothing may leave the outbox");

    let log = secrets.join("relay.log");
    let mut relay = start_relay(
        &[
            "--database-url-file",
            &db_file_arg,
            "--broker-file",
            &broker_file_arg,
            "--broker-ca-file",
            &ca_arg,
            "--broker-client-identity",
            &identity,
            "--broker-client-identity-password-file",
            &identity_password,
            "--destination-prefix",
            &prefix,
        ],
        &log,
    );
    wait_pending_zero(&pool, &mut relay, &log).await;
    let received: Vec<Step> = queue
        .read_envelopes(300, Duration::from_secs(30))
        .await
        .iter()
        .map(|e| serde_json::from_slice(&e.data).expect("a Step"))
        .collect();
    assert_eq!(received.len(), 300, "every event arrives");
    assert_eq!(assert_per_key_order(&received), 0, "no duplicates");
    assert!(proxy.handshakes() > 0, "the relay did not use TLS");

    let status = output(BIN, &["status", "--database-url-file", &db_file_arg]).await;
    assert!(status.status.success(), "{}", text(&status));
    assert!(text(&status).contains("pending: 0"), "{}", text(&status));
    assert_no_password("status", &text(&status));

    let wrong_url = pg_url(
        &cluster,
        "wrong-password",
        "verify-full",
        Some(&ca.ca_file()),
    );
    let wrong = output(BIN, &["status", "--database-url", &wrong_url]).await;
    assert!(!wrong.status.success());
    assert!(
        text(&wrong).contains("password authentication failed"),
        "{}",
        text(&wrong)
    );
    assert!(!text(&wrong).contains("wrong-password"), "{}", text(&wrong));

    sigterm(&mut relay).await;
    let logged = std::fs::read_to_string(&log).expect("read the relay log");
    assert!(logged.contains("relay starting"), "{logged}");
    assert_no_password("the relay log", &logged);
    queue.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn relay_publishes_to_kafka_over_tls() {
    let ca = TestCa::new("kafka");
    // The broker advertises the proxy's TLS port, so that every connection
    // the client makes after bootstrapping goes through TLS as well.
    let tls_listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the TLS port");
    let tls_port = tls_listener.local_addr().expect("address").port();
    let plain_port = free_port();
    let log_dir = ca.dir();
    let mut tansu = start_tansu(plain_port, tls_port, log_dir).await;
    let proxy = TlsProxy::serve(
        &ca,
        Clients::Certified,
        tls_listener,
        ([127, 0, 0, 1], plain_port).into(),
    );
    let (identity, identity_password) = client_identity(&ca, "relay");
    let brokers = format!("127.0.0.1:{tls_port}");

    let db = TestDb::migrated().await;
    let prefix = format!("{}.", unique_name("tls"));
    let topic = format!("{prefix}{}", Step::DESTINATION);
    let events = steps(200, 8);
    publish_steps(&db.pool, &events, 50).await;
    let log = log_dir.join("relay.log");
    let broker = format!("kafka://{brokers}");
    let ca_arg = ca.ca_file().display().to_string();
    let mut relay = start_relay(
        &[
            "--database-url",
            &db.url,
            "--broker",
            &broker,
            "--broker-ca-file",
            &ca_arg,
            "--broker-client-identity",
            &identity,
            "--broker-client-identity-password-file",
            &identity_password,
            "--destination-prefix",
            &prefix,
        ],
        &log,
    );
    wait_pending_zero(&db.pool, &mut relay, &log).await;

    let mut config = consumer_config(&brokers);
    config
        .set("security.protocol", "ssl")
        .set("ssl.ca.location", &ca_arg)
        .set("ssl.keystore.location", &identity)
        .set(
            "ssl.keystore.password",
            std::fs::read_to_string(&identity_password)
                .expect("password")
                .trim(),
        );
    let messages = read_all_with(config, &topic, 200, Duration::from_secs(60)).await;
    let received: Vec<Step> = messages
        .iter()
        .map(|m| {
            serde_json::from_slice(rdkafka::Message::payload(m).unwrap_or_default())
                .expect("a Step")
        })
        .collect();
    assert_eq!(received.len(), 200, "every event arrives");
    assert_eq!(assert_per_key_order(&received), 0, "no duplicates");
    assert!(proxy.handshakes() > 0, "the relay did not use TLS");
    sigterm(&mut relay).await;
    let _ = tansu.kill().await;
}
