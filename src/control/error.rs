//! The control plane's error type: every variant maps to the Kafka error code a client should see.

use kafka_protocol::ResponseError;

/// Why a control-plane operation failed. Each variant carries a human-readable message for the
/// response's `error_message` field; `code()` gives the Kafka error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum ControlError {
    #[error("invalid topic: {0}")]
    InvalidTopic(String),
    #[error("topic already exists: {0}")]
    TopicAlreadyExists(String),
    #[error("unknown topic: {0}")]
    UnknownTopic(String),
    #[error("invalid partitions: {0}")]
    InvalidPartitions(String),
    #[error("invalid replication factor: {0}")]
    InvalidReplicationFactor(String),
    #[error("invalid replica assignment: {0}")]
    InvalidReplicaAssignment(String),
    #[error("invalid config: {0}")]
    InvalidConfig(String),
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// A partition change based on a leader epoch that is no longer current.
    #[error("stale leader epoch: {0}")]
    StaleLeaderEpoch(String),
    /// A proposed ISR names a replica that cannot be in sync (fenced, or not a replica).
    #[error("ineligible replica: {0}")]
    IneligibleReplica(String),
    /// A broker's request names an incarnation (broker epoch) that is not its registered one, or
    /// the broker is not registered: Kafka's STALE_BROKER_EPOCH.
    #[error("stale broker epoch: {0}")]
    StaleBrokerEpoch(String),
    #[error("not the controller (controller: {controller_id:?})")]
    NotController { controller_id: Option<i32> },
    #[error("timed out waiting for the change to commit")]
    Timeout,
    #[error("internal error: {0}")]
    Internal(String),
}

impl ControlError {
    /// The Kafka error code for this error.
    pub fn code(&self) -> ResponseError {
        match self {
            ControlError::InvalidTopic(_) => ResponseError::InvalidTopicException,
            ControlError::TopicAlreadyExists(_) => ResponseError::TopicAlreadyExists,
            ControlError::UnknownTopic(_) => ResponseError::UnknownTopicOrPartition,
            ControlError::InvalidPartitions(_) => ResponseError::InvalidPartitions,
            ControlError::InvalidReplicationFactor(_) => ResponseError::InvalidReplicationFactor,
            ControlError::InvalidReplicaAssignment(_) => ResponseError::InvalidReplicaAssignment,
            ControlError::InvalidConfig(_) => ResponseError::InvalidConfig,
            ControlError::InvalidRequest(_) => ResponseError::InvalidRequest,
            ControlError::StaleLeaderEpoch(_) => ResponseError::FencedLeaderEpoch,
            ControlError::IneligibleReplica(_) => ResponseError::IneligibleReplica,
            ControlError::StaleBrokerEpoch(_) => ResponseError::StaleBrokerEpoch,
            ControlError::NotController { .. } => ResponseError::NotController,
            ControlError::Timeout => ResponseError::RequestTimedOut,
            ControlError::Internal(_) => ResponseError::UnknownServerError,
        }
    }

    /// The message for the response's `error_message` field.
    pub fn message(&self) -> String {
        self.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_match_kafka() {
        assert_eq!(ControlError::InvalidTopic("x".into()).code().code(), 17);
        assert_eq!(
            ControlError::TopicAlreadyExists("x".into()).code().code(),
            36
        );
        assert_eq!(ControlError::UnknownTopic("x".into()).code().code(), 3);
        assert_eq!(
            ControlError::InvalidPartitions("x".into()).code().code(),
            37
        );
        assert_eq!(
            ControlError::InvalidReplicationFactor("x".into())
                .code()
                .code(),
            38
        );
        assert_eq!(
            ControlError::InvalidReplicaAssignment("x".into())
                .code()
                .code(),
            39
        );
        assert_eq!(ControlError::InvalidConfig("x".into()).code().code(), 40);
        assert_eq!(
            ControlError::NotController {
                controller_id: Some(2)
            }
            .code()
            .code(),
            41
        );
        assert_eq!(ControlError::InvalidRequest("x".into()).code().code(), 42);
        assert_eq!(ControlError::Timeout.code().code(), 7);
        assert_eq!(ControlError::StaleLeaderEpoch("x".into()).code().code(), 74);
        assert_eq!(
            ControlError::IneligibleReplica("x".into()).code().code(),
            107
        );
        assert_eq!(ControlError::StaleBrokerEpoch("x".into()).code().code(), 77);
        assert_eq!(ControlError::Internal("x".into()).code().code(), -1);
        assert!(ControlError::UnknownTopic("t".into())
            .message()
            .contains('t'));
    }
}
