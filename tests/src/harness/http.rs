//! Plain HTTP/1.1 `GET` over TCP to a loopback listener (the relay's
//! `/metrics`, `/healthz`, `/readyz`; the example's services), and reading a
//! Prometheus sample: no HTTP client crate needed.

use std::time::{Duration, Instant};

/// How long one request may take, connection included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// `GET path` on 127.0.0.1:`port`: status and body.
///
/// # Errors
///
/// When the connection fails, the exchange takes longer than 10 s, or the
/// answer is not HTTP.
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
    let response = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
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

/// The value of the first Prometheus sample of `name` in `text`, whatever
/// its labels (a sidecar's relay series all carry the same `relay` and
/// `outbox` labels).
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?;
        let value = match rest.strip_prefix('{') {
            Some(labelled) => labelled.split_once("} ")?.1,
            None => rest.strip_prefix(' ')?,
        };
        value.trim().parse().ok()
    })
}

/// Waits until `GET path` on 127.0.0.1:`port` answers 200; `alive` says
/// whether the process that serves it is still running.
///
/// # Panics
///
/// When `what` exits first or does not answer 200 within `timeout`.
pub async fn wait_http_ok(
    port: u16,
    path: &str,
    timeout: Duration,
    what: &str,
    mut alive: impl FnMut() -> bool,
) {
    let deadline = Instant::now() + timeout;
    loop {
        assert!(alive(), "{what} exited during start-up");
        if let Ok((200, _)) = http_get(port, path).await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what} does not answer {path} after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
