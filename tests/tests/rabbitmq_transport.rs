//! The RabbitMQ transport against a real broker (`AMQP_URL`): publisher confirms,
//! ordering, the CloudEvents AMQP binding, unroutable and refused messages,
//! unreachable brokers and reconnection.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use eventbus::transport::rabbitmq::lapin::message::Delivery;
use eventbus::transport::rabbitmq::lapin::types::AMQPValue;
use eventbus::transport::rabbitmq::lapin::ExchangeKind;
use eventbus::transport::rabbitmq::{envelope_from_delivery, RabbitPublisher};
use eventbus::{Envelope, Error, OutgoingMessage, PublishError, Publisher};
use eventbus_tests::rabbitmq::{connect, declare_exchange, delete_exchange, TcpProxy, TestQueue};
use eventbus_tests::{amqp_url, unique_name};

const READ_TIMEOUT: Duration = Duration::from_secs(30);
const ORDER_PLACED: &str = "com.example.order.placed";

fn event(key: &str, sequence: usize) -> Envelope {
    let mut e = Envelope::new(
        "urn:service:orders",
        ORDER_PLACED,
        format!(r#"{{"order_id":"{key}","n":{sequence}}}"#).into_bytes(),
    );
    e.partition_key = Some(key.to_owned());
    e.subject = Some(key.to_owned());
    e.extensions.insert("sequence".into(), sequence.to_string());
    e
}

fn message(destination: &str, envelope: Envelope) -> OutgoingMessage {
    OutgoingMessage {
        destination: destination.to_owned(),
        envelope,
    }
}

/// A publisher that rejects unroutable messages (the `park` policy), so that
/// these tests see returns as errors.
async fn connect_publisher() -> RabbitPublisher {
    RabbitPublisher::builder(amqp_url().await)
        .unroutable(eventbus::transport::rabbitmq::Unroutable::Park)
        .connect()
        .await
        .expect("connect to RabbitMQ")
}

fn header(delivery: &Delivery, name: &str) -> Option<String> {
    let headers = delivery.properties.headers().as_ref()?;
    match headers.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        other => panic!("header {name} is not an AMQP long string: {other:?}"),
    }
}

fn short(value: &Option<eventbus::transport::rabbitmq::lapin::types::ShortString>) -> Option<&str> {
    value.as_ref().map(|s| s.as_str())
}

