//! ListOffsets: earliest (-2, and -4 "earliest local", the same here), latest
//! (-1: the high watermark), and by timestamp (batch granularity: the first
//! batch whose max timestamp is >= the target).

use std::collections::BTreeMap;
use std::rc::Rc;

use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse, ResponseKind};
use kafka_protocol::ResponseError;
use uuid::Uuid;

use super::owners;
use super::{errors, Reply};
use crate::server::shard::Shard;
use chronik_shards::runtime::mesh::LocalFuture;

const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
const EARLIEST_LOCAL: i64 = -4;

/// One partition's query (Send: answered on the owner shard).
struct Query {
    slot: (usize, usize),
    topic_id: Uuid,
    index: i32,
    timestamp: i64,
    leader_epoch: i32,
}

#[derive(Clone, Debug)]
struct Answer {
    error_code: i16,
    offset: i64,
    timestamp: i64,
    leader_epoch: i32,
}

impl Answer {
    fn error(code: i16) -> Self {
        Answer {
            error_code: code,
            offset: -1,
            timestamp: -1,
            leader_epoch: -1,
        }
    }
}

pub async fn handle(shard: &Rc<Shard>, request: ListOffsetsRequest, version: i16) -> Reply {
    let image = shard.control.image();
    let mut answers: Vec<Vec<Option<Answer>>> = Vec::with_capacity(request.topics.len());
    let mut queries: BTreeMap<usize, Vec<Query>> = BTreeMap::new();
    for (t, topic) in request.topics.iter().enumerate() {
        let info = image.topics.get(topic.name.0.as_str());
        let mut topic_answers = Vec::with_capacity(topic.partitions.len());
        for (p, partition) in topic.partitions.iter().enumerate() {
            let routed = info
                .ok_or(ResponseError::UnknownTopicOrPartition.code())
                .and_then(|info| {
                    owners::route(
                        shard,
                        info,
                        partition.partition_index,
                        partition.current_leader_epoch,
                    )
                });
            match routed {
                Err(code) => topic_answers.push(Some(Answer::error(code))),
                Ok(to) => {
                    topic_answers.push(None);
                    queries.entry(to.owner).or_default().push(Query {
                        slot: (t, p),
                        topic_id: to.topic.id,
                        index: to.partition.index,
                        timestamp: partition.timestamp,
                        leader_epoch: to.partition.leader_epoch,
                    });
                }
            }
        }
        answers.push(topic_answers);
    }

    let shard = shard.clone();
    Reply::Later(Box::pin(async move {
        owners::ask_owners(&shard, &OWNER_API, queries, &mut answers).await;
        let mut response = ListOffsetsResponse::default();
        for (topic, topic_answers) in request.topics.into_iter().zip(answers) {
            let mut out = ListOffsetsTopicResponse::default();
            out.name = topic.name;
            for (partition, answer) in topic.partitions.iter().zip(topic_answers) {
                let answer = answer
                    .unwrap_or_else(|| Answer::error(ResponseError::UnknownServerError.code()));
                let mut p = ListOffsetsPartitionResponse::default();
                p.partition_index = partition.partition_index;
                p.error_code = answer.error_code;
                p.offset = answer.offset;
                p.timestamp = answer.timestamp;
                if version >= 4 {
                    p.leader_epoch = answer.leader_epoch;
                }
                out.partitions.push(p);
            }
            response.topics.push(out);
        }
        ResponseKind::ListOffsets(response)
    }))
}

const OWNER_API: owners::OwnerApi<Query, Answer> = owners::OwnerApi {
    name: "list offsets",
    slot_of: |q| q.slot,
    on_owner: answer_on_owner,
    error: Answer::error,
};

fn answer_on_owner(
    shard: Rc<Shard>,
    queries: Vec<Query>,
) -> LocalFuture<Vec<((usize, usize), Answer)>> {
    Box::pin(async move {
        let mut out = Vec::with_capacity(queries.len());
        for query in queries {
            let partition = match owners::partition_of(&shard, query.topic_id, query.index).await {
                Ok(partition) => partition,
                Err(code) => {
                    out.push((query.slot, Answer::error(code)));
                    continue;
                }
            };
            let high_watermark = partition.high_watermark();
            let answer = match query.timestamp {
                LATEST => Answer {
                    error_code: errors::NONE,
                    offset: high_watermark,
                    timestamp: -1,
                    leader_epoch: query.leader_epoch,
                },
                EARLIEST | EARLIEST_LOCAL => Answer {
                    error_code: errors::NONE,
                    offset: partition.log.log_start_offset(),
                    timestamp: -1,
                    leader_epoch: query.leader_epoch,
                },
                ts if ts >= 0 => match partition.log.offset_for_timestamp(ts).await {
                    // Only what consumers may read counts.
                    Ok(Some((offset, timestamp))) if offset < high_watermark => Answer {
                        error_code: errors::NONE,
                        offset,
                        timestamp,
                        leader_epoch: query.leader_epoch,
                    },
                    Ok(_) => Answer {
                        error_code: errors::NONE,
                        offset: -1,
                        timestamp: -1,
                        leader_epoch: -1,
                    },
                    Err(e) => Answer::error(errors::log_error_code(&e)),
                },
                // Other negative timestamps (-3 max timestamp, v7+; -5 tiered, v9+) belong to
                // versions not advertised.
                _ => Answer::error(ResponseError::UnsupportedVersion.code()),
            };
            out.push((query.slot, answer));
        }
        out
    })
}
