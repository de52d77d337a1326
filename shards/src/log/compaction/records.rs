//! The records inside a batch (magic 2): each is
//! `length varint | attributes i8 | timestampDelta varlong | offsetDelta varint | keyLength varint |
//! key | valueLength varint | value | headerCount varint | headers`, varints zigzag-encoded, a length
//! of -1 meaning null. Parsed without copying, every length checked against the bytes that remain.

use super::codec::{self, Codec, CodecError};
use crate::log::batch::{BatchHeader, HEADER_LEN};

/// One record, borrowed from the (decompressed) records section.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordView<'a> {
    pub offset_delta: i32,
    pub timestamp_delta: i64,
    /// None: a null key.
    pub key: Option<&'a [u8]>,
    /// None: a null value (a tombstone).
    pub value: Option<&'a [u8]>,
    /// The whole record, its length prefix included: what a rewritten batch copies.
    pub raw: &'a [u8],
}

impl RecordView<'_> {
    pub fn is_tombstone(&self) -> bool {
        self.value.is_none()
    }
}

/// Why a records section cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordFault {
    #[error("record {index}: {what}")]
    Malformed { index: usize, what: String },
    #[error("{count} records declared, {found} found")]
    Count { count: i32, found: usize },
    #[error("undefined compression codec in attributes {0:#x}")]
    UnknownCodec(i16),
    #[error(transparent)]
    Codec(#[from] CodecError),
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn varlong(&mut self) -> Result<i64, String> {
        let mut raw: u64 = 0;
        for i in 0..10 {
            let Some(&byte) = self.b.get(self.pos) else {
                return Err("truncated varint".into());
            };
            self.pos += 1;
            raw |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok((raw >> 1) as i64 ^ -((raw & 1) as i64));
            }
        }
        Err("varint longer than 10 bytes".into())
    }

    fn varint(&mut self) -> Result<i32, String> {
        let v = self.varlong()?;
        i32::try_from(v).map_err(|_| format!("varint {v} out of range"))
    }

    fn bytes(&mut self, len: usize) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(len)
            .filter(|&e| e <= self.b.len())
            .ok_or_else(|| format!("{len} bytes declared, {} left", self.b.len() - self.pos))?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    /// A nullable byte string: length -1 is null.
    fn nullable(&mut self) -> Result<Option<&'a [u8]>, String> {
        match self.varint()? {
            -1 => Ok(None),
            n if n < 0 => Err(format!("negative length {n}")),
            n => self.bytes(n as usize).map(Some),
        }
    }
}

fn record<'a>(b: &'a [u8]) -> Result<(RecordView<'a>, usize), String> {
    let mut r = Reader { b, pos: 0 };
    let len = r.varint()?;
    if len < 0 {
        return Err(format!("negative record length {len}"));
    }
    let body = r.bytes(len as usize)?;
    let end = r.pos;
    let mut f = Reader { b: body, pos: 0 };
    let _attributes = f.bytes(1)?;
    let timestamp_delta = f.varlong()?;
    let offset_delta = f.varint()?;
    let key = f.nullable()?;
    let value = f.nullable()?;
    let headers = f.varint()?;
    if headers < 0 {
        return Err(format!("negative header count {headers}"));
    }
    for _ in 0..headers {
        let name = f.varint()?;
        if name < 0 {
            return Err(format!("negative header key length {name}"));
        }
        f.bytes(name as usize)?;
        f.nullable()?;
    }
    if f.pos != body.len() {
        return Err(format!(
            "{} bytes left over in a record of {}",
            body.len() - f.pos,
            body.len()
        ));
    }
    Ok((
        RecordView {
            offset_delta,
            timestamp_delta,
            key,
            value,
            raw: &b[..end],
        },
        end,
    ))
}

/// The `count` records of an uncompressed records section, which they must fill exactly.
pub fn parse(section: &[u8], count: i32) -> Result<Vec<RecordView<'_>>, RecordFault> {
    // Every record takes at least 7 bytes: never reserve for more than the bytes can hold.
    let mut out = Vec::with_capacity((count.max(0) as usize).min(section.len() / 7));
    let mut pos = 0;
    while pos < section.len() {
        let (rec, used) = record(&section[pos..]).map_err(|what| RecordFault::Malformed {
            index: out.len(),
            what,
        })?;
        out.push(rec);
        pos += used;
    }
    if out.len() != count.max(0) as usize {
        return Err(RecordFault::Count {
            count,
            found: out.len(),
        });
    }
    Ok(out)
}

