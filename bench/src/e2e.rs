//! The consumer side of `chronik bench e2e`: one thread per partition
//! fetches from the partition's leader and records, for every record of
//! this run, the time from its send to its arrival at the consumer.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::records::RecordBatchDecoder;

use crate::batch::parse_e2e_key;
use crate::client::connection::records_of;
use crate::client::{is_leadership_error, ClientError, ClusterMap, Connection};
use crate::stats::{Group, Recorder};

/// Long-poll wait of each Fetch.
const FETCH_WAIT: Duration = Duration::from_millis(200);
/// Bytes per Fetch.
const FETCH_BYTES: i32 = 4 * 1024 * 1024;

/// What the consumer threads share with the run.
pub struct ConsumerSet {
    stop: Arc<AtomicBool>,
    /// Measured records read back, over all partitions.
    pub consumed: Arc<AtomicU64>,
    threads: Vec<JoinHandle<Recorder>>,
}

/// Where consumers start and what they look for.
#[derive(Debug, Clone)]
pub struct ConsumerPlan {
    pub topic: String,
    pub bootstrap: Vec<String>,
    pub nonce: u64,
    pub base: Instant,
    /// Records sent before this (nanoseconds after `base`) are warm-up.
    pub measure_from_ns: u64,
    pub connect_timeout: Duration,
}

impl ConsumerSet {
    /// Starts one consumer per partition at the partition's current end.
    pub fn start(plan: ConsumerPlan, partitions: i32) -> Result<ConsumerSet, ClientError> {
        let mut start_offsets = Vec::new();
        let (map, _admin) = cluster_map(&plan)?;
        let by_leader = map.partitions_by_leader();
        for (leader, parts) in by_leader {
            let Some(addr) = map.brokers.get(&leader) else {
                return Err(ClientError::Other(format!(
                    "no address for leader {leader}"
                )));
            };
            let mut conn = Connection::connect(addr, plan.connect_timeout)?;
            for (p, offset) in conn.latest_offsets(&plan.topic, &parts)? {
                let offset = offset
                    .map_err(|code| crate::client::connection::kafka_error("ListOffsets", code))?;
                start_offsets.push((p, offset));
            }
        }
        if start_offsets.len() != partitions as usize {
            return Err(ClientError::Other(format!(
                "ListOffsets answered {} of {partitions} partitions",
                start_offsets.len()
            )));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let consumed = Arc::new(AtomicU64::new(0));
        let mut threads = Vec::new();
        for (partition, offset) in start_offsets {
            let plan = plan.clone();
            let stop = stop.clone();
            let consumed = consumed.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("consume-{partition}"))
                    .spawn(move || consume(plan, partition, offset, &stop, &consumed))?,
            );
        }
        Ok(ConsumerSet {
            stop,
            consumed,
            threads,
        })
    }

    /// Stops the consumers and returns what they recorded.
    pub fn finish(self) -> Recorder {
        self.stop.store(true, Ordering::SeqCst);
        let mut all = Recorder::default();
        for t in self.threads {
            if let Ok(r) = t.join() {
                all.merge(&r);
            }
        }
        all
    }
}

fn cluster_map(plan: &ConsumerPlan) -> Result<(ClusterMap, Option<Connection>), ClientError> {
    let mut last = ClientError::Other("no bootstrap address".into());
    for addr in &plan.bootstrap {
        match Connection::connect(addr, plan.connect_timeout).and_then(|mut c| {
            let md = c.metadata(Some(&[plan.topic.as_str()]))?;
            Ok((ClusterMap::from_metadata(&md, &plan.topic), c))
        }) {
            Ok((map, c)) => return Ok((map, Some(c))),
            Err(e) => last = e,
        }
    }
    Err(last)
}

fn consume(
    plan: ConsumerPlan,
    partition: i32,
    mut offset: i64,
    stop: &AtomicBool,
    consumed: &AtomicU64,
) -> Recorder {
    let mut recorder = Recorder::default();
    let mut conn: Option<(i32, Connection)> = None;
    while !stop.load(Ordering::SeqCst) {
        if conn.is_none() {
            match cluster_map(&plan).and_then(|(map, _)| {
                let (leader, addr) = map.leader_of(partition).ok_or_else(|| {
                    ClientError::Other(format!("partition {partition} has no leader"))
                })?;
                Ok((leader, Connection::connect(addr, plan.connect_timeout)?))
            }) {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    tracing::debug!(partition, error = %e, "consumer cannot reach the leader yet");
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            }
        }
        let Some((leader, c)) = conn.as_mut() else {
            continue;
        };
        let leader = *leader;
        let response = match c.fetch(&plan.topic, partition, offset, FETCH_WAIT, FETCH_BYTES) {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(partition, error = %e, "fetch failed; reconnecting");
                conn = None;
                continue;
            }
        };
        let arrived = Instant::now();
        if response.error_code != 0 {
            conn = None;
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        let Some((code, records)) = records_of(&response, partition) else {
            continue;
        };
        if code != 0 {
            if !is_leadership_error(code) {
                tracing::warn!(partition, code, offset, "fetch error");
            }
            conn = None;
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        if let Some(bytes) = records {
            offset = read_batches(
                bytes,
                offset,
                &plan,
                leader,
                partition,
                arrived,
                &mut recorder,
                consumed,
            );
        }
    }
    recorder
}

/// Records every record of this run in `bytes` at or past `offset`; returns
/// the next offset to fetch.
#[allow(clippy::too_many_arguments)]
fn read_batches(
    mut bytes: Bytes,
    mut offset: i64,
    plan: &ConsumerPlan,
    leader: i32,
    partition: i32,
    arrived: Instant,
    recorder: &mut Recorder,
    consumed: &AtomicU64,
) -> i64 {
    // A fetch may end in a partial batch; decode whole batches only.
    let sets = match RecordBatchDecoder::decode_all(&mut bytes) {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(partition, error = %e, "fetch ended in a partial batch");
            Vec::new()
        }
    };
    let now_ns = arrived.saturating_duration_since(plan.base).as_nanos() as u64;
    for set in sets {
        for r in set.records {
            if r.offset < offset {
                continue;
            }
            offset = r.offset + 1;
            let Some(sent_ns) = r.key.as_deref().and_then(|k| parse_e2e_key(k, plan.nonce)) else {
                continue;
            };
            if sent_ns < plan.measure_from_ns {
                continue;
            }
            let bytes = r.value.as_ref().map(|v| v.len()).unwrap_or(0) as u64;
            recorder.record(
                leader,
                partition,
                Some(Duration::from_nanos(now_ns.saturating_sub(sent_ns))),
                None,
                1,
                bytes,
            );
            consumed.fetch_add(1, Ordering::SeqCst);
        }
    }
    offset
}

/// The e2e view: consumer latency and record counts, with the producer's
/// publish delay of the same (leader, partition) group.
pub fn combine(consumer: &Recorder, producer: &Recorder) -> Recorder {
    let mut out = Recorder::default();
    for (key, g) in &consumer.groups {
        let mut group = Group {
            latency: g.latency.clone(),
            records: g.records,
            bytes: g.bytes,
            ..Group::default()
        };
        if let Some(p) = producer.groups.get(key) {
            group.delay = p.delay.clone();
        }
        out.groups.insert(*key, group);
    }
    out
}
