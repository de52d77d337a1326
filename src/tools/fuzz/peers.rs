//! The broker-to-broker ports: replication links (a Hello on the Kafka listener, then Push, Ack,
//! EpochEnd and LogStart frames; see `replication::wire`) and the control plane's Raft/rpc port
//! (see `control::transport`). Valid-looking frames, mutated in their lengths, kinds, ids and
//! payloads. These ports answer asynchronously or not at all, so the rules are: the broker stays
//! up, and once the fuzzer has sent its last byte and shut its side, the broker lets the
//! connection go within the timeout.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use protobuf::Message as _;
use raft::prelude::{Entry, Message, MessageType};
use uuid::Uuid;

use super::generate::record_batch;
use super::rng::Rng;
use crate::control::forward::{ClientRequest, Heartbeat, Rpc};
use crate::replication::wire::{self, WirePartition};

/// What a peer-port run found.
#[derive(Debug, Default)]
pub struct PeerTally {
    pub connections: u64,
    pub frames: u64,
    pub closed_by_broker: u64,
    /// Connections the broker kept after the fuzzer's end of stream, past the timeout.
    pub lingering: Vec<String>,
    pub connect_errors: Vec<String>,
}

/// Which port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    Replication,
    Control,
}

/// Connections at once: a refused Hello may be held a while before the broker closes it.
const PARALLEL: usize = 32;

/// Sends about `frames` frames over connections of up to 16 frames each, [`PARALLEL`] at a time.
pub fn run(
    port: Port,
    address: &str,
    topics: &[Uuid],
    frames: u64,
    timeout: Duration,
    rng: &Rng,
) -> PeerTally {
    let sent = AtomicU64::new(0);
    let next_conn = AtomicU64::new(0);
    let tally = Mutex::new(PeerTally::default());
    std::thread::scope(|scope| {
        for _ in 0..PARALLEL {
            scope.spawn(|| {
                while sent.load(Ordering::Relaxed) < frames {
                    let conn_no = next_conn.fetch_add(1, Ordering::Relaxed);
                    let outcome =
                        one_connection(port, address, topics, timeout, &mut rng.fork(conn_no));
                    let mut t = tally.lock().unwrap_or_else(|e| e.into_inner());
                    match outcome {
                        Connection::Refused(e) => {
                            t.connect_errors.push(format!("{port:?} {address}: {e}"));
                            return;
                        }
                        Connection::Done { frames, closed } => {
                            sent.fetch_add(frames, Ordering::Relaxed);
                            t.connections += 1;
                            t.frames += frames;
                            match closed {
                                Ok(()) => t.closed_by_broker += 1,
                                Err(why) => t.lingering.push(why),
                            }
                        }
                    }
                }
            });
        }
    });
    tally.into_inner().unwrap_or_else(|e| e.into_inner())
}

enum Connection {
    Refused(std::io::Error),
    Done {
        frames: u64,
        /// Err: the broker kept the connection past the timeout after the fuzzer's end of stream.
        closed: Result<(), String>,
    },
}

/// One connection: a burst of frames, end of stream, then wait for the broker to close.
fn one_connection(
    port: Port,
    address: &str,
    topics: &[Uuid],
    timeout: Duration,
    rng: &mut Rng,
) -> Connection {
    let mut stream = match TcpStream::connect(address) {
        Ok(s) => s,
        Err(e) => return Connection::Refused(e),
    };
    let _ = stream.set_nodelay(true);
    let _ = stream.set_write_timeout(Some(timeout));
    let mut sent = Vec::new();
    let n = 1 + rng.below(16) as u64;
    if port == Port::Replication {
        sent.extend(hello(rng));
    }
    for _ in 0..n {
        sent.extend(match port {
            Port::Replication => replication_frame(topics, rng),
            Port::Control => control_frame(rng),
        });
    }
    // One write: frames arrive together, as a peer's pipelined stream would.
    let wrote = stream.write_all(&sent);
    let _ = stream.shutdown(Shutdown::Write);
    let closed = if wrote.is_err() {
        Ok(())
    } else {
        drain_until_closed(&mut stream, timeout).map_err(|waited| {
            format!(
                "{port:?} connection still open {waited:?} after the fuzzer's end of stream; \
                 sent {}",
                super::runner::hex(&sent[..sent.len().min(256)])
            )
        })
    };
    Connection::Done { frames: n, closed }
}

