//! The Kafka RecordBatch (magic 2) header: parsing, validation, and the in-place offset assignment.
//!
//! Layout (big-endian): baseOffset i64 | batchLength i32 | partitionLeaderEpoch i32 | magic i8 | crc u32 |
//! attributes i16 | lastOffsetDelta i32 | firstTimestamp i64 | maxTimestamp i64 | producerId i64 |
//! producerEpoch i16 | baseSequence i32 | recordCount i32 | records...
//! The CRC32C covers attributes..end, so baseOffset and partitionLeaderEpoch can be rewritten freely.

use super::producers::ProducerBatch;
use super::LogError;

/// baseOffset + batchLength: the bytes that precede what batchLength counts.
pub const LOG_OVERHEAD: usize = 12;
/// Size of the fixed batch header.
pub const HEADER_LEN: usize = 61;
/// Smallest legal batchLength value (a header with no records).
pub const MIN_BATCH_LENGTH: i32 = (HEADER_LEN - LOG_OVERHEAD) as i32;
const CRC_START: usize = 21;
const MAGIC: i8 = 2;

/// The fields of a batch header the log needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    pub batch_length: i32,
    pub leader_epoch: i32,
    pub magic: i8,
    pub crc: u32,
    pub last_offset_delta: i32,
    pub first_timestamp: i64,
    pub max_timestamp: i64,
    pub attributes: i16,
    /// -1 unless an idempotent (or transactional) producer wrote the batch.
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub record_count: i32,
}

/// Why bytes are not a valid batch. Mapped to `LogError::CorruptBatch`/`InvalidBatch` on append and to
/// `LogError::Corruption` (or a torn tail) when found on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BatchFault {
    /// Fewer bytes than the frame claims (or than a header).
    Truncated {
        need: usize,
        have: usize,
    },
    /// batchLength below the header size (zero and negative included).
    BadLength(i32),
    BadMagic(i8),
    BadCrc {
        stored: u32,
        computed: u32,
    },
    /// Offsets or record count that cannot be right.
    BadOffsets(String),
}

impl std::fmt::Display for BatchFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BatchFault::Truncated { need, have } => {
                write!(f, "truncated: need {need} bytes, have {have}")
            }
            BatchFault::BadLength(l) => write!(f, "invalid batch length {l}"),
            BatchFault::BadMagic(m) => write!(f, "unsupported magic {m} (only 2)"),
            BatchFault::BadCrc { stored, computed } => {
                write!(
                    f,
                    "CRC32C mismatch: stored {stored:#010x}, computed {computed:#010x}"
                )
            }
            BatchFault::BadOffsets(s) => write!(f, "{s}"),
        }
    }
}

impl BatchFault {
    /// The produce-path error for this fault.
    pub fn into_append_error(self) -> LogError {
        match self {
            BatchFault::BadMagic(_) | BatchFault::BadOffsets(_) => {
                LogError::InvalidBatch(self.to_string())
            }
            _ => LogError::CorruptBatch(self.to_string()),
        }
    }
}

fn be_i64(b: &[u8], at: usize) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(a)
}

fn be_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}

fn be_i32(b: &[u8], at: usize) -> i32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    i32::from_be_bytes(a)
}

/// Reads baseOffset and batchLength; the rest of the frame is `batch_length` bytes.
pub fn parse_prefix(b: &[u8]) -> Result<(i64, i32), BatchFault> {
    if b.len() < LOG_OVERHEAD {
        return Err(BatchFault::Truncated {
            need: LOG_OVERHEAD,
            have: b.len(),
        });
    }
    let len = be_i32(b, 8);
    if len < MIN_BATCH_LENGTH {
        return Err(BatchFault::BadLength(len));
    }
    Ok((be_i64(b, 0), len))
}

impl BatchHeader {
    /// Parses the fixed header; checks length and magic, not the CRC.
    pub fn parse(b: &[u8]) -> Result<BatchHeader, BatchFault> {
        let (base_offset, batch_length) = parse_prefix(b)?;
        if b.len() < HEADER_LEN {
            return Err(BatchFault::Truncated {
                need: HEADER_LEN,
                have: b.len(),
            });
        }
        let magic = b[16] as i8;
        if magic != MAGIC {
            return Err(BatchFault::BadMagic(magic));
        }
        let h = BatchHeader {
            base_offset,
            batch_length,
            leader_epoch: be_i32(b, 12),
            magic,
            crc: be_i32(b, 17) as u32,
            last_offset_delta: be_i32(b, 23),
            first_timestamp: be_i64(b, 27),
            max_timestamp: be_i64(b, 35),
            attributes: be_i16(b, 21),
            producer_id: be_i64(b, 43),
            producer_epoch: be_i16(b, 51),
            base_sequence: be_i32(b, 53),
            record_count: be_i32(b, 57),
        };
        if h.last_offset_delta < 0 {
            return Err(BatchFault::BadOffsets(format!(
                "negative lastOffsetDelta {}",
                h.last_offset_delta
            )));
        }
        if h.base_offset
            .checked_add(h.last_offset_delta as i64 + 1)
            .is_none()
        {
            return Err(BatchFault::BadOffsets(format!(
                "offsets overflow: base {} + delta {}",
                h.base_offset, h.last_offset_delta
            )));
        }
        if h.record_count < 0 || h.record_count as i64 > h.last_offset_delta as i64 + 1 {
            return Err(BatchFault::BadOffsets(format!(
                "record count {} does not fit lastOffsetDelta {}",
                h.record_count, h.last_offset_delta
            )));
        }
        Ok(h)
    }

