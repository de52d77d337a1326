//! The accepting side of the control transport (see `transport`): every bound a peer, or
//! anything else that reaches the rpc port, can push on.
//!
//! - at most [`InboundLimits::max_connections`] connections are served at once, each by one
//!   thread. When that many are open, a new connection makes room by closing the oldest one that
//!   has not yet sent a whole frame from a peer (so a flood of strangers cannot lock the peers
//!   out), up to twice the cap of threads at once; beyond, or when every connection is a peer's,
//!   it is closed as soon as it is accepted. Both with a rate-limited warn line;
//! - a connection must deliver its first whole frame within [`InboundLimits::first_frame`];
//! - a frame's declared length is checked against [`InboundLimits::max_frame`] as soon as its
//!   four length bytes arrive, and a frame's buffer grows only with the bytes actually received
//!   ([`FrameAssembler`]), so a peer's say-so never allocates;
//! - a connection silent for [`InboundLimits::idle`] is closed (senders reconnect, and drop their
//!   own idle connections well before that, so no frame is lost to it);
//! - only the configured peers (`--peers` ids, not this node) may send: a frame from any other id,
//!   a connection whose frames change sender, a raft message whose `from` is not its frame's
//!   sender, or a heartbeat naming another broker is refused by closing the connection.

use std::collections::{HashSet, VecDeque};
use std::io::{ErrorKind, Read};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use protobuf::Message as _;
use raft::prelude::Message;

use super::forward::Rpc;
use super::node::Request;

pub const KIND_RAFT: u8 = 1;
pub const KIND_RPC: u8 = 2;
/// Largest frame accepted by default (the length field's value). Raft snapshots carry the whole
/// metadata image, a few hundred bytes per partition: this leaves room for very large clusters.
pub const MAX_FRAME: usize = 64 << 20;
/// Inbound connections served at once, per configured peer (a peer needs one; the rest is room
/// for reconnects whose old connection has not been noticed closed yet).
const CONNECTIONS_PER_PEER: usize = 4;
/// The floor of the connection cap, whatever the number of peers.
const MIN_CONNECTIONS: usize = 8;
/// A connection that sends nothing for this long is closed. Raft heartbeats (every tick) and
/// broker heartbeats (every second) keep the connections that matter busy.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// A new connection's first frame must be whole within this long (peers send one at once).
const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes read from a socket at a time.
const READ_CHUNK: usize = 16 * 1024;
/// How often blocked threads look at the stop flag.
pub const POLL: Duration = Duration::from_millis(100);
/// At most one "connection refused: too many" warn line per this interval.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Bounds on inbound connections.
#[derive(Clone, Debug)]
pub struct InboundLimits {
    pub max_connections: usize,
    pub max_frame: usize,
    pub idle: Duration,
    pub first_frame: Duration,
}

impl InboundLimits {
    /// The defaults for a node with `peers` other voters.
    pub fn for_peers(peers: usize) -> InboundLimits {
        InboundLimits {
            max_connections: (CONNECTIONS_PER_PEER * peers).max(MIN_CONNECTIONS),
            max_frame: MAX_FRAME,
            idle: IDLE_TIMEOUT,
            first_frame: FIRST_FRAME_TIMEOUT,
        }
    }
}

/// Why a connection is closed.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The declared frame length is below the 5-byte minimum or above the cap.
    FrameLength(usize),
    UnknownKind(u8),
    /// The frame's sender is not a configured peer.
    UnknownSender(i32),
    /// A frame of a connection bound to `bound` claims to come from `claimed`.
    SenderChanged {
        bound: i32,
        claimed: i32,
    },
    /// The payload names another sender than the frame (raft `from`, heartbeat id).
    Impersonation {
        frame: i32,
        payload: i64,
    },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::FrameLength(len) => write!(f, "frame length {len} out of bounds"),
            Refusal::UnknownKind(kind) => write!(f, "unknown frame kind {kind}"),
            Refusal::UnknownSender(id) => write!(f, "sender {id} is not a configured peer"),
            Refusal::SenderChanged { bound, claimed } => {
                write!(
                    f,
                    "connection from node {bound} sent a frame as node {claimed}"
                )
            }
            Refusal::Impersonation { frame, payload } => {
                write!(
                    f,
                    "frame from node {frame} carries a message from {payload}"
                )
            }
        }
    }
}

