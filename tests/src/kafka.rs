//! Kafka helpers for the integration suites: a publisher and a subscriber with
//! test-friendly settings, reading a topic back from the beginning without
//! joining a consumer group, topic metadata, the Java client's key
//! partitioner, and a private tansu broker.

use std::time::{Duration, Instant};

use eventbus::transport::kafka::rdkafka;
use eventbus::transport::kafka::{
    KafkaPublisher, KafkaPublisherBuilder, KafkaSubscriber, KafkaSubscriberBuilder,
};
use eventbus::Publisher;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};

use crate::harness::{wait_listening, Proc};
use crate::relay::Step;

/// How long metadata requests in these helpers may take.
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// A [`KafkaPublisher`] builder for `brokers` with a short linger, ready for
/// more settings.
pub fn publisher_builder(brokers: &str) -> KafkaPublisherBuilder {
    KafkaPublisher::builder(brokers).set("linger.ms", "5")
}

/// Creates `topic` with `partitions` partitions (no-op if it exists) and returns
/// a publisher for `brokers` configured with that partition count.
pub async fn publisher_with_topic(brokers: &str, topic: &str, partitions: u32) -> KafkaPublisher {
    let publisher = publisher_builder(brokers)
        .partitions(partitions)
        .build()
        .expect("build Kafka publisher");
    publisher
        .ensure_destination(topic)
        .await
        .unwrap_or_else(|e| panic!("create Kafka topic `{topic}`: {e}"));
    publisher
}

/// Creates `topic` with `partitions` partitions and returns a publisher that
/// puts every message in a record batch of its own.
///
/// tansu 0.6 answers a fetch that starts inside a record batch with the batches
/// after it: the rest of that batch is skipped. A consumer starts inside a
/// batch whenever it resumes from a committed offset (after a crash, a
/// rebalance, a close) or is rewound to a released message, so with the
/// relay's multi-message batches the consumer suites would lose messages to
/// the broker. Kafka itself returns the whole batch and the client skips the
/// part before the offset asked for.
pub async fn one_per_batch_publisher(
    brokers: &str,
    topic: &str,
    partitions: u32,
) -> KafkaPublisher {
    let publisher = publisher_builder(brokers)
        .set("batch.num.messages", "1")
        .partitions(partitions)
        .build()
        .expect("build Kafka publisher");
    publisher
        .ensure_destination(topic)
        .await
        .unwrap_or_else(|e| panic!("create Kafka topic `{topic}`: {e}"));
    publisher
}

/// Group timeouts of test subscribers: a killed member's partitions move on
/// after a few seconds, and tansu's coordinator completes joins quickly (it
/// waits up to `max.poll.interval.ms` for members to rejoin).
pub const TEST_GROUP_TIMEOUT: Duration = Duration::from_secs(6);

/// A [`eventbus::transport::Subscriber`] for consumer group `group` on `topics`,
/// at most `max_in_flight` messages unsettled, with test-friendly group
/// timeouts ([`TEST_GROUP_TIMEOUT`]). Panics on invalid settings.
pub async fn subscriber(
    brokers: &str,
    group: &str,
    topics: &[&str],
    max_in_flight: usize,
) -> Box<dyn eventbus::transport::Subscriber> {
    Box::new(
        subscriber_builder(brokers, group, topics, max_in_flight)
            .build()
            .unwrap_or_else(|e| {
                panic!("cannot subscribe group {group} to {topics:?} on Kafka: {e}")
            }),
    )
}

/// The builder behind [`subscriber`], for tests that need more settings.
pub fn subscriber_builder(
    brokers: &str,
    group: &str,
    topics: &[&str],
    max_in_flight: usize,
) -> KafkaSubscriberBuilder {
    KafkaSubscriber::builder(brokers)
        .group(group)
        .topics(topics.iter().copied())
        .max_in_flight(max_in_flight)
        .session_timeout(TEST_GROUP_TIMEOUT)
        .max_poll_interval(TEST_GROUP_TIMEOUT)
        // A crash repeats at most a second of work (librdkafka's default: 5 s).
        .set("auto.commit.interval.ms", "1000")
}

/// Consumer settings that suit tansu as well as Kafka: a fresh group id that is
/// never joined or committed, and short group timeouts in case a caller does
/// `subscribe` (tansu's coordinator is slow to complete a join otherwise).
pub fn consumer_config(brokers: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("group.id", crate::unique_name("eventbus_test_reader"))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "1000")
        .set("max.poll.interval.ms", "6000");
    config
}

