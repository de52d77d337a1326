//! Bad input gets the proper answer or a closed connection, never a panic,
//! and the broker keeps serving everyone else with their data intact.

mod common;

use std::io::Write;

use bytes::{Bytes, BytesMut};
use common::*;
use kafka_protocol::messages::*;

/// Produces a record and reads it back on a fresh connection: the broker is
/// alive and the data of others is intact.
fn assert_still_serving(broker: &mut Broker, topic: &str, expected_records: usize) {
    assert!(broker.is_running(), "broker died\n{}", broker.log());
    let mut client = broker.client();
    let results = client.produce(topic, 1, &[(0, batch(&[b"still here"], 0))]);
    assert_eq!(results[0].1, 0);
    assert_eq!(client.read_all(topic, 0, 0).len(), expected_records + 1);
}

fn start_with_topic(topic: &str) -> Broker {
    let broker = Broker::start();
    let mut client = broker.client();
    assert_eq!(client.create_topic(topic, 1).topics[0].error_code, 0);
    broker
}

#[test]
fn oversized_length_prefix_closes_the_connection() {
    let mut broker = start_with_topic("t");
    let mut client = broker.client();
    client
        .stream
        .write_all(&(200u32 << 20).to_be_bytes())
        .unwrap();
    assert!(client.is_closed_by_peer());
    let mut client = broker.client();
    client.stream.write_all(&(-1i32).to_be_bytes()).unwrap();
    assert!(client.is_closed_by_peer());
    assert!(broker.log().contains("socket.request.max.bytes"));
    assert_still_serving(&mut broker, "t", 0);
}

#[test]
fn frames_shorter_than_a_header_close_the_connection() {
    let mut broker = start_with_topic("t");
    for len in 0..8u32 {
        let mut client = broker.client();
        let mut frame = len.to_be_bytes().to_vec();
        frame.extend(std::iter::repeat_n(0u8, len as usize));
        client.stream.write_all(&frame).unwrap();
        assert!(client.is_closed_by_peer(), "frame of {len} bytes");
    }
    assert_still_serving(&mut broker, "t", 0);
}

#[test]
fn unknown_api_key_closes_the_connection() {
    let mut broker = start_with_topic("t");
    let mut client = broker.client();
    let mut frame = 10u32.to_be_bytes().to_vec();
    frame.extend_from_slice(&[0x7f, 0x7f, 0, 0, 0, 0, 0, 1, 0xff, 0xff]);
    client.stream.write_all(&frame).unwrap();
    assert!(client.is_closed_by_peer());
    // A known Kafka API that chronik does not implement (FindCoordinator) too.
    let mut client = broker.client();
    let frame = client.encode(
        ApiKey::FindCoordinator,
        2,
        &FindCoordinatorRequest::default(),
    );
    client.stream.write_all(&frame).unwrap();
    assert!(client.is_closed_by_peer());
    assert!(broker.log().contains("unknown api key"));
    assert_still_serving(&mut broker, "t", 0);
}

#[test]
fn unsupported_versions() {
    let mut broker = start_with_topic("t");
    // ApiVersions of an unknown version: the v0 error answer.
    let mut client = broker.client();
    let mut frame = client.encode(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default());
    frame[6..8].copy_from_slice(&77i16.to_be_bytes());
    client.stream.write_all(&frame).unwrap();
    let (_, response): (i32, ApiVersionsResponse) = client.read_response(ApiKey::ApiVersions, 0);
    assert_eq!(response.error_code, 35);
    // Produce v2 (not supported): the connection closes with a log line, as Kafka does.
    let mut client = broker.client();
    let mut frame = client.encode(ApiKey::Metadata, 1, &MetadataRequest::default());
    frame[6..8].copy_from_slice(&99i16.to_be_bytes());
    client.stream.write_all(&frame).unwrap();
    assert!(client.is_closed_by_peer());
    assert!(broker.log().contains("unsupported version 99 of Metadata"));
    assert_still_serving(&mut broker, "t", 0);
}

#[test]
fn malformed_body_closes_the_connection() {
    let mut broker = start_with_topic("t");
    let mut client = broker.client();
    let request = produce_request("t", 1, &[(0, batch(&[b"x"], 0))]);
    let mut frame = client.encode(ApiKey::Produce, 9, &request);
    // Claim a huge topic array length, then cut the frame short.
    frame.truncate(30);
    let len = (frame.len() - 4) as u32;
    frame[0..4].copy_from_slice(&len.to_be_bytes());
    client.stream.write_all(&frame).unwrap();
    assert!(client.is_closed_by_peer());
    assert_still_serving(&mut broker, "t", 0);
}

#[test]
fn bad_crc_is_corrupt_message_and_stores_nothing() {
    let mut broker = start_with_topic("t");
    let mut client = broker.client();
    client.produce("t", 1, &[(0, batch(&[b"good"], 0))]);
    let mut bad = BytesMut::from(&batch(&[b"will be damaged"], 0)[..]);
    let last = bad.len() - 1;
    bad[last] ^= 0xff;
    let results = client.produce("t", 1, &[(0, bad.freeze())]);
    assert_eq!(results[0].1, 2, "CORRUPT_MESSAGE");
    // The connection stays usable.
    let records = client.read_all("t", 0, 0);
    assert_eq!(records, vec![(0, Bytes::from_static(b"good"))]);
    assert_still_serving(&mut broker, "t", 1);
}

