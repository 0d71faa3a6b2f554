//! TLS for tests: a private certificate authority, and a TLS-terminating
//! proxy that puts a plain-TCP broker (the shared RabbitMQ, a private tansu)
//! behind TLS, so that clients speak to it exactly as to a broker with TLS
//! listeners.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::TlsAcceptor;

/// A certificate authority made for one test, and a server certificate it
/// signed for `localhost` and `127.0.0.1`, written as PEM files into a
/// temporary directory.
#[derive(Debug)]
pub struct TestCa {
    dir: tempfile::TempDir,
    server_cert_der: CertificateDer<'static>,
    server_key_der: Vec<u8>,
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

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name)).expect("read a CA file")
    }

    fn server_config(&self) -> rustls::ServerConfig {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![self.server_cert_der.clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.server_key_der.clone())),
            )
            .expect("server TLS config")
    }
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
    /// Starts the proxy in front of `upstream`, with `ca`'s server certificate.
    ///
    /// # Panics
    ///
    /// When no port can be bound.
    pub async fn start(ca: &TestCa, upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the TLS proxy");
        Self::serve(ca, listener, upstream)
    }

    /// Serves on an already bound listener (whose port may have been
    /// advertised to clients before the upstream started).
    pub fn serve(ca: &TestCa, listener: TcpListener, upstream: SocketAddr) -> Self {
        let port = listener.local_addr().expect("proxy address").port();
        let acceptor = TlsAcceptor::from(Arc::new(ca.server_config()));
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
