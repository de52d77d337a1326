//! Partition replication (DESIGN.md, "Produce path and acks" and "Replication").
//!
//! The decisions are pure state machines, tested without I/O:
//! - `ack_tracker`: per partition on its leader, the acknowledged durable ends, the high
//!   watermark and the acks=all requests waiting on it;
//! - `isr`: when the leader asks the controller to shrink or expand the ISR;
//! - `epochs`: leader epoch answers (OffsetForLeaderEpoch) and the follower's truncation rule;
//! - `wire`: the framing of the replication connection;
//! - `admission`: which links and frames a follower serves (registered leaders in their current
//!   broker epoch, each partition only from its leader in its leader epoch).
//!
//! Around them, the I/O: `leader` (one push task per follower, acks into the tracker), `link`
//! (one connection per (shard, follower broker)), `follower` (the accepting side: append,
//! flush, ack; truncate on a new leader epoch first), `epoch_lookup` (epoch ends on a log).

pub mod ack_tracker;
pub mod admission;
pub mod clock;
pub mod epoch_lookup;
pub mod epochs;
pub mod follower;
pub mod isr;
pub mod leader;
pub mod link;
pub mod wire;

use std::rc::Rc;

use crate::control::{topic_config, PartitionInfo, TopicInfo};
use crate::partitions::Partition;
use crate::server::shard::Shard;

/// A shard's replication state: its links to follower brokers, and how many links from leaders
/// it serves.
pub struct ShardReplication {
    links: link::Links,
    /// Inbound links this shard serves now (bounded by `follower::max_links`).
    pub inbound_links: std::cell::Cell<usize>,
    /// `replica.lag.time.max.ms`.
    pub lag_max_ms: u64,
}

impl ShardReplication {
    pub fn new(lag_max_ms: u64) -> Self {
        ShardReplication {
            links: link::Links::default(),
            inbound_links: std::cell::Cell::new(0),
            lag_max_ms,
        }
    }

    /// The live link to a follower broker, connecting if needed.
    pub async fn link(&self, shard: &Rc<Shard>, broker: i32) -> Option<Rc<link::Link>> {
        self.links.get(shard, broker).await
    }
}

/// Acts on a partition's metadata: lead it (start or update the leader state) or follow.
pub fn apply(
    shard: &Rc<Shard>,
    partition: &Rc<Partition>,
    topic: &TopicInfo,
    info: &PartitionInfo,
) {
    let min_insync = topic_config::min_insync_replicas(topic, shard.control.defaults());
    let lag = shard.replication.lag_max_ms;
    let current = partition.leader_state();
    if info.leader == shard.node_id {
        match current {
            Some(leader) if leader.epoch == info.leader_epoch && !leader.is_stopped() => {
                let hw = leader.update(&info.isr, min_insync, lag);
                partition.high_watermark_watch().advance(hw);
            }
            _ => {
                if let Some(old) = current {
                    old.stop();
                }
                let leader = leader::LeaderState::start(shard, partition, info, min_insync, lag);
                partition
                    .high_watermark_watch()
                    .advance(leader.high_watermark());
                partition.set_leader_state(Some(leader));
            }
        }
    } else {
        if let Some(old) = current {
            old.stop();
            partition.set_leader_state(None);
        }
        partition.set_follower();
    }
}
