//! The SQS transport against a real SQS-compatible server (moto): per-group
//! order in FIFO queues, deduplication of a re-sent event, a batch with one
//! refused entry, visibility kept up for a slow handler, and a queue's own
//! dead-letter queue after a number of receives.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventbus::consumer::dead_letter;
use eventbus::transport::sqs::aws_sdk_sqs::types::QueueAttributeName;
use eventbus::transport::sqs::{queue_name, SqsPublisher};
use eventbus::transport::{Received, Subscriber};
use eventbus::{Envelope, OutgoingMessage, PublishError, Publisher};
use eventbus_tests::consumer::{envelope, wait_until};
use eventbus_tests::relay::{assert_per_key_order, steps, Step};
use eventbus_tests::sqs::{self, read_all, TEST_WAIT};
use eventbus_tests::unique_name;

fn batch(destination: &str, envelopes: &[Envelope]) -> Vec<OutgoingMessage> {
    envelopes
        .iter()
        .map(|e| OutgoingMessage {
            destination: destination.to_owned(),
            envelope: e.clone(),
        })
        .collect()
}

fn step_of(m: &Received) -> Step {
    let e = m.envelope.as_ref().expect("a CloudEvent");
    serde_json::from_slice(&e.data).expect("a Step")
}

async fn set_attribute(
    publisher: &SqsPublisher,
    queue: &str,
    name: QueueAttributeName,
    value: &str,
) {
    let client = publisher.client();
    let url = client
        .get_queue_url()
        .queue_name(queue)
        .send()
        .await
        .expect("queue url")
        .queue_url()
        .expect("a url")
        .to_owned();
    client
        .set_queue_attributes()
        .queue_url(url)
        .attributes(name, value)
        .send()
        .await
        .expect("set queue attribute");
}

/// 300 events over 12 keys into a FIFO queue, read by two subscribers at
/// once that record each message before deleting it: per key, the records
/// are in publication order, each event once, and each message's group is
/// its key.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifo_queues_keep_each_groups_order_across_competing_subscribers() {
    let destination = unique_name("order");
    let publisher = sqs::publisher(true).await;
    publisher
        .ensure_destination(&destination)
        .await
        .expect("create queue");
    let events: Vec<Envelope> = steps(300, 12).iter().map(envelope).collect();
    for chunk in events.chunks(100) {
        for (i, result) in publisher
            .publish_batch(&batch(&destination, chunk))
            .await
            .into_iter()
            .enumerate()
        {
            result.unwrap_or_else(|e| panic!("event {i}: {e}"));
        }
    }

    let records = Arc::new(Mutex::new(Vec::<Step>::new()));
    let started = Instant::now();
    let mut readers = Vec::new();
    for _ in 0..2 {
        let mut subscriber = sqs::subscriber(&[&destination], true, 20).await;
        let records = Arc::clone(&records);
        readers.push(tokio::spawn(async move {
            let mut idle_since = Instant::now();
            let mut acks = Vec::new();
            while idle_since.elapsed() < TEST_WAIT * 3 {
                match tokio::time::timeout(TEST_WAIT, subscriber.next()).await {
                    Ok(Some(Ok(m))) => {
                        let step = step_of(&m);
                        assert_eq!(
                            m.info.key.as_deref(),
                            Some(step.key.as_str()),
                            "group = key"
                        );
                        if m.redelivered {
                            eprintln!("redelivered: {step:?} after {:?}", started.elapsed());
                        }
                        records.lock().expect("records").push(step);
                        // Deleted in the background (and so in batches): the
                        // queue holds the group's next message back until then.
                        acks.push(tokio::spawn(m.settle.ack()));
                        idle_since = Instant::now();
                    }
                    Ok(Some(Err(e))) => panic!("receiving: {e}"),
                    Ok(None) => break,
                    Err(_) => {}
                }
            }
            for ack in acks {
                ack.await.expect("ack task").expect("delete");
            }
            subscriber.close().await.expect("close");
        }));
    }
    for reader in readers {
        reader.await.expect("reader");
    }
    let records = records.lock().expect("records").clone();
    assert_eq!(records.len(), 300, "every event once");
    assert_eq!(assert_per_key_order(&records), 0, "no duplicates");
    sqs::delete_queues(&[&destination], &[], true).await;
}

