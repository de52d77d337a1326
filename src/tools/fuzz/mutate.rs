//! The mutator: from a valid template, one frame a broker must answer or refuse by closing.
//!
//! Mutations are structural: a length field (string, array, bytes, compact lengths, tagged-field
//! counts and sizes) set to an extreme or off-by-one value, malformed varints, the api version in
//! and out of range, the api key, truncation, trailing garbage, fields inside a Produce RecordBatch
//! (with its CRC fixed so the broker's check passes and the decoder behind it is reached), and the
//! frame's own length prefix. Now and then a frame of random bytes. All from the seed.

use kafka_protocol::messages::ApiKey;

use super::generate::Template;
use super::rng::Rng;
use super::sites::{Kind, Site};

/// A frame ready to send.
#[derive(Debug, Clone)]
pub struct Frame {
    /// The whole frame, length prefix included.
    pub bytes: Vec<u8>,
    /// The correlation id written into the header (when the header is long enough to hold one).
    pub correlation: Option<i32>,
    /// The frame breaks the framing: nothing more is sent on its connection (which is then shut
    /// for writing), and the broker must close it or answer what it could read.
    pub last: bool,
    /// What was done to it, for reports.
    pub mutation: &'static str,
    pub key: ApiKey,
    pub version: i16,
}

/// A request body and its length fields, kept in step as bytes are spliced in and out.
struct Body {
    bytes: Vec<u8>,
    sites: Vec<Site>,
    batch: Option<(usize, usize)>,
}

impl Body {
    /// Replaces `width` bytes at `offset` with `new`; every later position moves along.
    fn splice(&mut self, offset: usize, width: usize, new: &[u8]) {
        let end = (offset + width).min(self.bytes.len());
        self.bytes.splice(offset..end, new.iter().copied());
        let delta = new.len() as isize - (end - offset) as isize;
        let shift = |at: usize| {
            if at > offset {
                (at as isize + delta).max(0) as usize
            } else {
                at
            }
        };
        for site in &mut self.sites {
            site.offset = shift(site.offset);
        }
        if let Some((start, len)) = self.batch {
            if start > offset {
                self.batch = Some((shift(start), len));
            } else if start + len > offset {
                self.batch = Some((start, (len as isize + delta).max(0) as usize));
            }
        }
    }
}

/// Unsigned varint encoding (Kafka's compact lengths and tagged fields).
pub fn uvarint(mut v: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(10);
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
    out
}

/// Zigzag varint encoding (lengths inside records).
pub fn zigzag(v: i64) -> Vec<u8> {
    uvarint(((v << 1) ^ (v >> 63)) as u64)
}

/// Extreme and off-by-one values for a length field holding `value`.
fn extreme(kind: Kind, value: i64, rng: &mut Rng) -> Vec<u8> {
    match kind {
        Kind::String => {
            let v = *rng.pick(&[
                i64::from(i16::MAX),
                -2,
                -1,
                i64::from(i16::MIN),
                0,
                value + 1,
                value - 1,
                0x4000,
            ]);
            (v as i16).to_be_bytes().to_vec()
        }
        Kind::Array | Kind::Bytes => {
            let v = *rng.pick(&[
                i64::from(i32::MAX),
                -2,
                -1,
                i64::from(i32::MIN),
                0,
                value + 1,
                value - 1,
                0x1000_0000,
                0xffff,
            ]);
            (v as i32).to_be_bytes().to_vec()
        }
        _ => {
            if rng.chance(15) {
                // Malformed: continuation bits that never stop, or a 10-byte varint.
                return match rng.below(3) {
                    0 => vec![0xff; 5 + rng.below(6)],
                    1 => vec![0x80, 0x80, 0x80, 0x80, 0x80, 0x80],
                    _ => uvarint(u64::MAX),
                };
            }
            let v = *rng.pick(&[
                0xffff_ffff,
                0x7fff_ffff,
                0x8000_0000,
                0,
                (value + 1) as u64,
                value.saturating_sub(1).max(0) as u64,
                0xffff_fff0,
                1 << 28,
            ]);
            uvarint(v)
        }
    }
}

