//! Kafka request frames in, response frames out.
//!
//! A frame is a 4-byte big-endian length and that many bytes. Requests are
//! decoded from `Bytes` so record data stays a slice of the receive buffer.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::{decode_request_header_from_buffer, Encodable};

use super::splice::{SplicedBuf, Splices};

/// api_key (2) + api_version (2) + correlation_id (4): the least any request header holds.
const MIN_HEADER_BYTES: usize = 8;

/// A request whose header was decoded; the body is still bytes.
#[derive(Debug)]
pub struct RequestFrame {
    pub api_key: ApiKey,
    pub version: i16,
    pub header: RequestHeader,
    pub body: Bytes,
}

/// Why a frame cannot be answered. Each closes the connection (as Kafka does).
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {0} bytes is shorter than a request header")]
    TooShort(usize),
    #[error("unknown api key {0}")]
    UnknownApiKey(i16),
    #[error("malformed request header: {0}")]
    Header(String),
    #[error("malformed {api_key:?} v{version} request: {reason}")]
    Body {
        api_key: ApiKey,
        version: i16,
        reason: String,
    },
}

/// The api key, version and correlation id of a frame, read without decoding
/// anything else (for log lines about frames that cannot be decoded).
pub fn peek_ids(frame: &[u8]) -> Option<(i16, i16, i32)> {
    if frame.len() < MIN_HEADER_BYTES {
        return None;
    }
    let api_key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    Some((api_key, version, correlation_id))
}

/// Decodes the request header of `frame` (the bytes after the length prefix).
pub fn parse_request(mut frame: Bytes) -> Result<RequestFrame, FrameError> {
    let (api_key, version, _) = peek_ids(&frame).ok_or(FrameError::TooShort(frame.len()))?;
    let api_key = ApiKey::try_from(api_key).map_err(|_| FrameError::UnknownApiKey(api_key))?;
    let header =
        guarded(|| decode_request_header_from_buffer(&mut frame)).map_err(FrameError::Header)?;
    Ok(RequestFrame {
        api_key,
        version,
        header,
        body: frame,
    })
}

/// Decodes the body of `request` at its version.
pub fn decode_body(request: &mut RequestFrame) -> Result<RequestKind, FrameError> {
    let api_key = request.api_key;
    let version = request.version;
    guarded(|| RequestKind::decode(api_key, &mut request.body, version)).map_err(|reason| {
        FrameError::Body {
            api_key,
            version,
            reason,
        }
    })
}

/// Runs a decoder, turning both its error and (defensively) a panic inside
/// the codec into a message: bad input must never take a shard down.
fn guarded<T, E: std::fmt::Display>(decode: impl FnOnce() -> Result<T, E>) -> Result<T, String> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(decode)) {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(format!("{e:#}")),
        Err(_) => Err("decoder panicked".to_string()),
    }
}

/// Encodes a whole response frame: length prefix, response header (at the
/// version the API's response uses for `version`), body.
pub fn encode_response(
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
    response: &ResponseKind,
    splices: Splices,
) -> Result<Vec<Bytes>, String> {
    let fail =
        |e: &dyn std::fmt::Display| format!("encoding {api_key:?} v{version} response: {e:#}");
    let mut header = ResponseHeader::default();
    header.correlation_id = correlation_id;
    let header_version = api_key.response_header_version(version);
    let size = header.compute_size(header_version).map_err(|e| fail(&e))?
        + response_size(response, version).map_err(|e| fail(&e))?;
    let len = u32::try_from(size).map_err(|e| fail(&e))?;
    let check = |written: usize| {
        if written == 4 + size {
            Ok(())
        } else {
            Err(fail(&format!(
                "encoded {} bytes, computed {size}",
                written - 4
            )))
        }
    };
    match response {
        // Record data goes out by reference, in segments.
        ResponseKind::Fetch(fetch) if !splices.is_empty() => {
            let mut head = BytesMut::with_capacity(4096);
            head.put_u32(len);
            header
                .encode(&mut head, header_version)
                .map_err(|e| fail(&e))?;
            let mut buf = SplicedBuf::new(head, splices);
            fetch.encode(&mut buf, version).map_err(|e| fail(&e))?;
            check(buf.len())?;
            buf.finish().map_err(|e| fail(&e))
        }
        other => {
            let mut buf = BytesMut::with_capacity(4 + size);
            buf.put_u32(len);
            header
                .encode(&mut buf, header_version)
                .map_err(|e| fail(&e))?;
            other.encode(&mut buf, version).map_err(|e| fail(&e))?;
            check(buf.len())?;
            Ok(vec![buf.freeze()])
        }
    }
}

fn response_size(response: &ResponseKind, version: i16) -> anyhow::Result<usize> {
    // ResponseKind has no compute_size; encoding into a counting sink would
    // double the work, so measure the variants that carry bulk data exactly
    // and let the others be measured by a scratch encode (they are small).
    match response {
        ResponseKind::Fetch(r) => r.compute_size(version),
        ResponseKind::Produce(r) => r.compute_size(version),
        other => {
            let mut scratch = BytesMut::new();
            other.encode(&mut scratch, version)?;
            Ok(scratch.len())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::{ApiVersionsRequest, ApiVersionsResponse};
    use kafka_protocol::protocol::{encode_request_header_into_buffer, StrBytes};

    fn request_bytes(api_key: ApiKey, version: i16) -> Bytes {
        let mut header = RequestHeader::default();
        header.request_api_key = api_key as i16;
        header.request_api_version = version;
        header.correlation_id = 42;
        header.client_id = Some(StrBytes::from_static_str("test"));
        let mut buf = BytesMut::new();
        encode_request_header_into_buffer(&mut buf, &header).unwrap();
        ApiVersionsRequest::default()
            .encode(&mut buf, version)
            .unwrap();
        buf.freeze()
    }

    #[test]
    fn parses_a_request() {
        let mut frame = parse_request(request_bytes(ApiKey::ApiVersions, 3)).unwrap();
        assert_eq!(frame.api_key, ApiKey::ApiVersions);
        assert_eq!(frame.header.correlation_id, 42);
        assert!(matches!(
            decode_body(&mut frame).unwrap(),
            RequestKind::ApiVersions(_)
        ));
    }

    #[test]
    fn rejects_short_and_unknown_frames() {
        for len in 0..MIN_HEADER_BYTES {
            assert!(matches!(
                parse_request(Bytes::from(vec![0u8; len])),
                Err(FrameError::TooShort(_))
            ));
        }
        let mut frame = vec![0x7f, 0x00, 0, 0, 0, 0, 0, 1];
        assert!(matches!(
            parse_request(Bytes::from(frame.clone())),
            Err(FrameError::UnknownApiKey(0x7f00))
        ));
        // Known key, header cut short: an error, not a panic.
        frame[0] = 0;
        frame[1] = 18;
        frame[3] = 3;
        assert!(parse_request(Bytes::from(frame)).is_err());
    }

    #[test]
    fn truncated_body_is_an_error() {
        let full = request_bytes(ApiKey::ApiVersions, 3);
        let mut frame = parse_request(full.slice(..full.len() - 2)).unwrap();
        assert!(decode_body(&mut frame).is_err());
    }

    #[test]
    fn response_frame_has_exact_length() {
        let response = ResponseKind::ApiVersions(ApiVersionsResponse::default());
        let frame: Vec<u8> =
            encode_response(ApiKey::ApiVersions, 3, 9, &response, Splices::default())
                .unwrap()
                .concat();
        let len = u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize;
        assert_eq!(len, frame.len() - 4);
        assert_eq!(&frame[4..8], &9i32.to_be_bytes());
    }
}
