//! Typed errors of the partition log; the broker maps them to Kafka error codes.

use std::path::PathBuf;

/// Why a log operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// A batch whose bytes do not check out (CRC32C mismatch, truncated): CORRUPT_MESSAGE.
    #[error("corrupt batch: {0}")]
    CorruptBatch(String),
    /// A well-formed frame that breaks a rule (wrong magic, empty, bad offsets): INVALID_RECORD.
    #[error("invalid batch: {0}")]
    InvalidBatch(String),
    /// A batch larger than `max.message.bytes`: MESSAGE_TOO_LARGE.
    #[error("batch of {size} bytes exceeds the limit of {max} bytes")]
    BatchTooLarge { size: usize, max: usize },
    /// OFFSET_OUT_OF_RANGE.
    #[error("offset {requested} is outside the log range [{start}, {end}]")]
    OffsetOutOfRange {
        requested: i64,
        start: i64,
        end: i64,
    },
    /// Stored data failed its checks when read: never served.
    #[error("corruption in {segment:?} at position {position}: {reason}")]
    Corruption {
        segment: PathBuf,
        position: u64,
        reason: String,
    },
    /// An append with a leader epoch older than the log's last batch (a deposed leader).
    #[error("leader epoch {epoch} is older than the log's latest epoch {latest}")]
    FencedLeaderEpoch { epoch: i32, latest: i32 },
    /// An append while `truncate_to` is cutting the log (a replica changing leaders): the caller is not
    /// the leader of what comes next. Maps to NOT_LEADER_OR_FOLLOWER.
    #[error("the log is being truncated")]
    Truncating,
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// An append while the log's last write or fdatasync failed (a full disk, an I/O error) and no
    /// retry has succeeded since: nothing more is buffered until the log can write again. Maps to
    /// KAFKA_STORAGE_ERROR (retriable).
    #[error("the log cannot write: {0}")]
    StorageUnavailable(String),
    /// An idempotent producer's batch does not follow its last one (a gap, or a new epoch not
    /// starting at sequence 0): OUT_OF_ORDER_SEQUENCE_NUMBER.
    #[error("out of order sequence: {0}")]
    OutOfOrderSequence(String),
    /// An idempotent producer's batch with an epoch older than its latest: INVALID_PRODUCER_EPOCH.
    #[error("invalid producer epoch: {0}")]
    InvalidProducerEpoch(String),
    /// The log was closed or deleted.
    #[error("log is closed")]
    Closed,
}

impl From<glommio::GlommioError<()>> for LogError {
    fn from(e: glommio::GlommioError<()>) -> Self {
        LogError::Io(e.into())
    }
}