/// One mutated frame from `template`, or a random one. `advertised` lists (key, min, max).
pub fn mutate(
    template: &Template,
    advertised: &[(i16, i16, i16)],
    correlation: i32,
    rng: &mut Rng,
) -> Frame {
    let mut body = Body {
        bytes: template.body.clone(),
        sites: template.sites.clone(),
        batch: template.batch,
    };
    let mut last = false;
    let roll = rng.below(100);
    let mutation = match roll {
        // Some valid requests keep connections alive, so later frames meet a broker mid-stream.
        0..=7 => "none (valid)",
        8..=39 => length_site(&mut body, rng),
        40..=47 => tagged_field(&mut body, template.flexible, rng),
        48..=55 => version(&mut body, template, advertised, rng),
        56..=59 => api_key(&mut body, advertised, rng),
        60..=65 => {
            let keep = rng.below(body.bytes.len());
            body.bytes.truncate(keep);
            "truncate"
        }
        66..=69 => {
            let n = 1 + rng.below(64);
            let garbage = rng.bytes(n);
            body.bytes.extend_from_slice(&garbage);
            "extend with garbage"
        }
        70..=76 => bit_flips(&mut body, rng),
        77..=86 if body.batch.is_some() => records(&mut body, rng),
        77..=86 => length_site(&mut body, rng),
        87..=89 => {
            body.bytes = rng.bytes_below(1, 301);
            "random bytes"
        }
        90..=93 => {
            // Two structural mutations at once.
            length_site(&mut body, rng);
            length_site(&mut body, rng);
            "two length fields"
        }
        _ => {
            last = true;
            "framing"
        }
    };
    let correlation = (body.bytes.len() >= 8).then(|| {
        body.bytes[4..8].copy_from_slice(&correlation.to_be_bytes());
        correlation
    });
    let bytes = if last {
        framing(&body.bytes, rng)
    } else {
        let mut out = (body.bytes.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(&body.bytes);
        out
    };
    Frame {
        bytes,
        correlation,
        last,
        mutation,
        key: template.key,
        version: template.version,
    }
}

fn length_site(body: &mut Body, rng: &mut Rng) -> &'static str {
    if body.sites.is_empty() {
        return bit_flips(body, rng);
    }
    let site = *rng.pick(&body.sites);
    let new = extreme(site.kind, site.value, rng);
    body.splice(site.offset, site.width, &new);
    match site.kind {
        Kind::String => "string length",
        Kind::Array => "array count",
        Kind::Bytes => "bytes length",
        Kind::CompactString => "compact string length",
        Kind::CompactArray => "compact array count",
        Kind::CompactBytes => "compact bytes length",
        Kind::TaggedFields => "tagged field count",
    }
}

/// A struct's tagged fields: a huge count, or one field whose size is huge, one past the end, or
/// honest (an unknown tag the broker must skip).
fn tagged_field(body: &mut Body, flexible: bool, rng: &mut Rng) -> &'static str {
    let tagged: Vec<Site> = body
        .sites
        .iter()
        .filter(|s| s.kind == Kind::TaggedFields)
        .copied()
        .collect();
    if !flexible || tagged.is_empty() {
        return length_site(body, rng);
    }
    let site = *rng.pick(&tagged);
    let remaining = body.bytes.len().saturating_sub(site.offset + site.width) as u64;
    let tag = uvarint(*rng.pick(&[0u64, 1, 7, 0x7fff_ffff, 0xffff_ffff]));
    let mut new = Vec::new();
    let what = match rng.below(4) {
        0 => {
            new = uvarint(*rng.pick(&[0xffff_ffffu64, 0x7fff_ffff, 2, 1 << 20]));
            "tagged field count"
        }
        1 => {
            new.push(1);
            new.extend(tag);
            new.extend(uvarint(*rng.pick(&[
                0xffff_ffffu64,
                0x7fff_ffff,
                0xffff_fff0,
            ])));
            "tagged field size (huge)"
        }
        2 => {
            new.push(1);
            new.extend(tag);
            new.extend(uvarint(remaining + 1));
            "tagged field size (past the end)"
        }
        _ => {
            let data = rng.bytes_below(0, 16);
            new.push(1);
            new.extend(uvarint(1000 + rng.below(1000) as u64));
            new.extend(uvarint(data.len() as u64));
            new.extend(data);
            "unknown tagged field"
        }
    };
    body.splice(site.offset, site.width, &new);
    what
}

