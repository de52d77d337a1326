//! Encoding a response around record data without copying it.
//!
//! Fetch answers carry stored batches (refcounted `Bytes` from the log).
//! kafka-protocol encodes a partition's `records` with one `put_slice`; the
//! buffer here recognises that slice and, instead of copying it, ends the
//! current segment and splices in the batches by reference. The response
//! goes out as a list of segments.
//!
//! A partition's batches are usually several `Bytes`; its `records` field
//! then holds a placeholder of the right length that points into a zeroed
//! static region (never read: only its address and length are compared).

use std::collections::VecDeque;
use std::ops::Range;

use bytes::buf::UninitSlice;
use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::protocol::buf::ByteBufMut;

/// Upper bound of one spliced placeholder; larger record sets are copied.
const PLACEHOLDER_BYTES: usize = 64 << 20;
/// Lives in .bss: address space only, no memory is touched.
static PLACEHOLDER: [u8; PLACEHOLDER_BYTES] = [0; PLACEHOLDER_BYTES];

struct Splice {
    addr: usize,
    len: usize,
    chunks: Vec<Bytes>,
}

/// Record data to splice into a response, in encoding order.
#[derive(Default)]
pub struct Splices {
    pending: VecDeque<Splice>,
}

impl Splices {
    /// The value to put in a `records` field for `chunks` (whole batches, in
    /// order). Fields must be registered in the order they are encoded.
    pub fn records(&mut self, chunks: Vec<Bytes>) -> Bytes {
        let len: usize = chunks.iter().map(Bytes::len).sum();
        let field = match chunks.len() {
            0 => return Bytes::new(),
            1 => chunks[0].clone(),
            _ if len <= PLACEHOLDER_BYTES => Bytes::from_static(&PLACEHOLDER[..len]),
            _ => {
                let mut joined = BytesMut::with_capacity(len);
                for chunk in &chunks {
                    joined.extend_from_slice(chunk);
                }
                return joined.freeze();
            }
        };
        self.pending.push_back(Splice {
            addr: field.as_ptr() as usize,
            len,
            chunks,
        });
        field
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

/// A `BufMut` that collects segments, splicing registered record data.
pub struct SplicedBuf {
    head: BytesMut,
    segments: Vec<Bytes>,
    /// Bytes in `segments`.
    written: usize,
    splices: Splices,
}

impl SplicedBuf {
    /// Continues after what `head` already holds.
    pub fn new(head: BytesMut, splices: Splices) -> Self {
        SplicedBuf {
            head,
            segments: Vec::new(),
            written: 0,
            splices,
        }
    }

    /// Total bytes written so far.
    pub fn len(&self) -> usize {
        self.written + self.head.len()
    }

    /// The segments, in order; fails if a registered splice was never encoded.
    pub fn finish(mut self) -> Result<Vec<Bytes>, String> {
        if !self.splices.is_empty() {
            return Err("record data registered for splicing was not encoded".into());
        }
        if !self.head.is_empty() {
            self.segments.push(self.head.freeze());
        }
        Ok(self.segments)
    }
}

// SAFETY: every method delegates to the inner BytesMut, which upholds the
// BufMut contract; put_slice only chooses between copying (delegated) and
// appending already initialized Bytes as separate segments.
unsafe impl BufMut for SplicedBuf {
    fn remaining_mut(&self) -> usize {
        self.head.remaining_mut()
    }

    unsafe fn advance_mut(&mut self, cnt: usize) {
        // SAFETY: forwarded unchanged; the caller upholds advance_mut's contract.
        unsafe { self.head.advance_mut(cnt) }
    }

    fn chunk_mut(&mut self) -> &mut UninitSlice {
        self.head.chunk_mut()
    }

    fn put_slice(&mut self, src: &[u8]) {
        let matches = self
            .splices
            .pending
            .front()
            .is_some_and(|s| s.addr == src.as_ptr() as usize && s.len == src.len());
        let splice = if matches {
            self.splices.pending.pop_front()
        } else {
            None
        };
        if let Some(splice) = splice {
            if !self.head.is_empty() {
                let head = self.head.split().freeze();
                self.written += head.len();
                self.segments.push(head);
            }
            for chunk in splice.chunks {
                self.written += chunk.len();
                self.segments.push(chunk);
            }
        } else {
            self.head.extend_from_slice(src);
        }
    }
}

impl ByteBufMut for SplicedBuf {
    fn offset(&self) -> usize {
        self.len()
    }

    fn seek(&mut self, offset: usize) {
        // Only within the current segment (the codec does not seek back).
        self.head.resize(offset.saturating_sub(self.written), 0);
    }

    fn range(&mut self, r: Range<usize>) -> &mut [u8] {
        let start = r.start.saturating_sub(self.written);
        let end = r.end.saturating_sub(self.written);
        &mut self.head[start..end]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
    use kafka_protocol::messages::FetchResponse;
    use kafka_protocol::protocol::Encodable;

    fn response(splices: &mut Splices, parts: Vec<Vec<Bytes>>) -> FetchResponse {
        let mut topic = FetchableTopicResponse::default();
        for (i, chunks) in parts.into_iter().enumerate() {
            let mut p = PartitionData::default();
            p.partition_index = i as i32;
            p.records = Some(splices.records(chunks));
            topic.partitions.push(p);
        }
        let mut response = FetchResponse::default();
        response.responses.push(topic);
        response
    }

    #[test]
    fn spliced_encoding_equals_copied_encoding() {
        let a = Bytes::from(vec![1u8; 100]);
        let b = Bytes::from(vec![2u8; 50]);
        let c = Bytes::from(vec![3u8; 70]);
        let parts = vec![
            vec![a.clone(), b.clone()],
            vec![],
            vec![c.clone()],
            vec![a.clone()],
        ];
        for version in [4i16, 11, 12, 16] {
            let mut splices = Splices::default();
            let spliced = response(&mut splices, parts.clone());
            let mut buf = SplicedBuf::new(BytesMut::new(), splices);
            spliced.encode(&mut buf, version).unwrap();
            let segments = buf.finish().unwrap();
            let joined: Vec<u8> = segments.iter().flat_map(|s| s.iter().copied()).collect();

            let copied = {
                let mut plain = Splices::default();
                let joined_parts: Vec<Vec<Bytes>> = parts
                    .iter()
                    .map(|chunks| {
                        let all: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
                        if all.is_empty() {
                            vec![]
                        } else {
                            vec![Bytes::from(all)]
                        }
                    })
                    .collect();
                let r = response(&mut plain, joined_parts);
                let mut out = BytesMut::new();
                r.encode(&mut out, version).unwrap();
                out
            };
            assert_eq!(joined, copied.to_vec(), "v{version}");
            // The record data went by reference.
            assert!(segments.iter().any(|s| s.as_ptr() == a.as_ptr()));
            assert!(segments.iter().any(|s| s.as_ptr() == c.as_ptr()));
        }
    }

    #[test]
    fn unencoded_splices_are_an_error() {
        let mut splices = Splices::default();
        splices.records(vec![Bytes::from_static(b"abc")]);
        assert!(SplicedBuf::new(BytesMut::new(), splices).finish().is_err());
    }
}
