//! Loopback ports: a free one for a child process or a private server, and
//! waiting until something listens on one.

use std::time::{Duration, Instant};

/// A loopback port nobody listens on right now, or why none could be bound.
///
/// # Errors
///
/// When no port can be bound on 127.0.0.1.
pub fn try_free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A loopback port nobody listens on right now.
///
/// # Panics
///
/// When no port can be bound.
pub fn free_port() -> u16 {
    try_free_port().unwrap_or_else(|e| panic!("cannot bind a free loopback port: {e}"))
}

/// Waits until something accepts connections on 127.0.0.1:`port`; `alive`
/// says whether the process that should listen there is still running.
///
/// # Panics
///
/// When `what` exits first (`alive` returns false) or does not listen within
/// `timeout`.
pub async fn wait_listening(
    port: u16,
    timeout: Duration,
    what: &str,
    mut alive: impl FnMut() -> bool,
) {
    let deadline = Instant::now() + timeout;
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(alive(), "{what} exited during start-up");
        assert!(
            Instant::now() < deadline,
            "{what} does not listen on {port} after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
