//! InitProducerId over the wire, on real `chronik start` processes: ids come from blocks the
//! controller hands out through Raft, so no two brokers ever answer the same id, across
//! controller crashes and restarts; the KIP-360 epoch bump; transactional ids refused; and
//! DescribeProducers listing what a partition's leader knows of them.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::cluster::{
    create_topic, leader_and_followers, start_cluster, wait_for_leaders, wait_until_formed, Node,
};
use common::{producer_batch, Broker, Client, ProducerFields};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

/// COORDINATOR_LOAD_IN_PROGRESS: no block of ids to be had yet (an election); retriable.
const LOAD_IN_PROGRESS: i16 = 14;
/// TRANSACTIONAL_ID_AUTHORIZATION_FAILED: transactions are not implemented.
const TRANSACTIONAL_ID_REFUSED: i16 = 53;

fn init_producer_id(
    client: &mut Client,
    version: i16,
    transactional_id: Option<&str>,
    producer_id: i64,
    epoch: i16,
) -> InitProducerIdResponse {
    let mut request = InitProducerIdRequest::default();
    request.transactional_id =
        transactional_id.map(|id| TransactionalId(StrBytes::from_string(id.to_string())));
    request.transaction_timeout_ms = 60_000;
    if version >= 3 {
        request.producer_id = producer_id.into();
        request.producer_epoch = epoch;
    }
    client.call(ApiKey::InitProducerId, version, &request)
}

/// COORDINATOR_LOAD_IN_PROGRESS answers seen (how often a client had to wait for a block).
static WAITED: AtomicUsize = AtomicUsize::new(0);

