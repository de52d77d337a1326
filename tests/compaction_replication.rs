//! Issue 15: replicas compact independently and still agree, and a follower catches up from a
//! compacted leader.
//!
//! Three brokers, a compacted topic of replication factor 3 with 4 KiB segments. One follower is
//! stopped; the leader takes thousands of updates of a few keys (and tombstones) and compacts
//! them (its log from offset 0 holds far fewer records than were written, with gaps). The follower
//! comes back and must catch up from that compacted log (pushes whose first batch starts past its
//! log end, batches with gaps between them) until it is in sync again. Then the leader is killed,
//! so that a replica that caught up leads, and a read from offset 0 gives every key's latest
//! acknowledged write; finally, with the cluster stopped, every replica's log read offline
//! (`chronik dump-log --latest`) holds the same latest value for every key.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

use common::cluster::{
    create_topic_with, leader_and_followers, start_cluster_with, wait_for_leaders,
};
use common::compaction::{check_latest, keyed_batch, read_from_start, try_produce, Acked};
use common::Client;

const TOPIC: &str = "compact-repl";
const KEYS: u32 = 25;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// `chronik dump-log --latest` of one replica: key -> value (None: a tombstone).
fn latest_on_disk(dir: &Path) -> BTreeMap<String, Option<String>> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_chronik"))
        .args(["dump-log", "--latest"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "dump-log {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let key = v["key"].as_str().unwrap_or_default().to_string();
            let value = v["value"].as_str().map(str::to_string);
            (key, value)
        })
        .collect()
}

/// The node ids in the partition's ISR, as `addr` sees it.
fn isr(addr: std::net::SocketAddr) -> Vec<i32> {
    let m = Client::connect(addr).metadata(&[TOPIC]);
    m.topics[0].partitions[0]
        .isr_nodes
        .iter()
        .map(|b| b.0)
        .collect()
}

#[test]
fn a_follower_catches_up_from_a_compacted_leader_and_the_replicas_agree() {
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let mut nodes = start_cluster_with(tmp.path(), 3, 1, &["--log-cleaner-backoff-ms", "100"]);
    let configs = [
        ("cleanup.policy", "compact"),
        ("segment.bytes", "4096"),
        ("min.cleanable.dirty.ratio", "0.01"),
        ("delete.retention.ms", "86400000"),
    ];
    create_topic_with(&mut Client::connect(nodes[0].addr), TOPIC, 1, 3, &configs);
    let (leader, followers) = leader_and_followers(&nodes, TOPIC);
    let late = followers[0];
    nodes[late].kill();

    // Thousands of updates of a few keys; every tenth write of a key is a tombstone.
    let mut client = Client::connect(nodes[leader].addr);
    let mut acked: HashMap<Vec<u8>, Acked> = HashMap::new();
    let written = 4000u32;
    for i in 0..written {
        let key = format!("key-{}", i % KEYS).into_bytes();
        let value = (i % 10 != 9).then(|| format!("value-{i}").into_bytes());
        let batch = keyed_batch(&[(key.clone(), value.clone())], now_ms());
        let (error, offset) = try_produce(&mut client, TOPIC, -1, batch).unwrap();
        assert_eq!(error, 0, "produce {i}");
        acked.insert(key, Acked { offset, value });
    }

    // The leader compacts: its log from 0 soon holds a fraction of what was written.
    let deadline = Instant::now() + Duration::from_secs(60);
    let compacted = loop {
        let log = read_from_start(&mut client, TOPIC, None, 1 << 20).unwrap();
        if log.len() < written as usize / 4 {
            break log;
        }
        assert!(
            Instant::now() < deadline,
            "the leader did not compact: {} records",
            log.len()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    check_latest(&compacted, &acked, None).unwrap();
    // Every key's latest write is among the last ones: what precedes them went, a gap from 0.
    assert!(compacted[0].offset > 0, "no gap in a compacted log?");

    // The follower comes back and catches up from the compacted log.
    nodes[late].respawn();
    let late_id = late as i32 + 1;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !isr(nodes[leader].addr).contains(&late_id) {
        assert!(
            Instant::now() < deadline,
            "the returning follower never got in sync"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // Without the old leader, a replica that caught up from the compacted log serves it.
    nodes[leader].kill();
    let other = followers[1];
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::from("no new leader");
    let read = loop {
        let m = wait_for_leaders(nodes[other].addr, TOPIC, Duration::from_secs(30));
        let new_leader = m.topics[0].partitions[0].leader_id.0;
        if new_leader != leader as i32 + 1 {
            let addr = nodes[new_leader as usize - 1].addr;
            match read_from_start(&mut Client::connect(addr), TOPIC, None, 1 << 20) {
                Ok(log) if log.last().is_some_and(|r| r.offset >= written as i64 - 1) => break log,
                Ok(log) => last = format!("node {new_leader}: read up to {:?}", log.last()),
                Err(e) => last = format!("node {new_leader}: {e}"),
            }
        }
        assert!(
            Instant::now() < deadline,
            "no new leader served the log: {last}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    check_latest(&read, &acked, None).unwrap();

    // Offline, every replica holds the same latest value for every key.
    for n in nodes.iter_mut() {
        n.kill();
    }
    let maps: Vec<_> = (1..=3)
        .map(|i| {
            latest_on_disk(
                &tmp.path()
                    .join(format!("node{i}"))
                    .join(format!("{TOPIC}-0")),
            )
        })
        .collect();
    let live = |m: &BTreeMap<String, Option<String>>| -> BTreeMap<String, String> {
        m.iter()
            .filter_map(|(k, v)| v.clone().map(|v| (k.clone(), v)))
            .collect()
    };
    assert_eq!(live(&maps[0]), live(&maps[1]));
    assert_eq!(live(&maps[0]), live(&maps[2]));
    let expected: BTreeMap<String, String> = acked
        .iter()
        .filter_map(|(k, a)| {
            a.value.as_ref().map(|v| {
                (
                    String::from_utf8_lossy(k).into_owned(),
                    String::from_utf8_lossy(v).into_owned(),
                )
            })
        })
        .collect();
    assert_eq!(live(&maps[0]), expected);
}
