//! TCP transport between control nodes (cluster mode): Raft messages and controller rpcs.
//!
//! Every frame is `[len u32][kind u8][from i32][payload]`, little endian; `len` counts what
//! follows it. Kind 1 carries a raft-rs `Message` (protobuf), kind 2 an `Rpc` (JSON). Each peer
//! has one outbound connection, driven by its own thread from a bounded queue: a peer that is
//! down costs nothing but dropped frames (Raft retransmits; rpcs time out). Inbound frames go to
//! the control thread's queue; `inbound` bounds that side (connections, frame sizes, idle
//! connections) and accepts frames from the configured peers only.

use std::collections::{HashMap, HashSet};
use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use protobuf::Message as _;
use raft::prelude::Message;

use super::forward::Rpc;
use super::inbound::{self, InboundLimits, IDLE_TIMEOUT, KIND_RAFT, KIND_RPC, POLL};
use super::node::Request;

/// Outbound frames queued per peer before new ones are dropped.
const QUEUE: usize = 4096;
/// After a failed connect, frames to that peer are dropped for this long before the next try.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(500);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// An outbound connection unused this long is dropped and opened anew before the next frame, so
/// that the receiver's idle timeout never closes one under a frame in flight.
const OUTBOUND_IDLE: Duration = Duration::from_secs(IDLE_TIMEOUT.as_secs() / 2);