#[test]
fn bad_topic_names_are_invalid_topic_exception() {
    let mut broker = start_with_topic("t");
    let mut client = broker.client();
    for name in ["bad name!", "..", &"x".repeat(250)] {
        let results = client.produce(name, 1, &[(0, batch(&[b"x"], 0))]);
        assert_eq!(results[0].1, 17, "produce to {name:?}");
        let metadata = client.metadata(&[name]);
        assert_eq!(metadata.topics[0].error_code, 17, "metadata for {name:?}");
        let created = client.create_topic(name, 1);
        assert_eq!(created.topics[0].error_code, 17, "create {name:?}");
    }
    assert_still_serving(&mut broker, "t", 0);
}

#[test]
fn truncated_offset_for_leader_epoch_closes_the_connection() {
    let mut broker = start_with_topic("t");
    for version in 2..=4i16 {
        let mut client = broker.client();
        let mut partition = offset_for_leader_epoch_request::OffsetForLeaderPartition::default();
        partition.leader_epoch = 0;
        let mut topic = offset_for_leader_epoch_request::OffsetForLeaderTopic::default();
        topic.topic = TopicName(kafka_protocol::protocol::StrBytes::from_static_str("t"));
        topic.partitions = vec![partition];
        let mut request = OffsetForLeaderEpochRequest::default();
        request.topics = vec![topic];
        let mut frame = client.encode(ApiKey::OffsetForLeaderEpoch, version, &request);
        // Cut the last partition's epoch short.
        frame.truncate(frame.len() - 6);
        let len = (frame.len() - 4) as u32;
        frame[0..4].copy_from_slice(&len.to_be_bytes());
        client.stream.write_all(&frame).unwrap();
        assert!(client.is_closed_by_peer(), "v{version}");
    }
    assert!(broker
        .log()
        .contains("malformed OffsetForLeaderEpoch v2 request"));
    assert_still_serving(&mut broker, "t", 0);
}

#[test]
fn missing_partitions_are_unknown_topic_or_partition() {
    let mut broker = start_with_topic("t");
    let mut client = broker.client();
    let results = client.produce("t", 1, &[(5, batch(&[b"x"], 0))]);
    assert_eq!(results[0].1, 3);
    let results = client.produce("t", -1, &[(-1, batch(&[b"x"], 0))]);
    assert_eq!(results[0].1, 3);
    let fetched = client.fetch("t", 9, 0, 1000);
    assert_eq!(fetched.error_code, 3);
    assert_still_serving(&mut broker, "t", 0);
}

#[test]
fn nonsense_offsets_and_empty_records_get_error_codes() {
    let mut broker = start_with_topic("t");
    let mut client = broker.client();
    for offset in [-1, -100, i64::MIN, i64::MAX] {
        assert_eq!(
            client.fetch("t", 0, offset, 1000).error_code,
            1,
            "fetch at {offset}"
        );
    }
    for records in [
        Bytes::new(),
        Bytes::from_static(&[0u8; 7]),
        Bytes::from(vec![0xffu8; 100]),
    ] {
        let results = client.produce("t", 1, &[(0, records.clone())]);
        assert_ne!(
            results[0].1,
            0,
            "produce of {} bytes of garbage",
            records.len()
        );
    }
    assert_still_serving(&mut broker, "t", 0);
}

#[test]
fn a_second_broker_on_the_same_port_refuses_to_start() {
    let broker = start_with_topic("t");
    let dir = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_chronik"))
        .arg("start")
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--listen")
        .arg(broker.addr.to_string())
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot listen"));
}

/// Issue 13: a 30-byte Metadata v1 request whose topic array declares 0x7fffffff entries. The
/// codec reserved room for all of them before reading any (`memory allocation of 154618822584 bytes
/// failed`: an abort, which no catch_unwind stops). Now the count is checked against the bytes that
/// remain: the connection is closed with a log line and the broker serves the next client.
#[test]
fn a_huge_declared_array_count_is_refused_before_anything_is_allocated() {
    let mut broker = start_with_topic("t");
    let mut client = broker.client();
    let mut body = Vec::new();
    body.extend_from_slice(&3i16.to_be_bytes()); // Metadata
    body.extend_from_slice(&1i16.to_be_bytes()); // v1
    body.extend_from_slice(&7i32.to_be_bytes()); // correlation id
    body.extend_from_slice(&(-1i16).to_be_bytes()); // no client id
    body.extend_from_slice(&0x7fff_ffffi32.to_be_bytes()); // topics: 2^31 - 1 of them
    body.extend_from_slice(&[0, 1, b'x', 0, 1, b'y', 0, 0, 0, 0, 0, 0]); // and a few bytes
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    assert_eq!(frame.len(), 30);
    client.stream.write_all(&frame).unwrap();
    assert!(client.is_closed_by_peer());
    assert!(
        broker
            .log()
            .contains("Tried to allocate a collection of size 2147483647"),
        "{}",
        broker.log()
    );
    assert_still_serving(&mut broker, "t", 0);
}
