//! Helpers of the compaction tests (issue 15): a compacted topic, keyed batches with tombstones,
//! produce that survives the broker's death (an error, not a panic), reading a whole partition
//! with every batch validated, and the check that a compacted log still holds every key's latest
//! acknowledged record.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;

use bytes::Bytes;
use chronik_bench::batch::{keyed_batch as encode_keyed, Layout};
use chronik_shards::log::batch;
use chronik_shards::log::compaction::records;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, StrBytes};

use super::{fetch_request, produce_request, Client};

/// Creates a one-partition topic with `configs`; returns the topic's error code.
pub fn create_topic_with(client: &mut Client, name: &str, configs: &[(&str, &str)]) -> i16 {
    let mut topic = CreatableTopic::default();
    topic.name = TopicName(StrBytes::from_string(name.to_string()));
    topic.num_partitions = 1;
    topic.replication_factor = 1;
    topic.configs = configs
        .iter()
        .map(|(k, v)| {
            let mut c = CreatableTopicConfig::default();
            c.name = StrBytes::from_string(k.to_string());
            c.value = Some(StrBytes::from_string(v.to_string()));
            c
        })
        .collect();
    let mut request = CreateTopicsRequest::default();
    request.topics = vec![topic];
    request.timeout_ms = 10_000;
    let response: CreateTopicsResponse = client.call(ApiKey::CreateTopics, 7, &request);
    response.topics[0].error_code
}

/// The configs of a compacted topic whose cleaner has work all the time: 4 KiB segments, a pass
/// as soon as 1% of the log is dirty, tombstones kept `delete_retention_ms`.
pub fn compacted_configs(delete_retention_ms: &str) -> Vec<(&'static str, String)> {
    vec![
        ("cleanup.policy", "compact".into()),
        ("segment.bytes", "4096".into()),
        ("min.cleanable.dirty.ratio", "0.01".into()),
        ("min.compaction.lag.ms", "0".into()),
        ("delete.retention.ms", delete_retention_ms.into()),
    ]
}

/// One uncompressed batch of keyed records (a None value is a tombstone), timestamps `now`.
pub fn keyed_batch(records: &[(Vec<u8>, Option<Vec<u8>>)], timestamp: i64) -> Bytes {
    let records = records
        .iter()
        .map(|(k, v)| (Some(Bytes::from(k.clone())), v.clone().map(Bytes::from)));
    let layout = Layout {
        timestamp,
        ..Layout::default()
    };
    encode_keyed(records, &layout).expect("encoding a batch")
}

/// Produces one batch to partition 0; the connection breaking (a killed broker) is an `Err`.
/// Ok((error code, base offset)).
pub fn try_produce(
    client: &mut Client,
    topic: &str,
    acks: i16,
    batch: Bytes,
) -> std::io::Result<(i16, i64)> {
    let request = produce_request(topic, acks, &[(0, batch)]);
    let frame = client.encode(ApiKey::Produce, 9, &request);
    client.stream.write_all(&frame)?;
    let mut body = client.read_frame()?;
    let bad = |e: anyhow::Error| std::io::Error::other(e.to_string());
    let header = ResponseHeader::decode(&mut body, ApiKey::Produce.response_header_version(9))
        .map_err(bad)?;
    if header.correlation_id != client.last_correlation_id() {
        return Err(std::io::Error::other("correlation id mismatch"));
    }
    let response = ProduceResponse::decode(&mut body, 9).map_err(bad)?;
    let p = &response.responses[0].partition_responses[0];
    Ok((p.error_code, p.base_offset))
}

/// One record read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadRecord {
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
}

/// What one fetch gave: its records (from `from` on), where the next fetch starts, the high
/// watermark.
pub struct Fetched {
    pub records: Vec<ReadRecord>,
    pub next: i64,
    pub high_watermark: i64,
    pub batches: usize,
}

/// One fetch of partition 0 from `from` (at most `max_bytes`), every batch validated (length,
/// magic, CRC32C, records that parse, offsets inside the batch going up); a partial batch at the
/// end (cut by `max_bytes`) is dropped, as clients drop it. Err on a Kafka error or a bad batch.
pub fn fetch_once(
    client: &mut Client,
    topic: &str,
    from: i64,
    max_bytes: i32,
) -> Result<Fetched, String> {
    let request = fetch_request(&[(topic, 0, from, max_bytes)], 0, 1, max_bytes);
    let response: FetchResponse = client.call(ApiKey::Fetch, 12, &request);
    if response.error_code != 0 {
        return Err(format!("fetch error {}", response.error_code));
    }
    let p = &response.responses[0].partitions[0];
    if p.error_code != 0 {
        return Err(format!("partition error {} at offset {from}", p.error_code));
    }
    let bytes = p.records.clone().unwrap_or_default();
    let mut out = Fetched {
        records: Vec::new(),
        next: from,
        high_watermark: p.high_watermark,
        batches: 0,
    };
    let mut pos = 0usize;
    while pos < bytes.len() {
        let rest = &bytes[pos..];
        let Ok((_, len)) = batch::parse_prefix(rest) else {
            break;
        };
        if rest.len() < batch::LOG_OVERHEAD + len as usize {
            break; // partial batch at the end of the response
        }
        let h = batch::validate_frame(rest)
            .map_err(|e| format!("batch at byte {pos} of the fetch from {from}: {e}"))?;
        let frame = &rest[..h.total_len()];
        let section = records::section(frame, &h, 64 << 20).map_err(|e| e.to_string())?;
        let recs = records::parse(&section, h.record_count)
            .map_err(|e| format!("batch at offset {}: {e}", h.base_offset))?;
        let mut last_delta = -1i64;
        for r in recs {
            let delta = i64::from(r.offset_delta);
            if delta <= last_delta || delta > i64::from(h.last_offset_delta) {
                return Err(format!(
                    "batch at offset {}: offset delta {delta} after {last_delta}",
                    h.base_offset
                ));
            }
            last_delta = delta;
            let offset = h.base_offset + delta;
            if offset >= from {
                out.records.push(ReadRecord {
                    offset,
                    key: r.key.map(<[u8]>::to_vec),
                    value: r.value.map(<[u8]>::to_vec),
                });
            }
        }
        out.next = out.next.max(h.next_offset());
        out.batches += 1;
        pos += h.total_len();
    }
    Ok(out)
}

