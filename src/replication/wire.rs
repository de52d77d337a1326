//! The replication wire between a leader's shard and a follower broker.
//!
//! Framing (all integers big-endian):
//!
//! ```text
//! frame   = length:u32 kind:u8 body          (length counts kind and body)
//! Push    (1) = topic_id:16 partition:i32 leader_epoch:i32 high_watermark:i64
//!               records_len:u32 records     (stored RecordBatches, byte for byte)
//! Ack     (2) = topic_id:16 partition:i32 leader_epoch:i32 durable_end:i64 error:i16
//! EpochQuery  (3) = topic_id:16 partition:i32 leader_epoch:i32 requested_epoch:i32
//! EpochAnswer (4) = topic_id:16 partition:i32 error:i16 epoch:i32 end_offset:i64
//! ```
//!
//! A Push is written as two buffers, the fixed header and the records as the log stored them,
//! so the batch bytes are never copied or re-encoded on the leader; the decoder hands the
//! records out as a slice of the read buffer. `leader_epoch` on Push fences a stale leader: a
//! follower that knows a newer epoch answers with FENCED_LEADER_EPOCH.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use uuid::Uuid;

/// Frames above this are refused (a batch is at most `message.max.bytes`, well below).
pub const MAX_FRAME_BYTES: usize = 64 << 20;

const KIND_PUSH: u8 = 1;
const KIND_ACK: u8 = 2;
const KIND_EPOCH_QUERY: u8 = 3;
const KIND_EPOCH_ANSWER: u8 = 4;

/// A partition on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct WirePartition {
    pub topic_id: Uuid,
    pub partition: i32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// Leader to follower: batches to append, starting at the follower's log end.
    Push {
        part: WirePartition,
        leader_epoch: i32,
        high_watermark: i64,
        records: Bytes,
    },
    /// Follower to leader: every offset below `durable_end` is durable here.
    Ack {
        part: WirePartition,
        leader_epoch: i32,
        durable_end: i64,
        error: i16,
    },
    /// Follower to leader: where did `requested_epoch` end on your log?
    EpochQuery {
        part: WirePartition,
        leader_epoch: i32,
        requested_epoch: i32,
    },
    EpochAnswer {
        part: WirePartition,
        error: i16,
        epoch: i32,
        end_offset: i64,
    },
}

#[derive(Debug, PartialEq, Eq)]
pub enum WireError {
    TooLarge(usize),
    UnknownKind(u8),
    Malformed(&'static str),
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WireError::TooLarge(n) => write!(f, "replication frame of {n} bytes is too large"),
            WireError::UnknownKind(k) => write!(f, "unknown replication frame kind {k}"),
            WireError::Malformed(what) => write!(f, "malformed replication frame: {what}"),
        }
    }
}

const PART_BYTES: usize = 16 + 4;
const PUSH_HEADER_BYTES: usize = 4 + 1 + PART_BYTES + 4 + 8 + 4;

fn put_part(out: &mut BytesMut, part: &WirePartition) {
    out.put_slice(part.topic_id.as_bytes());
    out.put_i32(part.partition);
}

fn get_part(body: &mut Bytes) -> WirePartition {
    let mut id = [0u8; 16];
    body.copy_to_slice(&mut id);
    WirePartition {
        topic_id: Uuid::from_bytes(id),
        partition: body.get_i32(),
    }
}

/// The header of a Push; write it, then `records`, as one vectored write.
pub fn push_header(
    part: &WirePartition,
    leader_epoch: i32,
    high_watermark: i64,
    records_len: usize,
) -> Result<Bytes, WireError> {
    let length = PUSH_HEADER_BYTES - 4 + records_len;
    if length > MAX_FRAME_BYTES {
        return Err(WireError::TooLarge(length));
    }
    let mut out = BytesMut::with_capacity(PUSH_HEADER_BYTES);
    out.put_u32(length as u32);
    out.put_u8(KIND_PUSH);
    put_part(&mut out, part);
    out.put_i32(leader_epoch);
    out.put_i64(high_watermark);
    out.put_u32(records_len as u32);
    Ok(out.freeze())
}

/// Encodes a frame into one buffer (Push copies its records: use [`push_header`] on hot paths).
pub fn encode(frame: &Frame) -> Result<Bytes, WireError> {
    let mut out = BytesMut::new();
    match frame {
        Frame::Push {
            part,
            leader_epoch,
            high_watermark,
            records,
        } => {
            out.extend_from_slice(&push_header(
                part,
                *leader_epoch,
                *high_watermark,
                records.len(),
            )?);
            out.extend_from_slice(records);
            return Ok(out.freeze());
        }
        Frame::Ack {
            part,
            leader_epoch,
            durable_end,
            error,
        } => {
            out.put_u32((1 + PART_BYTES + 4 + 8 + 2) as u32);
            out.put_u8(KIND_ACK);
            put_part(&mut out, part);
            out.put_i32(*leader_epoch);
            out.put_i64(*durable_end);
            out.put_i16(*error);
        }
        Frame::EpochQuery {
            part,
            leader_epoch,
            requested_epoch,
        } => {
            out.put_u32((1 + PART_BYTES + 4 + 4) as u32);
            out.put_u8(KIND_EPOCH_QUERY);
            put_part(&mut out, part);
            out.put_i32(*leader_epoch);
            out.put_i32(*requested_epoch);
        }
        Frame::EpochAnswer {
            part,
            error,
            epoch,
            end_offset,
        } => {
            out.put_u32((1 + PART_BYTES + 2 + 4 + 8) as u32);
            out.put_u8(KIND_EPOCH_ANSWER);
            put_part(&mut out, part);
            out.put_i16(*error);
            out.put_i32(*epoch);
            out.put_i64(*end_offset);
        }
    }
    Ok(out.freeze())
}

