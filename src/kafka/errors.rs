//! Kafka error codes for chronik's internal errors.

use chronik_shards::log::LogError;
use kafka_protocol::ResponseError;
use tracing::warn;

/// The Kafka error code a log error is reported with. Storage faults are
/// logged here (once per failed request part), client mistakes are not.
pub fn log_error_code(error: &LogError) -> i16 {
    let code = match error {
        LogError::CorruptBatch(_) => ResponseError::CorruptMessage,
        LogError::InvalidBatch(_) => ResponseError::InvalidRecord,
        LogError::BatchTooLarge { .. } => ResponseError::MessageTooLarge,
        LogError::OffsetOutOfRange { .. } => ResponseError::OffsetOutOfRange,
        LogError::Closed | LogError::FencedLeaderEpoch { .. } => ResponseError::NotLeaderOrFollower,
        other => {
            warn!("partition log error: {other}");
            ResponseError::KafkaStorageError
        }
    };
    code.code()
}

pub const NONE: i16 = 0;
