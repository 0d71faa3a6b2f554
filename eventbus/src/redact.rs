//! Keeping credentials out of messages: the password of a URL
//! ([`redact_url`]), of every URL in a text ([`redact_urls`]), and the
//! secrets a broker client was configured with, scrubbed from the errors it
//! reports (`Secrets`, used by the transports).

use std::fmt;

/// `url` with the password of its user info replaced by `***`.
///
/// ```
/// use eventbus::redact::redact_url;
///
/// assert_eq!(
///     redact_url("amqp://app:s3cret@rabbit:5672/%2f"),
///     "amqp://app:***@rabbit:5672/%2f"
/// );
/// ```
pub fn redact_url(url: &str) -> String {
    match split_password(url) {
        Some((start, password)) => {
            let end = start + password.len();
            format!("{}***{}", &url[..start], &url[end..])
        }
        None => url.to_owned(),
    }
}

/// `text` with the password of every `scheme://user:password@` in it
/// replaced by `***`: for messages that may quote a connection URL.
///
/// ```
/// use eventbus::redact::redact_urls;
///
/// assert_eq!(
///     redact_urls("cannot connect to amqp://guest:s3cret@host:5672/%2f: refused"),
///     "cannot connect to amqp://guest:***@host:5672/%2f: refused"
/// );
/// ```
pub fn redact_urls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("://") {
        let (head, tail) = rest.split_at(start + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| c.is_whitespace() || c == '/' || c == '"' || c == '\'')
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(at) => {
                let userinfo = &authority[..at];
                match userinfo.split_once(':') {
                    Some((user, _)) => out.push_str(&format!("{user}:***")),
                    None => out.push_str(userinfo),
                }
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// Secret values to scrub from error texts that might echo them (a client
/// library's error quoting its configuration), each replaced by a mask.
// Only the broker transports hold secrets.
#[cfg_attr(not(any(feature = "kafka", feature = "rabbitmq")), allow(dead_code))]
#[derive(Clone, Default)]
pub(crate) struct Secrets {
    values: Vec<String>,
    mask: &'static str,
}

#[cfg_attr(not(any(feature = "kafka", feature = "rabbitmq")), allow(dead_code))]
impl Secrets {
    /// `values` (empty ones left out), each shown as `mask`.
    pub(crate) fn new<I, S>(values: I, mask: &'static str) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut values: Vec<String> = values.into_iter().map(Into::into).collect();
        values.retain(|s| !s.is_empty());
        Secrets { values, mask }
    }

    /// The password of `url`, raw and percent-decoded, each shown as `***`.
    #[cfg_attr(not(feature = "rabbitmq"), allow(dead_code))]
    pub(crate) fn from_url(url: &str) -> Self {
        let Some((_, password)) = split_password(url) else {
            return Secrets::new(Vec::<String>::new(), "***");
        };
        let mut secrets = vec![password.to_owned()];
        let decoded = percent_decode(password);
        if decoded != password {
            secrets.push(decoded);
        }
        Secrets::new(secrets, "***")
    }

    /// The text of `e` with every secret masked.
    pub(crate) fn scrub(&self, e: &dyn fmt::Display) -> String {
        let mut text = e.to_string();
        for secret in &self.values {
            text = text.replace(secret.as_str(), self.mask);
        }
        text
    }
}

/// The byte offset and text of the password in `scheme://user:password@host…`.
fn split_password(url: &str) -> Option<(usize, &str)> {
    let authority_start = url.find("://").map_or(0, |i| i + 3);
    let rest = &url[authority_start..];
    let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_len];
    let at = authority.rfind('@')?;
    let colon = authority[..at].find(':')?;
    let start = authority_start + colon + 1;
    Some((start, &url[start..authority_start + at]))
}

#[cfg_attr(not(feature = "rabbitmq"), allow(dead_code))]
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_the_password_only() {
        let cases = [
            (
                "amqp://guest:guest@127.0.0.1:5672/%2f",
                "amqp://guest:***@127.0.0.1:5672/%2f",
            ),
            (
                "amqps://u:p%40ss@host/vh?heartbeat=10",
                "amqps://u:***@host/vh?heartbeat=10",
            ),
            ("amqp://user@host/", "amqp://user@host/"),
            ("amqp://host:5672/%2f", "amqp://host:5672/%2f"),
            ("amqp://a:b:c@host", "amqp://a:***@host"),
            ("not a url", "not a url"),
        ];
        for (url, expected) in cases {
            assert_eq!(redact_url(url), expected, "for {url}");
        }
    }

    #[test]
    fn scrubs_raw_and_decoded_passwords() {
        let secrets = Secrets::from_url("amqp://u:p%40ss@host/");
        assert_eq!(secrets.scrub(&"p%40ss and p@ss"), "*** and ***");
        let settings = Secrets::new(["hunter2", ""], "<redacted>");
        assert_eq!(
            settings.scrub(&"login with hunter2 failed"),
            "login with <redacted> failed"
        );
    }

    #[test]
    fn passwords_of_every_url_in_a_text_never_survive() {
        assert_eq!(
            redact_urls("cannot connect to amqp://guest:s3cret@host:5672/%2f: refused"),
            "cannot connect to amqp://guest:***@host:5672/%2f: refused"
        );
        assert_eq!(
            redact_urls("postgres://app:pw@db/x and kafka://k:9092"),
            "postgres://app:***@db/x and kafka://k:9092"
        );
        assert_eq!(redact_urls("no urls here"), "no urls here");
    }
}
