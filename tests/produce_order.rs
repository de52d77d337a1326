//! Issue 14 item 2: a connection's pipelined produce requests are appended in the order they were
//! sent, per partition, also when the owner shard has to catch up with the metadata image first
//! (right after CreateTopics, right after a leader change). Kafka handles a connection's requests
//! one at a time; clients with several requests in flight (and idempotent producers, which answer a
//! gap with OUT_OF_ORDER_SEQUENCE_NUMBER) rely on it.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::cluster::*;
use common::*;
use kafka_protocol::messages::offset_for_leader_epoch_request::{
    OffsetForLeaderPartition, OffsetForLeaderTopic,
};
use kafka_protocol::messages::{
    ApiKey, BrokerId, OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse, ProduceRequest,
    ProduceResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;

/// Produce requests sent back to back on one connection.
const PIPELINED: usize = 5;

/// Record value of request `request` for `partition`.
fn value(request: usize, partition: i32) -> String {
    format!("request-{request}-partition-{partition}")
}

/// Produce request `request` (acks=1): one record for each of `partitions` of `topic`, in the order
/// given for even `request` and reversed for odd (a client orders a request's partitions as it
/// likes).
fn produce_frame(client: &mut Client, topic: &str, partitions: &[i32], request: usize) -> Vec<u8> {
    let mut order = partitions.to_vec();
    if request % 2 == 1 {
        order.reverse();
    }
    let parts: Vec<(i32, Bytes)> = order
        .iter()
        .map(|&p| (p, batch(&[value(request, p).as_bytes()], request as i64)))
        .collect();
    let produce: ProduceRequest = produce_request(topic, 1, &parts);
    client.encode(ApiKey::Produce, 9, &produce)
}

/// Reads the answers to the `PIPELINED` produce requests sent last on `client`: each answer's
/// (partition, error code, base offset) by partition, in send order.
fn read_produce_answers(client: &mut Client) -> Vec<Vec<(i32, i16, i64)>> {
    let first_id = client.last_correlation_id() - PIPELINED as i32 + 1;
    (0..PIPELINED)
        .map(|request| {
            let (id, response): (i32, ProduceResponse) = client.read_response(ApiKey::Produce, 9);
            assert_eq!(id, first_id + request as i32, "answers in request order");
            let mut got: Vec<(i32, i16, i64)> = response.responses[0]
                .partition_responses
                .iter()
                .map(|p| (p.index, p.error_code, p.base_offset))
                .collect();
            got.sort();
            got
        })
        .collect()
}

/// Waits until every owner shard of `topic`'s partitions has applied the image with the topic:
/// OffsetForLeaderEpoch is answered on the owners once they caught up.
fn wait_for_owners(addr: std::net::SocketAddr, topic: &str, partitions: i32) {
    let mut t = OffsetForLeaderTopic::default();
    t.topic = TopicName(StrBytes::from_string(topic.to_string()));
    t.partitions = (0..partitions)
        .map(|partition| {
            let mut p = OffsetForLeaderPartition::default();
            p.partition = partition;
            p.current_leader_epoch = 0;
            p.leader_epoch = 0;
            p
        })
        .collect();
    let mut request = OffsetForLeaderEpochRequest::default();
    request.replica_id = BrokerId(-1);
    request.topics = vec![t];
    let response: OffsetForLeaderEpochResponse =
        Client::connect(addr).call(ApiKey::OffsetForLeaderEpoch, 4, &request);
    let codes: Vec<i16> = response.topics[0]
        .partitions
        .iter()
        .map(|p| p.error_code)
        .collect();
    assert_eq!(codes, vec![0; partitions as usize], "{response:?}");
}

/// Each of `partitions` (ascending) holds the pipelined requests' records in send order (`stored`
/// reads a partition's values), and each answer's base offset is where its record is.
fn assert_send_order(
    partitions: &[i32],
    answers: &[Vec<(i32, i16, i64)>],
    mut stored: impl FnMut(i32) -> Vec<String>,
) {
    for (at, &p) in partitions.iter().enumerate() {
        let sent: Vec<String> = (0..PIPELINED).map(|r| value(r, p)).collect();
        assert_eq!(stored(p), sent, "partition {p}: stored order vs send order");
        let offsets: Vec<(i32, i16, i64)> = answers.iter().map(|answer| answer[at]).collect();
        let want: Vec<(i32, i16, i64)> = (0..PIPELINED as i64).map(|o| (p, 0, o)).collect();
        assert_eq!(
            offsets, want,
            "partition {p}: (partition, error, base offset) per request"
        );
    }
}

/// The values stored in a partition, up to its high watermark.
fn values_of(client: &mut Client, topic: &str, partition: i32) -> Vec<String> {
    client
        .read_all(topic, partition, 0)
        .into_iter()
        .map(|(_, v)| String::from_utf8_lossy(&v).into_owned())
        .collect()
}

/// Right after CreateTopics the owner shards have not applied the image that has the topic (here
/// each image is applied 300 ms late), so every part of the first request waits for the owner to
/// catch up. The requests behind it on the connection must not overtake it on any partition.
#[test]
fn pipelined_produce_right_after_create_topics_keeps_send_order() {
    let broker = Broker::start_with_env(&[("CHRONIK_FAULT_SLOW_IMAGE_APPLY_MS", "300")]);
    let mut client = broker.client();
    // Eight partitions on a machine of fewer cores: some owner shard holds several, so its parts of
    // one request wait one after another.
    let created = client.create_topic("pipelined", 8);
    assert_eq!(created.topics[0].error_code, 0, "{created:?}");
    let partitions: Vec<i32> = (0..8).collect();
    // All written at once: the broker reads them back to back while the first still waits.
    let frames: Vec<u8> = (0..PIPELINED)
        .flat_map(|request| produce_frame(&mut client, "pipelined", &partitions, request))
        .collect();
    client.stream.write_all(&frames).unwrap();
    let answers = read_produce_answers(&mut client);
    assert_send_order(&partitions, &answers, |p| {
        values_of(&mut client, "pipelined", p)
    });
}

/// The first request still catching up (here a deferred append waits 1.5 s more once the owner
/// applied the image) when the later ones arrive, with the owners caught up by then: the later
/// ones could append at once, and must not overtake the first on any partition.
#[test]
fn a_request_sent_once_the_owner_caught_up_waits_for_the_earlier_one() {
    let broker = Broker::start_with_env(&[
        ("CHRONIK_FAULT_SLOW_IMAGE_APPLY_MS", "300"),
        ("CHRONIK_FAULT_SLOW_DEFERRED_APPEND_MS", "1500"),
    ]);
    let mut client = broker.client();
    let created = client.create_topic("overtaken", 8);
    assert_eq!(created.topics[0].error_code, 0, "{created:?}");
    let partitions: Vec<i32> = (0..8).collect();
    let first = produce_frame(&mut client, "overtaken", &partitions, 0);
    client.stream.write_all(&first).unwrap();
    // The first is deferred on every owner; once the owners answer another connection from the
    // applied image, the rest follow on the first connection, without waiting for its answer.
    wait_for_owners(broker.addr, "overtaken", 8);
    let rest: Vec<u8> = (1..PIPELINED)
        .flat_map(|request| produce_frame(&mut client, "overtaken", &partitions, request))
        .collect();
    client.stream.write_all(&rest).unwrap();
    let answers = read_produce_answers(&mut client);
    assert_send_order(&partitions, &answers, |p| {
        values_of(&mut client, "overtaken", p)
    });
}

/// Right after a leader change (here every broker's shards apply each image 1 s late), the new
/// leader's owner shard still holds the partitions it takes over as a follower, and holds the
/// image that made it leader for none of them: every part of the pipelined requests waits for it.
/// They must be appended in send order on every partition it leads.
#[test]
fn pipelined_produce_right_after_a_leader_change_keeps_send_order() {
    let tmp = tempfile::tempdir().unwrap();
    let nodes = start_cluster_env(
        tmp.path(),
        3,
        1,
        &["--replica-lag-time-max-ms", "2000"],
        &[("CHRONIK_FAULT_SLOW_IMAGE_APPLY_MS", "1000")],
    );
    create_topic(&mut Client::connect(nodes[0].addr), "moving", 6, 3);
    let (old, followers) = leader_and_followers(&nodes, "moving");
    let old_epoch = wait_for_leaders(nodes[old].addr, "moving", Duration::from_secs(20)).topics[0]
        .partitions[0]
        .leader_epoch;

    // SIGTERM: the broker hands its leaderships to other ISR members before it exits.
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(nodes[old].child.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(60);
    let (new, led) = loop {
        assert!(Instant::now() < deadline, "no new leader");
        let seen = followers.iter().find_map(|&i| {
            let metadata = Client::try_connect(nodes[i].addr)
                .ok()?
                .metadata(&["moving"]);
            let partitions = &metadata.topics.first()?.partitions;
            let p0 = partitions.iter().find(|p| p.partition_index == 0)?;
            let leader = usize::try_from(p0.leader_id.0 - 1).ok()?;
            if leader == old || p0.leader_epoch <= old_epoch {
                return None;
            }
            let mut led: Vec<i32> = partitions
                .iter()
                .filter(|p| p.leader_id.0 - 1 == leader as i32)
                .map(|p| p.partition_index)
                .collect();
            led.sort();
            Some((leader, led))
        });
        if let Some(seen) = seen {
            break seen;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(led.len() >= 2, "the new leader leads {led:?}");

    let mut client = Client::connect(nodes[new].addr);
    let frames: Vec<u8> = (0..PIPELINED)
        .flat_map(|request| produce_frame(&mut client, "moving", &led, request))
        .collect();
    client.stream.write_all(&frames).unwrap();
    let answers = read_produce_answers(&mut client);
    assert_send_order(&led, &answers, |p| {
        // Readable once the high watermark passes them (the other follower acknowledges).
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let values = values_of(&mut client, "moving", p);
            if values.len() >= PIPELINED || Instant::now() > deadline {
                return values;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
}
