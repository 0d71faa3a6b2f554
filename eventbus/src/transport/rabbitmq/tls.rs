//! TLS for `amqps://` connections: extra trusted certificate authorities and a
//! client certificate, on top of the system's trust store.

use std::fmt;
use std::path::Path;

use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};

use crate::{Error, Result};

/// TLS settings of an `amqps://` connection, for
/// [`RabbitPublisherBuilder::tls`](super::RabbitPublisherBuilder::tls) and
/// [`RabbitSubscriberBuilder::tls`](super::RabbitSubscriberBuilder::tls).
///
/// Without them, an `amqps://` connection trusts the system's certificate
/// authorities and presents no client certificate. The server's certificate
/// must name the URL's host either way.
///
/// ```no_run
/// # async fn example() -> eventbus::Result<()> {
/// use eventbus::transport::rabbitmq::{RabbitPublisher, RabbitTls};
///
/// let tls = RabbitTls::new()
///     .ca_file("/etc/eventbus/rabbitmq-ca.pem")?
///     .client_identity_file("/etc/eventbus/relay.p12", "changeit")?;
/// let publisher = RabbitPublisher::builder("amqps://relay@rabbit.internal:5671/%2f")
///     .tls(tls)
///     .connect()
///     .await?;
/// # drop(publisher);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Default)]
pub struct RabbitTls {
    ca_pem: Option<String>,
    identity: Option<(Vec<u8>, String)>,
}

impl RabbitTls {
    /// No settings beyond the system's trust store.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Also trusts the certificate authorities of this PEM text (one or more
    /// `CERTIFICATE` blocks), e.g. a private CA that signed the broker's
    /// certificate.
    #[must_use]
    pub fn ca_pem(mut self, pem: impl Into<String>) -> Self {
        self.ca_pem = Some(pem.into());
        self
    }

    /// [`ca_pem`](Self::ca_pem) with the contents of a PEM file.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when the file cannot be read or holds no PEM
    /// certificate.
    pub fn ca_file(self, path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let pem = std::fs::read_to_string(path).map_err(|e| {
            Error::Config(format!("cannot read the CA file {}: {e}", path.display()))
        })?;
        if !pem.contains("-----BEGIN CERTIFICATE-----") {
            return Err(Error::Config(format!(
                "the CA file {} holds no PEM certificate",
                path.display()
            )));
        }
        Ok(self.ca_pem(pem))
    }

    /// Presents this client certificate and key (a PKCS#12 archive, DER
    /// encoded, and its password), for brokers that require one or
    /// authenticate with it (`EXTERNAL`).
    #[must_use]
    pub fn client_identity(mut self, pkcs12: Vec<u8>, password: impl Into<String>) -> Self {
        self.identity = Some((pkcs12, password.into()));
        self
    }

    /// [`client_identity`](Self::client_identity) from a PKCS#12 file
    /// (`.p12`, `.pfx`).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when the file cannot be read.
    pub fn client_identity_file(
        self,
        path: impl AsRef<Path>,
        password: impl Into<String>,
    ) -> Result<Self> {
        let path = path.as_ref();
        let der = std::fs::read(path).map_err(|e| {
            Error::Config(format!(
                "cannot read the client identity {}: {e}",
                path.display()
            ))
        })?;
        Ok(self.client_identity(der, password))
    }

    /// Whether anything is set.
    pub(crate) fn is_set(&self) -> bool {
        self.ca_pem.is_some() || self.identity.is_some()
    }

    /// lapin's form, made anew for each connection attempt.
    pub(crate) fn to_lapin(&self) -> OwnedTLSConfig {
        OwnedTLSConfig {
            cert_chain: self.ca_pem.clone(),
            identity: self
                .identity
                .as_ref()
                .map(|(der, password)| OwnedIdentity::PKCS12 {
                    der: der.clone(),
                    password: password.clone(),
                }),
        }
    }
}

/// Shows what is set, never the key material or its password.
impl fmt::Debug for RabbitTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitTls")
            .field(
                "ca_certificates",
                &self
                    .ca_pem
                    .as_deref()
                    .map_or(0, |p| p.matches("-----BEGIN CERTIFICATE-----").count()),
            )
            .field("client_identity", &self.identity.as_ref().map(|_| "***"))
            .finish()
    }
}

/// Refuses TLS settings on a plain `amqp://` URL: they would be ignored, and
/// the operator meant the connection to be encrypted.
pub(crate) fn check_scheme(tls: &RabbitTls, uri: &lapin::uri::AMQPUri) -> Result<()> {
    if tls.is_set() && uri.scheme != lapin::uri::AMQPScheme::AMQPS {
        return Err(Error::Config(
            "TLS settings (a CA or client certificate) need an amqps:// URL".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_hides_the_identity_password() {
        let tls = RabbitTls::new()
            .ca_pem("-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n")
            .client_identity(vec![1, 2, 3], "pkcs12-secret");
        let text = format!("{tls:?}");
        assert!(!text.contains("pkcs12-secret"), "{text}");
        assert!(text.contains("ca_certificates: 1"), "{text}");
    }

    #[test]
    fn a_file_without_a_certificate_is_refused() {
        let dir = std::env::temp_dir().join(format!("eventbus-tls-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("ca.pem");
        std::fs::write(&file, "not a certificate").expect("write");
        let err = RabbitTls::new().ca_file(&file).expect_err("no PEM");
        assert!(err.to_string().contains("no PEM certificate"), "{err}");
        let missing = RabbitTls::new()
            .ca_file(dir.join("missing.pem"))
            .expect_err("missing file");
        assert!(missing.to_string().contains("missing.pem"), "{missing}");
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    #[test]
    fn tls_settings_on_a_plain_url_are_refused() {
        let tls = RabbitTls::new().ca_pem("-----BEGIN CERTIFICATE-----");
        let plain: lapin::uri::AMQPUri = "amqp://localhost".parse().expect("uri");
        let secure: lapin::uri::AMQPUri = "amqps://localhost".parse().expect("uri");
        assert!(check_scheme(&tls, &plain).is_err());
        assert!(check_scheme(&tls, &secure).is_ok());
        assert!(check_scheme(&RabbitTls::new(), &plain).is_ok());
    }
}
