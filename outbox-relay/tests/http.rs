//! The relay's HTTP listener as operators and their tooling use it, on the
//! real binary with PostgreSQL and RabbitMQ or Kafka: slow and idle clients
//! cannot starve it or the relay, HEAD works, `/readyz` follows the broker,
//! `healthcheck` exits 0 or 1, and `--log-format json` writes JSON lines.

use std::path::Path;
use std::time::{Duration, Instant};

use eventbus::Event;
use eventbus_tests::harness::{command, free_port, http_get, log_dir, output, text, RelayProcess};
use eventbus_tests::rabbitmq::{TcpProxy, TestQueue};
use eventbus_tests::relay::{publish_steps, steps, Step};
use eventbus_tests::{amqp_url, unique_name, TestDb};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The binary under test.
const BIN: &str = env!("CARGO_BIN_EXE_outbox-relay");

/// The listener's timeouts in these tests: a client gets 2 s to send its
/// request and 1 s more to be answered.
const READ_TIMEOUT: Duration = Duration::from_secs(2);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);

/// `run` over `db_url` and `broker`, with quick polling and the short HTTP
/// timeouts above.
fn start_relay(name: &str, db_url: &str, broker: &str, prefix: &str, dir: &Path) -> RelayProcess {
    start_relay_with(name, &[], db_url, broker, prefix, dir, &[])
}

/// [`start_relay`] preceded by `before` (a wrapper such as `prlimit`), with
/// `extra` flags.
fn start_relay_with(
    name: &str,
    before: &[&str],
    db_url: &str,
    broker: &str,
    prefix: &str,
    dir: &Path,
    extra: &[&str],
) -> RelayProcess {
    let (program, mut args) = match before.split_first() {
        Some((program, rest)) => (*program, rest.to_vec()),
        None => (BIN, Vec::new()),
    };
    if !before.is_empty() {
        args.push(BIN);
    }
    args.extend([
        "run",
        "--database-url",
        db_url,
        "--broker",
        broker,
        "--destination-prefix",
        prefix,
        "--poll-interval",
        "200ms",
        "--lease-ttl",
        "3s",
        "--http-read-timeout",
        "2s",
        "--http-request-timeout",
        "1s",
    ]);
    args.extend(extra);
    RelayProcess::start(program, name, &args, dir)
}

/// Sends `request` as it is and returns everything the server answers until
/// it closes the connection (at most 10 s).
async fn raw_exchange(port: u16, request: &str) -> String {
    let exchange = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
        stream.write_all(request.as_bytes()).await?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&answer).into_owned())
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .expect("the server answers within 10 s")
        .expect("HTTP exchange")
}

/// Polls `path` until it answers `status` (at most `timeout`); the last body.
async fn wait_status(relay: &RelayProcess, path: &str, status: u16, timeout: Duration) -> String {
    wait_answer(relay, path, status, "", timeout).await
}

