//! Group commit: a flush writes every append buffered since the previous flush with aligned O_DIRECT
//! writes (the partial last block rewritten with the new bytes; 4 MiB chunks, each submitted once
//! filled), then one fdatasync; every waiter whose offsets it covers is released by it. The next group
//! copies its batches while this one's writes are in flight (`GroupOrder`). Also rolls segment files
//! (sealing the previous one) and runs the background flusher: `flush.ms` syncs, `flush=never` writes
//! out, and under `flush=always` batches nobody waits for (acks=0) are still made durable.

use std::rc::Rc;
use std::time::Duration;

use super::durability;
use super::offload;
use super::segment::{self, ActiveFile, Storage};
use super::{FlushPolicy, LogError, PartitionLog, PendingWrite};

/// Size of one O_DIRECT write; a flush submits its chunks together. 4 MiB rather than 1 MiB: each
/// io_uring write costs the shard a fixed amount of CPU (submission, page pinning, completion), and
/// at the host-cached disk's ~1.8 GB/s the shard core, not the disk, is the limit (bench/RESULTS.md).
const WRITE_CHUNK: usize = 4 << 20;
/// Chunk buffers kept for reuse per shard (already faulted in: fresh large buffers cost page faults);
/// 8 cover 32 MiB of group commits in flight.
const WRITE_BUFFERS_KEPT: usize = 8;
/// io_uring buffer memory a shard that writes logs should reserve (glommio's `io_memory`): the kept
/// write buffers plus room for reads. Buffers from it are allocated once and reused (no page faults),
/// and when the kernel lets the process register it (CAP_IPC_LOCK, or a memlock limit above it) writes
/// use it as fixed buffers, without pinning pages per write. Together that took the 1 MiB throughput
/// bench from 69-73% to 96-101% of raw bandwidth (bench/RESULTS.md, session 3). Without the permission
/// glommio logs a warning and uses it unregistered.
pub const SHARD_IO_MEMORY: usize = WRITE_CHUNK * WRITE_BUFFERS_KEPT + (8 << 20);

thread_local! {
    /// Reusable chunk buffers, shared by every log of this shard, tagged with the executor that
    /// allocated them (a buffer may belong to that executor's registered I/O memory).
    static WRITE_BUFFERS: std::cell::RefCell<(usize, Vec<glommio::io::DmaBuffer>)> =
        const { std::cell::RefCell::new((usize::MAX, Vec::new())) };
}

fn take_write_buffer() -> Option<glommio::io::DmaBuffer> {
    let id = glommio::executor().id();
    WRITE_BUFFERS.with(|pool| {
        let mut pool = pool.borrow_mut();
        if pool.0 != id {
            *pool = (id, Vec::new());
        }
        pool.1.pop()
    })
}

fn return_write_buffer(buf: glommio::io::DmaBuffer) {
    let id = glommio::executor().id();
    WRITE_BUFFERS.with(|pool| {
        let mut pool = pool.borrow_mut();
        if pool.0 != id {
            *pool = (id, Vec::new());
        }
        if pool.1.len() < WRITE_BUFFERS_KEPT {
            pool.1.push(buf);
        }
    });
}

/// Copies a sequence of byte slices, then zeros, into consecutive buffers.
struct Filler<'a> {
    sources: &'a [&'a [u8]],
    index: usize,
    offset: usize,
}

impl<'a> Filler<'a> {
    fn new(sources: &'a [&'a [u8]]) -> Self {
        Filler {
            sources,
            index: 0,
            offset: 0,
        }
    }

    fn fill(&mut self, dst: &mut [u8]) {
        let mut at = 0;
        while at < dst.len() && self.index < self.sources.len() {
            let src = &self.sources[self.index][self.offset..];
            let n = src.len().min(dst.len() - at);
            dst[at..at + n].copy_from_slice(&src[..n]);
            at += n;
            self.offset += n;
            if self.offset == self.sources[self.index].len() {
                self.index += 1;
                self.offset = 0;
            }
        }
        dst[at..].fill(0);
    }
}