/// Reads (and drops) what the broker sends until it closes; Err(elapsed) past the timeout.
fn drain_until_closed(stream: &mut TcpStream, timeout: Duration) -> Result<(), Duration> {
    let start = Instant::now();
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    let mut buf = [0u8; 16 * 1024];
    while start.elapsed() < timeout {
        match stream.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return Ok(()),
        }
    }
    Err(start.elapsed())
}

/// A replication Hello, valid-looking or bent: its length, version, leader id, shard and broker
/// epoch. Written out here rather than with `wire`'s encoder, so that the older layouts (which a
/// broker must recognise and refuse) are sent too:
///
/// ```text
/// v3:  length:i32 (=20) api_key:i16 (=0x7250) version:i16 (=3) leader:i32 shard:i32 epoch:u64
/// v2:  length:i32 (=10) api_key:i16 leader:i32 shard:i32
/// v1:  length:i32 (=6)  api_key:i16 leader:i32
/// ```
fn hello(rng: &mut Rng) -> Vec<u8> {
    let leader = *rng.pick(&[2, 3, 1, -1, i32::MAX]);
    let shard = *rng.pick(&[0i32, 1, 63, -1]);
    let epoch = *rng.pick(&[0u64, 1, u64::MAX]);
    let mut out = Vec::with_capacity(24);
    match rng.below(10) {
        0 => {
            out.extend(6i32.to_be_bytes());
            out.extend(wire::HELLO_API_KEY.to_be_bytes());
            out.extend(leader.to_be_bytes());
        }
        1 => {
            out.extend(10i32.to_be_bytes());
            out.extend(wire::HELLO_API_KEY.to_be_bytes());
            out.extend(leader.to_be_bytes());
            out.extend(shard.to_be_bytes());
        }
        _ => {
            out.extend(20i32.to_be_bytes());
            out.extend(wire::HELLO_API_KEY.to_be_bytes());
            out.extend(3i16.to_be_bytes());
            out.extend(leader.to_be_bytes());
            out.extend(shard.to_be_bytes());
            out.extend(epoch.to_be_bytes());
        }
    }
    if rng.chance(30) {
        match rng.below(3) {
            0 => out[0..4].copy_from_slice(&rng.pick(&[0i32, 11, 21, -1, 1 << 30]).to_be_bytes()),
            1 => out[6..8].copy_from_slice(&rng.pick(&[0i16, 2, 4, -1, i16::MAX]).to_be_bytes()),
            _ => out.truncate(rng.below(out.len())),
        }
    }
    out
}

fn part(topics: &[Uuid], rng: &mut Rng) -> WirePartition {
    let topic_id = if topics.is_empty() || rng.chance(20) {
        Uuid::from_u128(u128::from(rng.next_u64()))
    } else {
        *rng.pick(topics)
    };
    WirePartition {
        topic_id,
        partition: *rng.pick(&[0, 1, 2, -1, i32::MAX]),
    }
}

fn replication_frame(topics: &[Uuid], rng: &mut Rng) -> Vec<u8> {
    let part = part(topics, rng);
    let leader_epoch = *rng.pick(&[0, 1, 2, -1, i32::MAX]);
    let frame = match rng.below(4) {
        0 => wire::Frame::Push {
            part,
            leader_epoch,
            high_watermark: *rng.pick(&[0, 1, -1, i64::MAX]),
            base_offset: *rng.pick(&[0, -1, 1, i64::MAX]),
            records: if rng.chance(80) {
                record_batch(rng).unwrap_or_default()
            } else {
                Bytes::from(rng.bytes_below(0, 100))
            },
        },
        1 => wire::Frame::Ack {
            part,
            leader_epoch,
            status: *rng.pick(&[0, 1, 2, 3, 4, 5, 6, -1]),
            log_end: *rng.pick(&[0, -1, i64::MAX]),
            durable_end: *rng.pick(&[0, -1, i64::MAX]),
            last_epoch: *rng.pick(&[0, -1, i32::MAX]),
        },
        2 => wire::Frame::EpochEnd {
            part,
            leader_epoch,
            epoch: *rng.pick(&[0, -1, i32::MAX]),
            end_offset: *rng.pick(&[0, -1, i64::MAX]),
        },
        _ => wire::Frame::LogStart {
            part,
            leader_epoch,
            log_start: *rng.pick(&[0, 1, -1, i64::MAX]),
        },
    };
    let mut out = wire::encode(&frame).map_or_else(|_| Vec::new(), |b| b.to_vec());
    if out.len() < 5 {
        return out;
    }
    match rng.below(10) {
        0 => {
            let len = *rng.pick(&[0u32, 1, u32::MAX, 64 << 20, (64 << 20) + 1, i32::MAX as u32]);
            out[0..4].copy_from_slice(&len.to_be_bytes());
        }
        1 => out[4] = rng.next_u64() as u8,
        2 if out.len() >= 49 && out[4] == 1 => {
            // A Push's records length.
            let len = *rng.pick(&[u32::MAX, 0, i32::MAX as u32, 1]);
            out[45..49].copy_from_slice(&len.to_be_bytes());
        }
        3 => {
            let keep = 4 + rng.below(out.len() - 4);
            let len = (keep - 4) as u32;
            out.truncate(keep);
            out[0..4].copy_from_slice(&len.to_be_bytes());
        }
        4 => {
            let at = rng.below(out.len());
            out[at] ^= 1 << rng.below(8);
        }
        5 => out = rng.bytes_below(1, 65),
        _ => {}
    }
    out
}