/// Like [`wait_status`], for an answer whose body contains `says`: a relay
/// just started is not ready for another reason (its first database check
/// has not come back yet) before it finds the one a test waits for.
async fn wait_answer(
    relay: &RelayProcess,
    path: &str,
    status: u16,
    says: &str,
    timeout: Duration,
) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let answer = relay.get(path).await;
        if let Ok((code, body)) = &answer {
            if *code == status && body.contains(says) {
                return body.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "{path} does not answer {status} saying {says:?} within {timeout:?}; last answer {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `prlimit --nofile=N:N`, to start the relay with few file descriptors.
///
/// # Panics
///
/// When `prlimit` (util-linux) is not installed, saying so.
fn nofile(n: u32) -> String {
    let found = std::process::Command::new("prlimit")
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success());
    assert!(
        found,
        "`prlimit` is needed to limit the relay's file descriptors: install util-linux \
         (apt-get install util-linux)"
    );
    format!("--nofile={n}:{n}")
}

/// Opens `n` connections to `port` that send nothing. Each may wait to be
/// accepted while the listener's queue is full: for as long as the relay takes
/// to close earlier ones (its read timeout), and SYN retries on top.
async fn open_idle(port: u16, n: usize) -> Vec<TcpStream> {
    let mut idle = Vec::with_capacity(n);
    for i in 0..n {
        let connect = TcpStream::connect(("127.0.0.1", port));
        match tokio::time::timeout(Duration::from_secs(30), connect).await {
            Ok(Ok(stream)) => idle.push(stream),
            other => panic!(
                "connection {} was not accepted within 30 s ({other:?}): the relay stopped \
                 accepting connections",
                i + 1
            ),
        }
    }
    idle
}

/// CPU time (user + system) process `pid` has used, from `/proc/<pid>/stat`.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc stat");
    // Fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .expect("stat has a command name")
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    // The kernel's USER_HZ is 100 on every Linux this runs on.
    Duration::from_millis(ticks * 10)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_blocks_nobody_and_is_dropped_after_the_timeout() {
    let db = TestDb::migrated().await;
    let dir = log_dir("http_slow");
    let prefix = format!("{}.", unique_name("http_slow"));
    let mut relay = start_relay("relay", &db.url, &amqp_url().await, &prefix, &dir);
    relay.wait_healthy().await;

    // A client that trickles its request head a byte at a time, never ending it.
    let mut slow = TcpStream::connect(("127.0.0.1", relay.port))
        .await
        .expect("connect");
    let opened = Instant::now();
    let trickle = async {
        for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: "
            .iter()
            .cycle()
        {
            if slow.write_all(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let others = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        for _ in 0..5 {
            let started = Instant::now();
            let (code, body) = http_get(relay.port, "/healthz")
                .await
                .expect("GET /healthz");
            assert_eq!((code, body.as_str()), (200, "ok\n"));
            assert!(
                started.elapsed() < READ_TIMEOUT,
                "/healthz took {:?} while a slow client was connected",
                started.elapsed()
            );
        }
    };
    // The trickle ends when the server closes the connection.
    let bound = READ_TIMEOUT + REQUEST_TIMEOUT + Duration::from_secs(3);
    let ((), closed) = tokio::join!(others, tokio::time::timeout(bound, trickle));
    assert!(
        closed.is_ok(),
        "the server still took a slow client's bytes {bound:?} after it connected"
    );
    let lasted = opened.elapsed();
    assert!(
        lasted >= READ_TIMEOUT - Duration::from_millis(200),
        "the slow client was dropped after {lasted:?}, before the read timeout"
    );
    relay.proc.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_idle_connections_neither_stop_relaying_nor_healthz() {
    let db = TestDb::migrated().await;
    let dir = log_dir("http_idle");
    let prefix = format!("{}.", unique_name("http_idle"));
    let mut queue = TestQueue::bind_all(&format!("{prefix}{}", Step::DESTINATION)).await;
    // 512 file descriptors, as a small container may give: a listener that
    // accepted all 1,000 connections would run out.
    let mut relay = start_relay_with(
        "relay",
        &["prlimit", &nofile(512)],
        &db.url,
        &amqp_url().await,
        &prefix,
        &dir,
        &[],
    );
    relay.wait_healthy().await;

    let idle = open_idle(relay.port, 1_000).await;
    let cpu_before = cpu_time(relay.proc.pid());
    let held_since = Instant::now();
    // Behind up to 1,000 idle connections, each closed by the read timeout.
    wait_status(&relay, "/healthz", 200, Duration::from_secs(30)).await;
    let first_answer = held_since.elapsed();

    let events = steps(200, 20);
    publish_steps(&db.pool, &events, 50).await;
    let delivered = queue.read(events.len(), Duration::from_secs(60)).await;
    assert_eq!(
        delivered.len(),
        events.len(),
        "events relayed while 1,000 connections are held"
    );

    let started = Instant::now();
    wait_status(&relay, "/healthz", 200, Duration::from_secs(30)).await;
    eprintln!(
        "with 1,000 idle connections held: /healthz answered after {first_answer:?}; \
         relayed {} events, then /healthz answered in {:?}",
        events.len(),
        started.elapsed()
    );
    // Held for two seconds at least: relaying the events above costs some
    // CPU of its own, which must not look like a spin when it all went fast.
    tokio::time::sleep(Duration::from_secs(2).saturating_sub(held_since.elapsed())).await;
    let spent = cpu_time(relay.proc.pid()) - cpu_before;
    let held = held_since.elapsed();
    assert!(
        spent < held / 2,
        "the relay used {spent:?} of CPU in {held:?} with idle connections held: a spinning accept loop?"
    );
    relay.proc.assert_running();
    drop(idle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_file_descriptors_the_listener_pauses_instead_of_spinning() {
    let db = TestDb::migrated().await;
    let dir = log_dir("http_nofile");
    let prefix = format!("{}.", unique_name("http_nofile"));
    // A cap above the file descriptors there are: accepting fails (EMFILE)
    // while the idle connections hold them.
    let mut relay = start_relay_with(
        "relay",
        &["prlimit", &nofile(256)],
        &db.url,
        &amqp_url().await,
        &prefix,
        &dir,
        &["--http-max-connections", "2000"],
    );
    relay.wait_healthy().await;
    let cpu_before = cpu_time(relay.proc.pid());
    let held_since = Instant::now();
    let idle = open_idle(relay.port, 600).await;
    tokio::time::sleep(READ_TIMEOUT).await;
    // Held for two seconds at least: relaying the events above costs some
    // CPU of its own, which must not look like a spin when it all went fast.
    tokio::time::sleep(Duration::from_secs(2).saturating_sub(held_since.elapsed())).await;
    let spent = cpu_time(relay.proc.pid()) - cpu_before;
    let held = held_since.elapsed();
    assert!(
        spent < held / 4,
        "the relay used {spent:?} of CPU in {held:?} out of file descriptors: its accept loop spins"
    );
    assert!(
        relay
            .proc
            .log_text()
            .contains("cannot accept HTTP connections; pausing"),
        "accepting never failed: the test did not exhaust the file descriptors"
    );
    // The idle connections time out, freeing their descriptors.
    wait_status(&relay, "/healthz", 200, Duration::from_secs(30)).await;
    relay.proc.assert_running();
    drop(idle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_answers_like_get_without_a_body() {
    let db = TestDb::migrated().await;
    let dir = log_dir("http_head");
    let prefix = format!("{}.", unique_name("http_head"));
    let mut relay = start_relay("relay", &db.url, &amqp_url().await, &prefix, &dir);
    relay.wait_healthy().await;
    // Ready once the first heartbeat reached the database: on a loaded
    // machine that can come after the process answers `/healthz`.
    wait_status(&relay, "/readyz", 200, Duration::from_secs(30)).await;

    for path in ["/healthz", "/readyz", "/metrics"] {
        let answer = raw_exchange(
            relay.port,
            &format!("HEAD {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        )
        .await;
        let (head, body) = answer.split_once("\r\n\r\n").expect("a response head");
        assert!(head.starts_with("HTTP/1.1 200"), "HEAD {path}: {answer}");
        assert_eq!(body, "", "HEAD {path} sent a body");
    }
    let answer = raw_exchange(
        relay.port,
        "HEAD /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{answer}"
    );
    let (code, body) = relay.get("/metrics").await.expect("GET /metrics");
    assert_eq!(code, 200);
    assert!(body.contains("eventbus_relay_published_total"), "{body}");
    let answer = raw_exchange(
        relay.port,
        "POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
    let (code, _) = relay.get("/nowhere").await.expect("GET /nowhere");
    assert_eq!(code, 404);
}

/// `outbox-relay healthcheck args…`: exit code and output.
async fn healthcheck(args: &[&str]) -> (Option<i32>, String) {
    let out = output(BIN, &[&["healthcheck"][..], args].concat()).await;
    (out.status.code(), text(&out))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_and_healthcheck_follow_the_broker() {
    let db = TestDb::migrated().await;
    let dir = log_dir("http_ready");
    let prefix = format!("{}.", unique_name("http_ready"));
    let mut queue = TestQueue::bind_all(&format!("{prefix}{}", Step::DESTINATION)).await;
    let (proxy, proxied) = TcpProxy::for_amqp().await;
    let mut relay = start_relay("relay", &db.url, &proxied, &prefix, &dir);
    relay.wait_healthy().await;
    let http = format!("127.0.0.1:{}", relay.port);

    // Both up, nothing published yet: ready.
    let body = wait_status(&relay, "/readyz", 200, Duration::from_secs(30)).await;
    assert_eq!(body, "ready\n");
    let (code, out) = healthcheck(&["--http", &http]).await;
    assert_eq!(code, Some(0), "healthcheck of a ready relay: {out}");
    assert!(out.contains("200"), "{out}");

    publish_steps(&db.pool, &steps(10, 2), 10).await;
    assert_eq!(queue.read(10, Duration::from_secs(30)).await.len(), 10);
    assert_eq!(relay.get("/readyz").await.expect("GET /readyz").0, 200);

    // The broker goes away; the next event finds it gone.
    proxy.refuse();
    proxy.cut().await;
    publish_steps(&db.pool, &steps(1, 1), 1).await;
    let body = wait_answer(
        &relay,
        "/readyz",
        503,
        "broker unreachable",
        Duration::from_secs(30),
    )
    .await;
    assert!(body.contains("broker unreachable"), "{body}");
    assert_eq!(relay.get("/healthz").await.expect("GET /healthz").0, 200);
    let (code, out) = healthcheck(&["--http", &http]).await;
    assert_eq!(code, Some(1), "healthcheck during a broker outage: {out}");
    assert!(out.contains("503"), "{out}");
    let (code, out) = healthcheck(&["--url", &format!("http://{http}/healthz")]).await;
    assert_eq!(
        code,
        Some(0),
        "healthcheck of /healthz during the outage: {out}"
    );

    // Back: the pending event goes out and the relay is ready again.
    proxy.accept();
    assert_eq!(queue.read(1, Duration::from_secs(60)).await.len(), 1);
    wait_status(&relay, "/readyz", 200, Duration::from_secs(30)).await;
    relay.proc.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_when_the_broker_port_is_closed() {
    let db = TestDb::migrated().await;
    let dir = log_dir("http_closed");
    let prefix = format!("{}.", unique_name("http_closed"));
    // Kafka clients connect lazily: the relay starts, and finds out at the
    // first event.
    let broker = format!("kafka://127.0.0.1:{}", free_port());
    let mut relay = start_relay("relay", &db.url, &broker, &prefix, &dir);
    relay.wait_healthy().await;
    publish_steps(&db.pool, &steps(1, 1), 1).await;
    let body = wait_answer(
        &relay,
        "/readyz",
        503,
        "broker unreachable",
        Duration::from_secs(60),
    )
    .await;
    assert!(body.contains("broker unreachable"), "{body}");
    let (code, out) = healthcheck(&["--http", &format!("127.0.0.1:{}", relay.port)]).await;
    assert_eq!(code, Some(1), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_fails_without_an_answer_and_reads_the_listen_address() {
    // Nothing listens.
    let (code, out) = healthcheck(&["--http", &format!("127.0.0.1:{}", free_port())]).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("cannot connect"), "{out}");

    // A listener that accepts and never answers.
    let mute = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = mute.local_addr().expect("address").port();
    let held = tokio::spawn(async move {
        let mut streams = Vec::new();
        while let Ok((stream, _)) = mute.accept().await {
            streams.push(stream);
        }
    });
    let started = Instant::now();
    let (code, out) = healthcheck(&[
        "--url",
        &format!("http://127.0.0.1:{port}/readyz"),
        "--timeout",
        "1s",
    ])
    .await;
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("no answer within"), "{out}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    held.abort();

    // The address comes from EVENTBUS_HTTP as `run` reads it; 0.0.0.0 is
    // asked on loopback.
    let db = TestDb::migrated().await;
    let dir = log_dir("http_check");
    let prefix = format!("{}.", unique_name("http_check"));
    let mut relay = start_relay("relay", &db.url, &amqp_url().await, &prefix, &dir);
    relay.wait_healthy().await;
    wait_status(&relay, "/readyz", 200, Duration::from_secs(30)).await;
    let out = command(BIN, &["healthcheck"])
        .env("EVENTBUS_HTTP", format!("0.0.0.0:{}", relay.port))
        .output()
        .await
        .expect("run healthcheck");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let (code, out) =
        healthcheck(&["--url", &format!("http://127.0.0.1:{}/nowhere", relay.port)]).await;
    assert_eq!(code, Some(1), "a 404 is unhealthy: {out}");
    let (code, out) = healthcheck(&["--url", "https://127.0.0.1:1/readyz"]).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("only http://"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_format_json_writes_one_json_object_per_line() {
    let db = TestDb::migrated().await;
    let dir = log_dir("http_json");
    let prefix = format!("{}.", unique_name("http_json"));
    let broker = amqp_url().await;
    let args = [
        "--log-format",
        "json",
        "run",
        "--database-url",
        &db.url,
        "--broker",
        &broker,
        "--destination-prefix",
        &prefix,
    ];
    let mut relay = RelayProcess::start(BIN, "relay", &args, &dir);
    relay.wait_healthy().await;
    let log = relay.proc.log_text();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let starting = lines
        .iter()
        .find(|l| l["message"] == "relay starting")
        .unwrap_or_else(|| panic!("no `relay starting` line in:\n{log}"));
    assert_eq!(starting["level"], "INFO", "{starting}");
    assert_eq!(
        starting["http"],
        format!("127.0.0.1:{}", relay.port),
        "fields sit beside the message: {starting}"
    );
    assert!(starting["timestamp"].is_string(), "{starting}");
}
