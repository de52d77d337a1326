//! The in-memory tail: the most recent batches, contiguous up to the log end, so followers and tailing
//! consumers are served without touching the disk. Batches not yet written to the file always stay here;
//! written ones are evicted oldest first once the byte budget is exceeded.

use std::collections::VecDeque;

use bytes::Bytes;

#[derive(Clone, Debug)]
pub struct CachedBatch {
    pub base_offset: i64,
    pub last_offset: i64,
    pub max_timestamp: i64,
    pub data: Bytes,
}

#[derive(Default)]
pub struct TailCache {
    batches: VecDeque<CachedBatch>,
    bytes: usize,
}

impl TailCache {
    pub fn push(&mut self, b: CachedBatch) {
        self.bytes += b.data.len();
        self.batches.push_back(b);
    }

    /// Base offset of the oldest cached batch: every offset from there to the log end is cached.
    pub fn first_offset(&self) -> Option<i64> {
        self.batches.front().map(|b| b.base_offset)
    }

    /// Drops written batches (last offset below `written_end`) beyond the budget, oldest first.
    pub fn evict(&mut self, budget: usize, written_end: i64) {
        while self.bytes > budget {
            match self.batches.front() {
                Some(b) if b.last_offset < written_end => {
                    self.bytes -= b.data.len();
                    self.batches.pop_front();
                }
                _ => break,
            }
        }
    }

    /// Forgets batches at or above `offset` (truncation).
    pub fn truncate(&mut self, offset: i64) {
        while self.batches.back().is_some_and(|b| b.base_offset >= offset) {
            if let Some(b) = self.batches.pop_back() {
                self.bytes -= b.data.len();
            }
        }
    }

    /// Forgets batches below `offset` (retention).
    pub fn remove_below(&mut self, offset: i64) {
        while self.batches.front().is_some_and(|b| b.last_offset < offset) {
            if let Some(b) = self.batches.pop_front() {
                self.bytes -= b.data.len();
            }
        }
    }

    pub fn clear(&mut self) {
        self.batches.clear();
        self.bytes = 0;
    }

    /// Appends to `out` the batches from the one containing `from` on, under the read rules (see
    /// `PartitionLog::read`); returns the offset after the last one taken.
    pub fn collect(
        &self,
        from: i64,
        upper_bound: i64,
        max_bytes: usize,
        out: &mut Vec<Bytes>,
        taken: &mut usize,
    ) -> i64 {
        let mut next = from;
        let start = self.batches.partition_point(|b| b.last_offset < from);
        for b in self.batches.range(start..) {
            if b.base_offset >= upper_bound {
                break;
            }
            if !out.is_empty() && *taken + b.data.len() > max_bytes {
                break;
            }
            *taken += b.data.len();
            out.push(b.data.clone());
            next = b.last_offset + 1;
            if *taken >= max_bytes {
                break;
            }
        }
        next
    }

    /// First cached batch whose max timestamp is >= ts, as (base offset, max timestamp).
    pub fn find_timestamp(&self, ts: i64) -> Option<(i64, i64)> {
        self.batches
            .iter()
            .find(|b| b.max_timestamp >= ts)
            .map(|b| (b.base_offset, b.max_timestamp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(base: i64, n: i64, len: usize) -> CachedBatch {
        CachedBatch {
            base_offset: base,
            last_offset: base + n - 1,
            max_timestamp: base * 10,
            data: Bytes::from(vec![0u8; len]),
        }
    }

    #[test]
    fn collect_respects_limits_and_first_batch_rule() {
        let mut t = TailCache::default();
        for i in 0..5 {
            t.push(batch(i * 2, 2, 100));
        }
        let (mut out, mut taken) = (Vec::new(), 0);
        assert_eq!(t.collect(3, i64::MAX, 250, &mut out, &mut taken), 6);
        assert_eq!(out.len(), 2);
        let (mut out, mut taken) = (Vec::new(), 0);
        assert_eq!(t.collect(0, i64::MAX, 10, &mut out, &mut taken), 2);
        assert_eq!(out.len(), 1);
        let (mut out, mut taken) = (Vec::new(), 0);
        assert_eq!(t.collect(0, 4, 10_000, &mut out, &mut taken), 4);
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn evicts_only_written_batches() {
        let mut t = TailCache::default();
        for i in 0..5 {
            t.push(batch(i, 1, 100));
        }
        t.evict(100, 2);
        assert_eq!(t.first_offset(), Some(2));
        t.evict(0, 10);
        assert_eq!(t.first_offset(), None);
    }

    #[test]
    fn truncate_and_retention() {
        let mut t = TailCache::default();
        for i in 0..5 {
            t.push(batch(i, 1, 100));
        }
        t.truncate(3);
        t.remove_below(1);
        assert_eq!(t.first_offset(), Some(1));
        assert_eq!(t.find_timestamp(15), Some((2, 20)));
        assert_eq!(t.find_timestamp(1000), None);
    }
}
