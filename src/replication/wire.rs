//! The replication wire between a leader's shard and a follower broker.
//!
//! The leader's shard opens a TCP connection to the follower's Kafka listener and sends a Hello
//! shaped like a Kafka request frame with a private api key ([`HELLO_API_KEY`]), which the
//! listener uses to hand the connection to replication, and on to the follower's shard that owns
//! the link's partitions ([`hello`]). From then on (integers big-endian):
//!
//! ```text
//! frame    = length:u32 kind:u8 body          (length counts kind and body)
//! Push     (1) = part leader_epoch:i32 high_watermark:i64 base_offset:i64
//!                records_len:u32 records      (stored RecordBatches, byte for byte)
//! Ack      (2) = part leader_epoch:i32 status:i16 log_end:i64 durable_end:i64 last_epoch:i32
//! EpochEnd (3) = part leader_epoch:i32 epoch:i32 end_offset:i64
//! LogStart (4) = part leader_epoch:i32 log_start:i64
//! part         = topic_id:16 partition:i32
//! ```
//!
//! Leader to follower: Push (the batches from `base_offset` on, which must be the follower's log
//! end; the first may start later where compaction removed batches; no records is a probe that only asks for an Ack) and EpochEnd (OffsetForLeaderEpoch's
//! answer for the follower's last epoch, after an Ack with [`ACK_CHECK_EPOCH`]). Follower to
//! leader: Ack, for each Push and EpochEnd. A Push is written as its fixed header followed by the
//! records as the log stored them, so batch bytes are never copied or re-encoded on the leader;
//! the decoder hands them out as a slice of the read buffer. `leader_epoch` fences stale leaders.
//!
//! LogStart (wire version 1) tells a follower the leader's log start offset: a follower whose log
//! ends below it empties its log and restarts it there (the leader then pushes from its log start),
//! one whose log reaches it deletes its segments wholly below it. Versions: right after it accepts
//! the Hello, a follower announces the wire version it speaks with an Ack on a reserved partition
//! (nil topic id, partition -1) whose status is [`ACK_VERSION`] and whose `log_end` is the version.
//! A leader of an older version ignores it (an ack for a partition it does not lead), and a leader
//! sends LogStart only to followers that announced version 1 or later, so old and new brokers
//! replicate to each other as before.
//!
//! The Hello (version 3) names the leader broker, its shard that opened the link, and the
//! leader's broker epoch (its incarnation as registered with the controller). A follower serves a
//! link only from a registered, unfenced broker whose current epoch that is (`admission`), so a
//! restarted broker's old links and anything that is not a broker are refused. Hellos of versions
//! 0 and 2 (without an epoch) are recognised only to be refused with a clear log line; a broker of
//! an older version reads a version 3 Hello as an unknown Kafka request and closes the connection.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use uuid::Uuid;

/// Frames above this are refused as soon as their length arrives: a push carries at most a read's
/// worth of batches, or one batch, and no batch is larger than a Kafka request may be
/// (`socket.request.max.bytes`, 100 MiB by default).
pub const MAX_FRAME_BYTES: usize = (100 << 20) + 1 + PUSH_FIXED;

/// The api key of the Hello frame (not a Kafka api key).
pub const HELLO_API_KEY: i16 = 0x7250;

/// Ack statuses.
pub const ACK_OK: i16 = 0;
/// The push did not start at the follower's log end (`log_end` says where it is).
pub const ACK_OUT_OF_ORDER: i16 = 1;
/// The follower knows a newer leader epoch: the sender is a stale leader.
pub const ACK_FENCED: i16 = 2;
/// The follower has not seen this leader epoch in its metadata yet, or does not host the
/// partition: try again shortly.
pub const ACK_RETRY: i16 = 3;
/// First push of a new leader epoch: the follower needs the leader's end of its last epoch
/// (`last_epoch`) before it appends anything.
pub const ACK_CHECK_EPOCH: i16 = 4;
/// The follower's log failed.
pub const ACK_STORAGE_ERROR: i16 = 5;

/// Not about a partition: the follower's wire version, in `log_end` (see the module doc).
pub const ACK_VERSION: i16 = 6;

