//! The commands that go through Raft. Each is fully determined before it is proposed (ids,
//! assignments, configs are chosen on the controller), so applying it is deterministic.
//! Encoded as JSON: metadata changes are rare and small, and the log stays readable.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::error::ControlError;
use super::topic_config::ConfigOp;

/// Identifies a proposal so that the node that proposed it can answer its caller once the entry
/// is applied: the proposing node and a number unique within its incarnation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ProposalId {
    pub node: i32,
    pub incarnation: u64,
    pub seq: u64,
}

/// A Raft log entry's payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub proposal: Option<ProposalId>,
    pub command: Command,
}

/// What a partition change was decided on, as Kafka's AlterPartition (v3) carries it: the
/// partition's state (KIP-497's partition epoch) and the broker epoch of each replica it puts
/// into the ISR (KIP-903). chronik names the state by the ISR itself rather than by a counter:
/// images in snapshots from before this field have no counter, and a node that restored such a
/// snapshot and one that replayed the log would count differently and then disagree on which
/// change to refuse. An ISR equal to the one decided on is as good a basis, because what makes
/// an equal ISR unsafe (a member that restarted) is caught by its incarnation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeBasis {
    /// The ISR the proposer saw (in any order).
    pub isr: Vec<i32>,
    /// The incarnation (broker epoch) of each broker the change adds to the ISR or makes
    /// leader, as the proposer knew it when it credited that broker.
    pub incarnations: BTreeMap<i32, u64>,
}

/// A metadata change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Sets the cluster id; only the first one counts.
    InitCluster {
        cluster_id: String,
    },
    /// A broker (re)starts: new incarnation, endpoints, unfenced.
    RegisterBroker {
        id: i32,
        host: String,
        port: u16,
        rack: Option<String>,
        rpc: Option<SocketAddr>,
        incarnation: u64,
    },
    /// A broker missed its heartbeats or shut down: it leaves every ISR it can leave and
    /// every partition it led gets a new leader.
    FenceBroker {
        id: i32,
        incarnation: u64,
    },
    /// A fenced broker is back: offline partitions it is in sync for come back with it.
    UnfenceBroker {
        id: i32,
        incarnation: u64,
    },
    CreateTopic {
        id: Uuid,
        name: String,
        configs: BTreeMap<String, String>,
        /// Replicas per partition, index order.
        assignment: Vec<Vec<i32>>,
    },
    DeleteTopic {
        id: Uuid,
        name: String,
    },
    /// Adds partitions with these replicas after the existing ones.
    CreatePartitions {
        topic: String,
        first_index: i32,
        assignment: Vec<Vec<i32>>,
    },
    AlterTopicConfigs {
        topic: String,
        ops: Vec<ConfigOp>,
    },
    /// A partition's leader and/or ISR change, computed against `leader_epoch`; stale (the epoch
    /// moved on) changes are rejected. A leader change bumps the leader epoch.
    ChangePartition {
        topic: String,
        partition: i32,
        leader_epoch: i32,
        leader: Option<i32>,
        isr: Option<Vec<i32>>,
        /// What the change was decided on (`isr_change`): checked when it is applied, so that a
        /// fence, a restart or another ISR change committed in between makes it stale. None in
        /// entries written before it existed, which apply as they did then.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        basis: Option<ChangeBasis>,
    },
    /// Hands broker `broker_id` (registered with `incarnation`) the next `size` producer ids
    /// (Kafka's ProducerIdsRecord). The range is the image's `next_producer_id` at apply time,
    /// so concurrent allocations never overlap (`producer_ids`).
    AllocateProducerIds {
        broker_id: i32,
        incarnation: u64,
        size: i32,
    },
}

impl Envelope {
    pub fn encode(&self) -> Result<Vec<u8>, ControlError> {
        serde_json::to_vec(self)
            .map_err(|e| ControlError::Internal(format!("encoding a command: {e}")))
    }

    pub fn decode(bytes: &[u8]) -> Result<Envelope, ControlError> {
        serde_json::from_slice(bytes)
            .map_err(|e| ControlError::Internal(format!("decoding a command: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let envelope = Envelope {
            proposal: Some(ProposalId {
                node: 1,
                incarnation: 9,
                seq: 3,
            }),
            command: Command::CreateTopic {
                id: Uuid::from_u128(42),
                name: "t".into(),
                configs: [("retention.ms".to_string(), "1".to_string())].into(),
                assignment: vec![vec![1, 2], vec![2, 1]],
            },
        };
        let bytes = envelope.encode().unwrap();
        assert_eq!(Envelope::decode(&bytes).unwrap(), envelope);
        assert!(Envelope::decode(b"{not json").is_err());
    }
}
