//! Kafka framing over a blocking TCP stream: a 4-byte big-endian length, then
//! a request or response header and body.

use std::io::{self, Read, Write};
use std::net::TcpStream;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, Request, StrBytes};

use super::ClientError;

/// Largest response frame the client accepts; a larger length prefix means a
/// broken or hostile peer, not a response to read.
pub const MAX_FRAME: usize = 256 * 1024 * 1024;

/// The client id every bench connection sends.
pub const CLIENT_ID: &str = "chronik-bench";

/// Encodes `request` with its header into one length-prefixed frame.
pub fn encode_request<R: Request>(
    request: &R,
    version: i16,
    correlation_id: i32,
) -> Result<Bytes, ClientError> {
    let key = api_key::<R>()?;
    let header = RequestHeader::default()
        .with_request_api_key(R::KEY)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str(CLIENT_ID)));
    let mut buf = BytesMut::with_capacity(64);
    buf.put_u32(0);
    header
        .encode(&mut buf, key.request_header_version(version))
        .map_err(|e| ClientError::Encode(e.to_string()))?;
    request
        .encode(&mut buf, version)
        .map_err(|e| ClientError::Encode(e.to_string()))?;
    let len =
        u32::try_from(buf.len() - 4).map_err(|_| ClientError::Encode("frame too large".into()))?;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    Ok(buf.freeze())
}

/// The [`ApiKey`] of a request type.
pub fn api_key<R: Request>() -> Result<ApiKey, ClientError> {
    ApiKey::try_from(R::KEY).map_err(|_| ClientError::Encode(format!("unknown api key {}", R::KEY)))
}

/// Reads one length-prefixed frame; `Ok(None)` on a clean end of stream.
pub fn read_frame(stream: &mut TcpStream) -> Result<Option<Bytes>, ClientError> {
    let mut len = [0u8; 4];
    match stream.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(ClientError::Io(e)),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(ClientError::Protocol(format!(
            "response frame of {len} bytes"
        )));
    }
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body)?;
    Ok(Some(Bytes::from(body)))
}

/// Splits a response frame into its correlation id and body, given the
/// request it answers (the header version depends on it).
pub fn decode_response_header(
    frame: &mut Bytes,
    key: ApiKey,
    version: i16,
) -> Result<i32, ClientError> {
    if frame.remaining() < 4 {
        return Err(ClientError::Protocol(
            "response shorter than its header".into(),
        ));
    }
    let header = ResponseHeader::decode(frame, key.response_header_version(version))
        .map_err(|e| ClientError::Protocol(format!("response header: {e}")))?;
    Ok(header.correlation_id)
}

/// Decodes a response body of `R`.
pub fn decode_response<R: Request>(
    frame: &mut Bytes,
    version: i16,
) -> Result<R::Response, ClientError> {
    R::Response::decode(frame, version).map_err(|e| {
        ClientError::Protocol(format!(
            "{:?} v{version} response: {e}",
            api_key::<R>().ok()
        ))
    })
}

/// Writes a whole frame.
pub fn write_frame(stream: &mut TcpStream, frame: &[u8]) -> Result<(), ClientError> {
    stream.write_all(frame)?;
    Ok(())
}
