//! The Kafka front end: decode a request frame, run the API's handler,
//! encode its answer.
//!
//! Handlers run their ordered part (resolving topics, appending) before they
//! return and hand back the rest (waiting for durability, long polls) as a
//! future, so a connection's pipelined requests keep their order while their
//! waits overlap.

pub mod api_versions;
pub mod append_order;
pub mod cluster;
pub mod configs;
pub mod describe_producers;
pub mod errors;
pub mod fetch;
pub mod frame;
pub mod init_producer_id;
pub mod leader_hint;
pub mod list_offsets;
pub mod metadata;
pub mod offset_for_leader_epoch;
pub mod owners;
pub mod produce;
pub mod splice;
pub mod topics;

use std::rc::Rc;

use bytes::Bytes;
use kafka_protocol::messages::{ApiKey, RequestKind, ResponseKind};
use tracing::error;

use crate::server::shard::Shard;
use chronik_shards::runtime::mesh::LocalFuture;
use splice::Splices;

/// An encoded response frame (in segments, record data by reference), or
/// why the connection must close instead.
pub type PendingResponse = LocalFuture<Result<Vec<Bytes>, String>>;

/// What the connection does with a request.
pub enum Outcome {
    /// Queue this (possibly still pending) answer behind the earlier ones.
    Respond(PendingResponse),
    /// Nothing to send (Produce with acks=0).
    NoResponse,
    /// Close the connection, logging why.
    Close(String),
}

/// A handler's answer.
pub enum Reply {
    Now(Box<ResponseKind>),
    Later(LocalFuture<ResponseKind>),
    /// Later, with record data to splice in by reference (Fetch).
    LaterSpliced(LocalFuture<(ResponseKind, Splices)>),
    /// No response is sent (acks=0).
    Nothing,
    /// The request cannot be answered; close the connection.
    Close(String),
}

/// Handles one request frame (the bytes after the length prefix).
pub async fn handle_frame(shard: &Rc<Shard>, frame: Bytes) -> Outcome {
    let mut request = match frame::parse_request(frame) {
        Ok(request) => request,
        Err(e) => return Outcome::Close(e.to_string()),
    };
    let api_key = request.api_key;
    let version = request.version;
    let correlation_id = request.header.correlation_id;
    if !api_versions::is_supported(api_key, version) {
        if api_key == ApiKey::ApiVersions {
            // KIP-511: answer in v0 so the client can read the list and retry.
            let response = ResponseKind::ApiVersions(api_versions::unsupported_version_response());
            return respond(api_key, 0, correlation_id, Reply::Now(Box::new(response)));
        }
        let client = request
            .header
            .client_id
            .as_ref()
            .map_or("", |c| c.as_str())
            .to_string();
        return Outcome::Close(match api_versions::supported(api_key) {
            None => format!("unsupported api {api_key:?} (v{version}) from client {client:?}"),
            Some(range) => format!(
                "unsupported version {version} of {api_key:?} (supported {range}) from client {client:?}"
            ),
        });
    }
    let body = match frame::decode_body(&mut request) {
        Ok(body) => body,
        Err(e) => return Outcome::Close(e.to_string()),
    };
    // The frame's last reference outside the body: a produce request's records may then be the only
    // owner of their receive buffer (`produce::release_frame`).
    drop(request);
    let reply = dispatch(shard, body, version).await;
    respond(api_key, version, correlation_id, reply)
}

async fn dispatch(shard: &Rc<Shard>, body: RequestKind, version: i16) -> Reply {
    match body {
        RequestKind::ApiVersions(_) => Reply::Now(Box::new(ResponseKind::ApiVersions(
            api_versions::response(),
        ))),
        RequestKind::Metadata(request) => metadata::handle(shard, request, version).await,
        RequestKind::Produce(request) => produce::handle(shard, request, version).await,
        RequestKind::Fetch(request) => fetch::handle(shard, request, version).await,
        RequestKind::ListOffsets(request) => list_offsets::handle(shard, request, version).await,
        RequestKind::OffsetForLeaderEpoch(request) => {
            offset_for_leader_epoch::handle(shard, request).await
        }
        RequestKind::CreateTopics(request) => topics::create_topics(shard, request, version),
        RequestKind::DeleteTopics(request) => topics::delete_topics(shard, request, version),
        RequestKind::CreatePartitions(request) => topics::create_partitions(shard, request),
        RequestKind::DescribeConfigs(request) => configs::describe_configs(shard, request, version),
        RequestKind::IncrementalAlterConfigs(request) => {
            configs::incremental_alter_configs(shard, request)
        }
        RequestKind::DescribeCluster(request) => cluster::describe_cluster(shard, request, version),
        RequestKind::InitProducerId(request) => init_producer_id::handle(shard, request),
        RequestKind::DescribeProducers(request) => describe_producers::handle(shard, request),
        _ => Reply::Close(format!("no handler for api version {version}")),
    }
}

fn respond(api_key: ApiKey, version: i16, correlation_id: i32, reply: Reply) -> Outcome {
    let encode = move |response: ResponseKind, splices: Splices| {
        frame::encode_response(api_key, version, correlation_id, &response, splices)
            .inspect_err(|e| error!("{e}"))
    };
    match reply {
        Reply::Now(response) => {
            let frame = encode(*response, Splices::default());
            Outcome::Respond(Box::pin(async move { frame }))
        }
        Reply::Later(response) => Outcome::Respond(Box::pin(async move {
            encode(response.await, Splices::default())
        })),
        Reply::LaterSpliced(response) => Outcome::Respond(Box::pin(async move {
            let (response, splices) = response.await;
            encode(response, splices)
        })),
        Reply::Nothing => Outcome::NoResponse,
        Reply::Close(reason) => Outcome::Close(reason),
    }
}
