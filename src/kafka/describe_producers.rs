//! DescribeProducers (KIP-664): the active producers of each requested partition, as its leader's
//! log knows them (what `kafka-transactions describe-producers` and the AdminClient show).
//!
//! As Kafka's `ReplicaManager.activeProducerState`: only the leader answers (a follower or a
//! broker without the partition says NOT_LEADER_OR_FOLLOWER; a partition that does not exist,
//! UNKNOWN_TOPIC_OR_PARTITION). Transactions are not implemented, so each producer's
//! coordinator epoch and current transaction start offset are -1.

use std::collections::BTreeMap;
use std::rc::Rc;

use kafka_protocol::messages::describe_producers_response::{
    PartitionResponse, ProducerState, TopicResponse,
};
use kafka_protocol::messages::{DescribeProducersRequest, DescribeProducersResponse, ResponseKind};
use kafka_protocol::ResponseError;
use uuid::Uuid;

use super::owners;
use super::Reply;
use crate::server::shard::Shard;
use chronik_shards::log::ProducerSummary;
use chronik_shards::runtime::mesh::LocalFuture;

/// One partition's question (Send: answered on the owner shard).
struct Query {
    slot: (usize, usize),
    topic_id: Uuid,
    index: i32,
    /// The partition's leader epoch in the image the request was routed by.
    leader_epoch: i32,
    /// That image's version: the owner answers once it has applied it.
    image_version: u64,
}

#[derive(Clone, Debug)]
struct Answer {
    error_code: i16,
    producers: Vec<ProducerSummary>,
}

impl Answer {
    fn error(code: i16) -> Self {
        Answer {
            error_code: code,
            producers: Vec::new(),
        }
    }
}

pub fn handle(shard: &Rc<Shard>, request: DescribeProducersRequest) -> Reply {
    let image = shard.control.image();
    let mut answers: Vec<Vec<Option<Answer>>> = Vec::with_capacity(request.topics.len());
    let mut queries: BTreeMap<usize, Vec<Query>> = BTreeMap::new();
    for (t, topic) in request.topics.iter().enumerate() {
        let info = image.topics.get(topic.name.0.as_str());
        let mut topic_answers = Vec::with_capacity(topic.partition_indexes.len());
        for (p, index) in topic.partition_indexes.iter().enumerate() {
            // DescribeProducers names no leader epoch: -1 skips that check.
            let routed = info
                .ok_or(ResponseError::UnknownTopicOrPartition.code())
                .and_then(|info| owners::route(shard, info, *index, -1));
            match routed {
                Err(code) => topic_answers.push(Some(Answer::error(code))),
                Ok(to) => {
                    topic_answers.push(None);
                    queries.entry(to.owner).or_default().push(Query {
                        slot: (t, p),
                        topic_id: to.topic.id,
                        index: to.partition.index,
                        leader_epoch: to.partition.leader_epoch,
                        image_version: image.version,
                    });
                }
            }
        }
        answers.push(topic_answers);
    }

    let shard = shard.clone();
    Reply::Later(Box::pin(async move {
        owners::ask_owners(&shard, &OWNER_API, queries, &mut answers).await;
        ResponseKind::DescribeProducers(build_response(request, answers))
    }))
}

fn build_response(
    request: DescribeProducersRequest,
    answers: Vec<Vec<Option<Answer>>>,
) -> DescribeProducersResponse {
    let mut response = DescribeProducersResponse::default();
    for (topic, topic_answers) in request.topics.into_iter().zip(answers) {
        let mut out = TopicResponse::default();
        out.name = topic.name;
        for (index, answer) in topic.partition_indexes.iter().zip(topic_answers) {
            let answer =
                answer.unwrap_or_else(|| Answer::error(ResponseError::UnknownServerError.code()));
            let mut partition = PartitionResponse::default();
            partition.partition_index = *index;
            partition.error_code = answer.error_code;
            partition.active_producers = answer
                .producers
                .iter()
                .map(|summary| {
                    let mut state = ProducerState::default();
                    state.producer_id = summary.producer_id.into();
                    state.producer_epoch = i32::from(summary.producer_epoch);
                    state.last_sequence = summary.last_sequence;
                    state.last_timestamp = summary.last_timestamp;
                    state.coordinator_epoch = -1;
                    state.current_txn_start_offset = -1;
                    state
                })
                .collect();
            out.partitions.push(partition);
        }
        response.topics.push(out);
    }
    response
}

const OWNER_API: owners::OwnerApi<Query, Answer> = owners::OwnerApi {
    name: "describe producers",
    slot_of: |q| q.slot,
    on_owner: answer_on_owner,
    error: Answer::error,
};

/// Answers on the shard that owns the partitions, once it has applied the image the request was
/// routed by, from partitions it leads in that epoch (NOT_LEADER_OR_FOLLOWER otherwise: the
/// client refreshes its metadata and asks the leader).
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
                    owners::led_in_epoch(&shard, query.topic_id, query.index, query.leader_epoch);
                let answer = match leading {
                    None => Answer::error(ResponseError::NotLeaderOrFollower.code()),
                    Some(partition) => Answer {
                        error_code: super::errors::NONE,
                        producers: partition.log.producer_states(),
                    },
                };
                (query.slot, answer)
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::describe_producers_request::TopicRequest;
    use kafka_protocol::messages::TopicName;
    use kafka_protocol::protocol::StrBytes;

    #[test]
    fn answers_go_to_their_partitions_with_no_transaction_fields() {
        let mut request = DescribeProducersRequest::default();
        let mut topic = TopicRequest::default();
        topic.name = TopicName(StrBytes::from_static_str("t"));
        topic.partition_indexes = vec![3, 0];
        request.topics.push(topic);
        let summary = ProducerSummary {
            producer_id: 7,
            producer_epoch: 2,
            last_sequence: 41,
            last_timestamp: 1_700_000_000_000,
        };
        let answers = vec![vec![
            Some(Answer::error(ResponseError::NotLeaderOrFollower.code())),
            Some(Answer {
                error_code: 0,
                producers: vec![summary],
            }),
        ]];
        let response = build_response(request, answers);
        let partitions = &response.topics[0].partitions;
        assert_eq!(
            (partitions[0].partition_index, partitions[0].error_code),
            (3, 6)
        );
        assert!(partitions[0].active_producers.is_empty());
        let state = &partitions[1].active_producers[0];
        assert_eq!(
            (
                state.producer_id.0,
                state.producer_epoch,
                state.last_sequence,
                state.last_timestamp,
                state.coordinator_epoch,
                state.current_txn_start_offset
            ),
            (7, 2, 41, 1_700_000_000_000, -1, -1)
        );
    }
}