/// An event sent again (same id) — in the same batch, and in a later one, as a
/// relay that crashed before deleting its row would — reaches a FIFO queue
/// once; a re-drive of it (marked [`dead_letter::REDRIVEN_AT`]) is a new send
/// and gets through. A standard queue has no such window: it takes the copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_resent_event_is_dropped_by_fifo_deduplication() {
    let destination = unique_name("dedup");
    let fifo = sqs::publisher(true).await;
    let event = envelope(&Step {
        key: "k".into(),
        seq: 1,
        pad: String::new(),
    });
    let results = fifo
        .publish_batch(&batch(&destination, &[event.clone(), event.clone()]))
        .await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let again = fifo
        .publish_batch(&batch(&destination, std::slice::from_ref(&event)))
        .await;
    assert!(
        again[0].is_ok(),
        "SQS acknowledges a copy it drops: {again:?}"
    );

    let mut subscriber = sqs::subscriber(&[&destination], true, 10).await;
    let got = read_all(subscriber.as_mut(), 1, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 1, "three sends, one message");
    assert_eq!(got[0].0.id, event.id);

    let mut redriven = event.clone();
    redriven.extensions.insert(
        dead_letter::REDRIVEN_AT.into(),
        "2030-01-01T00:00:00.000Z".into(),
    );
    let results = fifo.publish_batch(&batch(&destination, &[redriven])).await;
    assert!(results[0].is_ok(), "{results:?}");
    let got = read_all(subscriber.as_mut(), 1, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 1, "the re-drive arrives");
    assert_eq!(got[0].0.id, event.id);
    subscriber.close().await.expect("close");

    let standard = sqs::publisher(false).await;
    let results = standard
        .publish_batch(&batch(&destination, &[event.clone(), event.clone()]))
        .await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let mut subscriber = sqs::subscriber(&[&destination], false, 10).await;
    let got = read_all(subscriber.as_mut(), 2, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 2, "a standard queue keeps both sends");
    subscriber.close().await.expect("close");
    sqs::delete_queues(&[&destination], &[], true).await;
    sqs::delete_queues(&[&destination], &[], false).await;
}

/// A batch of ten for a queue whose `MaximumMessageSize` is 1 KiB, one event
/// of 2 KiB among them: that one fails alone as `Rejected`, with the sizes;
/// the next event of its key is held back (`NotSent`, order); the nine others
/// arrive. Then the limit is lowered behind a publisher's back — the
/// publisher learnt the old one — and SQS itself refuses the big event: it
/// fails alone again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_oversized_entry_fails_alone_in_a_batch_of_ten() {
    let destination = unique_name("partial");
    let queue = queue_name(&destination, true).expect("valid");
    let stale = sqs::publisher(true).await;
    // Creates the queue and reads its limit (the server's default) now.
    stale
        .ensure_destination(&destination)
        .await
        .expect("create");
    set_attribute(
        &stale,
        &queue,
        QueueAttributeName::MaximumMessageSize,
        "1024",
    )
    .await;

    let mut steps_ = steps(10, 10);
    steps_[4].pad = "x".repeat(2_048);
    let mut envelopes: Vec<Envelope> = steps_.iter().map(envelope).collect();
    let follower = Step {
        key: steps_[4].key.clone(),
        seq: 99,
        pad: String::new(),
    };
    envelopes.push(envelope(&follower));

    for (publisher, who) in [(sqs::publisher(true).await, "fresh"), (stale, "stale")] {
        let results = publisher
            .publish_batch(&batch(&destination, &envelopes))
            .await;
        for (i, result) in results.iter().enumerate() {
            match (i, result) {
                (4, Err(PublishError::Rejected(reason))) => {
                    if who == "fresh" {
                        assert!(
                            reason.contains("more than the limit of 1024 bytes"),
                            "{reason}"
                        );
                    }
                }
                (10, Err(PublishError::NotSent(_))) => {}
                (4 | 10, other) => panic!("{who}: entry {i}: {other:?}"),
                (_, Ok(_)) => {}
                (_, Err(e)) => panic!("{who}: entry {i} failed: {e}"),
            }
        }
        let mut subscriber = sqs::subscriber(&[&destination], true, 20).await;
        let got = read_all(subscriber.as_mut(), 9, Duration::from_secs(30)).await;
        let mut seqs: Vec<String> = got
            .iter()
            .map(|(e, _)| serde_json::from_slice::<Step>(&e.data).expect("a Step").key)
            .collect();
        seqs.sort();
        let mut expected: Vec<String> = steps_
            .iter()
            .filter(|s| s.pad.is_empty())
            .map(|s| s.key.clone())
            .collect();
        expected.sort();
        assert_eq!(seqs, expected, "{who}: the nine small events, once each");
        subscriber.close().await.expect("close");
        // The FIFO queue would drop the nine as copies for five minutes.
        for e in &mut envelopes {
            e.id = uuid::Uuid::now_v7().to_string();
        }
    }
    sqs::delete_queues(&[&destination], &[], true).await;
}

