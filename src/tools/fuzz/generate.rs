//! Valid requests to start from: every API and version the broker advertises, encoded with
//! kafka-protocol's request types and realistic fields (a topic that exists, its partitions and
//! topic id, a RecordBatch with keys, values and headers for Produce). Each template knows where
//! its length fields are ([`super::sites`]) and, for Produce, where its RecordBatch lies.

use bytes::Bytes;
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::incremental_alter_configs_request::{
    AlterConfigsResource, AlterableConfig,
};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::offset_for_leader_epoch_request::{
    OffsetForLeaderPartition, OffsetForLeaderTopic,
};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Encodable, StrBytes};
use kafka_protocol::records::Record;
use uuid::Uuid;

use super::rng::Rng;
use super::sites::{self, Site, Tracer};

/// The client id of every fuzzer request (12 bytes: the Metadata frame is 30 bytes).
pub const CLIENT_ID: &str = "chronik-fuzz";

/// The topic the fuzzer's requests name: it exists, and nothing else depends on its data.
#[derive(Debug, Clone)]
pub struct Target {
    pub topic: String,
    pub topic_id: Uuid,
    pub partitions: i32,
    pub broker_id: i32,
}

/// One valid request, encoded (header and body, no length prefix), with its length fields.
#[derive(Debug, Clone)]
pub struct Template {
    pub key: ApiKey,
    pub version: i16,
    pub flexible: bool,
    pub body: Vec<u8>,
    pub sites: Vec<Site>,
    /// Offset and length of the RecordBatch in `body` (Produce).
    pub batch: Option<(usize, usize)>,
}

/// How many variants of each (API, version) are built.
const VARIANTS: u64 = 3;

/// Templates for every advertised (API, version) the codec knows.
pub fn templates(advertised: &[(i16, i16, i16)], target: &Target, rng: &Rng) -> Vec<Template> {
    let mut out = Vec::new();
    for &(key, min, max) in advertised {
        let Ok(api) = ApiKey::try_from(key) else {
            continue;
        };
        let codec = api.valid_versions();
        for version in min.max(codec.min)..=max.min(codec.max) {
            for variant in 0..VARIANTS {
                let mut rng = rng.fork(((key as u64) << 32) | ((version as u64) << 8) | variant);
                match build(api, version, target, &mut rng) {
                    Ok(Some(t)) => out.push(t),
                    Ok(None) => {}
                    Err(e) => tracing::warn!("no {api:?} v{version} template: {e}"),
                }
            }
        }
    }
    out
}

