//! Durations in flags and the TOML file: human forms (`500ms`, `5s`, `2m`,
//! `1h`, `1m30s`) and, so that existing settings keep working, a bare
//! integer in the unit the setting's old name gave it (`--poll-interval-ms
//! 200`, `keep_published_secs = 3600`).

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// The unit of a bare number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BareUnit {
    Millis,
    Secs,
}

/// Parses `text` as a duration; a bare integer is in `bare`.
pub(crate) fn parse(text: &str, bare: BareUnit) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration: give e.g. `500ms`, `5s` or `2m`".into());
    }
    if let Ok(n) = text.parse::<u64>() {
        return Ok(match bare {
            BareUnit::Millis => Duration::from_millis(n),
            BareUnit::Secs => Duration::from_secs(n),
        });
    }
    let invalid = || {
        format!("invalid duration `{text}`: give a number with a unit (ms, s, m, h), e.g. `500ms`, `5s`, `2m` or `1m30s`")
    };
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(invalid());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| invalid())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let part = match rest[..unit_len].trim() {
            "ms" => Some(Duration::from_millis(n)),
            "s" => Some(Duration::from_secs(n)),
            "m" => n.checked_mul(60).map(Duration::from_secs),
            "h" => n.checked_mul(3600).map(Duration::from_secs),
            _ => return Err(invalid()),
        };
        rest = &rest[unit_len..];
        total = part
            .and_then(|p| total.checked_add(p))
            .ok_or_else(|| format!("duration `{text}` is too long"))?;
    }
    Ok(total)
}

/// Clap value parser: a duration whose bare integers are milliseconds.
pub(crate) fn millis(text: &str) -> Result<Duration, String> {
    parse(text, BareUnit::Millis)
}

/// Clap value parser: a duration whose bare integers are seconds.
pub(crate) fn secs(text: &str) -> Result<Duration, String> {
    parse(text, BareUnit::Secs)
}

/// A TOML value: an integer in the bare unit, or a string.
#[derive(Deserialize)]
#[serde(untagged)]
enum Raw {
    Number(u64),
    Text(String),
}

fn deserialize<'de, D: Deserializer<'de>>(
    d: D,
    bare: BareUnit,
) -> Result<Option<Duration>, D::Error> {
    let raw = Option::<Raw>::deserialize(d)?;
    raw.map(|raw| match raw {
        Raw::Number(n) => parse(&n.to_string(), bare),
        Raw::Text(text) => parse(&text, bare),
    })
    .transpose()
    .map_err(serde::de::Error::custom)
}

/// Serde: an optional duration whose bare integers are milliseconds.
pub(crate) fn millis_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    deserialize(d, BareUnit::Millis)
}

/// Serde: an optional duration whose bare integers are seconds.
pub(crate) fn secs_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    deserialize(d, BareUnit::Secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_forms_parse() {
        let ms = Duration::from_millis;
        assert_eq!(millis("500ms"), Ok(ms(500)));
        assert_eq!(millis("5s"), Ok(ms(5_000)));
        assert_eq!(millis("2m"), Ok(ms(120_000)));
        assert_eq!(millis("1h"), Ok(ms(3_600_000)));
        assert_eq!(millis("1m30s"), Ok(ms(90_000)));
        assert_eq!(millis("1m 30s"), Ok(ms(90_000)));
        assert_eq!(secs(" 250ms "), Ok(ms(250)));
        assert_eq!(millis("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn bare_integers_keep_their_old_unit() {
        assert_eq!(millis("200"), Ok(Duration::from_millis(200)));
        assert_eq!(secs("3600"), Ok(Duration::from_secs(3600)));
    }

    #[test]
    fn nonsense_is_an_error_naming_the_value() {
        for bad in ["", "5 seconds", "ms", "1.5s", "-3s", "5x", "s5", "10m5"] {
            let err = millis(bad).expect_err(bad);
            assert!(err.contains("duration"), "{bad}: {err}");
        }
        assert!(millis("99999999999999999999h")
            .expect_err("overflow")
            .contains("invalid"));
        assert!(millis("18446744073709551615h")
            .expect_err("overflow")
            .contains("too long"));
    }

    #[derive(Debug, Deserialize)]
    struct File {
        #[serde(default, deserialize_with = "millis_opt")]
        poll: Option<Duration>,
        #[serde(default, deserialize_with = "secs_opt")]
        keep: Option<Duration>,
    }

    #[test]
    fn toml_takes_integers_and_strings() {
        let f: File = toml::from_str("poll = 200\nkeep = \"2m\"").expect("valid");
        assert_eq!(f.poll, Some(Duration::from_millis(200)));
        assert_eq!(f.keep, Some(Duration::from_secs(120)));
        let f: File = toml::from_str("poll = \"5s\"\nkeep = 60").expect("valid");
        assert_eq!(f.poll, Some(Duration::from_secs(5)));
        assert_eq!(f.keep, Some(Duration::from_secs(60)));
        let f: File = toml::from_str("").expect("valid");
        assert_eq!(f.poll, None);
        let err = toml::from_str::<File>("poll = \"soon\"").expect_err("invalid");
        assert!(err.to_string().contains("soon"), "{err}");
    }
}