/// One node's side of the transport.
pub struct Transport {
    node_id: i32,
    peers: HashMap<i32, Sender<Vec<u8>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Transport {
    /// Listens on `listen` and connects (lazily) to every peer but `node_id`; inbound frames
    /// from those peers become `Request::Raft` / `Request::Rpc` on `inbox`.
    pub fn start(
        node_id: i32,
        listen: SocketAddr,
        peers: &[(i32, SocketAddr)],
        inbox: Sender<Request>,
    ) -> io::Result<Transport> {
        let others = peers.iter().filter(|(id, _)| *id != node_id).count();
        let limits = InboundLimits::for_peers(others);
        Transport::start_with(node_id, listen, peers, inbox, limits)
    }

    /// `start` with explicit bounds on the inbound side.
    pub fn start_with(
        node_id: i32,
        listen: SocketAddr,
        peers: &[(i32, SocketAddr)],
        inbox: Sender<Request>,
        limits: InboundLimits,
    ) -> io::Result<Transport> {
        let stop = Arc::new(AtomicBool::new(false));
        let listener = TcpListener::bind(listen)?;
        listener.set_nonblocking(true)?;
        let senders_allowed: HashSet<i32> = peers
            .iter()
            .map(|(id, _)| *id)
            .filter(|id| *id != node_id)
            .collect();
        let mut threads = Vec::new();
        {
            let stop = Arc::clone(&stop);
            threads.push(
                std::thread::Builder::new()
                    .name("chronik-rpc-accept".into())
                    .spawn(move || {
                        inbound::accept_loop(listener, senders_allowed, limits, inbox, stop)
                    })?,
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
        let frame = super::inbound::encode_frame(kind, self.node_id, payload);
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

fn send_loop(peer: i32, address: SocketAddr, frames: Receiver<Vec<u8>>, stop: Arc<AtomicBool>) {
    let mut stream: Option<TcpStream> = None;
    let mut last_failure: Option<Instant> = None;
    let mut last_write = Instant::now();
    while !stop.load(Ordering::Acquire) {
        let frame = match frames.recv_timeout(POLL) {
            Ok(frame) => frame,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => continue,
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
        };
        if stream.is_some() && last_write.elapsed() >= OUTBOUND_IDLE {
            stream = None;
        }
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
            last_write = Instant::now();
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
    use std::io::Read;

    use super::*;
    use crate::control::forward::Heartbeat;
    use crate::control::inbound::MAX_FRAME;

    fn frame(kind: u8, from: i32, payload: &[u8]) -> Vec<u8> {
        crate::control::inbound::encode_frame(kind, from, payload)
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
        match stream.read(&mut byte) {
            Ok(0) => true,
            Ok(_) => false,
            // Still open after the wait.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                false
            }
            Err(_) => true,
        }
    }

    /// Peers 1 (this node) to 4; nothing is ever sent to the others.
    fn peers(address: SocketAddr) -> Vec<(i32, SocketAddr)> {
        let nowhere: SocketAddr = "127.0.0.1:9".parse().unwrap();
        vec![(1, address), (2, nowhere), (3, nowhere), (4, nowhere)]
    }

    fn free_address() -> SocketAddr {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    }

    fn connect_to(address: SocketAddr) -> TcpStream {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match TcpStream::connect(address) {
                Ok(stream) => return stream,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    #[test]
    fn delivers_frames_and_survives_bad_ones() {
        let address = free_address();
        let (inbox_tx, inbox) = crossbeam_channel::unbounded();
        let transport = Transport::start(1, address, &peers(address), inbox_tx).unwrap();
        let connect = || connect_to(address);

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

    /// Only the configured peers may send, each as itself (fails on the old code: a frame from
    /// any id was delivered).
    #[test]
    fn refuses_senders_that_are_not_peers() {
        let address = free_address();
        let (inbox_tx, inbox) = crossbeam_channel::unbounded();
        let transport = Transport::start(1, address, &peers(address), inbox_tx).unwrap();
        let raft_from = |raft_id: u64| {
            let message = Message {
                to: 2,
                from: raft_id,
                term: 1,
                ..Default::default()
            };
            message.write_to_bytes().unwrap()
        };
        for bad in [
            // Not in --peers; this node itself.
            heartbeat_frame(99),
            heartbeat_frame(1),
            // A raft message whose sender is not the frame's (raft id 4 is node 3).
            frame(KIND_RAFT, 2, &raft_from(4)),
        ] {
            let mut stream = connect_to(address);
            stream.write_all(&bad).unwrap();
            assert!(closed(&mut stream));
        }
        // A connection that changes sender is closed after its first frame.
        let mut stream = connect_to(address);
        stream.write_all(&heartbeat_frame(2)).unwrap();
        stream.write_all(&heartbeat_frame(3)).unwrap();
        expect_heartbeat(&inbox, 2);
        assert!(closed(&mut stream));
        // A heartbeat naming another broker than its sender.
        let mut forged = heartbeat_frame(3);
        forged[5..9].copy_from_slice(&2i32.to_le_bytes());
        let mut stream = connect_to(address);
        stream.write_all(&forged).unwrap();
        assert!(closed(&mut stream));
        // A peer sending as itself is served.
        let mut stream = connect_to(address);
        stream
            .write_all(&frame(KIND_RAFT, 2, &raft_from(3)))
            .unwrap();
        match inbox.recv_timeout(Duration::from_secs(5)).unwrap() {
            Request::Raft(message) => assert_eq!(message.from, 3),
            _ => panic!("expected a raft message"),
        }
        assert!(inbox.try_recv().is_err());
        drop(transport);
    }

    /// At most `max_connections` are served. A new connection makes room by closing the oldest
    /// one that has not shown to be a peer's; when all are peers', it is closed at once. Silent
    /// connections are closed, which frees room. (Fails on the old code: every connection got a
    /// thread and stayed.)
    #[test]
    fn bounds_connections_and_lets_peers_in_past_strangers() {
        let address = free_address();
        let (inbox_tx, inbox) = crossbeam_channel::unbounded();
        let limits = InboundLimits {
            max_connections: 2,
            max_frame: 1024,
            idle: Duration::from_millis(300),
            first_frame: Duration::from_secs(30),
        };
        let transport =
            Transport::start_with(1, address, &peers(address), inbox_tx, limits).unwrap();
        // Two strangers that send nothing take both places; a peer still gets in, and the
        // oldest stranger is closed for it, then the other one for the next peer.
        let mut strangers = [connect_to(address), connect_to(address)];
        let mut held = Vec::new();
        for (from, stranger) in [2, 3].into_iter().zip(strangers.iter_mut()) {
            let mut stream = connect_to(address);
            stream.write_all(&heartbeat_frame(from)).unwrap();
            expect_heartbeat(&inbox, from);
            assert!(closed(stranger));
            held.push(stream);
        }
        // Both places are peers': a third connection is closed at once, whatever it sends.
        let mut third = connect_to(address);
        let _ = third.write_all(&heartbeat_frame(4));
        assert!(closed(&mut third));
        // The peers fall silent and are closed; then there is room again.
        for stream in &mut held {
            assert!(closed(stream));
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let mut stream = connect_to(address);
            if stream.write_all(&heartbeat_frame(4)).is_ok() {
                if let Ok(Request::Rpc { from: 4, .. }) =
                    inbox.recv_timeout(Duration::from_millis(500))
                {
                    break;
                }
            }
            // Our side saw the close before the transport's reader thread ended.
            assert!(
                Instant::now() < deadline,
                "no room after idle connections closed"
            );
        }
        // A frame above the cap is refused when its length arrives, before its bytes do.
        let mut stream = connect_to(address);
        stream.write_all(&1025u32.to_le_bytes()).unwrap();
        assert!(closed(&mut stream));
        drop(transport);
    }

    /// A connection that does not deliver a whole frame in time is closed, even while it keeps
    /// sending bytes of one.
    #[test]
    fn a_first_frame_must_arrive_in_time() {
        let address = free_address();
        let (inbox_tx, _inbox) = crossbeam_channel::unbounded();
        let limits = InboundLimits {
            max_connections: 4,
            max_frame: 1 << 20,
            idle: Duration::from_secs(30),
            first_frame: Duration::from_millis(300),
        };
        let transport =
            Transport::start_with(1, address, &peers(address), inbox_tx, limits).unwrap();
        let mut stream = connect_to(address);
        stream.write_all(&(1u32 << 20).to_le_bytes()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut cut = false;
        while Instant::now() < deadline {
            if stream.write_all(&[0u8; 16]).is_err() {
                cut = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(cut, "a dribbling connection was kept");
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