/// One O_DIRECT write of a group commit.
struct ChunkWrite {
    file: Rc<glommio::io::DmaFile>,
    position: u64,
    buf: glommio::io::DmaBuffer,
    len: usize,
}

/// What staging one segment's batches did.
struct Staged {
    /// Written through the O_DSYNC handle: durable once written.
    durable: bool,
    /// The segment's file end once this group's writes complete.
    end: u64,
    /// The partial last block at `end`.
    tail: Vec<u8>,
}

type ChunkResult = (Result<usize, LogError>, Rc<glommio::io::DmaBuffer>, usize);

/// A group commit's place in the two-stage pipeline. Staging (file lock) takes the pending batches,
/// copies them into chunk buffers and advances the file positions; writing (write lock) has the
/// chunks' writes in flight. A group takes the write lock before it gives up the file lock, so the
/// next group copies its batches while this group's writes are on the device, and writes only once
/// they completed: its first block rewrites this group's partial last block, and its O_DSYNC write
/// may claim durability for everything written before it.
struct GroupOrder<'a> {
    log: &'a PartitionLog,
    /// The file lock while staging; None once staged, or when the caller holds every lock.
    file: Option<glommio::sync::Permit<'a>>,
    write: Option<glommio::sync::Permit<'a>>,
    /// The caller holds every lock (`lock_exclusive`): nothing else stages or writes.
    exclusive: bool,
    in_flight: Vec<glommio::task::JoinHandle<ChunkResult>>,
}

impl<'a> GroupOrder<'a> {
    fn staged(log: &'a PartitionLog, file: glommio::sync::Permit<'a>) -> Self {
        GroupOrder {
            log,
            file: Some(file),
            write: None,
            exclusive: false,
            in_flight: Vec::new(),
        }
    }

    fn exclusive(log: &'a PartitionLog) -> Self {
        GroupOrder {
            log,
            file: None,
            write: None,
            exclusive: true,
            in_flight: Vec::new(),
        }
    }

    /// Whether this group may write now: it holds the write lock, or no earlier group is writing.
    fn may_write_now(&mut self) -> bool {
        if self.log.must_unstage.get() {
            // An earlier group failed: this one was staged behind it and must not write.
            return false;
        }
        if self.exclusive || self.write.is_some() {
            return true;
        }
        match self.log.write_lock.try_acquire_permit(1) {
            Ok(p) => {
                self.write = Some(p);
                true
            }
            Err(_) => false,
        }
    }

    /// Waits until the earlier group's writes completed. If one of them failed, this group was
    /// staged behind a hole and must not write: it fails too, and the next group stages again from
    /// what was written.
    async fn wait_for_write_lock(&mut self) -> Result<(), LogError> {
        self.acquire_write_lock().await?;
        self.log.check_open()?;
        if self.log.must_unstage.get() {
            return Err(LogError::StorageUnavailable(
                "an earlier group commit failed".into(),
            ));
        }
        Ok(())
    }

    async fn acquire_write_lock(&mut self) -> Result<(), LogError> {
        if !self.exclusive && self.write.is_none() {
            self.write = Some(self.log.write_lock.acquire_permit(1).await?);
        }
        Ok(())
    }

    /// Waits until no write of this log is in flight, this group's included.
    async fn quiesce(&mut self) -> Result<(), LogError> {
        self.wait_for_write_lock().await?;
        self.finish_writes().await
    }

    fn submit(&mut self, chunk: ChunkWrite) {
        let ChunkWrite {
            file,
            position,
            buf,
            len,
        } = chunk;
        let buf = Rc::new(buf);
        self.in_flight.push(
            glommio::spawn_local(async move {
                let r = file.write_rc_at(buf.clone(), position).await;
                (r.map_err(|e| LogError::Io(e.into())), buf, len)
            })
            .detach(),
        );
    }

