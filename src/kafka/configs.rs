//! DescribeConfigs and IncrementalAlterConfigs for topic resources.

use std::collections::HashSet;
use std::rc::Rc;

use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult,
};
use kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::{
    DescribeConfigsRequest, DescribeConfigsResponse, IncrementalAlterConfigsRequest,
    IncrementalAlterConfigsResponse, ResponseKind,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use super::Reply;
use crate::control::{topic_config, ConfigOp, ControlError};
use crate::server::shard::Shard;

/// Kafka's ConfigResource type for topics (the only one chronik describes or alters).
const RESOURCE_TOPIC: i8 = 2;

fn not_a_topic_message(resource_type: i8) -> Option<StrBytes> {
    Some(StrBytes::from_string(format!(
        "resource type {resource_type} is not supported; only topics (2) are"
    )))
}

pub fn describe_configs(shard: &Rc<Shard>, request: DescribeConfigsRequest, version: i16) -> Reply {
    let image = shard.control.image();
    let defaults = shard.control.defaults();
    let mut response = DescribeConfigsResponse::default();
    for resource in request.resources {
        let mut result = DescribeConfigsResult::default();
        result.resource_type = resource.resource_type;
        result.resource_name = resource.resource_name.clone();
        if resource.resource_type != RESOURCE_TOPIC {
            result.error_code = ResponseError::InvalidRequest.code();
            result.error_message = not_a_topic_message(resource.resource_type);
            response.results.push(result);
            continue;
        }
        let Some(topic) = image.topics.get(resource.resource_name.as_str()) else {
            result.error_code = ResponseError::UnknownTopicOrPartition.code();
            result.error_message = Some(StrBytes::from_string(format!(
                "topic {} does not exist",
                resource.resource_name.as_str()
            )));
            response.results.push(result);
            continue;
        };
        let keys: Option<HashSet<&str>> = resource
            .configuration_keys
            .as_ref()
            .map(|keys| keys.iter().map(|k| k.as_str()).collect());
        result.configs = topic_config::describe(topic, defaults)
            .into_iter()
            .filter(|entry| {
                keys.as_ref()
                    .is_none_or(|keys| keys.contains(entry.name.as_str()))
            })
            .map(|entry| {
                let mut config = DescribeConfigsResourceResult::default();
                config.name = StrBytes::from_string(entry.name);
                config.value = entry.value.map(StrBytes::from_string);
                config.read_only = entry.read_only;
                config.config_source = entry.source as i8;
                config.is_sensitive = entry.sensitive;
                if version >= 3 {
                    config.config_type = entry.config_type as i8;
                    if request.include_documentation {
                        config.documentation = Some(StrBytes::from_static_str(entry.documentation));
                    }
                }
                config
            })
            .collect();
        response.results.push(result);
    }
    Reply::Now(Box::new(ResponseKind::DescribeConfigs(response)))
}

pub fn incremental_alter_configs(
    shard: &Rc<Shard>,
    request: IncrementalAlterConfigsRequest,
) -> Reply {
    let shard = shard.clone();
    Reply::Later(Box::pin(async move {
        let mut response = IncrementalAlterConfigsResponse::default();
        let mut seen = HashSet::new();
        let duplicates: HashSet<(i8, String)> = request
            .resources
            .iter()
            .map(|r| (r.resource_type, r.resource_name.to_string()))
            .filter(|key| !seen.insert(key.clone()))
            .collect();
        for resource in request.resources {
            let mut result = AlterConfigsResourceResponse::default();
            result.resource_type = resource.resource_type;
            result.resource_name = resource.resource_name.clone();
            let outcome: Result<(), ControlError> = if resource.resource_type != RESOURCE_TOPIC {
                result.error_code = ResponseError::InvalidRequest.code();
                result.error_message = not_a_topic_message(resource.resource_type);
                response.responses.push(result);
                continue;
            } else if duplicates
                .contains(&(resource.resource_type, resource.resource_name.to_string()))
            {
                Err(ControlError::InvalidRequest(
                    "resource named more than once in the request".into(),
                ))
            } else {
                match resource
                    .configs
                    .iter()
                    .map(|c| {
                        let name = c.name.to_string();
                        let value = c.value.as_ref().map(|v| v.to_string());
                        match (c.config_operation, value) {
                            (0, Some(v)) => Ok(ConfigOp::Set(name, v)),
                            (1, _) => Ok(ConfigOp::Delete(name)),
                            (2, Some(v)) => Ok(ConfigOp::Append(name, v)),
                            (3, Some(v)) => Ok(ConfigOp::Subtract(name, v)),
                            (op, _) => Err(ControlError::InvalidRequest(format!(
                                "config operation {op} on {name} is invalid or lacks a value"
                            ))),
                        }
                    })
                    .collect::<Result<Vec<_>, _>>()
                {
                    Ok(ops) => {
                        shard
                            .control
                            .alter_topic_configs(
                                resource.resource_name.to_string(),
                                ops,
                                request.validate_only,
                            )
                            .await
                    }
                    Err(e) => Err(e),
                }
            };
            if let Err(e) = outcome {
                result.error_code = e.code().code();
                result.error_message = Some(StrBytes::from_string(e.message()));
            }
            response.responses.push(result);
        }
        ResponseKind::IncrementalAlterConfigs(response)
    }))
}
