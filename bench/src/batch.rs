//! Record batches as the benchmark sends them.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    NO_PARTITION_LEADER_EPOCH, NO_PRODUCER_EPOCH, NO_PRODUCER_ID,
};

use crate::client::ClientError;

/// A payload of `size` bytes that does not compress (brokers and disks
/// must not get an easier job than real data gives them).
pub fn payload(size: usize) -> Bytes {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut out = Vec::with_capacity(size);
    while out.len() < size {
        // xorshift64*
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        let v = x.wrapping_mul(0x2545_f491_4f6c_dd1d);
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.truncate(size);
    Bytes::from(out)
}

/// One uncompressed v2 RecordBatch of `count` records with `value`, keyed
/// by `key(i)`. Offsets and sequences both run 0.. so the encoder emits a
/// single batch.
pub fn encode(
    count: u32,
    value: &Bytes,
    key: impl Fn(u32) -> Option<Bytes>,
) -> Result<Bytes, ClientError> {
    encode_as(count, value, key, None)
}

/// An idempotent producer's place in a partition: its id, epoch and the batch's first sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sequenced {
    pub producer_id: i64,
    pub epoch: i16,
    pub base_sequence: i32,
}

/// [`encode`], as an idempotent producer when `producer` is given.
pub fn encode_as(
    count: u32,
    value: &Bytes,
    key: impl Fn(u32) -> Option<Bytes>,
    producer: Option<Sequenced>,
) -> Result<Bytes, ClientError> {
    let timestamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    keyed_batch(
        (0..count).map(|i| (key(i), Some(value.clone()))),
        &Layout {
            timestamp,
            producer,
            ..Layout::default()
        },
    )
}

/// Where and how [`keyed_batch`] lays out a batch's records.
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    /// The first record's offset; the others follow one by one.
    pub base_offset: i64,
    /// The first record's timestamp.
    pub timestamp: i64,
    /// Added to the timestamp from one record to the next.
    pub timestamp_step: i64,
    /// The partition leader epoch in the batch header.
    pub leader_epoch: i32,
    pub compression: Compression,
    /// The idempotent producer that wrote it; none: no producer id, sequences follow the offsets.
    pub producer: Option<Sequenced>,
}

impl Default for Layout {
    fn default() -> Self {
        Self {
            base_offset: 0,
            timestamp: 0,
            timestamp_step: 0,
            leader_epoch: NO_PARTITION_LEADER_EPOCH,
            compression: Compression::None,
            producer: None,
        }
    }
}

/// One v2 RecordBatch of (key, value) records (a None value is a tombstone), as a producer writes
/// it. Offsets and sequences advance together, so the encoder emits a single batch (it starts a new
/// one wherever `offset - sequence` changes).
pub fn keyed_batch(
    records: impl IntoIterator<Item = (Option<Bytes>, Option<Bytes>)>,
    layout: &Layout,
) -> Result<Bytes, ClientError> {
    let records: Vec<Record> = records
        .into_iter()
        .enumerate()
        .map(|(i, (key, value))| {
            let offset = layout.base_offset + i as i64;
            Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: layout.leader_epoch,
                producer_id: layout.producer.map_or(NO_PRODUCER_ID, |p| p.producer_id),
                producer_epoch: layout.producer.map_or(NO_PRODUCER_EPOCH, |p| p.epoch),
                timestamp_type: TimestampType::Creation,
                offset,
                sequence: layout
                    .producer
                    .map_or(offset as i32, |p| p.base_sequence.wrapping_add(i as i32)),
                timestamp: layout.timestamp + layout.timestamp_step * i as i64,
                key,
                value,
                headers: IndexMap::new(),
            }
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression: layout.compression,
        },
    )
    .map_err(|e| ClientError::Encode(e.to_string()))?;
    Ok(buf.freeze())
}

/// The key an e2e record carries: the run's nonce and its send time as
/// nanoseconds since the run's base instant.
pub fn e2e_key(nonce: u64, base: Instant, at: Instant) -> Bytes {
    let nanos = at.saturating_duration_since(base).as_nanos() as u64;
    let mut k = Vec::with_capacity(16);
    k.extend_from_slice(&nonce.to_be_bytes());
    k.extend_from_slice(&nanos.to_be_bytes());
    Bytes::from(k)
}

/// The send time an e2e key carries, if it belongs to this run.
pub fn parse_e2e_key(key: &[u8], nonce: u64) -> Option<u64> {
    if key.len() != 16 || key[..8] != nonce.to_be_bytes() {
        return None;
    }
    let mut n = [0u8; 8];
    n.copy_from_slice(&key[8..]);
    Some(u64::from_be_bytes(n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::records::RecordBatchDecoder;

    #[test]
    fn one_batch_with_every_record() {
        let value = payload(100);
        let mut bytes = encode(10, &value, |i| Some(Bytes::from(vec![i as u8]))).unwrap();
        let info = RecordBatchDecoder::decode_batch_info(&mut bytes.clone()).unwrap();
        assert_eq!(info.len(), 1, "a single batch");
        assert_eq!(info[0].record_count, 10);
        let sets = RecordBatchDecoder::decode_all(&mut bytes).unwrap();
        let records = &sets[0].records;
        assert_eq!(records.len(), 10);
        assert_eq!(records[3].key.as_deref(), Some(&[3u8][..]));
        assert_eq!(records[3].value.as_ref(), Some(&value));
    }

    #[test]
    fn payload_is_sized_and_not_constant() {
        let p = payload(1000);
        assert_eq!(p.len(), 1000);
        assert!(p.iter().collect::<std::collections::HashSet<_>>().len() > 100);
    }

    #[test]
    fn e2e_keys_round_trip_and_reject_other_runs() {
        let base = Instant::now();
        let at = base + std::time::Duration::from_micros(1234);
        let k = e2e_key(7, base, at);
        assert_eq!(parse_e2e_key(&k, 7), Some(1_234_000));
        assert_eq!(parse_e2e_key(&k, 8), None);
        assert_eq!(parse_e2e_key(b"short", 7), None);
    }
}