    /// Awaits every write submitted so far (all of them, also after a failure: none may be left
    /// running) and gives their buffers back for reuse.
    async fn finish_writes(&mut self) -> Result<(), LogError> {
        let mut failure = None;
        for task in std::mem::take(&mut self.in_flight) {
            let Some((r, buf, len)) = task.await else {
                failure.get_or_insert(LogError::Closed);
                continue;
            };
            match r {
                Ok(n) if n == len => {}
                Ok(n) => {
                    failure.get_or_insert(LogError::Io(std::io::Error::new(
                        std::io::ErrorKind::WriteZero,
                        format!("short O_DIRECT write: {n} of {len} bytes"),
                    )));
                }
                Err(e) => {
                    failure.get_or_insert(e);
                }
            }
            if let Ok(buf) = Rc::try_unwrap(buf) {
                if buf.len() == WRITE_CHUNK {
                    return_write_buffer(buf);
                }
            }
        }
        failure.map_or(Ok(()), Err)
    }
}

/// How often `flush=never` writes buffered batches out.
const NEVER_WRITE_INTERVAL: Duration = Duration::from_millis(50);
/// Under `flush=always`, batches nobody waited for are still written after this long (bounds memory).
const IDLE_FLUSH_INTERVAL: Duration = Duration::from_millis(200);
/// While the log cannot write (a full disk), the background flusher retries this often.
const FAILED_WRITE_RETRY_INTERVAL: Duration = Duration::from_secs(1);

impl PartitionLog {
    /// Resolves once every offset below `end_offset` is durable under the flush policy. One write and
    /// fdatasync covers every append buffered so far; concurrent waiters share it.
    ///
    /// If a truncation cuts below `end_offset` while waiting, the offsets waited for are gone (and may
    /// be reused by other batches): that is `LogError::OffsetOutOfRange`, never a success.
    pub async fn wait_durable(&self, end_offset: i64) -> Result<(), LogError> {
        let generation = self.state.borrow().generation;
        loop {
            {
                let st = self.state.borrow();
                if st.truncated_since(generation, end_offset) {
                    return Err(LogError::OffsetOutOfRange {
                        requested: end_offset,
                        start: st.log_start,
                        end: st.log_end,
                    });
                }
            }
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
            self.detached(move |log| async move { log.flush(sync, end_offset).await })
                .await?;
        }
    }

    /// Writes (and with `sync`, makes durable) everything appended so far, unless `target` is already
    /// covered. Staging, writing and syncing hold separate locks, so the next group copies its
    /// batches while this group's writes are on the device, and its writes overlap this group's
    /// fdatasync. A group that fits one chunk is written with O_DSYNC and needs no fdatasync.
    pub(super) async fn flush(&self, sync: bool, target: i64) -> Result<(), LogError> {
        {
            let file = self.file_lock.acquire_permit(1).await?;
            self.check_open()?;
            let r = self
                .write_pending(target, sync, GroupOrder::staged(self, file))
                .await;
            self.note_flush(r)?;
        }
        if sync && self.state.borrow().synced_end < target {
            let _sync = self.sync_lock.acquire_permit(1).await?;
            self.check_open()?;
            let r = self.sync_written(target).await;
            self.note_flush(r)?;
        }
        Ok(())
    }

    /// `flush` for callers that hold every lock (`lock_exclusive`).
    pub(super) async fn flush_locked(&self, sync: bool, target: i64) -> Result<(), LogError> {
        let r = self
            .write_pending(target, sync, GroupOrder::exclusive(self))
            .await;
        self.note_flush(r)?;
        if sync {
            let r = self.sync_written(target).await;
            self.note_flush(r)?;
        }
        Ok(())
    }