/// Reads `topic` from the beginning of every partition (by `assign`, no group
/// join) until `expected` messages arrived or `timeout` passed, and returns what
/// it got, each partition's messages in offset order. Callers assert the count.
///
/// # Panics
///
/// If the consumer cannot be created or the topic's metadata cannot be read.
pub async fn read_all(
    brokers: &str,
    topic: &str,
    expected: usize,
    timeout: Duration,
) -> Vec<OwnedMessage> {
    read_all_with(consumer_config(brokers), topic, expected, timeout).await
}

/// [`read_all`] with a consumer configured by `config` (TLS settings, say),
/// based on [`consumer_config`].
///
/// # Panics
///
/// As [`read_all`].
pub async fn read_all_with(
    config: ClientConfig,
    topic: &str,
    expected: usize,
    timeout: Duration,
) -> Vec<OwnedMessage> {
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        read_all_blocking(&config, &topic, expected, Duration::ZERO, timeout)
    })
    .await
    .expect("Kafka reader thread")
}

/// Reads `topic` from the beginning of every partition (no consumer group)
/// until at least `at_least` messages arrived and then nothing more for
/// `quiet`, or until `timeout`; decodes each payload as a [`Step`]. Callers
/// check what arrived (duplicates included).
///
/// # Panics
///
/// As [`read_all`], and when a payload is not a [`Step`].
pub async fn read_steps(
    brokers: &str,
    topic: &str,
    at_least: usize,
    quiet: Duration,
    timeout: Duration,
) -> Vec<Step> {
    let config = consumer_config(brokers);
    let topic = topic.to_owned();
    let messages = tokio::task::spawn_blocking(move || {
        read_all_blocking(&config, &topic, at_least, quiet, timeout)
    })
    .await
    .expect("Kafka reader thread");
    messages
        .iter()
        .map(|m| {
            let payload = m.payload().expect("message has a payload");
            serde_json::from_slice(payload)
                .unwrap_or_else(|e| panic!("not a Step: {e}: {payload:?}"))
        })
        .collect()
}

/// Reads until `expected` messages arrived and nothing more came for
/// `quiet` (zero: stop at `expected`), or until `timeout`.
fn read_all_blocking(
    config: &ClientConfig,
    topic: &str,
    expected: usize,
    quiet: Duration,
    timeout: Duration,
) -> Vec<OwnedMessage> {
    let deadline = Instant::now() + timeout;
    let consumer: BaseConsumer = config.create().expect("create Kafka consumer");
    let partitions = partition_ids(&consumer, topic);
    let mut assignment = TopicPartitionList::new();
    for partition in partitions {
        assignment
            .add_partition_offset(topic, partition, Offset::Beginning)
            .expect("add partition to assignment");
    }
    consumer.assign(&assignment).expect("assign partitions");

    let mut out = Vec::with_capacity(expected);
    let mut last = Instant::now();
    while Instant::now() < deadline && !(out.len() >= expected && last.elapsed() >= quiet) {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                last = Instant::now();
                out.push(message.detach());
            }
            // Transient (leader moves, a slow broker): keep polling until the
            // deadline; the caller's count assertion reports what is missing.
            Some(Err(e)) => eprintln!("reading Kafka topic `{topic}`: {e}"),
            None => {}
        }
    }
    out
}

