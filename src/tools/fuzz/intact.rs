//! The data check around a fuzz run: keyed records produced (acks=all) before the run are read
//! back after it, each at the offset it was acknowledged at, with the same key and value.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::{Buf, Bytes, BytesMut};
use chronik_bench::client::connection::{records_of, topic_name};
use chronik_bench::client::Connection;
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::ProduceRequest;
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

use super::rng::Rng;

const TIMEOUT: Duration = Duration::from_secs(30);
/// Records per produce request.
const PER_BATCH: usize = 100;

/// One stored record: offset, key, value.
pub type Stored = (i64, Bytes, Bytes);

/// What was acknowledged, per partition.
pub struct Expected {
    pub topic: String,
    pub partitions: Vec<Vec<Stored>>,
}

impl Expected {
    pub fn records(&self) -> usize {
        self.partitions.iter().map(Vec::len).sum()
    }
}

/// A connection to the leader of each partition of a topic.
struct Leaders {
    leader_of: HashMap<i32, String>,
    connections: HashMap<String, Connection>,
}

impl Leaders {
    /// Asks `address` who leads each of `partitions` partitions, until all have a leader.
    fn find(address: &str, topic: &str, partitions: i32) -> Result<Leaders> {
        let deadline = Instant::now() + TIMEOUT;
        let mut conn = Connection::connect(address, TIMEOUT)?;
        loop {
            let md = conn.metadata(Some(&[topic]))?;
            let brokers: HashMap<i32, String> = md
                .brokers
                .iter()
                .map(|b| (b.node_id.0, format!("{}:{}", b.host, b.port)))
                .collect();
            let leader_of: HashMap<i32, String> = md
                .topics
                .iter()
                .flat_map(|t| t.partitions.iter())
                .filter_map(|p| Some((p.partition_index, brokers.get(&p.leader_id.0)?.clone())))
                .collect();
            if leader_of.len() >= partitions as usize {
                return Ok(Leaders {
                    leader_of,
                    connections: HashMap::new(),
                });
            }
            if Instant::now() > deadline {
                bail!(
                    "{topic}: only {} of {partitions} partitions have a leader",
                    leader_of.len()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn of(&mut self, partition: i32) -> Result<&mut Connection> {
        let address = self
            .leader_of
            .get(&partition)
            .with_context(|| format!("no leader for partition {partition}"))?
            .clone();
        if !self.connections.contains_key(&address) {
            let conn = Connection::connect(&address, TIMEOUT)?;
            self.connections.insert(address.clone(), conn);
        }
        self.connections
            .get_mut(&address)
            .context("a connection just made")
    }
}

/// Creates `topic` (`replication_factor` copies) and produces `count` keyed records spread over
/// `partitions`, each to its leader.
pub fn seed(
    address: &str,
    topic: &str,
    partitions: i32,
    replication_factor: i16,
    count: usize,
    rng: &mut Rng,
) -> Result<Expected> {
    let mut conn = Connection::connect(address, TIMEOUT)?;
    conn.create_topic(topic, partitions, replication_factor, TIMEOUT)?;
    let mut leaders = Leaders::find(address, topic, partitions)?;
    let version = conn
        .versions
        .produce
        .context("the broker has no Produce version in common")?
        .min(12);
    let mut expected = Expected {
        topic: topic.to_string(),
        partitions: vec![Vec::new(); partitions as usize],
    };
    let mut next = 0usize;
    while next < count {
        let partition = (next / PER_BATCH) % partitions as usize;
        let n = PER_BATCH.min(count - next);
        let kvs: Vec<(Bytes, Bytes)> = (next..next + n)
            .map(|i| {
                let n = 16 + rng.below(200);
                let value = rng.bytes(n);
                (Bytes::from(format!("key-{i}")), Bytes::from(value))
            })
            .collect();
        let batch = encode(&kvs)?;
        let request = ProduceRequest::default()
            .with_acks(-1)
            .with_timeout_ms(30_000)
            .with_topic_data(vec![TopicProduceData::default()
                .with_name(topic_name(topic))
                .with_partition_data(vec![PartitionProduceData::default()
                    .with_index(partition as i32)
                    .with_records(Some(batch))])]);
        let response = leaders.of(partition as i32)?.request(&request, version)?;
        let p = response
            .responses
            .first()
            .and_then(|t| t.partition_responses.first())
            .context("a Produce response without the partition")?;
        if p.error_code != 0 {
            bail!(
                "producing the records to check: error code {}",
                p.error_code
            );
        }
        for (i, (k, v)) in kvs.into_iter().enumerate() {
            expected.partitions[partition].push((p.base_offset + i as i64, k, v));
        }
        next += n;
    }
    Ok(expected)
}

fn encode(kvs: &[(Bytes, Bytes)]) -> Result<Bytes> {
    let records: Vec<Record> = kvs
        .iter()
        .enumerate()
        .map(|(i, (k, v))| {
            plain_record(i, k.clone(), v.clone(), 1_700_000_000_000, IndexMap::new())
        })
        .collect();
    encode_batch(&records)
}

/// Record `i` of a batch without a producer (no idempotence, no transaction).
pub(super) fn plain_record(
    i: usize,
    key: Bytes,
    value: Bytes,
    timestamp: i64,
    headers: IndexMap<kafka_protocol::protocol::StrBytes, Option<Bytes>>,
) -> Record {
    Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: -1,
        producer_id: -1,
        producer_epoch: -1,
        timestamp_type: TimestampType::Creation,
        offset: i as i64,
        sequence: i as i32,
        timestamp,
        key: Some(key),
        value: Some(value),
        headers,
    }
}

/// One uncompressed magic-2 batch of `records`.
pub(super) fn encode_batch(records: &[Record]) -> Result<Bytes> {
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        records,
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )?;
    Ok(buf.freeze())
}

/// Reads every partition from offset 0 and compares with what was acknowledged; the first
/// difference is the error.
pub fn verify(address: &str, expected: &Expected) -> Result<()> {
    let mut leaders = Leaders::find(address, &expected.topic, expected.partitions.len() as i32)?;
    for (partition, want) in expected.partitions.iter().enumerate() {
        let conn = leaders.of(partition as i32)?;
        let Some(last) = want.last().map(|r| r.0) else {
            continue;
        };
        let mut got: Vec<Stored> = Vec::new();
        let mut offset = want[0].0;
        while offset <= last {
            let response = conn.fetch(
                &expected.topic,
                partition as i32,
                offset,
                Duration::from_millis(100),
                1 << 20,
            )?;
            let (code, records) =
                records_of(&response, partition as i32).context("a Fetch response without it")?;
            if code != 0 {
                bail!("fetching partition {partition} at {offset}: error code {code}");
            }
            let before = got.len();
            for record in whole_batches(records.unwrap_or_default())? {
                if record.0 >= offset {
                    offset = record.0 + 1;
                    got.push(record);
                }
            }
            if got.len() == before {
                bail!("partition {partition} ends at {offset}; {last} was acknowledged");
            }
        }
        for (w, g) in want.iter().zip(&got) {
            if w != g {
                bail!(
                    "partition {partition} offset {}: expected key {:?} ({} value bytes), read \
                     offset {} key {:?} ({} value bytes{})",
                    w.0,
                    w.1,
                    w.2.len(),
                    g.0,
                    g.1,
                    g.2.len(),
                    if w.2 == g.2 { "" } else { ", different" }
                );
            }
        }
    }
    Ok(())
}

/// The records of every whole batch in fetched bytes (a fetch may end with part of a batch).
fn whole_batches(mut bytes: Bytes) -> Result<Vec<Stored>> {
    let mut out = Vec::new();
    while bytes.len() >= 12 {
        let len = i32::from_be_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
        let total = usize::try_from(len)
            .unwrap_or(usize::MAX)
            .saturating_add(12);
        if total > bytes.len() {
            break;
        }
        let mut batch = bytes.split_to(total);
        for set in RecordBatchDecoder::decode_all(&mut batch)? {
            for r in set.records {
                out.push((
                    r.offset,
                    r.key.unwrap_or_default(),
                    r.value.unwrap_or_default(),
                ));
            }
        }
        if batch.has_remaining() {
            bail!("a stored batch decodes with bytes to spare");
        }
    }
    Ok(out)
}