/// `[len u32 LE][kind u8][from i32 LE][payload]`: a Raft message or a JSON rpc, mutated.
fn control_frame(rng: &mut Rng) -> Vec<u8> {
    let from = *rng.pick(&[2i32, 3, 1, -1, i32::MAX]);
    let (kind, mut payload) = if rng.chance(50) {
        (1u8, raft_message(rng))
    } else {
        (2u8, rpc(rng))
    };
    if !payload.is_empty() && rng.chance(40) {
        match rng.below(3) {
            0 => {
                let at = rng.below(payload.len());
                payload[at] ^= 1 << rng.below(8);
            }
            1 => payload.truncate(rng.below(payload.len())),
            _ => payload.extend(rng.bytes_below(1, 33)),
        }
    }
    let mut out = Vec::with_capacity(9 + payload.len());
    let len = (5 + payload.len()) as u32;
    let declared = match rng.below(12) {
        0 => *rng.pick(&[0u32, 4, u32::MAX, (64 << 20) + 1, 64 << 20, len + 1]),
        _ => len,
    };
    out.extend(declared.to_le_bytes());
    out.push(if rng.chance(5) {
        rng.next_u64() as u8
    } else {
        kind
    });
    out.extend(from.to_le_bytes());
    out.extend(payload);
    out
}

fn raft_message(rng: &mut Rng) -> Vec<u8> {
    let mut m = Message::default();
    m.set_msg_type(*rng.pick(&[
        MessageType::MsgHeartbeat,
        MessageType::MsgHeartbeatResponse,
        MessageType::MsgAppendResponse,
        MessageType::MsgRequestVote,
        MessageType::MsgRequestPreVote,
        MessageType::MsgAppend,
    ]));
    m.to = 2;
    m.from = *rng.pick(&[3u64, 4, 0, u64::MAX]);
    m.term = *rng.pick(&[0u64, 1, 2, u64::MAX]);
    m.index = *rng.pick(&[0u64, 1, u64::MAX]);
    m.log_term = *rng.pick(&[0u64, 1, u64::MAX]);
    m.commit = *rng.pick(&[0u64, 1, u64::MAX]);
    if rng.chance(30) {
        let entry = Entry {
            data: Bytes::from(rng.bytes_below(0, 64)),
            ..Default::default()
        };
        m.entries = vec![entry].into();
    }
    m.write_to_bytes().unwrap_or_default()
}

fn rpc(rng: &mut Rng) -> Vec<u8> {
    let rpc = match rng.below(3) {
        0 => Rpc::Heartbeat(Heartbeat {
            id: *rng.pick(&[2, 3, -1, i32::MAX]),
            incarnation: rng.next_u64(),
            host: "fuzz.invalid".into(),
            port: 1,
            rack: None,
            rpc: None,
            shutting_down: rng.chance(50),
        }),
        // Only requests that change nothing that exists: a name nothing has.
        _ => Rpc::Forward {
            id: rng.next_u64(),
            request: ClientRequest::DeleteTopics {
                names: vec!["absent-chronik-topic".into()],
            },
        },
    };
    let mut out = serde_json::to_vec(&rpc).unwrap_or_default();
    if rng.chance(20) {
        out = rng.bytes_below(0, 128);
    }
    out
}
