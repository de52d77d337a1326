//! A small blocking Kafka client: just what the benchmarks need, built on the
//! `kafka-protocol` types (version negotiation, metadata, topic creation,
//! pipelined produce, fetch).

pub mod cluster;
pub mod connection;
pub mod pipeline;
pub mod versions;
pub mod wire;

pub use cluster::{ClusterMap, PartitionLeader};
pub use connection::Connection;
pub use versions::Versions;

/// What can go wrong talking to a broker.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("encoding a request: {0}")]
    Encode(String),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("the broker closed the connection")]
    Closed,
    #[error("the broker supports no common version of {0}")]
    NoCommonVersion(&'static str),
    #[error("{context}: Kafka error {code} ({name})")]
    Kafka {
        context: String,
        code: i16,
        name: String,
    },
    #[error("{0}")]
    Other(String),
}

/// The name of a Kafka error code, e.g. `NotLeaderOrFollower`.
pub fn error_name(code: i16) -> String {
    match kafka_protocol::ResponseError::try_from_code(code) {
        None => "None".to_string(),
        Some(e) => format!("{e:?}"),
    }
}

/// Whether a produce or fetch error means "ask Metadata again and retry".
pub fn is_leadership_error(code: i16) -> bool {
    use kafka_protocol::ResponseError as E;
    matches!(
        kafka_protocol::ResponseError::try_from_code(code),
        Some(
            E::NotLeaderOrFollower
                | E::LeaderNotAvailable
                | E::UnknownTopicOrPartition
                | E::FencedLeaderEpoch
                | E::UnknownLeaderEpoch
                | E::NotEnoughReplicas
                | E::NotEnoughReplicasAfterAppend
                | E::RequestTimedOut
                | E::NetworkException
        )
    )
}
