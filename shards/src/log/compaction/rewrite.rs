//! A batch rewritten without its removed records: the same base offset, lastOffsetDelta (so the
//! batch still ends where it ended: producer state and the offsets after it are unchanged),
//! timestamps, producer fields, leader epoch and codec; only the record count, the records, the
//! length and the CRC change.

use super::codec::{self, Codec, CodecError};
use super::records::RecordView;
use crate::log::batch::{HEADER_LEN, LOG_OVERHEAD};

/// attributes (i16 at 21): the codec bits.
const CODEC_MASK: i16 = 0x7;
const CRC_START: usize = 21;

/// The frame `original` (a whole, valid batch) keeping only `records[kept]`, recompressed with
/// `codec`. With no record kept, the result is the empty batch of the same offsets (uncompressed:
/// there is nothing to compress).
pub fn rewrite(
    original: &[u8],
    codec: Codec,
    records: &[RecordView<'_>],
    kept: &[usize],
) -> Result<Vec<u8>, CodecError> {
    let mut raw = Vec::new();
    for &i in kept {
        raw.extend_from_slice(records[i].raw);
    }
    let (body, codec) = if kept.is_empty() {
        (Vec::new(), Codec::None)
    } else {
        (codec::compress(codec, &raw)?, codec)
    };
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&original[..HEADER_LEN]);
    out.extend_from_slice(&body);
    let batch_length = (out.len() - LOG_OVERHEAD) as i32;
    out[8..12].copy_from_slice(&batch_length.to_be_bytes());
    let attributes = i16::from_be_bytes([out[21], out[22]]);
    let attributes = (attributes & !CODEC_MASK) | codec_bits(codec);
    out[21..23].copy_from_slice(&attributes.to_be_bytes());
    out[57..61].copy_from_slice(&(kept.len() as i32).to_be_bytes());
    let crc = crc32c::crc32c(&out[CRC_START..]);
    out[17..21].copy_from_slice(&crc.to_be_bytes());
    Ok(out)
}

fn codec_bits(codec: Codec) -> i16 {
    match codec {
        Codec::None => 0,
        Codec::Gzip => 1,
        Codec::Snappy => 2,
        Codec::Lz4 => 3,
        Codec::Zstd => 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::batch::{build_producer_test_batch, validate_frame};
    use crate::log::compaction::records::{encode_record, parse, section};

    #[test]
    fn keeps_offsets_timestamps_and_producer_fields_with_a_valid_crc() {
        let mut payload = encode_record(0, 0, Some(b"a"), Some(b"1"));
        payload.extend(encode_record(1, 2, Some(b"b"), Some(b"2")));
        payload.extend(encode_record(2, 4, Some(b"a"), None));
        let frame = build_producer_test_batch(40, 3, 1234, &payload, (7, 1, 100));
        let h = validate_frame(&frame).unwrap();
        let sec = section(&frame, &h, 1 << 20).unwrap();
        let recs = parse(&sec, 3).unwrap();
        let out = rewrite(&frame, Codec::None, &recs, &[1, 2]).unwrap();
        let nh = validate_frame(&out).unwrap();
        assert_eq!(nh.base_offset, 40);
        assert_eq!(nh.last_offset_delta, 2);
        assert_eq!(nh.record_count, 2);
        assert_eq!(
            (nh.first_timestamp, nh.max_timestamp),
            (h.first_timestamp, h.max_timestamp)
        );
        assert_eq!(
            (nh.producer_id, nh.producer_epoch, nh.base_sequence),
            (7, 1, 100)
        );
        let nsec = section(&out, &nh, 1 << 20).unwrap();
        let nrecs = parse(&nsec, 2).unwrap();
        assert_eq!(nrecs[0].key, Some(&b"b"[..]));
        assert_eq!(nrecs[1].offset_delta, 2);
        assert!(nrecs[1].is_tombstone());

        let empty = rewrite(&frame, Codec::None, &recs, &[]).unwrap();
        let eh = validate_frame(&empty).unwrap();
        assert_eq!(
            (eh.record_count, eh.last_offset(), eh.total_len()),
            (0, 42, HEADER_LEN)
        );
    }
}