fn version(
    body: &mut Body,
    template: &Template,
    advertised: &[(i16, i16, i16)],
    rng: &mut Rng,
) -> &'static str {
    let (min, max) = advertised
        .iter()
        .find(|(k, _, _)| *k == template.key as i16)
        .map_or((0, 0), |(_, lo, hi)| (*lo, *hi));
    let (v, what) = match rng.below(4) {
        0 => (
            min + rng.below((max - min + 1).max(1) as usize) as i16,
            "api version (in range)",
        ),
        1 => (max.saturating_add(1), "api version (max + 1)"),
        2 => (min.saturating_sub(1), "api version (min - 1)"),
        _ => (
            *rng.pick(&[-1i16, i16::MAX, i16::MIN, 100]),
            "api version (extreme)",
        ),
    };
    body.bytes[2..4].copy_from_slice(&v.to_be_bytes());
    what
}

fn api_key(body: &mut Body, advertised: &[(i16, i16, i16)], rng: &mut Rng) -> &'static str {
    let (k, what) = match rng.below(4) {
        0 => (rng.pick(advertised).0, "api key (another advertised)"),
        1 => (
            *rng.pick(&[8i16, 10, 11, 12, 22, 36, 50]),
            "api key (not advertised)",
        ),
        2 => (0x7250, "api key (replication hello)"),
        _ => (
            *rng.pick(&[-1i16, i16::MAX, i16::MIN, 99]),
            "api key (unknown)",
        ),
    };
    body.bytes[0..2].copy_from_slice(&k.to_be_bytes());
    what
}

fn bit_flips(body: &mut Body, rng: &mut Rng) -> &'static str {
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(body.bytes.len());
        if let Some(b) = body.bytes.get_mut(at) {
            *b ^= 1 << rng.below(8);
        }
    }
    "bit flips"
}

/// Offsets in a v2 RecordBatch (see Kafka's DefaultRecordBatch).
const BATCH_LENGTH: usize = 8;
const BATCH_MAGIC: usize = 16;
const BATCH_CRC: usize = 17;
const BATCH_ATTRIBUTES: usize = 21;
const BATCH_RECORD_COUNT: usize = 57;
const BATCH_RECORDS: usize = 61;

/// A field inside the RecordBatch, with its CRC32C recomputed so the broker's check passes and
/// whatever reads the records is reached; the lengths around the batch follow.
fn records(body: &mut Body, rng: &mut Rng) -> &'static str {
    let Some((start, len)) = body.batch else {
        return length_site(body, rng);
    };
    if len < BATCH_RECORDS || start + len > body.bytes.len() {
        return length_site(body, rng);
    }
    let varints = record_varints(&body.bytes[start + BATCH_RECORDS..start + len]);
    let what = match rng.below(5) {
        0 => {
            let v = *rng.pick(&[i32::MAX, -1, 0, i32::MIN, 1 << 20]);
            body.bytes[start + BATCH_RECORD_COUNT..start + BATCH_RECORDS]
                .copy_from_slice(&v.to_be_bytes());
            "record count"
        }
        1 => {
            let v = *rng.pick(&[i32::MAX, -1, 0, 48, len as i32]);
            body.bytes[start + BATCH_LENGTH..start + BATCH_LENGTH + 4]
                .copy_from_slice(&v.to_be_bytes());
            // Not covered by the CRC, and the lengths around it stay as they are.
            return "batch length";
        }
        2 => {
            // Compression codec bits with an uncompressed payload.
            let codec = 1 + rng.below(4) as u8;
            body.bytes[start + BATCH_ATTRIBUTES + 1] =
                (body.bytes[start + BATCH_ATTRIBUTES + 1] & !7) | codec;
            "compression codec"
        }
        3 if !varints.is_empty() => {
            let (at, width) = *rng.pick(&varints);
            let v = *rng.pick(&[
                i64::from(i32::MAX),
                -2,
                i64::from(i32::MIN),
                1 << 30,
                1 << 40,
            ]);
            let new = zigzag(v);
            body.splice(start + BATCH_RECORDS + at, width, &new);
            "record length varint"
        }
        _ => {
            body.bytes[start + BATCH_MAGIC] = *rng.pick(&[0u8, 1, 3, 0xff]);
            "batch magic"
        }
    };
    let (start, len) = body.batch.unwrap_or((start, len));
    fix_batch(body, start, len);
    what
}

