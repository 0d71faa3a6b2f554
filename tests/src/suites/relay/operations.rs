//! Metrics and status, in-process wake-ups, plain-SQL rows, retention.

use super::*;

/// The backlog gauge shows pending work, then zero; the Prometheus text has
/// the counters; `status` sees one relay owning every partition while it
/// runs, and none (every partition unowned) after it stopped.
pub async fn metrics_and_status_report_the_backlog_falling_to_zero<D: TestDatabase>() {
    let db = D::migrated().await;
    let admin = D::admin(db.pool()).expect("this backend has an operator view");
    let (publisher, prefix, _topic, _brokers) = kafka("metrics").await;
    publish_steps(db.pool(), &steps(5_000, 50), 5_000).await;
    assert_eq!(admin.status().await.expect("status").pending, 5_000);

    let mut config = test_config(&prefix);
    config.batch_size = 100; // slow enough to watch the backlog fall
    let relay = relay_on(&db, publisher, config);
    // The backlog gauge first shows pending work …
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut saw_backlog = false;
    while Instant::now() < deadline && !saw_backlog {
        let snap = relay.metrics.snapshot();
        saw_backlog = snap.backlog.values().sum::<u64>() > 0;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(saw_backlog, "the backlog gauge showed pending rows");
    // … then zero.
    wait_drained(&db, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let text = relay.metrics.render_prometheus();
    assert_eq!(
        metric(&text, "eventbus_outbox_pending_rows"),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "eventbus_relay_published_total"),
        Some(5000.0),
        "{text}"
    );
    assert!(
        text.contains("eventbus_relay_publish_latency_seconds_count"),
        "{text}"
    );
    let status = admin.status().await.expect("status");
    assert_eq!(status.pending, 0);
    assert_eq!(status.relays.len(), 1);
    assert_eq!(
        status.relays[0].3,
        i64::from(D::PARTITIONS),
        "one relay owns every partition"
    );
    relay.stop().await;
    let status = admin.status().await.expect("status");
    assert!(status.relays.is_empty(), "a stopped relay deregisters");
    assert_eq!(
        status.unowned_partitions,
        i64::from(D::PARTITIONS),
        "and releases its partitions"
    );
}

/// A relay running in the process that publishes hears of the write at once
/// ([`RelayConfig::in_process_wakeups`]): with a 10 s poll, an event published
/// and committed while the relay idles reaches the broker well before the
/// poll would have found it. With `wakeups` off (the control) it waits for
/// the poll, which shows the test measures the wake-up and not something
/// else that claims early. Returns the time from commit to delivery.
pub async fn an_event_published_in_process_is_relayed_without_waiting_for_the_poll<
    D: TestDatabase,
>(
    wakeups: bool,
) -> Duration {
    const POLL: Duration = Duration::from_secs(10);
    let db = D::migrated().await;
    let (publisher, prefix, mut queue) = rabbit("in_process_wakeup").await;
    let mut config = test_config(&prefix);
    config.poll_interval = POLL;
    config.in_process_wakeups = wakeups;
    let relay = relay_on(&db, publisher, config);
    // Acquiring partitions wakes the relay for a claim; once that is done it
    // idles for the poll interval.
    let deadline = Instant::now() + Duration::from_secs(20);
    while relay.metrics.snapshot().owned_partitions != D::PARTITIONS as usize {
        assert!(Instant::now() < deadline, "the relay took no partition");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut tx = db.pool().begin().await.expect("begin");
    Outbox::new("urn:test:relay")
        .publish(&mut tx, &step("k-1", 1))
        .await
        .expect("publish");
    tx.commit().await.expect("commit");
    let committed = Instant::now();
    let delivered = queue.read(1, POLL * 2).await;
    let took = committed.elapsed();
    assert_eq!(decode_amqp(&delivered), vec![step("k-1", 1)]);
    if wakeups {
        assert!(
            took < POLL / 3,
            "on {}, an event published in the process took {took:?} to be relayed \
             with in-process wake-ups: not well under the {POLL:?} poll",
            D::NAME
        );
    } else {
        assert!(
            took > POLL / 2,
            "on {}, an event took {took:?} to be relayed with in-process wake-ups off: \
             something else woke the relay before its {POLL:?} poll",
            D::NAME
        );
    }
    relay.stop().await;
    took
}

/// What a service in another language does — one `INSERT` naming
/// destination, key, type and payload, every other column defaulted — is
/// relayed as a CloudEvent with the relay's configured source, a UUID id and
/// schema version 1, the payload intact.
pub async fn a_row_inserted_by_plain_sql_is_relayed_with_the_configured_source<D: TestDatabase>() {
    let db = D::migrated().await;
    let (publisher, prefix, topic, brokers) = kafka("plain_sql").await;
    db.execute(
        "INSERT INTO eventbus_outbox (destination, partition_key, event_type, payload) \
         VALUES ('steps', 'k-1', 'com.example.test.step', '{\"key\":\"k-1\",\"seq\":7}')",
    )
    .await
    .expect("plain insert");
    let mut config = test_config(&prefix);
    config.default_source = "urn:service:legacy-billing".into();
    let relay = relay_on(&db, publisher, config);
    let messages = read_all(&brokers, &topic, 1, Duration::from_secs(20)).await;
    assert_eq!(messages.len(), 1);
    let envelope = envelope_from_message(&messages[0]).expect("a CloudEvent");
    assert_eq!(envelope.source, "urn:service:legacy-billing");
    assert_eq!(envelope.partition_key.as_deref(), Some("k-1"));
    assert!(
        Uuid::parse_str(&envelope.id).is_ok(),
        "defaulted id is a UUID"
    );
    assert_eq!(envelope.schema_version(), Some(1));
    let step: Step = serde_json::from_slice(&envelope.data).expect("payload");
    assert_eq!(step.seq, 7, "payload intact");
    relay.stop().await;
}

/// Retention mode: published rows are kept, marked `published`, then deleted
/// by the relay once older than the window.
pub async fn retention_mode_keeps_published_rows_then_cleans_them_up<D: TestDatabase>() {
    let db = D::migrated().await;
    let (publisher, prefix, topic, brokers) = kafka("retention").await;
    publish_steps(db.pool(), &steps(300, 10), 300).await;
    let mut config = test_config(&prefix);
    config.retention = Retention::Keep(Duration::from_secs(2));
    let relay = relay_on(&db, publisher, config);
    wait_drained(&db, Duration::from_secs(20)).await;
    let kept = db
        .scalar(
            "SELECT count(*) FROM eventbus_outbox \
             WHERE state = 'published' AND published_at IS NOT NULL",
        )
        .await;
    assert_eq!(kept, 300, "published rows are kept, marked published");
    assert_eq!(
        read_all(&brokers, &topic, 300, Duration::from_secs(20))
            .await
            .len(),
        300
    );
    // After the retention window the relay deletes them in batches.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = db.scalar(COUNT_ROWS).await;
        if left == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{left} published rows never cleaned up"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    relay.stop().await;
}