/// Partition ids of `topic`, waiting up to ten seconds for it to appear.
fn partition_ids(consumer: &BaseConsumer, topic: &str) -> Vec<i32> {
    let deadline = Instant::now() + METADATA_TIMEOUT;
    loop {
        let metadata = consumer
            .fetch_metadata(Some(topic), METADATA_TIMEOUT)
            .unwrap_or_else(|e| panic!("metadata of Kafka topic `{topic}`: {e}"));
        let ids: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|t| t.name() == topic && t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        if !ids.is_empty() {
            return ids;
        }
        assert!(
            Instant::now() < deadline,
            "Kafka topic `{topic}` does not exist (or has no partitions)"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The number of partitions of `topic`, or `None` if it does not exist.
///
/// # Panics
///
/// If the cluster does not answer.
pub async fn partition_count(brokers: &str, topic: &str) -> Option<usize> {
    let config = consumer_config(brokers);
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = config.create().expect("create Kafka consumer");
        let metadata = consumer
            .fetch_metadata(Some(&topic), METADATA_TIMEOUT)
            .unwrap_or_else(|e| panic!("metadata of Kafka topic `{topic}`: {e}"));
        metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
            .map(|t| t.partitions().len())
            .filter(|n| *n > 0)
    })
    .await
    .expect("Kafka metadata thread")
}

/// The sum over the partitions of `topic` of the offsets consumer group
/// `group` has committed (0 where it committed nothing): on a fresh topic, how
/// many messages the group is done with. Reads the offsets without joining the
/// group.
///
/// (Compare it with the number of messages produced, not with the high
/// watermarks: tansu reports the base offset of the last record batch there.)
///
/// # Panics
///
/// If the cluster does not answer.
pub async fn committed_total(brokers: &str, group: &str, topic: &str) -> i64 {
    let mut config = consumer_config(brokers);
    config.set("group.id", group);
    let (group, topic) = (group.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = config.create().expect("create Kafka consumer");
        let mut list = TopicPartitionList::new();
        for partition in partition_ids(&consumer, &topic) {
            list.add_partition(&topic, partition);
        }
        let committed = consumer
            .committed_offsets(list, METADATA_TIMEOUT)
            .unwrap_or_else(|e| panic!("committed offsets of group {group}: {e}"));
        committed
            .elements()
            .iter()
            .map(|e| match e.offset() {
                Offset::Offset(o) => o,
                _ => 0,
            })
            .sum()
    })
    .await
    .expect("Kafka offsets thread")
}

/// The value of header `name` of `message` as text, if present and UTF-8.
pub fn header(message: &impl Message, name: &str) -> Option<String> {
    message
        .headers()?
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
        .map(str::to_owned)
}

/// The partition the Java client (and librdkafka's `murmur2_random`) picks for
/// a non-empty `key` among `partitions`: `toPositive(murmur2(key)) % partitions`.
pub fn java_partition(key: &[u8], partitions: i32) -> i32 {
    (murmur2(key) & 0x7fff_ffff) % partitions
}

/// Kafka's murmur2 hash (`org.apache.kafka.common.utils.Utils.murmur2`).
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    // Kafka hashes the length as a Java int; keys never come near 2^31 bytes.
    let mut h = SEED ^ (data.len() as u32);
    let chunks = data.chunks_exact(4);
    let tail = chunks.remainder();
    for chunk in chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The tansu binary, for tests that start a private Kafka-protocol broker:
/// `TANSU_BIN`, else `~/.cargo/bin/tansu`.
///
/// # Panics
///
/// When it does not exist, saying how to install it.
pub fn tansu_bin() -> std::path::PathBuf {
    let path = std::env::var_os("TANSU_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cargo/bin/tansu")
        });
    assert!(
        path.is_file(),
        "this test starts a private Kafka-protocol broker, but {} does not exist: install it with \
         `cargo install tansu --version 0.6.0 --locked --features dynostore` or set TANSU_BIN",
        path.display()
    );
    path
}

/// Starts a private tansu (in-memory storage) listening on `listen_port` and
/// advertising `advertised_port` (a proxy's, say, so that every connection a
/// client makes after bootstrapping goes through it), logging to
/// `dir/tansu.log`; waits until it accepts connections. It is killed when the
/// returned process is dropped.
///
/// # Panics
///
/// When tansu is missing ([`tansu_bin`]), exits, or does not listen within 30 s.
pub async fn start_tansu(listen_port: u16, advertised_port: u16, dir: &std::path::Path) -> Proc {
    let mut cmd = tokio::process::Command::new(tansu_bin());
    cmd.args([
        "broker",
        "--listener-url",
        &format!("tcp://127.0.0.1:{listen_port}"),
        "--advertised-listener-url",
        &format!("tcp://127.0.0.1:{advertised_port}"),
        "--storage-engine",
        "memory://tansu/",
    ])
    .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
    .stdin(std::process::Stdio::null());
    let mut tansu = Proc::spawn("tansu", cmd, dir);
    wait_listening(listen_port, Duration::from_secs(30), "tansu", || {
        tansu.running()
    })
    .await;
    tansu
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafka_test_vectors() {
        // From Kafka's UtilsTest.testMurmur2.
        for (input, hash) in [
            ("21", -973_932_308),
            ("foobar", -790_332_482),
            ("a-little-bit-long-string", -985_981_536),
            ("a-little-bit-longer-string", -1_486_304_829),
            (
                "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            ("abc", 479_470_107),
        ] {
            assert_eq!(murmur2(input.as_bytes()), hash, "{input}");
        }
    }
}