    /// Bytes of the whole frame.
    pub fn total_len(&self) -> usize {
        LOG_OVERHEAD + self.batch_length as usize
    }

    pub fn last_offset(&self) -> i64 {
        self.base_offset + self.last_offset_delta as i64
    }

    /// Offset after this batch.
    pub fn next_offset(&self) -> i64 {
        self.last_offset() + 1
    }

    /// Attribute bit 4: part of a transaction.
    pub fn is_transactional(&self) -> bool {
        self.attributes & 0x10 != 0
    }

    /// The producer fields, when an idempotent producer wrote the batch (a producer id >= 0).
    pub fn producer_batch(&self) -> Option<ProducerBatch> {
        (self.producer_id >= 0).then_some(ProducerBatch {
            producer_id: self.producer_id,
            epoch: self.producer_epoch,
            first_seq: self.base_sequence,
            last_offset_delta: self.last_offset_delta,
            max_timestamp: self.max_timestamp,
        })
    }
}

/// Checks the CRC32C of a whole frame (header already parsed from it).
pub fn verify_crc(frame: &[u8], header: &BatchHeader) -> Result<(), BatchFault> {
    let computed = crc32c::crc32c(&frame[CRC_START..header.total_len()]);
    if computed != header.crc {
        return Err(BatchFault::BadCrc {
            stored: header.crc,
            computed,
        });
    }
    Ok(())
}

/// Parses and fully validates the frame at the start of `b` (length, magic, offsets, CRC).
pub fn validate_frame(b: &[u8]) -> Result<BatchHeader, BatchFault> {
    let h = BatchHeader::parse(b)?;
    if b.len() < h.total_len() {
        return Err(BatchFault::Truncated {
            need: h.total_len(),
            have: b.len(),
        });
    }
    verify_crc(b, &h)?;
    Ok(h)
}

/// Splits a produce `records` field into validated batches (all or nothing).
pub fn split_batches(
    records: &[u8],
    max_batch_bytes: usize,
) -> Result<Vec<(BatchHeader, usize)>, LogError> {
    split(records, max_batch_bytes, false)
}

/// [`split_batches`] for a follower: a leader's compacted log holds empty batches (an idempotent
/// producer's last batch whose records all went), which followers copy as they are.
pub fn split_replica_batches(
    records: &[u8],
    max_batch_bytes: usize,
) -> Result<Vec<(BatchHeader, usize)>, LogError> {
    split(records, max_batch_bytes, true)
}

fn split(
    records: &[u8],
    max_batch_bytes: usize,
    allow_empty: bool,
) -> Result<Vec<(BatchHeader, usize)>, LogError> {
    if records.is_empty() {
        return Err(LogError::InvalidBatch("no record batches".into()));
    }
    let mut out = Vec::new();
    let mut pos = 0usize;
    while pos < records.len() {
        let rest = &records[pos..];
        let (_, len) = parse_prefix(rest).map_err(BatchFault::into_append_error)?;
        let total = LOG_OVERHEAD + len as usize;
        if total > max_batch_bytes {
            return Err(LogError::BatchTooLarge {
                size: total,
                max: max_batch_bytes,
            });
        }
        let h = validate_frame(rest).map_err(BatchFault::into_append_error)?;
        if h.record_count == 0 && !allow_empty {
            return Err(LogError::InvalidBatch("empty batch (no records)".into()));
        }
        out.push((h, pos));
        pos += total;
    }
    Ok(out)
}

/// Writes the offsets the log assigns into a batch's own copy; the CRC stays valid.
pub fn patch_offsets(frame: &mut [u8], base_offset: i64, leader_epoch: i32) {
    frame[0..8].copy_from_slice(&base_offset.to_be_bytes());
    frame[12..16].copy_from_slice(&leader_epoch.to_be_bytes());
}

/// Builds a valid batch whose records section is `payload` (opaque to the log). For tests and benches:
/// the log never decodes records.
pub fn build_test_batch(
    base_offset: i64,
    record_count: i32,
    max_timestamp: i64,
    payload: &[u8],
) -> Vec<u8> {
    build_producer_test_batch(
        base_offset,
        record_count,
        max_timestamp,
        payload,
        (-1, -1, -1),
    )
}

