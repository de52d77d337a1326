//! The idempotent producer over the wire (issue 17), as Kafka specifies it: a producer id from
//! InitProducerId, batches that carry (producer id, epoch, base sequence), and per partition the
//! broker's memory of each producer's last five batches. A retried batch is answered with the
//! offsets it got the first time and is not stored again; a sequence gap is refused with
//! OUT_OF_ORDER_SEQUENCE_NUMBER; a batch of an epoch older than one already used is refused with
//! INVALID_PRODUCER_EPOCH; and that memory survives a restart (clean or a crash), a leader change
//! and retention of the segments that first carried the batches.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::cluster::{create_topic, create_topic_with, leader_and_followers, start_cluster, Node};
use common::{producer_batch, Broker, Client, ProducerFields};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
const INVALID_PRODUCER_EPOCH: i16 = 47;

/// Errors a produce may meet while leadership moves or a partition opens; the same batch is sent
/// again (a retry is exactly what idempotence makes safe).
const RETRIABLE: [i16; 6] = [
    3,  // UNKNOWN_TOPIC_OR_PARTITION
    5,  // LEADER_NOT_AVAILABLE
    6,  // NOT_LEADER_OR_FOLLOWER
    7,  // REQUEST_TIMED_OUT
    19, // NOT_ENOUGH_REPLICAS
    20, // NOT_ENOUGH_REPLICAS_AFTER_APPEND
];

/// InitProducerId without a transactional id (an idempotent producer), as librdkafka and
/// kafka-python send it (v4): the producer id and epoch, retried while the broker is not ready.
fn init_producer_id(addr: SocketAddr) -> ProducerFields {
    bump_epoch(addr, None)
}

