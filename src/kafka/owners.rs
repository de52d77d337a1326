//! Per-partition queries answered on the shards that own the partitions (ListOffsets,
//! OffsetForLeaderEpoch): each owner shard is asked once per request, and each answer lands in
//! its request slot.

use std::collections::BTreeMap;
use std::rc::Rc;

use chronik_shards::runtime::mesh::LocalFuture;
use kafka_protocol::ResponseError;

use crate::server::shard::Shard;

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
