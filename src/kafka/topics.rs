//! CreateTopics, DeleteTopics, CreatePartitions, and auto-creation: all go
//! through the control plane (the one code path that changes topics) and
//! answer once the change is committed.

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use futures_lite::FutureExt;

use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{
    CreatePartitionsRequest, CreatePartitionsResponse, CreateTopicsRequest, CreateTopicsResponse,
    DeleteTopicsRequest, DeleteTopicsResponse, ResponseKind, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use uuid::Uuid;

use super::Reply;
use crate::control::{topic_config, ControlError, MetadataImage, NewTopic, TopicInfo};
use crate::server::shard::Shard;

/// Creates `names` with the broker defaults (auto-creation on Metadata and
/// Produce). Returns the failures; "already exists" is not one.
pub async fn auto_create(shard: &Rc<Shard>, names: Vec<String>) -> Vec<(String, ControlError)> {
    let topics: Vec<NewTopic> = names
        .iter()
        .map(|name| NewTopic {
            name: name.clone(),
            num_partitions: -1,
            replication_factor: -1,
            assignments: Vec::new(),
            configs: Vec::new(),
        })
        .collect();
    let results = shard.control.create_topics(topics, false).await;
    until_visible(shard, &created_ids(&results)).await;
    names
        .into_iter()
        .zip(results)
        .filter_map(|(name, result)| match result {
            Ok(_) | Err(ControlError::TopicAlreadyExists(_)) => None,
            Err(e) => Some((name, e)),
        })
        .collect()
}

/// The longest a topic change waits to become visible in this broker's own image.
const VISIBLE_WAIT: Duration = Duration::from_secs(5);

fn created_ids(results: &[Result<Arc<TopicInfo>, ControlError>]) -> Vec<Uuid> {
    results
        .iter()
        .filter_map(|r| r.as_ref().ok().map(|info| info.id))
        .collect()
}

/// Read-your-writes: waits (at most `VISIBLE_WAIT`) until this broker's image has every topic in
/// `ids`. The controller answers a forwarded CreateTopics once it applied the change, which can be
/// before this broker's own Raft node learns that the entry committed; a Metadata or Produce sent
/// right after the answer must find the topic.
async fn until_visible(shard: &Shard, ids: &[Uuid]) {
    let visible = |image: &MetadataImage| ids.iter().all(|id| image.topic_by_id(*id).is_some());
    if visible(&shard.control.image()) {
        return;
    }
    let mut images = shard.control.subscribe();
    async {
        while let Some(image) = images.next().await {
            if visible(&image) {
                return;
            }
        }
    }
    .or(glommio::timer::sleep(VISIBLE_WAIT))
    .await;
}

fn topic_name(name: String) -> TopicName {
    TopicName(StrBytes::from_string(name))
}

fn message(e: &ControlError) -> Option<StrBytes> {
    Some(StrBytes::from_string(e.message()))
}

pub fn create_topics(shard: &Rc<Shard>, request: CreateTopicsRequest, version: i16) -> Reply {
    let shard = shard.clone();
    Reply::Later(Box::pin(async move {
        let mut counts: HashMap<String, usize> = HashMap::new();
        for topic in &request.topics {
            *counts.entry(topic.name.0.to_string()).or_default() += 1;
        }
        // Kafka rejects every copy of a name given twice, and creates the rest.
        let (unique, _): (Vec<_>, Vec<_>) = request
            .topics
            .iter()
            .partition(|t| counts[t.name.0.as_str()] == 1);
        let new_topics: Vec<NewTopic> = unique
            .iter()
            .map(|t| NewTopic {
                name: t.name.0.to_string(),
                num_partitions: t.num_partitions,
                replication_factor: t.replication_factor,
                assignments: t
                    .assignments
                    .iter()
                    .map(|a| {
                        (
                            a.partition_index,
                            a.broker_ids.iter().map(|b| b.0).collect(),
                        )
                    })
                    .collect(),
                configs: t
                    .configs
                    .iter()
                    .map(|c| (c.name.to_string(), c.value.as_ref().map(|v| v.to_string())))
                    .collect(),
            })
            .collect();
        let created = shard
            .control
            .create_topics(new_topics, request.validate_only)
            .await;
        if !request.validate_only {
            until_visible(&shard, &created_ids(&created)).await;
        }
        let mut created = created.into_iter();
        let defaults = shard.control.defaults();
        let mut response = CreateTopicsResponse::default();
        for topic in &request.topics {
            let mut result = CreatableTopicResult::default();
            result.name = topic.name.clone();
            if counts[topic.name.0.as_str()] > 1 {
                result.error_code = ResponseError::InvalidRequest.code();
                result.error_message = Some(StrBytes::from_static_str(
                    "topic named more than once in the request",
                ));
                result.num_partitions = -1;
                result.replication_factor = -1;
                response.topics.push(result);
                continue;
            }
            match created.next() {
                Some(Ok(info)) => {
                    result.topic_id = info.id;
                    result.num_partitions = info.partitions.len() as i32;
                    result.replication_factor = info
                        .partitions
                        .first()
                        .map_or(0, |p| p.replicas.len() as i16);
                    if version >= 5 {
                        result.configs = Some(
                            topic_config::describe(&info, defaults)
                                .into_iter()
                                .map(|entry| {
                                    let mut config = CreatableTopicConfigs::default();
                                    config.name = StrBytes::from_string(entry.name);
                                    config.value = entry.value.map(StrBytes::from_string);
                                    config.read_only = entry.read_only;
                                    config.config_source = entry.source as i8;
                                    config.is_sensitive = entry.sensitive;
                                    config
                                })
                                .collect(),
                        );
                    }
                }
                Some(Err(e)) => {
                    result.error_code = e.code().code();
                    result.error_message = message(&e);
                    result.num_partitions = -1;
                    result.replication_factor = -1;
                }
                None => {
                    result.error_code = ResponseError::UnknownServerError.code();
                    result.num_partitions = -1;
                    result.replication_factor = -1;
                }
            }
            response.topics.push(result);
        }
        ResponseKind::CreateTopics(response)
    }))
}

pub fn delete_topics(shard: &Rc<Shard>, request: DeleteTopicsRequest, version: i16) -> Reply {
    let shard = shard.clone();
    Reply::Later(Box::pin(async move {
        let image = shard.control.image();
        // v6 names topics by name or id; older versions by name only.
        let named: Vec<(Option<String>, Uuid)> = if version >= 6 {
            request
                .topics
                .iter()
                .map(|t| (t.name.as_ref().map(|n| n.0.to_string()), t.topic_id))
                .collect()
        } else {
            request
                .topic_names
                .iter()
                .map(|n| (Some(n.0.to_string()), Uuid::nil()))
                .collect()
        };
        // Resolve ids to names; unknown ids answer UNKNOWN_TOPIC_ID.
        let resolved: Vec<Result<String, ResponseError>> = named
            .iter()
            .map(|(name, id)| match name {
                Some(name) => Ok(name.clone()),
                None => image
                    .topic_by_id(*id)
                    .map(|t| t.name.clone())
                    .ok_or(ResponseError::UnknownTopicId),
            })
            .collect();
        let to_delete: Vec<String> = resolved.iter().filter_map(|r| r.clone().ok()).collect();
        let mut deleted = shard.control.delete_topics(to_delete).await.into_iter();
        let mut response = DeleteTopicsResponse::default();
        for ((_, id), resolved) in named.into_iter().zip(resolved) {
            let mut result = DeletableTopicResult::default();
            result.topic_id = id;
            match resolved {
                Err(code) => {
                    result.name = None;
                    result.error_code = code.code();
                }
                Ok(resolved_name) => {
                    result.name = Some(topic_name(resolved_name));
                    match deleted.next() {
                        Some(Ok(topic_id)) => result.topic_id = topic_id,
                        Some(Err(e)) => {
                            result.error_code = e.code().code();
                            result.error_message = message(&e);
                        }
                        None => result.error_code = ResponseError::UnknownServerError.code(),
                    }
                }
            }
            response.responses.push(result);
        }
        ResponseKind::DeleteTopics(response)
    }))
}

pub fn create_partitions(shard: &Rc<Shard>, request: CreatePartitionsRequest) -> Reply {
    let shard = shard.clone();
    Reply::Later(Box::pin(async move {
        let mut response = CreatePartitionsResponse::default();
        // Explicit assignments are not supported: those topics fail, the rest go ahead.
        let wanted: Vec<(String, i32)> = request
            .topics
            .iter()
            .filter(|t| !has_assignments(t))
            .map(|t| (t.name.0.to_string(), t.count))
            .collect();
        let mut results = shard
            .control
            .create_partitions(wanted, request.validate_only)
            .await
            .into_iter();
        for topic in &request.topics {
            let mut result = CreatePartitionsTopicResult::default();
            result.name = topic.name.clone();
            if has_assignments(topic) {
                result.error_code = ResponseError::InvalidReplicaAssignment.code();
                result.error_message = Some(StrBytes::from_static_str(
                    "explicit replica assignments are not supported by CreatePartitions",
                ));
            } else {
                match results.next() {
                    Some(Ok(())) => {}
                    Some(Err(e)) => {
                        result.error_code = e.code().code();
                        result.error_message = message(&e);
                    }
                    None => result.error_code = ResponseError::UnknownServerError.code(),
                }
            }
            response.results.push(result);
        }
        ResponseKind::CreatePartitions(response)
    }))
}

/// Whether a CreatePartitions topic names explicit replica assignments
/// (null and empty both mean "let the controller assign").
fn has_assignments(
    topic: &kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic,
) -> bool {
    topic.assignments.as_ref().is_some_and(|a| !a.is_empty())
}
