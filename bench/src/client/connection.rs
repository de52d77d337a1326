//! One blocking request/response connection, for the control traffic of a
//! benchmark (ApiVersions, Metadata, CreateTopics, ListOffsets, Fetch).

use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    ApiVersionsRequest, ApiVersionsResponse, BrokerId, CreateTopicsRequest, FetchRequest,
    FetchResponse, InitProducerIdRequest, ListOffsetsRequest, MetadataRequest, MetadataResponse,
    ProducerId, TopicName,
};
use kafka_protocol::protocol::{Request, StrBytes};
use kafka_protocol::ResponseError;

use super::wire::{self, api_key};
use super::{ClientError, Versions};

/// A partition and its latest offset, or the error code the broker gave it.
pub type PartitionOffset = (i32, Result<i64, i16>);

/// A connection that sends one request and waits for its response.
pub struct Connection {
    stream: TcpStream,
    next_correlation: i32,
    timeout: Duration,
    /// Versions negotiated with this broker at connect time.
    pub versions: Versions,
}

impl Connection {
    /// Connects and negotiates API versions. `timeout` bounds the connect and
    /// every later response.
    pub fn connect(addr: &str, timeout: Duration) -> Result<Connection, ClientError> {
        let stream = connect_stream(addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        let mut conn = Connection {
            stream,
            next_correlation: 1,
            timeout,
            versions: Versions::default(),
        };
        conn.versions = conn.negotiate()?;
        Ok(conn)
    }

    /// The underlying stream, for a connection that goes on pipelining.
    pub fn into_stream(self) -> TcpStream {
        self.stream
    }

    fn negotiate(&mut self) -> Result<Versions, ClientError> {
        let request = ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str(wire::CLIENT_ID))
            .with_client_software_version(StrBytes::from_static_str(env!("CARGO_PKG_VERSION")));
        // v3 first; a broker that does not know it answers in the v0 format
        // with UNSUPPORTED_VERSION, so ask again with v0.
        let v3: Result<ApiVersionsResponse, _> = self.request(&request, 3);
        let response = match v3 {
            Ok(r) if r.error_code == 0 => r,
            _ => {
                let r: ApiVersionsResponse = self.request(&request, 0)?;
                if r.error_code != 0 {
                    return Err(kafka_error("ApiVersions", r.error_code));
                }
                r
            }
        };
        Ok(Versions::negotiate(&response))
    }

    /// Sends `request` at `version` and returns its decoded response.
    pub fn request<R: Request>(
        &mut self,
        request: &R,
        version: i16,
    ) -> Result<R::Response, ClientError> {
        let correlation = self.next_correlation;
        self.next_correlation = self.next_correlation.wrapping_add(1);
        let frame = wire::encode_request(request, version, correlation)?;
        wire::write_frame(&mut self.stream, &frame)?;
        let key = api_key::<R>()?;
        loop {
            let frame = wire::read_frame(&mut self.stream).map_err(|e| match e {
                ClientError::Io(io)
                    if matches!(
                        io.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    ClientError::Other(format!(
                        "no answer to {key:?} v{version} within {:?}",
                        self.timeout
                    ))
                }
                other => other,
            })?;
            let mut body = frame.ok_or(ClientError::Closed)?;
            let got = wire::decode_response_header(&mut body, key, version)?;
            if got == correlation {
                return wire::decode_response::<R>(&mut body, version);
            }
            if got.wrapping_sub(correlation) > 0 {
                return Err(ClientError::Protocol(format!(
                    "response with correlation id {got}, expected {correlation}"
                )));
            }
            // An older, abandoned answer (after a timeout): skip it.
        }
    }

    /// Metadata for `topics` (all topics when `None`), never auto-creating.
    pub fn metadata(&mut self, topics: Option<&[&str]>) -> Result<MetadataResponse, ClientError> {
        let version = Versions::require(self.versions.metadata, "Metadata")?;
        let topics = topics.map(|names| {
            names
                .iter()
                .map(|n| MetadataRequestTopic::default().with_name(Some(topic_name(n))))
                .collect()
        });
        let request = MetadataRequest::default()
            .with_topics(topics)
            .with_allow_auto_topic_creation(false);
        self.request(&request, version)
    }

