//! `outbox-relay healthcheck`: asks a relay's HTTP listener whether it is
//! ready, for a container `HEALTHCHECK` in an image without `curl`. Exit
//! status 0 when the answer is 200, 1 otherwise.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt, Empty};
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;

use crate::duration;

/// Flags of `healthcheck`.
#[derive(Debug, Args)]
pub(crate) struct HealthcheckArgs {
    /// The URL to ask [default: `/readyz` on the address of `--http`].
    #[arg(long)]
    pub(crate) url: Option<String>,

    /// The relay's listen address, as given to `run` (an unspecified
    /// address such as 0.0.0.0 is asked on loopback) [default: 127.0.0.1:9464].
    #[arg(long, env = "EVENTBUS_HTTP")]
    pub(crate) http: Option<SocketAddr>,

    /// How long to wait for the answer.
    #[arg(long, default_value = "5s", value_parser = duration::secs)]
    pub(crate) timeout: Duration,
}

/// The URL asked when none is given: `/readyz` on `listen`, reached over
/// loopback when the relay listens on every address.
pub(crate) fn default_url(listen: SocketAddr) -> String {
    let mut addr = listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        });
    }
    format!("http://{addr}/readyz")
}

/// `GET url`; `Ok` with a line to print when it answers 200, else `Err`
/// saying what happened.
pub(crate) async fn check(url: &str, timeout: Duration) -> Result<String, String> {
    let uri: Uri = url
        .parse()
        .map_err(|e| format!("invalid URL `{url}`: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!("`{url}`: only http:// URLs are supported"));
    }
    let authority = uri
        .authority()
        .ok_or_else(|| format!("`{url}` names no host"))?
        .clone();
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = authority.port_u16().unwrap_or(80);
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let exchange = async {
        let stream = tokio::net::TcpStream::connect((host, port))
            .await
            .map_err(|e| format!("cannot connect to {authority}: {e}"))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        tokio::spawn(connection);
        let request = Request::get(path)
            .header(hyper::header::HOST, authority.as_str())
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("{url}: {e}"))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map(|b| {
                let text = String::from_utf8_lossy(&b.to_bytes()).into_owned();
                // A line for the container's health log, not a `/metrics` page.
                text.trim().chars().take(200).collect::<String>()
            })
            .unwrap_or_default();
        let line = format!("{url}: {status} {body}");
        if status == hyper::StatusCode::OK {
            Ok(line)
        } else {
            Err(line)
        }
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("{url}: no answer within {timeout:?}"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unspecified_listen_address_is_asked_on_loopback() {
        let url = |s: &str| default_url(s.parse().expect("address"));
        assert_eq!(url("0.0.0.0:9464"), "http://127.0.0.1:9464/readyz");
        assert_eq!(url("[::]:9464"), "http://[::1]:9464/readyz");
        assert_eq!(url("10.0.0.7:80"), "http://10.0.0.7:80/readyz");
    }
}
