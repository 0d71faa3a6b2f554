//! The `outbox-relay` sidecar as a child process, as users run it: started
//! on a database and broker, watched through its `/metrics` endpoint, and
//! measured through `/proc` (CPU seconds, peak resident memory).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use eventbus_tests::harness::{
    http_get, metric, peak_rss_bytes, sibling_binary, try_free_port, try_signal,
};
use sqlx::PgPool;
use tokio::process::{Child, Command};

use crate::error::{BenchError, Result};

/// How long the relay may take to hold every partition after it starts.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Finds the relay binary: `explicit`, else `outbox-relay` next to this
/// executable, built first when this runs under `cargo run`.
pub(crate) fn locate(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(path) = explicit {
        return Ok(path.to_owned());
    }
    let exe = std::env::current_exe().map_err(|e| BenchError::io("current executable", e))?;
    let dir = exe
        .parent()
        .ok_or_else(|| BenchError::Relay("the benchmark executable has no directory".into()))?;
    // Under `cargo run` the relay may be stale or missing: build it in the
    // same profile (a no-op when it is fresh).
    if let Ok(cargo) = std::env::var("CARGO") {
        let profile = match dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") => "dev".to_owned(),
            Some(other) => other.to_owned(),
            None => "release".to_owned(),
        };
        let status = std::process::Command::new(cargo)
            .args([
                "build",
                "--quiet",
                "--profile",
                &profile,
                "-p",
                "outbox-relay",
            ])
            .status()
            .map_err(|e| {
                BenchError::Relay(format!("cannot run cargo to build outbox-relay: {e}"))
            })?;
        if !status.success() {
            return Err(BenchError::Relay(format!(
                "`cargo build --profile {profile} -p outbox-relay` failed ({status})"
            )));
        }
    }
    sibling_binary("outbox-relay").ok_or_else(|| {
        BenchError::Relay(format!(
            "{} not found: build it (`cargo build --release -p outbox-relay`) or pass --relay-bin",
            dir.join("outbox-relay").display()
        ))
    })
}

/// A running relay process.
#[derive(Debug)]
pub(crate) struct RelayProcess {
    child: Child,
    pid: u32,
    /// The port of its HTTP listener (`/metrics`).
    port: u16,
}

impl RelayProcess {
    /// Starts `outbox-relay run` on `database_url` and `broker`, prefixing
    /// every destination with `prefix`; its output goes to `log`.
    pub(crate) async fn start(
        bin: &Path,
        database_url: &str,
        broker: &str,
        prefix: &str,
        log: &Path,
        extra: &[&str],
    ) -> Result<Self> {
        let port = try_free_port().map_err(|e| BenchError::io("127.0.0.1:0", e))?;
        let http = format!("127.0.0.1:{port}");
        let out = std::fs::File::create(log).map_err(|e| BenchError::io(log, e))?;
        let err = out.try_clone().map_err(|e| BenchError::io(log, e))?;
        let child = Command::new(bin)
            .args(["--database-url", database_url, "run", "--broker", broker])
            .args([
                "--destination-prefix",
                prefix,
                "--http",
                &http,
                "--name",
                "bench",
            ])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| BenchError::Relay(format!("cannot start {}: {e}", bin.display())))?;
        let pid = child
            .id()
            .ok_or_else(|| BenchError::Relay("the relay exited at once".into()))?;
        Ok(RelayProcess { child, pid, port })
    }

    /// Waits until the relay holds every partition of the outbox in `pool`.
    pub(crate) async fn wait_ready(&mut self, pool: &PgPool) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            self.check_alive()?;
            let (held, all): (i64, i64) = sqlx::query_as(
                "SELECT count(*) FILTER (WHERE owner IS NOT NULL AND lease_expires_at > now()), count(*) \
                 FROM eventbus_outbox_partitions",
            )
            .fetch_one(pool)
            .await?;
            if all > 0 && held == all {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(BenchError::Timeout {
                    what: format!("relay holding all partitions ({held}/{all})"),
                    after: READY_TIMEOUT,
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Fails if the relay has exited.
    pub(crate) fn check_alive(&mut self) -> Result<()> {
        match self.child.try_wait() {
            Ok(Some(status)) => Err(BenchError::Relay(format!(
                "the relay exited early ({status}); see its log"
            ))),
            _ => Ok(()),
        }
    }

    /// `eventbus_relay_published_total` from the relay's `/metrics`.
    pub(crate) async fn published_total(&self) -> Result<u64> {
        Ok(self.metric("eventbus_relay_published_total").await? as u64)
    }

    /// The value of the unlabelled sample `name` in the relay's `/metrics`.
    pub(crate) async fn metric(&self, name: &str) -> Result<f64> {
        let (_, text) = http_get(self.port, "/metrics")
            .await
            .map_err(|e| BenchError::Relay(format!("GET /metrics on port {}: {e}", self.port)))?;
        metric(&text, name).ok_or_else(|| BenchError::Relay(format!("no {name} in /metrics")))
    }

    /// User + system CPU seconds used so far (`/proc/<pid>/stat`).
    pub(crate) fn cpu_seconds(&self) -> Result<f64> {
        crate::cpu::process_seconds(self.pid)
            .ok_or_else(|| BenchError::Relay(format!("cannot read /proc/{}/stat", self.pid)))
    }

    /// Peak resident set size in bytes (`VmHWM` of `/proc/<pid>/status`).
    pub(crate) fn peak_rss_bytes(&self) -> Result<u64> {
        peak_rss_bytes(self.pid)
            .map_err(|e| BenchError::io(format!("/proc/{}/status", self.pid), e))
    }

    /// Stops the relay with SIGTERM (its graceful shutdown), SIGKILL after 30 s.
    pub(crate) async fn stop(mut self) -> Result<()> {
        let _ = try_signal(self.pid, "TERM");
        match tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await {
            Ok(_) => Ok(()),
            Err(_) => {
                let _ = self.child.kill().await;
                Err(BenchError::Relay(
                    "the relay ignored SIGTERM for 30 s".into(),
                ))
            }
        }
    }
}