    /// A failed write or sync leaves the log open: its batches stay buffered (and readable from
    /// the tail) and are written again by a later flush, so a full disk costs the waiting requests
    /// an error, not the partition. Until a flush succeeds, appends are refused (`check_writable`).
    /// Logged once per episode: the background flusher retries every second meanwhile.
    ///
    /// Why retrying is sound: a failed group commit claims nothing (`written_end` and `synced_end`
    /// only move on success) and the next group rewrites from the last written block
    /// (`unstage_failed`); a failed fdatasync is issued again, and O_DIRECT writes leave no dirty
    /// page cache whose error a retried fdatasync could miss.
    fn note_flush<T>(&self, r: Result<T, LogError>) -> Result<T, LogError> {
        match &r {
            Err(LogError::Closed) => {}
            Err(e) => {
                let first = self.write_failure.borrow().is_none();
                *self.write_failure.borrow_mut() = Some(e.to_string());
                if first {
                    tracing::warn!(dir = ?self.dir, error = %e, "log write failed; refusing appends and retrying in the background");
                }
            }
            Ok(_) => {
                let caught_up = {
                    let st = self.state.borrow();
                    let synced_enough = match self.config.borrow().flush {
                        FlushPolicy::Always => st.synced_end >= st.written_end,
                        _ => true,
                    };
                    st.pending.is_empty() && !self.must_unstage.get() && synced_enough
                };
                if caught_up && self.write_failure.borrow_mut().take().is_some() {
                    tracing::info!(dir = ?self.dir, "log writes again");
                }
            }
        }
        r
    }

    /// After a failed group commit (and any group staged behind it, which failed too): waits until
    /// no write is in flight, then has every active segment stage from its written end again.
    async fn unstage_failed(&self, order: &mut GroupOrder<'_>) -> Result<(), LogError> {
        order.acquire_write_lock().await?;
        order.finish_writes().await?;
        let mut st = self.state.borrow_mut();
        for seg in st.segments.values_mut() {
            if let Storage::Active(a) = &mut seg.storage {
                a.unstage();
            }
        }
        self.must_unstage.set(false);
        Ok(())
    }

    /// Gives a failed group's batches back to the pending queue, in offset order with anything
    /// given back by a group staged behind it or appended since.
    fn give_back(&self, writes: Vec<PendingWrite>) {
        self.must_unstage.set(true);
        let mut st = self.state.borrow_mut();
        st.pending.extend(writes);
        st.pending.sort_by_key(|w| w.end_offset);
    }

    /// Writes every pending batch as one group. With `dsync_allowed`, a group of one chunk in one
    /// segment goes through the O_DSYNC handle and is durable when written; that counts only when
    /// everything before it was durable already (`durability`: with FUA, an O_DSYNC write makes
    /// only its own blocks durable). `synced_end` moves here, under the write lock, where no
    /// truncation can come between the write and the claim.
    async fn write_pending(
        &self,
        target: i64,
        dsync_allowed: bool,
        mut order: GroupOrder<'_>,
    ) -> Result<(), LogError> {
        if self.state.borrow().written_end >= target {
            return Ok(());
        }
        if self.must_unstage.get() {
            self.unstage_failed(&mut order).await?;
        }
        let writes = std::mem::take(&mut self.state.borrow_mut().pending);
        let Some(last_end) = writes.last().map(|w| w.end_offset) else {
            // A group staged earlier covers `target` and is still writing: wait for it, so the
            // caller's fdatasync covers it.
            order.wait_for_write_lock().await?;
            return Ok(());
        };
        let staged = self
            .stage_segments(&writes, dsync_allowed, &mut order)
            .await;
        // Every write is staged (or the group failed): the next group may stage behind this one.
        order.file = None;
        let written = order.finish_writes().await;
        let (all_durable, ends) = match (staged, written) {
            (Ok(staged), Ok(())) => staged,
            (Err(e), _) | (Ok(_), Err(e)) => {
                // Still holding the write lock: a group staged behind this one sees the failure
                // before it may write.
                self.give_back(writes);
                return Err(e);
            }
        };
        let mut st = self.state.borrow_mut();
        for (base, end, tail) in ends {
            if let Some(Storage::Active(a)) = st.segments.get_mut(&base).map(|s| &mut s.storage) {
                a.written = end;
                a.written_tail = tail;
            }
        }
        let group_start = st.written_end;
        st.written_end = last_end;
        let budget = self.config.borrow().tail_cache_bytes;
        let written_end = st.written_end;
        st.tail.evict(budget, written_end);
        st.synced_end =
            durability::after_group(st.synced_end, group_start, written_end, all_durable);
        Ok(())
    }

