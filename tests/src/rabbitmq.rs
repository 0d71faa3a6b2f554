//! RabbitMQ helpers: queues bound to an exchange to read what was published,
//! exchange set-up and clean-up, and a TCP proxy that cuts connections so tests
//! can take "the broker" away without touching the shared server.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use eventbus::transport::rabbitmq::lapin::message::Delivery;
use eventbus::transport::rabbitmq::lapin::options::{
    BasicConsumeOptions, BasicQosOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use eventbus::transport::rabbitmq::lapin::types::{AMQPValue, FieldTable};
use eventbus::transport::rabbitmq::lapin::{
    Channel, Connection, ConnectionProperties, Consumer, ExchangeKind,
};
use eventbus::transport::rabbitmq::{
    envelope_from_delivery, RabbitSubscriber, RabbitSubscriberBuilder,
};
use eventbus::Envelope;
use futures::StreamExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// How long an abandoned test queue lives after its last use (`x-expires`).
const QUEUE_EXPIRES_MS: i64 = 10 * 60 * 1000;

/// Opens a connection to the test broker (`AMQP_URL`) on the tokio runtime.
pub async fn connect() -> Connection {
    let url = crate::amqp_url().await;
    Connection::connect(&url, ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| panic!("cannot connect to RabbitMQ at AMQP_URL: {e}"))
}

/// Declares `exchange` the way the publisher does: a durable topic exchange.
pub async fn declare_topic_exchange(channel: &Channel, exchange: &str) {
    declare_exchange(channel, exchange, ExchangeKind::Topic).await;
}

/// Declares a durable exchange of any kind (e.g. to test a mismatched type).
pub async fn declare_exchange(channel: &Channel, exchange: &str, kind: ExchangeKind) {
    channel
        .exchange_declare(
            exchange.into(),
            kind,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("declare exchange {exchange}: {e}"));
}

/// Deletes `exchange` if it exists (test clean-up; errors are ignored).
pub async fn delete_exchange(exchange: &str) {
    let connection = connect().await;
    if let Ok(channel) = connection.create_channel().await {
        let _ = channel
            .exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
            .await;
    }
    let _ = connection.close(200, "test clean-up".into()).await;
}

/// A queue bound to an exchange, read by the test: what a consumer of the
/// exchange would receive.
///
/// The queue expires ten minutes after its last use, so aborted tests leave
/// nothing behind for long; [`TestQueue::delete`] removes it at once.
pub struct TestQueue {
    /// The queue's name.
    pub name: String,
    /// The exchange it is bound to.
    pub exchange: String,
    connection: Connection,
    channel: Channel,
    consumer: Option<Consumer>,
}

impl std::fmt::Debug for TestQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestQueue")
            .field("name", &self.name)
            .field("exchange", &self.exchange)
            .finish_non_exhaustive()
    }
}

impl TestQueue {
    /// Declares `exchange` (durable topic, as the publisher does) and a fresh
    /// queue bound to it with every routing key (`#`).
    pub async fn bind_all(exchange: &str) -> Self {
        Self::bind(exchange, &["#"]).await
    }

    /// Declares `exchange` (durable topic) and a fresh queue bound to it with
    /// each of `patterns` (topic patterns such as `com.example.order.*`).
    pub async fn bind(exchange: &str, patterns: &[&str]) -> Self {
        Self::new(exchange, patterns, true).await
    }

    /// A fresh queue bound with each of `patterns` to `exchange`, which must
    /// already exist (of any kind; fanout exchanges ignore the patterns).
    pub async fn bind_existing(exchange: &str, patterns: &[&str]) -> Self {
        Self::new(exchange, patterns, false).await
    }