    /// Creates `topic`; an existing topic is not an error.
    pub fn create_topic(
        &mut self,
        topic: &str,
        partitions: i32,
        replication_factor: i16,
        timeout: Duration,
    ) -> Result<(), ClientError> {
        let version = Versions::require(self.versions.create_topics, "CreateTopics")?;
        let request = CreateTopicsRequest::default()
            .with_topics(vec![CreatableTopic::default()
                .with_name(topic_name(topic))
                .with_num_partitions(partitions)
                .with_replication_factor(replication_factor)])
            .with_timeout_ms(duration_ms(timeout));
        let response = self.request(&request, version)?;
        for result in response.topics {
            let code = result.error_code;
            if code != 0 && code != ResponseError::TopicAlreadyExists.code() {
                return Err(kafka_error(&format!("CreateTopics {topic}"), code));
            }
        }
        Ok(())
    }

    /// A producer id and epoch for an idempotent producer (no transactional id).
    pub fn init_producer_id(&mut self, timeout: Duration) -> Result<(i64, i16), ClientError> {
        let version = Versions::require(self.versions.init_producer_id, "InitProducerId")?;
        // The codec's default transactional id is "" (not null): an idempotent producer has none.
        let request = InitProducerIdRequest::default()
            .with_transactional_id(None)
            .with_transaction_timeout_ms(duration_ms(timeout))
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1);
        let response = self.request(&request, version)?;
        if response.error_code != 0 {
            return Err(kafka_error("InitProducerId", response.error_code));
        }
        Ok((response.producer_id.0, response.producer_epoch))
    }

    /// The latest offset of each partition (`Err(code)` for a partition the
    /// broker refused).
    pub fn latest_offsets(
        &mut self,
        topic: &str,
        partitions: &[i32],
    ) -> Result<Vec<PartitionOffset>, ClientError> {
        let version = Versions::require(self.versions.list_offsets, "ListOffsets")?;
        let request = ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_topics(vec![ListOffsetsTopic::default()
                .with_name(topic_name(topic))
                .with_partitions(
                    partitions
                        .iter()
                        .map(|&p| {
                            ListOffsetsPartition::default()
                                .with_partition_index(p)
                                .with_current_leader_epoch(-1)
                                .with_timestamp(-1)
                        })
                        .collect(),
                )]);
        let response = self.request(&request, version)?;
        let mut out = Vec::new();
        for t in response.topics {
            for p in t.partitions {
                let value = if p.error_code == 0 {
                    Ok(p.offset)
                } else {
                    Err(p.error_code)
                };
                out.push((p.partition_index, value));
            }
        }
        Ok(out)
    }

    /// One Fetch of `partition` from `offset`, long-polling up to `max_wait`.
    pub fn fetch(
        &mut self,
        topic: &str,
        partition: i32,
        offset: i64,
        max_wait: Duration,
        max_bytes: i32,
    ) -> Result<FetchResponse, ClientError> {
        let version = Versions::require(self.versions.fetch, "Fetch")?;
        let request = FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(duration_ms(max_wait))
            .with_min_bytes(1)
            .with_max_bytes(max_bytes)
            .with_isolation_level(0)
            .with_session_id(0)
            .with_session_epoch(-1)
            .with_topics(vec![FetchTopic::default()
                .with_topic(topic_name(topic))
                .with_partitions(vec![FetchPartition::default()
                    .with_partition(partition)
                    .with_current_leader_epoch(-1)
                    .with_fetch_offset(offset)
                    .with_last_fetched_epoch(-1)
                    .with_log_start_offset(-1)
                    .with_partition_max_bytes(max_bytes)])]);
        self.request(&request, version)
    }
}

/// Opens a TCP connection with TCP_NODELAY to the first address that answers.
pub fn connect_stream(addr: &str, timeout: Duration) -> Result<TcpStream, ClientError> {
    let mut last = None;
    for sock in addr.to_socket_addrs()? {
        match TcpStream::connect_timeout(&sock, timeout) {
            Ok(stream) => {
                stream.set_nodelay(true)?;
                return Ok(stream);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(match last {
        Some(e) => ClientError::Io(e),
        None => ClientError::Other(format!("{addr} resolves to no address")),
    })
}

/// A topic name as the protocol types want it.
pub fn topic_name(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_string()))
}

/// A Kafka error with context.
pub fn kafka_error(context: &str, code: i16) -> ClientError {
    ClientError::Kafka {
        context: context.to_string(),
        code,
        name: super::error_name(code),
    }
}

fn duration_ms(d: Duration) -> i32 {
    i32::try_from(d.as_millis()).unwrap_or(i32::MAX)
}

/// The record bytes of a fetch response partition, if any.
pub fn records_of(response: &FetchResponse, partition: i32) -> Option<(i16, Option<Bytes>)> {
    response
        .responses
        .iter()
        .flat_map(|t| t.partitions.iter())
        .find(|p| p.partition_index == partition)
        .map(|p| (p.error_code, p.records.clone()))
}
