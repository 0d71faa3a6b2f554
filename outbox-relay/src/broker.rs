//! Broker URLs: choosing and building the publisher, and keeping credentials out
//! of every message.

use std::sync::Arc;

use eventbus::transport::kafka::{KafkaPublisher, KafkaSubscriber};
use eventbus::transport::rabbitmq::{RabbitPublisher, RabbitSubscriber};
use eventbus::transport::sqs::{SqsPublisherBuilder, SqsSubscriberBuilder};
use eventbus::transport::Subscriber;
use eventbus::{Error, Publisher, Result};

/// Builds the publisher a broker URL names.
pub(crate) async fn connect(
    url: &str,
    producer: &[(String, String)],
) -> Result<Arc<dyn Publisher>> {
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
            for (k, v) in producer {
                builder = builder.set(k, v);
            }
            Ok(Arc::new(builder.build()?))
        }
        "amqp" | "amqps" => Ok(Arc::new(RabbitPublisher::connect(url).await?)),
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
    url: &str,
    group: &str,
    destination: &str,
) -> Result<Box<dyn Subscriber>> {
    match url.split_once("://") {
        Some(("kafka", servers)) => Ok(Box::new(
            KafkaSubscriber::builder(servers.trim_end_matches('/'))
                .group(group)
                .topics([destination])
                .build()?,
        )),
        Some(("amqp" | "amqps", _)) => Ok(Box::new(
            RabbitSubscriber::builder(url)
                .group(group)
                .bind_all(destination)
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

/// Replaces the password of every `scheme://user:password@` in `text` with `***`.
pub(crate) fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("://") {
        let (head, tail) = rest.split_at(start + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| c.is_whitespace() || c == '/' || c == '"' || c == '\'')
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(at) => {
                let userinfo = &authority[..at];
                match userinfo.split_once(':') {
                    Some((user, _)) => out.push_str(&format!("{user}:***")),
                    None => out.push_str(userinfo),
                }
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_never_survive() {
        assert_eq!(
            redact("cannot connect to amqp://guest:s3cret@host:5672/%2f: refused"),
            "cannot connect to amqp://guest:***@host:5672/%2f: refused"
        );
        assert_eq!(
            redact("postgres://app:pw@db/x and kafka://k:9092"),
            "postgres://app:***@db/x and kafka://k:9092"
        );
        assert_eq!(redact("no urls here"), "no urls here");
    }
}