    /// Stages the group's batches segment by segment; returns whether all of it went through the
    /// O_DSYNC handle (is durable once written), and each segment's file end once written.
    async fn stage_segments(
        &self,
        writes: &[PendingWrite],
        dsync_allowed: bool,
        order: &mut GroupOrder<'_>,
    ) -> Result<(bool, Vec<(i64, u64, Vec<u8>)>), LogError> {
        let single_segment = writes
            .first()
            .is_some_and(|w| writes.iter().all(|x| x.segment_base == w.segment_base));
        let mut all_durable = dsync_allowed && single_segment;
        let mut ends = Vec::with_capacity(1);
        let mut i = 0;
        while i < writes.len() {
            let base = writes[i].segment_base;
            let n = writes[i..]
                .iter()
                .take_while(|w| w.segment_base == base)
                .count();
            let staged = self
                .stage_segment(base, &writes[i..i + n], all_durable, order)
                .await?;
            all_durable &= staged.durable;
            ends.push((base, staged.end, staged.tail));
            i += n;
        }
        Ok((all_durable, ends))
    }

    /// fdatasyncs the active file (sync lock held). Everything written before lives either in it or in
    /// a sealed segment, which was synced when sealed.
    async fn sync_written(&self, target: i64) -> Result<(), LogError> {
        let (end, file) = {
            let st = self.state.borrow();
            if st.synced_end >= target || st.synced_end >= st.written_end {
                return Ok(());
            }
            // The newest segment with a file: a segment rolled at append time may not have one yet,
            // and then the unsynced bytes are all in the one before it.
            let file = st.segments.values().rev().find_map(|s| match &s.storage {
                Storage::Active(a) => Some(a.file.clone()),
                _ => None,
            });
            (st.written_end, file)
        };
        if let Some(file) = file {
            file.fdatasync().await?;
        }
        let mut st = self.state.borrow_mut();
        st.synced_end = durability::after_flush(st.synced_end, end);
        Ok(())
    }

