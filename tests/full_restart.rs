//! Issue 14 item 7: a full restart (every broker SIGKILLed, a power cut) after which one broker
//! stays away must not take the partitions offline. The two brokers that come back hold every
//! acknowledged record (fsynced before it was acknowledged): each partition gets one of them as
//! leader once the missing broker's session expires, and every acknowledged record is readable.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::cluster::{create_topic, start_cluster, wait_for_leaders, Node};
use common::{batch, Client};

const TOPIC: &str = "power-cut";
const PARTITIONS: i32 = 3;
const RECORDS_PER_PARTITION: usize = 100;

/// Produces `RECORDS_PER_PARTITION` records to each partition with acks=all (ISR of three).
fn produce_everywhere(nodes: &[Node]) {
    let metadata = wait_for_leaders(nodes[0].addr, TOPIC, Duration::from_secs(30));
    for p in &metadata.topics[0].partitions {
        let leader = (p.leader_id.0 - 1) as usize;
        let mut client = Client::connect(nodes[leader].addr);
        for chunk in 0..RECORDS_PER_PARTITION / 10 {
            let values: Vec<Vec<u8>> = (0..10)
                .map(|i| format!("p{}-{}", p.partition_index, chunk * 10 + i).into_bytes())
                .collect();
            let refs: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
            let got = client.produce(TOPIC, -1, &[(p.partition_index, batch(&refs, 1))]);
            assert_eq!(got[0].1, 0, "acks=all produce: {got:?}");
        }
    }
}

/// Waits until every partition's ISR holds all three brokers (acks=all just succeeded, so it
/// does; this also waits for the metadata to say so everywhere).
fn wait_for_full_isr(nodes: &[Node]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let metadata = Client::connect(nodes[0].addr).metadata(&[TOPIC]);
        if metadata.topics[0]
            .partitions
            .iter()
            .all(|p| p.isr_nodes.len() == 3)
        {
            return;
        }
        assert!(Instant::now() < deadline, "ISR not full: {metadata:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every record of a partition from its leader; fewer (or none) while the leader is not ready.
fn try_read_all(client: &mut Client, partition: i32) -> Vec<(i64, bytes::Bytes)> {
    let mut out = Vec::new();
    loop {
        let data = client.fetch(TOPIC, partition, out.len() as i64, 1 << 20);
        let records = common::decode_records(data.records.unwrap_or_default());
        if data.error_code != 0 || records.is_empty() {
            return out;
        }
        let from = out.len() as i64;
        out.extend(records.into_iter().filter(|(o, _)| *o >= from));
    }
}

fn controller_index(nodes: &[Node]) -> usize {
    let metadata = Client::connect(nodes[0].addr).metadata(&[]);
    (metadata.controller_id.0 - 1) as usize
}

/// Kills every broker, starts all but `absent`, and checks that each partition gets a leader among
/// the returned brokers and serves every acknowledged record.
fn power_cut_then_one_stays_away(absent_is_controller: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let mut nodes = start_cluster(tmp.path(), 3);
    create_topic(&mut Client::connect(nodes[0].addr), TOPIC, PARTITIONS, 3);
    produce_everywhere(&nodes);
    wait_for_full_isr(&nodes);
    let controller = controller_index(&nodes);
    let absent = if absent_is_controller {
        controller
    } else {
        (controller + 1) % nodes.len()
    };
    // Quiet long enough for every periodic duty (heartbeats, checkpoints) to run.
    std::thread::sleep(Duration::from_secs(12));

    for node in &mut nodes {
        node.kill();
    }
    let back: Vec<usize> = (0..nodes.len()).filter(|&i| i != absent).collect();
    for &i in &back {
        nodes[i].respawn();
    }
    let back_ids: BTreeSet<i32> = back.iter().map(|&i| i as i32 + 1).collect();

    // Every partition led by a returned broker, and every acknowledged record readable there.
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut last = String::new();
    let mut served = BTreeSet::new();
    while served.len() < PARTITIONS as usize {
        assert!(
            Instant::now() < deadline,
            "partitions not served by the returned brokers {back_ids:?} (absent {}): {last}",
            absent + 1
        );
        std::thread::sleep(Duration::from_millis(200));
        let Ok(mut client) = Client::try_connect(nodes[back[0]].addr) else {
            continue;
        };
        let metadata = client.metadata(&[TOPIC]);
        last = format!("{:?}", metadata.topics[0].partitions);
        for p in &metadata.topics[0].partitions {
            let leader = p.leader_id.0;
            if served.contains(&p.partition_index) || !back_ids.contains(&leader) {
                continue;
            }
            let Ok(mut leader_client) = Client::try_connect(nodes[leader as usize - 1].addr) else {
                continue;
            };
            let records = try_read_all(&mut leader_client, p.partition_index);
            if records.len() == RECORDS_PER_PARTITION {
                for (i, (offset, value)) in records.iter().enumerate() {
                    assert_eq!(*offset, i as i64);
                    assert_eq!(
                        value.as_ref(),
                        format!("p{}-{i}", p.partition_index).as_bytes()
                    );
                }
                served.insert(p.partition_index);
            }
        }
    }
}

#[test]
fn a_power_cut_with_one_broker_staying_away_keeps_partitions_online() {
    power_cut_then_one_stays_away(false);
}

#[test]
fn a_power_cut_with_the_controller_staying_away_keeps_partitions_online() {
    power_cut_then_one_stays_away(true);
}
