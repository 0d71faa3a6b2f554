//! The relay's HTTP listener: `/healthz` (process up), `/readyz` (database
//! and broker reachable) and `/metrics` (Prometheus text), GET and HEAD.
//!
//! The listener must never cost the relay what it needs to relay: each
//! connection has a deadline, at most `max_connections` are served at once
//! (more wait in the kernel's listen queue, holding no file descriptor of
//! ours), and when accepting fails — out of file descriptors, say — the loop
//! pauses instead of spinning.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use eventbus::relay::{RelayMetrics, Snapshot};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

mod settings;

pub(crate) use settings::{HttpArgs, HttpSettings, DEFAULT_ADDR};

/// The first pause after accepting fails, doubling up to [`ACCEPT_PAUSE_MAX`].
const ACCEPT_PAUSE_MIN: Duration = Duration::from_millis(10);
const ACCEPT_PAUSE_MAX: Duration = Duration::from_secs(1);

/// Binds the listener's address.
pub(crate) async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves `/healthz`, `/readyz` and `/metrics` on `listener` until the task
/// is dropped.
pub(crate) async fn serve(
    listener: TcpListener,
    metrics: Arc<RelayMetrics>,
    settings: HttpSettings,
) {
    let app = router(metrics);
    let slots = Arc::new(Semaphore::new(settings.max_connections));
    let mut pause = ACCEPT_PAUSE_MIN;
    loop {
        // A slot first: at the cap, new connections wait in the listen queue.
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => {
                pause = ACCEPT_PAUSE_MIN;
                stream
            }
            // That one connection went away before it was accepted.
            Err(e) if is_about_one_connection(&e) => continue,
            Err(e) => {
                // Out of file descriptors or memory: accepting again at once
                // would fail again and spin a core.
                if pause == ACCEPT_PAUSE_MIN {
                    tracing::warn!(error = %e, "cannot accept HTTP connections; pausing");
                } else {
                    tracing::debug!(error = %e, ?pause, "cannot accept HTTP connections");
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(ACCEPT_PAUSE_MAX);
                continue;
            }
        };
        let app = app.clone();
        tokio::spawn(async move {
            serve_connection(stream, app, settings).await;
            drop(slot);
        });
    }
}

fn is_about_one_connection(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    )
}

/// One request per connection, within the read timeout plus the request
/// timeout whatever the client does (sends slowly, never reads the answer).
async fn serve_connection(stream: TcpStream, app: Router, settings: HttpSettings) {
    let _ = stream.set_nodelay(true);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(settings.read_timeout)
        .keep_alive(false);
    let connection = builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app));
    let deadline = settings.read_timeout + settings.request_timeout;
    match tokio::time::timeout(deadline, connection).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(error = %e, "HTTP connection failed"),
        Err(_) => tracing::debug!(?deadline, "HTTP connection took too long; closed"),
    }
}

/// The routes; `get` answers HEAD as well, without the body.
fn router(metrics: Arc<RelayMetrics>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(prometheus))
        .with_state(metrics)
}

async fn readyz(State(metrics): State<Arc<RelayMetrics>>) -> (StatusCode, String) {
    match unready_reasons(&metrics.snapshot()).as_slice() {
        [] => (StatusCode::OK, "ready\n".to_owned()),
        reasons => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", reasons.join(", ")),
        ),
    }
}

/// What keeps the relay from relaying: the database missed the last
/// heartbeat, or the broker refused the last publish (an idle relay has not
/// found it down).
fn unready_reasons(snapshot: &Snapshot) -> Vec<&'static str> {
    let mut reasons = Vec::new();
    if !snapshot.database_available {
        reasons.push("database unreachable");
    }
    if !snapshot.broker_available {
        reasons.push("broker unreachable");
    }
    reasons
}

async fn prometheus(State(metrics): State<Arc<RelayMetrics>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics.render_prometheus(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_with_database_and_broker() {
        let up = Snapshot {
            database_available: true,
            broker_available: true,
            ..Snapshot::default()
        };
        assert!(unready_reasons(&up).is_empty());
        let no_broker = Snapshot {
            broker_available: false,
            ..up
        };
        assert_eq!(unready_reasons(&no_broker), ["broker unreachable"]);
        let nothing = Snapshot::default();
        assert_eq!(
            unready_reasons(&nothing),
            ["database unreachable", "broker unreachable"]
        );
    }

    #[test]
    fn zero_timeouts_or_connections_are_refused() {
        let ok = HttpSettings::default();
        assert!(ok.validate().is_ok());
        for bad in [
            HttpSettings {
                read_timeout: Duration::ZERO,
                ..ok
            },
            HttpSettings {
                request_timeout: Duration::ZERO,
                ..ok
            },
            HttpSettings {
                max_connections: 0,
                ..ok
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