/// [`build_test_batch`] with an idempotent producer's (producer id, epoch, base sequence).
pub fn build_producer_test_batch(
    base_offset: i64,
    record_count: i32,
    max_timestamp: i64,
    payload: &[u8],
    (producer_id, epoch, base_sequence): (i64, i16, i32),
) -> Vec<u8> {
    let total = HEADER_LEN + payload.len();
    let mut b = vec![0u8; total];
    b[0..8].copy_from_slice(&base_offset.to_be_bytes());
    b[8..12].copy_from_slice(&((total - LOG_OVERHEAD) as i32).to_be_bytes());
    b[12..16].copy_from_slice(&(-1i32).to_be_bytes());
    b[16] = MAGIC as u8;
    b[21..23].copy_from_slice(&0i16.to_be_bytes());
    b[23..27].copy_from_slice(&(record_count - 1).to_be_bytes());
    b[27..35].copy_from_slice(&max_timestamp.to_be_bytes());
    b[35..43].copy_from_slice(&max_timestamp.to_be_bytes());
    b[43..51].copy_from_slice(&producer_id.to_be_bytes());
    b[51..53].copy_from_slice(&epoch.to_be_bytes());
    b[53..57].copy_from_slice(&base_sequence.to_be_bytes());
    b[57..61].copy_from_slice(&record_count.to_be_bytes());
    b[61..].copy_from_slice(payload);
    let crc = crc32c::crc32c(&b[CRC_START..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_batch_round_trips() {
        let b = build_test_batch(0, 3, 1000, b"hello");
        let h = validate_frame(&b).unwrap();
        assert_eq!(h.record_count, 3);
        assert_eq!(h.last_offset_delta, 2);
        assert_eq!(h.max_timestamp, 1000);
        assert_eq!(h.total_len(), b.len());
    }

    #[test]
    fn patching_offsets_keeps_crc_valid() {
        let mut b = build_test_batch(0, 2, 5, b"xyz");
        patch_offsets(&mut b, 12345, 7);
        let h = validate_frame(&b).unwrap();
        assert_eq!(h.base_offset, 12345);
        assert_eq!(h.leader_epoch, 7);
        assert_eq!(h.last_offset(), 12346);
    }

    #[test]
    fn flipped_byte_fails_crc() {
        let mut b = build_test_batch(0, 1, 5, b"payload");
        let n = b.len();
        b[n - 1] ^= 0x40;
        assert!(matches!(validate_frame(&b), Err(BatchFault::BadCrc { .. })));
        assert!(matches!(
            split_batches(&b, 1 << 20),
            Err(LogError::CorruptBatch(_))
        ));
    }

    #[test]
    fn bad_magic_is_invalid() {
        let mut b = build_test_batch(0, 1, 5, b"p");
        b[16] = 1;
        assert!(matches!(
            split_batches(&b, 1 << 20),
            Err(LogError::InvalidBatch(_))
        ));
    }

    #[test]
    fn lengths_zero_negative_and_beyond_input_are_errors() {
        let mut b = build_test_batch(0, 1, 5, b"p");
        b[8..12].copy_from_slice(&0i32.to_be_bytes());
        assert!(matches!(
            split_batches(&b, 1 << 20),
            Err(LogError::CorruptBatch(_))
        ));
        b[8..12].copy_from_slice(&(-5i32).to_be_bytes());
        assert!(matches!(
            split_batches(&b, 1 << 20),
            Err(LogError::CorruptBatch(_))
        ));
        b[8..12].copy_from_slice(&1000i32.to_be_bytes());
        assert!(matches!(
            split_batches(&b, 1 << 20),
            Err(LogError::CorruptBatch(_))
        ));
        assert!(matches!(
            split_batches(&b[..5], 1 << 20),
            Err(LogError::CorruptBatch(_))
        ));
        assert!(matches!(
            split_batches(&[], 1 << 20),
            Err(LogError::InvalidBatch(_))
        ));
    }

    #[test]
    fn empty_batch_is_invalid() {
        let b = build_test_batch(0, 0, 5, b"");
        // record_count 0 with lastOffsetDelta -1 is rejected as bad offsets
        assert!(matches!(
            split_batches(&b, 1 << 20),
            Err(LogError::InvalidBatch(_))
        ));
        let mut b = build_test_batch(0, 1, 5, b"");
        b[57..61].copy_from_slice(&0i32.to_be_bytes());
        let crc = crc32c::crc32c(&b[CRC_START..]);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
        assert!(matches!(
            split_batches(&b, 1 << 20),
            Err(LogError::InvalidBatch(_))
        ));
    }

    #[test]
    fn overflowing_offsets_are_invalid() {
        let mut b = build_test_batch(0, 3, 5, b"x");
        b[0..8].copy_from_slice(&(i64::MAX - 1).to_be_bytes());
        assert!(matches!(validate_frame(&b), Err(BatchFault::BadOffsets(_))));
    }

    #[test]
    fn too_large_is_typed() {
        let b = build_test_batch(0, 1, 5, &[7u8; 500]);
        assert!(matches!(
            split_batches(&b, 100),
            Err(LogError::BatchTooLarge { max: 100, .. })
        ));
    }

    #[test]
    fn several_batches_split_all_or_nothing() {
        let mut recs = build_test_batch(0, 2, 5, b"a");
        recs.extend(build_test_batch(0, 3, 6, b"bb"));
        let v = split_batches(&recs, 1 << 20).unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v[1].1, HEADER_LEN + 1);
        let n = recs.len();
        recs[n - 1] ^= 1;
        assert!(split_batches(&recs, 1 << 20).is_err());
    }
}