/// Every record of partition 0 from offset 0, fetches of `max_bytes`: up to at least `until`
/// (whole batches: it may read past), or with None until a fetch at the high watermark comes back
/// empty. Offsets must go strictly up across the whole read, and a fetch below the end that
/// returns nothing is an error (a hole the reader cannot get past).
pub fn read_from_start(
    client: &mut Client,
    topic: &str,
    until: Option<i64>,
    max_bytes: i32,
) -> Result<Vec<ReadRecord>, String> {
    let mut out: Vec<ReadRecord> = Vec::new();
    let mut from = 0i64;
    loop {
        let f = fetch_once(client, topic, from, max_bytes)?;
        for r in f.records {
            if let Some(prev) = out.last() {
                if r.offset <= prev.offset {
                    return Err(format!(
                        "offset {} read after offset {} (a record twice or out of order)",
                        r.offset, prev.offset
                    ));
                }
            }
            out.push(r);
        }
        if until.is_some_and(|u| f.next >= u) {
            return Ok(out);
        }
        if f.next == from {
            if until.is_none() && from >= f.high_watermark {
                return Ok(out);
            }
            return Err(format!(
                "fetch from {from} returned no batch (high watermark {}, wanted {until:?})",
                f.high_watermark
            ));
        }
        from = f.next;
    }
}

/// The latest acknowledged write of a key: its offset and value (None: a tombstone).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Acked {
    pub offset: i64,
    pub value: Option<Vec<u8>>,
}

/// Per key, the values (None: a tombstone) sent after its last acknowledged write with no answer.
pub type Unacked = HashMap<Vec<u8>, Vec<Option<Vec<u8>>>>;

/// Checks a log read from offset 0 against what was acknowledged. For every key with an
/// acknowledged write at offset `a`, the latest record of the key in the log must be that write
/// (offset `a`, the same value) or a later record; the key may be absent only when that write was
/// a tombstone (removed past its retention) or a tombstone was sent after it. A later record, and
/// any record of a key never acknowledged, must be one of `unacked` (sent after the key's last
/// acknowledged write, outcome unknown: in flight at a kill); with `unacked` None any later record
/// passes (a reader racing a producer whose acknowledgements it has not taken in). Returns the
/// number of live keys.
pub fn check_latest(
    log: &[ReadRecord],
    acked: &HashMap<Vec<u8>, Acked>,
    unacked: Option<&Unacked>,
) -> Result<usize, String> {
    let mut latest: BTreeMap<&[u8], &ReadRecord> = BTreeMap::new();
    for r in log {
        let Some(key) = &r.key else {
            return Err(format!("record without a key at offset {}", r.offset));
        };
        latest.insert(key, r);
    }
    let show = |v: &Option<Vec<u8>>| match v {
        None => "a tombstone".to_string(),
        Some(v) => format!("{:?}", String::from_utf8_lossy(v)),
    };
    let was_unacked = |key: &[u8], value: &Option<Vec<u8>>| {
        unacked.is_none_or(|u| u.get(key).is_some_and(|sent| sent.contains(value)))
    };
    for (key, r) in &latest {
        let name = String::from_utf8_lossy(key);
        match acked.get(*key) {
            Some(a) if r.offset < a.offset => {
                return Err(format!(
                    "key {name}: latest record {} at {}, but {} was acknowledged at {}",
                    show(&r.value),
                    r.offset,
                    show(&a.value),
                    a.offset
                ))
            }
            Some(a) if r.offset == a.offset && r.value != a.value => {
                return Err(format!(
                    "key {name}: offset {} holds {}, {} was acknowledged there",
                    r.offset,
                    show(&r.value),
                    show(&a.value)
                ))
            }
            Some(a) if r.offset == a.offset => {}
            _ if was_unacked(key, &r.value) => {}
            _ => {
                return Err(format!(
                    "key {name}: offset {} holds {}, which was never sent after the key's last \
                     acknowledged write",
                    r.offset,
                    show(&r.value)
                ))
            }
        }
    }
    for (key, a) in acked {
        let tombstone_after =
            unacked.is_some_and(|u| u.get(key).is_some_and(|sent| sent.contains(&None)));
        if !latest.contains_key(key.as_slice()) && a.value.is_some() && !tombstone_after {
            return Err(format!(
                "key {}: {} acknowledged at {} is gone",
                String::from_utf8_lossy(key),
                show(&a.value),
                a.offset
            ));
        }
    }
    Ok(latest.values().filter(|r| r.value.is_some()).count())
}
