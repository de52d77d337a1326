//! Where the length fields of an encoded request are.
//!
//! kafka-protocol has no schema at run time, so the request is encoded through [`Tracer`], a buffer
//! that records each primitive write. A string is an `i16` (or unsigned varint) followed by exactly
//! that many bytes, bytes and records an `i32` (or varint) followed by them: those are exact. An
//! `i32` or varint not followed by its bytes is an array count or a plain integer; the two are told
//! apart by decoding the request again with the value raised by one: a plain integer still decodes
//! to the end, a count does not. A varint 0 that breaks the decode when raised is a tagged-field
//! count. The result is a list of [`Site`]s the mutator can aim at.

use bytes::{BufMut, Bytes};
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind};
use kafka_protocol::protocol::buf::ByteBufMut;
use kafka_protocol::protocol::Decodable;

/// What a length field counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// `i16` length of a (nullable) string.
    String,
    /// `i32` count of an array.
    Array,
    /// `i32` length of bytes (Produce records before v9).
    Bytes,
    /// Unsigned varint length + 1 of a compact string.
    CompactString,
    /// Unsigned varint count + 1 of a compact array.
    CompactArray,
    /// Unsigned varint length + 1 of compact bytes (Produce records from v9).
    CompactBytes,
    /// Unsigned varint count of a struct's tagged fields.
    TaggedFields,
}

impl Kind {
    /// Whether the field is an unsigned varint (flexible versions).
    pub fn is_varint(self) -> bool {
        matches!(
            self,
            Kind::CompactString | Kind::CompactArray | Kind::CompactBytes | Kind::TaggedFields
        )
    }
}

/// One length field in an encoded request: `width` bytes at `offset` (from the start of the
/// request header), holding `value`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Site {
    pub offset: usize,
    pub width: usize,
    pub kind: Kind,
    pub value: i64,
}

#[derive(Debug, Clone, Copy)]
enum Op {
    U8(u8),
    I16(i16),
    I32(i32),
    Slice(usize),
    Fixed,
}

/// A `BufMut` that records the offset and kind of every write kafka-protocol makes.
#[derive(Default)]
pub struct Tracer {
    pub bytes: Vec<u8>,
    ops: Vec<(usize, Op)>,
}

// SAFETY: every method forwards to the `Vec<u8>` implementation, which upholds the contract.
unsafe impl BufMut for Tracer {
    fn remaining_mut(&self) -> usize {
        self.bytes.remaining_mut()
    }
    unsafe fn advance_mut(&mut self, cnt: usize) {
        // SAFETY: the caller's promise about `cnt` is the one `Vec::advance_mut` needs.
        unsafe { self.bytes.advance_mut(cnt) }
    }
    fn chunk_mut(&mut self) -> &mut bytes::buf::UninitSlice {
        self.bytes.chunk_mut()
    }
    fn put_slice(&mut self, src: &[u8]) {
        self.ops.push((self.bytes.len(), Op::Slice(src.len())));
        self.bytes.extend_from_slice(src);
    }
    fn put_u8(&mut self, n: u8) {
        self.ops.push((self.bytes.len(), Op::U8(n)));
        self.bytes.push(n);
    }
    fn put_i8(&mut self, n: i8) {
        self.ops.push((self.bytes.len(), Op::Fixed));
        self.bytes.push(n as u8);
    }
    fn put_i16(&mut self, n: i16) {
        self.ops.push((self.bytes.len(), Op::I16(n)));
        self.bytes.extend_from_slice(&n.to_be_bytes());
    }
    fn put_u16(&mut self, n: u16) {
        self.ops.push((self.bytes.len(), Op::Fixed));
        self.bytes.extend_from_slice(&n.to_be_bytes());
    }
    fn put_i32(&mut self, n: i32) {
        self.ops.push((self.bytes.len(), Op::I32(n)));
        self.bytes.extend_from_slice(&n.to_be_bytes());
    }
    fn put_u32(&mut self, n: u32) {
        self.ops.push((self.bytes.len(), Op::Fixed));
        self.bytes.extend_from_slice(&n.to_be_bytes());
    }
    fn put_i64(&mut self, n: i64) {
        self.ops.push((self.bytes.len(), Op::Fixed));
        self.bytes.extend_from_slice(&n.to_be_bytes());
    }
    fn put_u64(&mut self, n: u64) {
        self.ops.push((self.bytes.len(), Op::Fixed));
        self.bytes.extend_from_slice(&n.to_be_bytes());
    }
    fn put_f64(&mut self, n: f64) {
        self.ops.push((self.bytes.len(), Op::Fixed));
        self.bytes.extend_from_slice(&n.to_be_bytes());
    }
}

impl ByteBufMut for Tracer {
    fn offset(&self) -> usize {
        self.bytes.len()
    }
    fn seek(&mut self, offset: usize) {
        self.bytes.resize(offset, 0);
    }
    fn range(&mut self, r: std::ops::Range<usize>) -> &mut [u8] {
        &mut self.bytes[r]
    }
}

/// Decodes a request (header and body) and says whether it used every byte.
pub fn decodes_exactly(key: ApiKey, version: i16, body: &[u8]) -> bool {
    let mut buf = Bytes::copy_from_slice(body);
    let header = RequestHeader::decode(&mut buf, key.request_header_version(version));
    header.is_ok() && RequestKind::decode(key, &mut buf, version).is_ok() && buf.is_empty()
}

