//! TCP transport between control nodes (cluster mode): Raft messages and controller rpcs.
//!
//! Every frame is `[len u32][kind u8][from i32][payload]`, little endian; `len` counts what
//! follows it. Kind 1 carries a raft-rs `Message` (protobuf), kind 2 an `Rpc` (JSON). Each peer
//! has one outbound connection, driven by its own thread from a bounded queue: a peer that is
//! down costs nothing but dropped frames (Raft retransmits; rpcs time out). Inbound frames from
//! any connection go to the control thread's queue.

use std::collections::HashMap;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use protobuf::Message as _;
use raft::prelude::Message;

use super::forward::Rpc;
use super::node::Request;

const KIND_RAFT: u8 = 1;
const KIND_RPC: u8 = 2;
/// Frames larger than this end the connection (metadata never needs more).
const MAX_FRAME: usize = 64 << 20;
/// Outbound frames queued per peer before new ones are dropped.
const QUEUE: usize = 4096;
/// After a failed connect, frames to that peer are dropped for this long before the next try.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(500);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// How often blocked threads look at the stop flag.
const POLL: Duration = Duration::from_millis(100);

/// One node's side of the transport.
pub struct Transport {
    node_id: i32,
    peers: HashMap<i32, Sender<Vec<u8>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Transport {
    /// Listens on `listen` and connects (lazily) to every peer but `node_id`; inbound frames
    /// become `Request::Raft` / `Request::Rpc` on `inbox`.
    pub fn start(
        node_id: i32,
        listen: SocketAddr,
        peers: &[(i32, SocketAddr)],
        inbox: Sender<Request>,
    ) -> io::Result<Transport> {
        let stop = Arc::new(AtomicBool::new(false));
        let listener = TcpListener::bind(listen)?;
        listener.set_nonblocking(true)?;
        let mut threads = Vec::new();
        {
            let stop = Arc::clone(&stop);
            threads.push(
                std::thread::Builder::new()
                    .name("chronik-rpc-accept".into())
                    .spawn(move || accept_loop(listener, inbox, stop))?,
            );
        }
        let mut senders = HashMap::new();
        for (peer, address) in peers.iter().filter(|(id, _)| *id != node_id) {
            let (tx, rx) = crossbeam_channel::bounded(QUEUE);
            let (peer, address, stop) = (*peer, *address, Arc::clone(&stop));
            threads.push(
                std::thread::Builder::new()
                    .name(format!("chronik-rpc-to-{peer}"))
                    .spawn(move || send_loop(peer, address, rx, stop))?,
            );
            senders.insert(peer, tx);
        }
        tracing::info!(node_id, %listen, peers = senders.len(), "control transport listening");
        Ok(Transport {
            node_id,
            peers: senders,
            stop,
            threads,
        })
    }

    /// Queues a raft message for its destination (raft id = node id + 1).
    pub fn send_raft(&self, message: &Message) {
        let Some(to) = message.to.checked_sub(1).map(|id| id as i32) else {
            return;
        };
        match message.write_to_bytes() {
            Ok(payload) => self.send_frame(to, KIND_RAFT, &payload),
            Err(e) => tracing::error!("encoding a raft message: {e}"),
        }
    }

    /// Queues an rpc for node `to`.
    pub fn send_rpc(&self, to: i32, rpc: &Rpc) {
        match serde_json::to_vec(rpc) {
            Ok(payload) => self.send_frame(to, KIND_RPC, &payload),
            Err(e) => tracing::error!("encoding an rpc: {e}"),
        }
    }

    fn send_frame(&self, to: i32, kind: u8, payload: &[u8]) {
        let Some(queue) = self.peers.get(&to) else {
            tracing::warn!(to, "no rpc address for node; frame dropped");
            return;
        };
        let mut frame = Vec::with_capacity(9 + payload.len());
        frame.extend_from_slice(&((5 + payload.len()) as u32).to_le_bytes());
        frame.push(kind);
        frame.extend_from_slice(&self.node_id.to_le_bytes());
        frame.extend_from_slice(payload);
        match queue.try_send(frame) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => tracing::debug!(to, "peer queue full; frame dropped"),
            Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

impl Drop for Transport {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.peers.clear();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

fn accept_loop(listener: TcpListener, inbox: Sender<Request>, stop: Arc<AtomicBool>) {
    let mut readers: Vec<JoinHandle<()>> = Vec::new();
    while !stop.load(Ordering::Acquire) {
        match listener.accept() {
            Ok((stream, peer)) => {
                let (inbox, stop) = (inbox.clone(), Arc::clone(&stop));
                match std::thread::Builder::new()
                    .name("chronik-rpc-in".into())
                    .spawn(move || read_loop(stream, peer, inbox, stop))
                {
                    Ok(reader) => readers.push(reader),
                    Err(e) => tracing::error!("spawning an rpc reader: {e}"),
                }
                readers.retain(|r| !r.is_finished());
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(POLL / 2),
            Err(e) => {
                tracing::warn!("accepting an rpc connection: {e}");
                std::thread::sleep(POLL);
            }
        }
    }
    for reader in readers {
        let _ = reader.join();
    }
}

/// Reads frames until the peer closes, a frame is malformed, or the transport stops.
fn read_loop(
    mut stream: TcpStream,
    peer: SocketAddr,
    inbox: Sender<Request>,
    stop: Arc<AtomicBool>,
) {
    if stream.set_nonblocking(false).is_err() || stream.set_read_timeout(Some(POLL)).is_err() {
        return;
    }
    let _ = stream.set_nodelay(true);
    loop {
        let mut header = [0u8; 4];
        match read_full(&mut stream, &mut header, &stop) {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                tracing::debug!(%peer, "rpc connection closed: {e}");
                return;
            }
        }
        let len = u32::from_le_bytes(header) as usize;
        if !(5..=MAX_FRAME).contains(&len) {
            tracing::warn!(%peer, len, "malformed rpc frame; closing the connection");
            return;
        }
        let mut body = vec![0u8; len];
        match read_full(&mut stream, &mut body, &stop) {
            Ok(true) => {}
            _ => return,
        }
        let kind = body[0];
        let from = i32::from_le_bytes([body[1], body[2], body[3], body[4]]);
        let payload = &body[5..];
        let request = match kind {
            KIND_RAFT => match Message::parse_from_bytes(payload) {
                Ok(message) => Request::Raft(Box::new(message)),
                Err(e) => {
                    tracing::warn!(%peer, "undecodable raft message: {e}");
                    continue;
                }
            },
            KIND_RPC => match serde_json::from_slice::<Rpc>(payload) {
                Ok(rpc) => Request::Rpc {
                    from,
                    rpc: Box::new(rpc),
                },
                Err(e) => {
                    tracing::warn!(%peer, "undecodable rpc: {e}");
                    continue;
                }
            },
            other => {
                tracing::warn!(%peer, kind = other, "unknown rpc frame kind; closing the connection");
                return;
            }
        };
        if inbox.send(request).is_err() {
            return;
        }
    }
}

/// Fills `buffer`; Ok(false) when the transport stops or the peer closed before the first byte.
fn read_full(stream: &mut TcpStream, buffer: &mut [u8], stop: &AtomicBool) -> io::Result<bool> {
    let mut filled = 0;
    while filled < buffer.len() {
        if stop.load(Ordering::Acquire) {
            return Ok(false);
        }
        match stream.read(&mut buffer[filled..]) {
            Ok(0) if filled == 0 => return Ok(false),
            Ok(0) => {
                return Err(io::Error::new(
                    ErrorKind::UnexpectedEof,
                    "peer closed mid-frame",
                ))
            }
            Ok(n) => filled += n,
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

fn send_loop(peer: i32, address: SocketAddr, frames: Receiver<Vec<u8>>, stop: Arc<AtomicBool>) {
    let mut stream: Option<TcpStream> = None;
    let mut last_failure: Option<Instant> = None;
    while !stop.load(Ordering::Acquire) {
        let frame = match frames.recv_timeout(POLL) {
            Ok(frame) => frame,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => continue,
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
        };
        if stream.is_none() {
            if last_failure.is_some_and(|at| at.elapsed() < RECONNECT_BACKOFF) {
                continue;
            }
            match connect(address) {
                Ok(connected) => {
                    tracing::debug!(peer, %address, "connected to peer");
                    stream = Some(connected);
                    last_failure = None;
                }
                Err(e) => {
                    if last_failure.is_none() {
                        tracing::debug!(peer, %address, "connecting to peer failed: {e}");
                    }
                    last_failure = Some(Instant::now());
                    continue;
                }
            }
        }
        if let Some(connected) = stream.as_mut() {
            if let Err(e) = connected.write_all(&frame) {
                tracing::debug!(peer, "sending to peer failed: {e}");
                stream = None;
                last_failure = Some(Instant::now());
            }
        }
    }
}

fn connect(address: SocketAddr) -> io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&address, CONNECT_TIMEOUT)?;
    stream.set_nodelay(true)?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::forward::Heartbeat;

    fn frame(kind: u8, from: i32, payload: &[u8]) -> Vec<u8> {
        let mut frame = ((5 + payload.len()) as u32).to_le_bytes().to_vec();
        frame.push(kind);
        frame.extend_from_slice(&from.to_le_bytes());
        frame.extend_from_slice(payload);
        frame
    }

    fn heartbeat_frame(from: i32) -> Vec<u8> {
        let rpc = Rpc::Heartbeat(Heartbeat {
            id: from,
            incarnation: 1,
            host: "h".into(),
            port: 1,
            rack: None,
            rpc: None,
            shutting_down: false,
        });
        frame(KIND_RPC, from, &serde_json::to_vec(&rpc).unwrap())
    }

    fn expect_heartbeat(inbox: &Receiver<Request>, from: i32) {
        match inbox.recv_timeout(Duration::from_secs(5)).unwrap() {
            Request::Rpc { from: sender, rpc } => {
                assert_eq!(sender, from);
                assert!(matches!(*rpc, Rpc::Heartbeat(ref hb) if hb.id == from));
            }
            _ => panic!("expected a heartbeat"),
        }
    }

    /// The peer closed the connection (read returns 0 or an error).
    fn closed(stream: &mut TcpStream) -> bool {
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut byte = [0u8; 1];
        matches!(stream.read(&mut byte), Ok(0) | Err(_))
    }

    #[test]
    fn delivers_frames_and_survives_bad_ones() {
        let address = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let (inbox_tx, inbox) = crossbeam_channel::unbounded();
        let transport = Transport::start(1, address, &[(1, address)], inbox_tx).unwrap();
        let connect = || {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                match TcpStream::connect(address) {
                    Ok(stream) => return stream,
                    Err(e) if Instant::now() < deadline => {
                        let _ = e;
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(e) => panic!("{e}"),
                }
            }
        };

        // Undecodable payloads are skipped; the connection keeps working.
        let mut stream = connect();
        stream.write_all(&frame(KIND_RPC, 2, b"{not json")).unwrap();
        stream.write_all(&frame(KIND_RAFT, 2, &[0xff; 7])).unwrap();
        stream.write_all(&heartbeat_frame(2)).unwrap();
        expect_heartbeat(&inbox, 2);

        // An unknown kind, a frame too short or too long: the connection is closed.
        for bad in [
            frame(9, 2, b"x"),
            3u32.to_le_bytes().to_vec(),
            ((MAX_FRAME + 1) as u32).to_le_bytes().to_vec(),
        ] {
            let mut stream = connect();
            stream.write_all(&bad).unwrap();
            assert!(closed(&mut stream));
        }

        // A frame cut short by the peer closing: nothing is delivered.
        let mut stream = connect();
        let whole = heartbeat_frame(3);
        stream.write_all(&whole[..whole.len() - 3]).unwrap();
        drop(stream);

        // Others are still served.
        let mut stream = connect();
        stream.write_all(&heartbeat_frame(4)).unwrap();
        expect_heartbeat(&inbox, 4);
        assert!(inbox.try_recv().is_err());
        drop(transport);
    }

    #[test]
    fn sends_to_peers_and_drops_frames_for_unknown_ones() {
        // A port found free by binding :0 may be taken (say, as another test's outgoing port)
        // before the transport binds it again: pick new ports then.
        let (node_a, _node_b, _a_inbox, b_inbox) = (0..20)
            .find_map(|_| {
                let free = || {
                    TcpListener::bind("127.0.0.1:0")
                        .unwrap()
                        .local_addr()
                        .unwrap()
                };
                let (a, b) = (free(), free());
                let peers = [(1, a), (2, b)];
                let (a_tx, a_inbox) = crossbeam_channel::unbounded();
                let (b_tx, b_inbox) = crossbeam_channel::unbounded();
                let node_a = Transport::start(1, a, &peers, a_tx).ok()?;
                let node_b = Transport::start(2, b, &peers, b_tx).ok()?;
                Some((node_a, node_b, a_inbox, b_inbox))
            })
            .expect("two free loopback ports");
        node_a.send_rpc(
            7,
            &Rpc::Answer {
                id: 1,
                result: super::super::forward::ClientResult::Unit(Ok(())),
            },
        );
        // Raft ids are node ids + 1: this goes to node 2.
        let message = Message {
            to: 3,
            from: 2,
            term: 5,
            ..Default::default()
        };
        node_a.send_raft(&message);
        match b_inbox.recv_timeout(Duration::from_secs(5)).unwrap() {
            Request::Raft(received) => {
                assert_eq!((received.to, received.from, received.term), (3, 2, 5))
            }
            _ => panic!("expected a raft message"),
        }
    }
}
