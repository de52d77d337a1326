//! Per-partition client requests answered on the shards that own the partitions: where a query
//! goes (`route`: Fetch, ListOffsets, OffsetForLeaderEpoch), asking each owner once per request
//! (`ask_owners`), and the owner's partition, opened if needed (`partition_of`).

use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use uuid::Uuid;

use chronik_shards::runtime::mesh::LocalFuture;
use kafka_protocol::ResponseError;

use super::errors;
use crate::control::topic_config;
use crate::control::{PartitionInfo, TopicInfo};
use crate::partitions::Partition;
use crate::server::shard::Shard;

/// The longest an owner shard waits to apply the image a request was routed by. Applying one
/// takes milliseconds; this bounds a shard stuck opening a log, after which the answer is
/// NOT_LEADER_OR_FOLLOWER and the client retries.
pub const IMAGE_WAIT: Duration = Duration::from_secs(5);

/// Where an answer goes in the response: (topic index, partition index).
pub type Slot = (usize, usize);

/// An owner shard's answers, each with its slot.
pub type OwnerAnswers<A> = LocalFuture<Vec<(Slot, A)>>;

/// How one API asks the owners: its name for log lines, where each query's answer goes, what the
/// owner shard runs, and the answer for a code.
pub struct OwnerApi<Q, A> {
    pub name: &'static str,
    pub slot_of: fn(&Q) -> Slot,
    pub on_owner: fn(Rc<Shard>, Vec<Q>) -> OwnerAnswers<A>,
    pub error: fn(i16) -> A,
}

/// A partition a client request names, led by this broker in the epoch the request expects, and
/// the shard that owns it.
pub struct Routed<'a> {
    pub owner: usize,
    pub topic: &'a TopicInfo,
    pub partition: &'a PartitionInfo,
}

/// Where a query for partition `index` of `topic` goes, or the code to answer it with
/// (`errors::led_partition`).
pub fn route<'a>(
    shard: &Shard,
    topic: &'a TopicInfo,
    index: i32,
    current_leader_epoch: i32,
) -> Result<Routed<'a>, i16> {
    let partition = errors::led_partition(topic, index, shard.node_id, current_leader_epoch)?;
    Ok(Routed {
        owner: shard.owner_of(&topic.name, index),
        topic,
        partition,
    })
}

/// Sends each owner shard its queries and fills `answers`. An owner that cannot be reached
/// answers NOT_LEADER_OR_FOLLOWER for its partitions: the client refreshes metadata and retries.
pub async fn ask_owners<Q, A>(
    shard: &Shard,
    api: &OwnerApi<Q, A>,
    queries: BTreeMap<usize, Vec<Q>>,
    answers: &mut [Vec<Option<A>>],
) where
    Q: Send + 'static,
    A: Send + 'static,
{
    for (owner, owner_queries) in queries {
        let slots: Vec<Slot> = owner_queries.iter().map(api.slot_of).collect();
        let on_owner = api.on_owner;
        let result = shard
            .mesh
            .call(owner, move |owner_shard: &Rc<Shard>| {
                on_owner(owner_shard.clone(), owner_queries)
            })
            .await;
        match result {
            Ok(results) => {
                for (slot, answer) in results {
                    answers[slot.0][slot.1] = Some(answer);
                }
            }
            Err(e) => {
                tracing::warn!("forwarding {} to shard {owner}: {e}", api.name);
                for slot in slots {
                    answers[slot.0][slot.1] =
                        Some((api.error)(ResponseError::NotLeaderOrFollower.code()));
                }
            }
        }
    }
}

/// On the owner shard: waits (at most `IMAGE_WAIT`) until it has applied the newest image the
/// queries were routed by (`image_versions`), since the receiving shard may have applied it first.
pub async fn catch_up(shard: &Shard, image_versions: impl Iterator<Item = u64>) {
    if let Some(version) = image_versions.max() {
        shard
            .caught_up_with(version, std::time::Instant::now() + IMAGE_WAIT)
            .await;
    }
}

/// On the owner shard: the open partition `(topic_id, index)` if this broker leads it in
/// `leader_epoch` (its leader state for that epoch in place and not stopped). None answers
/// NOT_LEADER_OR_FOLLOWER: the client refreshes its metadata and asks again.
pub fn led_in_epoch(
    shard: &Shard,
    topic_id: Uuid,
    index: i32,
    leader_epoch: i32,
) -> Option<Rc<Partition>> {
    shard
        .partitions
        .get(&(topic_id, index))
        .filter(|partition| {
            partition
                .leader_state()
                .is_some_and(|leader| leader.epoch == leader_epoch && !leader.is_stopped())
        })
}

/// The open partition, opening it if the image has it but the log is not open yet.
pub async fn partition_of(
    shard: &Rc<Shard>,
    topic_id: Uuid,
    index: i32,
) -> Result<Rc<Partition>, i16> {
    if let Some(partition) = shard.partitions.get(&(topic_id, index)) {
        return Ok(partition);
    }
    let image = shard.control.image();
    let topic = image
        .topic_by_id(topic_id)
        .ok_or(ResponseError::UnknownTopicOrPartition.code())?;
    let info = topic
        .partitions
        .iter()
        .find(|p| p.index == index)
        .ok_or(ResponseError::UnknownTopicOrPartition.code())?;
    let config = topic_config::log_config(topic, shard.control.defaults());
    shard
        .partitions
        .get_or_open(topic, info, config)
        .await
        .map_err(|e| errors::log_error_code(&e))
}