/// Encodes one request of `api` at `version`; None for an API this generator has no request for.
pub fn build(
    api: ApiKey,
    version: i16,
    target: &Target,
    rng: &mut Rng,
) -> anyhow::Result<Option<Template>> {
    let mut traced = Tracer::default();
    let header = RequestHeader::default()
        .with_request_api_key(api as i16)
        .with_request_api_version(version)
        .with_correlation_id(0)
        .with_client_id(Some(StrBytes::from_static_str(CLIENT_ID)));
    let header_version = api.request_header_version(version);
    header.encode(&mut traced, header_version)?;
    let topic = TopicName(StrBytes::from_string(target.topic.clone()));
    let partition = rng.below(target.partitions.max(1) as usize) as i32;
    let mut batch = None;
    match api {
        ApiKey::Produce => {
            let records = record_batch(rng)?;
            let acks = *rng.pick(&[1i16, 1, -1, 0]);
            let request = ProduceRequest::default()
                .with_acks(acks)
                .with_timeout_ms(1000)
                .with_topic_data(vec![TopicProduceData::default()
                    .with_name(topic)
                    .with_topic_id(target.topic_id)
                    .with_partition_data(vec![PartitionProduceData::default()
                        .with_index(partition)
                        .with_records(Some(records.clone()))])]);
            let start = traced.bytes.len();
            request.encode(&mut traced, version)?;
            batch =
                find_batch(&traced.bytes[start..], &records).map(|at| (start + at, records.len()));
        }
        ApiKey::Fetch => FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(rng.below(50) as i32)
            .with_min_bytes(1)
            .with_max_bytes(1 << 16)
            .with_session_epoch(-1)
            .with_topics(vec![FetchTopic::default()
                .with_topic(topic)
                .with_topic_id(target.topic_id)
                .with_partitions(vec![FetchPartition::default()
                    .with_partition(partition)
                    .with_current_leader_epoch(-1)
                    .with_fetch_offset(rng.below(4) as i64)
                    .with_last_fetched_epoch(-1)
                    .with_log_start_offset(-1)
                    .with_partition_max_bytes(1 << 16)])])
            .with_rack_id(StrBytes::from_static_str("rack-a"))
            .encode(&mut traced, version)?,
        ApiKey::ListOffsets => ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_timeout_ms(1000)
            .with_topics(vec![ListOffsetsTopic::default()
                .with_name(topic)
                .with_partitions(vec![ListOffsetsPartition::default()
                    .with_partition_index(partition)
                    .with_current_leader_epoch(-1)
                    .with_timestamp(*rng.pick(&[-1i64, -2, 0]))])])
            .encode(&mut traced, version)?,
        ApiKey::Metadata => {
            // v0 has no null (all topics) array; an empty one means all there.
            let all_topics = rng.chance(20);
            let topics = (version == 0 || !all_topics).then(|| {
                vec![MetadataRequestTopic::default()
                    .with_name(Some(topic))
                    .with_topic_id(target.topic_id)]
            });
            MetadataRequest::default()
                .with_topics(topics)
                // Never create topics from what a mutation made of a name (v4+; before, a
                // Metadata request never creates topics).
                .with_allow_auto_topic_creation(version < 4)
                .encode(&mut traced, version)?
        }
        ApiKey::ApiVersions => ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str(CLIENT_ID))
            .with_client_software_version(StrBytes::from_static_str("1.0"))
            .encode(&mut traced, version)?,
        // Topic changes are aimed at the fuzzer's own topic, validate-only where the API allows, or
        // at names that do not exist: the data checked after the run lives elsewhere.
        ApiKey::CreateTopics => CreateTopicsRequest::default()
            .with_topics(vec![CreatableTopic::default()
                .with_name(topic)
                .with_num_partitions(1)
                .with_replication_factor(1)
                .with_configs(vec![CreatableTopicConfig::default()
                    .with_name(StrBytes::from_static_str("retention.ms"))
                    .with_value(Some(StrBytes::from_static_str("86400000")))])])
            .with_timeout_ms(1000)
            .with_validate_only(true)
            .encode(&mut traced, version)?,
        ApiKey::DeleteTopics => {
            let request = DeleteTopicsRequest::default().with_timeout_ms(1000);
            if version >= 6 {
                request.with_topics(vec![DeleteTopicState::default().with_name(Some(absent()))])
            } else {
                request.with_topic_names(vec![absent()])
            }
            .encode(&mut traced, version)?
        }
        ApiKey::OffsetForLeaderEpoch => OffsetForLeaderEpochRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_topics(vec![OffsetForLeaderTopic::default()
                .with_topic(topic)
                .with_partitions(vec![OffsetForLeaderPartition::default()
                    .with_partition(partition)
                    .with_current_leader_epoch(-1)
                    .with_leader_epoch(0)])])
            .encode(&mut traced, version)?,
        ApiKey::DescribeConfigs => DescribeConfigsRequest::default()
            .with_resources(vec![
                DescribeConfigsResource::default()
                    .with_resource_type(2)
                    .with_resource_name(StrBytes::from_string(target.topic.clone()))
                    .with_configuration_keys(
                        rng.chance(50)
                            .then(|| vec![StrBytes::from_static_str("retention.ms")]),
                    ),
                DescribeConfigsResource::default()
                    .with_resource_type(4)
                    .with_resource_name(StrBytes::from_string(target.broker_id.to_string())),
            ])
            .encode(&mut traced, version)?,
        ApiKey::CreatePartitions => CreatePartitionsRequest::default()
            .with_topics(vec![CreatePartitionsTopic::default()
                .with_name(topic)
                .with_count(target.partitions)])
            .with_timeout_ms(1000)
            .with_validate_only(true)
            .encode(&mut traced, version)?,
        ApiKey::IncrementalAlterConfigs => IncrementalAlterConfigsRequest::default()
            .with_resources(vec![AlterConfigsResource::default()
                .with_resource_type(2)
                .with_resource_name(StrBytes::from_string(target.topic.clone()))
                .with_configs(vec![AlterableConfig::default()
                    .with_name(StrBytes::from_static_str("retention.ms"))
                    .with_config_operation(0)
                    .with_value(Some(StrBytes::from_static_str("604800000")))])])
            .with_validate_only(true)
            .encode(&mut traced, version)?,
        ApiKey::DescribeCluster => {
            DescribeClusterRequest::default().encode(&mut traced, version)?
        }
        _ => return Ok(None),
    }
    let flexible = header_version >= 2;
    anyhow::ensure!(
        sites::decodes_exactly(api, version, &traced.bytes),
        "the encoding does not decode back"
    );
    let sites = sites::find(&traced, api, version, flexible);
    Ok(Some(Template {
        key: api,
        version,
        flexible,
        body: traced.bytes,
        sites,
        batch,
    }))
}

