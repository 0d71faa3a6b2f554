//! pgoutput frames: the bytes logical replication sends for the outbox
//! publication, decoded into [`Frame`]s. The column values in their rows are
//! read by [`super::value`].
//!
//! `pgwire-replication` parses Begin, Commit and Message itself and hands every
//! other frame over as raw bytes (docs/design/log-relay-plan.md §1.4, §2).
//! Every length and count in a frame comes from the server, so every read is
//! checked: a short or malformed frame is a [`DecodeError`], never a panic.
//! Values are borrowed from the frame rather than copied: the walsender
//! reassembles TOAST before output, so a 50 MB payload is one datum, and the
//! relay already holds the frame.

use std::collections::HashMap;
use std::str::Utf8Error;

use super::lsn::Lsn;

/// The protocol version the relay asks for (`proto_version '1'`, fixed by
/// `pgwire-replication`), and the only one [`decode`] accepts.
pub(crate) const PROTO_VERSION: u32 = 1;

/// One decoded pgoutput frame. Strings and values borrow from the frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Frame<'a> {
    /// A transaction starts; its changes follow, then its [`Frame::Commit`].
    Begin {
        /// Where the transaction's commit record starts.
        final_lsn: Lsn,
        /// Commit time, microseconds since 2000-01-01 UTC.
        commit_time_micros: i64,
        /// Transaction id.
        xid: u32,
    },
    /// The transaction begun last ends.
    Commit {
        /// Unused by PostgreSQL so far.
        flags: u8,
        /// Where the commit record starts (the Begin's `final_lsn`).
        commit_lsn: Lsn,
        /// Where the commit record ends: the position to confirm once the
        /// transaction is done (plan §3.1).
        end_lsn: Lsn,
        /// Commit time, microseconds since 2000-01-01 UTC.
        commit_time_micros: i64,
    },
    /// The transaction was replicated into this database from another one.
    Origin {
        /// The commit's LSN on the origin server.
        commit_lsn: Lsn,
        /// The replication origin's name.
        name: &'a str,
    },
    /// A relation's columns: sent before its first change in a session and
    /// again after every schema change.
    Relation(Relation),
    /// A non-built-in type's name (ours are all built in).
    Type {
        /// The type's OID.
        oid: u32,
        /// Its schema (empty for `pg_catalog`).
        namespace: &'a str,
        /// Its name.
        name: &'a str,
    },
    /// A row was inserted.
    Insert {
        /// The relation, as announced by a [`Frame::Relation`] before.
        oid: u32,
        /// The new row, in the relation's column order.
        tuple: TupleData<'a>,
    },
    /// A row was updated (not published with `publish = 'insert'`).
    Update {
        /// The relation.
        oid: u32,
        /// The old key or row, when the replica identity sends one.
        old: Option<TupleData<'a>>,
        /// The new row; unchanged TOASTed values are [`Datum::Unchanged`].
        new: TupleData<'a>,
    },
    /// A row was deleted (not published with `publish = 'insert'`).
    Delete {
        /// The relation.
        oid: u32,
        /// The old key or row.
        old: TupleData<'a>,
    },
    /// Relations were truncated (not published with `publish = 'insert'`).
    Truncate {
        /// Bit 1: `CASCADE`; bit 2: `RESTART IDENTITY`.
        options: u8,
        /// The truncated relations.
        oids: Vec<u32>,
    },
    /// A logical decoding message (`pg_logical_emit_message`).
    Message {
        /// Written inside a transaction, and sent with it at its commit; a
        /// non-transactional one is sent as soon as it is decoded, even if its
        /// writer rolls back (plan §3.13).
        transactional: bool,
        /// Where the message's WAL record ends.
        lsn: Lsn,
        /// The prefix it was written with.
        prefix: &'a str,
        /// Its content, as written.
        content: &'a [u8],
    },
    /// A frame this decoder does not know, by its tag: the caller decides
    /// whether that is worth stopping for.
    Other(u8),
}

/// A relation as a [`Frame::Relation`] describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Relation {
    /// The relation's OID: what changes refer to it by.
    pub(crate) oid: u32,
    /// Its schema (empty for `pg_catalog`).
    pub(crate) namespace: String,
    /// Its name.
    pub(crate) name: String,
    /// `relreplident`: `d` (default), `n` (nothing), `f` (full), `i` (index).
    pub(crate) replica_identity: u8,
    /// The columns sent, in tuple order: generated columns are never sent,
    /// and with a publication column list only the listed ones.
    pub(crate) columns: Vec<Column>,
}

/// One column of a [`Relation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Column {
    /// The column's name.
    pub(crate) name: String,
    /// Its type's OID (20 int8, 23 int4, 25 text, 2950 uuid, 3802 jsonb, …).
    pub(crate) type_oid: u32,
    /// `atttypmod`: -1 when the type has none.
    pub(crate) type_modifier: i32,
    /// Part of the replica identity key.
    pub(crate) key: bool,
}

/// A row's values, in its relation's column order.
pub(crate) type TupleData<'a> = Vec<Datum<'a>>;

