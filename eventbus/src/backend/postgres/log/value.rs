//! Column values: the [`Datum`]s of a row read as the PostgreSQL types the
//! relay uses (`int8`, `int4`, `text`, `uuid`, `jsonb`, `timestamptz`,
//! `pg_lsn`, `xid8`), or a [`ValueError`] saying why one does not read.
//!
//! pgoutput sends a value in its type's text output form or, with
//! `binary 'true'`, in its binary send form; each decoder reads whichever
//! arrived. Binary is the form the relay asks for
//! (docs/design/log-relay-plan.md §2): no text to parse, and nothing that
//! depends on the walsender session's settings (`timestamptz` prints by its
//! `DateStyle` and `TimeZone`, so it is read in binary only, plan §3.18);
//! with a publication column list naming exactly the outbox columns, no
//! user-added column can make the walsender fail on a type without a send
//! function either. The text forms stay readable as the fallback, should
//! binary mode misbehave. Text and jsonb values are borrowed from the frame,
//! like the [`Datum`]s they are read from.

use std::str::Utf8Error;

use super::lsn::Lsn;
use super::pgoutput::Datum;

/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01 UTC), the
/// origin of every timestamp on the wire.
pub(crate) const PG_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;

/// A column value that is not what its type's text or binary form allows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum ValueError {
    /// An unchanged TOAST value: the data was not sent.
    #[error("value of type {type_name} was not sent (unchanged TOAST value)")]
    Unchanged {
        /// The PostgreSQL type read.
        type_name: &'static str,
    },
    /// A binary value of the wrong size.
    #[error("binary {type_name} has {found} bytes, expected {expected}")]
    Length {
        /// The PostgreSQL type read.
        type_name: &'static str,
        /// The type's size.
        expected: usize,
        /// The value's size.
        found: usize,
    },
    /// Text that is not UTF-8.
    #[error("{type_name} value is not UTF-8: {source}")]
    Utf8 {
        /// The PostgreSQL type read.
        type_name: &'static str,
        /// Where the UTF-8 check failed.
        #[source]
        source: Utf8Error,
    },
    /// A text form that does not parse as the type.
    #[error("{type_name} text {text:?} does not parse")]
    Syntax {
        /// The PostgreSQL type read.
        type_name: &'static str,
        /// The text (its first 64 characters).
        text: String,
    },
    /// A binary jsonb without the format version 1 it is sent with.
    #[error("binary jsonb has format version {found:?}, expected 1")]
    JsonbVersion {
        /// The first byte, if any.
        found: Option<u8>,
    },
    /// `infinity` or `-infinity`: not a point in time.
    #[error("timestamptz is infinite")]
    InfiniteTimestamp,
    /// A type whose text form this decoder does not read: timestamptz
    /// prints by the walsender session's `DateStyle` and `TimeZone`, so it
    /// is read in binary only (plan §2, §3.18).
    #[error("{type_name} arrived in text form; it is read in binary only")]
    TextForm {
        /// The PostgreSQL type read.
        type_name: &'static str,
    },
}

/// Decoders for the column types the relay reads. Each returns `Ok(None)`
/// for NULL and reads the text or the binary form, whichever arrived.
impl<'a> Datum<'a> {
    /// `int8` (OID 20).
    pub(crate) fn int8(self) -> Result<Option<i64>, ValueError> {
        self.value("int8", |b| fixed(b).map(i64::from_be_bytes), parse)
    }

    /// `int4` (OID 23).
    pub(crate) fn int4(self) -> Result<Option<i32>, ValueError> {
        self.value("int4", |b| fixed(b).map(i32::from_be_bytes), parse)
    }

