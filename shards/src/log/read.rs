//! Reads: whole batches by offset (fetch) and the first batch at or after a timestamp (ListOffsets).
//! The in-memory tail serves recent offsets; older ones come from the segment files, every batch
//! CRC-checked before it is returned.

use bytes::Bytes;

use super::batch;
use super::segment::{Cursor, ScanStep, Source};
use super::{LogError, PartitionLog};

/// A read that keeps meeting truncations gives up after this many attempts (`LogError::Truncating`).
const MAX_READ_ATTEMPTS: u32 = 16;

/// Where the next part of a read comes from.
enum Plan {
    Done,
    /// Nothing is stored from the offset asked for up to this one (a gap).
    Skip(i64),
    Disk {
        source: Source,
        path: std::path::PathBuf,
        start_pos: u64,
        end_pos: u64,
    },
}

impl PartitionLog {
    /// Whole stored batches, in order, starting with the batch that contains `from_offset`, stopping
    /// before any batch whose base offset is >= `upper_bound` and once `max_bytes` is reached. The first
    /// batch is returned even if it alone exceeds `max_bytes` (Kafka's rule; the caller may drop it).
    /// A stored batch that fails its checks is `LogError::Corruption`, never returned.
    pub async fn read(
        &self,
        from_offset: i64,
        max_bytes: usize,
        upper_bound: i64,
    ) -> Result<Vec<Bytes>, LogError> {
        let mut attempt = 0;
        loop {
            let generation = self.begin_attempt(&mut attempt).await?;
            let r = self.read_attempt(from_offset, max_bytes, upper_bound).await;
            if self.still_valid(generation) {
                return r;
            }
        }
    }

    /// ListOffsets by timestamp, at batch granularity: the base offset and max timestamp of the first
    /// batch whose max timestamp is >= `ts`; None if there is none.
    pub async fn offset_for_timestamp(&self, ts: i64) -> Result<Option<(i64, i64)>, LogError> {
        let mut attempt = 0;
        loop {
            let generation = self.begin_attempt(&mut attempt).await?;
            let r = self.timestamp_attempt(ts).await;
            if self.still_valid(generation) {
                return r;
            }
        }
    }

    /// Reads do not take the file lock; a truncation running under them can cut what they see. Each
    /// attempt notes the truncation generation (waiting out a running truncation first), and its
    /// outcome, data or error, counts only if no truncation started or ended meanwhile.
    async fn begin_attempt(&self, attempt: &mut u32) -> Result<u64, LogError> {
        *attempt += 1;
        if *attempt > MAX_READ_ATTEMPTS {
            return Err(LogError::Truncating);
        }
        self.check_open()?;
        if self.state.borrow().truncating {
            // The truncation holds the file lock until it is done.
            drop(self.file_lock.acquire_permit(1).await?);
        }
        Ok(self.state.borrow().generation)
    }

    fn still_valid(&self, generation: u64) -> bool {
        let st = self.state.borrow();
        st.generation == generation && !st.truncating
    }

