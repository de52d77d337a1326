//! Kafka error codes for chronik's internal errors.

use chronik_shards::log::LogError;
use kafka_protocol::ResponseError;
use tracing::warn;

use crate::control::{PartitionInfo, TopicInfo};

/// The Kafka error code a log error is reported with. Storage faults are
/// logged here (once per failed request part), client mistakes are not.
pub fn log_error_code(error: &LogError) -> i16 {
    let code = match error {
        LogError::CorruptBatch(_) => ResponseError::CorruptMessage,
        LogError::InvalidBatch(_) => ResponseError::InvalidRecord,
        LogError::BatchTooLarge { .. } => ResponseError::MessageTooLarge,
        LogError::OffsetOutOfRange { .. } => ResponseError::OffsetOutOfRange,
        LogError::OutOfOrderSequence(_) => ResponseError::OutOfOrderSequenceNumber,
        LogError::InvalidProducerEpoch(_) => ResponseError::InvalidProducerEpoch,
        LogError::Closed | LogError::FencedLeaderEpoch { .. } => ResponseError::NotLeaderOrFollower,
        other => {
            warn!("partition log error: {other}");
            ResponseError::KafkaStorageError
        }
    };
    code.code()
}

pub const NONE: i16 = 0;

/// The partition of `topic` a client request (ListOffsets, OffsetForLeaderEpoch, Fetch) names,
/// when this broker leads it in the epoch the request expects: UNKNOWN_TOPIC_OR_PARTITION,
/// NOT_LEADER_OR_FOLLOWER, or the leader epoch check's code otherwise.
pub fn led_partition(
    topic: &TopicInfo,
    index: i32,
    node_id: i32,
    current_leader_epoch: i32,
) -> Result<&PartitionInfo, i16> {
    let partition = topic
        .partitions
        .iter()
        .find(|p| p.index == index)
        .ok_or(ResponseError::UnknownTopicOrPartition.code())?;
    if partition.leader != node_id {
        return Err(ResponseError::NotLeaderOrFollower.code());
    }
    check_leader_epoch(current_leader_epoch, partition.leader_epoch)?;
    Ok(partition)
}

/// Checks a request's `current_leader_epoch` (-1: not given) against the
/// partition's: an older one is FENCED_LEADER_EPOCH (the client's metadata
/// is stale), a newer one UNKNOWN_LEADER_EPOCH (this broker's is).
pub fn check_leader_epoch(requested: i32, current: i32) -> Result<(), i16> {
    if requested < 0 || requested == current {
        Ok(())
    } else if requested < current {
        Err(ResponseError::FencedLeaderEpoch.code())
    } else {
        Err(ResponseError::UnknownLeaderEpoch.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leader_epoch_checks() {
        assert_eq!(check_leader_epoch(-1, 5), Ok(()));
        assert_eq!(check_leader_epoch(5, 5), Ok(()));
        assert_eq!(check_leader_epoch(4, 5), Err(74));
        assert_eq!(check_leader_epoch(6, 5), Err(75));
    }
}
