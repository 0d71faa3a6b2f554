//! Where SQS is and how to reach it ([`ConnectOptions`], shared by both
//! builders): broker URLs, endpoint, region, profile and credentials, and the
//! SDK client built from them.

use std::fmt;
use std::time::Duration;

use super::DEFAULT_CONNECT_TIMEOUT;
use crate::error::{Error, Result};

/// Where SQS is and how to reach it; shared by both builders.
#[derive(Clone, Default)]
pub(super) struct ConnectOptions {
    pub(super) endpoint: Option<String>,
    pub(super) region: Option<String>,
    pub(super) profile: Option<String>,
    pub(super) credentials: Option<aws_sdk_sqs::config::Credentials>,
    pub(super) client: Option<aws_sdk_sqs::Client>,
    pub(super) connect_timeout: Option<Duration>,
}

impl fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Credentials stay out; their presence is enough to say.
        f.debug_struct("ConnectOptions")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("profile", &self.profile)
            .field("static_credentials", &self.credentials.is_some())
            .field("client", &self.client.is_some())
            .finish()
    }
}

/// What a broker URL says about SQS.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct UrlOptions {
    pub(super) endpoint: Option<String>,
    pub(super) region: Option<String>,
    pub(super) profile: Option<String>,
    pub(super) fifo: bool,
}

/// Reads `sqs://[host[:port]][?region=…&profile=…&fifo=true]` (HTTPS
/// endpoint override when a host is given) and `sqs+http://host:port[?…]`
/// (plain HTTP, for local servers).
pub(super) fn parse_url(url: &str) -> Result<UrlOptions> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| Error::Config(format!("SQS URL `{url}` has no scheme: use sqs://")))?;
    let http_scheme = match scheme.to_ascii_lowercase().as_str() {
        "sqs" | "sqs+https" => "https",
        "sqs+http" => "http",
        other => {
            return Err(Error::Config(format!(
                "unsupported scheme `{other}` for SQS: use sqs://, sqs://host:port or sqs+http://host:port"
            )))
        }
    };
    let (authority, query) = match rest.split_once('?') {
        Some((a, q)) => (a, Some(q)),
        None => (rest, None),
    };
    let authority = authority.trim_end_matches('/');
    if authority.contains('@') {
        return Err(Error::Config(
            "SQS URLs carry no credentials: they come from the AWS environment, profile or role"
                .into(),
        ));
    }
    if authority.contains('/') {
        return Err(Error::Config(format!(
            "SQS URL `{url}` has a path: give only host and port"
        )));
    }
    let mut options = UrlOptions::default();
    if !authority.is_empty() {
        options.endpoint = Some(format!("{http_scheme}://{authority}"));
    } else if http_scheme == "http" {
        return Err(Error::Config(
            "sqs+http:// needs a host and port, e.g. sqs+http://127.0.0.1:4566".into(),
        ));
    }
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "region" if !value.is_empty() => options.region = Some(value.to_owned()),
            "profile" if !value.is_empty() => options.profile = Some(value.to_owned()),
            "fifo" => {
                options.fifo = match value {
                    "" | "true" | "1" => true,
                    "false" | "0" => false,
                    other => {
                        return Err(Error::Config(format!(
                            "SQS URL option fifo={other}: use true or false"
                        )))
                    }
                }
            }
            other => {
                return Err(Error::Config(format!(
                    "unknown SQS URL option `{other}`: use region, profile or fifo"
                )))
            }
        }
    }
    Ok(options)
}

impl ConnectOptions {
    pub(super) fn apply_url(&mut self, url: &UrlOptions) {
        if url.endpoint.is_some() {
            self.endpoint.clone_from(&url.endpoint);
        }
        if url.region.is_some() {
            self.region.clone_from(&url.region);
        }
        if url.profile.is_some() {
            self.profile.clone_from(&url.profile);
        }
    }

    /// What to show of the endpoint in logs and errors.
    pub(super) fn describe(&self) -> String {
        match (&self.endpoint, &self.region) {
            (Some(endpoint), _) => format!("SQS at {endpoint}"),
            (None, Some(region)) => format!("SQS in {region}"),
            (None, None) => "SQS".to_owned(),
        }
    }

    /// The SDK client: the one given, or one from the AWS config sources with
    /// these overrides, over a rustls (ring) HTTPS client.
    pub(super) async fn client(&self) -> aws_sdk_sqs::Client {
        if let Some(client) = &self.client {
            return client.clone();
        }
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let timeouts = aws_config::timeout::TimeoutConfig::builder()
            .connect_timeout(self.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT))
            .build();
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .http_client(http)
            .timeout_config(timeouts);
        if let Some(profile) = &self.profile {
            loader = loader.profile_name(profile);
        }
        if let Some(region) = &self.region {
            loader = loader.region(aws_config::Region::new(region.clone()));
        }
        if let Some(endpoint) = &self.endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        if let Some(credentials) = &self.credentials {
            loader = loader.credentials_provider(credentials.clone());
        }
        let config = loader.load().await;
        aws_sdk_sqs::Client::new(&config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls_name_endpoint_region_profile_and_fifo() {
        assert_eq!(parse_url("sqs://").expect("default"), UrlOptions::default());
        let o = parse_url("sqs+http://127.0.0.1:4566?region=us-east-1&fifo=true").expect("local");
        assert_eq!(o.endpoint.as_deref(), Some("http://127.0.0.1:4566"));
        assert_eq!(o.region.as_deref(), Some("us-east-1"));
        assert!(o.fifo);
        let o = parse_url("sqs://sqs.eu-west-1.amazonaws.com/?profile=prod").expect("https");
        assert_eq!(
            o.endpoint.as_deref(),
            Some("https://sqs.eu-west-1.amazonaws.com")
        );
        assert_eq!(o.profile.as_deref(), Some("prod"));
        for bad in [
            "sqs+http://",
            "sqs://key:secret@host",
            "amqp://host",
            "sqs://host/path",
            "sqs://?colour=red",
            "sqs://?fifo=maybe",
        ] {
            let err = parse_url(bad).expect_err(bad);
            assert!(matches!(err, Error::Config(_)), "{bad}: {err:?}");
            assert!(!err.to_string().contains("secret"), "{err}");
        }
    }

    #[test]
    fn debug_output_hides_credentials() {
        let options = ConnectOptions {
            credentials: Some(crate::transport::testing::example_credentials()),
            ..ConnectOptions::default()
        };
        let text = format!("{options:?}");
        assert!(
            !text.contains("hunter2") && !text.contains("AKIDEXAMPLE"),
            "{text}"
        );
    }
}
