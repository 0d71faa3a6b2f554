//! Broker URLs: choosing and building the publisher or subscriber, with the
//! TLS and client settings beside the URL.

use std::path::Path;
use std::sync::Arc;

use eventbus::transport::kafka::{KafkaPublisher, KafkaSubscriber};
use eventbus::transport::rabbitmq::{RabbitPublisher, RabbitSubscriber, RabbitTls, Unroutable};
use eventbus::transport::sqs::{SqsPublisherBuilder, SqsSubscriberBuilder};
use eventbus::transport::Subscriber;
use eventbus::{Error, Publisher, Result};

use crate::config::Broker;
use crate::destinations;
use crate::redact::redact;

/// Builds the publisher a broker URL names.
pub(crate) async fn connect(broker: &Broker) -> Result<Arc<dyn Publisher>> {
    let url = broker.url.expose();
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| Error::Config(format!("broker URL `{}` has no scheme", redact(url))))?;
    match scheme {
        "kafka" => {
            let servers = rest.trim_end_matches('/');
            if servers.is_empty() {
                return Err(Error::Config(
                    "kafka:// URL names no bootstrap server".into(),
                ));
            }
            let mut builder = KafkaPublisher::builder(servers);
            for (k, v) in kafka_properties(broker, |_| true)? {
                builder = builder.set(k, v);
            }
            let publishing = &broker.publishing;
            if let Some(n) = publishing.topic_partitions {
                builder = builder.partitions(n);
            }
            if let Some(n) = publishing.topic_replication_factor {
                builder = builder.replication_factor(n);
            }
            Ok(Arc::new(builder.build()?))
        }
        "amqp" | "amqps" => {
            let mut builder = RabbitPublisher::builder(url)
                .tls(rabbit_tls(broker)?)
                .unroutable(unroutable(broker.publishing.unroutable));
            for (exchange, policy) in &broker.publishing.unroutable_by_exchange {
                builder = builder.unroutable_for(exchange.clone(), unroutable(*policy));
            }
            Ok(Arc::new(builder.connect().await?))
        }
        "sqs" | "sqs+http" | "sqs+https" => {
            Ok(Arc::new(SqsPublisherBuilder::from_url(url)?.connect().await?))
        }
        other => Err(Error::Config(format!(
            "unsupported broker scheme `{other}`: use kafka://, amqp://, amqps://, sqs:// or sqs+http://"
        ))),
    }
}

/// Subscribes consumer group `group` to `destination` on the broker a URL names.
pub(crate) async fn subscribe(
    broker: &Broker,
    group: &str,
    destination: &str,
) -> Result<Box<dyn Subscriber>> {
    let url = broker.url.expose();
    match url.split_once("://") {
        Some(("kafka", servers)) => {
            let mut builder = KafkaSubscriber::builder(servers.trim_end_matches('/'))
                .group(group)
                .topics([destination]);
            for (k, v) in kafka_properties(broker, is_connection_property)? {
                builder = builder.set(k, v);
            }
            Ok(Box::new(builder.build()?))
        }
        Some(("amqp" | "amqps", _)) => Ok(Box::new(
            RabbitSubscriber::builder(url)
                .group(group)
                .bind_all(destination)
                .tls(rabbit_tls(broker)?)
                .connect()
                .await?,
        )),
        // An SQS queue is its own group: `group` has no part in it.
        Some(("sqs" | "sqs+http" | "sqs+https", _)) => Ok(Box::new(
            SqsSubscriberBuilder::from_url(url)?
                .queue(destination)
                .connect()
                .await?,
        )),
        _ => Err(Error::Config(format!(
            "unsupported broker URL `{}`: use kafka://, amqp://, amqps://, sqs:// or sqs+http://",
            redact(url)
        ))),
    }
}

/// The transport's policy for a configured one.
fn unroutable(policy: destinations::Unroutable) -> Unroutable {
    match policy {
        destinations::Unroutable::Drop => Unroutable::Drop,
        destinations::Unroutable::Park => Unroutable::Park,
    }
}

/// The TLS settings of an `amqps://` connection.
fn rabbit_tls(broker: &Broker) -> Result<RabbitTls> {
    let mut tls = RabbitTls::new();
    if let Some(path) = &broker.ca_file {
        tls = tls.ca_file(path)?;
    }
    if let Some((path, password)) = &broker.client_identity {
        tls = tls.client_identity_file(path, password.expose())?;
    }
    Ok(tls)
}

/// The Kafka client properties `keep` selects, after those the CA file and
/// client identity imply: TLS (`security.protocol=ssl`, unless set, e.g. to
/// `sasl_ssl`), the CA's location, the key store.
fn kafka_properties(broker: &Broker, keep: impl Fn(&str) -> bool) -> Result<Vec<(String, String)>> {
    let mut properties = Vec::new();
    let protocol_set = broker
        .properties
        .0
        .iter()
        .any(|(k, _)| k == "security.protocol");
    if (broker.ca_file.is_some() || broker.client_identity.is_some()) && !protocol_set {
        properties.push(("security.protocol".to_owned(), "ssl".to_owned()));
    }
    if let Some(ca) = &broker.ca_file {
        properties.push(("ssl.ca.location".to_owned(), ca_path(ca)?));
    }
    if let Some((path, password)) = &broker.client_identity {
        let path = path.to_str().ok_or_else(|| {
            Error::Config(format!(
                "the client identity path {} is not UTF-8",
                path.display()
            ))
        })?;
        properties.push(("ssl.keystore.location".to_owned(), path.to_owned()));
        properties.push((
            "ssl.keystore.password".to_owned(),
            password.expose().to_owned(),
        ));
    }
    properties.extend(broker.properties.0.iter().filter(|(k, _)| keep(k)).cloned());
    Ok(properties)
}

/// Settings of the connection itself, which a consumer needs as much as the
/// producer they were given for.
fn is_connection_property(key: &str) -> bool {
    key == "security.protocol" || key.starts_with("ssl.") || key.starts_with("sasl.")
}

/// The CA file's path, checked now rather than by librdkafka at its first
/// connection, whose error would only reach the log.
fn ca_path(path: &Path) -> Result<String> {
    // The same checks, and messages, as for a RabbitMQ CA file.
    RabbitTls::new().ca_file(path)?;
    path.to_str()
        .map(str::to_owned)
        .ok_or_else(|| Error::Config(format!("the CA file path {} is not UTF-8", path.display())))
}
