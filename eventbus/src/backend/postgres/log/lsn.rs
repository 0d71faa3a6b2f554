//! [`Lsn`]: a position in PostgreSQL's write-ahead log, written as
//! PostgreSQL writes it (`16/B374D848`).
//!
//! `pgwire-replication` has its own `Lsn`; ours keeps the pure modules (frame
//! decoding, the confirmable position) free of the crate, and the stream
//! source converts at the edge (`Lsn(crate_lsn.as_u64())`).

use std::fmt;
use std::str::FromStr;

/// A WAL position: a byte offset into the log, as a 64-bit integer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Lsn(pub(crate) u64);

impl Lsn {
    /// PostgreSQL's `InvalidXLogRecPtr`: no position.
    pub(crate) const ZERO: Lsn = Lsn(0);
}

impl fmt::Display for Lsn {
    /// `X/Y`: the high and low 32 bits in upper-case hex, no padding, as
    /// `pg_lsn` prints and `pg_replication_slots` shows it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// Text that is not an LSN in PostgreSQL's `X/Y` form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid LSN {text:?}: expected two groups of 1 to 8 hex digits, as in 16/B374D848")]
pub(crate) struct LsnParseError {
    /// The text given (its first 64 bytes).
    pub(crate) text: String,
}

impl FromStr for Lsn {
    type Err = LsnParseError;

    /// Accepts what `pg_lsn` accepts: 1 to 8 hex digits of either case on
    /// each side of the `/`, nothing around them.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || LsnParseError {
            text: s.chars().take(64).collect(),
        };
        let (high, low) = s.split_once('/').ok_or_else(invalid)?;
        let half = |part: &str| {
            // `from_str_radix` alone would take a sign.
            if part.is_empty() || part.len() > 8 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            u32::from_str_radix(part, 16).ok()
        };
        let high = half(high).ok_or_else(invalid)?;
        let low = half(low).ok_or_else(invalid)?;
        Ok(Lsn((u64::from(high) << 32) | u64::from(low)))
    }
}

impl From<u64> for Lsn {
    fn from(value: u64) -> Self {
        Lsn(value)
    }
}

impl From<Lsn> for u64 {
    fn from(lsn: Lsn) -> Self {
        lsn.0
    }
}

#[cfg(test)]
mod tests {
    use super::Lsn;

    #[test]
    fn prints_as_postgresql_does() {
        assert_eq!(Lsn(0x16_B374_D848).to_string(), "16/B374D848");
        assert_eq!(Lsn::ZERO.to_string(), "0/0");
        assert_eq!(Lsn(0x0000_0001_0000_000A).to_string(), "1/A");
        assert_eq!(Lsn(u64::MAX).to_string(), "FFFFFFFF/FFFFFFFF");
    }

    #[test]
    fn parses_what_it_prints_and_either_case() {
        for value in [0, 1, 0x16_B374_D848, 0xFFFF_FFFF, 1 << 32, u64::MAX] {
            let lsn = Lsn(value);
            assert_eq!(lsn.to_string().parse::<Lsn>(), Ok(lsn));
        }
        assert_eq!("16/b374d848".parse::<Lsn>(), Ok(Lsn(0x16_B374_D848)));
        assert_eq!("00000016/0000000A".parse::<Lsn>(), Ok(Lsn(0x16_0000_000A)));
    }

    #[test]
    fn refuses_anything_else() {
        for text in [
            "",
            "/",
            "16/",
            "/B374D848",
            "16B374D848",
            "16/B374D848/0",
            "123456789/0",
            "0/123456789",
            "+16/B374D848",
            "16/-1",
            " 16/B374D848",
            "16/B374D848 ",
            "G/0",
            "١/٠",
        ] {
            let err = text.parse::<Lsn>().expect_err(text);
            assert!(err.to_string().contains("invalid LSN"), "{err}");
        }
    }

    #[test]
    fn orders_by_position() {
        assert!(Lsn(0x1_0000_0000) > Lsn(0xFFFF_FFFF));
        assert_eq!(u64::from(Lsn::from(7)), 7);
    }
}