/// Cuts a byte stream into frames (`[len u32 LE][kind u8][from i32 LE][payload]`), holding only
/// the bytes received: a declared length is checked when its four bytes arrive and never used to
/// reserve memory.
pub struct FrameAssembler {
    max_frame: usize,
    buf: Vec<u8>,
}

impl FrameAssembler {
    pub fn new(max_frame: usize) -> FrameAssembler {
        FrameAssembler {
            max_frame,
            buf: Vec::new(),
        }
    }

    /// Adds received bytes.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes held (capacity), for tests and bounds.
    pub fn held(&self) -> usize {
        self.buf.capacity()
    }

    /// The next whole frame's body (`kind`, `from`, payload), if one has arrived; an error as
    /// soon as a declared length is out of bounds.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, Refusal> {
        let Some(header) = self.buf.get(..4) else {
            return Ok(None);
        };
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        if !(5..=self.max_frame).contains(&len) {
            return Err(Refusal::FrameLength(len));
        }
        if self.buf.len() - 4 < len {
            return Ok(None);
        }
        let rest = self.buf.split_off(4 + len);
        let mut frame = std::mem::replace(&mut self.buf, rest);
        frame.drain(..4);
        Ok(Some(frame))
    }
}

/// A control-port frame: length (little-endian u32, of what follows), kind, sender id, payload.
/// The one encoder of the format `decode_frame` reads.
pub fn encode_frame(kind: u8, from: i32, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(9 + payload.len());
    frame.extend_from_slice(&((5 + payload.len()) as u32).to_le_bytes());
    frame.push(kind);
    frame.extend_from_slice(&from.to_le_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// Decodes one frame body into a request for the control thread, checking its sender. Ok(None):
/// an undecodable payload from a known peer, skipped (the connection stays).
pub fn decode_frame(
    body: &[u8],
    peers: &HashSet<i32>,
    bound: &mut Option<i32>,
) -> Result<Option<Request>, Refusal> {
    let (kind, from) = match body {
        [kind, a, b, c, d, ..] => (*kind, i32::from_le_bytes([*a, *b, *c, *d])),
        _ => return Err(Refusal::FrameLength(body.len())),
    };
    if !peers.contains(&from) {
        return Err(Refusal::UnknownSender(from));
    }
    match *bound {
        Some(bound) if bound != from => {
            return Err(Refusal::SenderChanged {
                bound,
                claimed: from,
            })
        }
        _ => *bound = Some(from),
    }
    let payload = &body[5..];
    match kind {
        KIND_RAFT => match Message::parse_from_bytes(payload) {
            // Raft ids are node ids + 1.
            Ok(message) if message.from != i64::from(from) as u64 + 1 => {
                Err(Refusal::Impersonation {
                    frame: from,
                    payload: message.from as i64 - 1,
                })
            }
            Ok(message) => Ok(Some(Request::Raft(Box::new(message)))),
            Err(e) => {
                tracing::warn!(from, "undecodable raft message: {e}");
                Ok(None)
            }
        },
        KIND_RPC => match serde_json::from_slice::<Rpc>(payload) {
            Ok(Rpc::Heartbeat(hb)) if hb.id != from => Err(Refusal::Impersonation {
                frame: from,
                payload: i64::from(hb.id),
            }),
            Ok(rpc) => Ok(Some(Request::Rpc {
                from,
                rpc: Box::new(rpc),
            })),
            Err(e) => {
                tracing::warn!(from, "undecodable rpc: {e}");
                Ok(None)
            }
        },
        other => Err(Refusal::UnknownKind(other)),
    }
}

/// Connections that have not yet sent a whole frame from a peer, oldest first: the ones closed to
/// make room. Each entry is a handle on the socket its reader thread reads.
#[derive(Default)]
struct Unidentified(Mutex<VecDeque<(u64, TcpStream)>>);

impl Unidentified {
    fn push(&self, id: u64, stream: TcpStream) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back((id, stream));
    }

    fn remove(&self, id: u64) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(i, _)| *i != id);
    }

    /// Closes the oldest; false if there is none.
    fn close_oldest(&self) -> bool {
        let oldest = self.0.lock().unwrap_or_else(|e| e.into_inner()).pop_front();
        oldest.is_some_and(|(_, stream)| {
            let _ = stream.shutdown(Shutdown::Both);
            true
        })
    }
}

