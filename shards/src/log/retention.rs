//! Retention: whole sealed segments are deleted once past `retention.ms` (by their largest batch
//! timestamp, or the file's modification time when batches carry none) or while the log exceeds
//! `retention.bytes` without them. The active segment is never deleted; log_start moves to the first
//! remaining segment.

use super::offload;
use super::producers::snapshot;
use super::segment::Segment;
use super::{LogError, PartitionLog};

fn segment_time(seg: &Segment) -> i64 {
    if seg.index.max_timestamp >= 0 {
        return seg.index.max_timestamp;
    }
    std::fs::metadata(&seg.path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(i64::MAX, |d| d.as_millis() as i64)
}

impl PartitionLog {
    /// Deletes whole sealed segments that are past retention.ms or beyond retention.bytes; advances
    /// log_start. Returns how many segments were deleted.
    pub async fn apply_retention(&self, now_ms: i64) -> Result<usize, LogError> {
        self.apply_retention_below(now_ms, i64::MAX).await
    }

    /// `apply_retention`, deleting only segments that end at or below `upper_bound`: a replicated
    /// partition passes its high watermark, so retention never removes what is not yet committed
    /// (a follower would then be told to restart its log past records no replica still has).
    pub async fn apply_retention_below(
        &self,
        now_ms: i64,
        upper_bound: i64,
    ) -> Result<usize, LogError> {
        self.detached(move |log| async move { log.apply_retention_now(now_ms, upper_bound).await })
            .await
    }

    async fn apply_retention_now(&self, now_ms: i64, upper_bound: i64) -> Result<usize, LogError> {
        self.check_open()?;
        let _exclusive = self.lock_exclusive().await?;
        self.check_open()?;
        self.expire_producers(now_ms);
        let cfg = self.config.borrow().clone();
        let victims = {
            let st = self.state.borrow();
            let mut remaining: u64 = st.segments.values().map(|s| s.index.size).sum();
            let mut victims = Vec::new();
            let last = st.segments.keys().next_back().copied();
            for (&base, seg) in &st.segments {
                if Some(base) == last || !seg.is_sealed() || seg.index.next_offset > upper_bound {
                    break;
                }
                let by_time = cfg
                    .retention_ms
                    .is_some_and(|ms| ms >= 0 && segment_time(seg) < now_ms.saturating_sub(ms));
                let by_size = cfg
                    .retention_bytes
                    .is_some_and(|limit| remaining - seg.index.size >= limit);
                if !(by_time || by_size) {
                    break;
                }
                remaining -= seg.index.size;
                victims.push(base);
            }
            victims
        };
        self.delete_oldest_segments(&victims).await
    }

    /// Deletes the given oldest segments, oldest first and one at a time durably, then moves log_start
    /// and trims the leader epoch history. The caller holds both locks.
    pub(super) async fn delete_oldest_segments(&self, victims: &[i64]) -> Result<usize, LogError> {
        for base in victims {
            let seg = {
                let mut st = self.state.borrow_mut();
                let seg = st.segments.remove(base);
                if let Some(&first) = st.segments.keys().next() {
                    st.log_start = first;
                    st.tail.remove_below(first);
                }
                seg
            };
            if let Some(seg) = seg {
                tracing::debug!(segment = ?seg.path, "deleting segment");
                let path = seg.path.clone();
                drop(seg);
                // One at a time, durably (the directory synced before the next deletion starts;
                // off the reactor, awaited): a crash must leave a suffix of the segments, never a gap.
                offload::delete_segment(&self.dir, &path, false).await?;
            }
        }
        if !victims.is_empty() {
            let start = {
                let mut st = self.state.borrow_mut();
                let start = st.log_start;
                st.epochs.trim_start(start);
                start
            };
            self.save_epochs(self.durable_frontier()).await?;
            // The producers' state stays (it lives on in memory and in later snapshots); snapshots
            // below the new log start only cost disk.
            let dir = self.dir.clone();
            let pruned = offload::run(move || snapshot::prune(&dir, start, i64::MAX)).await;
            if let Err(e) = pruned {
                tracing::warn!(dir = ?self.dir, error = %e, "cannot remove old producer snapshots");
            }
        }
        Ok(victims.len())
    }
}