/// Rewrites the batch length, the CRC32C and the request's records length for a changed batch.
fn fix_batch(body: &mut Body, start: usize, len: usize) {
    let end = (start + len).min(body.bytes.len());
    if end < start + BATCH_RECORDS {
        return;
    }
    let batch_len = (end - start - 12) as i32;
    body.bytes[start + BATCH_LENGTH..start + BATCH_LENGTH + 4]
        .copy_from_slice(&batch_len.to_be_bytes());
    let crc = crc32c::crc32c(&body.bytes[start + BATCH_ATTRIBUTES..end]);
    body.bytes[start + BATCH_CRC..start + BATCH_ATTRIBUTES].copy_from_slice(&crc.to_be_bytes());
    let outer = body
        .sites
        .iter()
        .find(|s| s.offset + s.width == start && matches!(s.kind, Kind::Bytes | Kind::CompactBytes))
        .copied();
    if let Some(site) = outer {
        let new = if site.kind == Kind::Bytes {
            (len as i32).to_be_bytes().to_vec()
        } else {
            uvarint(len as u64 + 1)
        };
        body.splice(site.offset, site.width, &new);
    }
}

/// (offset, width) of the length varints inside the records of a batch: each record's length, key
/// and value lengths, header count, and header key and value lengths.
fn record_varints(mut records: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    let mut read = |buf: &mut &[u8], pos: &mut usize, mark: bool| -> Option<i64> {
        let (v, width) = read_zigzag(buf)?;
        if mark {
            out.push((*pos, width));
        }
        *buf = &buf[width..];
        *pos += width;
        Some(v)
    };
    let skip = |buf: &mut &[u8], pos: &mut usize, n: i64| -> Option<()> {
        let n = usize::try_from(n).unwrap_or(0);
        *buf = buf.get(n..)?;
        *pos += n;
        Some(())
    };
    while !records.is_empty() {
        let Some(()) = (|| {
            read(&mut records, &mut pos, true)?; // record length
            skip(&mut records, &mut pos, 1)?; // attributes
            read(&mut records, &mut pos, false)?; // timestamp delta
            read(&mut records, &mut pos, false)?; // offset delta
            let key = read(&mut records, &mut pos, true)?;
            skip(&mut records, &mut pos, key)?;
            let value = read(&mut records, &mut pos, true)?;
            skip(&mut records, &mut pos, value)?;
            let headers = read(&mut records, &mut pos, true)?;
            for _ in 0..headers.clamp(0, 64) {
                let k = read(&mut records, &mut pos, true)?;
                skip(&mut records, &mut pos, k)?;
                let v = read(&mut records, &mut pos, true)?;
                skip(&mut records, &mut pos, v)?;
            }
            Some(())
        })() else {
            break;
        };
    }
    out
}

fn read_zigzag(buf: &[u8]) -> Option<(i64, usize)> {
    let mut v = 0u64;
    for (i, b) in buf.iter().take(10).enumerate() {
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((((v >> 1) as i64) ^ -((v & 1) as i64), i + 1));
        }
    }
    None
}

/// The frame's length prefix made wrong: short, long, negative, huge, zero, or no framing at all.
fn framing(body: &[u8], rng: &mut Rng) -> Vec<u8> {
    let actual = body.len() as i64;
    let declared: i64 = match rng.below(8) {
        0 => actual - 1 - rng.below(body.len().max(1)) as i64,
        1 => actual + 1 + rng.below(64) as i64,
        2 => -1,
        3 => i64::from(i32::MIN),
        4 => i64::from(i32::MAX),
        5 => 0,
        6 => (100 << 20) + 1,
        _ => {
            return rng.bytes_below(1, 513);
        }
    };
    let mut out = (declared as i32).to_be_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip() {
        assert_eq!(uvarint(0), [0]);
        assert_eq!(uvarint(0xffff_ffff), [0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert_eq!(zigzag(-1), [1]);
        assert_eq!(read_zigzag(&zigzag(-300)), Some((-300, 2)));
        assert_eq!(read_zigzag(&[0x80, 0x80]), None);
    }

    #[test]
    fn splice_moves_later_sites() {
        let mut body = Body {
            bytes: vec![0, 1, 2, 3, 4],
            sites: vec![
                Site {
                    offset: 1,
                    width: 1,
                    kind: Kind::CompactArray,
                    value: 1,
                },
                Site {
                    offset: 3,
                    width: 1,
                    kind: Kind::TaggedFields,
                    value: 0,
                },
            ],
            batch: None,
        };
        body.splice(1, 1, &[9, 9, 9]);
        assert_eq!(body.bytes, [0, 9, 9, 9, 2, 3, 4]);
        assert_eq!(body.sites[0].offset, 1);
        assert_eq!(body.sites[1].offset, 5);
    }
}
