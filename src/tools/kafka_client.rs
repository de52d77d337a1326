//! A minimal blocking Kafka client for the operator tools: one connection,
//! one request at a time, kafka-protocol for every message.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, RequestHeader, ResponseHeader,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

/// Responses larger than this are refused (a misdirected port, not Kafka).
const MAX_RESPONSE: usize = 64 << 20;

/// One blocking connection to a Kafka broker.
pub struct KafkaClient {
    stream: TcpStream,
    correlation_id: i32,
    /// (api key, min, max) the broker advertised.
    versions: Vec<(i16, i16, i16)>,
}

impl KafkaClient {
    /// Connects to `address` (HOST:PORT) and asks which API versions it serves.
    pub fn connect(address: &str, timeout: Duration) -> Result<KafkaClient> {
        let addr = address
            .to_socket_addrs()
            .with_context(|| format!("resolving {address}"))?
            .next()
            .with_context(|| format!("{address} resolves to no address"))?;
        let stream = TcpStream::connect_timeout(&addr, timeout)
            .with_context(|| format!("connecting to {address}"))?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        let mut client = KafkaClient {
            stream,
            correlation_id: 0,
            versions: Vec::new(),
        };
        // v0: every broker answers it, whatever it supports.
        let response: ApiVersionsResponse =
            client.call(ApiKey::ApiVersions, 0, &ApiVersionsRequest::default())?;
        if response.error_code != 0 {
            bail!("ApiVersions failed with error code {}", response.error_code);
        }
        client.versions = response
            .api_keys
            .iter()
            .map(|k| (k.api_key, k.min_version, k.max_version))
            .collect();
        Ok(client)
    }

    /// The highest version of `api_key` both sides speak, at most `ours`
    /// and at least `min`; None if there is none.
    pub fn version(&self, api_key: ApiKey, min: i16, ours: i16) -> Option<i16> {
        let codec = api_key.valid_versions();
        self.versions
            .iter()
            .find(|(key, _, _)| *key == api_key as i16)
            .map(|(_, lo, hi)| {
                (
                    *lo.max(&min).max(&codec.min),
                    *hi.min(&ours).min(&codec.max),
                )
            })
            .filter(|(lo, hi)| lo <= hi)
            .map(|(_, hi)| hi)
    }

    /// Sends one request and reads its response.
    pub fn call<Req: Encodable, Resp: Decodable>(
        &mut self,
        api_key: ApiKey,
        version: i16,
        request: &Req,
    ) -> Result<Resp> {
        self.correlation_id += 1;
        let mut header = RequestHeader::default();
        header.request_api_key = api_key as i16;
        header.request_api_version = version;
        header.correlation_id = self.correlation_id;
        header.client_id = Some(StrBytes::from_static_str("chronik-cli"));
        let mut body = BytesMut::new();
        header.encode(&mut body, api_key.request_header_version(version))?;
        request.encode(&mut body, version)?;
        let mut frame = Vec::with_capacity(body.len() + 4);
        frame.put_u32(u32::try_from(body.len()).context("request too large")?);
        frame.extend_from_slice(&body);
        self.stream
            .write_all(&frame)
            .with_context(|| format!("sending {api_key:?}"))?;

        let mut len = [0u8; 4];
        self.stream
            .read_exact(&mut len)
            .with_context(|| format!("reading the {api_key:?} response"))?;
        let len = u32::from_be_bytes(len) as usize;
        if len > MAX_RESPONSE {
            bail!("{api_key:?} response of {len} bytes: not a Kafka broker?");
        }
        let mut payload = vec![0u8; len];
        self.stream
            .read_exact(&mut payload)
            .with_context(|| format!("reading the {api_key:?} response"))?;
        let mut payload = Bytes::from(payload);
        let header =
            ResponseHeader::decode(&mut payload, api_key.response_header_version(version))?;
        if header.correlation_id != self.correlation_id {
            bail!(
                "response correlation id {} does not match request {}",
                header.correlation_id,
                self.correlation_id
            );
        }
        let response = Resp::decode(&mut payload, version)
            .with_context(|| format!("decoding the {api_key:?} v{version} response"))?;
        if payload.has_remaining() {
            bail!(
                "{api_key:?} v{version} response has {} stray bytes",
                payload.remaining()
            );
        }
        Ok(response)
    }
}
