//! Running the `outbox-relay` binary from a test: a clean environment, a
//! bounded wait, and a clean stop.

use std::process::{Output, Stdio};
use std::time::Duration;

use tokio::process::{Child, Command};

/// `bin args…` with no `EVENTBUS_*` setting inherited from the test run,
/// logging at `info` without colours, killed if the test drops it.
pub fn command(bin: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(bin);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("EVENTBUS_") {
            cmd.env_remove(key);
        }
    }
    cmd.args(args)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

/// Runs `bin args…` to completion (at most 60 s) and returns what it did.
///
/// # Panics
///
/// When it cannot be started or runs longer.
pub async fn output(bin: &str, args: &[&str]) -> Output {
    tokio::time::timeout(Duration::from_secs(60), command(bin, args).output())
        .await
        .expect("outbox-relay finishes within 60 s")
        .expect("run outbox-relay")
}

/// Runs `bin args…` to completion, asserts it succeeded, and returns its
/// standard output.
///
/// # Panics
///
/// As [`output`], and when it fails (showing its standard error).
pub async fn cli_ok(bin: &str, args: &[&str]) -> String {
    let out = output(bin, args).await;
    assert!(
        out.status.success(),
        "`{bin} {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Stdout and stderr of `out` as one text.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A loopback port nobody listens on right now.
///
/// # Panics
///
/// When no port can be bound.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind a free port")
        .local_addr()
        .expect("local address")
        .port()
}

/// Sends SIGTERM and asserts a clean exit within 30 s.
///
/// # Panics
///
/// When the process does not exit cleanly in time.
pub async fn sigterm(child: &mut Child) {
    let pid = child.id().expect("the process is running").to_string();
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("send SIGTERM");
    assert!(sent.success(), "kill -TERM {pid} failed");
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("the process exits within 30 s of SIGTERM")
        .expect("wait for the process");
    assert!(status.success(), "exit status {status}");
}

/// `GET path` on 127.0.0.1:`port` over a plain TCP connection (the relay's
/// `/metrics`, `/readyz`): status and body.
pub async fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await?;
        let mut buf = Vec::new();
        stream.read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&buf).into_owned())
    };
    let response = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| std::io::Error::other("HTTP request timed out"))??;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {response:?}")))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}
