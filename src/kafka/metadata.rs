//! Metadata: brokers, controller, and topics with their partitions, from this
//! broker's applied metadata image; auto-creates requested topics when allowed.

use std::rc::Rc;
use std::sync::Arc;

use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{
    BrokerId, MetadataRequest, MetadataResponse, ResponseKind, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use uuid::Uuid;

use super::{topics, Reply};
use crate::control::{MetadataImage, TopicInfo};
use crate::server::shard::Shard;

/// A topic the request names, by name or (v10+) by id.
enum Wanted {
    Name(String),
    Id(Uuid),
}

pub async fn handle(shard: &Rc<Shard>, request: MetadataRequest, version: i16) -> Reply {
    let mut image = shard.control.image();
    let wanted: Option<Vec<Wanted>> = match request.topics {
        None => None,
        // v0 has no null: an empty list means every topic.
        Some(topics) if topics.is_empty() && version == 0 => None,
        Some(topics) => Some(
            topics
                .into_iter()
                .map(|t| match t.name {
                    Some(name) => Wanted::Name(name.0.to_string()),
                    None => Wanted::Id(t.topic_id),
                })
                .collect(),
        ),
    };

    let mut response = MetadataResponse::default();
    match wanted {
        None => {
            response.topics = image
                .topics
                .values()
                .map(|topic| topic_metadata(&image, topic))
                .collect();
        }
        Some(wanted) => {
            let allow_auto_create = (version < 4 || request.allow_auto_topic_creation)
                && shard.control.defaults().auto_create_topics_enable;
            let missing: Vec<String> = wanted
                .iter()
                .filter_map(|w| match w {
                    Wanted::Name(name) if !image.topics.contains_key(name) => Some(name.clone()),
                    _ => None,
                })
                .collect();
            let mut create_errors = Vec::new();
            if allow_auto_create && !missing.is_empty() {
                create_errors = topics::auto_create(shard, missing).await;
                image = shard.control.image();
            }
            response.topics = wanted
                .into_iter()
                .map(|w| match w {
                    Wanted::Name(name) => match image.topics.get(&name) {
                        Some(topic) => topic_metadata(&image, topic),
                        None => {
                            let code = create_errors
                                .iter()
                                .find(|(n, _)| *n == name)
                                .map(|(_, e)| e.code())
                                .unwrap_or_else(|| missing_topic_code(&name));
                            error_topic(Some(name), Uuid::nil(), code)
                        }
                    },
                    Wanted::Id(id) => match image.topic_by_id(id) {
                        Some(topic) => topic_metadata(&image, topic),
                        None => error_topic(None, id, ResponseError::UnknownTopicId),
                    },
                })
                .collect();
        }
    }
    response.brokers = image
        .live_brokers()
        .map(|b| {
            let mut broker = MetadataResponseBroker::default();
            broker.node_id = BrokerId(b.id);
            broker.host = StrBytes::from_string(b.host.clone());
            broker.port = i32::from(b.port);
            broker.rack = b.rack.clone().map(StrBytes::from_string);
            broker
        })
        .collect();
    response.cluster_id = Some(StrBytes::from_string(image.cluster_id.clone()));
    response.controller_id = BrokerId(image.controller_id.unwrap_or(-1));
    Reply::Now(Box::new(ResponseKind::Metadata(response)))
}

/// The error for a topic that does not exist and was not created.
fn missing_topic_code(name: &str) -> ResponseError {
    match crate::control::topic_name::validate(name) {
        Ok(()) => ResponseError::UnknownTopicOrPartition,
        Err(e) => e.code(),
    }
}

fn error_topic(name: Option<String>, id: Uuid, code: ResponseError) -> MetadataResponseTopic {
    let mut topic = MetadataResponseTopic::default();
    topic.error_code = code.code();
    topic.name = name.map(|n| TopicName(StrBytes::from_string(n)));
    topic.topic_id = id;
    topic
}

fn topic_metadata(image: &MetadataImage, topic: &Arc<TopicInfo>) -> MetadataResponseTopic {
    let mut out = MetadataResponseTopic::default();
    out.name = Some(TopicName(StrBytes::from_string(topic.name.clone())));
    out.topic_id = topic.id;
    out.partitions = topic
        .partitions
        .iter()
        .map(|p| {
            let mut partition = MetadataResponsePartition::default();
            partition.partition_index = p.index;
            partition.leader_id = BrokerId(p.leader);
            partition.leader_epoch = p.leader_epoch;
            partition.replica_nodes = p.replicas.iter().map(|r| BrokerId(*r)).collect();
            partition.isr_nodes = p.isr.iter().map(|r| BrokerId(*r)).collect();
            partition.offline_replicas = p
                .replicas
                .iter()
                .filter(|r| !image.is_live(**r))
                .map(|r| BrokerId(*r))
                .collect();
            if p.leader < 0 {
                partition.error_code = ResponseError::LeaderNotAvailable.code();
            }
            partition
        })
        .collect();
    out
}