/// The wire version this build speaks: 1 added LogStart, 2 the Hello that names the leader's shard,
/// 3 the Hello that carries the leader's broker epoch (the only one accepted).
pub const WIRE_VERSION: i64 = 3;
/// The first version with LogStart frames.
pub const LOG_START_VERSION: i64 = 1;
/// The version of the Hello this build sends and accepts.
pub const HELLO_VERSION: i16 = 3;

/// The reserved partition of the version announcement.
const VERSION_PART: WirePartition = WirePartition {
    topic_id: Uuid::nil(),
    partition: -1,
};

const KIND_PUSH: u8 = 1;
const KIND_ACK: u8 = 2;
const KIND_EPOCH_END: u8 = 3;
const KIND_LOG_START: u8 = 4;

/// A partition on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WirePartition {
    pub topic_id: Uuid,
    pub partition: i32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    Push {
        part: WirePartition,
        leader_epoch: i32,
        high_watermark: i64,
        base_offset: i64,
        records: Bytes,
    },
    Ack {
        part: WirePartition,
        leader_epoch: i32,
        status: i16,
        log_end: i64,
        durable_end: i64,
        last_epoch: i32,
    },
    EpochEnd {
        part: WirePartition,
        leader_epoch: i32,
        epoch: i32,
        end_offset: i64,
    },
    LogStart {
        part: WirePartition,
        leader_epoch: i32,
        log_start: i64,
    },
}

impl Frame {
    pub fn part(&self) -> WirePartition {
        match self {
            Frame::Push { part, .. }
            | Frame::Ack { part, .. }
            | Frame::EpochEnd { part, .. }
            | Frame::LogStart { part, .. } => *part,
        }
    }

    pub fn leader_epoch(&self) -> i32 {
        match self {
            Frame::Push { leader_epoch, .. }
            | Frame::Ack { leader_epoch, .. }
            | Frame::EpochEnd { leader_epoch, .. }
            | Frame::LogStart { leader_epoch, .. } => *leader_epoch,
        }
    }
}

/// What a follower sends first on an accepted link: the wire version it speaks.
pub fn version_announcement() -> Frame {
    Frame::Ack {
        part: VERSION_PART,
        leader_epoch: -1,
        status: ACK_VERSION,
        log_end: WIRE_VERSION,
        durable_end: -1,
        last_epoch: -1,
    }
}

/// The version a follower announced, if `frame` is its announcement.
pub fn announced_version(frame: &Frame) -> Option<i64> {
    match frame {
        Frame::Ack {
            part,
            status: ACK_VERSION,
            log_end,
            ..
        } if *part == VERSION_PART => Some(*log_end),
        _ => None,
    }
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
const PUSH_FIXED: usize = PART_BYTES + 4 + 8 + 8 + 4;
const ACK_BODY: usize = PART_BYTES + 4 + 2 + 8 + 8 + 4;
const EPOCH_END_BODY: usize = PART_BYTES + 4 + 4 + 8;
const LOG_START_BODY: usize = PART_BYTES + 4 + 8;

/// The Hello a leader's shard sends first: a Kafka-shaped frame (length, api key, version) naming
/// the leader broker, the leader's shard that opened the link, and the leader's broker epoch.
/// Shards own partitions by the same hash on every broker, so with equal shard counts the
/// follower's shard of that index owns every partition the link carries: the follower serves the
/// link there, and no frame crosses shards.
///
/// ```text
/// length:i32 (=20) api_key:i16 (=0x7250) version:i16 (=3) leader:i32 shard:i32 broker_epoch:u64
/// ```
pub fn hello(leader: i32, shard: usize, broker_epoch: u64) -> Bytes {
    let mut out = BytesMut::with_capacity(HELLO_BYTES);
    out.put_i32(HELLO_BODY as i32);
    out.put_i16(HELLO_API_KEY);
    out.put_i16(HELLO_VERSION);
    out.put_i32(leader);
    out.put_i32(i32::try_from(shard).unwrap_or(-1));
    out.put_u64(broker_epoch);
    out.freeze()
}

/// Body length of the Hello (api key, version, leader, shard, broker epoch), and of the older
/// versions' (api key, leader, shard; api key, leader), which are recognised to be refused.
const HELLO_BODY: usize = 20;
const HELLO_BODY_V2: usize = 10;
const HELLO_BODY_V0: usize = 6;

/// Length of the Hello frame.
pub const HELLO_BYTES: usize = 4 + HELLO_BODY;

/// What a Hello says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    pub leader: i32,
    /// The leader's shard that opened the link; None from an older leader, or when only part of
    /// the Hello was seen.
    pub shard: Option<usize>,
    /// The leader's broker epoch; None from an older leader (refused), or when only part of the
    /// Hello was seen.
    pub broker_epoch: Option<u64>,
    /// Bytes of the Hello frame on the connection (length field included).
    pub frame_len: usize,
}

