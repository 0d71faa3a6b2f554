//! Routing, FIFO queues and results per message of [`SqsPublisher`], without SQS
//! where possible.

use super::*;

#[test]
fn a_message_is_as_bad_as_its_worst_queue() {
    let rejected = PublishError::Rejected("r".into());
    let unavailable = PublishError::Unavailable("u".into());
    assert!(combine(&[Ok(()), Ok(())], 2).is_ok());
    assert_eq!(
        combine(
            &[Ok(()), Err(unavailable.clone()), Err(rejected.clone())],
            3
        ),
        Err(rejected)
    );
    assert_eq!(
        combine(&[Ok(()), Err(unavailable.clone())], 2),
        Err(unavailable)
    );
    assert!(combine(&[Ok(())], 2).is_err_and(|e| e.is_unavailable()));
}

#[tokio::test]
async fn routes_and_fifo_pick_the_queues() {
    let publisher = SqsPublisher::builder()
        .region("us-east-1")
        .credentials(aws_sdk_sqs::config::Credentials::new(
            "test", "test", None, None, "test",
        ))
        .endpoint("http://127.0.0.1:1")
        .fifo(true)
        .route("orders", ["orders.billing", "orders.shipping"])
        .route_with(|d| {
            if d == "payments" {
                vec!["payments.audit".into()]
            } else {
                Vec::new()
            }
        })
        .connect()
        .await
        .expect("no request yet");
    assert_eq!(
        publisher.queues_of("orders").expect("valid"),
        ["orders-billing.fifo", "orders-shipping.fifo"]
    );
    assert_eq!(
        publisher.queues_of("payments").expect("valid"),
        ["payments-audit.fifo"]
    );
    assert_eq!(publisher.queues_of("stock").expect("valid"), ["stock.fifo"]);
    assert!(matches!(
        publisher.queues_of("a b"),
        Err(PublishError::Rejected(_))
    ));
}

#[tokio::test]
async fn an_unreachable_endpoint_is_unavailable_without_credentials() {
    let publisher = SqsPublisher::builder()
        .region("us-east-1")
        .credentials(crate::transport::testing::example_credentials())
        // Port 1: nothing listens.
        .endpoint("http://127.0.0.1:1")
        .broker_timeout(Duration::from_secs(20))
        .connect()
        .await
        .expect("no request yet");
    let envelope = crate::Envelope::new("urn:svc", "t", b"{}".to_vec());
    let results = publisher
        .publish_batch(&[OutgoingMessage {
            destination: "orders".into(),
            envelope,
        }])
        .await;
    let err = results[0].clone().expect_err("nothing listens");
    assert!(err.is_unavailable(), "{err:?}");
    let text = format!("{err} {publisher:?}");
    assert!(
        !text.contains("hunter2") && !text.contains("AKIDEXAMPLE"),
        "{text}"
    );
}
