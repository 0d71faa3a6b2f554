//! RabbitMQ over `amqps://` with `RabbitTls`: a broker whose certificate is
//! signed by a private CA and which requires a client certificate (mutual
//! TLS). Without the CA or without the identity the connection is refused
//! with a clear error; with both, events go out and come back in.
//!
//! The broker is the shared RabbitMQ behind a TLS-terminating proxy
//! (`eventbus_tests::tls`), which the clients cannot tell from a TLS listener.

use std::time::Duration;

use eventbus::transport::rabbitmq::{RabbitPublisher, RabbitSubscriber, RabbitTls};
use eventbus::transport::{PublishError, Subscriber};
use eventbus::{Envelope, Error, OutgoingMessage, Publisher};
use eventbus_tests::rabbitmq::url_host_port;
use eventbus_tests::tls::{Clients, TestCa, TlsProxy};
use eventbus_tests::{amqp_url, unique_name};

const IDENTITY_PASSWORD: &str = "p12-pass";

async fn proxy(ca: &TestCa) -> TlsProxy {
    let upstream = url_host_port(&amqp_url().await);
    let upstream = tokio::net::lookup_host(&upstream)
        .await
        .expect("resolve RabbitMQ")
        .next()
        .expect("an address");
    TlsProxy::start(ca, Clients::Certified, upstream).await
}

fn unavailable(result: eventbus::Result<RabbitPublisher>) -> String {
    match result {
        Err(Error::Publish(PublishError::Unavailable(reason))) => reason.into(),
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_needs_the_ca_and_a_client_certificate() {
    let ca = TestCa::new("rabbit");
    let proxy = proxy(&ca).await;
    let url = format!("amqps://guest:guest@127.0.0.1:{}/%2f", proxy.port());
    let identity = ca.client_identity("orders", IDENTITY_PASSWORD);
    let trusted = || RabbitTls::new().ca_file(ca.ca_file()).expect("CA file");

    let untrusted = unavailable(
        RabbitPublisher::builder(&url)
            .tls(RabbitTls::new().client_identity(identity.clone(), IDENTITY_PASSWORD))
            .connect()
            .await,
    );
    assert!(
        untrusted.to_lowercase().contains("certificate"),
        "the error does not name the certificate: {untrusted}"
    );
    assert!(!untrusted.contains("guest:guest"), "{untrusted}");

    let anonymous = unavailable(
        RabbitPublisher::builder(&url)
            .tls(trusted())
            .connect()
            .await,
    );
    assert!(
        anonymous.to_lowercase().contains("certificate"),
        "the error does not name the missing client certificate: {anonymous}"
    );
    assert_eq!(proxy.handshakes(), 0, "no refused client got through");

    let plain = RabbitPublisher::builder(url.replace("amqps://", "amqp://"))
        .tls(trusted())
        .connect()
        .await
        .expect_err("TLS settings with a plain URL");
    assert!(
        matches!(&plain, Error::Config(m) if m.contains("amqps://")),
        "{plain:?}"
    );

    let destination = unique_name("tls_orders");
    let tls = trusted().client_identity(identity, IDENTITY_PASSWORD);
    let group = unique_name("tls_group");
    let mut subscriber = RabbitSubscriber::builder(&url)
        .group(&group)
        .bind_all(&destination)
        .tls(tls.clone())
        .connect()
        .await
        .expect("subscribe over mutual TLS");
    let publisher = RabbitPublisher::builder(&url)
        .tls(tls)
        .connect()
        .await
        .expect("publish over mutual TLS");
    let envelope = Envelope::new(
        "urn:test",
        "com.example.order.placed",
        b"{\"n\":1}".to_vec(),
    );
    let sent = publisher
        .publish_batch(&[OutgoingMessage {
            destination: destination.clone(),
            envelope: envelope.clone(),
        }])
        .await;
    assert!(sent.iter().all(Result::is_ok), "{sent:?}");
    let delivery = tokio::time::timeout(Duration::from_secs(10), subscriber.next())
        .await
        .expect("a delivery within 10 s")
        .expect("the stream is open")
        .expect("a delivery");
    let received = delivery.envelope.expect("a CloudEvent");
    assert_eq!(received.id, envelope.id);
    assert_eq!(received.data, envelope.data);
    delivery.settle.ack().await.expect("ack");
    subscriber.close().await.expect("close");
    assert!(proxy.handshakes() >= 2, "publisher and subscriber used TLS");
    eventbus_tests::rabbitmq::delete_group(&group).await;
}