/// The body length if the first bytes of a connection start a replication Hello.
fn hello_body_len(first: &[u8]) -> Option<usize> {
    if first.len() < 6 || first[4..6] != HELLO_API_KEY.to_be_bytes() {
        return None;
    }
    let len = usize::try_from(i32::from_be_bytes([first[0], first[1], first[2], first[3]])).ok()?;
    [HELLO_BODY, HELLO_BODY_V2, HELLO_BODY_V0]
        .contains(&len)
        .then_some(len)
}

fn be_i32(bytes: &[u8], at: usize) -> Option<i32> {
    Some(i32::from_be_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

/// Parses a Hello from the first bytes of a connection (all of it, or a prefix of at least its
/// length and api key); None if they are not one. Fields not yet seen are None (the leader -1).
pub fn parse_hello(first: &[u8]) -> Option<Hello> {
    let body = hello_body_len(first)?;
    let (leader, shard, broker_epoch) = match body {
        HELLO_BODY => {
            if first
                .get(6..8)
                .is_some_and(|v| v != HELLO_VERSION.to_be_bytes())
            {
                return None;
            }
            let epoch = first
                .get(16..24)
                .and_then(|b| Some(u64::from_be_bytes(b.try_into().ok()?)));
            (be_i32(first, 8), be_i32(first, 12), epoch)
        }
        HELLO_BODY_V2 => (be_i32(first, 6), be_i32(first, 10), None),
        _ => (be_i32(first, 6), None, None),
    };
    Some(Hello {
        leader: leader.unwrap_or(-1),
        shard: shard.and_then(|s| usize::try_from(s).ok()),
        broker_epoch,
        frame_len: 4 + body,
    })
}

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

/// The header of a Push; write it, then the records, as one vectored write.
pub fn push_header(
    part: &WirePartition,
    leader_epoch: i32,
    high_watermark: i64,
    base_offset: i64,
    records_len: usize,
) -> Result<Bytes, WireError> {
    let length = 1 + PUSH_FIXED + records_len;
    if length > MAX_FRAME_BYTES {
        return Err(WireError::TooLarge(length));
    }
    let mut out = BytesMut::with_capacity(5 + PUSH_FIXED);
    out.put_u32(length as u32);
    out.put_u8(KIND_PUSH);
    put_part(&mut out, part);
    out.put_i32(leader_epoch);
    out.put_i64(high_watermark);
    out.put_i64(base_offset);
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
            base_offset,
            records,
        } => {
            out.extend_from_slice(&push_header(
                part,
                *leader_epoch,
                *high_watermark,
                *base_offset,
                records.len(),
            )?);
            out.extend_from_slice(records);
        }
        Frame::Ack {
            part,
            leader_epoch,
            status,
            log_end,
            durable_end,
            last_epoch,
        } => {
            out.put_u32((1 + ACK_BODY) as u32);
            out.put_u8(KIND_ACK);
            put_part(&mut out, part);
            out.put_i32(*leader_epoch);
            out.put_i16(*status);
            out.put_i64(*log_end);
            out.put_i64(*durable_end);
            out.put_i32(*last_epoch);
        }
        Frame::EpochEnd {
            part,
            leader_epoch,
            epoch,
            end_offset,
        } => {
            out.put_u32((1 + EPOCH_END_BODY) as u32);
            out.put_u8(KIND_EPOCH_END);
            put_part(&mut out, part);
            out.put_i32(*leader_epoch);
            out.put_i32(*epoch);
            out.put_i64(*end_offset);
        }
        Frame::LogStart {
            part,
            leader_epoch,
            log_start,
        } => {
            out.put_u32((1 + LOG_START_BODY) as u32);
            out.put_u8(KIND_LOG_START);
            put_part(&mut out, part);
            out.put_i32(*leader_epoch);
            out.put_i64(*log_start);
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
        // Nothing is reserved for the declared length: the buffer grows as its bytes arrive.
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
            if body.len() < PUSH_FIXED {
                return Err(WireError::Malformed("short push"));
            }
            let part = get_part(&mut body);
            let leader_epoch = body.get_i32();
            let high_watermark = body.get_i64();
            let base_offset = body.get_i64();
            let records_len = body.get_u32() as usize;
            need(&body, records_len)?;
            Frame::Push {
                part,
                leader_epoch,
                high_watermark,
                base_offset,
                records: body,
            }
        }
        KIND_ACK => {
            need(&body, ACK_BODY)?;
            Frame::Ack {
                part: get_part(&mut body),
                leader_epoch: body.get_i32(),
                status: body.get_i16(),
                log_end: body.get_i64(),
                durable_end: body.get_i64(),
                last_epoch: body.get_i32(),
            }
        }
        KIND_EPOCH_END => {
            need(&body, EPOCH_END_BODY)?;
            Frame::EpochEnd {
                part: get_part(&mut body),
                leader_epoch: body.get_i32(),
                epoch: body.get_i32(),
                end_offset: body.get_i64(),
            }
        }
        KIND_LOG_START => {
            need(&body, LOG_START_BODY)?;
            Frame::LogStart {
                part: get_part(&mut body),
                leader_epoch: body.get_i32(),
                log_start: body.get_i64(),
            }
        }
        other => return Err(WireError::UnknownKind(other)),
    };
    Ok(Some(frame))
}

