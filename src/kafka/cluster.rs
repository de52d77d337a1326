//! DescribeCluster: the brokers and the controller, from the metadata image.

use std::rc::Rc;

use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::{
    BrokerId, DescribeClusterRequest, DescribeClusterResponse, ResponseKind,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use super::Reply;
use crate::server::shard::Shard;

/// DescribeCluster's endpoint_type for brokers (v1+); 2 (controllers) is not served.
const ENDPOINT_BROKERS: i8 = 1;

pub fn describe_cluster(shard: &Rc<Shard>, request: DescribeClusterRequest, version: i16) -> Reply {
    let image = shard.control.image();
    let mut response = DescribeClusterResponse::default();
    if version >= 1 {
        response.endpoint_type = request.endpoint_type;
    }
    if request.endpoint_type != ENDPOINT_BROKERS {
        response.error_code = ResponseError::UnsupportedEndpointType.code();
        response.error_message = Some(StrBytes::from_static_str(
            "only broker endpoints (endpoint_type 1) are served",
        ));
        return Reply::Now(Box::new(ResponseKind::DescribeCluster(response)));
    }
    response.cluster_id = StrBytes::from_string(image.cluster_id.clone());
    response.controller_id = BrokerId(image.controller_id.unwrap_or(-1));
    response.brokers = image
        .brokers
        .values()
        .filter(|b| request.include_fenced_brokers || !b.fenced)
        .map(|b| {
            let mut broker = DescribeClusterBroker::default();
            broker.broker_id = BrokerId(b.id);
            broker.host = StrBytes::from_string(b.host.clone());
            broker.port = i32::from(b.port);
            broker.rack = b.rack.clone().map(StrBytes::from_string);
            broker.is_fenced = b.fenced;
            broker
        })
        .collect();
    Reply::Now(Box::new(ResponseKind::DescribeCluster(response)))
}