fn ids(envelopes: &[Envelope]) -> Vec<&str> {
    envelopes.iter().map(|e| e.id.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_messages_across_fifty_keys_are_confirmed_and_read_back_in_order() {
    let exchange = unique_name("rmq_batch");
    let mut queue = TestQueue::bind_all(&exchange).await;
    let publisher = connect_publisher().await;
    assert_eq!(publisher.system(), "rabbitmq");

    let messages: Vec<OutgoingMessage> = (0..1000)
        .map(|i| message(&exchange, event(&format!("key-{}", i % 50), i / 50)))
        .collect();
    let started = std::time::Instant::now();
    let results = publisher.publish_batch(&messages).await;
    let elapsed = started.elapsed();
    assert_eq!(results.len(), messages.len());
    for (i, result) in results.iter().enumerate() {
        assert!(result.is_ok(), "message {i} not confirmed: {result:?}");
    }
    println!("1000 messages confirmed in {elapsed:?}");

    let received = queue.read_envelopes(1000, READ_TIMEOUT).await;
    let sent: Vec<Envelope> = messages.iter().map(|m| m.envelope.clone()).collect();
    assert_eq!(
        ids(&received),
        ids(&sent),
        "one channel, one queue: total order kept"
    );
    let mut last: HashMap<String, usize> = HashMap::new();
    for e in &received {
        let key = e.partition_key.clone().expect("partition key");
        let seq: usize = e.extensions["sequence"].parse().expect("sequence");
        if let Some(prev) = last.insert(key.clone(), seq) {
            assert_eq!(seq, prev + 1, "key {key} out of order");
        }
    }
    assert_eq!(last.len(), 50);
    assert_eq!(received, sent, "every envelope arrives unchanged");
    queue.assert_empty(Duration::from_millis(300)).await;

    queue.delete().await;
    delete_exchange(&exchange).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_follow_the_cloudevents_amqp_binding() {
    let exchange = unique_name("rmq_binding");
    let mut queue = TestQueue::bind_all(&exchange).await;
    let publisher = RabbitPublisher::builder(amqp_url().await)
        .app_id("orders-service")
        .connect()
        .await
        .expect("connect");

    let mut json = event("order-7", 1);
    json.traceparent = Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());
    json.tracestate = Some("congo=t61rcWkgMzE".into());
    json.correlation_id = Some("corr-1".into());
    json.dataschema = Some(eventbus::envelope::dataschema_uri(ORDER_PLACED, 2));
    let mut text = Envelope::new(
        "urn:service:notes",
        "com.example.note.added",
        b"plain".to_vec(),
    );
    text.datacontenttype = Some("text/plain; charset=utf-8".into());
    let mut untyped = Envelope::new(
        "urn:service:notes",
        "com.example.note.added",
        b"{}".to_vec(),
    );
    untyped.datacontenttype = None;

    let batch = [
        message(&exchange, json.clone()),
        message(&exchange, text.clone()),
        message(&exchange, untyped.clone()),
    ];
    for result in publisher.publish_batch(&batch).await {
        result.expect("confirmed");
    }
    let deliveries = queue.read(3, READ_TIMEOUT).await;

    let d = &deliveries[0];
    assert_eq!(d.exchange.as_str(), exchange);
    assert_eq!(
        d.routing_key.as_str(),
        ORDER_PLACED,
        "routing key = CloudEvents type"
    );
    assert_eq!(header(d, "ce-specversion").as_deref(), Some("1.0"));
    assert_eq!(header(d, "ce-id"), Some(json.id.clone()));
    assert_eq!(
        header(d, "ce-source").as_deref(),
        Some("urn:service:orders")
    );
    assert_eq!(header(d, "ce-type").as_deref(), Some(ORDER_PLACED));
    assert_eq!(header(d, "ce-subject").as_deref(), Some("order-7"));
    assert_eq!(header(d, "ce-partitionkey").as_deref(), Some("order-7"));
    assert_eq!(header(d, "ce-correlationid").as_deref(), Some("corr-1"));
    assert_eq!(header(d, "ce-sequence").as_deref(), Some("1"));
    assert_eq!(header(d, "ce-dataschema"), json.dataschema.clone());
    assert!(
        header(d, "ce-time").is_some_and(|t| t.ends_with('Z')),
        "ce-time in UTC"
    );
    assert_eq!(header(d, "traceparent"), json.traceparent.clone());
    assert_eq!(header(d, "tracestate"), json.tracestate.clone());
    assert_eq!(header(d, "ce-traceparent"), json.traceparent.clone());
    assert_eq!(
        header(d, "ce-datacontenttype"),
        None,
        "content type is a property"
    );
    let p = &d.properties;
    assert_eq!(short(p.content_type()), Some("application/json"));
    assert_eq!(short(p.message_id()), Some(json.id.as_str()));
    assert_eq!(short(p.kind()), Some(ORDER_PLACED));
    assert_eq!(short(p.app_id()), Some("orders-service"));
    assert_eq!(p.delivery_mode(), &Some(2), "persistent");
    let seconds = json.time.map(|t| t.timestamp() as u64);
    assert_eq!(p.timestamp(), &seconds);
    assert_eq!(d.data, json.data);

    let decoded = envelope_from_delivery(&d.properties, &d.data).expect("decodes");
    assert_eq!(decoded.time, json.time, "ce-time keeps full precision");
    assert_eq!(decoded, json, "round trip keeps every attribute");

    let d = &deliveries[1];
    assert_eq!(
        short(d.properties.content_type()),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(d.data, b"plain");
    let decoded = envelope_from_delivery(&d.properties, &d.data).expect("decodes");
    assert_eq!(decoded, text);

    let d = &deliveries[2];
    assert_eq!(short(d.properties.content_type()), Some("application/json"));
    let decoded = envelope_from_delivery(&d.properties, &d.data).expect("decodes");
    assert_eq!(decoded.datacontenttype.as_deref(), Some("application/json"));
    assert_eq!(decoded.id, untyped.id);

    queue.delete().await;
    delete_exchange(&exchange).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unroutable_messages_are_rejected_while_the_rest_of_the_batch_succeeds() {
    let routed = unique_name("rmq_routed");
    let unbound = unique_name("rmq_unbound");
    // Only order events are bound: other types sent to `routed` have no queue.
    let mut queue = TestQueue::bind(&routed, &["com.example.order.*"]).await;
    let publisher = connect_publisher().await;

    let mut messages = Vec::new();
    let mut expect_unroutable = Vec::new();
    for i in 0..200 {
        let (destination, envelope, unroutable) = match i % 10 {
            3 => (&unbound, event("k", i), true),
            7 => {
                let mut e = event("k", i);
                e.event_type = "com.example.payment.captured".into();
                (&routed, e, true)
            }
            _ => (&routed, event("k", i), false),
        };
        messages.push(message(destination, envelope));
        expect_unroutable.push(unroutable);
    }
    let results = publisher.publish_batch(&messages).await;
    assert_eq!(results.len(), messages.len());
    for (i, (result, unroutable)) in results.iter().zip(&expect_unroutable).enumerate() {
        if *unroutable {
            match result {
                Err(PublishError::Rejected(reason)) => assert!(
                    reason.contains("unroutable") && reason.contains(&messages[i].destination),
                    "message {i}: {reason}"
                ),
                other => panic!("message {i} is unroutable but got {other:?}"),
            }
        } else {
            assert!(result.is_ok(), "message {i}: {result:?}");
        }
    }

    let routable: Vec<Envelope> = messages
        .iter()
        .zip(&expect_unroutable)
        .filter(|(_, u)| !**u)
        .map(|(m, _)| m.envelope.clone())
        .collect();
    let received = queue.read_envelopes(routable.len(), READ_TIMEOUT).await;
    assert_eq!(ids(&received), ids(&routable));
    queue.assert_empty(Duration::from_millis(300)).await;

    // The channel is still good for the next batch.
    let again = publisher
        .publish_batch(&[message(&routed, event("k", 999))])
        .await;
    assert!(again[0].is_ok(), "{:?}", again[0]);
    queue.read(1, READ_TIMEOUT).await;

    queue.delete().await;
    delete_exchange(&routed).await;
    delete_exchange(&unbound).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_batches_get_their_own_confirms_and_returns() {
    let exchange = unique_name("rmq_concurrent");
    let mut queue = TestQueue::bind(&exchange, &["com.example.order.*"]).await;
    let publisher = connect_publisher().await;

    let batches: Vec<Vec<OutgoingMessage>> = (0..4)
        .map(|b| {
            (0..250)
                .map(|i| {
                    let mut e = event(&format!("batch-{b}"), i);
                    if i % 10 == 0 {
                        e.event_type = "com.example.unbound.event".into();
                    }
                    message(&exchange, e)
                })
                .collect()
        })
        .collect();
    let all = futures::future::join_all(batches.iter().map(|b| publisher.publish_batch(b))).await;
    for (b, results) in all.iter().enumerate() {
        for (i, result) in results.iter().enumerate() {
            if i % 10 == 0 {
                assert!(
                    matches!(result, Err(PublishError::Rejected(r)) if r.contains("unroutable")),
                    "batch {b} message {i}: {result:?}"
                );
            } else {
                assert!(result.is_ok(), "batch {b} message {i}: {result:?}");
            }
        }
    }
    let received = queue.read_envelopes(4 * 225, READ_TIMEOUT).await;
    let got: HashSet<&str> = received.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(got.len(), 900, "no duplicates");
    queue.assert_empty(Duration::from_millis(300)).await;

    queue.delete().await;
    delete_exchange(&exchange).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_broker_is_unavailable_without_leaking_the_password() {
    let started = std::time::Instant::now();
    let err = RabbitPublisher::builder("amqp://guest:s3cr3t-pw@127.0.0.1:1/%2f")
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .expect_err("nothing listens on port 1");
    assert!(started.elapsed() < Duration::from_secs(6));
    let text = err.to_string();
    let debug = format!("{err:?}");
    assert!(
        matches!(&err, Error::Publish(PublishError::Unavailable(_))),
        "{debug}"
    );
    assert!(err.is_transient());
    assert!(text.contains("cannot connect to RabbitMQ"), "{text}");
    assert!(text.contains("amqp://guest:***@127.0.0.1:1/%2f"), "{text}");
    assert!(
        !text.contains("s3cr3t-pw") && !debug.contains("s3cr3t-pw"),
        "{debug}"
    );

    // Wrong credentials on a live broker: refused, and still no password.
    let url = amqp_url().await;
    let host_port = eventbus_tests::rabbitmq::url_host_port(&url);
    let wrong = format!("amqp://guest:wr0ng-pw@{host_port}/%2f");
    let err = RabbitPublisher::connect(&wrong)
        .await
        .expect_err("bad credentials");
    let text = format!("{err} {err:?}");
    assert!(
        matches!(&err, Error::Publish(PublishError::Unavailable(_))),
        "{text}"
    );
    assert!(!text.contains("wr0ng-pw"), "{text}");

    // A malformed URL is a configuration error.
    let err = RabbitPublisher::connect("rabbit://guest:s3cr3t-pw@host/")
        .await
        .expect_err("bad scheme");
    assert!(matches!(&err, Error::Config(_)), "{err:?}");
    assert!(!err.to_string().contains("s3cr3t-pw"), "{err}");

    // Debug of a working publisher hides the password too.
    let publisher = connect_publisher().await;
    let debug = format!("{publisher:?}");
    assert!(debug.contains(":***@"), "{debug}");
    assert!(!debug.contains("guest:guest"), "{debug}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ensure_destination_is_idempotent_and_declares_a_durable_topic_exchange() {
    let exchange = unique_name("rmq_ensure");
    let publisher = connect_publisher().await;
    publisher
        .ensure_destination(&exchange)
        .await
        .expect("first");
    publisher
        .ensure_destination(&exchange)
        .await
        .expect("second");
    let other = connect_publisher().await;
    other
        .ensure_destination(&exchange)
        .await
        .expect("another publisher");

    // Re-declaring with the same kind and durability succeeds only if it matches.
    let connection = connect().await;
    let channel = connection.create_channel().await.expect("channel");
    declare_exchange(&channel, &exchange, ExchangeKind::Topic).await;

    // An exchange of another kind is a clear rejection, not a broken publisher.
    let fanout = unique_name("rmq_fanout");
    declare_exchange(&channel, &fanout, ExchangeKind::Fanout).await;
    match publisher.ensure_destination(&fanout).await {
        Err(PublishError::Rejected(reason)) => {
            assert!(reason.contains(&fanout), "{reason}");
            assert!(reason.contains("PRECONDITION"), "{reason}");
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
    // Publishing accepts the existing exchange as it is.
    let mut fanout_queue = TestQueue::bind_existing(&fanout, &[""]).await;
    let batch = [
        message(&fanout, event("k", 0)),
        message(&exchange, event("k", 1)),
    ];
    let results = publisher.publish_batch(&batch).await;
    assert!(results[0].is_ok(), "{:?}", results[0]);
    // `exchange` has no queue: the broker returns the message, proving it was sent.
    assert!(
        matches!(&results[1], Err(PublishError::Rejected(r)) if r.contains("unroutable")),
        "{:?}",
        results[1]
    );
    let received = fanout_queue.read_envelopes(1, READ_TIMEOUT).await;
    assert_eq!(received[0].id, batch[0].envelope.id);
    fanout_queue.delete().await;
    publisher
        .ensure_destination(&exchange)
        .await
        .expect("still works");

    for bad in ["", &"x".repeat(256)] {
        assert!(
            matches!(
                publisher.ensure_destination(bad).await,
                Err(PublishError::Rejected(_))
            ),
            "{bad:?}"
        );
    }

    let _ = connection.close(200, "done".into()).await;
    delete_exchange(&exchange).await;
    delete_exchange(&fanout).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_the_broker_refuses_fails_alone() {
    // With declaration off, a missing exchange makes the broker close the channel
    // (404 NOT_FOUND), failing everything in flight with it.
    let exchange = unique_name("rmq_refuse");
    let missing = unique_name("rmq_missing");
    let mut queue = TestQueue::bind_all(&exchange).await;
    let publisher = RabbitPublisher::builder(amqp_url().await)
        .declare_exchanges(false)
        .connect()
        .await
        .expect("connect");

    let mut messages: Vec<OutgoingMessage> =
        (0..20).map(|i| message(&exchange, event("k", i))).collect();
    messages.insert(10, message(&missing, event("k", 100)));
    let results = publisher.publish_batch(&messages).await;
    for (i, result) in results.iter().enumerate() {
        if i == 10 {
            match result {
                Err(PublishError::Rejected(reason)) => {
                    assert!(reason.contains("NOT_FOUND"), "{reason}")
                }
                other => panic!("expected Rejected, got {other:?}"),
            }
        } else {
            assert!(result.is_ok(), "message {i}: {result:?}");
        }
    }

    // Unconfirmed messages were resent: each arrives, duplicates are allowed
    // (at-least-once), first arrivals keep the input order.
    let expected: Vec<&str> = messages
        .iter()
        .filter(|m| m.destination == exchange)
        .map(|m| m.envelope.id.as_str())
        .collect();
    let mut received = queue.read(expected.len(), READ_TIMEOUT).await;
    received.extend(queue.try_read(40, Duration::from_millis(500)).await);
    println!(
        "{} deliveries for {} messages",
        received.len(),
        expected.len()
    );
    let mut first_seen = Vec::new();
    let mut seen = HashSet::new();
    for d in &received {
        let id = short(d.properties.message_id())
            .expect("message id")
            .to_owned();
        if seen.insert(id.clone()) {
            first_seen.push(id);
        }
    }
    assert_eq!(first_seen, expected);

    queue.delete().await;
    delete_exchange(&exchange).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_refusal_the_later_messages_of_its_key_are_not_sent() {
    // The broker refuses m0 (its exchange is missing) and closes the channel,
    // failing m1 and m2 with it. Resending one by one, the publisher learns
    // that m0 is refused before m1's turn: m1, of the same destination and
    // key, is not sent (it would land ahead of m0's retry); m2 goes.
    let exchange = unique_name("rmq_refuse_key");
    let missing = unique_name("rmq_missing_key");
    let mut queue = TestQueue::bind_all(&exchange).await;
    let publisher = RabbitPublisher::builder(amqp_url().await)
        .declare_exchanges(false)
        .connect()
        .await
        .expect("connect");
    let messages = vec![
        message(&missing, event("k", 0)),
        message(&missing, event("k", 1)),
        message(&exchange, event("k", 2)),
    ];
    let results = publisher.publish_batch(&messages).await;
    assert!(
        matches!(&results[0], Err(PublishError::Rejected(_))),
        "{:?}",
        results[0]
    );
    assert!(
        matches!(&results[1], Err(PublishError::NotSent(_))),
        "m1 must wait behind the refused m0: {:?}",
        results[1]
    );
    assert!(results[2].is_ok(), "{:?}", results[2]);
    assert_eq!(queue.read(1, READ_TIMEOUT).await.len(), 1);
    queue.delete().await;
    delete_exchange(&exchange).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_messages_are_rejected_before_reaching_the_broker() {
    let exchange = unique_name("rmq_size");
    let mut queue = TestQueue::bind_all(&exchange).await;
    let publisher = RabbitPublisher::builder(amqp_url().await)
        .max_message_size(1024)
        .connect()
        .await
        .expect("connect");
    let mut big = event("k", 1);
    big.data = vec![b' '; 2048];
    let mut long_type = event("t", 3);
    long_type.event_type = "t".repeat(300);
    let batch = [
        message(&exchange, event("a", 0)),
        message(&exchange, big),
        message(&exchange, event("b", 2)),
        message(&exchange, long_type),
        // Same key as the refused one: held back to keep the key's order.
        message(&exchange, event("k", 4)),
    ];
    let results = publisher.publish_batch(&batch).await;
    assert!(results[0].is_ok() && results[2].is_ok(), "{results:?}");
    assert!(
        matches!(&results[4], Err(PublishError::NotSent(_))),
        "{:?}",
        results[4]
    );
    assert!(
        matches!(&results[1], Err(PublishError::Rejected(r)) if r.contains("max_message_size")),
        "{:?}",
        results[1]
    );
    assert!(
        matches!(&results[3], Err(PublishError::Rejected(r)) if r.contains("routing key")),
        "{:?}",
        results[3]
    );
    let received = queue.read_envelopes(2, READ_TIMEOUT).await;
    assert_eq!(
        ids(&received),
        vec![batch[0].envelope.id.as_str(), batch[2].envelope.id.as_str()]
    );

    queue.delete().await;
    delete_exchange(&exchange).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publisher_reconnects_after_the_broker_goes_away_and_comes_back() {
    let exchange = unique_name("rmq_reconnect");
    let mut queue = TestQueue::bind_all(&exchange).await;
    let (proxy, url) = TcpProxy::for_amqp().await;
    let publisher = RabbitPublisher::builder(url)
        .connect_timeout(Duration::from_secs(3))
        .broker_timeout(Duration::from_secs(5))
        .connect()
        .await
        .expect("connect through the proxy");

    let before = [message(&exchange, event("k", 0))];
    assert!(publisher.publish_batch(&before).await[0].is_ok());

    // The broker goes away: connections drop, new ones fail.
    proxy.refuse();
    proxy.cut().await;
    assert_eq!(proxy.open_connections(), 0);
    let down: Vec<OutgoingMessage> = (1..4).map(|i| message(&exchange, event("k", i))).collect();
    for attempt in 0..3 {
        let results = publisher.publish_batch(&down).await;
        for result in &results {
            assert!(
                matches!(result, Err(PublishError::Unavailable(_))),
                "attempt {attempt}: {result:?}"
            );
        }
    }
    assert!(!publisher.is_connected().await);
    assert!(matches!(
        publisher.ensure_destination(&exchange).await,
        Err(PublishError::Unavailable(_))
    ));

    // It is back: the next batch reconnects by itself.
    proxy.accept();
    let after: Vec<OutgoingMessage> = (4..8).map(|i| message(&exchange, event("k", i))).collect();
    for result in publisher.publish_batch(&after).await {
        result.expect("published after reconnecting");
    }
    assert!(publisher.is_connected().await);

    let received = queue.read_envelopes(5, READ_TIMEOUT).await;
    let expected: Vec<&str> = before
        .iter()
        .chain(&after)
        .map(|m| m.envelope.id.as_str())
        .collect();
    assert_eq!(ids(&received), expected);
    queue.assert_empty(Duration::from_millis(300)).await;

    drop(proxy);
    queue.delete().await;
    delete_exchange(&exchange).await;
}
