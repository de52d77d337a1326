//! The control plane: cluster metadata in a Raft group (raft-rs), run by a control core thread.
//!
//! Every broker runs one control node. The Raft leader is the *controller*: it alone proposes
//! metadata changes (topics, assignments, partition leaders, broker fencing). Every node applies
//! the committed log to the same `MetadataImage` and publishes each applied image to the shards,
//! which act on it. A broker without peers is a single-voter group of itself: it elects itself and
//! commits on its own fsync, through the same code path a cluster uses.
//!
//! - `image`: the metadata image; `command`: what goes through Raft; `state_machine`: applying it.
//! - `validate` and `assignment`: how a client request becomes a command on the controller.
//! - `topic_name`, `topic_config`: Kafka's rules for names and topic configs.
//! - `raft_storage`: the durable Raft log; `node`: the control thread running the RawNode and
//!   the controller's duties (registration, session fencing, preferred leaders).
//! - `transport`: TCP between control nodes (`inbound`: its bounded, peers-only accepting side);
//!   `forward`: the rpcs (heartbeats, requests forwarded to the controller and its answers).
//! - `handle`: `ControlHandle`, the API the shards and the Kafka front end call.
//! - `producer_ids`: producer id blocks allocated through Raft, and each broker's cache of them.
//!
//! Cluster mode: `peers` lists every voter (this node included) with its rpc address. The
//! voter set is fixed at first start (no membership changes). Brokers heartbeat every second;
//! one silent for 9 s (`broker.session.timeout.ms`) is fenced and its partitions get leaders
//! from their ISR. ISR changes come from partition leaders through `alter_partition_isr`.

pub mod assignment;
#[cfg(test)]
mod cluster_tests;
pub mod command;
mod death;
pub mod error;
pub mod forward;
mod handle;
pub mod image;
mod inbound;
mod isr_change;
mod node;
pub mod producer_ids;
mod raft_logger;
pub mod raft_storage;
pub mod state_machine;
#[cfg(test)]
mod test_commands;
pub mod topic_config;
pub mod topic_name;
mod transport;
pub mod validate;

use std::net::SocketAddr;
use std::path::PathBuf;

pub use error::ControlError;
pub use handle::{start, ControlHandle, ImageSubscription};
pub use image::{BrokerInfo, MetadataImage, PartitionInfo, TopicInfo};
pub use topic_config::{ConfigEntry, ConfigOp, ConfigSource};

/// How to run this broker's control node.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    /// This broker's id (>= 0).
    pub node_id: i32,
    /// Control state lives in `<data_dir>/meta/`.
    pub data_dir: PathBuf,
    /// Advertised host and port for Kafka clients.
    pub kafka_endpoint: (String, u16),
    pub rack: Option<String>,
    /// Cluster mode: this node's control-plane address.
    pub rpc: Option<SocketAddr>,
    /// Cluster mode: every voter (this node included) and its rpc address. Empty: a single-node
    /// cluster of itself.
    pub peers: Vec<(i32, SocketAddr)>,
    /// CPU to pin the control thread to.
    pub control_core: Option<usize>,
    pub defaults: BrokerDefaults,
}

/// Broker-level defaults of topic configs and auto-creation.
#[derive(Debug, Clone)]
pub struct BrokerDefaults {
    /// `num.partitions`: partitions of a topic created with -1 or auto-created.
    pub num_partitions: i32,
    /// `default.replication.factor`.
    pub default_replication_factor: i16,
    /// `auto.create.topics.enable`.
    pub auto_create_topics_enable: bool,
    /// `min.insync.replicas`.
    pub min_insync_replicas: i32,
    /// Log defaults: segment.bytes, flush policy, retention, ...
    pub log: chronik_shards::log::LogConfig,
}

impl Default for BrokerDefaults {
    fn default() -> Self {
        BrokerDefaults {
            num_partitions: 1,
            default_replication_factor: 1,
            auto_create_topics_enable: true,
            min_insync_replicas: 1,
            log: chronik_shards::log::LogConfig::default(),
        }
    }
}

/// One topic of a CreateTopics request.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NewTopic {
    pub name: String,
    /// -1: the broker default.
    pub num_partitions: i32,
    /// -1: the broker default.
    pub replication_factor: i16,
    /// Explicit replica assignment (partition index, broker ids); empty for automatic.
    pub assignments: Vec<(i32, Vec<i32>)>,
    /// Config name and value; a `None` value means the default.
    pub configs: Vec<(String, Option<String>)>,
}

impl NewTopic {
    /// A topic with the broker's default partitions, replication and configs (auto-creation).
    pub fn with_defaults(name: impl Into<String>) -> NewTopic {
        NewTopic {
            name: name.into(),
            num_partitions: -1,
            replication_factor: -1,
            assignments: Vec::new(),
            configs: Vec::new(),
        }
    }
}