/// One column value of a row, borrowed from its frame; [`super::value`]
/// reads it as its column's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Datum<'a> {
    /// SQL NULL.
    Null,
    /// A TOASTed value the update did not change, so not sent: only ever in
    /// an UPDATE's new row.
    Unchanged,
    /// The value in the type's text output form.
    Text(&'a [u8]),
    /// The value in the type's binary send form (`binary 'true'`).
    Binary(&'a [u8]),
}

/// A frame that is not valid pgoutput.
// Inside eventbus this is folded into `Error` where the stream source meets
// it; here it stays typed so the source can say which frame was bad.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum DecodeError {
    /// The stream was started with a protocol version this decoder does not
    /// read.
    #[error("pgoutput protocol version {version} is not supported (only {PROTO_VERSION})")]
    UnsupportedVersion {
        /// The version asked for.
        version: u32,
    },
    /// The frame ends before a field it must have.
    #[error("pgoutput frame ends inside its {field} (byte {offset})")]
    Truncated {
        /// The field being read.
        field: &'static str,
        /// Where it starts in the frame.
        offset: usize,
    },
    /// A name that is not UTF-8 (the stream's client encoding).
    #[error("pgoutput {field} at byte {offset} is not UTF-8: {source}")]
    InvalidUtf8 {
        /// The field being read.
        field: &'static str,
        /// Where it starts in the frame.
        offset: usize,
        /// Where the UTF-8 check failed.
        #[source]
        source: Utf8Error,
    },
    /// A length or count below zero.
    #[error("pgoutput {field} is negative ({value})")]
    Negative {
        /// The field read.
        field: &'static str,
        /// Its value.
        value: i32,
    },
    /// A tuple marker other than the ones the frame allows there.
    #[error("pgoutput {field} is {:?}, expected {expected}", char::from(*.found))]
    Marker {
        /// The marker read.
        field: &'static str,
        /// What may stand there.
        expected: &'static str,
        /// The byte found.
        found: u8,
    },
    /// A column value that is none of `n`, `u`, `t`, `b`.
    #[error("pgoutput column {column} has unknown value kind {:?}", char::from(*.found))]
    DatumKind {
        /// The column's index in the tuple.
        column: usize,
        /// The byte found.
        found: u8,
    },
    /// An INSERT with an "unchanged TOAST value": never valid, an insert
    /// carries the whole row.
    #[error("pgoutput insert has an unchanged-TOAST marker in column {column}")]
    UnchangedInInsert {
        /// The column's index in the tuple.
        column: usize,
    },
    /// Bytes left after a complete frame: a layout this decoder does not
    /// know (a newer protocol, streamed transactions).
    #[error("pgoutput frame {:?} has {count} bytes after its end", char::from(*.tag))]
    TrailingBytes {
        /// The frame's tag.
        tag: u8,
        /// How many bytes are left.
        count: usize,
    },
    /// A change to a relation no [`Frame::Relation`] has described.
    #[error("pgoutput change to relation {oid}, which no Relation frame described")]
    UnknownRelation {
        /// The relation's OID.
        oid: u32,
    },
    /// A row with another number of columns than its relation has.
    #[error("pgoutput row of relation {oid} has {found} columns, its Relation frame {expected}")]
    ColumnCount {
        /// The relation's OID.
        oid: u32,
        /// Columns in the last Relation frame.
        expected: usize,
        /// Columns in the row.
        found: usize,
    },
}