/// A fresh id from the broker at `addr`, retrying (on a new connection if the old one broke)
/// while it answers COORDINATOR_LOAD_IN_PROGRESS, as clients do.
fn fresh_id(client: &mut Option<Client>, addr: SocketAddr) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let connection = match client {
            Some(connection) => connection,
            None => client.insert(Client::connect(addr)),
        };
        let response = init_producer_id(connection, 4, None, -1, -1);
        match response.error_code {
            0 => {
                assert_eq!(response.producer_epoch, 0);
                assert!(response.producer_id.0 >= 0, "{response:?}");
                return response.producer_id.0;
            }
            LOAD_IN_PROGRESS => {
                WAITED.fetch_add(1, Ordering::Relaxed);
            }
            other => panic!("InitProducerId from {addr}: error {other}"),
        }
        assert!(Instant::now() < deadline, "no producer id from {addr}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Takes `count` ids from node `index`, each checked new against `seen`.
fn take(nodes: &[Node], index: usize, count: usize, seen: &mut BTreeSet<i64>) {
    let mut client = None;
    for _ in 0..count {
        let id = fresh_id(&mut client, nodes[index].addr);
        assert!(
            seen.insert(id),
            "id {id} handed out twice (node {})",
            index + 1
        );
    }
}

/// The index of the node that is the controller now, as node `via` reports it.
fn controller(nodes: &[Node], via: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let id = Client::try_connect(nodes[via].addr)
            .ok()
            .map(|mut c| c.metadata(&[]).controller_id.0);
        if let Some(id) = id.filter(|id| *id >= 1) {
            return id as usize - 1;
        }
        assert!(Instant::now() < deadline, "no controller");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn ids_from_every_broker_stay_distinct_across_controller_crashes() {
    let tmp = tempfile::tempdir().unwrap();
    let mut nodes = start_cluster(tmp.path(), 3);
    let mut seen = BTreeSet::new();
    for index in 0..3 {
        take(&nodes, index, 100, &mut seen);
    }
    // Past one block (1000 ids) on one broker: it asks for more while serving.
    take(&nodes, 1, 1200, &mut seen);

    for round in 0..2 {
        let killed = controller(&nodes, 0);
        nodes[killed].kill();
        // The survivors go on handing out ids during the election; one of them exhausts its
        // block so that it must ask the new controller.
        let survivors: Vec<usize> = (0..3).filter(|i| *i != killed).collect();
        take(&nodes, survivors[0], 1000, &mut seen);
        take(&nodes, survivors[1], 50, &mut seen);
        nodes[killed].respawn();
        wait_until_formed(&nodes);
        // The restarted broker lost its cached block: it must get a new one.
        take(&nodes, killed, 50, &mut seen);
        for index in 0..3 {
            take(&nodes, index, 20, &mut seen);
        }
        eprintln!(
            "round {round}: {} distinct ids, {} answers COORDINATOR_LOAD_IN_PROGRESS so far",
            seen.len(),
            WAITED.load(Ordering::Relaxed)
        );
    }

    // KIP-360: an idempotent producer's (id, epoch) gets the same id with the epoch bumped, on
    // any broker; an exhausted epoch gets a fresh id.
    let known = *seen.iter().next().unwrap();
    for node in &nodes {
        let mut client = Client::connect(node.addr);
        let bumped = init_producer_id(&mut client, 4, None, known, 5);
        assert_eq!(
            (
                bumped.error_code,
                bumped.producer_id.0,
                bumped.producer_epoch
            ),
            (0, known, 6)
        );
        let rotated = init_producer_id(&mut client, 3, None, known, i16::MAX - 1);
        assert_eq!((rotated.error_code, rotated.producer_epoch), (0, 0));
        assert!(seen.insert(rotated.producer_id.0), "{rotated:?}");
        // Only one of the two given: INVALID_REQUEST, as Kafka.
        assert_eq!(
            init_producer_id(&mut client, 4, None, known, -1).error_code,
            42
        );
        // v0 (aiokafka) carries neither: a fresh id.
        let old = init_producer_id(&mut client, 0, None, -1, -1);
        assert_eq!((old.error_code, old.producer_epoch), (0, 0));
        assert!(seen.insert(old.producer_id.0));
        // Transactions are not implemented: a fatal error, never a fake success.
        let transactional = init_producer_id(&mut client, 4, Some("txn-1"), -1, -1);
        assert_eq!(
            (
                transactional.error_code,
                transactional.producer_id.0,
                transactional.producer_epoch
            ),
            (TRANSACTIONAL_ID_REFUSED, -1, -1)
        );
    }
}

/// `count` fresh ids from `broker`, each checked new against `seen`.
fn take_from(broker: &Broker, count: usize, seen: &mut BTreeSet<i64>) -> Vec<i64> {
    let mut client = None;
    let ids: Vec<i64> = (0..count)
        .map(|_| fresh_id(&mut client, broker.addr))
        .collect();
    for id in &ids {
        assert!(seen.insert(*id), "id {id} handed out twice");
    }
    ids
}

#[test]
fn ids_after_a_restart_or_a_crash_are_new() {
    let mut broker = Broker::start();
    let mut seen = BTreeSet::new();
    let first = take_from(&broker, 30, &mut seen);
    broker.restart();
    let second = take_from(&broker, 30, &mut seen);
    assert!(second[0] > *first.last().unwrap());
    broker.kill();
    let dir = broker.dir.clone();
    let mut broker = Broker::start_in(&dir, broker.addr.port());
    let third = take_from(&broker, 30, &mut seen);
    assert!(third[0] > *second.last().unwrap());
    assert!(broker.stop().success());
}

/// One producer as DescribeProducers lists it: (id, epoch, last sequence, last timestamp).
type Listed = (i64, i32, i32, i64);

/// DescribeProducers for partitions `indexes` of `topic`: (index, error code, producers).
fn describe_producers(
    client: &mut Client,
    topic: &str,
    indexes: &[i32],
) -> Vec<(i32, i16, Vec<Listed>)> {
    let mut request = DescribeProducersRequest::default();
    let mut wanted = describe_producers_request::TopicRequest::default();
    wanted.name = TopicName(StrBytes::from_string(topic.to_string()));
    wanted.partition_indexes = indexes.to_vec();
    request.topics.push(wanted);
    let response: DescribeProducersResponse = client.call(ApiKey::DescribeProducers, 0, &request);
    assert_eq!(response.topics.len(), 1);
    response.topics[0]
        .partitions
        .iter()
        .map(|p| {
            for state in &p.active_producers {
                // No transactions: no coordinator, no open transaction.
                assert_eq!(
                    (state.coordinator_epoch, state.current_txn_start_offset),
                    (-1, -1)
                );
            }
            let producers = p
                .active_producers
                .iter()
                .map(|s| {
                    (
                        s.producer_id.0,
                        s.producer_epoch,
                        s.last_sequence,
                        s.last_timestamp,
                    )
                })
                .collect();
            (p.partition_index, p.error_code, producers)
        })
        .collect()
}

#[test]
fn describe_producers_lists_a_partitions_producers_on_its_leader() {
    let broker = Broker::start();
    let mut client = broker.client();
    client.create_topic("described", 2);
    let id = fresh_id(&mut None, broker.addr);
    let producer = ProducerFields {
        id,
        epoch: 0,
        base_sequence: 0,
    };
    let timestamp = 1_700_000_000_000;
    let first = producer_batch(&[b"a", b"b", b"c"], timestamp, producer);
    let second = producer_batch(
        &[b"d", b"e"],
        timestamp + 10,
        ProducerFields {
            base_sequence: 3,
            ..producer
        },
    );
    for records in [first, second] {
        let answers = client.produce("described", -1, &[(1, records)]);
        assert_eq!(answers[0].1, 0, "{answers:?}");
    }
    let described = describe_producers(&mut client, "described", &[1, 0, 7]);
    assert_eq!(described.len(), 3);
    // The last batch's last record: sequence 4, its timestamp (the batch's max timestamp).
    assert_eq!(described[0], (1, 0, vec![(id, 0, 4, timestamp + 11)]));
    assert_eq!(described[1], (0, 0, vec![]));
    assert_eq!(described[2], (7, 3, vec![]), "no such partition");
    let missing = describe_producers(&mut client, "no-such-topic", &[0]);
    assert_eq!(missing[0].1, 3);
}

#[test]
fn describe_producers_is_answered_by_the_leader_only() {
    let tmp = tempfile::tempdir().unwrap();
    let nodes = start_cluster(tmp.path(), 3);
    create_topic(&mut Client::connect(nodes[0].addr), "led", 1, 3);
    wait_for_leaders(nodes[0].addr, "led", Duration::from_secs(20));
    let (leader, followers) = leader_and_followers(&nodes, "led");
    let id = fresh_id(&mut None, nodes[followers[0]].addr);
    let records = producer_batch(
        &[b"x"],
        1_700_000_000_000,
        ProducerFields {
            id,
            epoch: 0,
            base_sequence: 0,
        },
    );
    let answers = Client::connect(nodes[leader].addr).produce("led", -1, &[(0, records)]);
    assert_eq!(answers[0].1, 0, "{answers:?}");
    let described = describe_producers(&mut Client::connect(nodes[leader].addr), "led", &[0]);
    assert_eq!(described[0], (0, 0, vec![(id, 0, 0, 1_700_000_000_000)]));
    for follower in followers {
        let described = describe_producers(&mut Client::connect(nodes[follower].addr), "led", &[0]);
        assert_eq!(described[0], (0, 6, vec![]), "NOT_LEADER_OR_FOLLOWER");
    }
}