/// The length fields of `traced`, an encoding of `key` at `version` that decodes exactly.
pub fn find(traced: &Tracer, key: ApiKey, version: i16, flexible: bool) -> Vec<Site> {
    let ops = group_varints(&traced.ops, flexible);
    let mut sites = Vec::new();
    for (i, (offset, op)) in ops.iter().enumerate() {
        let next_slice = match ops.get(i + 1) {
            Some((_, Traced::Plain(Op::Slice(n)))) => Some(*n),
            _ => None,
        };
        let candidate = match *op {
            Traced::Plain(Op::I16(n)) if n == -1 || Some(n as usize) == next_slice => {
                Some((2, Kind::String, i64::from(n), true))
            }
            Traced::Plain(Op::I32(n)) if n > 0 && Some(n as usize) == next_slice => {
                Some((4, Kind::Bytes, i64::from(n), true))
            }
            Traced::Plain(Op::I32(n)) => Some((4, Kind::Array, i64::from(n), false)),
            Traced::Varint(v, width) if v > 0 && Some(v as usize - 1) == next_slice => {
                // Compact strings and bytes look alike; only records are bytes in what we send.
                let kind = if v > 61 {
                    Kind::CompactBytes
                } else {
                    Kind::CompactString
                };
                Some((width, kind, i64::from(v), true))
            }
            Traced::Varint(0, 1) => Some((1, Kind::TaggedFields, 0, false)),
            Traced::Varint(v, width) => Some((width, Kind::CompactArray, i64::from(v), false)),
            _ => None,
        };
        let Some((width, kind, value, exact)) = candidate else {
            continue;
        };
        let site = Site {
            offset: *offset,
            width,
            kind,
            value,
        };
        if exact || is_length(&traced.bytes, key, version, &site) {
            sites.push(site);
        }
    }
    sites
}

#[derive(Debug, Clone, Copy)]
enum Traced {
    Plain(Op),
    /// An unsigned varint and its width in bytes.
    Varint(u32, usize),
}

/// Joins the single-byte writes of flexible versions into varints.
fn group_varints(ops: &[(usize, Op)], flexible: bool) -> Vec<(usize, Traced)> {
    let mut out = Vec::with_capacity(ops.len());
    let mut i = 0;
    while i < ops.len() {
        let (offset, op) = ops[i];
        if let (true, Op::U8(_)) = (flexible, op) {
            let (mut value, mut width) = (0u32, 0usize);
            while let Some((_, Op::U8(b))) = ops.get(i) {
                value |= u32::from(b & 0x7f) << (7 * width as u32).min(31);
                width += 1;
                i += 1;
                if b & 0x80 == 0 || width == 5 {
                    break;
                }
            }
            out.push((offset, Traced::Varint(value, width)));
            continue;
        }
        out.push((offset, Traced::Plain(op)));
        i += 1;
    }
    out
}

/// Whether raising the value at `site` by one breaks an exact decode (so it counts something).
fn is_length(bytes: &[u8], key: ApiKey, version: i16, site: &Site) -> bool {
    let mut probe = bytes.to_vec();
    if site.kind.is_varint() {
        // Only one-byte varints below 127 stay one byte when raised.
        if site.width != 1 || site.value >= 127 {
            return false;
        }
        probe[site.offset] += 1;
    } else {
        let raised = (site.value as i32).wrapping_add(1).to_be_bytes();
        probe[site.offset..site.offset + 4].copy_from_slice(&raised);
    }
    !decodes_exactly(key, version, &probe)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
    use kafka_protocol::messages::{MetadataRequest, TopicName};
    use kafka_protocol::protocol::{Encodable, StrBytes};

    fn trace(version: i16) -> Tracer {
        let mut t = Tracer::default();
        let header = RequestHeader::default()
            .with_request_api_key(3)
            .with_request_api_version(version)
            .with_client_id(Some(StrBytes::from_static_str("c")));
        header
            .encode(&mut t, ApiKey::Metadata.request_header_version(version))
            .unwrap();
        MetadataRequest::default()
            .with_topics(Some(vec![MetadataRequestTopic::default()
                .with_name(Some(TopicName(StrBytes::from_static_str("topic"))))]))
            .encode(&mut t, version)
            .unwrap();
        t
    }

    #[test]
    fn finds_the_array_and_strings_of_metadata_v1() {
        let t = trace(1);
        let sites = find(&t, ApiKey::Metadata, 1, false);
        let kinds: Vec<(usize, Kind, i64)> =
            sites.iter().map(|s| (s.offset, s.kind, s.value)).collect();
        // client id at 8, the topic array at 11, the topic name at 15; correlation id 0 is no count.
        assert_eq!(
            kinds,
            [
                (8, Kind::String, 1),
                (11, Kind::Array, 1),
                (15, Kind::String, 5)
            ]
        );
    }

    #[test]
    fn finds_compact_lengths_and_tagged_fields_of_metadata_v9() {
        let t = trace(9);
        let sites = find(&t, ApiKey::Metadata, 9, true);
        let kinds: Vec<Kind> = sites.iter().map(|s| s.kind).collect();
        assert!(kinds.contains(&Kind::CompactArray), "{sites:?}");
        assert!(kinds.contains(&Kind::CompactString), "{sites:?}");
        assert!(kinds.contains(&Kind::TaggedFields), "{sites:?}");
        assert!(kinds.contains(&Kind::String), "{sites:?}");
    }
}