/// Decodes one pgoutput frame of protocol version `proto_version`.
///
/// Version 1 is the only one read: in version 2 and later, frames of a
/// streamed transaction carry an xid after their tag, which depends on
/// whether the frame sits between Stream Start and Stream Stop, so reading
/// them needs that stream state as well as the version.
///
/// # Errors
///
/// [`DecodeError`] for another version, a frame cut short, a malformed or
/// oversized field, an unchanged-TOAST value in an insert, and bytes left
/// after the frame. An unknown tag is not an error: [`Frame::Other`].
pub(crate) fn decode(data: &[u8], proto_version: u32) -> Result<Frame<'_>, DecodeError> {
    let layout = Layout::of(proto_version)?;
    let mut r = Reader::new(data);
    let tag = r.u8("tag")?;
    let frame = match tag {
        b'B' => Frame::Begin {
            final_lsn: r.lsn("final LSN")?,
            commit_time_micros: r.i64("commit time")?,
            xid: r.u32("xid")?,
        },
        b'C' => Frame::Commit {
            flags: r.u8("commit flags")?,
            commit_lsn: r.lsn("commit LSN")?,
            end_lsn: r.lsn("end LSN")?,
            commit_time_micros: r.i64("commit time")?,
        },
        b'O' => Frame::Origin {
            commit_lsn: r.lsn("origin commit LSN")?,
            name: r.str("origin name")?,
        },
        b'R' => {
            layout.streamed_xid(&mut r)?;
            Frame::Relation(relation(&mut r)?)
        }
        b'Y' => {
            layout.streamed_xid(&mut r)?;
            Frame::Type {
                oid: r.u32("type OID")?,
                namespace: r.str("type namespace")?,
                name: r.str("type name")?,
            }
        }
        b'I' => {
            layout.streamed_xid(&mut r)?;
            let oid = r.u32("relation OID")?;
            r.marker("insert tuple marker", "'N'", |m| m == b'N')?;
            let tuple = tuple(&mut r)?;
            if let Some(column) = tuple.iter().position(|d| *d == Datum::Unchanged) {
                return Err(DecodeError::UnchangedInInsert { column });
            }
            Frame::Insert { oid, tuple }
        }
        b'U' => {
            layout.streamed_xid(&mut r)?;
            let oid = r.u32("relation OID")?;
            let first = r.marker("update tuple marker", "'K', 'O' or 'N'", |m| {
                matches!(m, b'K' | b'O' | b'N')
            })?;
            let old = if first == b'N' {
                None
            } else {
                let old = tuple(&mut r)?;
                r.marker("update new tuple marker", "'N'", |m| m == b'N')?;
                Some(old)
            };
            Frame::Update {
                oid,
                old,
                new: tuple(&mut r)?,
            }
        }
        b'D' => {
            layout.streamed_xid(&mut r)?;
            let oid = r.u32("relation OID")?;
            r.marker("delete tuple marker", "'K' or 'O'", |m| {
                matches!(m, b'K' | b'O')
            })?;
            Frame::Delete {
                oid,
                old: tuple(&mut r)?,
            }
        }
        b'T' => {
            layout.streamed_xid(&mut r)?;
            let count = r.len32("truncate relation count")?;
            let options = r.u8("truncate options")?;
            // Checked before reserving: a count from the wire must not size
            // an allocation beyond what the frame holds.
            if count > r.remaining() / 4 {
                return Err(r.truncated("truncated relation OIDs"));
            }
            let mut oids = Vec::with_capacity(count);
            for _ in 0..count {
                oids.push(r.u32("truncated relation OID")?);
            }
            Frame::Truncate { options, oids }
        }
        b'M' => {
            layout.streamed_xid(&mut r)?;
            let flags = r.u8("message flags")?;
            let lsn = r.lsn("message LSN")?;
            let prefix = r.str("message prefix")?;
            let len = r.len32("message content length")?;
            Frame::Message {
                transactional: flags & 1 != 0,
                lsn,
                prefix,
                content: r.take(len, "message content")?,
            }
        }
        other => return Ok(Frame::Other(other)),
    };
    r.finish(tag)?;
    Ok(frame)
}

/// Where a protocol version's frames differ from version 1's.
#[derive(Debug, Clone, Copy)]
struct Layout {
    /// Changes carry an xid after their tag (version 2+, inside a streamed
    /// transaction only).
    streamed_xid: bool,
}

impl Layout {
    fn of(proto_version: u32) -> Result<Layout, DecodeError> {
        match proto_version {
            1 => Ok(Layout {
                streamed_xid: false,
            }),
            version => Err(DecodeError::UnsupportedVersion { version }),
        }
    }

    /// Reads the xid of a streamed transaction's change, if this layout has
    /// one.
    fn streamed_xid(self, r: &mut Reader<'_>) -> Result<Option<u32>, DecodeError> {
        if self.streamed_xid {
            r.u32("streamed xid").map(Some)
        } else {
            Ok(None)
        }
    }
}

fn relation(r: &mut Reader<'_>) -> Result<Relation, DecodeError> {
    let oid = r.u32("relation OID")?;
    let namespace = r.str("relation namespace")?.to_owned();
    let name = r.str("relation name")?.to_owned();
    let replica_identity = r.u8("replica identity")?;
    let count = r.count("relation column count")?;
    // A column takes at least 10 bytes (flags, empty name, type, modifier).
    let mut columns = Vec::with_capacity(count.min(r.remaining() / 10));
    for _ in 0..count {
        let flags = r.u8("column flags")?;
        columns.push(Column {
            name: r.str("column name")?.to_owned(),
            type_oid: r.u32("column type OID")?,
            type_modifier: r.i32("column type modifier")?,
            key: flags & 1 != 0,
        });
    }
    Ok(Relation {
        oid,
        namespace,
        name,
        replica_identity,
        columns,
    })
}

fn tuple<'a>(r: &mut Reader<'a>) -> Result<TupleData<'a>, DecodeError> {
    let count = r.count("tuple column count")?;
    // A value takes at least its one kind byte.
    let mut tuple = Vec::with_capacity(count.min(r.remaining()));
    for column in 0..count {
        let datum = match r.u8("column value kind")? {
            b'n' => Datum::Null,
            b'u' => Datum::Unchanged,
            b't' => {
                let len = r.len32("text value length")?;
                Datum::Text(r.take(len, "text value")?)
            }
            b'b' => {
                let len = r.len32("binary value length")?;
                Datum::Binary(r.take(len, "binary value")?)
            }
            found => return Err(DecodeError::DatumKind { column, found }),
        };
        tuple.push(datum);
    }
    Ok(tuple)
}

/// A checked cursor over a frame: every read either fits or is an error.
struct Reader<'a> {
    rest: &'a [u8],
    offset: usize,
}

impl<'a> Reader<'a> {
    fn new(data: &'a [u8]) -> Self {
        Reader {
            rest: data,
            offset: 0,
        }
    }

    fn remaining(&self) -> usize {
        self.rest.len()
    }

    fn truncated(&self, field: &'static str) -> DecodeError {
        DecodeError::Truncated {
            field,
            offset: self.offset,
        }
    }

