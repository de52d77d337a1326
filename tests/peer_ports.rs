//! The replication and control-plane ports, against real `chronik start` processes: only
//! registered brokers in their current broker epoch may replicate into a broker, only the
//! configured peers may use the control port, and floods of connections to either are bounded
//! while the cluster keeps working.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{batch, produce_request, Client};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

struct Node {
    id: i32,
    addr: SocketAddr,
    rpc: SocketAddr,
    child: Child,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Node {
    /// SIGTERM and wait.
    fn stop(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }

    /// Threads of the broker process now.
    fn threads(&self) -> usize {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("Threads:"))
            .and_then(|n| n.trim().parse().ok())
            .unwrap()
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `n` single-shard brokers forming one cluster and waits until each lists all of them.
fn start_cluster(dir: &Path, n: usize) -> Vec<Node> {
    let kafka: Vec<u16> = (0..n).map(|_| free_port()).collect();
    let rpc: Vec<u16> = (0..n).map(|_| free_port()).collect();
    let peers = (0..n)
        .map(|i| format!("{}@127.0.0.1:{}", i + 1, rpc[i]))
        .collect::<Vec<_>>()
        .join(",");
    let nodes: Vec<Node> = (0..n)
        .map(|i| {
            let log = std::fs::File::create(dir.join(format!("node{}.log", i + 1))).unwrap();
            let child = Command::new(env!("CARGO_BIN_EXE_chronik"))
                .args(["start", "--node-id", &(i + 1).to_string(), "--cores", "1"])
                .args(["--listen", &format!("127.0.0.1:{}", kafka[i])])
                .args(["--rpc", &format!("127.0.0.1:{}", rpc[i])])
                .args(["--peers", &peers])
                .arg("--data-dir")
                .arg(dir.join(format!("node{}", i + 1)))
                .env("RUST_LOG", "info")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap();
            Node {
                id: i as i32 + 1,
                addr: format!("127.0.0.1:{}", kafka[i]).parse().unwrap(),
                rpc: format!("127.0.0.1:{}", rpc[i]).parse().unwrap(),
                child,
            }
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(90);
    for node in &nodes {
        while Client::try_connect(node.addr)
            .ok()
            .map(|mut c| c.metadata(&[]).brokers.len())
            != Some(n)
        {
            assert!(Instant::now() < deadline, "the cluster did not form");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    nodes
}

fn create_topic(client: &mut Client, name: &str, partitions: i32, replication: i16) {
    let mut topic = create_topics_request::CreatableTopic::default();
    topic.name = TopicName(StrBytes::from_string(name.to_string()));
    topic.num_partitions = partitions;
    topic.replication_factor = replication;
    let mut request = CreateTopicsRequest::default();
    request.topics = vec![topic];
    request.timeout_ms = 30_000;
    let response: CreateTopicsResponse = client.call(ApiKey::CreateTopics, 7, &request);
    assert_eq!(response.topics[0].error_code, 0, "{response:?}");
}

/// Partition 0 of `topic` as the broker at `addr` sees it, once it has a leader other than
/// `not`: (leader, leader epoch, topic id).
fn leader_of(addr: SocketAddr, topic: &str, not: i32) -> (i32, i32, [u8; 16]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(mut client) = Client::try_connect(addr) {
            let metadata = client.metadata(&[topic]);
            let t = &metadata.topics[0];
            let p = t.partitions.first();
            if let Some(p) = p.filter(|p| t.error_code == 0 && p.leader_id.0 > 0) {
                if p.leader_id.0 != not {
                    return (p.leader_id.0, p.leader_epoch, *t.topic_id.as_bytes());
                }
            }
        }
        assert!(Instant::now() < deadline, "no leader for {topic}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Produces `values` with acks=all to partition 0; the error code.
fn produce_all(addr: SocketAddr, topic: &str, values: &[&[u8]]) -> i16 {
    let request = produce_request(topic, -1, &[(0, batch(values, 1))]);
    let response: ProduceResponse = Client::connect(addr).call(ApiKey::Produce, 9, &request);
    response.responses[0].partition_responses[0].error_code
}

/// A replication Hello of version 3: leader, its shard, its broker epoch (big-endian).
fn hello_v3(leader: i32, broker_epoch: u64) -> Vec<u8> {
    let mut out = 20i32.to_be_bytes().to_vec();
    out.extend_from_slice(&0x7250i16.to_be_bytes());
    out.extend_from_slice(&3i16.to_be_bytes());
    out.extend_from_slice(&leader.to_be_bytes());
    out.extend_from_slice(&0i32.to_be_bytes());
    out.extend_from_slice(&broker_epoch.to_be_bytes());
    out
}

/// The Hello older brokers sent (and accepted from anyone): leader and shard, no epoch.
fn hello_v2(leader: i32) -> Vec<u8> {
    let mut out = 10i32.to_be_bytes().to_vec();
    out.extend_from_slice(&0x7250i16.to_be_bytes());
    out.extend_from_slice(&leader.to_be_bytes());
    out.extend_from_slice(&0i32.to_be_bytes());
    out
}

/// A replication frame about partition 0 of `topic_id`: `kind`, the partition, then `rest`.
fn partition_frame(kind: u8, topic_id: &[u8; 16], rest: &[u8]) -> Vec<u8> {
    let mut body = vec![kind];
    body.extend_from_slice(topic_id);
    body.extend_from_slice(&0i32.to_be_bytes());
    body.extend_from_slice(rest);
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

/// What a forger would send after its Hello: LogStart far ahead (empties the log), EpochEnd at 0
/// (truncates it), both in the partition's current leader epoch.
fn destructive_frames(topic_id: &[u8; 16], leader_epoch: i32) -> Vec<u8> {
    let log_start = [&leader_epoch.to_be_bytes()[..], &1_000_000i64.to_be_bytes()].concat();
    let epoch_end = [
        &leader_epoch.to_be_bytes()[..],
        &0i32.to_be_bytes(),
        &0i64.to_be_bytes(),
    ]
    .concat();
    [
        partition_frame(4, topic_id, &log_start),
        partition_frame(3, topic_id, &epoch_end),
    ]
    .concat()
}

/// Bytes the peer sends before closing the connection (reads for up to 5 s).
fn answer_before_close(stream: &mut TcpStream) -> Vec<u8> {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return got,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A Hello from anything but a registered broker in its current epoch is refused: the follower
/// answers nothing, closes the link, and its log is untouched; then the real leader's records
/// replicate, and a follower elected leader serves every acknowledged record.
///
/// On the old code the Hello of version 2 naming the leader was accepted from anyone: the
/// follower announced its wire version and acked the forged frames, emptying its log.
#[test]
fn forged_replication_hellos_are_refused_and_follower_logs_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let mut nodes = start_cluster(tmp.path(), 3);
    create_topic(&mut Client::connect(nodes[0].addr), "guarded", 1, 3);
    let (leader, epoch, topic_id) = leader_of(nodes[0].addr, "guarded", -1);
    let leader_addr = nodes[leader as usize - 1].addr;
    let first: Vec<Vec<u8>> = (0..10).map(|i| format!("first-{i}").into_bytes()).collect();
    let first: Vec<&[u8]> = first.iter().map(|v| v.as_slice()).collect();
    assert_eq!(produce_all(leader_addr, "guarded", &first), 0);

    let followers: Vec<SocketAddr> = nodes
        .iter()
        .filter(|n| n.id != leader)
        .map(|n| n.addr)
        .collect();
    for follower in &followers {
        for (what, hello) in [
            ("an epochless Hello naming the leader", hello_v2(leader)),
            ("a Hello from a broker id never registered", hello_v3(77, 1)),
            (
                "a Hello naming the leader with a wrong epoch",
                hello_v3(leader, 12345),
            ),
        ] {
            let mut stream = TcpStream::connect(follower).unwrap();
            stream.write_all(&hello).unwrap();
            let _ = stream.write_all(&destructive_frames(&topic_id, epoch));
            let answer = answer_before_close(&mut stream);
            assert!(
                answer.is_empty(),
                "{what}: the follower at {follower} answered {answer:?}"
            );
        }
    }

    // Replication from the real leader goes on, and the records are where they were.
    let second: Vec<Vec<u8>> = (0..5).map(|i| format!("second-{i}").into_bytes()).collect();
    let second: Vec<&[u8]> = second.iter().map(|v| v.as_slice()).collect();
    assert_eq!(produce_all(leader_addr, "guarded", &second), 0);
    nodes[leader as usize - 1].stop();
    let survivor = followers[0];
    let (new_leader, _, _) = leader_of(survivor, "guarded", leader);
    let new_leader_addr = nodes[new_leader as usize - 1].addr;
    let records = Client::connect(new_leader_addr).read_all("guarded", 0, 0);
    let values: Vec<&[u8]> = records.iter().map(|(_, v)| v.as_ref()).collect();
    let offsets: Vec<i64> = records.iter().map(|(o, _)| *o).collect();
    assert_eq!(offsets, (0..15).collect::<Vec<i64>>());
    assert_eq!(values, [first, second].concat());
    let log = std::fs::read_to_string(tmp.path().join(format!("node{}.log", nodes[1].id)))
        .unwrap_or_default()
        + &std::fs::read_to_string(tmp.path().join(format!("node{}.log", nodes[2].id)))
            .unwrap_or_default()
        + &std::fs::read_to_string(tmp.path().join(format!("node{}.log", nodes[0].id)))
            .unwrap_or_default();
    assert!(
        log.contains("refusing a replication link"),
        "no refusal logged"
    );
}

/// A control-port frame: `[len u32 LE][kind u8][from i32 LE][payload]`.
fn control_frame(kind: u8, from: i32, payload: &[u8]) -> Vec<u8> {
    let mut frame = ((5 + payload.len()) as u32).to_le_bytes().to_vec();
    frame.push(kind);
    frame.extend_from_slice(&from.to_le_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// Whether the peer closed the connection within 5 s.
fn closed(stream: &mut TcpStream) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

/// The control port refuses senders that are not peers and frames above its cap, and serves a
/// bounded number of connections: a flood of them costs no thread each, and the cluster still
/// elects leaders and creates topics meanwhile.
///
/// On the old code every connection got a thread of its own (the broker's thread count grew by
/// the flood) and a heartbeat from an unknown node id was taken.
#[test]
fn control_port_refuses_strangers_and_bounds_connections() {
    let tmp = tempfile::tempdir().unwrap();
    let mut nodes = start_cluster(tmp.path(), 3);
    let target = &nodes[0];
    let heartbeat = |id: i32| {
        format!(
            r#"{{"Heartbeat":{{"id":{id},"incarnation":1,"host":"127.0.0.1","port":1,"rack":null,"rpc":null,"shutting_down":false}}}}"#
        )
        .into_bytes()
    };
    // A node id that is not a peer, sending as itself.
    let mut stranger = TcpStream::connect(target.rpc).unwrap();
    stranger
        .write_all(&control_frame(2, 9, &heartbeat(9)))
        .unwrap();
    assert!(closed(&mut stranger), "a stranger's heartbeat was taken");
    // A declared length far above the cap.
    let mut huge = TcpStream::connect(target.rpc).unwrap();
    huge.write_all(&0xffff_fff0u32.to_le_bytes()).unwrap();
    assert!(closed(&mut huge));

    // A flood: many connections, each announcing a large frame and sending part of it.
    let before = target.threads();
    let mut flood = Vec::new();
    for _ in 0..200 {
        if let Ok(mut stream) = TcpStream::connect(target.rpc) {
            let _ = stream.write_all(&(60u32 << 20).to_le_bytes());
            let _ = stream.write_all(&[2, 2, 0, 0, 0]);
            flood.push(stream);
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let during = target.threads();
    assert!(
        during <= before + 16,
        "threads grew from {before} to {during} under a flood of 200 connections"
    );
    // The cluster keeps working: topics are created and replicate, and a leader change goes
    // through (its broker stopped) while the flood holds its connections.
    create_topic(&mut Client::connect(nodes[1].addr), "flooded", 1, 3);
    let (leader, _, _) = leader_of(nodes[1].addr, "flooded", -1);
    assert_eq!(
        produce_all(nodes[leader as usize - 1].addr, "flooded", &[b"v"]),
        0
    );
    let other = nodes.iter().find(|n| n.id != leader).unwrap().addr;
    nodes[leader as usize - 1].stop();
    let (new_leader, _, _) = leader_of(other, "flooded", leader);
    assert_ne!(new_leader, leader);
    drop(flood);
}
