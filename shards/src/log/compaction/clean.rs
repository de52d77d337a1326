//! A cleaner pass over one partition log (the I/O around `decide`).

use super::{CleanStats, Cleanable, CleanerLimits};
use crate::log::{LogError, PartitionLog};

impl PartitionLog {
    /// How much a pass could clean now, below `upper_bound` (the high watermark) at wall-clock
    /// `now_ms`; None when the log is not compacted or nothing is cleanable.
    pub fn cleanable(&self, upper_bound: i64, now_ms: i64) -> Option<Cleanable> {
        let _ = (upper_bound, now_ms);
        None
    }

    /// One cleaner pass below `upper_bound` (the high watermark) at wall-clock `now_ms`.
    pub async fn clean(
        &self,
        upper_bound: i64,
        now_ms: i64,
        limits: &CleanerLimits<'_>,
    ) -> Result<CleanStats, LogError> {
        let _ = (upper_bound, now_ms, limits);
        Ok(CleanStats::default())
    }
}
