//! The broker's Kafka APIs end to end, against the real binary.

mod common;

use std::io::Write;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

#[test]
fn api_versions_every_version_and_fallback() {
    let broker = Broker::start();
    let mut client = broker.client();
    for version in 0..=4 {
        let response: ApiVersionsResponse =
            client.call(ApiKey::ApiVersions, version, &ApiVersionsRequest::default());
        assert_eq!(response.error_code, 0);
        let produce = response
            .api_keys
            .iter()
            .find(|k| k.api_key == ApiKey::Produce as i16)
            .expect("produce advertised");
        assert_eq!((produce.min_version, produce.max_version), (3, 13));
        // Group APIs are not implemented, so not advertised.
        assert!(!response
            .api_keys
            .iter()
            .any(|k| k.api_key == ApiKey::FindCoordinator as i16));
        assert!(response.supported_features.is_empty() && response.finalized_features.is_empty());
    }
    // A version the broker does not know: UNSUPPORTED_VERSION in the v0 format.
    let mut frame = client.encode(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default());
    frame[6..8].copy_from_slice(&99i16.to_be_bytes());
    client.stream.write_all(&frame).unwrap();
    let (correlation_id, response): (i32, ApiVersionsResponse) =
        client.read_response(ApiKey::ApiVersions, 0);
    assert_eq!(correlation_id, client.last_correlation_id());
    assert_eq!(response.error_code, 35);
    assert!(response
        .api_keys
        .iter()
        .any(|k| k.api_key == ApiKey::ApiVersions as i16));
}

#[test]
fn metadata_auto_creates_and_describes_the_cluster() {
    let broker = Broker::start();
    let mut client = broker.client();
    let response = client.metadata(&["auto-created"]);
    assert_eq!(response.brokers.len(), 1);
    assert_eq!(response.brokers[0].port as u16, broker.addr.port());
    assert_eq!(response.controller_id.0, 1);
    let topic = &response.topics[0];
    assert_eq!(topic.error_code, 0);
    assert_eq!(topic.partitions.len(), 1);
    assert_eq!(topic.partitions[0].leader_id.0, 1);
    assert!(!topic.topic_id.is_nil());
    // Metadata v0 (empty list = all topics) and v1 (null = all topics).
    let all: MetadataResponse = client.call(ApiKey::Metadata, 0, &MetadataRequest::default());
    assert!(all
        .topics
        .iter()
        .any(|t| t.name.as_ref().unwrap().0.as_str() == "auto-created"));
    let mut request = MetadataRequest::default();
    request.topics = None;
    let all: MetadataResponse = client.call(ApiKey::Metadata, 1, &request);
    assert_eq!(all.topics.len(), 1);

    let mut request = DescribeClusterRequest::default();
    request.include_cluster_authorized_operations = false;
    let cluster: DescribeClusterResponse = client.call(ApiKey::DescribeCluster, 1, &request);
    assert_eq!(cluster.error_code, 0);
    assert_eq!(cluster.brokers.len(), 1);
    assert_eq!(cluster.controller_id.0, 1);
    assert!(!cluster.cluster_id.is_empty());
}

