//! Group commit: a flush writes every append buffered since the previous flush in one aligned O_DIRECT
//! write per segment (rewriting the partial last block), then one fdatasync; every waiter whose offsets
//! it covers is released by it. Also rolls segment files (sealing the previous one) and runs the
//! background flusher of `flush.ms` / `flush=never`.

use std::rc::Rc;
use std::time::Duration;

use super::segment::{self, ActiveFile, Storage, BLOCK, PREALLOCATE_STEP};
use super::{FlushPolicy, LogError, PartitionLog, PendingWrite};

/// How often `flush=never` writes buffered batches out.
const NEVER_WRITE_INTERVAL: Duration = Duration::from_millis(50);
/// Under `flush=always`, batches nobody waited for are still written after this long (bounds memory).
const IDLE_FLUSH_INTERVAL: Duration = Duration::from_millis(200);

impl PartitionLog {
    /// Resolves once every offset below `end_offset` is durable under the flush policy. One write and
    /// fdatasync covers every append buffered so far; concurrent waiters share it.
    pub async fn wait_durable(&self, end_offset: i64) -> Result<(), LogError> {
        loop {
            if self.durable_end_offset() >= end_offset {
                return Ok(());
            }
            self.check_open()?;
            let log_end = self.log_end_offset();
            if end_offset > log_end {
                let st = self.state.borrow();
                return Err(LogError::OffsetOutOfRange {
                    requested: end_offset,
                    start: st.log_start,
                    end: log_end,
                });
            }
            let sync = matches!(self.config.borrow().flush, FlushPolicy::Always);
            self.flush(sync, end_offset).await?;
        }
    }

    /// Writes (and with `sync`, fdatasyncs) everything appended so far, unless `target` is already
    /// covered by the time the file lock is ours.
    pub(super) async fn flush(&self, sync: bool, target: i64) -> Result<(), LogError> {
        let _permit = self.file_lock.acquire_permit(1).await?;
        self.check_open()?;
        self.flush_locked(sync, target).await
    }

    /// `flush` with the file lock held. A failed write or sync closes the log: what is on disk is then
    /// unknown, and recovery on the next open decides.
    pub(super) async fn flush_locked(&self, sync: bool, target: i64) -> Result<(), LogError> {
        let r = self.flush_inner(sync, target).await;
        if let Err(e) = &r {
            tracing::error!(dir = ?self.dir, error = %e, "log flush failed; closing the log");
            self.closed.set(true);
        }
        r
    }

    async fn flush_inner(&self, sync: bool, target: i64) -> Result<(), LogError> {
        {
            let st = self.state.borrow();
            let done = if sync { st.synced_end } else { st.written_end };
            if done >= target {
                return Ok(());
            }
        }
        let (writes, end) = {
            let mut st = self.state.borrow_mut();
            (std::mem::take(&mut st.pending), st.log_end)
        };
        let mut i = 0;
        while i < writes.len() {
            let base = writes[i].segment_base;
            let n = writes[i..]
                .iter()
                .take_while(|w| w.segment_base == base)
                .count();
            self.write_segment(base, &writes[i..i + n]).await?;
            i += n;
        }
        if let Some(w) = writes.last() {
            let mut st = self.state.borrow_mut();
            st.written_end = w.end_offset;
            let budget = self.config.borrow().tail_cache_bytes;
            let written_end = st.written_end;
            st.tail.evict(budget, written_end);
        }
        if sync {
            let file = {
                let st = self.state.borrow();
                match st.active().map(|s| &s.storage) {
                    Some(Storage::Active(a)) => Some(a.file.clone()),
                    _ => None,
                }
            };
            if let Some(file) = file {
                file.fdatasync().await?;
            }
            let mut st = self.state.borrow_mut();
            st.synced_end = st.synced_end.max(end.min(st.written_end));
        }
        Ok(())
    }