/// The records section of a whole batch frame, decompressed when the batch is compressed (at most
/// `limit` bytes once decompressed).
pub fn section<'a>(
    frame: &'a [u8],
    h: &BatchHeader,
    limit: usize,
) -> Result<std::borrow::Cow<'a, [u8]>, RecordFault> {
    let raw = &frame[HEADER_LEN.min(frame.len())..h.total_len().min(frame.len())];
    match Codec::from_attributes(h.attributes) {
        None => Err(RecordFault::UnknownCodec(h.attributes)),
        Some(Codec::None) => Ok(std::borrow::Cow::Borrowed(raw)),
        Some(c) => Ok(std::borrow::Cow::Owned(codec::decompress(c, raw, limit)?)),
    }
}

/// Checks that every record of a batch has a key (a compacted topic refuses keyless records, as
/// Kafka does). `limit` bounds the decompressed size.
pub fn check_keys(frame: &[u8], h: &BatchHeader, limit: usize) -> Result<(), String> {
    let section = section(frame, h, limit).map_err(|e| e.to_string())?;
    let records = parse(&section, h.record_count).map_err(|e| e.to_string())?;
    if records.iter().any(|r| r.key.is_none()) {
        return Err("Compacted topic cannot accept message without key".into());
    }
    Ok(())
}

/// Zigzag varint encoding (for tests and for writing records).
pub fn put_varlong(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    loop {
        let byte = (z & 0x7f) as u8;
        z >>= 7;
        if z == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// One encoded record (no headers), as a producer would write it.
pub fn encode_record(
    offset_delta: i32,
    timestamp_delta: i64,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
) -> Vec<u8> {
    let mut body = vec![0u8];
    put_varlong(&mut body, timestamp_delta);
    put_varlong(&mut body, offset_delta as i64);
    for field in [key, value] {
        match field {
            None => put_varlong(&mut body, -1),
            Some(b) => {
                put_varlong(&mut body, b.len() as i64);
                body.extend_from_slice(b);
            }
        }
    }
    put_varlong(&mut body, 0);
    let mut out = Vec::with_capacity(body.len() + 5);
    put_varlong(&mut out, body.len() as i64);
    out.extend_from_slice(&body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_it_encodes() {
        let mut section = encode_record(0, 0, Some(b"k1"), Some(b"v1"));
        section.extend(encode_record(1, 5, Some(b"k2"), None));
        section.extend(encode_record(2, 9, None, Some(b"")));
        let recs = parse(&section, 3).unwrap();
        assert_eq!(recs[0].key, Some(&b"k1"[..]));
        assert_eq!(recs[0].value, Some(&b"v1"[..]));
        assert!(recs[1].is_tombstone());
        assert_eq!(recs[1].timestamp_delta, 5);
        assert_eq!(recs[2].key, None);
        assert_eq!(recs[2].value, Some(&b""[..]));
        assert_eq!(recs[2].offset_delta, 2);
        let total: usize = recs.iter().map(|r| r.raw.len()).sum();
        assert_eq!(total, section.len());
    }

    #[test]
    fn refuses_lengths_past_the_end_and_wrong_counts() {
        let mut section = encode_record(0, 0, Some(b"k"), Some(b"v"));
        assert!(matches!(parse(&section, 2), Err(RecordFault::Count { .. })));
        section.truncate(section.len() - 2);
        assert!(matches!(
            parse(&section, 1),
            Err(RecordFault::Malformed { .. })
        ));
        // A huge declared count does not reserve memory for it.
        assert!(parse(&[], i32::MAX).is_err());
        // A key length far past the end.
        let mut bad = vec![];
        put_varlong(&mut bad, 6);
        bad.extend([0u8, 0, 0]);
        put_varlong(&mut bad, 1 << 30);
        assert!(parse(&bad, 1).is_err());
    }

    #[test]
    fn negative_zigzag_round_trips() {
        for v in [
            0i64,
            1,
            -1,
            63,
            -64,
            64,
            i32::MAX as i64,
            i64::MIN,
            i64::MAX,
        ] {
            let mut b = vec![];
            put_varlong(&mut b, v);
            let mut r = Reader { b: &b, pos: 0 };
            assert_eq!(r.varlong().unwrap(), v);
        }
    }
}
