//! Test harness: starts the real `chronik` binary on a free port in a temp
//! dir and talks Kafka to it over plain TCP with kafka-protocol.
#![allow(dead_code)]

pub mod cluster;
pub mod compaction;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use chronik_bench::batch::{keyed_batch, Layout, Sequenced};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::records::RecordBatchDecoder;

/// A broker process; SIGKILLed on drop if still running.
pub struct Broker {
    pub addr: SocketAddr,
    pub dir: PathBuf,
    child: Option<Child>,
    _tmp: Option<tempfile::TempDir>,
}

/// A port nothing listens on, never handed out twice in this test process
/// (the broker binds with SO_REUSEPORT, so two brokers on one port would
/// both start and split the connections).
fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

impl Broker {
    /// Starts a broker in a fresh temp dir.
    pub fn start() -> Broker {
        Broker::start_with_env(&[])
    }

    /// Starts a broker in a fresh temp dir with extra environment variables (fault injection).
    pub fn start_with_env(env: &[(&str, &str)]) -> Broker {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let mut broker = Broker::spawn(&dir, free_port(), env);
        broker._tmp = Some(tmp);
        broker
    }

    /// Starts a broker in a fresh temp dir with extra `chronik start` flags.
    pub fn start_with_args(args: &[&str]) -> Broker {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let mut broker = Broker::spawn_with(&dir, free_port(), &[], args);
        broker._tmp = Some(tmp);
        broker
    }

    /// Starts a broker in a fresh temp dir with extra environment variables and flags.
    pub fn start_with(env: &[(&str, &str)], args: &[&str]) -> Broker {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let mut broker = Broker::spawn_with(&dir, free_port(), env, args);
        broker._tmp = Some(tmp);
        broker
    }

    /// Starts a broker on `dir` (data in `dir/data`, log in `dir/broker.log`).
    pub fn start_in(dir: &Path, port: u16) -> Broker {
        Broker::spawn(dir, port, &[])
    }