/// Logs at most once per [`REFUSAL_LOG_INTERVAL`], with how many happened.
struct RateLimitedWarn {
    count: u64,
    last: Option<Instant>,
}

impl RateLimitedWarn {
    fn hit(&mut self) -> Option<u64> {
        self.count += 1;
        if self
            .last
            .is_none_or(|at| at.elapsed() >= REFUSAL_LOG_INTERVAL)
        {
            self.last = Some(Instant::now());
            return Some(self.count);
        }
        None
    }
}

/// Accepts connections until `stop`, each served by a thread of its own, within
/// `limits.max_connections` (see the module doc for how room is made).
pub fn accept_loop(
    listener: TcpListener,
    peers: HashSet<i32>,
    limits: InboundLimits,
    inbox: Sender<Request>,
    stop: Arc<AtomicBool>,
) {
    let peers = Arc::new(peers);
    let active = Arc::new(AtomicUsize::new(0));
    let unidentified = Arc::new(Unidentified::default());
    let mut readers: Vec<JoinHandle<()>> = Vec::new();
    let mut refused = RateLimitedWarn {
        count: 0,
        last: None,
    };
    let mut evicted = RateLimitedWarn {
        count: 0,
        last: None,
    };
    let mut next_id = 0u64;
    while !stop.load(Ordering::Acquire) {
        let (stream, peer) = match listener.accept() {
            Ok(accepted) => accepted,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(POLL / 2);
                continue;
            }
            Err(e) => {
                tracing::warn!("accepting an rpc connection: {e}");
                std::thread::sleep(POLL);
                continue;
            }
        };
        readers.retain(|r| !r.is_finished());
        let open = active.load(Ordering::Acquire);
        if open >= limits.max_connections {
            // Closed threads leave within a poll interval; never more than twice the cap.
            if open < 2 * limits.max_connections && unidentified.close_oldest() {
                if let Some(count) = evicted.hit() {
                    tracing::warn!(
                        %peer,
                        limit = limits.max_connections,
                        count,
                        "control connections at their limit: closed the oldest unidentified one"
                    );
                }
            } else {
                drop(stream);
                if let Some(count) = refused.hit() {
                    tracing::warn!(
                        %peer,
                        limit = limits.max_connections,
                        count,
                        "control connection refused: too many inbound connections"
                    );
                }
                continue;
            }
        }
        next_id += 1;
        let id = next_id;
        if let Ok(handle) = stream.try_clone() {
            unidentified.push(id, handle);
        }
        active.fetch_add(1, Ordering::AcqRel);
        let guard = ActiveGuard {
            active: Arc::clone(&active),
            unidentified: Arc::clone(&unidentified),
            id,
        };
        let (inbox, stop, peers, limits) = (
            inbox.clone(),
            Arc::clone(&stop),
            Arc::clone(&peers),
            limits.clone(),
        );
        match std::thread::Builder::new()
            .name("chronik-rpc-in".into())
            .spawn(move || read_loop(stream, peer, &peers, &limits, inbox, stop, &guard))
        {
            Ok(reader) => readers.push(reader),
            Err(e) => tracing::error!("spawning an rpc reader: {e}"),
        }
    }
    for reader in readers {
        let _ = reader.join();
    }
}

