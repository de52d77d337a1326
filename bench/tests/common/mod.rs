//! A fake Kafka cluster for testing the benchmark harness: a few brokers on
//! loopback that speak just enough of the protocol (ApiVersions, Metadata,
//! CreateTopics, Produce, ListOffsets, Fetch) with `kafka-protocol`, keep
//! batches in memory, and misbehave on purpose: stall, or move a
//! partition's leadership and answer NOT_LEADER_OR_FOLLOWER.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{decode_request_header_from_buffer, Decodable, Encodable, StrBytes};
use kafka_protocol::records::RecordBatchDecoder;

/// A stall: the broker stops reading and answering for `duration` when the
/// `at_request`-th produce request (counted over the cluster) arrives.
#[derive(Debug, Clone, Copy)]
pub struct Stall {
    pub at_request: u64,
    pub duration: Duration,
}

/// A leadership change: once `partition` has `after_batches` batches, its
/// leader becomes `to`; the old leader answers NOT_LEADER_OR_FOLLOWER.
#[derive(Debug, Clone, Copy)]
pub struct LeaderMove {
    pub partition: i32,
    pub after_batches: usize,
    pub to: i32,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Behaviour {
    pub stall: Option<Stall>,
    pub leader_move: Option<LeaderMove>,
}

#[derive(Debug, Default)]
pub struct PartitionState {
    pub leader: i32,
    pub epoch: i32,
    /// (base offset, batch with its base offset patched, record count).
    pub batches: Vec<(i64, Bytes, i64)>,
    pub end: i64,
}

#[derive(Debug, Default)]
pub struct State {
    pub brokers: Vec<(i32, u16)>,
    pub topics: BTreeMap<String, Vec<PartitionState>>,
    pub behaviour: Behaviour,
    pub produce_requests: u64,
    pub not_leader_answers: u64,
    pub stalled: bool,
}

/// A running fake cluster.
pub struct FakeCluster {
    pub state: Arc<Mutex<State>>,
}

impl FakeCluster {
    /// Starts `n` brokers (ids 1..=n) on free loopback ports.
    pub fn start(n: i32, behaviour: Behaviour) -> FakeCluster {
        let state = Arc::new(Mutex::new(State {
            behaviour,
            ..State::default()
        }));
        for id in 1..=n {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let port = listener.local_addr().unwrap().port();
            state.lock().unwrap().brokers.push((id, port));
            let state = state.clone();
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    let Ok(stream) = stream else { continue };
                    let state = state.clone();
                    std::thread::spawn(move || serve(id, stream, state));
                }
            });
        }
        FakeCluster { state }
    }

    /// Serves as broker `id` alone on `listener`, on this thread, forever.
    pub fn serve_alone(id: i32, listener: TcpListener) {
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State {
            brokers: vec![(id, port)],
            ..State::default()
        }));
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let state = state.clone();
            std::thread::spawn(move || serve(id, stream, state));
        }
    }

    /// `host:port` of broker 1.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.state.lock().unwrap().brokers[0].1)
    }

    /// Records stored in each partition of `topic`.
    pub fn stored_records(&self, topic: &str) -> Vec<i64> {
        let s = self.state.lock().unwrap();
        s.topics
            .get(topic)
            .map(|ps| ps.iter().map(|p| p.end).collect())
            .unwrap_or_default()
    }
}

fn serve(id: i32, mut stream: TcpStream, state: Arc<Mutex<State>>) {
    stream.set_nodelay(true).unwrap();
    loop {
        let mut len = [0u8; 4];
        if stream.read_exact(&mut len).is_err() {
            return;
        }
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        if stream.read_exact(&mut body).is_err() {
            return;
        }
        let mut body = Bytes::from(body);
        assert!(body.len() >= 4, "request shorter than a header");
        let header = decode_request_header_from_buffer(&mut body).unwrap();
        let key = ApiKey::try_from(header.request_api_key).unwrap();
        let version = header.request_api_version;
        let response: Option<ResponseKind> = match key {
            ApiKey::ApiVersions => Some(ResponseKind::ApiVersions(api_versions())),
            ApiKey::Metadata => {
                let req = MetadataRequest::decode(&mut body, version).unwrap();
                Some(ResponseKind::Metadata(metadata(&state, req)))
            }
            ApiKey::CreateTopics => {
                let req = CreateTopicsRequest::decode(&mut body, version).unwrap();
                Some(ResponseKind::CreateTopics(create_topics(&state, req)))
            }
            ApiKey::Produce => {
                let req = ProduceRequest::decode(&mut body, version).unwrap();
                maybe_stall(&state);
                let resp = produce(id, &state, &req);
                (req.acks != 0).then_some(ResponseKind::Produce(resp))
            }
            ApiKey::ListOffsets => {
                let req = ListOffsetsRequest::decode(&mut body, version).unwrap();
                Some(ResponseKind::ListOffsets(list_offsets(&state, req)))
            }
            ApiKey::Fetch => {
                let req = FetchRequest::decode(&mut body, version).unwrap();
                Some(ResponseKind::Fetch(fetch(id, &state, req)))
            }
            other => panic!("fake broker: unexpected {other:?}"),
        };
        let Some(response) = response else { continue };
        let mut out = BytesMut::new();
        out.put_u32(0);
        ResponseHeader::default()
            .with_correlation_id(header.correlation_id)
            .encode(&mut out, key.response_header_version(version))
            .unwrap();
        response.encode(&mut out, version).unwrap();
        let n = (out.len() - 4) as u32;
        out[..4].copy_from_slice(&n.to_be_bytes());
        if stream.write_all(&out).is_err() {
            return;
        }
    }
}