    /// `text` (OID 25): both forms are the UTF-8 bytes.
    pub(crate) fn text(self) -> Result<Option<&'a str>, ValueError> {
        self.value("text", |b| utf8("text", b), Ok)
    }

    /// `uuid` (OID 2950): 16 bytes, or the hyphenated hex PostgreSQL prints.
    pub(crate) fn uuid(self) -> Result<Option<[u8; 16]>, ValueError> {
        self.value("uuid", fixed, |t| uuid_text(t).ok_or(()))
    }

    /// `jsonb` (OID 3802): the JSON text; in binary, after the format
    /// version byte 1.
    pub(crate) fn jsonb(self) -> Result<Option<&'a str>, ValueError> {
        self.value(
            "jsonb",
            |b| match b.split_first() {
                Some((&1, text)) => utf8("jsonb", text),
                found => Err(ValueError::JsonbVersion {
                    found: found.map(|(v, _)| *v),
                }),
            },
            Ok,
        )
    }

    /// `timestamptz` (OID 1184), binary only: microseconds since
    /// 2000-01-01 UTC ([`PG_EPOCH_UNIX_MICROS`] converts to the Unix epoch).
    pub(crate) fn timestamptz(self) -> Result<Option<i64>, ValueError> {
        if let Datum::Text(_) = self {
            return Err(ValueError::TextForm {
                type_name: "timestamptz",
            });
        }
        self.value(
            "timestamptz",
            |b| match fixed(b).map(i64::from_be_bytes)? {
                // DT_NOBEGIN and DT_NOEND.
                i64::MIN | i64::MAX => Err(ValueError::InfiniteTimestamp),
                micros => Ok(micros),
            },
            |_| Err(()),
        )
    }

    /// `pg_lsn` (OID 3220): 8 bytes, or `X/Y`.
    pub(crate) fn pg_lsn(self) -> Result<Option<Lsn>, ValueError> {
        self.value(
            "pg_lsn",
            |b| fixed(b).map(|b| Lsn(u64::from_be_bytes(b))),
            |t| t.parse().map_err(drop),
        )
    }

    /// `xid8` (OID 5069): 8 bytes, or decimal.
    pub(crate) fn xid8(self) -> Result<Option<u64>, ValueError> {
        self.value("xid8", |b| fixed(b).map(u64::from_be_bytes), parse)
    }

    /// Dispatches on the form that arrived; `text` reports a syntax error
    /// as `Err(())`, turned into [`ValueError::Syntax`] here.
    fn value<T>(
        self,
        type_name: &'static str,
        binary: impl FnOnce(&'a [u8]) -> Result<T, ValueError>,
        text: impl FnOnce(&'a str) -> Result<T, ()>,
    ) -> Result<Option<T>, ValueError> {
        match self {
            Datum::Null => Ok(None),
            Datum::Unchanged => Err(ValueError::Unchanged { type_name }),
            Datum::Binary(bytes) => binary(bytes).map(Some).map_err(|e| e.for_type(type_name)),
            Datum::Text(bytes) => {
                let s = utf8(type_name, bytes)?;
                text(s).map(Some).map_err(|()| ValueError::Syntax {
                    type_name,
                    text: s.chars().take(64).collect(),
                })
            }
        }
    }
}

impl ValueError {
    /// Names the type in a length error raised by [`fixed`], which does not
    /// know it.
    fn for_type(self, type_name: &'static str) -> Self {
        match self {
            ValueError::Length {
                expected, found, ..
            } => ValueError::Length {
                type_name,
                expected,
                found,
            },
            other => other,
        }
    }
}

/// A binary value of exactly `N` bytes.
fn fixed<const N: usize>(bytes: &[u8]) -> Result<[u8; N], ValueError> {
    <[u8; N]>::try_from(bytes).map_err(|_| ValueError::Length {
        type_name: "",
        expected: N,
        found: bytes.len(),
    })
}

fn utf8<'a>(type_name: &'static str, bytes: &'a [u8]) -> Result<&'a str, ValueError> {
    std::str::from_utf8(bytes).map_err(|source| ValueError::Utf8 { type_name, source })
}

fn parse<T: std::str::FromStr>(text: &str) -> Result<T, ()> {
    text.parse().map_err(drop)
}

/// The form `uuid_out` prints: 32 hex digits in groups of 8-4-4-4-12.
fn uuid_text(text: &str) -> Option<[u8; 16]> {
    let bytes = text.as_bytes();
    if bytes.len() != 36 {
        return None;
    }
    let mut uuid = [0u8; 16];
    let mut digits = 0;
    for (i, &c) in bytes.iter().enumerate() {
        if matches!(i, 8 | 13 | 18 | 23) {
            if c != b'-' {
                return None;
            }
            continue;
        }
        let digit = u8::try_from(char::from(c).to_digit(16)?).ok()?;
        let byte = uuid.get_mut(digits / 2)?;
        *byte = (*byte << 4) | digit;
        digits += 1;
    }
    Some(uuid)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The event id of the outbox rows in pgoutput's tests.
    const EVENT_ID: [u8; 16] = [
        0x01, 0x8f, 0x3a, 0x4b, 0x5c, 0x6d, 0x7e, 0x8f, 0x90, 0xa1, 0xb2, 0xc3, 0xd4, 0xe5, 0xf6,
        0x07,
    ];

    #[test]
    fn the_outbox_columns_read_in_binary() {
        let jsonb = b"\x01{\"order\": 42}";
        assert_eq!(Datum::Binary(&7_i64.to_be_bytes()).int8(), Ok(Some(7)));
        assert_eq!(Datum::Binary(&EVENT_ID).uuid(), Ok(Some(EVENT_ID)));
        assert_eq!(Datum::Binary("clé-7".as_bytes()).text(), Ok(Some("clé-7")));
        assert_eq!(Datum::Binary(jsonb).jsonb(), Ok(Some(r#"{"order": 42}"#)));
        assert_eq!(
            Datum::Binary(&774_000_000_123_456_i64.to_be_bytes()).timestamptz(),
            Ok(Some(774_000_000_123_456))
        );
        assert_eq!(Datum::Null.int4(), Ok(None));
    }

    #[test]
    fn the_outbox_columns_read_in_text_form() {
        assert_eq!(Datum::Text(b"7").int8(), Ok(Some(7)));
        assert_eq!(
            Datum::Text(b"018f3a4b-5c6d-7e8f-90a1-b2c3d4e5f607").uuid(),
            Ok(Some(EVENT_ID))
        );
        assert_eq!(Datum::Text("clé-7".as_bytes()).text(), Ok(Some("clé-7")));
        assert_eq!(
            Datum::Text(br#"{"order": 42}"#).jsonb(),
            Ok(Some(r#"{"order": 42}"#))
        );
        assert_eq!(Datum::Null.timestamptz(), Ok(None));
        assert_eq!(Datum::Text(b"-3").int4(), Ok(Some(-3)));
    }

    #[test]
    fn integers_read_big_endian_binary_and_decimal_text() {
        assert_eq!(Datum::Binary(&(-2_i64).to_be_bytes()).int8(), Ok(Some(-2)));
        assert_eq!(
            Datum::Binary(&i64::MAX.to_be_bytes()).int8(),
            Ok(Some(i64::MAX))
        );
        assert_eq!(Datum::Binary(&[0, 0, 1, 0]).int4(), Ok(Some(256)));
        assert_eq!(
            Datum::Text(b"-9223372036854775808").int8(),
            Ok(Some(i64::MIN))
        );
        assert_eq!(Datum::Text(b"2147483647").int4(), Ok(Some(i32::MAX)));
        assert_eq!(
            Datum::Binary(&[0, 0, 1, 0]).int8(),
            Err(ValueError::Length {
                type_name: "int8",
                expected: 8,
                found: 4
            })
        );
        assert_eq!(
            Datum::Binary(&[0; 8]).int4(),
            Err(ValueError::Length {
                type_name: "int4",
                expected: 4,
                found: 8
            })
        );
        for bad in [&b""[..], b"1.5", b" 1", b"2147483648", b"0x10", b"\xFF"] {
            assert!(Datum::Text(bad).int4().is_err(), "{bad:?}");
        }
        assert_eq!(
            Datum::Text(b"12a").int8(),
            Err(ValueError::Syntax {
                type_name: "int8",
                text: "12a".into()
            })
        );
        assert_eq!(
            Datum::Binary(&u64::MAX.to_be_bytes()).xid8(),
            Ok(Some(u64::MAX))
        );
        assert_eq!(Datum::Text(b"750").xid8(), Ok(Some(750)));
        assert!(Datum::Text(b"-1").xid8().is_err());
    }

    #[test]
    fn text_must_be_utf8() {
        assert_eq!(Datum::Binary(b"caf\xC3\xA9").text(), Ok(Some("café")));
        assert_eq!(Datum::Text(b"").text(), Ok(Some("")));
        for bad in [Datum::Text(b"caf\xC3"), Datum::Binary(b"\xFF")] {
            assert!(matches!(
                bad.text(),
                Err(ValueError::Utf8 {
                    type_name: "text",
                    ..
                })
            ));
        }
        assert_eq!(Datum::Null.text(), Ok(None));
        assert_eq!(
            Datum::Unchanged.text(),
            Err(ValueError::Unchanged { type_name: "text" })
        );
    }

    #[test]
    fn uuids_read_sixteen_bytes_or_the_hyphenated_hex() {
        assert_eq!(Datum::Binary(&EVENT_ID).uuid(), Ok(Some(EVENT_ID)));
        assert_eq!(
            Datum::Text(b"018F3A4B-5C6D-7E8F-90A1-B2C3D4E5F607").uuid(),
            Ok(Some(EVENT_ID))
        );
        assert_eq!(
            Datum::Binary(&EVENT_ID[..15]).uuid(),
            Err(ValueError::Length {
                type_name: "uuid",
                expected: 16,
                found: 15
            })
        );
        for bad in [
            &b"018f3a4b5c6d7e8f90a1b2c3d4e5f607"[..],
            b"018f3a4b-5c6d-7e8f-90a1-b2c3d4e5f60",
            b"018f3a4b-5c6d-7e8f-90a1-b2c3d4e5f6077",
            b"018f3a4b-5c6d-7e8f-90a1_b2c3d4e5f607",
            b"018f3a4b-5c6d-7e8f-90a1-b2c3d4e5f60g",
            b"{18f3a4b-5c6d-7e8f-90a1-b2c3d4e5f60}",
            "018f3a4b-5c6d-7e8f-90a1-b2c3d4e5f6é".as_bytes(),
        ] {
            assert!(
                matches!(
                    Datum::Text(bad).uuid(),
                    Err(ValueError::Syntax {
                        type_name: "uuid",
                        ..
                    })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn binary_jsonb_needs_its_version_byte() {
        assert_eq!(Datum::Binary(b"\x01[1, 2]").jsonb(), Ok(Some("[1, 2]")));
        assert_eq!(Datum::Text(b"[1, 2]").jsonb(), Ok(Some("[1, 2]")));
        assert_eq!(
            Datum::Binary(b"\x02[1]").jsonb(),
            Err(ValueError::JsonbVersion { found: Some(2) })
        );
        assert_eq!(
            Datum::Binary(b"").jsonb(),
            Err(ValueError::JsonbVersion { found: None })
        );
        assert!(matches!(
            Datum::Binary(b"\x01\"\xFF\"").jsonb(),
            Err(ValueError::Utf8 {
                type_name: "jsonb",
                ..
            })
        ));
    }

    #[test]
    fn timestamptz_reads_binary_microseconds_since_2000() {
        // 2024-07-14 12:00:00 UTC.
        let unix_micros = 1_720_958_400_000_000_i64;
        let pg = unix_micros - PG_EPOCH_UNIX_MICROS;
        assert_eq!(Datum::Binary(&pg.to_be_bytes()).timestamptz(), Ok(Some(pg)));
        assert_eq!(
            Datum::Binary(&(-1_i64).to_be_bytes()).timestamptz(),
            Ok(Some(-1)),
            "1999-12-31 23:59:59.999999 is fine"
        );
        for infinite in [i64::MAX, i64::MIN] {
            assert_eq!(
                Datum::Binary(&infinite.to_be_bytes()).timestamptz(),
                Err(ValueError::InfiniteTimestamp)
            );
        }
        assert_eq!(
            Datum::Text(b"2024-07-14 12:00:00+00").timestamptz(),
            Err(ValueError::TextForm {
                type_name: "timestamptz"
            })
        );
        assert!(matches!(
            Datum::Binary(&[0; 4]).timestamptz(),
            Err(ValueError::Length {
                type_name: "timestamptz",
                ..
            })
        ));
        assert_eq!(Datum::Null.timestamptz(), Ok(None));
    }

    #[test]
    fn pg_lsn_reads_binary_and_text() {
        assert_eq!(
            Datum::Binary(&0x16_B374_D848_u64.to_be_bytes()).pg_lsn(),
            Ok(Some(Lsn(0x16_B374_D848)))
        );
        assert_eq!(
            Datum::Text(b"16/B374D848").pg_lsn(),
            Ok(Some(Lsn(0x16_B374_D848)))
        );
        assert!(matches!(
            Datum::Text(b"16-B374D848").pg_lsn(),
            Err(ValueError::Syntax { .. })
        ));
    }

    #[test]
    fn a_syntax_error_cuts_long_values() {
        let long = "9".repeat(200);
        let Err(ValueError::Syntax { text, .. }) = Datum::Text(long.as_bytes()).int4() else {
            panic!("not a syntax error");
        };
        assert_eq!(text.len(), 64, "long values are cut in errors");
    }
}