#[test]
fn produce_and_fetch_across_shards_with_every_ack_mode() {
    let broker = Broker::start();
    let mut client = broker.client();
    let created = client.create_topic("spread", 8);
    assert_eq!(created.topics[0].error_code, 0);
    // One request touching every partition (placed on different shards).
    let parts: Vec<(i32, Bytes)> = (0..8)
        .map(|p| (p, batch(&[format!("p{p}-0").as_bytes()], 1000)))
        .collect();
    for acks in [1i16, -1] {
        let results = client.produce("spread", acks, &parts);
        assert_eq!(results.len(), 8);
        for (i, (partition, error, _)) in results.iter().enumerate() {
            assert_eq!((*partition, *error), (i as i32, 0));
        }
    }
    // acks=0: no answer; the next request's answer is the next frame.
    let frame = client.encode(ApiKey::Produce, 9, &produce_request("spread", 0, &parts));
    client.stream.write_all(&frame).unwrap();
    let metadata = client.metadata(&["spread"]);
    assert_eq!(metadata.topics[0].partitions.len(), 8);
    for p in 0..8 {
        // acks=0 data becomes readable once flushed; wait for it without a deadline assertion.
        let mut records = client.read_all("spread", p, 0);
        for _ in 0..100 {
            if records.len() == 3 {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
            records = client.read_all("spread", p, 0);
        }
        let offsets: Vec<i64> = records.iter().map(|(o, _)| *o).collect();
        assert_eq!(offsets, vec![0, 1, 2], "partition {p}");
        assert!(records
            .iter()
            .all(|(_, v)| v.as_ref() == format!("p{p}-0").as_bytes()));
    }
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let broker = Broker::start();
    let mut client = broker.client();
    client.create_topic("pipe", 4);
    let mut frames = Vec::new();
    let mut ids = Vec::new();
    for i in 0..50 {
        let parts = vec![(i % 4, batch(&[format!("m{i}").as_bytes()], 0))];
        frames.extend(client.encode(ApiKey::Produce, 9, &produce_request("pipe", 1, &parts)));
        ids.push(client.last_correlation_id());
    }
    client.stream.write_all(&frames).unwrap();
    let mut next_offset = [0i64; 4];
    for (i, id) in ids.into_iter().enumerate() {
        let (correlation_id, response): (i32, ProduceResponse) =
            client.read_response(ApiKey::Produce, 9);
        assert_eq!(correlation_id, id);
        let p = &response.responses[0].partition_responses[0];
        assert_eq!(p.error_code, 0);
        assert_eq!(p.index, (i % 4) as i32);
        // Appends kept the request order within each partition.
        assert_eq!(p.base_offset, next_offset[i % 4]);
        next_offset[i % 4] += 1;
    }
}

#[test]
fn fetch_respects_byte_limits() {
    let broker = Broker::start();
    let mut client = broker.client();
    client.create_topic("limits", 2);
    let value = vec![b'x'; 900];
    for _ in 0..5 {
        client.produce(
            "limits",
            1,
            &[(0, batch(&[&value], 0)), (1, batch(&[&value], 0))],
        );
    }
    let one = client.fetch("limits", 0, 0, 1 << 20);
    let sizes = batch_sizes(one.records.as_ref().unwrap());
    assert_eq!(sizes.len(), 5);
    let size = sizes[0];
    // Partition limit: whole batches only, never above it.
    let limited = client.fetch("limits", 0, 0, (2 * size + size / 2) as i32);
    assert_eq!(
        batch_sizes(limited.records.as_ref().unwrap()),
        vec![size, size]
    );
    // A first batch larger than every limit is still returned (progress).
    let tiny = client.fetch("limits", 0, 0, 10);
    assert_eq!(batch_sizes(tiny.records.as_ref().unwrap()), vec![size]);
    // Total limit across partitions: the second partition gets what is left, in whole batches.
    let request = fetch_request(
        &[("limits", 0, 0, 1 << 20), ("limits", 1, 0, 1 << 20)],
        0,
        1,
        (3 * size + 10) as i32,
    );
    let response: FetchResponse = client.call(ApiKey::Fetch, 12, &request);
    let total: usize = response.responses[0]
        .partitions
        .iter()
        .map(|p| p.records.as_ref().map_or(0, |r| r.len()))
        .sum();
    assert_eq!(total, 3 * size);
    // Only the first non-empty partition may exceed the limits.
    let request = fetch_request(&[("limits", 0, 0, 10), ("limits", 1, 0, 10)], 0, 1, 10);
    let response: FetchResponse = client.call(ApiKey::Fetch, 12, &request);
    let partitions = &response.responses[0].partitions;
    assert_eq!(partitions[0].records.as_ref().unwrap().len(), size);
    assert_eq!(partitions[1].records.as_ref().unwrap().len(), 0);
    // Beyond the end: OFFSET_OUT_OF_RANGE.
    let out = client.fetch("limits", 0, 99, 1 << 20);
    assert_eq!(out.error_code, 1);
    assert_eq!(out.high_watermark, 5);
}

#[test]
fn fetch_long_poll_is_woken_by_a_produce() {
    let broker = Broker::start();
    let mut consumer = broker.client();
    consumer.create_topic("poll", 1);
    let request = fetch_request(&[("poll", 0, 0, 1 << 20)], 20_000, 1, 1 << 20);
    let frame = consumer.encode(ApiKey::Fetch, 12, &request);
    consumer.stream.write_all(&frame).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let mut producer = broker.client();
    producer.produce("poll", 1, &[(0, batch(&[b"wake up"], 0))]);
    let (_, response): (i32, FetchResponse) = consumer.read_response(ApiKey::Fetch, 12);
    let data = &response.responses[0].partitions[0];
    assert_eq!(data.high_watermark, 1);
    let records = decode_records(data.records.clone().unwrap());
    assert_eq!(records, vec![(0, Bytes::from_static(b"wake up"))]);
}

#[test]
fn list_offsets_earliest_latest_and_by_timestamp() {
    let broker = Broker::start();
    let mut client = broker.client();
    client.create_topic("times", 1);
    for i in 0..3 {
        client.produce("times", 1, &[(0, batch(&[b"a", b"b"], 1_000 * (i + 1)))]);
    }
    let query = |client: &mut Client, timestamp: i64, version: i16| {
        let mut partition = ListOffsetsPartition::default();
        partition.partition_index = 0;
        partition.timestamp = timestamp;
        let mut topic = ListOffsetsTopic::default();
        topic.name = TopicName(StrBytes::from_static_str("times"));
        topic.partitions = vec![partition];
        let mut request = ListOffsetsRequest::default();
        request.replica_id = BrokerId(-1);
        request.topics = vec![topic];
        let response: ListOffsetsResponse = client.call(ApiKey::ListOffsets, version, &request);
        let p = &response.topics[0].partitions[0];
        assert_eq!(p.error_code, 0);
        p.offset
    };
    for version in [1, 2, 5, 6] {
        assert_eq!(query(&mut client, -2, version), 0);
        assert_eq!(query(&mut client, -1, version), 6);
        assert_eq!(query(&mut client, 2_000, version), 2);
        assert_eq!(query(&mut client, 2_001, version), 2);
        assert_eq!(query(&mut client, 3_001, version), 4);
        assert_eq!(query(&mut client, 10_000, version), -1);
    }
}

#[test]
fn admin_apis_create_alter_describe_delete() {
    let broker = Broker::start();
    let mut client = broker.client();
    // CreateTopics at every supported version, with configs.
    for version in 2..=7i16 {
        let name = format!("admin-{version}");
        let mut topic = create_topics_request::CreatableTopic::default();
        topic.name = TopicName(StrBytes::from_string(name.clone()));
        topic.num_partitions = 3;
        topic.replication_factor = 1;
        let mut config = create_topics_request::CreatableTopicConfig::default();
        config.name = StrBytes::from_static_str("retention.ms");
        config.value = Some(StrBytes::from_static_str("60000"));
        topic.configs = vec![config];
        let mut request = CreateTopicsRequest::default();
        request.topics = vec![topic.clone()];
        request.timeout_ms = 10_000;
        let response: CreateTopicsResponse = client.call(ApiKey::CreateTopics, version, &request);
        assert_eq!(response.topics[0].error_code, 0, "CreateTopics v{version}");
        if version >= 5 {
            assert_eq!(response.topics[0].num_partitions, 3);
            let configs = response.topics[0].configs.as_ref().unwrap();
            let retention = configs
                .iter()
                .find(|c| c.name.as_str() == "retention.ms")
                .unwrap();
            assert_eq!(retention.value.as_ref().unwrap().as_str(), "60000");
        }
        let again: CreateTopicsResponse = client.call(ApiKey::CreateTopics, version, &request);
        assert_eq!(again.topics[0].error_code, 36, "TOPIC_ALREADY_EXISTS");
    }
    // validate_only creates nothing.
    let mut topic = create_topics_request::CreatableTopic::default();
    topic.name = TopicName(StrBytes::from_static_str("only-validated"));
    topic.num_partitions = 1;
    topic.replication_factor = 1;
    let mut request = CreateTopicsRequest::default();
    request.topics = vec![topic];
    request.validate_only = true;
    let response: CreateTopicsResponse = client.call(ApiKey::CreateTopics, 4, &request);
    assert_eq!(response.topics[0].error_code, 0);
    let mut request = MetadataRequest::default();
    request.topics = None;
    let all: MetadataResponse = client.call(ApiKey::Metadata, 4, &request);
    assert!(!all
        .topics
        .iter()
        .any(|t| t.name.as_ref().unwrap().0.as_str() == "only-validated"));

    // IncrementalAlterConfigs then DescribeConfigs.
    let mut op = incremental_alter_configs_request::AlterableConfig::default();
    op.name = StrBytes::from_static_str("retention.ms");
    op.config_operation = 0;
    op.value = Some(StrBytes::from_static_str("120000"));
    let mut resource = incremental_alter_configs_request::AlterConfigsResource::default();
    resource.resource_type = 2;
    resource.resource_name = StrBytes::from_static_str("admin-4");
    resource.configs = vec![op];
    let mut request = IncrementalAlterConfigsRequest::default();
    request.resources = vec![resource];
    let response: IncrementalAlterConfigsResponse =
        client.call(ApiKey::IncrementalAlterConfigs, 1, &request);
    assert_eq!(response.responses[0].error_code, 0);
    for version in 1..=4i16 {
        let mut resource = describe_configs_request::DescribeConfigsResource::default();
        resource.resource_type = 2;
        resource.resource_name = StrBytes::from_static_str("admin-4");
        resource.configuration_keys = None;
        let mut request = DescribeConfigsRequest::default();
        request.resources = vec![resource];
        let response: DescribeConfigsResponse =
            client.call(ApiKey::DescribeConfigs, version, &request);
        let result = &response.results[0];
        assert_eq!(result.error_code, 0);
        let retention = result
            .configs
            .iter()
            .find(|c| c.name.as_str() == "retention.ms")
            .unwrap();
        assert_eq!(retention.value.as_ref().unwrap().as_str(), "120000");
        if version >= 3 {
            // Kafka's types: the compaction ratio is a DOUBLE (6), the policy a LIST (7).
            let config_type = |name: &str| {
                let entry = result.configs.iter().find(|c| c.name.as_str() == name);
                entry.map(|c| (c.config_type, c.value.as_ref().map(|v| v.to_string())))
            };
            assert_eq!(
                config_type("min.cleanable.dirty.ratio"),
                Some((6, Some("0.5".to_string())))
            );
            assert_eq!(
                config_type("cleanup.policy"),
                Some((7, Some("delete".to_string())))
            );
        }
        assert!(result
            .configs
            .iter()
            .any(|c| c.name.as_str() == "segment.bytes"));
    }

    // CreatePartitions grows a topic; its new partitions take produce.
    let mut topic = create_partitions_request::CreatePartitionsTopic::default();
    topic.name = TopicName(StrBytes::from_static_str("admin-4"));
    topic.count = 5;
    let mut request = CreatePartitionsRequest::default();
    request.topics = vec![topic];
    request.timeout_ms = 10_000;
    let response: CreatePartitionsResponse = client.call(ApiKey::CreatePartitions, 3, &request);
    assert_eq!(response.results[0].error_code, 0);
    let results = client.produce("admin-4", -1, &[(4, batch(&[b"new"], 0))]);
    assert_eq!(results, vec![(4, 0, 0)]);

    // DeleteTopics removes it from metadata and its data from disk.
    assert!(broker.dir.join("data/admin-4-4").exists());
    let mut request = DeleteTopicsRequest::default();
    request.topic_names = vec![TopicName(StrBytes::from_static_str("admin-4"))];
    request.timeout_ms = 10_000;
    let response: DeleteTopicsResponse = client.call(ApiKey::DeleteTopics, 5, &request);
    assert_eq!(response.responses[0].error_code, 0);
    let missing = client.call::<_, MetadataResponse>(ApiKey::Metadata, 4, &{
        let mut request = MetadataRequest::default();
        request.topics = Some(vec![{
            let mut t = metadata_request::MetadataRequestTopic::default();
            t.name = Some(TopicName(StrBytes::from_static_str("admin-4")));
            t
        }]);
        request.allow_auto_topic_creation = false;
        request
    });
    assert_eq!(missing.topics[0].error_code, 3);
    for _ in 0..100 {
        if !broker.dir.join("data/admin-4-4").exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!broker.dir.join("data/admin-4-4").exists());
}

#[test]
fn acknowledged_data_survives_restarts() {
    let mut broker = Broker::start();
    let mut client = broker.client();
    client.create_topic("durable", 3);
    let mut expected: Vec<Vec<Bytes>> = vec![Vec::new(); 3];
    for i in 0..30 {
        let p = i % 3;
        let value = format!("record-{i}");
        let results = client.produce(
            "durable",
            if i % 2 == 0 { 1 } else { -1 },
            &[(p, batch(&[value.as_bytes()], i as i64))],
        );
        assert_eq!(results[0].1, 0);
        expected[p as usize].push(Bytes::from(value));
    }
    // Clean stop (SIGTERM) exits 0, and a restart serves everything.
    assert!(broker.stop().success());
    broker.restart();
    let mut client = broker.client();
    for p in 0..3 {
        let values: Vec<Bytes> = client
            .read_all("durable", p, 0)
            .into_iter()
            .map(|(_, v)| v)
            .collect();
        assert_eq!(values, expected[p as usize]);
    }
    // A crash (SIGKILL) after acknowledgement loses nothing either.
    client.produce("durable", 1, &[(0, batch(&[b"after-restart"], 0))]);
    expected[0].push(Bytes::from_static(b"after-restart"));
    broker.kill();
    broker.restart();
    let mut client = broker.client();
    let values: Vec<Bytes> = client
        .read_all("durable", 0, 0)
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    assert_eq!(values, expected[0]);
}

#[test]
fn every_advertised_produce_fetch_metadata_version_round_trips() {
    let broker = Broker::start();
    let mut client = broker.client();
    client.create_topic("versions", 1);
    let metadata = client.metadata(&["versions"]);
    let topic_id = metadata.topics[0].topic_id;
    let mut expected = Vec::new();
    for version in 3..=13i16 {
        let value = format!("produce-v{version}");
        let mut request = produce_request("versions", 1, &[(0, batch(&[value.as_bytes()], 0))]);
        if version >= 13 {
            request.topic_data[0].name = TopicName::default();
            request.topic_data[0].topic_id = topic_id;
        }
        let response: ProduceResponse = client.call(ApiKey::Produce, version, &request);
        let p = &response.responses[0].partition_responses[0];
        assert_eq!(
            (p.error_code, p.base_offset),
            (0, expected.len() as i64),
            "Produce v{version}"
        );
        expected.push(Bytes::from(value));
    }
    for version in 4..=18i16 {
        let mut request = fetch_request(&[("versions", 0, 0, 1 << 20)], 0, 1, 1 << 20);
        if version >= 13 {
            request.topics[0].topic = TopicName::default();
            request.topics[0].topic_id = topic_id;
        }
        if version < 7 {
            request.session_epoch = 0;
        }
        let response: FetchResponse = client.call(ApiKey::Fetch, version, &request);
        let p = &response.responses[0].partitions[0];
        assert_eq!(p.error_code, 0, "Fetch v{version}");
        assert_eq!(p.high_watermark, expected.len() as i64);
        let values: Vec<Bytes> = decode_records(p.records.clone().unwrap())
            .into_iter()
            .map(|(_, v)| v)
            .collect();
        assert_eq!(values, expected, "Fetch v{version}");
    }
    for version in 0..=13i16 {
        let mut request = MetadataRequest::default();
        let mut topic = metadata_request::MetadataRequestTopic::default();
        topic.name = Some(TopicName(StrBytes::from_static_str("versions")));
        request.topics = Some(vec![topic]);
        let response: MetadataResponse = client.call(ApiKey::Metadata, version, &request);
        assert_eq!(response.topics.len(), 1, "Metadata v{version}");
        assert_eq!(response.topics[0].error_code, 0);
        assert_eq!(response.brokers.len(), 1);
    }
    // Unknown topic ids (v13 produce): UNKNOWN_TOPIC_ID.
    let mut request = produce_request("versions", 1, &[(0, batch(&[b"x"], 0))]);
    request.topic_data[0].name = TopicName::default();
    request.topic_data[0].topic_id = uuid_from(7);
    let response: ProduceResponse = client.call(ApiKey::Produce, 13, &request);
    assert_eq!(response.responses[0].partition_responses[0].error_code, 100);
}

fn uuid_from(n: u128) -> uuid::Uuid {
    uuid::Uuid::from_u128(n)
}

#[test]
fn a_deleted_and_recreated_topic_starts_empty() {
    let broker = Broker::start();
    let mut client = broker.client();
    for round in 0..5 {
        assert_eq!(
            client.create_topic("phoenix", 4).topics[0].error_code,
            0,
            "round {round}"
        );
        let parts: Vec<(i32, Bytes)> = (0..4)
            .map(|p| (p, batch(&[format!("round-{round}").as_bytes()], 0)))
            .collect();
        for (partition, error, offset) in client.produce("phoenix", -1, &parts) {
            assert_eq!(
                (error, offset),
                (0, 0),
                "round {round} partition {partition}"
            );
        }
        for p in 0..4 {
            let values: Vec<Bytes> = client
                .read_all("phoenix", p, 0)
                .into_iter()
                .map(|(_, v)| v)
                .collect();
            assert_eq!(values, vec![Bytes::from(format!("round-{round}"))]);
        }
        let mut request = DeleteTopicsRequest::default();
        request.topic_names = vec![TopicName(StrBytes::from_static_str("phoenix"))];
        request.timeout_ms = 10_000;
        let response: DeleteTopicsResponse = client.call(ApiKey::DeleteTopics, 4, &request);
        assert_eq!(response.responses[0].error_code, 0);
    }
}

#[test]
fn leader_epochs_in_fetch_and_list_offsets_are_checked() {
    let broker = Broker::start();
    let mut client = broker.client();
    client.create_topic("epochs", 1);
    let epoch = client.metadata(&["epochs"]).topics[0].partitions[0].leader_epoch;
    for (requested, expected) in [(-1, 0), (epoch, 0), (epoch + 1, 75)] {
        let mut request = fetch_request(&[("epochs", 0, 0, 1 << 20)], 0, 1, 1 << 20);
        request.topics[0].partitions[0].current_leader_epoch = requested;
        let response: FetchResponse = client.call(ApiKey::Fetch, 12, &request);
        assert_eq!(
            response.responses[0].partitions[0].error_code, expected,
            "fetch with epoch {requested}"
        );

        let mut partition = list_offsets_request::ListOffsetsPartition::default();
        partition.partition_index = 0;
        partition.timestamp = -1;
        partition.current_leader_epoch = requested;
        let mut topic = list_offsets_request::ListOffsetsTopic::default();
        topic.name = TopicName(StrBytes::from_static_str("epochs"));
        topic.partitions = vec![partition];
        let mut request = ListOffsetsRequest::default();
        request.replica_id = BrokerId(-1);
        request.topics = vec![topic];
        let response: ListOffsetsResponse = client.call(ApiKey::ListOffsets, 6, &request);
        assert_eq!(
            response.topics[0].partitions[0].error_code, expected,
            "list offsets with epoch {requested}"
        );
    }
}

#[test]
fn fetch_min_bytes_waits_for_enough_data() {
    let broker = Broker::start();
    let mut client = broker.client();
    client.create_topic("minbytes", 1);
    client.produce("minbytes", 1, &[(0, batch(&[b"small"], 0))]);
    // Not enough data before max_wait: what there is comes back at the deadline.
    let request = fetch_request(&[("minbytes", 0, 0, 1 << 20)], 300, 10_000, 1 << 20);
    let response: FetchResponse = client.call(ApiKey::Fetch, 12, &request);
    let records = decode_records(response.responses[0].partitions[0].records.clone().unwrap());
    assert_eq!(records.len(), 1);
    // Enough data arriving while it waits completes it.
    let request = fetch_request(&[("minbytes", 0, 0, 1 << 20)], 20_000, 5_000, 1 << 20);
    let frame = client.encode(ApiKey::Fetch, 12, &request);
    client.stream.write_all(&frame).unwrap();
    let mut producer = broker.client();
    let value = vec![b'v'; 1000];
    for _ in 0..6 {
        producer.produce("minbytes", 1, &[(0, batch(&[&value], 0))]);
    }
    let (_, response): (i32, FetchResponse) = client.read_response(ApiKey::Fetch, 12);
    let data = response.responses[0].partitions[0].records.clone().unwrap();
    assert!(data.len() >= 5_000, "{} bytes", data.len());
}

#[test]
fn produce_with_a_zero_timeout_is_still_acknowledged() {
    let broker = Broker::start();
    let mut client = broker.client();
    client.create_topic("no-timeout", 1);
    for acks in [1i16, -1] {
        let mut request = produce_request("no-timeout", acks, &[(0, batch(&[b"x"], 0))]);
        request.timeout_ms = 0;
        let response: ProduceResponse = client.call(ApiKey::Produce, 9, &request);
        assert_eq!(
            response.responses[0].partition_responses[0].error_code, 0,
            "acks={acks}"
        );
    }
}

/// An OffsetForLeaderEpoch request: per partition (index, current leader epoch, epoch asked).
fn offset_for_leader_epoch_request(
    topic: &str,
    partitions: &[(i32, i32, i32)],
) -> OffsetForLeaderEpochRequest {
    let mut t = offset_for_leader_epoch_request::OffsetForLeaderTopic::default();
    t.topic = TopicName(StrBytes::from_string(topic.to_string()));
    t.partitions = partitions
        .iter()
        .map(|&(partition, current_leader_epoch, leader_epoch)| {
            let mut p = offset_for_leader_epoch_request::OffsetForLeaderPartition::default();
            p.partition = partition;
            p.current_leader_epoch = current_leader_epoch;
            p.leader_epoch = leader_epoch;
            p
        })
        .collect();
    let mut request = OffsetForLeaderEpochRequest::default();
    request.replica_id = BrokerId(-1);
    request.topics = vec![t];
    request
}

#[test]
fn offset_for_leader_epoch_every_version() {
    let broker = Broker::start();
    let mut client = broker.client();
    let versions: ApiVersionsResponse =
        client.call(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default());
    let advertised = versions
        .api_keys
        .iter()
        .find(|k| k.api_key == ApiKey::OffsetForLeaderEpoch as i16)
        .expect("OffsetForLeaderEpoch advertised");
    assert_eq!((advertised.min_version, advertised.max_version), (2, 4));

    client.create_topic("ends", 2);
    for i in 0..3 {
        client.produce("ends", 1, &[(0, batch(&[b"a", b"b"], i))]);
    }
    let epoch = client.metadata(&["ends"]).topics[0].partitions[0].leader_epoch;
    assert_eq!(epoch, 0, "a single broker leads in epoch 0");
    for version in 2..=4i16 {
        let request = offset_for_leader_epoch_request(
            "ends",
            &[
                // The current epoch ends at the log end.
                (0, -1, epoch),
                (0, epoch, epoch),
                // An empty partition: its epoch ends at 0.
                (1, epoch, epoch),
                // Newer than any epoch here, or none: undefined.
                (0, -1, epoch + 1),
                (0, epoch, -1),
                // The caller knows a newer leader epoch than this broker.
                (0, epoch + 1, epoch),
                (7, -1, epoch),
            ],
        );
        let response: OffsetForLeaderEpochResponse =
            client.call(ApiKey::OffsetForLeaderEpoch, version, &request);
        assert_eq!(response.throttle_time_ms, 0);
        assert_eq!(response.topics.len(), 1);
        assert_eq!(response.topics[0].topic.0.as_str(), "ends");
        let got: Vec<(i32, i16, i32, i64)> = response.topics[0]
            .partitions
            .iter()
            .map(|p| (p.partition, p.error_code, p.leader_epoch, p.end_offset))
            .collect();
        assert_eq!(
            got,
            vec![
                (0, 0, epoch, 6),
                (0, 0, epoch, 6),
                (1, 0, epoch, 0),
                (0, 0, -1, -1),
                (0, 0, -1, -1),
                (0, 75, -1, -1),
                (7, 3, -1, -1),
            ],
            "OffsetForLeaderEpoch v{version}"
        );
        let request = offset_for_leader_epoch_request("no-such-topic", &[(0, -1, 0)]);
        let response: OffsetForLeaderEpochResponse =
            client.call(ApiKey::OffsetForLeaderEpoch, version, &request);
        let p = &response.topics[0].partitions[0];
        assert_eq!((p.error_code, p.leader_epoch, p.end_offset), (3, -1, -1));
    }
    // Not auto-created by the question.
    let metadata: MetadataResponse = client.call(ApiKey::Metadata, 1, &{
        let mut request = MetadataRequest::default();
        request.topics = None;
        request
    });
    assert!(metadata
        .topics
        .iter()
        .all(|t| t.name.as_ref().unwrap().0.as_str() != "no-such-topic"));
}

/// A request is routed by the image its receiving shard read; the owner shard may not have applied
/// that image yet (here every shard applies each image 300 ms late). Right after CreateTopics the
/// owners wait to catch up instead of answering NOT_LEADER_OR_FOLLOWER, and act as leaders only
/// once their own state says so.
#[test]
fn requests_right_after_create_topics_wait_for_the_owner_shard() {
    let broker = Broker::start_with_env(&[("CHRONIK_FAULT_SLOW_IMAGE_APPLY_MS", "300")]);
    let mut client = broker.client();
    let partitions: Vec<i32> = (0..4).collect();

    client.create_topic("fresh-epochs", 4);
    let queries: Vec<(i32, i32, i32)> = partitions.iter().map(|&p| (p, 0, 0)).collect();
    let request = offset_for_leader_epoch_request("fresh-epochs", &queries);
    let response: OffsetForLeaderEpochResponse =
        client.call(ApiKey::OffsetForLeaderEpoch, 4, &request);
    let got: Vec<(i32, i16, i32, i64)> = response.topics[0]
        .partitions
        .iter()
        .map(|p| (p.partition, p.error_code, p.leader_epoch, p.end_offset))
        .collect();
    let want: Vec<(i32, i16, i32, i64)> = partitions.iter().map(|&p| (p, 0, 0, 0)).collect();
    assert_eq!(got, want, "OffsetForLeaderEpoch right after CreateTopics");

    client.create_topic("fresh-produce", 4);
    let parts: Vec<(i32, Bytes)> = partitions
        .iter()
        .map(|&p| (p, batch(&[b"first"], 0)))
        .collect();
    let got = client.produce("fresh-produce", -1, &parts);
    let want: Vec<(i32, i16, i64)> = partitions.iter().map(|&p| (p, 0, 0)).collect();
    assert_eq!(got, want, "acks=all produce right after CreateTopics");
    for &p in &partitions {
        let records = client.read_all("fresh-produce", p, 0);
        assert_eq!(records.len(), 1, "partition {p}");
        assert_eq!(&records[0].1[..], b"first");
    }
}
