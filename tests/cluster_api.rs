//! Cluster mode over the wire: three real `chronik start` processes on
//! loopback, raw kafka-protocol requests.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::cluster::{
    create_topic, create_topic_with, leader_and_followers, start_cluster, start_cluster_env,
    start_cluster_with, wait_for_leaders, Node,
};
use common::{batch, fetch_request, produce_request, Client};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

/// NOT_LEADER_OR_FOLLOWER.
const NOT_LEADER: i16 = 6;

#[test]
fn produce_and_fetch_to_a_non_leader_name_the_current_leader() {
    let tmp = tempfile::tempdir().unwrap();
    let nodes = start_cluster(tmp.path(), 3);
    create_topic(&mut Client::connect(nodes[1].addr), "led", 3, 3);

    // Every broker answers Metadata from its own image: wait until the first one has leaders.
    let metadata = wait_for_leaders(nodes[0].addr, "led", Duration::from_secs(10));
    // `chronik cluster status` reports what Metadata says, from any broker (once its image
    // has the topic too).
    let expected: Vec<(i64, i64)> = metadata.topics[0]
        .partitions
        .iter()
        .map(|p| (i64::from(p.leader_id.0), i64::from(p.leader_epoch)))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = Command::new(env!("CARGO_BIN_EXE_chronik"))
            .args(["cluster", "status", "--json", "--bootstrap"])
            .arg(nodes[2].addr.to_string())
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(status["brokers"].as_array().unwrap().len(), 3);
        let reported: Vec<(i64, i64)> = status["topics"][0]["partitions"]
            .as_array()
            .map(|ps| {
                ps.iter()
                    .map(|p| {
                        (
                            p["leader"].as_i64().unwrap(),
                            p["leader_epoch"].as_i64().unwrap(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        if status["topics"][0]["name"] == "led" && reported == expected {
            break;
        }
        assert!(Instant::now() < deadline, "status disagrees: {status}");
        std::thread::sleep(Duration::from_millis(100));
    }

    let partition = &metadata.topics[0].partitions[0];
    let (leader, epoch) = (partition.leader_id.0, partition.leader_epoch);
    let leader_broker = metadata
        .brokers
        .iter()
        .find(|b| b.node_id.0 == leader)
        .unwrap();
    let non_leader = nodes
        .iter()
        .find(|n| n.addr.port() as i32 != leader_broker.port)
        .unwrap();
    let mut client = Client::connect(non_leader.addr);
    let records = batch(&[b"not here"], 1);

    // Produce v10+: error, current leader and its endpoint.
    let request = produce_request("led", 1, &[(0, records.clone())]);
    let response: ProduceResponse = client.call(ApiKey::Produce, 10, &request);
    let answer = &response.responses[0].partition_responses[0];
    assert_eq!(answer.error_code, NOT_LEADER);
    assert_eq!(
        (
            answer.current_leader.leader_id.0,
            answer.current_leader.leader_epoch
        ),
        (leader, epoch)
    );
    assert_eq!(response.node_endpoints.len(), 1, "{response:?}");
    let endpoint = &response.node_endpoints[0];
    assert_eq!(endpoint.node_id.0, leader);
    assert_eq!(
        (endpoint.host.as_str(), endpoint.port),
        (leader_broker.host.as_str(), leader_broker.port)
    );
    // Produce v9 carries no leader: the error alone.
    let response: ProduceResponse = client.call(ApiKey::Produce, 9, &request);
    assert_eq!(
        response.responses[0].partition_responses[0].error_code,
        NOT_LEADER
    );

    // Fetch v12: error and current leader; v16 adds the endpoint.
    let request = fetch_request(&[("led", 0, 0, 1 << 20)], 0, 1, 1 << 20);
    let response: FetchResponse = client.call(ApiKey::Fetch, 12, &request);
    let answer = &response.responses[0].partitions[0];
    assert_eq!(answer.error_code, NOT_LEADER);
    assert_eq!(
        (
            answer.current_leader.leader_id.0,
            answer.current_leader.leader_epoch
        ),
        (leader, epoch)
    );
    assert!(response.node_endpoints.is_empty());
    let mut request = request;
    request.topics[0].topic_id = metadata.topics[0].topic_id;
    let response: FetchResponse = client.call(ApiKey::Fetch, 16, &request);
    let answer = &response.responses[0].partitions[0];
    assert_eq!(answer.error_code, NOT_LEADER);
    assert_eq!(answer.current_leader.leader_id.0, leader);
    assert_eq!(response.node_endpoints.len(), 1, "{response:?}");
    assert_eq!(response.node_endpoints[0].node_id.0, leader);
    assert_eq!(response.node_endpoints[0].port, leader_broker.port);

    // The leader itself takes the produce.
    let mut at_leader = Client::connect(
        nodes
            .iter()
            .find(|n| n.addr.port() as i32 == leader_broker.port)
            .unwrap()
            .addr,
    );
    let request = produce_request("led", 1, &[(0, records)]);
    let response: ProduceResponse = at_leader.call(ApiKey::Produce, 10, &request);
    let answer = &response.responses[0].partition_responses[0];
    assert_eq!((answer.error_code, answer.base_offset), (0, 0));
    assert_eq!(answer.current_leader.leader_id.0, -1);
    assert!(response.node_endpoints.is_empty());
}

/// A leader's shard opens one replication link per follower, and once the follower announced it
/// takes it, its Hello names that shard: the follower serves the link on its shard of the same
/// index, which owns the same partitions (shards own partitions by one hash on every broker),
/// wherever the listener accepted it. acks=all to every partition then completes with no frame
/// crossing shards on the follower.
#[test]
fn replication_links_are_served_on_the_shard_that_owns_their_partitions() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus < 2 {
        eprintln!("skipped: needs two CPUs for two shards per broker");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let nodes = start_cluster_with(tmp.path(), 3, 2, &[]);
    let partitions = 8;
    create_topic(
        &mut Client::connect(nodes[0].addr),
        "sharded",
        partitions,
        3,
    );
    let metadata = wait_for_leaders(nodes[0].addr, "sharded", Duration::from_secs(20));
    for p in &metadata.topics[0].partitions {
        let leader = metadata
            .brokers
            .iter()
            .find(|b| b.node_id == p.leader_id)
            .unwrap();
        let addr: SocketAddr = format!("{}:{}", leader.host.as_str(), leader.port)
            .parse()
            .unwrap();
        let mut client = Client::connect(addr);
        // The followers may not have the partition yet right after creation: retry the retriable.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let got = client.produce("sharded", -1, &[(p.partition_index, batch(&[b"x"], 1))]);
            if got[0].1 == 0 {
                break;
            }
            assert!(Instant::now() < deadline, "acks=all failed: {got:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    // Every link this cluster opened was served on the leader shard's index.
    let mut links = 0;
    for i in 1..=3 {
        let log = std::fs::read_to_string(tmp.path().join(format!("node{i}.log"))).unwrap();
        for line in log
            .lines()
            .filter(|l| l.contains("replication link from leader accepted"))
        {
            let field = |name: &str| -> i64 {
                let at = line.find(&format!(" {name}=")).unwrap() + name.len() + 2;
                line[at..]
                    .split(|c: char| !c.is_ascii_digit() && c != '-')
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap()
            };
            // -1: a first contact, before the leader knew this follower takes the routed Hello.
            if field("leader_shard") >= 0 {
                assert_eq!(field("shard"), field("leader_shard"), "node{i}: {line}");
                links += 1;
            }
        }
    }
    // Each broker leads partitions on both of its shards, and each leading shard links to both
    // followers.
    assert!(links >= 6, "only {links} replication links");
}

/// Freezes a broker (SIGSTOP) until the guard drops (SIGCONT): alive to the kernel, silent to its
/// peers, like a broker stuck in a long pause.
struct Frozen(u32);

impl Frozen {
    fn new(node: &Node) -> Frozen {
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(node.child.id() as libc::pid_t, libc::SIGSTOP) };
        Frozen(node.child.id())
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe { libc::kill(self.0 as libc::pid_t, libc::SIGCONT) };
    }
}

/// acks=all to `node` until it succeeds (the followers may not have the partition right after
/// creation).
fn produce_acks_all_once(node: &Node, topic: &str) {
    let mut client = Client::connect(node.addr);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = client.produce(topic, -1, &[(0, batch(&[b"first"], 1))]);
        if got[0].1 == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "acks=all failed: {got:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn an_acks_all_wait_on_silent_followers_ends_with_request_timed_out() {
    // The followers never acknowledge and stay in the ISR (the lag time is long): the wait must
    // end with REQUEST_TIMED_OUT by the request's own timeout, not hang.
    let tmp = tempfile::tempdir().unwrap();
    let nodes = start_cluster_with(tmp.path(), 3, 1, &["--replica-lag-time-max-ms", "600000"]);
    create_topic(&mut Client::connect(nodes[0].addr), "silent", 1, 3);
    let (leader, followers) = leader_and_followers(&nodes, "silent");
    produce_acks_all_once(&nodes[leader], "silent");

    let frozen: Vec<Frozen> = followers.iter().map(|&i| Frozen::new(&nodes[i])).collect();
    let mut request = produce_request("silent", -1, &[(0, batch(&[b"waits"], 1))]);
    request.timeout_ms = 1_500;
    let response: ProduceResponse =
        Client::connect(nodes[leader].addr).call(ApiKey::Produce, 9, &request);
    let part = &response.responses[0].partition_responses[0];
    assert_eq!(part.error_code, 7, "REQUEST_TIMED_OUT expected: {part:?}");
    drop(frozen);
}

#[test]
fn an_isr_shrinking_below_min_insync_during_the_wait_fails_it_after_append() {
    // min.insync.replicas = 3 with all three in sync: the batch is appended, then one follower
    // goes silent, the controller drops it from the ISR after the lag time, and the waiting
    // request gets NOT_ENOUGH_REPLICAS_AFTER_APPEND (well before its 25 s timeout). A new one
    // is refused before any append: NOT_ENOUGH_REPLICAS.
    let tmp = tempfile::tempdir().unwrap();
    let nodes = start_cluster_with(tmp.path(), 3, 1, &["--replica-lag-time-max-ms", "1500"]);
    create_topic_with(
        &mut Client::connect(nodes[0].addr),
        "shrinks",
        1,
        3,
        &[("min.insync.replicas", "3")],
    );
    let (leader, followers) = leader_and_followers(&nodes, "shrinks");
    produce_acks_all_once(&nodes[leader], "shrinks");

    // Not the controller (it sorts last), so the ISR change commits at once.
    let frozen = Frozen::new(&nodes[followers[0]]);
    let mut request = produce_request("shrinks", -1, &[(0, batch(&[b"waits"], 1))]);
    request.timeout_ms = 25_000;
    let mut client = Client::connect(nodes[leader].addr);
    let response: ProduceResponse = client.call(ApiKey::Produce, 9, &request);
    let part = &response.responses[0].partition_responses[0];
    assert_eq!(
        part.error_code, 20,
        "NOT_ENOUGH_REPLICAS_AFTER_APPEND expected: {part:?}"
    );
    let again = client.produce("shrinks", -1, &[(0, batch(&[b"refused"], 1))]);
    assert_eq!(again[0].1, 19, "NOT_ENOUGH_REPLICAS expected: {again:?}");
    drop(frozen);
}

/// The leader epoch stored in each record batch of `records` (bytes 12..16 of a batch header).
fn batch_epochs(records: &[u8]) -> Vec<i32> {
    let mut epochs = Vec::new();
    let mut at = 0;
    while at + 16 <= records.len() {
        let length = i32::from_be_bytes(records[at + 8..at + 12].try_into().unwrap()) as usize;
        epochs.push(i32::from_be_bytes(
            records[at + 12..at + 16].try_into().unwrap(),
        ));
        at += 12 + length;
    }
    epochs
}

#[test]
fn a_new_leader_appends_only_under_its_own_epoch() {
    // Every broker applies each metadata image 1 s late on its shards, while Metadata answers from
    // the control plane at once. After a leader change, a produce reaches the new leader while its
    // owner shard still holds the partition as a follower of the old epoch: it must wait for the
    // owner to take over, and the batch must carry the new leader epoch. Appending under the old
    // epoch would let a follower that holds a different tail in that epoch keep it (divergence).
    let tmp = tempfile::tempdir().unwrap();
    let nodes = start_cluster_env(
        tmp.path(),
        3,
        1,
        &["--replica-lag-time-max-ms", "2000"],
        &[("CHRONIK_FAULT_SLOW_IMAGE_APPLY_MS", "1000")],
    );
    create_topic(&mut Client::connect(nodes[0].addr), "moves", 1, 3);
    let (old, followers) = leader_and_followers(&nodes, "moves");
    produce_acks_all_once(&nodes[old], "moves");
    let old_epoch = wait_for_leaders(nodes[old].addr, "moves", Duration::from_secs(10)).topics[0]
        .partitions[0]
        .leader_epoch;

    // SIGTERM: the broker hands its leadership to another ISR member before it exits.
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(nodes[old].child.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(60);
    let (new, new_epoch, produced) = loop {
        assert!(Instant::now() < deadline, "no new leader");
        let seen = followers.iter().find_map(|&i| {
            let metadata = Client::try_connect(nodes[i].addr)
                .ok()?
                .metadata(&["moves"]);
            let p = metadata.topics.first()?.partitions.first()?.clone();
            let leader = (p.leader_id.0 - 1) as usize;
            (p.leader_id.0 > 0 && leader != old && p.leader_epoch > old_epoch)
                .then_some((leader, p.leader_epoch))
        });
        if let Some((new, epoch)) = seen {
            let mut client = Client::connect(nodes[new].addr);
            let got = client.produce("moves", 1, &[(0, batch(&[b"after"], 2))]);
            if got[0].1 == 0 {
                break (new, epoch, got[0].2);
            }
            assert_eq!(got[0].1, NOT_LEADER, "{got:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };

    // Read it back from the new leader once the high watermark passes it.
    let mut client = Client::connect(nodes[new].addr);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let data = client.fetch("moves", 0, produced, 1 << 20);
        if data.error_code == 0 && data.high_watermark > produced {
            let records = data.records.expect("records below the high watermark");
            let epochs = batch_epochs(&records);
            assert_eq!(
                epochs.first(),
                Some(&new_epoch),
                "the batch at {produced} was written in epoch {epochs:?}, the leader's is \
                 {new_epoch} (old {old_epoch})"
            );
            break;
        }
        assert!(Instant::now() < deadline, "never readable: {data:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Bytes under `dir`, as the filesystem allocated them (what a full disk counts), and the files.
fn disk_footprint(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let (mut bytes, mut files) = (0, 0);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                bytes += meta.blocks() * 512;
                files += 1;
            }
        }
    }
    (bytes, files)
}

/// Issue 13, test 5: 2,000 partitions at RF 3 on three brokers on this machine are created, every
/// one produced to with acks=all and read back, and the disk they take is stated. Segments are
/// preallocated as they fill, so 6,000 replicas holding a record each take megabytes, not the 64 MiB
/// each that filled the disk before.
#[test]
fn two_thousand_partitions_at_rf_3_fit_a_small_disk() {
    const PARTITIONS: i32 = 2000;
    let tmp = tempfile::tempdir().unwrap();
    let nodes = start_cluster(tmp.path(), 3);
    let mut client = Client::connect(nodes[0].addr);
    create_topic(&mut client, "many", PARTITIONS, 3);
    let metadata = wait_for_leaders(nodes[0].addr, "many", Duration::from_secs(180));
    let leader_of: Vec<(i32, i32)> = metadata.topics[0]
        .partitions
        .iter()
        .map(|p| (p.partition_index, p.leader_id.0))
        .collect();
    assert_eq!(leader_of.len(), PARTITIONS as usize);

    // One acks=all request per leader, a batch for each partition it leads.
    for (i, node) in nodes.iter().enumerate() {
        let led: Vec<i32> = leader_of
            .iter()
            .filter(|(_, leader)| *leader == i as i32 + 1)
            .map(|(p, _)| *p)
            .collect();
        let mut client = Client::connect(node.addr);
        for chunk in led.chunks(250) {
            let mut pending: Vec<i32> = chunk.to_vec();
            let deadline = Instant::now() + Duration::from_secs(60);
            while !pending.is_empty() {
                let parts: Vec<(i32, bytes::Bytes)> = pending
                    .iter()
                    .map(|p| (*p, batch(&[format!("record of {p}").as_bytes()], 1)))
                    .collect();
                let mut request = produce_request("many", -1, &parts);
                request.timeout_ms = 30_000;
                let response: ProduceResponse = client.call(ApiKey::Produce, 9, &request);
                // Leaders may still be settling: retry what failed (a timed-out append may have
                // been written: the read-back allows a repeat of the same record).
                pending = response.responses[0]
                    .partition_responses
                    .iter()
                    .filter(|p| p.error_code != 0)
                    .map(|p| p.index)
                    .collect();
                assert!(Instant::now() < deadline, "produce failed: {pending:?}");
                if !pending.is_empty() {
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
        }
    }

    // Every partition reads back its one record from its leader.
    for (i, node) in nodes.iter().enumerate() {
        let mut client = Client::connect(node.addr);
        let led: Vec<i32> = leader_of
            .iter()
            .filter(|(_, leader)| *leader == i as i32 + 1)
            .map(|(p, _)| *p)
            .collect();
        for chunk in led.chunks(250) {
            let parts: Vec<(&str, i32, i64, i32)> =
                chunk.iter().map(|p| ("many", *p, 0, 1 << 16)).collect();
            let request = fetch_request(&parts, 0, 1, 50 << 20);
            let response: FetchResponse = client.call(ApiKey::Fetch, 12, &request);
            for partition in &response.responses[0].partitions {
                assert_eq!(partition.error_code, 0);
                let records = common::decode_records(partition.records.clone().unwrap_or_default());
                let expected = format!("record of {}", partition.partition_index);
                assert!(
                    !records.is_empty(),
                    "partition {}",
                    partition.partition_index
                );
                assert!(records.iter().all(|(_, v)| v == expected.as_bytes()));
            }
        }
    }

    let (bytes, files) = disk_footprint(tmp.path());
    eprintln!(
        "{PARTITIONS} partitions x RF 3: {} MiB on disk in {files} files ({} KiB per replica)",
        bytes >> 20,
        bytes / 1024 / (3 * PARTITIONS as u64)
    );
    // 6,000 replicas at the old 64 MiB preallocation would be 375 GiB.
    assert!(bytes < 2 << 30, "{} MiB on disk", bytes >> 20);
}

/// ListOffsets latest (-1) of partition 0 of `topic` at `addr`: (error code, offset).
fn list_latest(addr: SocketAddr, topic: &str) -> (i16, i64) {
    let mut partition = list_offsets_request::ListOffsetsPartition::default();
    partition.timestamp = -1;
    let mut wanted = list_offsets_request::ListOffsetsTopic::default();
    wanted.name = TopicName(StrBytes::from_string(topic.to_string()));
    wanted.partitions = vec![partition];
    let mut request = ListOffsetsRequest::default();
    request.replica_id = BrokerId(-1);
    request.topics = vec![wanted];
    let response: ListOffsetsResponse =
        Client::connect(addr).call(ApiKey::ListOffsets, 5, &request);
    let p = &response.topics[0].partitions[0];
    (p.error_code, p.offset)
}

/// A fetch of partition 0 of `topic` from offset 0 at `addr`: (error, high watermark, records).
fn fetch_from_start(addr: SocketAddr, topic: &str) -> (i16, i64, Vec<(i64, bytes::Bytes)>) {
    let data = Client::connect(addr).fetch(topic, 0, 0, 1 << 20);
    let records = common::decode_records(data.records.unwrap_or_default());
    (data.error_code, data.high_watermark, records)
}

#[test]
fn a_full_restart_keeps_the_high_watermark() {
    // Kafka's replication-offset-checkpoint: after all three brokers stop and start again, the
    // first answers of the new leader are those from before the restart, not the log start (0)
    // until the followers have acknowledged again.
    let tmp = tempfile::tempdir().unwrap();
    let mut nodes = start_cluster(tmp.path(), 3);
    create_topic(&mut Client::connect(nodes[0].addr), "restarts", 1, 3);
    let (leader, _) = leader_and_followers(&nodes, "restarts");
    produce_acks_all_once(&nodes[leader], "restarts");
    let mut client = Client::connect(nodes[leader].addr);
    for i in 0..5u8 {
        let got = client.produce("restarts", -1, &[(0, batch(&[&[i], &[i, i]], 1))]);
        assert_eq!(got[0].1, 0, "acks=all: {got:?}");
    }
    let latest = list_latest(nodes[leader].addr, "restarts");
    assert_eq!(latest, (0, 11));
    let fetched = fetch_from_start(nodes[leader].addr, "restarts");
    assert_eq!((fetched.0, fetched.1, fetched.2.len()), (0, 11, 11));

    // A power cut once every broker has checkpointed the high watermark (a clean stop shrinks
    // the ISR broker by broker, and a lone ISR member needs no checkpoint).
    for i in 0..nodes.len() {
        let file = tmp
            .path()
            .join(format!("node{}", i + 1))
            .join("replication-offset-checkpoint.shard-0");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !std::fs::read_to_string(&file)
            .unwrap_or_default()
            .contains("restarts 0 11 ")
        {
            assert!(
                Instant::now() < deadline,
                "no checkpoint in {}",
                file.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    for node in &mut nodes {
        node.kill();
        node.respawn();
    }

    // The first answer without an error (the leader may still be opening the partition) of
    // whichever broker leads.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut latest_after, mut fetched_after, mut seen) = (None, None, String::new());
    while latest_after.is_none() || fetched_after.is_none() {
        assert!(
            Instant::now() < deadline,
            "no answer without an error: {seen:?} {latest_after:?} {fetched_after:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
        let asked = (leader + 1) % 3;
        let Ok(mut client) = Client::try_connect(nodes[asked].addr) else {
            continue;
        };
        let metadata = client.metadata(&["restarts"]);
        seen = format!("{:?}", metadata.topics[0].partitions[0]);
        let Some(now_leading) = metadata.topics[0].partitions[0].leader_id.0.checked_sub(1) else {
            continue;
        };
        let leader = now_leading as usize;
        if leader >= nodes.len() || Client::try_connect(nodes[leader].addr).is_err() {
            continue;
        }
        let answer = list_latest(nodes[leader].addr, "restarts");
        latest_after = latest_after.or((answer.0 == 0).then_some(answer));
        let answer = fetch_from_start(nodes[leader].addr, "restarts");
        fetched_after = fetched_after.or((answer.0 == 0).then_some(answer));
    }
    assert_eq!(
        latest_after,
        Some(latest),
        "ListOffsets latest after the restart"
    );
    assert_eq!(
        fetched_after,
        Some(fetched),
        "the first fetch after the restart"
    );
}