    fn take(&mut self, len: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let (head, tail) = self
            .rest
            .split_at_checked(len)
            .ok_or_else(|| self.truncated(field))?;
        self.rest = tail;
        self.offset += len;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let (head, tail) = self
            .rest
            .split_first_chunk::<N>()
            .ok_or_else(|| self.truncated(field))?;
        self.rest = tail;
        self.offset += N;
        Ok(*head)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        self.array::<1>(field).map(|[b]| b)
    }

    fn i32(&mut self, field: &'static str) -> Result<i32, DecodeError> {
        self.array(field).map(i32::from_be_bytes)
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        self.array(field).map(u32::from_be_bytes)
    }

    fn i64(&mut self, field: &'static str) -> Result<i64, DecodeError> {
        self.array(field).map(i64::from_be_bytes)
    }

    fn lsn(&mut self, field: &'static str) -> Result<Lsn, DecodeError> {
        self.array(field).map(|b| Lsn(u64::from_be_bytes(b)))
    }

    /// An Int16 count (of columns), refused below zero.
    fn count(&mut self, field: &'static str) -> Result<usize, DecodeError> {
        let value = self.array(field).map(i16::from_be_bytes)?;
        usize::try_from(value).map_err(|_| DecodeError::Negative {
            field,
            value: value.into(),
        })
    }

    /// An Int32 length or count, refused below zero.
    fn len32(&mut self, field: &'static str) -> Result<usize, DecodeError> {
        let value = self.i32(field)?;
        usize::try_from(value).map_err(|_| DecodeError::Negative { field, value })
    }

    /// A NUL-terminated UTF-8 string.
    fn str(&mut self, field: &'static str) -> Result<&'a str, DecodeError> {
        let offset = self.offset;
        let len = self
            .rest
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| self.truncated(field))?;
        let bytes = self.take(len, field)?;
        self.take(1, field)?;
        std::str::from_utf8(bytes).map_err(|source| DecodeError::InvalidUtf8 {
            field,
            offset,
            source,
        })
    }

    /// A one-byte marker that `allowed` accepts.
    fn marker(
        &mut self,
        field: &'static str,
        expected: &'static str,
        allowed: impl Fn(u8) -> bool,
    ) -> Result<u8, DecodeError> {
        let found = self.u8(field)?;
        if allowed(found) {
            Ok(found)
        } else {
            Err(DecodeError::Marker {
                field,
                expected,
                found,
            })
        }
    }

    fn finish(self, tag: u8) -> Result<(), DecodeError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes {
                tag,
                count: self.rest.len(),
            })
        }
    }
}

/// The last [`Relation`] frame of every relation seen in this session.
#[derive(Debug, Default)]
pub(crate) struct RelationCache {
    relations: HashMap<u32, Relation>,
}

impl RelationCache {
    /// Keeps `relation`, replacing what an earlier frame said about it: a
    /// Relation frame follows every schema change, and the rows after it
    /// have its columns.
    pub(crate) fn insert(&mut self, relation: Relation) {
        self.relations.insert(relation.oid, relation);
    }

    /// The relation `oid`, if a frame described it.
    pub(crate) fn get(&self, oid: u32) -> Option<&Relation> {
        self.relations.get(&oid)
    }

    /// `tuple` as a row of relation `oid`, its values addressable by column
    /// name.
    ///
    /// # Errors
    ///
    /// [`DecodeError::UnknownRelation`] when no frame described `oid`;
    /// [`DecodeError::ColumnCount`] when the tuple does not have the
    /// relation's columns.
    pub(crate) fn row<'r, 'a>(
        &'r self,
        oid: u32,
        tuple: &'r [Datum<'a>],
    ) -> Result<Row<'r, 'a>, DecodeError> {
        let relation = self.get(oid).ok_or(DecodeError::UnknownRelation { oid })?;
        if relation.columns.len() != tuple.len() {
            return Err(DecodeError::ColumnCount {
                oid,
                expected: relation.columns.len(),
                found: tuple.len(),
            });
        }
        Ok(Row {
            relation,
            values: tuple,
        })
    }
}

/// A tuple matched with its relation's columns.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Row<'r, 'a> {
    /// The relation the row belongs to.
    pub(crate) relation: &'r Relation,
    values: &'r [Datum<'a>],
}