/// A topic name nothing creates; no prefix of it names a topic that exists (a shortened string
/// length must not turn it into the fuzzer's own topic).
fn absent() -> TopicName {
    TopicName(StrBytes::from_static_str("absent-chronik-topic"))
}

/// A RecordBatch (magic 2, uncompressed) of one to three records with keys, values and a header.
pub fn record_batch(rng: &mut Rng) -> anyhow::Result<Bytes> {
    let n = 1 + rng.below(3);
    let records: Vec<Record> = (0..n)
        .map(|i| {
            let mut headers = IndexMap::new();
            headers.insert(
                StrBytes::from_static_str("h"),
                Some(Bytes::from_static(b"v")),
            );
            let value = {
                let n = 8 + rng.below(64);
                Bytes::from(rng.bytes(n))
            };
            super::intact::plain_record(
                i,
                Bytes::from(format!("fuzz-key-{i}")),
                value,
                1_700_000_000_000 + i as i64,
                headers,
            )
        })
        .collect();
    super::intact::encode_batch(&records)
}

fn find_batch(haystack: &[u8], batch: &[u8]) -> Option<usize> {
    haystack.windows(batch.len()).position(|w| w == batch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::fuzz::sites::Kind;

    fn target() -> Target {
        Target {
            topic: "fz".into(),
            topic_id: Uuid::from_u128(7),
            partitions: 2,
            broker_id: 1,
        }
    }

    #[test]
    fn every_implemented_version_has_a_template_that_decodes() {
        let advertised: Vec<(i16, i16, i16)> = [0i16, 1, 2, 3, 18, 19, 20, 23, 32, 37, 44, 60]
            .iter()
            .map(|&k| {
                let v = ApiKey::try_from(k).unwrap().valid_versions();
                (k, v.min, v.max)
            })
            .collect();
        let all = templates(&advertised, &target(), &Rng::new(1));
        let mut missing = Vec::new();
        for &(key, min, max) in &advertised {
            let api = ApiKey::try_from(key).unwrap();
            for v in min..=max {
                let mut rng = Rng::new(1);
                if let Err(e) = build(api, v, &target(), &mut rng) {
                    missing.push(format!("{api:?} v{v}: {e}"));
                }
                // Every variant builds: no field is set that the version lacks.
                if all
                    .iter()
                    .filter(|t| t.key == api && t.version == v)
                    .count()
                    != 3
                {
                    missing.push(format!("{api:?} v{v}: not every variant"));
                }
            }
        }
        assert!(missing.is_empty(), "{missing:#?}");
        // Produce finds its batch and its records length in both encodings.
        let kinds = |v: i16| -> Vec<Kind> {
            let t = all
                .iter()
                .find(|t| t.key == ApiKey::Produce && t.version == v)
                .unwrap();
            assert!(t.batch.is_some());
            t.sites.iter().map(|s| s.kind).collect()
        };
        assert!(kinds(3).contains(&Kind::Bytes));
        assert!(kinds(9).contains(&Kind::CompactBytes));
        assert!(kinds(9).contains(&Kind::CompactArray));
        assert!(kinds(3).contains(&Kind::Array));
    }

    #[test]
    fn the_same_seed_makes_the_same_frames() {
        let advertised = [(3i16, 0i16, 13i16), (0, 3, 13)];
        let all = templates(&advertised, &target(), &Rng::new(2));
        for n in 0..200u64 {
            let make = || {
                let mut rng = Rng::new(9).fork(n);
                let t = rng.pick(&all).clone();
                crate::tools::fuzz::mutate::mutate(&t, &advertised, 7, &mut rng).bytes
            };
            assert_eq!(make(), make());
        }
    }
}