    /// Stages consecutive pending batches of one segment: copies them into chunk buffers and advances
    /// the segment's file position, submitting each chunk's write as soon as it is filled when no
    /// earlier group is writing, and otherwise once that group is done. Creates the segment's file
    /// first if the segment was rolled since the last flush. With `dsync`, a write of one chunk into
    /// an existing file goes through the O_DSYNC handle; returns whether it did (the bytes are then
    /// durable once written).
    async fn stage_segment(
        &self,
        base: i64,
        writes: &[PendingWrite],
        dsync: bool,
        order: &mut GroupOrder<'_>,
    ) -> Result<Staged, LogError> {
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
        let opened_now = pending_open.is_some();
        if let Some(path) = pending_open {
            // Sealing syncs and cuts the previous file: nothing may be writing to it.
            order.quiesce().await?;
            self.seal_active_before(base).await?;
            let file = segment::open_dma(&path, true).await?;
            let dsync = segment::open_dsync(&path).await?;
            let reader = segment::open_reader(&path).await?;
            let prealloc = self.preallocation_target(0);
            file.pre_allocate(prealloc, false).await?;
            // The new file's directory entry is durable before anything is written to it.
            offload::sync_dir(&self.dir).await?;
            tracing::debug!(segment = ?path, "rolled to a new segment");
            let mut st = self.state.borrow_mut();
            if let Some(seg) = st.segments.get_mut(&base) {
                seg.storage = Storage::Active(ActiveFile::new(
                    Rc::new(file),
                    Rc::new(dsync),
                    Rc::new(reader),
                    0,
                    Vec::new(),
                    prealloc,
                ));
            }
        }
        let (file, dsync_file, written, tail_block, preallocated) = {
            let st = self.state.borrow();
            match st.segments.get(&base).map(|s| &s.storage) {
                Some(Storage::Active(a)) => (
                    a.file.clone(),
                    a.dsync.clone(),
                    a.staged,
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
        // The bytes to write: the partial last block already on disk, then the new batches, then zero
        // padding up to the block boundary, in chunks (reused, already-faulted buffers).
        let mut sources: Vec<&[u8]> = Vec::with_capacity(writes.len() + 1);
        sources.push(&tail_block);
        sources.extend(writes.iter().map(|w| w.data.as_ref()));
        let total = (aligned_end - start) as usize;
        let mut filler = Filler::new(&sources);
        // A group of one chunk (the common small flush) is written durably with `dsync` unless the
        // file was just created (its creation is made durable by the fdatasync).
        let chunk_count = total.div_ceil(WRITE_CHUNK);
        let durable = dsync && chunk_count == 1 && !opened_now && aligned_end <= preallocated;
        let target = if durable { dsync_file } else { file };
        let mut held = Vec::new();
        let mut new_tail = Vec::new();
        let mut at = 0usize;
        while at < total {
            let len = WRITE_CHUNK.min(total - at);
            let mut buf = if len == WRITE_CHUNK {
                take_write_buffer().unwrap_or_else(|| target.alloc_dma_buffer(WRITE_CHUNK))
            } else {
                target.alloc_dma_buffer(len)
            };
            filler.fill(buf.as_bytes_mut());
            if at + len == total {
                let keep_from = (segment::align_down(end) - start) as usize - at;
                let keep_to = (end - start) as usize - at;
                new_tail = buf.as_bytes()[keep_from..keep_to].to_vec();
            }
            let chunk = ChunkWrite {
                file: target.clone(),
                position: start + at as u64,
                buf,
                len,
            };
            at += len;
            if held.is_empty() && order.may_write_now() {
                order.submit(chunk);
                if at < total {
                    // Let the write go out before the next chunk is copied.
                    glommio::executor().yield_now().await;
                }
            } else {
                held.push(chunk);
            }
        }
        // The next group stages from here (its first block rewrites this group's last one, which is
        // why it writes only after this group's writes completed).
        {
            let mut st = self.state.borrow_mut();
            if let Some(seg) = st.segments.get_mut(&base) {
                if let Storage::Active(a) = &mut seg.storage {
                    a.staged = end;
                    a.tail_block = new_tail.clone();
                    a.preallocated = preallocated_now;
                }
            }
        }
        if !held.is_empty() {
            order.wait_for_write_lock().await?;
            for chunk in held {
                order.submit(chunk);
            }
        }
        Ok(Staged {
            durable,
            end,
            tail: new_tail,
        })
    }

    fn preallocation_target(&self, needed: u64) -> u64 {
        segment::preallocation_target(needed, self.config.borrow().segment_bytes)
    }

    /// Seals the active segment that precedes `new_base`: it is fully written (flushes go in order);
    /// sync it, cut the preallocated space, sync again, write its index files and map it read-only.
    /// The file work without an io_uring path (index files, epoch checkpoint, producer snapshots)
    /// runs off the reactor (`offload`), each step done before the next, and all of it before the
    /// caller creates the next segment.
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
        let size = index.size;
        file.fdatasync().await?;
        file.truncate(size).await?;
        file.fdatasync().await?;
        let log_path = path.clone();
        offload::run(move || index.write_files(&log_path)).await?;
        // Epoch changes inside the sealed segment are now only known from the checkpoint; everything
        // below the new segment is durable now.
        self.save_epochs(new_base).await?;
        self.write_due_snapshots(new_base).await;
        let map = segment::map_sealed(&path, size)?;
        {
            let mut st = self.state.borrow_mut();
            if let Some(seg) = st.segments.get_mut(&base) {
                seg.storage = Storage::Sealed(map);
            }
        }
        if let Ok(file) = Rc::try_unwrap(file) {
            file.close().await?;
        }
        tracing::debug!(segment = ?path, size, "sealed segment");
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
                    let period = match policy {
                        FlushPolicy::Always => IDLE_FLUSH_INTERVAL,
                        FlushPolicy::IntervalMs(ms) => Duration::from_millis(ms.max(1)),
                        FlushPolicy::Never => NEVER_WRITE_INTERVAL,
                    };
                    if log.write_failure.borrow().is_some() {
                        period.max(FAILED_WRITE_RETRY_INTERVAL)
                    } else {
                        period
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
                    // `note_flush` logged the failure once; this retries it until it succeeds.
                    if !matches!(e, LogError::Closed) {
                        tracing::debug!(dir = ?log.dir, error = %e, "background flush failed");
                    }
                }
            }
        })
        .detach();
    }
}