/// Takes one whole frame off the front of `buf`, if it holds one. Records come out as a slice of
/// the buffer, not a copy.
pub fn decode(buf: &mut BytesMut) -> Result<Option<Frame>, WireError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let length = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if length > MAX_FRAME_BYTES {
        return Err(WireError::TooLarge(length));
    }
    if length == 0 {
        return Err(WireError::Malformed("empty frame"));
    }
    if buf.len() < 4 + length {
        buf.reserve(4 + length - buf.len());
        return Ok(None);
    }
    buf.advance(4);
    let mut body = buf.split_to(length).freeze();
    let kind = body.get_u8();
    let need = |body: &Bytes, n: usize| {
        if body.len() == n {
            Ok(())
        } else {
            Err(WireError::Malformed("wrong length for its kind"))
        }
    };
    let frame = match kind {
        KIND_PUSH => {
            if body.len() < PART_BYTES + 4 + 8 + 4 {
                return Err(WireError::Malformed("short push"));
            }
            let part = get_part(&mut body);
            let leader_epoch = body.get_i32();
            let high_watermark = body.get_i64();
            let records_len = body.get_u32() as usize;
            need(&body, records_len)?;
            Frame::Push {
                part,
                leader_epoch,
                high_watermark,
                records: body,
            }
        }
        KIND_ACK => {
            need(&body, PART_BYTES + 4 + 8 + 2)?;
            Frame::Ack {
                part: get_part(&mut body),
                leader_epoch: body.get_i32(),
                durable_end: body.get_i64(),
                error: body.get_i16(),
            }
        }
        KIND_EPOCH_QUERY => {
            need(&body, PART_BYTES + 4 + 4)?;
            Frame::EpochQuery {
                part: get_part(&mut body),
                leader_epoch: body.get_i32(),
                requested_epoch: body.get_i32(),
            }
        }
        KIND_EPOCH_ANSWER => {
            need(&body, PART_BYTES + 2 + 4 + 8)?;
            Frame::EpochAnswer {
                part: get_part(&mut body),
                error: body.get_i16(),
                epoch: body.get_i32(),
                end_offset: body.get_i64(),
            }
        }
        other => return Err(WireError::UnknownKind(other)),
    };
    Ok(Some(frame))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part() -> WirePartition {
        WirePartition {
            topic_id: Uuid::from_u128(0x1234),
            partition: 7,
        }
    }

    fn frames() -> Vec<Frame> {
        vec![
            Frame::Push {
                part: part(),
                leader_epoch: 3,
                high_watermark: 99,
                records: Bytes::from_static(b"batch bytes as stored"),
            },
            Frame::Push {
                part: part(),
                leader_epoch: 0,
                high_watermark: 0,
                records: Bytes::new(),
            },
            Frame::Ack {
                part: part(),
                leader_epoch: 3,
                durable_end: 1 << 40,
                error: 0,
            },
            Frame::EpochQuery {
                part: part(),
                leader_epoch: 4,
                requested_epoch: 2,
            },
            Frame::EpochAnswer {
                part: part(),
                error: 74,
                epoch: -1,
                end_offset: -1,
            },
        ]
    }

    #[test]
    fn round_trip_byte_by_byte() {
        let mut wire = BytesMut::new();
        for f in frames() {
            wire.extend_from_slice(&encode(&f).unwrap());
        }
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for b in wire.iter() {
            buf.put_u8(*b);
            while let Some(f) = decode(&mut buf).unwrap() {
                out.push(f);
            }
        }
        assert_eq!(out, frames());
        assert!(buf.is_empty());
    }

    #[test]
    fn push_header_then_records_is_a_push() {
        let records = Bytes::from_static(b"0123456789");
        let header = push_header(&part(), 1, 5, records.len()).unwrap();
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&header);
        buf.extend_from_slice(&records);
        let decoded = decode(&mut buf).unwrap().unwrap();
        assert_eq!(
            decoded,
            Frame::Push {
                part: part(),
                leader_epoch: 1,
                high_watermark: 5,
                records
            }
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (vec![0, 0, 0, 0], "empty"),
            (vec![0xff, 0xff, 0xff, 0xff], "too large"),
            (vec![0, 0, 0, 1, 9], "unknown kind"),
            (vec![0, 0, 0, 3, KIND_ACK, 0, 0], "short ack"),
            (vec![0, 0, 0, 2, KIND_PUSH, 0], "short push"),
        ];
        for (bytes, what) in cases {
            let mut buf = BytesMut::from(&bytes[..]);
            assert!(decode(&mut buf).is_err(), "{what}");
        }
        // A push whose records length disagrees with the frame length.
        let mut bad = BytesMut::new();
        bad.extend_from_slice(&push_header(&part(), 1, 5, 10).unwrap());
        bad.extend_from_slice(b"short");
        let len = (bad.len() - 4) as u32;
        bad[..4].copy_from_slice(&len.to_be_bytes());
        assert!(decode(&mut bad).is_err());
        assert!(push_header(&part(), 1, 5, MAX_FRAME_BYTES).is_err());
    }
}