    async fn new(exchange: &str, patterns: &[&str], declare: bool) -> Self {
        let connection = connect().await;
        let channel = connection.create_channel().await.expect("open channel");
        if declare {
            declare_topic_exchange(&channel, exchange).await;
        }
        let name = crate::unique_name(&format!("{exchange}_q"));
        let mut arguments = FieldTable::default();
        arguments.insert("x-expires".into(), AMQPValue::LongLongInt(QUEUE_EXPIRES_MS));
        channel
            .queue_declare(
                name.as_str().into(),
                QueueDeclareOptions::default(),
                arguments,
            )
            .await
            .unwrap_or_else(|e| panic!("declare queue {name}: {e}"));
        for pattern in patterns {
            channel
                .queue_bind(
                    name.as_str().into(),
                    exchange.into(),
                    (*pattern).into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .unwrap_or_else(|e| panic!("bind queue {name} to {exchange} ({pattern}): {e}"));
        }
        TestQueue {
            name,
            exchange: exchange.to_owned(),
            connection,
            channel,
            consumer: None,
        }
    }

    async fn consumer(&mut self) -> &mut Consumer {
        if self.consumer.is_none() {
            self.channel
                .basic_qos(1000, BasicQosOptions::default())
                .await
                .expect("basic.qos");
            let consumer = self
                .channel
                .basic_consume(
                    self.name.as_str().into(),
                    crate::unique_name("test_consumer").into(),
                    BasicConsumeOptions {
                        no_ack: true,
                        ..BasicConsumeOptions::default()
                    },
                    FieldTable::default(),
                )
                .await
                .unwrap_or_else(|e| panic!("consume from {}: {e}", self.name));
            self.consumer = Some(consumer);
        }
        match self.consumer.as_mut() {
            Some(consumer) => consumer,
            None => unreachable!("the consumer was just set"),
        }
    }

    /// Receives up to `n` messages, waiting at most `timeout` in total; returns
    /// what arrived (possibly fewer).
    pub async fn try_read(&mut self, n: usize, timeout: Duration) -> Vec<Delivery> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut out = Vec::with_capacity(n);
        let consumer = self.consumer().await;
        while out.len() < n {
            match tokio::time::timeout_at(deadline, consumer.next()).await {
                Ok(Some(Ok(delivery))) => out.push(delivery),
                Ok(Some(Err(e))) => panic!("consumer error: {e}"),
                Ok(None) | Err(_) => break,
            }
        }
        out
    }

    /// Receives exactly `n` messages within `timeout`, or panics saying how many
    /// arrived.
    pub async fn read(&mut self, n: usize, timeout: Duration) -> Vec<Delivery> {
        let out = self.try_read(n, timeout).await;
        assert_eq!(
            out.len(),
            n,
            "queue {} (bound to {}) received {} of {n} messages within {timeout:?}",
            self.name,
            self.exchange,
            out.len()
        );
        out
    }

    /// Receives exactly `n` messages within `timeout` and decodes each with
    /// [`envelope_from_delivery`].
    pub async fn read_envelopes(&mut self, n: usize, timeout: Duration) -> Vec<Envelope> {
        decode_all(&self.read(n, timeout).await)
    }

    /// Receives up to `n` messages within `timeout`, as [`try_read`](Self::try_read),
    /// and decodes each with [`envelope_from_delivery`].
    pub async fn try_read_envelopes(&mut self, n: usize, timeout: Duration) -> Vec<Envelope> {
        decode_all(&self.try_read(n, timeout).await)
    }

    /// Asserts that nothing more arrives within `wait`.
    pub async fn assert_empty(&mut self, wait: Duration) {
        let extra = self.try_read(1, wait).await;
        assert!(
            extra.is_empty(),
            "queue {} received an unexpected message: {:?}",
            self.name,
            extra.first().map(|d| &d.properties)
        );
    }

    /// Deletes the queue and closes its connection.
    pub async fn delete(self) {
        let _ = self
            .channel
            .queue_delete(self.name.as_str().into(), QueueDeleteOptions::default())
            .await;
        let _ = self.connection.close(200, "test done".into()).await;
    }
}

/// A [`eventbus::transport::Subscriber`] for consumer group `group` (its
/// durable queue) bound to each of `exchanges` with every routing key, at most
/// `prefetch` messages unacknowledged. Panics when the broker cannot be reached.
///
/// The queue expires ten minutes after its last subscriber left, so groups of
/// aborted tests do not stay on the shared broker; every subscriber of a group
/// made here declares it the same way.
pub async fn subscriber(
    url: &str,
    group: &str,
    exchanges: &[&str],
    prefetch: usize,
) -> Box<dyn eventbus::transport::Subscriber> {
    Box::new(
        subscriber_builder(url, group, exchanges, prefetch)
            .connect()
            .await
            .unwrap_or_else(|e| {
                panic!("cannot subscribe group {group} to {exchanges:?} on RabbitMQ: {e}")
            }),
    )
}

/// The builder behind [`subscriber`], for tests that need more options (single
/// active consumer, lanes).
pub fn subscriber_builder(
    url: &str,
    group: &str,
    exchanges: &[&str],
    prefetch: usize,
) -> RabbitSubscriberBuilder {
    let mut builder = RabbitSubscriber::builder(url)
        .group(group)
        .prefetch(prefetch)
        .queue_expires(Duration::from_millis(QUEUE_EXPIRES_MS as u64));
    for exchange in exchanges {
        builder = builder.bind_all(*exchange);
    }
    builder
}

