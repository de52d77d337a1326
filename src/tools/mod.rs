//! Operator tools built into the `chronik` binary: `chronik cluster status`
//! (a Kafka client that describes a running cluster) and `chronik dev cluster`
//! (a local cluster of child processes for trying chronik out), `chronik fuzz` (a structured
//! fuzzer that attacks a real broker process), and `chronik dump-log` (the records of a partition
//! directory, read offline).

pub mod cluster_status;
pub mod dev_cluster;
pub mod dump_log;
pub mod fuzz;
pub mod kafka_client;
