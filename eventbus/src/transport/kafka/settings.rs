//! librdkafka properties ([`Settings`]): defaults and aliases, the checks
//! every client needs, and the secrets among them kept out of `Debug` output
//! and error messages.

use std::collections::BTreeMap;
use std::fmt;

use rdkafka::error::KafkaError;

use crate::error::Error;

/// librdkafka properties, with secrets kept out of `Debug` output and messages.
#[derive(Clone, Default)]
pub(super) struct Settings(BTreeMap<String, String>);

impl Settings {
    pub(super) fn insert(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), value);
    }

    pub(super) fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    pub(super) fn contains(&self, key: &str) -> bool {
        self.0.contains_key(key)
    }

    /// `text` with the values of secret settings blanked out.
    pub(super) fn scrub(&self, text: &str) -> String {
        let secrets = self
            .0
            .iter()
            .filter(|(key, _)| is_secret(key))
            .map(|(_, value)| value.as_str());
        crate::redact::Secrets::new(secrets, "<redacted>").scrub(&text)
    }

    /// Checks what every client needs: bootstrap servers and named properties.
    pub(super) fn check_common(&self) -> crate::Result<()> {
        if self
            .get("bootstrap.servers")
            .is_none_or(|s| s.trim().is_empty())
        {
            return Err(Error::config("Kafka bootstrap servers must not be empty"));
        }
        if self.0.keys().any(String::is_empty) {
            return Err(Error::config("Kafka property names must not be empty"));
        }
        Ok(())
    }

    /// The settings as an rdkafka client configuration.
    pub(super) fn client_config(&self) -> rdkafka::ClientConfig {
        let mut config = rdkafka::ClientConfig::new();
        for (key, value) in &self.0 {
            config.set(key, value);
        }
        config
    }
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, v)| {
                let shown = if is_secret(k) {
                    "<redacted>"
                } else {
                    v.as_str()
                };
                (k, shown)
            }))
            .finish()
    }
}

/// Whether a librdkafka property holds a secret (SASL password, JAAS config,
/// OAuth client secret, key store password, private key).
fn is_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    [
        "password",
        "secret",
        "sasl.jaas",
        "sasl.oauthbearer.config",
        "ssl.key.pem",
    ]
    .iter()
    .any(|word| key.contains(word))
}

/// The property an alias stands for, so a user's alias replaces our default
/// instead of racing it (librdkafka applies properties in map order).
pub(super) fn canonical_key(key: &str) -> &str {
    match key {
        "compression.type" => "compression.codec",
        "delivery.timeout.ms" => "message.timeout.ms",
        "request.required.acks" => "acks",
        "metadata.broker.list" => "bootstrap.servers",
        other => other,
    }
}

/// A configuration error for a client (`what`: "producer", "consumer") that
/// rdkafka refused to create, with secret values blanked out.
pub(super) fn config_error(settings: &Settings, error: &KafkaError, what: &str) -> Error {
    match error {
        KafkaError::ClientConfig(_, description, key, _value) => Error::config(format!(
            "Kafka property `{key}`: {}",
            settings.scrub(description)
        )),
        other => Error::config(format!(
            "cannot create Kafka {what}: {}",
            settings.scrub(&other.to_string())
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_scrubbed_from_text_and_debug() {
        let mut settings = Settings::default();
        settings.insert("sasl.password", "hunter2".into());
        settings.insert("linger.ms", "5".into());
        assert_eq!(
            settings.scrub("login with hunter2 failed"),
            "login with <redacted> failed"
        );
        let shown = format!("{settings:?}");
        assert!(
            !shown.contains("hunter2") && shown.contains("linger.ms"),
            "{shown}"
        );
    }
}
