//! The HTTP listener's settings: flags, defaults and their checks (kept
//! apart from the server, so the configuration compiles without it).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use clap::Args;
use eventbus::{Error, Result};

use crate::duration;

/// Where the listener binds unless told otherwise.
pub(crate) const DEFAULT_ADDR: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)), 9464);

/// Flags of the HTTP listener (`run`).
#[derive(Debug, Default, Args)]
pub(crate) struct HttpArgs {
    /// Address of the HTTP listener for /healthz, /readyz and /metrics [default: 127.0.0.1:9464].
    #[arg(long, env = "EVENTBUS_HTTP")]
    pub(crate) http: Option<SocketAddr>,

    /// How long a client may take to send its request: `5s`; a bare number
    /// is seconds [default: 5s].
    #[arg(long, env = "EVENTBUS_HTTP_READ_TIMEOUT", value_parser = duration::secs)]
    pub(crate) http_read_timeout: Option<Duration>,

    /// Time for answering, on top of the read timeout: a connection is
    /// closed this long after the read timeout, whatever the client does
    /// [default: 10s].
    #[arg(long, env = "EVENTBUS_HTTP_REQUEST_TIMEOUT", value_parser = duration::secs)]
    pub(crate) http_request_timeout: Option<Duration>,

    /// HTTP connections served at once; more wait to be accepted [default: 256].
    #[arg(long, env = "EVENTBUS_HTTP_MAX_CONNECTIONS")]
    pub(crate) http_max_connections: Option<usize>,
}

/// The listener's settings, resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HttpSettings {
    pub(crate) addr: SocketAddr,
    pub(crate) read_timeout: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) max_connections: usize,
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            addr: DEFAULT_ADDR,
            read_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            // Far below the usual 1024 file descriptors: the database and
            // broker connections need theirs.
            max_connections: 256,
        }
    }
}

impl HttpSettings {
    /// Rejects settings that would serve nothing.
    pub(crate) fn validate(&self) -> Result<()> {
        if self.read_timeout.is_zero() || self.request_timeout.is_zero() {
            return Err(Error::Config(
                "the HTTP read and request timeouts must be longer than zero".into(),
            ));
        }
        if self.max_connections == 0 {
            return Err(Error::Config(
                "--http-max-connections must be at least 1".into(),
            ));
        }
        Ok(())
    }
}