fn api_versions() -> ApiVersionsResponse {
    let r = |k: ApiKey, lo, hi| {
        ApiVersion::default()
            .with_api_key(k as i16)
            .with_min_version(lo)
            .with_max_version(hi)
    };
    ApiVersionsResponse::default().with_api_keys(vec![
        r(ApiKey::ApiVersions, 0, 3),
        r(ApiKey::Metadata, 1, 12),
        r(ApiKey::CreateTopics, 2, 7),
        r(ApiKey::Produce, 3, 12),
        r(ApiKey::ListOffsets, 1, 9),
        r(ApiKey::Fetch, 4, 12),
    ])
}

fn maybe_stall(state: &Mutex<State>) {
    let pause = {
        let mut s = state.lock().unwrap();
        s.produce_requests += 1;
        match s.behaviour.stall {
            Some(st) if !s.stalled && s.produce_requests >= st.at_request => {
                s.stalled = true;
                Some(st.duration)
            }
            _ => None,
        }
    };
    if let Some(d) = pause {
        std::thread::sleep(d);
    }
}

fn name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

fn metadata(state: &Mutex<State>, req: MetadataRequest) -> MetadataResponse {
    let s = state.lock().unwrap();
    let brokers = s
        .brokers
        .iter()
        .map(|(id, port)| {
            MetadataResponseBroker::default()
                .with_node_id(BrokerId(*id))
                .with_host(StrBytes::from_static_str("127.0.0.1"))
                .with_port(i32::from(*port))
        })
        .collect();
    let names: Vec<String> = match req.topics {
        None => s.topics.keys().cloned().collect(),
        Some(ts) => ts
            .iter()
            .filter_map(|t| t.name.as_ref().map(|n| n.0.to_string()))
            .collect(),
    };
    let topics = names
        .iter()
        .map(|n| match s.topics.get(n) {
            None => MetadataResponseTopic::default()
                .with_name(Some(name(n)))
                .with_error_code(3),
            Some(parts) => MetadataResponseTopic::default()
                .with_name(Some(name(n)))
                .with_partitions(
                    parts
                        .iter()
                        .enumerate()
                        .map(|(i, p)| {
                            MetadataResponsePartition::default()
                                .with_partition_index(i as i32)
                                .with_leader_id(BrokerId(p.leader))
                                .with_leader_epoch(p.epoch)
                                .with_replica_nodes(vec![BrokerId(p.leader)])
                                .with_isr_nodes(vec![BrokerId(p.leader)])
                        })
                        .collect(),
                ),
        })
        .collect();
    MetadataResponse::default()
        .with_brokers(brokers)
        .with_controller_id(BrokerId(1))
        .with_topics(topics)
}

fn create_topics(state: &Mutex<State>, req: CreateTopicsRequest) -> CreateTopicsResponse {
    let mut s = state.lock().unwrap();
    let ids: Vec<i32> = s.brokers.iter().map(|b| b.0).collect();
    let mut results = Vec::new();
    for t in req.topics {
        let n = t.name.0.to_string();
        let code = match s.topics.entry(n) {
            std::collections::btree_map::Entry::Occupied(_) => 36,
            std::collections::btree_map::Entry::Vacant(v) => {
                v.insert(
                    (0..t.num_partitions)
                        .map(|p| PartitionState {
                            leader: ids[p as usize % ids.len()],
                            ..PartitionState::default()
                        })
                        .collect(),
                );
                0
            }
        };
        results.push(
            CreatableTopicResult::default()
                .with_name(t.name)
                .with_error_code(code),
        );
    }
    CreateTopicsResponse::default().with_topics(results)
}

