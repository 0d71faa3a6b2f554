//! `outbox-relay dlq redrive`: a group's broker dead letters go back to the
//! destination they came from, without their dead-letter attributes; what
//! cannot be re-driven stays.

use std::time::Duration;

use eventbus::consumer::dead_letter;
use eventbus::transport::rabbitmq::{RabbitPublisher, RabbitSubscriber};
use eventbus::transport::Subscriber;
use eventbus::{Envelope, OutgoingMessage, Publisher};
use eventbus_tests::rabbitmq::TestQueue;
use eventbus_tests::{amqp_url, unique_name};

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

    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_outbox-relay"))
        .args([
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
        ])
        .output()
        .await
        .expect("run outbox-relay");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
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
}