    async fn read_attempt(
        &self,
        from_offset: i64,
        max_bytes: usize,
        upper_bound: i64,
    ) -> Result<Vec<Bytes>, LogError> {
        self.check_open()?;
        {
            let st = self.state.borrow();
            if from_offset < st.log_start || from_offset > st.log_end {
                return Err(LogError::OffsetOutOfRange {
                    requested: from_offset,
                    start: st.log_start,
                    end: st.log_end,
                });
            }
        }
        let mut out = Vec::new();
        let mut taken = 0usize;
        let mut cur = from_offset;
        loop {
            let plan = {
                let st = self.state.borrow();
                if cur >= st.log_end
                    || cur >= upper_bound
                    || (!out.is_empty() && taken >= max_bytes)
                {
                    Plan::Done
                } else if cur < st.log_start {
                    // Retention removed what we were about to read: stop with what we have.
                    if out.is_empty() {
                        return Err(LogError::OffsetOutOfRange {
                            requested: cur,
                            start: st.log_start,
                            end: st.log_end,
                        });
                    }
                    Plan::Done
                } else if st.tail.first_offset().is_some_and(|f| cur >= f) {
                    st.tail
                        .collect(cur, upper_bound, max_bytes, &mut out, &mut taken);
                    Plan::Done
                } else {
                    match st.segments.range(..=cur).next_back() {
                        Some((_, seg)) => Plan::Disk {
                            source: seg.source(),
                            path: seg.path.clone(),
                            start_pos: seg.index.lookup(cur),
                            end_pos: seg.readable_bytes(),
                        },
                        // Below the first segment but not below the log start: a follower whose
                        // log began inside a compacted leader's gap. Its records start there.
                        None => match st.segments.range(cur..).next() {
                            Some((&base, _)) => Plan::Skip(base),
                            None => {
                                return Err(LogError::OffsetOutOfRange {
                                    requested: cur,
                                    start: st.log_start,
                                    end: st.log_end,
                                })
                            }
                        },
                    }
                }
            };
            let (source, path, start_pos, end_pos) = match plan {
                Plan::Done => return Ok(out),
                Plan::Skip(next) => {
                    cur = next;
                    continue;
                }
                Plan::Disk {
                    source,
                    path,
                    start_pos,
                    end_pos,
                } => (source, path, start_pos, end_pos),
            };
            let before = cur;
            let mut cursor = Cursor::new(source, end_pos);
            let mut pos = start_pos;
            let mut stop = false;
            loop {
                match cursor.next(pos).await? {
                    ScanStep::End => break,
                    ScanStep::Fault(f) => {
                        return Err(LogError::Corruption {
                            segment: path,
                            position: pos,
                            reason: f.to_string(),
                        })
                    }
                    ScanStep::Batch { header, frame } => {
                        let len = header.total_len();
                        if header.last_offset() >= cur {
                            if header.base_offset >= upper_bound
                                || (!out.is_empty() && taken + len > max_bytes)
                            {
                                stop = true;
                                break;
                            }
                            if let Err(f) = batch::verify_crc(&frame, &header) {
                                tracing::error!(segment = ?path, position = pos, reason = %f, "corrupt stored batch");
                                return Err(LogError::Corruption {
                                    segment: path,
                                    position: pos,
                                    reason: f.to_string(),
                                });
                            }
                            taken += len;
                            out.push(frame);
                            cur = header.next_offset();
                            if taken >= max_bytes {
                                stop = true;
                                break;
                            }
                        }
                        pos += len as u64;
                    }
                }
            }
            if stop {
                return Ok(out);
            }
            if cur == before {
                // `cur` lies in a gap after this segment's last batch (compaction removed the
                // batches there): go on from the next offset the log holds.
                let st = self.state.borrow();
                let next = st
                    .segments
                    .range(cur + 1..)
                    .next()
                    .map(|(&base, _)| base)
                    .into_iter()
                    .chain(st.tail.first_offset().filter(|&t| t > cur))
                    .min();
                match next {
                    Some(next) => cur = next,
                    None => {
                        return Err(LogError::Corruption {
                            segment: path,
                            position: pos,
                            reason: format!("offset {cur} not found in its segment"),
                        })
                    }
                }
            }
        }
    }

    async fn timestamp_attempt(&self, ts: i64) -> Result<Option<(i64, i64)>, LogError> {
        self.check_open()?;
        let candidates: Vec<i64> = {
            let st = self.state.borrow();
            st.segments
                .iter()
                .filter(|(_, s)| s.index.max_timestamp >= ts)
                .map(|(&b, _)| b)
                .collect()
        };
        for base in candidates {
            let (source, path, start_pos, end_pos, tail_from) = {
                let st = self.state.borrow();
                let Some(seg) = st.segments.get(&base) else {
                    continue;
                };
                (
                    seg.source(),
                    seg.path.clone(),
                    seg.index.lookup_time(ts),
                    seg.readable_bytes(),
                    st.tail.first_offset(),
                )
            };
            let mut cursor = Cursor::new(source, end_pos);
            let mut pos = start_pos;
            loop {
                match cursor.next(pos).await? {
                    ScanStep::End => break,
                    ScanStep::Fault(f) => {
                        return Err(LogError::Corruption {
                            segment: path,
                            position: pos,
                            reason: f.to_string(),
                        })
                    }
                    ScanStep::Batch { header, .. } => {
                        if tail_from.is_some_and(|t| header.base_offset >= t) {
                            break;
                        }
                        if header.max_timestamp >= ts {
                            return Ok(Some((header.base_offset, header.max_timestamp)));
                        }
                        pos += header.total_len() as u64;
                    }
                }
            }
            // The rest of this segment is only in memory (not yet written).
            if let Some(hit) = self.state.borrow().tail.find_timestamp(ts) {
                if hit.0 >= base {
                    return Ok(Some(hit));
                }
            }
        }
        Ok(None)
    }
}
