//! OffsetForLeaderEpoch (KIP-101/320): where a leader epoch ended on this partition's leader.
//! Consumers ask it after a leader change to find out whether the log they read was truncated
//! (librdkafka and kafka-python validate their position with it); only the leader answers.

use std::collections::BTreeMap;
use std::rc::Rc;

use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::{
    OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse, ResponseKind,
};
use kafka_protocol::ResponseError;
use tracing::debug;
use uuid::Uuid;

use super::owners;
use super::{errors, Reply};
use crate::replication::epoch_lookup;
use crate::replication::epochs::{UNDEFINED_EPOCH, UNDEFINED_OFFSET};
use crate::server::shard::Shard;
use chronik_shards::runtime::mesh::LocalFuture;

/// One partition's question (Send: answered on the owner shard).
struct Query {
    slot: (usize, usize),
    topic_id: Uuid,
    index: i32,
    /// The partition's leader epoch in the image the request was checked against.
    current_epoch: i32,
    /// That image's version: the owner answers once it has applied it.
    image_version: u64,
    requested: i32,
}

#[derive(Clone, Copy, Debug)]
struct Answer {
    error_code: i16,
    leader_epoch: i32,
    end_offset: i64,
}

impl Answer {
    fn error(code: i16) -> Self {
        Answer {
            error_code: code,
            leader_epoch: UNDEFINED_EPOCH,
            end_offset: UNDEFINED_OFFSET,
        }
    }
}

pub async fn handle(shard: &Rc<Shard>, request: OffsetForLeaderEpochRequest) -> Reply {
    let image = shard.control.image();
    let mut answers: Vec<Vec<Option<Answer>>> = Vec::with_capacity(request.topics.len());
    let mut queries: BTreeMap<usize, Vec<Query>> = BTreeMap::new();
    for (t, topic) in request.topics.iter().enumerate() {
        let info = image.topics.get(topic.topic.0.as_str());
        let mut topic_answers = Vec::with_capacity(topic.partitions.len());
        for (p, partition) in topic.partitions.iter().enumerate() {
            let routed = info
                .ok_or(ResponseError::UnknownTopicOrPartition.code())
                .and_then(|info| {
                    owners::route(
                        shard,
                        info,
                        partition.partition,
                        partition.current_leader_epoch,
                    )
                });
            match routed {
                Err(code) => {
                    debug!(
                        topic = topic.topic.0.as_str(),
                        partition = partition.partition,
                        current_leader_epoch = partition.current_leader_epoch,
                        error_code = code,
                        "offset for leader epoch refused"
                    );
                    topic_answers.push(Some(Answer::error(code)));
                }
                Ok(to) => {
                    topic_answers.push(None);
                    queries.entry(to.owner).or_default().push(Query {
                        slot: (t, p),
                        topic_id: to.topic.id,
                        index: to.partition.index,
                        current_epoch: to.partition.leader_epoch,
                        image_version: image.version,
                        requested: partition.leader_epoch,
                    });
                }
            }
        }
        answers.push(topic_answers);
    }

    let shard = shard.clone();
    Reply::Later(Box::pin(async move {
        owners::ask_owners(&shard, &OWNER_API, queries, &mut answers).await;
        ResponseKind::OffsetForLeaderEpoch(build_response(request, answers))
    }))
}

fn build_response(
    request: OffsetForLeaderEpochRequest,
    answers: Vec<Vec<Option<Answer>>>,
) -> OffsetForLeaderEpochResponse {
    // Versions 2 to 4 carry the same fields; v4 only encodes them in the flexible format.
    let mut response = OffsetForLeaderEpochResponse::default();
    for (topic, topic_answers) in request.topics.into_iter().zip(answers) {
        let mut out = OffsetForLeaderTopicResult::default();
        out.topic = topic.topic;
        for (partition, answer) in topic.partitions.iter().zip(topic_answers) {
            let answer =
                answer.unwrap_or_else(|| Answer::error(ResponseError::UnknownServerError.code()));
            let mut p = EpochEndOffset::default();
            p.partition = partition.partition;
            p.error_code = answer.error_code;
            p.leader_epoch = answer.leader_epoch;
            p.end_offset = answer.end_offset;
            out.partitions.push(p);
        }
        response.topics.push(out);
    }
    response
}

const OWNER_API: owners::OwnerApi<Query, Answer> = owners::OwnerApi {
    name: "offset for leader epoch",
    slot_of: |q| q.slot,
    on_owner: answer_on_owner,
    error: Answer::error,
};

/// Answers on the shard that owns the partitions, from their logs, once the owner has applied the
/// image the request was checked against (the receiving shard may have applied it first). A
/// partition whose leader state for the checked epoch is still not in place is
/// NOT_LEADER_OR_FOLLOWER: the client retries, and no push of an older epoch can still land behind
/// the answer.
fn answer_on_owner(
    shard: Rc<Shard>,
    queries: Vec<Query>,
) -> LocalFuture<Vec<((usize, usize), Answer)>> {
    Box::pin(async move {
        owners::catch_up(&shard, queries.iter().map(|q| q.image_version)).await;
        queries
            .into_iter()
            .map(|query| {
                let leading =
                    owners::led_in_epoch(&shard, query.topic_id, query.index, query.current_epoch);
                let answer = match leading {
                    None => Answer::error(ResponseError::NotLeaderOrFollower.code()),
                    Some(partition) => {
                        let (leader_epoch, end_offset) = epoch_lookup::leader_end_offset_for(
                            &partition.log,
                            query.current_epoch,
                            query.requested,
                        );
                        Answer {
                            error_code: errors::NONE,
                            leader_epoch,
                            end_offset,
                        }
                    }
                };
                (query.slot, answer)
            })
            .collect()
    })
}