/// InitProducerId v4 with the producer's current id and epoch (KIP-360, as kafka-python sends it
/// to recover from OUT_OF_ORDER_SEQUENCE_NUMBER), or with none (a new producer).
fn bump_epoch(addr: SocketAddr, current: Option<ProducerFields>) -> ProducerFields {
    let mut request = InitProducerIdRequest::default();
    request.transactional_id = None;
    request.transaction_timeout_ms = 60_000;
    if let Some(current) = current {
        request.producer_id = current.id.into();
        request.producer_epoch = current.epoch;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let response: InitProducerIdResponse =
            Client::connect(addr).call(ApiKey::InitProducerId, 4, &request);
        if response.error_code == 0 {
            assert!(response.producer_id.0 >= 0, "{response:?}");
            assert!(response.producer_epoch >= 0, "{response:?}");
            return ProducerFields {
                id: response.producer_id.0,
                epoch: response.producer_epoch,
                base_sequence: 0,
            };
        }
        assert!(Instant::now() < deadline, "InitProducerId: {response:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `count` records from `producer`, each value naming its epoch and sequence (`e0-s7`), padded
/// with `pad` bytes. Dated now: a producer whose last batch is older than
/// producer.id.expiration.ms (by its timestamps, as in Kafka) may be forgotten.
fn numbered(producer: ProducerFields, count: i32, pad: usize) -> Bytes {
    let values: Vec<Vec<u8>> = (0..count)
        .map(|i| value(producer.epoch, producer.base_sequence + i, pad))
        .collect();
    let values: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
    producer_batch(&values, now_ms(), producer)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn value(epoch: i16, sequence: i32, pad: usize) -> Vec<u8> {
    let mut v = format!("e{epoch}-s{sequence}").into_bytes();
    v.resize(v.len() + pad, b'.');
    v
}

/// One acks=all produce of `records` to partition 0: (error code, base offset).
fn produce(client: &mut Client, topic: &str, records: &Bytes) -> (i16, i64) {
    let got = client.produce(topic, -1, &[(0, records.clone())]);
    (got[0].1, got[0].2)
}

/// `produce`, sent again on a retriable error until it succeeds: the base offset.
fn produce_retrying(addr: SocketAddr, topic: &str, records: &Bytes) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = Client::try_connect(addr).map(|mut c| produce(&mut c, topic, records));
        match got {
            Ok((0, offset)) => return offset,
            Ok((error, _)) if !RETRIABLE.contains(&error) => panic!("produce failed: {error}"),
            _ => {}
        }
        assert!(Instant::now() < deadline, "produce kept failing: {got:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The values of partition 0 from its log start to its high watermark, with their offsets.
fn stored(client: &mut Client, topic: &str) -> Vec<(i64, String)> {
    let start = log_start(client, topic);
    client
        .read_all(topic, 0, start)
        .into_iter()
        .map(|(o, v)| {
            let v = String::from_utf8_lossy(&v);
            (o, v.trim_end_matches('.').to_string())
        })
        .collect()
}

/// ListOffsets earliest (-2) of partition 0.
fn log_start(client: &mut Client, topic: &str) -> i64 {
    let mut partition = list_offsets_request::ListOffsetsPartition::default();
    partition.timestamp = -2;
    let mut wanted = list_offsets_request::ListOffsetsTopic::default();
    wanted.name = TopicName(StrBytes::from_string(topic.to_string()));
    wanted.partitions = vec![partition];
    let mut request = ListOffsetsRequest::default();
    request.replica_id = BrokerId(-1);
    request.topics = vec![wanted];
    let response: ListOffsetsResponse = client.call(ApiKey::ListOffsets, 5, &request);
    let p = &response.topics[0].partitions[0];
    assert_eq!(p.error_code, 0, "ListOffsets earliest: {p:?}");
    p.offset
}

/// `producer` moved on by `count` records.
fn after(producer: ProducerFields, count: i32) -> ProducerFields {
    ProducerFields {
        base_sequence: producer.base_sequence + count,
        ..producer
    }
}

/// Sends `batches` batches of `size` records from `producer`: each batch, its first offset, and
/// the producer moved past them.
fn send_batches(
    client: &mut Client,
    topic: &str,
    mut producer: ProducerFields,
    batches: usize,
    size: i32,
    pad: usize,
) -> (Vec<(Bytes, i64)>, ProducerFields) {
    let mut sent = Vec::new();
    for _ in 0..batches {
        let records = numbered(producer, size, pad);
        let (error, offset) = produce(client, topic, &records);
        assert_eq!(error, 0, "batch at sequence {}", producer.base_sequence);
        sent.push((records, offset));
        producer = after(producer, size);
    }
    (sent, producer)
}

/// The values `producer`'s epoch wrote for sequences `range`, in order.
fn values(epoch: i16, range: std::ops::Range<i32>) -> Vec<String> {
    range
        .map(|s| String::from_utf8(value(epoch, s, 0)).unwrap())
        .collect()
}

fn only_values(stored: &[(i64, String)]) -> Vec<String> {
    stored.iter().map(|(_, v)| v.clone()).collect()
}

#[test]
fn a_retried_batch_is_answered_with_its_first_offsets_and_stored_once() {
    let broker = Broker::start();
    let mut client = broker.client();
    create_topic(&mut client, "dedupe", 1, 1);
    // A plain batch first, so that offsets and sequences differ.
    let plain = client.produce("dedupe", -1, &[(0, common::batch(&[b"p0", b"p1"], 1))]);
    assert_eq!(plain[0].1, 0);
    let producer = init_producer_id(broker.addr);

    let (sent, next) = send_batches(&mut client, "dedupe", producer, 6, 3, 0);
    let offsets: Vec<i64> = sent.iter().map(|(_, o)| *o).collect();
    assert_eq!(offsets, vec![2, 5, 8, 11, 14, 17]);
    // Each of the last five batches, sent again (newest first, then in order): the offsets it
    // got the first time, nothing appended.
    for (records, offset) in sent[1..].iter().rev().chain(sent[1..].iter()) {
        assert_eq!(produce(&mut client, "dedupe", records), (0, *offset));
    }
    // Older than the five the broker remembers: Kafka no longer knows it as a duplicate and
    // refuses its sequence as out of order.
    let (error, _) = produce(&mut client, "dedupe", &sent[0].0);
    assert_eq!(error, OUT_OF_ORDER_SEQUENCE_NUMBER);
    // The sequence goes on where it stopped.
    assert_eq!(
        produce(&mut client, "dedupe", &numbered(next, 2, 0)),
        (0, 20)
    );

    let log = stored(&mut client, "dedupe");
    assert_eq!(
        log.iter().map(|(o, _)| *o).collect::<Vec<_>>(),
        (0..22).collect::<Vec<_>>()
    );
    let mut expected = vec!["p0".to_string(), "p1".to_string()];
    expected.extend(values(producer.epoch, 0..20));
    assert_eq!(only_values(&log), expected, "stored once, in order");
}

#[test]
fn a_sequence_gap_is_rejected_with_out_of_order_sequence_number() {
    let broker = Broker::start();
    let mut client = broker.client();
    create_topic(&mut client, "gaps", 1, 1);
    let producer = init_producer_id(broker.addr);
    let (_, next) = send_batches(&mut client, "gaps", producer, 2, 2, 0);
    assert_eq!(next.base_sequence, 4);

    // Sequence 5 while 4 is expected: one record missing.
    let (error, _) = produce(&mut client, "gaps", &numbered(after(next, 1), 2, 0));
    assert_eq!(error, OUT_OF_ORDER_SEQUENCE_NUMBER, "a gap of one");
    let (error, _) = produce(&mut client, "gaps", &numbered(after(next, 1000), 1, 0));
    assert_eq!(error, OUT_OF_ORDER_SEQUENCE_NUMBER, "a gap of a thousand");
    // Overlapping the last batch without being it (sequence 3 when 2..=3 was the last batch).
    let (error, _) = produce(&mut client, "gaps", &numbered(after(next, -1), 2, 0));
    assert_eq!(
        error, OUT_OF_ORDER_SEQUENCE_NUMBER,
        "overlapping the last batch"
    );
    // Nothing of them was stored; the expected sequence is still accepted.
    assert_eq!(produce(&mut client, "gaps", &numbered(next, 1, 0)), (0, 4));
    assert_eq!(
        only_values(&stored(&mut client, "gaps")),
        values(producer.epoch, 0..5)
    );
}

#[test]
fn an_older_epoch_after_a_newer_one_is_rejected_with_invalid_producer_epoch() {
    let broker = Broker::start();
    let mut client = broker.client();
    create_topic(&mut client, "epochs", 1, 1);
    let old = init_producer_id(broker.addr);
    let (_, old_next) = send_batches(&mut client, "epochs", old, 2, 1, 0);

    // A KIP-360 bump: the same producer id with the next epoch, which starts again at sequence
    // 0; a new epoch that does not start at 0 is out of order.
    let new = bump_epoch(broker.addr, Some(old));
    assert_eq!(
        new,
        ProducerFields {
            epoch: old.epoch + 1,
            ..old
        }
    );
    let (error, _) = produce(&mut client, "epochs", &numbered(after(new, 3), 1, 0));
    assert_eq!(
        error, OUT_OF_ORDER_SEQUENCE_NUMBER,
        "a new epoch at sequence 3"
    );
    assert_eq!(produce(&mut client, "epochs", &numbered(new, 1, 0)), (0, 2));

    // The old epoch, whether it continues its sequence or retries its first batch: fenced.
    let (error, _) = produce(&mut client, "epochs", &numbered(old_next, 1, 0));
    assert_eq!(error, INVALID_PRODUCER_EPOCH, "the old epoch's next batch");
    let (error, _) = produce(&mut client, "epochs", &numbered(old, 1, 0));
    assert_eq!(
        error, INVALID_PRODUCER_EPOCH,
        "the old epoch's first batch again"
    );
    // The new epoch goes on.
    assert_eq!(
        produce(&mut client, "epochs", &numbered(after(new, 1), 1, 0)),
        (0, 3)
    );
    let mut expected = values(old.epoch, 0..2);
    expected.extend(values(new.epoch, 0..2));
    assert_eq!(only_values(&stored(&mut client, "epochs")), expected);
}

#[test]
fn producer_state_survives_a_clean_restart_and_a_crash() {
    // Small segments: the batches span several rolled segments (each roll snapshots the producer
    // state) and the active one, so recovery combines a snapshot and the batches after it.
    let mut broker = Broker::start();
    let mut client = broker.client();
    create_topic_with(&mut client, "restarts", 1, 1, &[("segment.bytes", "16384")]);
    let producer = init_producer_id(broker.addr);
    let (sent, next) = send_batches(&mut client, "restarts", producer, 20, 4, 1000);
    let segments = std::fs::read_dir(broker.dir.join("data").join("restarts-0"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".log"))
        })
        .count();
    assert!(segments >= 3, "only {segments} segments");

    let mut next = next;
    for how in ["SIGTERM", "SIGKILL"] {
        if how == "SIGKILL" {
            broker.kill();
        }
        broker.restart();
        // The last batch and the one three before it, retried: their first offsets, not stored.
        for (records, offset) in [&sent[sent.len() - 1], &sent[sent.len() - 4]] {
            let got = produce_retrying(broker.addr, "restarts", records);
            assert_eq!(got, *offset, "after {how}: a duplicate stored again");
        }
        let mut client = broker.client();
        let end = stored(&mut client, "restarts").len() as i64;
        let (error, _) = produce(&mut client, "restarts", &numbered(after(next, 1), 1, 0));
        assert_eq!(error, OUT_OF_ORDER_SEQUENCE_NUMBER, "after {how}: a gap");
        assert_eq!(
            produce(&mut client, "restarts", &numbered(next, 1, 0)),
            (0, end),
            "after {how}: the next sequence"
        );
        next = after(next, 1);
    }
    let mut client = broker.client();
    assert_eq!(
        only_values(&stored(&mut client, "restarts")),
        values(producer.epoch, 0..next.base_sequence)
    );
}

/// The node that leads partition 0 of `topic` once it is none of `dead`, as the live nodes'
/// Metadata names it.
fn leader_other_than(nodes: &[Node], topic: &str, dead: &[usize]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "no leader but {dead:?}");
        let live = (0..nodes.len()).filter(|i| !dead.contains(i));
        let leader = live.clone().find_map(|i| {
            let metadata = Client::try_connect(nodes[i].addr).ok()?.metadata(&[topic]);
            let id = metadata.topics.first()?.partitions.first()?.leader_id.0;
            usize::try_from(id - 1).ok()
        });
        if let Some(leader) = leader.filter(|l| live.clone().any(|i| i == *l)) {
            return leader;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until partition 0 of `topic` has all of `nodes` in its ISR (as `via` answers).
fn wait_for_full_isr(nodes: &[Node], via: usize, topic: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let metadata = Client::connect(nodes[via].addr).metadata(&[topic]);
        let isr = &metadata.topics[0].partitions[0].isr_nodes;
        if isr.len() == nodes.len() {
            return;
        }
        assert!(Instant::now() < deadline, "ISR never full again: {isr:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_new_leader_detects_a_duplicate_of_what_the_old_leader_appended() {
    // acks=all: every batch is on all three replicas before it is acknowledged, and the followers
    // built the producer's state from the batches they replicated. The leader dies; the producer
    // retries its last batches on the new leader, which must answer with the old offsets. Then
    // the old leader comes back (recovering its state from its log and the new leader's batches),
    // the new leader dies, and whoever leads next detects the same retries.
    let tmp = tempfile::tempdir().unwrap();
    let mut nodes = start_cluster(tmp.path(), 3);
    create_topic(&mut Client::connect(nodes[0].addr), "failover", 1, 3);
    let (old, followers) = leader_and_followers(&nodes, "failover");
    let producer = init_producer_id(nodes[followers[0]].addr);
    let first = numbered(producer, 3, 0);
    assert_eq!(produce_retrying(nodes[old].addr, "failover", &first), 0);
    let mut client = Client::connect(nodes[old].addr);
    let (mut sent, next) = send_batches(&mut client, "failover", after(producer, 3), 5, 3, 0);
    drop(client);

    nodes[old].kill();
    let new = leader_other_than(&nodes, "failover", &[old]);
    for (records, offset) in sent.iter().rev() {
        let got = produce_retrying(nodes[new].addr, "failover", records);
        assert_eq!(got, *offset, "the new leader stored a duplicate again");
    }
    let mut client = Client::connect(nodes[new].addr);
    let (error, _) = produce(&mut client, "failover", &numbered(after(next, 2), 1, 0));
    assert_eq!(
        error, OUT_OF_ORDER_SEQUENCE_NUMBER,
        "a gap on the new leader"
    );
    let last = numbered(next, 1, 0);
    assert_eq!(produce_retrying(nodes[new].addr, "failover", &last), 18);
    sent.push((last, 18));
    assert_eq!(
        only_values(&stored(&mut client, "failover")),
        values(producer.epoch, 0..19)
    );
    drop(client);

    nodes[old].respawn();
    wait_for_full_isr(&nodes, new, "failover");
    nodes[new].kill();
    let third = leader_other_than(&nodes, "failover", &[new]);
    for (records, offset) in sent[1..].iter().rev() {
        let got = produce_retrying(nodes[third].addr, "failover", records);
        assert_eq!(
            got,
            *offset,
            "broker {} stored a duplicate again",
            third + 1
        );
    }
    let mut client = Client::connect(nodes[third].addr);
    let (error, _) = produce(&mut client, "failover", &numbered(after(next, 3), 1, 0));
    assert_eq!(
        error, OUT_OF_ORDER_SEQUENCE_NUMBER,
        "a gap on the third leader"
    );
    let newest = numbered(after(next, 1), 1, 0);
    assert_eq!(produce_retrying(nodes[third].addr, "failover", &newest), 19);
    assert_eq!(
        only_values(&stored(&mut client, "failover")),
        values(producer.epoch, 0..20)
    );
}

#[test]
fn producer_state_outlives_the_segments_that_first_carried_it() {
    // The producer writes a few batches; a plain producer then writes enough for retention to
    // delete every segment that held them. Kafka keeps a live producer's state until
    // producer.id.expiration.ms (KIP-360), not until its batches are gone: its retried last
    // batch is still a duplicate (answered with its first offset, below the log start now), its
    // next sequence is accepted and a gap is still refused.
    let mut broker = Broker::start_with_args(&["--log-retention-check-interval-ms", "200"]);
    let mut client = broker.client();
    create_topic_with(
        &mut client,
        "retained",
        1,
        1,
        &[("segment.bytes", "16384"), ("retention.bytes", "40000")],
    );
    let producer = init_producer_id(broker.addr);
    let (sent, next) = send_batches(&mut client, "retained", producer, 3, 2, 100);
    let (last, last_offset) = sent[sent.len() - 1].clone();
    assert_eq!(last_offset, 4);

    let filler: &[u8] = &[b'f'; 1000];
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut plain = 0;
    while log_start(&mut client, "retained") <= last_offset + 1 {
        assert!(
            Instant::now() < deadline,
            "retention never deleted the first segments"
        );
        if plain < 400 {
            let got = client.produce(
                "retained",
                -1,
                &[(0, common::batch(&[filler; 4], now_ms()))],
            );
            assert_eq!(got[0].1, 0);
            plain += 1;
        } else {
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    assert_eq!(
        produce(&mut client, "retained", &last),
        (0, last_offset),
        "a duplicate of a batch retention deleted was stored again"
    );
    let (error, _) = produce(&mut client, "retained", &numbered(after(next, 1), 1, 0));
    assert_eq!(error, OUT_OF_ORDER_SEQUENCE_NUMBER, "a gap");
    let end = 6 + 4 * plain;
    assert_eq!(
        produce(&mut client, "retained", &numbered(next, 1, 0)),
        (0, end),
        "the next sequence"
    );
    let log = stored(&mut client, "retained");
    assert_eq!(log.last().map(|(o, _)| *o), Some(end));
    let mine: Vec<String> = only_values(&log)
        .into_iter()
        .filter(|v| v.starts_with('e'))
        .collect();
    assert_eq!(mine, values(producer.epoch, 6..7));

    // After a crash, the state comes back from a snapshot taken after the producer's first
    // batches were written (their segments are gone) and the batches after it.
    broker.kill();
    broker.restart();
    assert_eq!(
        produce_retrying(broker.addr, "retained", &last),
        last_offset
    );
    let newest = numbered(next, 1, 0);
    assert_eq!(produce_retrying(broker.addr, "retained", &newest), end);
    let mut client = broker.client();
    let (error, _) = produce(&mut client, "retained", &numbered(after(next, 2), 1, 0));
    assert_eq!(
        error, OUT_OF_ORDER_SEQUENCE_NUMBER,
        "a gap after the restart"
    );
    assert_eq!(
        produce(&mut client, "retained", &numbered(after(next, 1), 1, 0)),
        (0, end + 1),
        "the next sequence after the restart"
    );
}