fn produce(id: i32, state: &Mutex<State>, req: &ProduceRequest) -> ProduceResponse {
    let mut s = state.lock().unwrap();
    let behaviour = s.behaviour;
    let mut topics = Vec::new();
    for t in &req.topic_data {
        let mut parts = Vec::new();
        for pd in &t.partition_data {
            let mut resp = PartitionProduceResponse::default().with_index(pd.index);
            let Some(p) = s
                .topics
                .get_mut(t.name.0.as_str())
                .and_then(|ps| ps.get_mut(pd.index as usize))
            else {
                parts.push(resp.with_error_code(3));
                continue;
            };
            if p.leader != id {
                parts.push(resp.with_error_code(6));
                s.not_leader_answers += 1;
                continue;
            }
            let mut records = pd.records.clone().unwrap();
            let count: i64 = RecordBatchDecoder::decode_batch_info(&mut records.clone())
                .unwrap()
                .iter()
                .map(|b| i64::from(b.record_count))
                .sum();
            let base = p.end;
            let mut patched = BytesMut::from(&records.split_to(records.len())[..]);
            patched[..8].copy_from_slice(&base.to_be_bytes());
            p.batches.push((base, patched.freeze(), count));
            p.end += count;
            resp = resp.with_base_offset(base);
            if let Some(m) = behaviour.leader_move {
                if m.partition == pd.index && p.batches.len() >= m.after_batches && p.leader != m.to
                {
                    p.leader = m.to;
                    p.epoch += 1;
                }
            }
            parts.push(resp);
        }
        topics.push(
            TopicProduceResponse::default()
                .with_name(t.name.clone())
                .with_partition_responses(parts),
        );
    }
    ProduceResponse::default().with_responses(topics)
}

fn list_offsets(state: &Mutex<State>, req: ListOffsetsRequest) -> ListOffsetsResponse {
    let s = state.lock().unwrap();
    let topics = req
        .topics
        .iter()
        .map(|t| {
            let parts = t
                .partitions
                .iter()
                .map(|p| {
                    let end = s
                        .topics
                        .get(t.name.0.as_str())
                        .and_then(|ps| ps.get(p.partition_index as usize))
                        .map(|ps| ps.end);
                    match end {
                        Some(end) => ListOffsetsPartitionResponse::default()
                            .with_partition_index(p.partition_index)
                            .with_offset(end)
                            .with_timestamp(-1),
                        None => ListOffsetsPartitionResponse::default()
                            .with_partition_index(p.partition_index)
                            .with_error_code(3),
                    }
                })
                .collect();
            ListOffsetsTopicResponse::default()
                .with_name(t.name.clone())
                .with_partitions(parts)
        })
        .collect();
    ListOffsetsResponse::default().with_topics(topics)
}

fn fetch(id: i32, state: &Mutex<State>, req: FetchRequest) -> FetchResponse {
    let collect = || {
        let s = state.lock().unwrap();
        let mut any = false;
        let topics: Vec<FetchableTopicResponse> = req
            .topics
            .iter()
            .map(|t| {
                let parts = t
                    .partitions
                    .iter()
                    .map(|fp| {
                        let mut pd = PartitionData::default().with_partition_index(fp.partition);
                        let Some(p) = s
                            .topics
                            .get(t.topic.0.as_str())
                            .and_then(|ps| ps.get(fp.partition as usize))
                        else {
                            return pd.with_error_code(3);
                        };
                        if p.leader != id {
                            return pd.with_error_code(6);
                        }
                        let mut out = BytesMut::new();
                        for (base, batch, count) in &p.batches {
                            if base + count > fp.fetch_offset {
                                out.extend_from_slice(batch);
                            }
                        }
                        any |= !out.is_empty();
                        pd = pd.with_high_watermark(p.end).with_last_stable_offset(p.end);
                        pd.with_records(Some(out.freeze()))
                    })
                    .collect();
                FetchableTopicResponse::default()
                    .with_topic(t.topic.clone())
                    .with_partitions(parts)
            })
            .collect();
        (any, topics)
    };
    let (mut any, mut topics) = collect();
    if !any {
        std::thread::sleep(Duration::from_millis(20));
        (any, topics) = collect();
    }
    let _ = any;
    FetchResponse::default().with_responses(topics)
}
