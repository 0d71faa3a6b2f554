//! TLS for tests: a private certificate authority, and a TLS-terminating
//! proxy that puts a plain-TCP broker (the shared RabbitMQ, a private tansu)
//! behind TLS, so that clients speak to it exactly as to a broker with TLS
//! listeners.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::TlsAcceptor;

/// A certificate authority made for one test, and a server certificate it
/// signed for `localhost` and `127.0.0.1`, written as PEM files into a
/// temporary directory.
pub struct TestCa {
    dir: tempfile::TempDir,
    ca_cert: Certificate,
    ca_key: KeyPair,
    server_cert_der: CertificateDer<'static>,
    server_key_der: Vec<u8>,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa")
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

impl TestCa {
    /// A new CA named `name`, with its server certificate.
    ///
    /// # Panics
    ///
    /// When key generation or signing fails, or the files cannot be written.
    pub fn new(name: &str) -> Self {
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca.self_signed(&ca_key).expect("self-signed CA");

        let server_key = KeyPair::generate().expect("server key");
        let mut server = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
            .expect("server params");
        server
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        let server_cert = server
            .signed_by(&server_key, &ca_cert, &ca_key)
            .expect("server certificate");

        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("ca.pem"), ca_cert.pem()).expect("write ca.pem");
        std::fs::write(dir.path().join("server.pem"), server_cert.pem()).expect("write server.pem");
        std::fs::write(dir.path().join("server.key"), server_key.serialize_pem())
            .expect("write server.key");
        TestCa {
            dir,
            ca_cert,
            ca_key,
            server_cert_der: server_cert.der().clone(),
            server_key_der: server_key.serialize_der(),
        }
    }

    /// The CA certificate (PEM file): what clients trust.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The server certificate (PEM).
    pub fn server_cert_pem(&self) -> String {
        self.read("server.pem")
    }

    /// The server's private key (PEM, PKCS#8).
    pub fn server_key_pem(&self) -> String {
        self.read("server.key")
    }

    /// The directory holding the files, for other files of the test.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A client certificate for `name` signed by this CA, with its key, as a
    /// PKCS#12 archive encrypted with `password`.
    ///
    /// # Panics
    ///
    /// When key generation, signing or encoding fails.
    pub fn client_identity(&self, name: &str, password: &str) -> Vec<u8> {
        let key = KeyPair::generate().expect("client key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("client params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params
            .signed_by(&key, &self.ca_cert, &self.ca_key)
            .expect("client certificate");
        let chain = [cert.der(), self.ca_cert.der()]
            .into_iter()
            .map(|der| p12_keystore::Certificate::from_der(der).expect("DER certificate"));
        let entry = p12_keystore::PrivateKeyChain::new(key.serialize_der(), name.as_bytes(), chain);
        let mut store = p12_keystore::KeyStore::new();
        store.add_entry(name, p12_keystore::KeyStoreEntry::PrivateKeyChain(entry));
        store.writer(password).write().expect("PKCS#12 archive")
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name)).expect("read a CA file")
    }

    /// The proxy's TLS settings; with [`Clients::Certified`] it requires a
    /// client certificate signed by this CA.
    fn server_config(&self, clients: Clients) -> rustls::ServerConfig {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("TLS versions");
        let builder = match clients {
            Clients::Anyone => builder.with_no_client_auth(),
            Clients::Certified => {
                let mut roots = rustls::RootCertStore::empty();
                roots
                    .add(self.ca_cert.der().clone())
                    .expect("the CA as a client root");
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .expect("client verifier");
                builder.with_client_cert_verifier(verifier)
            }
        };
        builder
            .with_single_cert(
                vec![self.server_cert_der.clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.server_key_der.clone())),
            )
            .expect("server TLS config")
    }
}

/// Who may connect to a [`TlsProxy`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clients {
    /// Any client (server authentication only).
    Anyone,
    /// Only clients presenting a certificate of the proxy's CA (mutual TLS).
    Certified,
}

/// Accepts TLS on a free loopback port and forwards the decrypted stream to
/// a plain-TCP upstream. Stops when dropped.
#[derive(Debug)]
pub struct TlsProxy {
    port: u16,
    handshakes: Arc<AtomicUsize>,
    accept: JoinHandle<()>,
}

impl TlsProxy {
    /// Starts the proxy in front of `upstream`, with `ca`'s server
    /// certificate, admitting `clients`.
    ///
    /// # Panics
    ///
    /// When no port can be bound.
    pub async fn start(ca: &TestCa, clients: Clients, upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the TLS proxy");
        Self::serve(ca, clients, listener, upstream)
    }

    /// Serves on an already bound listener (whose port may have been
    /// advertised to clients before the upstream started).
    pub fn serve(
        ca: &TestCa,
        clients: Clients,
        listener: TcpListener,
        upstream: SocketAddr,
    ) -> Self {
        let port = listener.local_addr().expect("proxy address").port();
        let acceptor = TlsAcceptor::from(Arc::new(ca.server_config(clients)));
        let handshakes = Arc::new(AtomicUsize::new(0));
        let counted = handshakes.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let counted = counted.clone();
                tokio::spawn(async move {
                    // A client that does not trust us fails here: nothing to forward.
                    let Ok(mut client) = acceptor.accept(client).await else {
                        return;
                    };
                    counted.fetch_add(1, Ordering::Relaxed);
                    if let Ok(mut server) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        TlsProxy {
            port,
            handshakes,
            accept,
        }
    }

    /// The port clients connect to with TLS.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// How many clients completed a TLS handshake so far.
    pub fn handshakes(&self) -> usize {
        self.handshakes.load(Ordering::Relaxed)
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}
