//! OffsetForLeaderEpoch on a partition log, by binary search over its batches' leader epochs
//! (they never decrease along a log), so no separate epoch cache has to be kept in step.

use chronik_shards::log::batch::BatchHeader;
use chronik_shards::log::{LogError, PartitionLog};

use super::epochs::{UNDEFINED_EPOCH, UNDEFINED_OFFSET};

/// (the largest epoch <= `requested` in the log, the offset where it ended): the first offset of
/// a newer epoch, or the log end. Undefined for an empty log or a negative epoch.
pub async fn end_offset_for(log: &PartitionLog, requested: i32) -> Result<(i32, i64), LogError> {
    let start = log.log_start_offset();
    let end = log.log_end_offset();
    if requested < 0 || start >= end {
        return Ok((UNDEFINED_EPOCH, UNDEFINED_OFFSET));
    }
    let last = log.last_leader_epoch();
    if last <= requested {
        return Ok((last, end));
    }
    // The first batch whose epoch is newer than `requested`; lo and hi stay on batch boundaries.
    let (mut lo, mut hi) = (start, end);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let h = header_at(log, mid, end).await?;
        if h.leader_epoch > requested {
            hi = h.base_offset.min(mid);
        } else {
            lo = h.next_offset().max(mid + 1);
        }
    }
    if lo <= start {
        return Ok((requested, lo));
    }
    let before = header_at(log, lo - 1, end).await?;
    Ok((before.leader_epoch, lo))
}

async fn header_at(log: &PartitionLog, offset: i64, end: i64) -> Result<BatchHeader, LogError> {
    let batches = log.read(offset, 1, end).await?;
    let first = batches.first().ok_or(LogError::OffsetOutOfRange {
        requested: offset,
        start: log.log_start_offset(),
        end,
    })?;
    BatchHeader::parse(first).map_err(|e| LogError::CorruptBatch(e.to_string()))
}