/// A handler holds a message for 3.5 times the visibility timeout: another
/// subscriber of the queue never sees it meanwhile, because the holder keeps
/// extending its visibility; it is deleted once, never redelivered. A holder
/// that dies (dropped, no extension) lets it come back after the timeout,
/// marked redelivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_handlers_message_stays_invisible_until_it_is_deleted() {
    let destination = unique_name("slow");
    let visibility = Duration::from_secs(2);
    let holder_builder = sqs::subscriber_builder()
        .await
        .queue(destination.clone())
        .visibility_timeout(visibility);
    let mut holder = holder_builder.clone().connect().await.expect("holder");
    let publisher = sqs::publisher(false).await;
    let events: Vec<Envelope> = steps(2, 2).iter().map(envelope).collect();
    let results = publisher.publish_batch(&batch(&destination, &events)).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");

    let mut held = Vec::new();
    while held.len() < 2 {
        let m = tokio::time::timeout(Duration::from_secs(30), holder.next())
            .await
            .expect("a message within 30 s")
            .expect("open")
            .expect("received");
        assert!(!m.redelivered);
        held.push(m);
    }
    let mut other = sqs::subscriber_builder()
        .await
        .queue(destination.clone())
        .visibility_timeout(visibility)
        .connect()
        .await
        .expect("other");
    let watching = Instant::now();
    while watching.elapsed() < visibility * 7 / 2 {
        if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(500), other.next()).await {
            panic!(
                "another subscriber got a held message after {:?}: {:?}",
                watching.elapsed(),
                m.map(|m| m.envelope.map(|e| e.id))
            );
        }
    }
    let first = held.remove(0);
    first.settle.ack().await.expect("delete the slow one");

    // The holder dies with the other message.
    let abandoned = held.remove(0);
    let abandoned_id = abandoned.envelope.as_ref().expect("event").id.clone();
    // Dropped unsettled, and the holder with it: no more extension.
    drop(abandoned);
    drop(holder);
    let back = tokio::time::timeout(visibility * 5, other.next())
        .await
        .expect("the abandoned message comes back")
        .expect("open")
        .expect("received");
    assert_eq!(back.envelope.as_ref().expect("event").id, abandoned_id);
    assert!(back.redelivered, "marked redelivered");
    back.settle.ack().await.expect("delete");
    let stray = tokio::time::timeout(visibility * 2, other.next()).await;
    assert!(stray.is_err(), "nothing else comes back: {stray:?}");
    other.close().await.expect("close");
    sqs::delete_queues(&[&destination], &[], false).await;
}

/// A FIFO queue with a redrive policy of two receives: a message released
/// twice (a consumer that keeps failing on it, or keeps crashing) moves to
/// the dead-letter queue by itself — the queue of `<destination>.dlq`, where
/// the consumer's own dead letters go — and the queue is left empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_queue_dead_letters_a_message_after_max_receives() {
    let destination = unique_name("redrive");
    let mut subscriber = sqs::subscriber_builder()
        .await
        .fifo(true)
        .queue(destination.clone())
        .dead_letter_after(2)
        .connect()
        .await
        .expect("subscribe with a redrive policy");
    let publisher = sqs::publisher(true).await;
    let event = envelope(&Step {
        key: "poison".into(),
        seq: 1,
        pad: String::new(),
    });
    let results = publisher
        .publish_batch(&batch(&destination, std::slice::from_ref(&event)))
        .await;
    assert!(results[0].is_ok(), "{results:?}");

    for receive in 1..=2 {
        let m = tokio::time::timeout(Duration::from_secs(30), subscriber.next())
            .await
            .expect("received within 30 s")
            .expect("open")
            .expect("received");
        assert_eq!(m.envelope.as_ref().expect("event").id, event.id);
        assert_eq!(m.redelivered, receive > 1, "receive {receive}");
        m.settle.release().await.expect("give back");
    }
    let third = tokio::time::timeout(TEST_WAIT * 3, subscriber.next()).await;
    assert!(third.is_err(), "moved away after two receives: {third:?}");
    subscriber.close().await.expect("close");

    // The queue's native dead-letter queue (`<queue>-dlq`).
    let dlq = format!("{destination}.dlq");
    let mut dead = sqs::subscriber(&[&dlq], true, 10).await;
    let got = read_all(dead.as_mut(), 1, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0.id, event.id);
    dead.close().await.expect("close");
    sqs::delete_queues(&[&destination], &[], true).await;
}

/// The in-flight bound: with `max_in_flight(3)`, no more than 3 messages are
/// received and unsettled at once, whatever is waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_more_than_max_in_flight_messages_are_held() {
    let destination = unique_name("bound");
    let publisher = sqs::publisher(false).await;
    let events: Vec<Envelope> = steps(20, 20).iter().map(envelope).collect();
    let results = publisher.publish_batch(&batch(&destination, &events)).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let mut subscriber = sqs::subscriber_builder()
        .await
        .queue(destination.clone())
        .max_in_flight(3)
        .connect()
        .await
        .expect("subscribe");
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(
            tokio::time::timeout(Duration::from_secs(30), subscriber.next())
                .await
                .expect("received")
                .expect("open")
                .expect("ok"),
        );
    }
    assert_eq!(subscriber.held(), 3);
    let fourth = tokio::time::timeout(TEST_WAIT * 2, subscriber.next()).await;
    assert!(
        fourth.is_err(),
        "a fourth message while three are held: {fourth:?}"
    );
    held.pop().expect("one").settle.ack().await.expect("delete");
    let next = tokio::time::timeout(Duration::from_secs(30), subscriber.next())
        .await
        .expect("a slot freed, one more comes")
        .expect("open")
        .expect("ok");
    held.push(next);
    wait_until("three held", Duration::from_secs(5), || {
        subscriber.held() == 3
    })
    .await;
    for m in held {
        m.settle.release().await.expect("give back");
    }
    subscriber.close().await.expect("close");
    sqs::delete_queues(&[&destination], &[], false).await;
}
