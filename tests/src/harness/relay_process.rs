//! The `outbox-relay` binary as a long-running child: `run` with an HTTP
//! listener on a free port, watched through `/healthz` and `/metrics`.

use std::path::Path;
use std::time::Duration;

use super::http::{http_get, metric, wait_http_ok};
use super::port::free_port;
use super::process::{command, Proc};

/// How long a relay may take to connect to its database and broker.
const HEALTHY_TIMEOUT: Duration = Duration::from_secs(60);

/// An `outbox-relay` process ([`Proc`]: logging to a file, killed when
/// dropped) with the port of its HTTP listener.
#[derive(Debug)]
pub struct RelayProcess {
    /// The process and its log.
    pub proc: Proc,
    /// The port of its `/metrics`, `/healthz` and `/readyz` listener.
    pub port: u16,
}

impl RelayProcess {
    /// Starts `bin args… --http 127.0.0.1:<free port>` ([`command`]: no
    /// `EVENTBUS_*` inherited, `RUST_LOG=info`), logging to `<dir>/<name>.log`.
    /// `args` start with `run`.
    pub fn start(bin: &str, name: &str, args: &[&str], dir: &Path) -> Self {
        Self::start_with(bin, name, args, dir, |_| {})
    }

    /// [`start`](Self::start), with `adjust` changing the command before it
    /// runs (extra environment variables, say).
    pub fn start_with(
        bin: &str,
        name: &str,
        args: &[&str],
        dir: &Path,
        adjust: impl FnOnce(&mut tokio::process::Command),
    ) -> Self {
        let port = free_port();
        let http = format!("127.0.0.1:{port}");
        let mut cmd = command(bin, args);
        cmd.args(["--http", &http]);
        adjust(&mut cmd);
        RelayProcess {
            proc: Proc::spawn(name, cmd, dir),
            port,
        }
    }

    /// Waits (up to 60 s) until it answers `/healthz` with 200: it listens
    /// once connected to the database and the broker.
    ///
    /// # Panics
    ///
    /// When it exits first or does not answer in time.
    pub async fn wait_healthy(&mut self) {
        let name = self.proc.name().to_owned();
        let proc = &mut self.proc;
        wait_http_ok(self.port, "/healthz", HEALTHY_TIMEOUT, &name, || {
            proc.running()
        })
        .await;
    }

    /// `GET path`: status and body.
    ///
    /// # Errors
    ///
    /// As [`http_get`].
    pub async fn get(&self, path: &str) -> std::io::Result<(u16, String)> {
        http_get(self.port, path).await
    }

    /// The unlabelled sample `name` on its `/metrics`, when it answers and
    /// reports one.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let (_, body) = self.get("/metrics").await.ok()?;
        metric(&body, name)
    }
}