/// Counts a served connection until its thread ends (or is never started).
struct ActiveGuard {
    active: Arc<AtomicUsize>,
    unidentified: Arc<Unidentified>,
    id: u64,
}

impl ActiveGuard {
    /// The connection delivered a frame from a peer: it is no longer closed to make room.
    fn identified(&self) {
        self.unidentified.remove(self.id);
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.unidentified.remove(self.id);
        self.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Reads frames until the peer closes, misbehaves or idles, or the transport stops.
fn read_loop(
    mut stream: TcpStream,
    peer: SocketAddr,
    peers: &HashSet<i32>,
    limits: &InboundLimits,
    inbox: Sender<Request>,
    stop: Arc<AtomicBool>,
    guard: &ActiveGuard,
) {
    if stream.set_nonblocking(false).is_err() || stream.set_read_timeout(Some(POLL)).is_err() {
        return;
    }
    let _ = stream.set_nodelay(true);
    let mut frames = FrameAssembler::new(limits.max_frame);
    let mut bound = None;
    let mut chunk = [0u8; READ_CHUNK];
    let accepted = Instant::now();
    let mut last_read = accepted;
    while !stop.load(Ordering::Acquire) {
        if bound.is_none() && accepted.elapsed() >= limits.first_frame {
            tracing::debug!(%peer, "closing an rpc connection that sent no whole frame in time");
            return;
        }
        match stream.read(&mut chunk) {
            Ok(0) => {
                tracing::debug!(%peer, "rpc connection closed by the peer");
                return;
            }
            Ok(n) => {
                last_read = Instant::now();
                frames.feed(&chunk[..n]);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) =>
            {
                if last_read.elapsed() >= limits.idle {
                    tracing::debug!(%peer, idle = ?limits.idle, "closing an idle rpc connection");
                    return;
                }
                continue;
            }
            Err(e) => {
                tracing::debug!(%peer, "rpc connection failed: {e}");
                return;
            }
        }
        loop {
            let body = match frames.next_frame() {
                Ok(Some(body)) => body,
                Ok(None) => break,
                Err(refusal) => return refuse(peer, &refusal),
            };
            let identified = bound.is_some();
            let decoded = decode_frame(&body, peers, &mut bound);
            if !identified && bound.is_some() {
                guard.identified();
            }
            match decoded {
                Ok(Some(request)) => {
                    if inbox.send(request).is_err() {
                        return;
                    }
                }
                Ok(None) => {}
                Err(refusal) => return refuse(peer, &refusal),
            }
        }
    }
}

fn refuse(peer: SocketAddr, refusal: &Refusal) {
    tracing::warn!(%peer, "refusing a control connection: {refusal}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::forward::Heartbeat;

    fn frame(kind: u8, from: i32, payload: &[u8]) -> Vec<u8> {
        encode_frame(kind, from, payload)
    }

    fn heartbeat(id: i32) -> Vec<u8> {
        serde_json::to_vec(&Rpc::Heartbeat(Heartbeat {
            id,
            incarnation: 1,
            host: "h".into(),
            port: 1,
            rack: None,
            rpc: None,
            shutting_down: false,
        }))
        .unwrap()
    }

    /// A declared length is never allocated: only what arrived is held (fails on the old code,
    /// which allocated `vec![0u8; len]` from the length field).
    #[test]
    fn holds_only_the_bytes_received() {
        let cap = 1 << 30;
        let mut frames = FrameAssembler::new(cap);
        frames.feed(&(cap as u32).to_le_bytes());
        frames.feed(&[KIND_RPC, 2, 0, 0, 0, b'{']);
        assert_eq!(frames.next_frame(), Ok(None));
        assert!(frames.held() < 1024, "held {}", frames.held());
        for _ in 0..100 {
            frames.feed(&[b' '; 1000]);
            assert_eq!(frames.next_frame(), Ok(None));
        }
        assert!(frames.held() <= 2 * 100_010, "held {}", frames.held());

        // Above the cap, or below the 5-byte header: refused as soon as the length is there.
        let mut frames = FrameAssembler::new(1024);
        frames.feed(&1025u32.to_le_bytes());
        assert_eq!(frames.next_frame(), Err(Refusal::FrameLength(1025)));
        let mut frames = FrameAssembler::new(1024);
        frames.feed(&4u32.to_le_bytes());
        assert_eq!(frames.next_frame(), Err(Refusal::FrameLength(4)));
        let mut frames = FrameAssembler::new(1024);
        frames.feed(&[0xff, 0xff, 0xff]);
        assert_eq!(frames.next_frame(), Ok(None));
        frames.feed(&[0xff]);
        assert!(frames.next_frame().is_err());
    }

    #[test]
    fn cuts_frames_fed_byte_by_byte() {
        let wire: Vec<u8> = [frame(KIND_RPC, 2, b"ab"), frame(KIND_RAFT, 3, b"")].concat();
        let mut frames = FrameAssembler::new(1024);
        let mut out = Vec::new();
        for byte in wire {
            frames.feed(&[byte]);
            while let Some(body) = frames.next_frame().unwrap() {
                out.push(body);
            }
        }
        assert_eq!(
            out,
            vec![
                vec![KIND_RPC, 2, 0, 0, 0, b'a', b'b'],
                vec![KIND_RAFT, 3, 0, 0, 0]
            ]
        );
    }

    #[test]
    fn only_peers_may_send_and_only_as_themselves() {
        let peers: HashSet<i32> = [2, 3].into();
        let body = |kind, from, payload: &[u8]| frame(kind, from, payload)[4..].to_vec();
        let mut bound = None;
        assert_eq!(
            decode_frame(&body(KIND_RPC, 7, &heartbeat(7)), &peers, &mut bound).err(),
            Some(Refusal::UnknownSender(7))
        );
        assert_eq!(bound, None);
        // An undecodable payload from a peer is skipped, and binds the connection to it.
        assert!(matches!(
            decode_frame(&body(KIND_RPC, 2, b"{"), &peers, &mut bound),
            Ok(None)
        ));
        assert_eq!(bound, Some(2));
        assert!(matches!(
            decode_frame(&body(KIND_RPC, 2, &heartbeat(2)), &peers, &mut bound),
            Ok(Some(Request::Rpc { from: 2, .. }))
        ));
        assert_eq!(
            decode_frame(&body(KIND_RPC, 3, &heartbeat(3)), &peers, &mut bound).err(),
            Some(Refusal::SenderChanged {
                bound: 2,
                claimed: 3
            })
        );
        let mut bound = None;
        assert_eq!(
            decode_frame(&body(KIND_RPC, 3, &heartbeat(2)), &peers, &mut bound).err(),
            Some(Refusal::Impersonation {
                frame: 3,
                payload: 2
            })
        );
        let raft = |from: u64| {
            Message {
                from,
                to: 1,
                ..Default::default()
            }
            .write_to_bytes()
            .unwrap()
        };
        let mut bound = None;
        assert!(matches!(
            decode_frame(&body(KIND_RAFT, 3, &raft(4)), &peers, &mut bound),
            Ok(Some(Request::Raft(_)))
        ));
        let mut bound = None;
        assert_eq!(
            decode_frame(&body(KIND_RAFT, 3, &raft(3)), &peers, &mut bound).err(),
            Some(Refusal::Impersonation {
                frame: 3,
                payload: 2
            })
        );
        assert_eq!(
            decode_frame(&body(9, 3, b""), &peers, &mut None).err(),
            Some(Refusal::UnknownKind(9))
        );
    }
}