    /// Writes consecutive pending batches of one segment, creating its file first if the segment was
    /// rolled since the last flush.
    async fn write_segment(&self, base: i64, writes: &[PendingWrite]) -> Result<(), LogError> {
        let pending_open = {
            let st = self.state.borrow();
            match st.segments.get(&base) {
                Some(seg) => matches!(seg.storage, Storage::Pending).then(|| seg.path.clone()),
                None => {
                    return Err(LogError::Corruption {
                        segment: self.dir.join(segment::log_file_name(base)),
                        position: 0,
                        reason: "pending write for a segment that no longer exists".into(),
                    })
                }
            }
        };
        if let Some(path) = pending_open {
            self.seal_active_before(base).await?;
            let file = segment::open_dma(&path, true).await?;
            let reader = segment::open_reader(&path).await?;
            let prealloc = self.preallocation_target(0);
            file.pre_allocate(prealloc, false).await?;
            std::fs::File::open(&self.dir)?.sync_all()?;
            tracing::debug!(segment = ?path, "rolled to a new segment");
            let mut st = self.state.borrow_mut();
            if let Some(seg) = st.segments.get_mut(&base) {
                seg.storage = Storage::Active(ActiveFile {
                    file: Rc::new(file),
                    reader: Rc::new(reader),
                    written: 0,
                    tail_block: Vec::new(),
                    preallocated: prealloc,
                });
            }
        }
        let (file, written, tail_block, preallocated) = {
            let st = self.state.borrow();
            match st.segments.get(&base).map(|s| &s.storage) {
                Some(Storage::Active(a)) => (
                    a.file.clone(),
                    a.written,
                    a.tail_block.clone(),
                    a.preallocated,
                ),
                _ => {
                    return Err(LogError::Corruption {
                        segment: self.dir.join(segment::log_file_name(base)),
                        position: 0,
                        reason: "segment is not writable".into(),
                    })
                }
            }
        };
        if writes[0].position != written {
            return Err(LogError::Corruption {
                segment: self.dir.join(segment::log_file_name(base)),
                position: written,
                reason: format!(
                    "pending write at {} does not follow the file end",
                    writes[0].position
                ),
            });
        }
        let start = segment::align_down(written);
        let new_bytes: usize = writes.iter().map(|w| w.data.len()).sum();
        let end = written + new_bytes as u64;
        let aligned_end = segment::align_up(end);
        let mut preallocated_now = preallocated;
        if aligned_end > preallocated {
            preallocated_now = self.preallocation_target(aligned_end);
            file.pre_allocate(preallocated_now, false).await?;
        }
        let len = (aligned_end - start) as usize;
        let mut buf = file.alloc_dma_buffer(len);
        let bytes = buf.as_bytes_mut();
        let mut at = tail_block.len();
        bytes[..at].copy_from_slice(&tail_block);
        for w in writes {
            bytes[at..at + w.data.len()].copy_from_slice(&w.data);
            at += w.data.len();
        }
        bytes[at..].fill(0);
        let keep_from = (segment::align_down(end) - start) as usize;
        let new_tail = bytes[keep_from..at].to_vec();
        let n = file.write_at(buf, start).await?;
        if n != len {
            return Err(LogError::Io(std::io::Error::new(
                std::io::ErrorKind::WriteZero,
                format!("short O_DIRECT write: {n} of {len} bytes"),
            )));
        }
        let mut st = self.state.borrow_mut();
        if let Some(seg) = st.segments.get_mut(&base) {
            if let Storage::Active(a) = &mut seg.storage {
                a.written = end;
                a.tail_block = new_tail;
                a.preallocated = preallocated_now;
            }
        }
        Ok(())
    }

    fn preallocation_target(&self, needed: u64) -> u64 {
        let seg_bytes = self.config.borrow().segment_bytes.max(BLOCK);
        let step = PREALLOCATE_STEP.min(segment::align_up(seg_bytes));
        needed.div_ceil(step).max(1) * step
    }

    /// Seals the active segment that precedes `new_base`: it is fully written (flushes go in order);
    /// sync it, cut the preallocated space, sync again, write its index files and map it read-only.
    async fn seal_active_before(&self, new_base: i64) -> Result<(), LogError> {
        let prev = {
            let st = self.state.borrow();
            st.segments
                .range(..new_base)
                .next_back()
                .and_then(|(&b, s)| match &s.storage {
                    Storage::Active(a) => {
                        Some((b, a.file.clone(), s.index.clone(), s.path.clone()))
                    }
                    _ => None,
                })
        };
        let Some((base, file, index, path)) = prev else {
            return Ok(());
        };
        file.fdatasync().await?;
        file.truncate(index.size).await?;
        file.fdatasync().await?;
        index.write_files(&path)?;
        let map = segment::map_sealed(&path, index.size)?;
        {
            let mut st = self.state.borrow_mut();
            if let Some(seg) = st.segments.get_mut(&base) {
                seg.storage = Storage::Sealed(map);
            }
        }
        if let Ok(file) = Rc::try_unwrap(file) {
            file.close().await?;
        }
        tracing::debug!(segment = ?path, size = index.size, "sealed segment");
        Ok(())
    }

    /// Starts the background flusher unless one runs. It holds only a weak reference and ends once the
    /// log is closed or dropped.
    pub(super) fn start_background(&self) {
        if self.background.get() {
            return;
        }
        let Some(me) = self.me.upgrade() else {
            return;
        };
        self.background.set(true);
        let weak = Rc::downgrade(&me);
        drop(me);
        glommio::spawn_local(async move {
            loop {
                let period = {
                    let Some(log) = weak.upgrade() else { return };
                    if log.closed.get() {
                        log.background.set(false);
                        return;
                    }
                    let policy = log.config.borrow().flush;
                    match policy {
                        FlushPolicy::Always => IDLE_FLUSH_INTERVAL,
                        FlushPolicy::IntervalMs(ms) => Duration::from_millis(ms.max(1)),
                        FlushPolicy::Never => NEVER_WRITE_INTERVAL,
                    }
                };
                glommio::timer::sleep(period).await;
                let Some(log) = weak.upgrade() else { return };
                if log.closed.get() {
                    log.background.set(false);
                    return;
                }
                let (sync, end, idle) = {
                    let st = log.state.borrow();
                    let sync = !matches!(log.config.borrow().flush, FlushPolicy::Never);
                    let done = if sync { st.synced_end } else { st.written_end };
                    (sync, st.log_end, done >= st.log_end)
                };
                if idle {
                    continue;
                }
                if let Err(e) = log.flush(sync, end).await {
                    if !matches!(e, LogError::Closed) {
                        tracing::warn!(dir = ?log.dir, error = %e, "background flush failed");
                    }
                }
            }
        })
        .detach();
    }
}