/// Deletes the queue of consumer group `group` (test clean-up; errors are ignored).
pub async fn delete_group(group: &str) {
    let connection = connect().await;
    if let Ok(channel) = connection.create_channel().await {
        let _ = channel
            .queue_delete(group.into(), QueueDeleteOptions::default())
            .await;
    }
    let _ = connection.close(200, "test clean-up".into()).await;
}

/// How many messages queue `queue` holds, or `None` if it does not exist
/// (a passive declare answers both).
pub async fn queue_depth(queue: &str) -> Option<u32> {
    let connection = connect().await;
    let channel = connection.create_channel().await.expect("a channel");
    let found = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .ok()
        .map(|q| q.message_count());
    let _ = connection.close(200, "test".into()).await;
    found
}

/// The `host:port` of an AMQP (or any `scheme://user:pass@host:port/…`) URL.
pub fn url_host_port(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if host_port.contains(':') {
        host_port.to_owned()
    } else {
        format!("{host_port}:5672")
    }
}

/// `url` with its `host:port` replaced by `host_port`.
pub fn url_with_host_port(url: &str, host_port: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("amqp", url));
    let authority_len = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_len);
    let userinfo = authority.rsplit_once('@').map(|(u, _)| u);
    match userinfo {
        Some(u) => format!("{scheme}://{u}@{host_port}{path}"),
        None => format!("{scheme}://{host_port}{path}"),
    }
}

/// A TCP proxy on 127.0.0.1 in front of a broker, to simulate the broker going
/// away and coming back without stopping the shared server.
///
/// [`TcpProxy::cut`] drops every proxied connection (as a broker restart does);
/// [`TcpProxy::refuse`] makes new connections fail until [`TcpProxy::accept`].
/// The proxy stops when dropped.
#[derive(Debug)]
pub struct TcpProxy {
    addr: SocketAddr,
    refusing: Arc<AtomicBool>,
    open: Arc<AtomicUsize>,
    cut: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    /// Starts a proxy to `upstream` (`host:port`) on a free local port.
    pub async fn start(upstream: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy port");
        let addr = listener.local_addr().expect("proxy address");
        let refusing = Arc::new(AtomicBool::new(false));
        let open = Arc::new(AtomicUsize::new(0));
        let (cut, cut_rx) = watch::channel(0_u64);
        let upstream = upstream.to_owned();
        let task = tokio::spawn({
            let refusing = refusing.clone();
            let open = open.clone();
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    if refusing.load(Ordering::SeqCst) {
                        drop(client);
                        continue;
                    }
                    open.fetch_add(1, Ordering::SeqCst);
                    let open = OpenGuard(open.clone());
                    let mut cut = cut_rx.clone();
                    // Only cuts from now on concern this connection.
                    let _ = cut.borrow_and_update();
                    let upstream = upstream.clone();
                    tokio::spawn(async move {
                        proxy(client, upstream, cut).await;
                        drop(open);
                    });
                }
            }
        });
        TcpProxy {
            addr,
            refusing,
            open,
            cut,
            task,
        }
    }

    /// Starts a proxy to the test broker and returns it with the URL (same
    /// credentials and vhost) that goes through it.
    pub async fn for_amqp() -> (Self, String) {
        let url = crate::amqp_url().await;
        let proxy = Self::start(&url_host_port(&url)).await;
        let proxied = url_with_host_port(&url, &proxy.addr.to_string());
        (proxy, proxied)
    }

    /// The proxy's local address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes every connection currently proxied, and waits (up to 10 s) until
    /// they are closed: nothing sent after this reaches the broker through them.
    pub async fn cut(&self) {
        self.cut.send_modify(|n| *n += 1);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.open.load(Ordering::SeqCst) > 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "proxied connections did not close"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// How many connections are proxied now.
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// Closes new connections as soon as they are accepted (the broker is down).
    pub fn refuse(&self) {
        self.refusing.store(true, Ordering::SeqCst);
    }

    /// Proxies new connections again (the broker is back).
    pub fn accept(&self) {
        self.refusing.store(false, Ordering::SeqCst);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut.send_modify(|n| *n += 1);
        self.task.abort();
    }
}

/// Counts a proxied connection until its task ends.
struct OpenGuard(Arc<AtomicUsize>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn proxy(mut client: TcpStream, upstream: String, mut cut: watch::Receiver<u64>) {
    let Ok(mut server) = TcpStream::connect(&upstream).await else {
        return;
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
        _ = cut.changed() => {}
    }
}

/// Decodes every delivery as a CloudEvent, or panics saying why one is not.
fn decode_all(deliveries: &[Delivery]) -> Vec<Envelope> {
    deliveries
        .iter()
        .map(|d| {
            envelope_from_delivery(&d.properties, &d.data)
                .unwrap_or_else(|e| panic!("not a CloudEvent: {e}"))
        })
        .collect()
}
