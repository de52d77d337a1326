//! Issue 14 item 3 with real processes: a follower restarts while the expansion that would put
//! it back into the ISR is on its way to the controller. The leader credited the follower's
//! previous life; the controller must refuse that expansion (the incarnation it names is stale),
//! and the follower joins again only once it has acknowledged in its new life.
//!
//! `CHRONIK_FAULT_SLOW_ISR_EXPANSION_MS` makes the leader send each expansion that long after
//! deciding it, which opens the window; the leader's log says when it decided and what the
//! controller answered, and the test uses those lines only to know when to act and look.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::cluster::{create_topic_with, leader_and_followers, start_cluster_env, Node};
use common::{batch, Client};

const TOPIC: &str = "isr-restart";
/// Long enough for a restarted broker to register before the late expansion arrives.
const EXPANSION_DELAY_MS: &str = "10000";
const DECIDED: &str = "fault injection: ISR expansion decided";
const ANSWERED: &str = "fault injection: late ISR expansion answered";

fn isr(node: &Node) -> Vec<i32> {
    let metadata = Client::connect(node.addr).metadata(&[TOPIC]);
    let mut isr: Vec<i32> = metadata.topics[0].partitions[0]
        .isr_nodes
        .iter()
        .map(|b| b.0)
        .collect();
    isr.sort_unstable();
    isr
}

fn wait_for_isr(node: &Node, what: &str, ok: impl Fn(&[i32]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let isr = isr(node);
        if ok(&isr) {
            return;
        }
        assert!(Instant::now() < deadline, "ISR never {what}: {isr:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Lines of `log` that contain `needle`.
fn lines(log: &Path, needle: &str) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_string)
        .collect()
}

/// Waits until `log` has more than `seen` lines with `needle`; returns the next one.
fn wait_for_line(log: &Path, needle: &str, seen: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Some(line) = lines(log, needle).get(seen) {
            return line.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no {needle:?} in {}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Ten records to partition 0 on `node` with `acks`, retried until they are taken.
fn produce(node: &Node, acks: i16, tag: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let values: Vec<Vec<u8>> = (0..10).map(|i| format!("{tag}-{i}").into_bytes()).collect();
        let refs: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
        let got = Client::connect(node.addr).produce(TOPIC, acks, &[(0, batch(&refs, 1))]);
        if got[0].1 == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "produce acks={acks}: {got:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_follower_restarted_during_its_expansion_joins_only_in_its_new_life() {
    let tmp = tempfile::tempdir().unwrap();
    let mut nodes = start_cluster_env(
        tmp.path(),
        3,
        1,
        &["--replica-lag-time-max-ms", "2000"],
        &[("CHRONIK_FAULT_SLOW_ISR_EXPANSION_MS", EXPANSION_DELAY_MS)],
    );
    // flush=never: a restarted follower may have lost what it acknowledged, so only what it
    // acknowledges in its new life may count.
    create_topic_with(
        &mut Client::connect(nodes[0].addr),
        TOPIC,
        1,
        3,
        &[("chronik.flush.policy", "never")],
    );
    let (leader, followers) = leader_and_followers(&nodes, TOPIC);
    let follower = followers[0];
    let follower_id = follower as i32 + 1;
    produce(&nodes[leader], -1, "before");
    wait_for_isr(&nodes[leader], "full", |isr| isr.len() == 3);

    // The follower crashes and leaves the ISR; the partition moves on without it.
    nodes[follower].kill();
    produce(&nodes[leader], 1, "without");
    wait_for_isr(&nodes[leader], "without the follower", |isr| {
        !isr.contains(&follower_id)
    });

    // It comes back and catches up: the leader decides to add it (and sends that late).
    let leader_log = nodes[leader].log.clone();
    let decided = lines(&leader_log, DECIDED).len();
    let answered = lines(&leader_log, ANSWERED).len();
    nodes[follower].respawn();
    wait_for_line(&leader_log, DECIDED, decided);

    // It restarts again before the expansion reaches the controller.
    nodes[follower].kill();
    nodes[follower].respawn();
    let answer = wait_for_line(&leader_log, ANSWERED, answered);
    assert!(
        answer.contains("IneligibleReplica"),
        "the expansion that credited the follower's previous life was accepted: {answer}"
    );
    let now = isr(&nodes[leader]);
    assert!(
        !now.contains(&follower_id),
        "the restarted follower joined on its previous life's acknowledgements: {now:?}"
    );

    // In its new life it acknowledges, and joins (the next expansion is late too).
    wait_for_isr(&nodes[leader], "full again", |isr| isr.len() == 3);
    produce(&nodes[leader], -1, "after");
}