    /// The broker's process id (for /proc).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    fn spawn(dir: &Path, port: u16, env: &[(&str, &str)]) -> Broker {
        Broker::spawn_with(dir, port, env, &[])
    }

    fn spawn_with(dir: &Path, port: u16, env: &[(&str, &str)], args: &[&str]) -> Broker {
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("broker.log"))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_chronik"))
            .arg("start")
            .arg("--data-dir")
            .arg(dir.join("data"))
            .arg("--listen")
            .arg(addr.to_string())
            .args(args)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut broker = Broker {
            addr,
            dir: dir.to_path_buf(),
            child: Some(child),
            _tmp: None,
        };
        broker.wait_ready();
        broker
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("broker exited early: {status}\n{}", self.log());
            }
            if let Ok(mut client) = Client::try_connect(self.addr) {
                if client.try_api_versions().is_ok() {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("broker did not start\n{}", self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("broker.log")).unwrap_or_default()
    }

    pub fn client(&self) -> Client {
        Client::connect(self.addr)
    }

    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().unwrap().try_wait().unwrap().is_none()
    }

    /// SIGTERM and wait for exit.
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("broker did not stop on SIGTERM\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL (a crash) and wait.
    pub fn kill(&mut self) {
        let mut child = self.child.take().unwrap();
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Restarts on the same dir and port.
    pub fn restart(&mut self) {
        if self.child.is_some() {
            assert!(self.stop().success());
        }
        let next = Broker::start_in(&self.dir, self.addr.port());
        self.child = next.child_take();
    }

    /// Starts again on the same dir and port after `kill` or `stop`, with these environment
    /// variables and `chronik start` flags (a crash test restarts with the flags it started with).
    pub fn start_again(&mut self, env: &[(&str, &str)], args: &[&str]) {
        assert!(self.child.is_none(), "the broker is still running");
        let next = Broker::spawn_with(&self.dir, self.addr.port(), env, args);
        self.child = next.child_take();
    }

    fn child_take(mut self) -> Option<Child> {
        self.child.take()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A blocking Kafka connection.
pub struct Client {
    pub stream: TcpStream,
    correlation_id: i32,
}

impl Client {
    pub fn try_connect(addr: SocketAddr) -> std::io::Result<Client> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        stream.set_nodelay(true)?;
        Ok(Client {
            stream,
            correlation_id: 0,
        })
    }

    pub fn connect(addr: SocketAddr) -> Client {
        Client::try_connect(addr).unwrap()
    }

    fn try_api_versions(&mut self) -> std::io::Result<()> {
        let frame = self.encode(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default());
        self.stream.write_all(&frame)?;
        self.read_frame().map(|_| ())
    }

    /// Encodes a request frame (length prefix included) with the next correlation id.
    pub fn encode<R: Encodable>(&mut self, api_key: ApiKey, version: i16, request: &R) -> Vec<u8> {
        self.correlation_id += 1;
        let mut header = RequestHeader::default();
        header.request_api_key = api_key as i16;
        header.request_api_version = version;
        header.correlation_id = self.correlation_id;
        header.client_id = Some(StrBytes::from_static_str("chronik-tests"));
        let mut body = BytesMut::new();
        header
            .encode(&mut body, api_key.request_header_version(version))
            .unwrap();
        request.encode(&mut body, version).unwrap();
        let mut frame = Vec::with_capacity(body.len() + 4);
        frame.put_u32(body.len() as u32);
        frame.extend_from_slice(&body);
        frame
    }

    pub fn last_correlation_id(&self) -> i32 {
        self.correlation_id
    }

    /// Reads one response frame (without its length prefix).
    pub fn read_frame(&mut self) -> std::io::Result<Bytes> {
        let mut len = [0u8; 4];
        self.stream.read_exact(&mut len)?;
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        self.stream.read_exact(&mut body)?;
        Ok(Bytes::from(body))
    }

    /// Reads a response and decodes its header and body at `version`.
    pub fn read_response<T: Decodable>(&mut self, api_key: ApiKey, version: i16) -> (i32, T) {
        let mut frame = self.read_frame().expect("response frame");
        let header =
            ResponseHeader::decode(&mut frame, api_key.response_header_version(version)).unwrap();
        let body = T::decode(&mut frame, version).unwrap();
        assert_eq!(
            frame.remaining(),
            0,
            "{api_key:?} v{version}: stray bytes after the response"
        );
        (header.correlation_id, body)
    }

    /// Sends a request and returns its response.
    pub fn call<R: Encodable, T: Decodable>(
        &mut self,
        api_key: ApiKey,
        version: i16,
        request: &R,
    ) -> T {
        let frame = self.encode(api_key, version, request);
        self.stream.write_all(&frame).unwrap();
        let (correlation_id, body) = self.read_response(api_key, version);
        assert_eq!(correlation_id, self.correlation_id);
        body
    }

    /// True once the broker closed this connection (reads EOF or reset).
    pub fn is_closed_by_peer(&mut self) -> bool {
        let mut buf = [0u8; 1];
        matches!(self.stream.read(&mut buf), Ok(0) | Err(_))
    }

    pub fn metadata(&mut self, topics: &[&str]) -> MetadataResponse {
        let mut request = MetadataRequest::default();
        request.topics = Some(
            topics
                .iter()
                .map(|t| {
                    let mut topic = MetadataRequestTopic::default();
                    topic.name = Some(TopicName(StrBytes::from_string(t.to_string())));
                    topic
                })
                .collect(),
        );
        request.allow_auto_topic_creation = true;
        self.call(ApiKey::Metadata, 12, &request)
    }

    pub fn create_topic(&mut self, name: &str, partitions: i32) -> CreateTopicsResponse {
        let mut topic = create_topics_request::CreatableTopic::default();
        topic.name = TopicName(StrBytes::from_string(name.to_string()));
        topic.num_partitions = partitions;
        topic.replication_factor = 1;
        let mut request = CreateTopicsRequest::default();
        request.topics = vec![topic];
        request.timeout_ms = 10_000;
        self.call(ApiKey::CreateTopics, 7, &request)
    }

    /// Produces one batch to each (partition, records) and returns
    /// (partition, error code, base offset) in request order.
    pub fn produce(
        &mut self,
        topic: &str,
        acks: i16,
        parts: &[(i32, Bytes)],
    ) -> Vec<(i32, i16, i64)> {
        let request = produce_request(topic, acks, parts);
        let response: ProduceResponse = self.call(ApiKey::Produce, 9, &request);
        response.responses[0]
            .partition_responses
            .iter()
            .map(|p| (p.index, p.error_code, p.base_offset))
            .collect()
    }

    pub fn fetch(
        &mut self,
        topic: &str,
        partition: i32,
        offset: i64,
        max_bytes: i32,
    ) -> fetch_response::PartitionData {
        let request = fetch_request(&[(topic, partition, offset, max_bytes)], 0, 1, 50 << 20);
        let mut response: FetchResponse = self.call(ApiKey::Fetch, 12, &request);
        assert_eq!(response.error_code, 0);
        response.responses.remove(0).partitions.remove(0)
    }

    /// Every record value of a partition from `offset`, fetching until the high watermark.
    pub fn read_all(&mut self, topic: &str, partition: i32, mut offset: i64) -> Vec<(i64, Bytes)> {
        let mut out = Vec::new();
        loop {
            let data = self.fetch(topic, partition, offset, 1 << 20);
            assert_eq!(data.error_code, 0, "fetch {topic}-{partition}@{offset}");
            let records = decode_records(data.records.unwrap_or_default());
            if records.is_empty() {
                assert!(offset >= data.high_watermark);
                return out;
            }
            for (o, v) in records {
                if o >= offset {
                    out.push((o, v));
                }
            }
            offset = out.last().map_or(offset, |(o, _)| o + 1);
        }
    }
}

pub fn produce_request(topic: &str, acks: i16, parts: &[(i32, Bytes)]) -> ProduceRequest {
    let mut topic_data = TopicProduceData::default();
    topic_data.name = TopicName(StrBytes::from_string(topic.to_string()));
    topic_data.partition_data = parts
        .iter()
        .map(|(index, records)| {
            let mut p = PartitionProduceData::default();
            p.index = *index;
            p.records = Some(records.clone());
            p
        })
        .collect();
    let mut request = ProduceRequest::default();
    request.acks = acks;
    request.timeout_ms = 10_000;
    request.topic_data = vec![topic_data];
    request
}

pub fn fetch_request(
    parts: &[(&str, i32, i64, i32)],
    max_wait_ms: i32,
    min_bytes: i32,
    max_bytes: i32,
) -> FetchRequest {
    let mut request = FetchRequest::default();
    request.replica_id = BrokerId(-1);
    request.max_wait_ms = max_wait_ms;
    request.min_bytes = min_bytes;
    request.max_bytes = max_bytes;
    request.session_epoch = -1;
    for (topic, partition, offset, partition_max_bytes) in parts {
        let mut p = FetchPartition::default();
        p.partition = *partition;
        p.fetch_offset = *offset;
        p.partition_max_bytes = *partition_max_bytes;
        match request
            .topics
            .iter_mut()
            .find(|t| t.topic.0.as_str() == *topic)
        {
            Some(t) => t.partitions.push(p),
            None => {
                let mut t = FetchTopic::default();
                t.topic = TopicName(StrBytes::from_string(topic.to_string()));
                t.partitions.push(p);
                request.topics.push(t);
            }
        }
    }
    request
}

/// The idempotence fields of a batch header: producer id, producer epoch and the sequence of the
/// batch's first record (each further record takes the next sequence).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProducerFields {
    pub id: i64,
    pub epoch: i16,
    pub base_sequence: i32,
}

impl ProducerFields {
    /// A plain (non-idempotent) producer's batch: no producer id, no epoch.
    pub const NONE: ProducerFields = ProducerFields {
        id: -1,
        epoch: -1,
        base_sequence: 0,
    };
}

/// One uncompressed magic-2 batch of `values` (timestamps `timestamp + i`), from no producer.
pub fn batch(values: &[&[u8]], timestamp: i64) -> Bytes {
    producer_batch(values, timestamp, ProducerFields::NONE)
}

/// `batch` written by an idempotent producer: its id and epoch in the header, the records numbered
/// from `producer.base_sequence`.
pub fn producer_batch(values: &[&[u8]], timestamp: i64, producer: ProducerFields) -> Bytes {
    let records = values.iter().enumerate().map(|(i, v)| {
        (
            Some(Bytes::from(format!("key-{i}"))),
            Some(Bytes::copy_from_slice(v)),
        )
    });
    let layout = Layout {
        timestamp,
        timestamp_step: 1,
        producer: Some(Sequenced {
            producer_id: producer.id,
            epoch: producer.epoch,
            base_sequence: producer.base_sequence,
        }),
        ..Layout::default()
    };
    keyed_batch(records, &layout).expect("encoding a batch")
}

/// (offset, value) of every record in fetched bytes.
pub fn decode_records(mut bytes: Bytes) -> Vec<(i64, Bytes)> {
    RecordBatchDecoder::decode_all(&mut bytes)
        .unwrap()
        .into_iter()
        .flat_map(|set| set.records)
        .map(|r| (r.offset, r.value.unwrap_or_default()))
        .collect()
}

/// Sizes of the batches in fetched bytes.
pub fn batch_sizes(bytes: &[u8]) -> Vec<usize> {
    let mut sizes = Vec::new();
    let mut pos = 0;
    while pos + 12 <= bytes.len() {
        let len = i32::from_be_bytes(bytes[pos + 8..pos + 12].try_into().unwrap()) as usize + 12;
        sizes.push(len);
        pos += len;
    }
    sizes
}