/// Bytes read from a link at a time.
const READ_CHUNK: usize = 64 * 1024;

/// Reads frames off one replication link, on either side, until the peer
/// closes it or the process shuts down: the one read loop both ends share.
pub struct FrameReader<R> {
    reader: R,
    buf: BytesMut,
    chunk: Vec<u8>,
}

impl<R: futures_lite::AsyncRead + Unpin> FrameReader<R> {
    pub fn new(reader: R) -> Self {
        Self {
            reader,
            buf: BytesMut::with_capacity(READ_CHUNK),
            chunk: vec![0u8; READ_CHUNK],
        }
    }

    /// The next whole frame; `Ok(None)` once the link is closed, fails, or
    /// `shutdown` is triggered while waiting for more bytes.
    pub async fn next(
        &mut self,
        shutdown: &chronik_shards::runtime::Shutdown,
    ) -> Result<Option<Frame>, WireError> {
        use futures_lite::{AsyncReadExt, FutureExt};
        loop {
            if let Some(frame) = decode(&mut self.buf)? {
                return Ok(Some(frame));
            }
            let (reader, chunk) = (&mut self.reader, &mut self.chunk);
            let n = async { reader.read(chunk).await.ok() }
                .or(async {
                    shutdown.wait().await;
                    None
                })
                .await;
            match n {
                None | Some(0) => return Ok(None),
                Some(n) => self.buf.extend_from_slice(&self.chunk[..n]),
            }
        }
    }
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
                base_offset: 120,
                records: Bytes::from_static(b"batch bytes as stored"),
            },
            Frame::Push {
                part: part(),
                leader_epoch: 0,
                high_watermark: 0,
                base_offset: -1,
                records: Bytes::new(),
            },
            Frame::Ack {
                part: part(),
                leader_epoch: 3,
                status: ACK_CHECK_EPOCH,
                log_end: 1 << 40,
                durable_end: 1 << 39,
                last_epoch: 2,
            },
            Frame::EpochEnd {
                part: part(),
                leader_epoch: 4,
                epoch: -1,
                end_offset: -1,
            },
            Frame::LogStart {
                part: part(),
                leader_epoch: 5,
                log_start: 1 << 33,
            },
            version_announcement(),
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
        let header = push_header(&part(), 1, 5, 40, records.len()).unwrap();
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
                base_offset: 40,
                records
            }
        );
    }

    #[test]
    fn only_the_announcement_announces_a_version() {
        assert_eq!(
            announced_version(&version_announcement()),
            Some(WIRE_VERSION)
        );
        for frame in frames()
            .into_iter()
            .filter(|f| *f != version_announcement())
        {
            assert_eq!(announced_version(&frame), None, "{frame:?}");
        }
        // An ack of a real partition never reads as one, whatever its status.
        let ack = Frame::Ack {
            part: part(),
            leader_epoch: 1,
            status: ACK_VERSION,
            log_end: 1,
            durable_end: 1,
            last_epoch: 1,
        };
        assert_eq!(announced_version(&ack), None);
    }

    #[test]
    fn hello_is_recognised_and_kafka_frames_are_not() {
        let h = hello(3, 1, 0xfeed_0000_beef);
        assert_eq!(h.len(), HELLO_BYTES);
        assert_eq!(&h[..8], [0, 0, 0, 20, 0x72, 0x50, 0, 3]);
        assert!(hello_body_len(&h).is_some());
        assert!(hello_body_len(&h[..5]).is_none());
        assert_eq!(
            parse_hello(&h),
            Some(Hello {
                leader: 3,
                shard: Some(1),
                broker_epoch: Some(0xfeed_0000_beef),
                frame_len: HELLO_BYTES
            })
        );
        // Seen in part: what arrived, and where it ends.
        assert_eq!(
            parse_hello(&h[..14]),
            Some(Hello {
                leader: 3,
                shard: None,
                broker_epoch: None,
                frame_len: HELLO_BYTES
            })
        );
        // Another Hello version of the same length is not one.
        let mut v4 = h.to_vec();
        v4[7] = 4;
        assert!(parse_hello(&v4).is_none());
        // Older Hellos (no broker epoch) are recognised, to be refused.
        let v2 = [0, 0, 0, 10, 0x72, 0x50, 0, 0, 0, 7, 0, 0, 0, 1];
        assert_eq!(
            parse_hello(&v2),
            Some(Hello {
                leader: 7,
                shard: Some(1),
                broker_epoch: None,
                frame_len: 14
            })
        );
        let v0 = [0, 0, 0, 6, 0x72, 0x50, 0, 0, 0, 7];
        assert_eq!(
            parse_hello(&v0),
            Some(Hello {
                leader: 7,
                shard: None,
                broker_epoch: None,
                frame_len: 10
            })
        );
        // Any other length is not a Hello.
        assert!(hello_body_len(&[0, 0, 0, 8, 0x72, 0x50, 0, 0, 0, 7]).is_none());
        // ApiVersions v3 request header: length, api key 18.
        assert!(hello_body_len(&[0, 0, 0, 6, 0, 18, 0, 3]).is_none());
    }

    /// A declared length reserves nothing: the buffer holds what arrived (fails on the old code,
    /// which reserved the declared length up front).
    #[test]
    fn a_declared_length_is_not_reserved() {
        let mut buf = BytesMut::new();
        buf.put_u32((MAX_FRAME_BYTES - 1) as u32);
        buf.put_u8(KIND_PUSH);
        assert_eq!(decode(&mut buf), Ok(None));
        assert!(buf.capacity() < 4096, "capacity {}", buf.capacity());
        let mut buf = BytesMut::new();
        buf.put_u32((MAX_FRAME_BYTES + 1) as u32);
        assert_eq!(
            decode(&mut buf),
            Err(WireError::TooLarge(MAX_FRAME_BYTES + 1))
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
            (vec![0, 0, 0, 2, KIND_EPOCH_END, 0], "short epoch end"),
            (vec![0, 0, 0, 2, KIND_LOG_START, 0], "short log start"),
        ];
        for (bytes, what) in cases {
            let mut buf = BytesMut::from(&bytes[..]);
            assert!(decode(&mut buf).is_err(), "{what}");
        }
        // A push whose records length disagrees with the frame length.
        let mut bad = BytesMut::new();
        bad.extend_from_slice(&push_header(&part(), 1, 5, 0, 10).unwrap());
        bad.extend_from_slice(b"short");
        let len = (bad.len() - 4) as u32;
        bad[..4].copy_from_slice(&len.to_be_bytes());
        assert!(decode(&mut bad).is_err());
        assert!(push_header(&part(), 1, 5, 0, MAX_FRAME_BYTES).is_err());
    }
}
