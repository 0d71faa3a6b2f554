//! Keeping credentials out of every message: the passwords of URLs in any text.

/// Replaces the password of every `scheme://user:password@` in `text` with `***`.
pub(crate) fn redact(text: &str) -> String {
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

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_never_survive() {
        assert_eq!(
            redact("cannot connect to amqp://guest:s3cret@host:5672/%2f: refused"),
            "cannot connect to amqp://guest:***@host:5672/%2f: refused"
        );
        assert_eq!(
            redact("postgres://app:pw@db/x and kafka://k:9092"),
            "postgres://app:***@db/x and kafka://k:9092"
        );
        assert_eq!(redact("no urls here"), "no urls here");
    }
}
