//! Operator tools built into the `chronik` binary: `chronik cluster status`
//! (a Kafka client that describes a running cluster) and `chronik dev cluster`
//! (a local cluster of child processes for trying chronik out).

pub mod cluster_status;
pub mod dev_cluster;
pub mod kafka_client;