impl<'a> Row<'_, 'a> {
    /// The value of column `name`; `None` when the relation has no such
    /// column (dropped, or left out of the publication's column list).
    pub(crate) fn get(&self, name: &str) -> Option<Datum<'a>> {
        let index = self.relation.columns.iter().position(|c| c.name == name)?;
        self.values.get(index).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::super::value::ValueError;
    use super::*;

    /// Builds frames the way the walsender writes them.
    struct Build(Vec<u8>);

    impl Build {
        fn tag(tag: u8) -> Self {
            Build(vec![tag])
        }
        fn u8(mut self, v: u8) -> Self {
            self.0.push(v);
            self
        }
        fn i16(mut self, v: i16) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn i32(mut self, v: i32) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn u32(mut self, v: u32) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn i64(mut self, v: i64) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn u64(mut self, v: u64) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn str(mut self, s: &str) -> Self {
            self.0.extend_from_slice(s.as_bytes());
            self.0.push(0);
            self
        }
        fn bytes(mut self, b: &[u8]) -> Self {
            self.0.extend_from_slice(b);
            self
        }
        fn text(self, value: &[u8]) -> Self {
            let len = i32::try_from(value.len()).expect("test value fits");
            self.u8(b't').i32(len).bytes(value)
        }
        fn binary(self, value: &[u8]) -> Self {
            let len = i32::try_from(value.len()).expect("test value fits");
            self.u8(b'b').i32(len).bytes(value)
        }
        fn done(self) -> Vec<u8> {
            self.0
        }
    }

    const OUTBOX: u32 = 16_384;

    fn begin() -> Vec<u8> {
        Build::tag(b'B')
            .u64(0x16_B374_D848)
            .i64(774_000_000_123_456)
            .u32(742)
            .done()
    }

    fn commit() -> Vec<u8> {
        Build::tag(b'C')
            .u8(0)
            .u64(0x16_B374_D848)
            .u64(0x16_B374_D878)
            .i64(774_000_000_123_456)
            .done()
    }

    /// The outbox as a column-listed publication sends it, shortened.
    fn outbox_relation(extra: Option<&str>) -> Vec<u8> {
        let columns: &[(u8, &str, u32, i32)] = &[
            (1, "id", 20, -1),
            (0, "event_id", 2950, -1),
            (0, "partition_key", 25, -1),
            (0, "payload", 3802, -1),
            (0, "created_at", 1184, -1),
            (0, "schema_version", 23, -1),
        ];
        let count = columns.len() + usize::from(extra.is_some());
        let mut b = Build::tag(b'R')
            .u32(OUTBOX)
            .str("public")
            .str("eventbus_outbox")
            .u8(b'd')
            .i16(i16::try_from(count).expect("few columns"));
        for &(flags, name, type_oid, modifier) in columns {
            b = b.u8(flags).str(name).u32(type_oid).i32(modifier);
        }
        if let Some(name) = extra {
            b = b.u8(0).str(name).u32(1043).i32(68);
        }
        b.done()
    }

    const EVENT_ID: [u8; 16] = [
        0x01, 0x8f, 0x3a, 0x4b, 0x5c, 0x6d, 0x7e, 0x8f, 0x90, 0xa1, 0xb2, 0xc3, 0xd4, 0xe5, 0xf6,
        0x07,
    ];

    fn insert_binary() -> Vec<u8> {
        let mut jsonb = vec![1];
        jsonb.extend_from_slice(br#"{"order": 42}"#);
        Build::tag(b'I')
            .u32(OUTBOX)
            .u8(b'N')
            .i16(6)
            .binary(&7_i64.to_be_bytes())
            .binary(&EVENT_ID)
            .binary("clé-7".as_bytes())
            .binary(&jsonb)
            .binary(&774_000_000_123_456_i64.to_be_bytes())
            .u8(b'n')
            .done()
    }

    fn insert_text() -> Vec<u8> {
        Build::tag(b'I')
            .u32(OUTBOX)
            .u8(b'N')
            .i16(6)
            .text(b"7")
            .text(b"018f3a4b-5c6d-7e8f-90a1-b2c3d4e5f607")
            .text("clé-7".as_bytes())
            .text(br#"{"order": 42}"#)
            .u8(b'n')
            .text(b"-3")
            .done()
    }

    fn message(transactional: bool) -> Vec<u8> {
        Build::tag(b'M')
            .u8(u8::from(transactional))
            .u64(0x16_B374_D900)
            .str("eventbus:eventbus_outbox")
            .i32(14)
            .bytes(br#"{"events":[]}"#)
            .u8(b'\n')
            .done()
    }

    fn update(old: Option<u8>) -> Vec<u8> {
        let mut b = Build::tag(b'U').u32(OUTBOX);
        if let Some(kind) = old {
            b = b.u8(kind).i16(2).text(b"7").u8(b'n');
        }
        b.u8(b'N').i16(2).text(b"7").u8(b'u').done()
    }

    fn delete() -> Vec<u8> {
        Build::tag(b'D')
            .u32(OUTBOX)
            .u8(b'K')
            .i16(2)
            .text(b"7")
            .u8(b'n')
            .done()
    }

    fn truncate() -> Vec<u8> {
        Build::tag(b'T')
            .i32(2)
            .u8(3)
            .u32(OUTBOX)
            .u32(OUTBOX + 1)
            .done()
    }

    fn type_frame() -> Vec<u8> {
        Build::tag(b'Y')
            .u32(90_001)
            .str("shop")
            .str("money_amount")
            .done()
    }

    fn origin() -> Vec<u8> {
        Build::tag(b'O').u64(0x3_0000_0010).str("eu-west").done()
    }

    /// One valid frame of every kind decoded.
    fn every_frame() -> Vec<Vec<u8>> {
        vec![
            begin(),
            commit(),
            outbox_relation(None),
            outbox_relation(Some("tenant")),
            insert_binary(),
            insert_text(),
            message(true),
            message(false),
            update(None),
            update(Some(b'K')),
            update(Some(b'O')),
            delete(),
            truncate(),
            type_frame(),
            origin(),
        ]
    }

    fn ok(data: &[u8]) -> Frame<'_> {
        decode(data, PROTO_VERSION).expect("valid frame")
    }

    #[test]
    fn begin_and_commit_carry_the_commit_and_end_positions() {
        assert_eq!(
            ok(&begin()),
            Frame::Begin {
                final_lsn: Lsn(0x16_B374_D848),
                commit_time_micros: 774_000_000_123_456,
                xid: 742,
            }
        );
        assert_eq!(
            ok(&commit()),
            Frame::Commit {
                flags: 0,
                commit_lsn: Lsn(0x16_B374_D848),
                end_lsn: Lsn(0x16_B374_D878),
                commit_time_micros: 774_000_000_123_456,
            }
        );
    }

    #[test]
    fn a_relation_lists_its_columns_with_types_and_key_flags() {
        let data = outbox_relation(None);
        let Frame::Relation(relation) = ok(&data) else {
            panic!("not a relation");
        };
        assert_eq!(relation.oid, OUTBOX);
        assert_eq!(relation.namespace, "public");
        assert_eq!(relation.name, "eventbus_outbox");
        assert_eq!(relation.replica_identity, b'd');
        assert_eq!(relation.columns.len(), 6);
        assert_eq!(
            relation.columns[0],
            Column {
                name: "id".into(),
                type_oid: 20,
                type_modifier: -1,
                key: true,
            }
        );
        assert!(relation.columns[1..].iter().all(|c| !c.key));
        let types: Vec<u32> = relation.columns.iter().map(|c| c.type_oid).collect();
        assert_eq!(types, [20, 2950, 25, 3802, 1184, 23]);
    }

    #[test]
    fn a_second_relation_frame_replaces_the_first_and_rows_follow_it() {
        let mut cache = RelationCache::default();
        let first = outbox_relation(None);
        let Frame::Relation(relation) = ok(&first) else {
            panic!("not a relation");
        };
        cache.insert(relation);
        let row_frame = insert_text();
        let Frame::Insert { oid, tuple } = ok(&row_frame) else {
            panic!("not an insert");
        };
        let row = cache.row(oid, &tuple).expect("six columns");
        assert_eq!(row.get("schema_version"), Some(Datum::Text(b"-3")));
        assert_eq!(row.get("tenant"), None);

        // ALTER TABLE … ADD COLUMN tenant: a new Relation frame, then rows
        // with seven values.
        let second = outbox_relation(Some("tenant"));
        let Frame::Relation(relation) = ok(&second) else {
            panic!("not a relation");
        };
        cache.insert(relation);
        assert_eq!(cache.get(OUTBOX).map(|r| r.columns.len()), Some(7));
        assert_eq!(
            cache.row(oid, &tuple).map(|_| ()),
            Err(DecodeError::ColumnCount {
                oid: OUTBOX,
                expected: 7,
                found: 6,
            }),
            "a row of the old shape no longer fits"
        );
        let mut wider = tuple.clone();
        wider.push(Datum::Text(b"acme"));
        let row = cache.row(oid, &wider).expect("seven columns");
        assert_eq!(row.get("tenant"), Some(Datum::Text(b"acme")));
        assert_eq!(row.relation.name, "eventbus_outbox");

        assert_eq!(
            cache.row(OUTBOX + 1, &wider).map(|_| ()),
            Err(DecodeError::UnknownRelation { oid: OUTBOX + 1 })
        );
    }

    #[test]
    fn an_insert_reads_every_column_type_in_binary() {
        let data = insert_binary();
        let Frame::Insert { oid, tuple } = ok(&data) else {
            panic!("not an insert");
        };
        assert_eq!(oid, OUTBOX);
        assert_eq!(
            tuple,
            [
                Datum::Binary(&7_i64.to_be_bytes()),
                Datum::Binary(&EVENT_ID),
                Datum::Binary("clé-7".as_bytes()),
                Datum::Binary(b"\x01{\"order\": 42}"),
                Datum::Binary(&774_000_000_123_456_i64.to_be_bytes()),
                Datum::Null,
            ]
        );
    }

    #[test]
    fn an_insert_reads_the_text_forms() {
        let data = insert_text();
        let Frame::Insert { tuple, .. } = ok(&data) else {
            panic!("not an insert");
        };
        assert_eq!(
            tuple,
            [
                Datum::Text(b"7"),
                Datum::Text(b"018f3a4b-5c6d-7e8f-90a1-b2c3d4e5f607"),
                Datum::Text("clé-7".as_bytes()),
                Datum::Text(br#"{"order": 42}"#),
                Datum::Null,
                Datum::Text(b"-3"),
            ]
        );
    }

    #[test]
    fn an_unchanged_toast_value_in_an_insert_is_an_error() {
        let data = Build::tag(b'I')
            .u32(OUTBOX)
            .u8(b'N')
            .i16(3)
            .text(b"7")
            .u8(b'u')
            .u8(b'n')
            .done();
        assert_eq!(
            decode(&data, PROTO_VERSION),
            Err(DecodeError::UnchangedInInsert { column: 1 })
        );
        // In an update it is what PostgreSQL sends for an untouched TOAST value.
        let data = update(None);
        let Frame::Update { new, .. } = ok(&data) else {
            panic!("not an update");
        };
        assert_eq!(new[1], Datum::Unchanged);
        assert_eq!(
            new[1].jsonb(),
            Err(ValueError::Unchanged { type_name: "jsonb" })
        );
    }

    #[test]
    fn updates_deletes_truncates_types_and_origins_decode_enough_to_skip() {
        assert_eq!(
            ok(&update(None)),
            Frame::Update {
                oid: OUTBOX,
                old: None,
                new: vec![Datum::Text(b"7"), Datum::Unchanged],
            }
        );
        for kind in [b'K', b'O'] {
            let data = update(Some(kind));
            let Frame::Update { old, new, .. } = ok(&data) else {
                panic!("not an update");
            };
            assert_eq!(old, Some(vec![Datum::Text(b"7"), Datum::Null]));
            assert_eq!(new.len(), 2);
        }
        assert_eq!(
            ok(&delete()),
            Frame::Delete {
                oid: OUTBOX,
                old: vec![Datum::Text(b"7"), Datum::Null],
            }
        );
        assert_eq!(
            ok(&truncate()),
            Frame::Truncate {
                options: 3,
                oids: vec![OUTBOX, OUTBOX + 1],
            }
        );
        assert_eq!(
            ok(&type_frame()),
            Frame::Type {
                oid: 90_001,
                namespace: "shop",
                name: "money_amount",
            }
        );
        assert_eq!(
            ok(&origin()),
            Frame::Origin {
                commit_lsn: Lsn(0x3_0000_0010),
                name: "eu-west",
            }
        );
    }

    #[test]
    fn messages_say_whether_they_are_transactional() {
        for transactional in [true, false] {
            let data = message(transactional);
            assert_eq!(
                ok(&data),
                Frame::Message {
                    transactional,
                    lsn: Lsn(0x16_B374_D900),
                    prefix: "eventbus:eventbus_outbox",
                    content: b"{\"events\":[]}\n",
                }
            );
        }
        // An empty content is a message too.
        let data = Build::tag(b'M').u8(0).u64(1).str("").i32(0).done();
        assert!(matches!(
            ok(&data),
            Frame::Message {
                transactional: false,
                prefix: "",
                content: [],
                ..
            }
        ));
    }

    #[test]
    fn unknown_tags_are_other_frames() {
        // Stream and two-phase frames (versions 2 and 3), and garbage.
        for tag in [
            b'S', b'E', b'c', b'A', b'b', b'P', b'K', b'r', b'p', 0, 0xFF,
        ] {
            assert_eq!(ok(&[tag, 1, 2, 3]), Frame::Other(tag));
            assert_eq!(ok(&[tag]), Frame::Other(tag));
        }
    }

    #[test]
    fn every_truncation_of_every_frame_is_an_error() {
        for frame in every_frame() {
            assert!(decode(&frame, PROTO_VERSION).is_ok());
            for cut in 0..frame.len() {
                let result = decode(&frame[..cut], PROTO_VERSION);
                assert!(
                    matches!(result, Err(DecodeError::Truncated { .. })),
                    "frame {:?} cut at {cut}: {result:?}",
                    char::from(frame[0])
                );
            }
        }
        assert_eq!(
            decode(&[], PROTO_VERSION),
            Err(DecodeError::Truncated {
                field: "tag",
                offset: 0
            })
        );
    }

    #[test]
    fn bytes_after_a_frame_are_an_error() {
        for mut frame in every_frame() {
            let tag = frame[0];
            frame.push(0);
            assert_eq!(
                decode(&frame, PROTO_VERSION),
                Err(DecodeError::TrailingBytes { tag, count: 1 })
            );
        }
    }

    #[test]
    fn hostile_lengths_and_counts_are_errors_not_allocations() {
        let negative = Build::tag(b'I')
            .u32(OUTBOX)
            .u8(b'N')
            .i16(1)
            .u8(b't')
            .i32(-1)
            .done();
        assert_eq!(
            decode(&negative, PROTO_VERSION),
            Err(DecodeError::Negative {
                field: "text value length",
                value: -1
            })
        );
        let huge = Build::tag(b'I')
            .u32(OUTBOX)
            .u8(b'N')
            .i16(1)
            .u8(b'b')
            .i32(i32::MAX)
            .bytes(b"abc")
            .done();
        assert!(matches!(
            decode(&huge, PROTO_VERSION),
            Err(DecodeError::Truncated {
                field: "binary value",
                offset: 13
            })
        ));
        let columns = Build::tag(b'I').u32(OUTBOX).u8(b'N').i16(i16::MAX).done();
        assert!(matches!(
            decode(&columns, PROTO_VERSION),
            Err(DecodeError::Truncated { .. })
        ));
        let negative_columns = Build::tag(b'R')
            .u32(1)
            .str("")
            .str("t")
            .u8(b'd')
            .i16(-2)
            .done();
        assert_eq!(
            decode(&negative_columns, PROTO_VERSION),
            Err(DecodeError::Negative {
                field: "relation column count",
                value: -2
            })
        );
        let relations = Build::tag(b'T').i32(i32::MAX).u8(0).u32(1).done();
        assert!(matches!(
            decode(&relations, PROTO_VERSION),
            Err(DecodeError::Truncated { .. })
        ));
        let negative_relations = Build::tag(b'T').i32(-1).u8(0).done();
        assert!(matches!(
            decode(&negative_relations, PROTO_VERSION),
            Err(DecodeError::Negative { .. })
        ));
    }

    #[test]
    fn bad_markers_kinds_and_names_are_errors() {
        let marker = Build::tag(b'I').u32(OUTBOX).u8(b'K').i16(0).done();
        assert!(matches!(
            decode(&marker, PROTO_VERSION),
            Err(DecodeError::Marker { found: b'K', .. })
        ));
        let update_marker = Build::tag(b'U')
            .u32(OUTBOX)
            .u8(b'O')
            .i16(0)
            .u8(b'O')
            .i16(0)
            .done();
        assert!(matches!(
            decode(&update_marker, PROTO_VERSION),
            Err(DecodeError::Marker { found: b'O', .. })
        ));
        let delete_marker = Build::tag(b'D').u32(OUTBOX).u8(b'N').i16(0).done();
        assert!(matches!(
            decode(&delete_marker, PROTO_VERSION),
            Err(DecodeError::Marker { found: b'N', .. })
        ));
        let kind = Build::tag(b'I')
            .u32(OUTBOX)
            .u8(b'N')
            .i16(2)
            .u8(b'n')
            .u8(b'x')
            .done();
        assert_eq!(
            decode(&kind, PROTO_VERSION),
            Err(DecodeError::DatumKind {
                column: 1,
                found: b'x'
            })
        );
        let name = Build::tag(b'R')
            .u32(1)
            .str("")
            .bytes(b"bad\xFF")
            .u8(0)
            .u8(b'd')
            .i16(0)
            .done();
        let err = decode(&name, PROTO_VERSION).expect_err("not UTF-8");
        assert!(
            matches!(
                err,
                DecodeError::InvalidUtf8 {
                    field: "relation name",
                    offset: 6,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(std::error::Error::source(&err).is_some());
        let prefix = Build::tag(b'M')
            .u8(1)
            .u64(1)
            .bytes(b"\xC3(")
            .u8(0)
            .i32(0)
            .done();
        assert!(matches!(
            decode(&prefix, PROTO_VERSION),
            Err(DecodeError::InvalidUtf8 { .. })
        ));
    }

    #[test]
    fn only_protocol_version_1_is_read() {
        for version in [0, 2, 3, 4, u32::MAX] {
            assert_eq!(
                decode(&begin(), version),
                Err(DecodeError::UnsupportedVersion { version })
            );
        }
    }

    #[test]
    fn a_large_datum_is_borrowed_from_the_frame_not_copied() {
        let payload = vec![b'x'; 5 * 1024 * 1024];
        let data = Build::tag(b'I')
            .u32(OUTBOX)
            .u8(b'N')
            .i16(2)
            .text(b"7")
            .text(&payload)
            .done();
        let Frame::Insert { tuple, .. } = ok(&data) else {
            panic!("not an insert");
        };
        let Datum::Text(value) = tuple[1] else {
            panic!("not text");
        };
        assert_eq!(value.len(), payload.len());
        assert!(std::ptr::eq(value, &data[data.len() - payload.len()..]));
        assert_eq!(
            tuple[1].text().map(|t| t.map(str::len)),
            Ok(Some(payload.len()))
        );

        let message = Build::tag(b'M')
            .u8(1)
            .u64(1)
            .str("eventbus:eventbus_outbox")
            .i32(i32::try_from(payload.len()).expect("5 MB fits"))
            .bytes(&payload)
            .done();
        assert!(matches!(
            ok(&message),
            Frame::Message { content, .. } if content.len() == payload.len()
        ));
    }

    #[test]
    fn mutated_and_random_frames_never_panic() {
        let frames = every_frame();
        let mut rng = crate::test_rng::XorShift(0x9E37_79B9_7F4A_7C15);
        for _ in 0..20_000 {
            let mut data = frames[rng.index(frames.len())].clone();
            for _ in 0..=rng.index(4) {
                let at = rng.index(data.len());
                match rng.index(3) {
                    0 => data[at] = rng.next().to_le_bytes()[0],
                    1 => {
                        data.remove(at);
                        if data.is_empty() {
                            data.push(b'I');
                        }
                    }
                    _ => data.insert(at, 0xFF),
                }
            }
            if let Ok(Frame::Insert { tuple, .. }) = decode(&data, PROTO_VERSION) {
                for datum in tuple {
                    let _ = (datum.int8(), datum.int4(), datum.text(), datum.uuid());
                    let _ = (
                        datum.jsonb(),
                        datum.timestamptz(),
                        datum.pg_lsn(),
                        datum.xid8(),
                    );
                }
            }
        }
        for _ in 0..20_000 {
            let len = rng.index(40);
            let data: Vec<u8> = (0..len).map(|_| rng.next().to_le_bytes()[0]).collect();
            let _ = decode(&data, PROTO_VERSION);
        }
    }

    #[test]
    fn errors_name_what_was_wrong() {
        let err = decode(&[b'B', 0, 0], PROTO_VERSION).expect_err("short");
        assert_eq!(
            err.to_string(),
            "pgoutput frame ends inside its final LSN (byte 1)"
        );
        let err = decode(&[b'I', 0, 0, 0, 1, b'X'], PROTO_VERSION).expect_err("marker");
        assert_eq!(
            err.to_string(),
            "pgoutput insert tuple marker is 'X', expected 'N'"
        );
    }
}
