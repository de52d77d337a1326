//! The partition log: one per partition replica, owned by one shard (glommio executor).
//!
//! Batches are stored exactly as received (Kafka RecordBatch, magic 2) in segment files named by base
//! offset, written with O_DIRECT in 4096-byte-aligned blocks and made durable by group commit. See
//! `/shared/DESIGN.md` ("Partition log") and the modules: `batch` (frame rules), `segment` (files and
//! scans), `index` (sparse indexes), `commit` (flushing), `recovery` (open), `read` (fetch and
//! timestamp lookup), `retention`, `truncate`, `log_start` (restarting the log at an offset, following
//! a leader's log start), `tail` (in-memory tail), `epochs` (leader epoch history for
//! OffsetForLeaderEpoch).
//!
//! On disk, per partition directory: `<base offset, 20 digits>.log` holds batches back to back exactly
//! as the log returns them; sealed segments also have `.index` (relative offset -> position) and
//! `.timeindex` (max timestamp -> relative offset) files with a checksummed trailer;
//! `leader-epoch-checkpoint` holds where each leader epoch began; `log-restart` exists only while the
//! log is being emptied and restarted at an offset (see `log_start`). Only the newest
//! segment is ever written; it is preallocated in steps that grow with its data (64 KiB doubling up to
//! 64 MiB, `segment::preallocation_target`) and cut to its logical size when sealed
//! or closed. log_start is the base offset of the oldest segment file.
//!
//! Durability: with `flush=always` an offset counts as durable once an fdatasync that started after its
//! write completed; a rolled segment is synced and sealed before the next one is created, and deletions
//! (truncation, retention) are synced one file at a time, so after any crash the files form a
//! contiguous run and recovery only has to scan the newest one.
//!
//! Concurrency: every method takes `&self`; state lives in a `RefCell` that is never borrowed across an
//! `.await`. Writes and file changes hold a file lock, fdatasync holds a sync lock (so the next group's
//! write overlaps this group's sync); truncation, retention and close hold both. That work runs in its
//! own task, so a caller dropping its future (a request timeout) never leaves it half done.
//!
//! Platform note: O_DIRECT reads through glommio's io_uring path fail with EOPNOTSUPP on the project's
//! machines, so active segments are read through a buffered handle and sealed ones through `memmap2`;
//! writes stay O_DIRECT.

pub mod batch;
mod commit;
pub mod compaction;
mod config;
mod durability;
mod epochs;
mod error;
mod index;
mod log_start;
mod offload;
mod producer_state;
pub mod producers;
mod read;
mod recovery;
mod retention;
mod segment;
mod tail;
mod truncate;

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::rc::{Rc, Weak};

use bytes::{Bytes, BytesMut};

pub use commit::SHARD_IO_MEMORY;
pub use config::{CompactionConfig, FlushPolicy, LogConfig, DEFAULT_PRODUCER_ID_EXPIRATION_MS};
pub use error::LogError;
pub use producers::ProducerSummary;

use batch::BatchHeader;
use segment::{Segment, Storage};
use tail::{CachedBatch, TailCache};

/// Segments never exceed 2 GiB so positions fit the 32-bit index entries.
const MAX_SEGMENT_BYTES: u64 = 1 << 31;

/// What an append assigned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppendInfo {
    pub base_offset: i64,
    pub last_offset: i64,
    /// Largest batch max timestamp among the appended batches.
    pub max_timestamp: i64,
    pub record_count: u32,
    /// A retry of an idempotent producer's batch already in the log: nothing was appended, the
    /// offsets are the original batch's.
    pub duplicate: bool,
}

/// One partition replica's log. Owned by one glommio executor (it is !Send).
pub struct PartitionLog {
    dir: PathBuf,
    config: RefCell<LogConfig>,
    state: RefCell<LogState>,
    /// Serializes staging a group commit (taking the pending batches, copying them into write
    /// buffers, advancing file positions) and everything else that changes files.
    file_lock: glommio::sync::Semaphore,
    /// Held by the group commit whose writes are in flight. A group takes it before it gives up the
    /// file lock, so groups write in the order they staged (see `commit`).
    write_lock: glommio::sync::Semaphore,
    /// Serializes fdatasync of the active file. Truncation, retention, restart and close take all
    /// three locks (`lock_exclusive`).
    sync_lock: glommio::sync::Semaphore,
    closed: Cell<bool>,
    /// Why the last group commit or fdatasync failed, until one succeeds again (see `commit`):
    /// appends are refused meanwhile, and the background flusher retries the buffered batches.
    write_failure: RefCell<Option<String>>,
    /// A failed group commit advanced staging positions past what was written: the next group
    /// must stage from the written ends again (`commit::unstage_failed`).
    must_unstage: Cell<bool>,
    /// A background flusher task is running (flush.ms / flush=never, and bounding unflushed memory).
    background: Cell<bool>,
    me: Weak<PartitionLog>,
}

/// Every lock of a log, for what replaces or removes files (see `PartitionLog::lock_exclusive`).
pub(super) struct Exclusive<'a> {
    _file: glommio::sync::Permit<'a>,
    _write: glommio::sync::Permit<'a>,
    _sync: glommio::sync::Permit<'a>,
}

/// A batch appended but not yet written to its segment file.
struct PendingWrite {
    segment_base: i64,
    position: u64,
    data: Bytes,
    end_offset: i64,
}

struct LogState {
    segments: BTreeMap<i64, Segment>,
    log_start: i64,
    log_end: i64,
    /// Every offset below is written to its file.
    written_end: i64,
    /// Every offset below is written and fdatasync'ed.
    synced_end: i64,
    /// Leader epoch of the last batch, -1 if none.
    last_epoch: i32,
    pending: Vec<PendingWrite>,
    tail: TailCache,
    /// Bumped by truncation, so a read or a wait that awaited I/O can tell its view went stale.
    generation: u64,
    /// (generation after, cut offset) of recent truncations, oldest first.
    truncations: std::collections::VecDeque<(u64, i64)>,
    /// A truncation is cutting the log: appends are refused until it is done.
    truncating: bool,
    epochs: epochs::EpochHistory,
    /// Idempotent producers' state as of the log end (see `producers`).
    producers: producers::ProducerTable,
    /// Producer state taken where a segment rolled, written once the segment before it is sealed.
    snapshots_due: Vec<(i64, producers::ProducerTable)>,
    /// Below this the log is compacted (the cleaner checkpoint; see `compaction`).
    clean_end: i64,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl LogState {
    /// Whether a truncation since `generation` cut below `end_offset` (conservatively yes when that
    /// history is no longer kept).
    fn truncated_since(&self, generation: u64, end_offset: i64) -> bool {
        if generation == self.generation {
            return false;
        }
        match self.truncations.front() {
            Some(&(oldest, _)) if oldest <= generation + 1 => self
                .truncations
                .iter()
                .any(|&(g, point)| g > generation && point < end_offset),
            _ => true,
        }
    }

    /// The newest segment (possibly rolled at append time and not yet given a file).
    fn newest(&self) -> Option<&Segment> {
        self.segments.values().next_back()
    }

    /// Places one validated, offset-assigned batch at the end of the log (rolling a segment if due).
    fn push_batch(&mut self, dir: &Path, h: &BatchHeader, data: Bytes, cfg: &LogConfig, now: i64) {
        let len = data.len() as u64;
        let roll = match self.newest() {
            None => true,
            Some(seg) => {
                let size = seg.index.size;
                size > 0
                    && (size + len > cfg.segment_bytes.clamp(1, MAX_SEGMENT_BYTES)
                        || cfg
                            .segment_ms
                            .is_some_and(|ms| now.saturating_sub(seg.created_ms) >= ms as i64)
                        || h.next_offset() - seg.base_offset() > i32::MAX as i64)
            }
        };
        if roll {
            if !self.segments.is_empty() {
                self.snapshots_due
                    .push((h.base_offset, self.producers.clone()));
            }
            self.segments.insert(
                h.base_offset,
                Segment {
                    path: dir.join(segment::log_file_name(h.base_offset)),
                    index: index::SegmentIndex::new(h.base_offset),
                    storage: Storage::Pending,
                    created_ms: now,
                },
            );
        }
        let Some((&segment_base, seg)) = self.segments.iter_mut().next_back() else {
            return;
        };
        if seg.index.size == 0 {
            seg.created_ms = now;
        }
        let position = seg.index.size;
        seg.index.note_batch(h, position, cfg.index_interval_bytes);
        self.pending.push(PendingWrite {
            segment_base,
            position,
            data: data.clone(),
            end_offset: h.next_offset(),
        });
        self.tail.push(CachedBatch {
            base_offset: h.base_offset,
            last_offset: h.last_offset(),
            max_timestamp: h.max_timestamp,
            data,
        });
        self.log_end = h.next_offset();
        if let Some(batch) = h.producer_batch() {
            self.producers.apply(&batch, h.base_offset, h.last_offset());
        }
        self.last_epoch = h.leader_epoch;
        self.epochs.note(h.leader_epoch, h.base_offset);
        self.tail.evict(cfg.tail_cache_bytes, self.written_end);
    }
}

/// Appended bytes a log holds unwritten before appends that wait for nothing (acks=0) wait for
/// the disk (`PartitionLog::make_room`). Appends that wait for durability are bounded by the
/// request memory they hold until answered.
pub const MAX_UNWRITTEN_BYTES: usize = 16 << 20;

/// Appends at least this large keep the received buffer instead of copying it (a leader append
/// patches it in place when nothing else holds it). Smaller ones are copied: a small slice of a larger
/// receive buffer would otherwise pin all of it in the tail cache.
pub const ZERO_COPY_BYTES: usize = 64 << 10;

impl PartitionLog {
    /// Opens (creating if missing) the log in `dir` and recovers it: CRC-checks the tail segment batch by
    /// batch, truncates a torn tail, rebuilds missing/damaged indexes.
    pub async fn open(dir: PathBuf, config: LogConfig) -> Result<Rc<PartitionLog>, LogError> {
        let recovered = recovery::recover(&dir, &config).await?;
        let log = Rc::new_cyclic(|me| PartitionLog {
            dir,
            config: RefCell::new(config),
            state: RefCell::new(LogState {
                segments: recovered.segments,
                log_start: recovered.log_start,
                log_end: recovered.log_end,
                written_end: recovered.log_end,
                synced_end: recovered.log_end,
                last_epoch: recovered.last_epoch,
                pending: Vec::new(),
                tail: TailCache::default(),
                generation: 0,
                truncations: std::collections::VecDeque::new(),
                truncating: false,
                epochs: recovered.epochs,
                producers: recovered.producers,
                snapshots_due: Vec::new(),
                clean_end: recovered.clean_end,
            }),
            file_lock: glommio::sync::Semaphore::new(1),
            write_lock: glommio::sync::Semaphore::new(1),
            sync_lock: glommio::sync::Semaphore::new(1),
            closed: Cell::new(false),
            write_failure: RefCell::new(None),
            must_unstage: Cell::new(false),
            background: Cell::new(false),
            me: me.clone(),
        });
        // Expiry is not recorded: producers that expired before the restart go again at once.
        log.expire_producers(now_ms());
        log.start_background();
        Ok(log)
    }

    /// The directory the log owns.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn check_open(&self) -> Result<(), LogError> {
        if self.closed.get() {
            Err(LogError::Closed)
        } else {
            Ok(())
        }
    }

    /// Appends buffer batches for the next flush: refused while the log cannot write, so a full
    /// disk does not turn into unbounded memory (producers retry on KAFKA_STORAGE_ERROR).
    fn check_writable(&self) -> Result<(), LogError> {
        self.check_open()?;
        match &*self.write_failure.borrow() {
            Some(why) => Err(LogError::StorageUnavailable(why.clone())),
            None => Ok(()),
        }
    }

    /// Why the log cannot write now, if it cannot (its last write or fdatasync failed and no
    /// retry has succeeded yet).
    pub fn write_failure(&self) -> Option<String> {
        self.write_failure.borrow().clone()
    }

    /// Leader append: validates every batch before appending any, assigns offsets by patching
    /// baseOffset and partitionLeaderEpoch in the log's own copy, and buffers it for the next flush and
    /// the in-memory tail. Does no I/O.
    pub fn append(&self, records: &[u8], leader_epoch: i32) -> Result<AppendInfo, LogError> {
        let (batches, cfg) = self.validate_leader_append(records)?;
        self.append_validated(BytesMut::from(records), &batches, leader_epoch, &cfg)
    }

    /// [`append`](Self::append) of a received buffer. One of at least 64 KiB that nothing else
    /// references (a produce request's records once the request is dropped) has its offsets patched in
    /// place and is kept as it is: its bytes are copied once, into the write buffer, instead of twice.
    pub fn append_bytes(&self, records: Bytes, leader_epoch: i32) -> Result<AppendInfo, LogError> {
        let (batches, cfg) = self.validate_leader_append(&records)?;
        let buf = if records.len() < ZERO_COPY_BYTES {
            BytesMut::from(&records[..])
        } else {
            records
                .try_into_mut()
                .unwrap_or_else(|shared| BytesMut::from(&shared[..]))
        };
        self.append_validated(buf, &batches, leader_epoch, &cfg)
    }

    /// Checks every batch of a leader append before any is appended.
    fn validate_leader_append(
        &self,
        records: &[u8],
    ) -> Result<(Vec<(BatchHeader, usize)>, LogConfig), LogError> {
        self.check_writable()?;
        let cfg = self.config.borrow().clone();
        let batches = batch::split_batches(records, cfg.max_batch_bytes)?;
        producer_state::validate_batches(&batches)?;
        if cfg.compact {
            for (h, pos) in &batches {
                compaction::records::check_keys(
                    &records[*pos..*pos + h.total_len()],
                    h,
                    compaction::MAX_DECOMPRESSED_BYTES,
                )
                .map_err(LogError::InvalidBatch)?;
            }
        }
        for (h, _) in &batches {
            if h.last_offset_delta != h.record_count - 1 {
                return Err(LogError::InvalidBatch(format!(
                    "lastOffsetDelta {} does not match {} records",
                    h.last_offset_delta, h.record_count
                )));
            }
        }
        Ok((batches, cfg))
    }

    /// Assigns offsets to validated batches, patching them into `buf` (the log's own bytes).
    fn append_validated(
        &self,
        mut buf: BytesMut,
        batches: &[(BatchHeader, usize)],
        leader_epoch: i32,
        cfg: &LogConfig,
    ) -> Result<AppendInfo, LogError> {
        let mut st = self.state.borrow_mut();
        if st.truncating {
            return Err(LogError::Truncating);
        }
        if leader_epoch < st.last_epoch {
            return Err(LogError::FencedLeaderEpoch {
                epoch: leader_epoch,
                latest: st.last_epoch,
            });
        }
        if let producer_state::Admission::Duplicate(original) = producer_state::admit(&st, batches)?
        {
            return Ok(original);
        }
        let mut next = st.log_end;
        let mut headers = Vec::with_capacity(batches.len());
        for (h, pos) in batches {
            batch::patch_offsets(&mut buf[*pos..*pos + h.total_len()], next, leader_epoch);
            let mut h = *h;
            h.base_offset = next;
            h.leader_epoch = leader_epoch;
            next = h.next_offset();
            headers.push((h, *pos));
        }
        let data = buf.freeze();
        Ok(self.push_all(&mut st, &headers, &data, cfg))
    }

    /// Follower append: batches whose offsets the leader assigned, validated the same way and required
    /// to start at or after the log end, in increasing offsets (a compacted leader's log has gaps),
    /// with non-decreasing leader epochs.
    ///
    /// Large pushes are kept as received (no copy: the leader assigned offsets and epochs already).
    /// Small ones are copied: a small slice of a larger receive buffer would otherwise pin all of it
    /// in the tail cache.
    pub fn append_replica(&self, batches: Bytes) -> Result<AppendInfo, LogError> {
        self.check_writable()?;
        let cfg = self.config.borrow().clone();
        let parsed = batch::split_replica_batches(&batches, cfg.max_batch_bytes)?;
        let mut st = self.state.borrow_mut();
        if st.truncating {
            return Err(LogError::Truncating);
        }
        let mut next = st.log_end;
        let mut epoch = st.last_epoch;
        for (h, _) in &parsed {
            // A gap is a compacted leader's: the batches between were removed there.
            if h.base_offset < next {
                return Err(LogError::InvalidBatch(format!(
                    "replica batch at offset {} where {} was expected",
                    h.base_offset, next
                )));
            }
            if h.leader_epoch < epoch {
                return Err(LogError::InvalidBatch(format!(
                    "replica batch with leader epoch {} after {}",
                    h.leader_epoch, epoch
                )));
            }
            next = h.next_offset();
            epoch = h.leader_epoch;
        }
        let data = if batches.len() >= ZERO_COPY_BYTES {
            batches
        } else {
            Bytes::copy_from_slice(&batches)
        };
        Ok(self.push_all(&mut st, &parsed, &data, &cfg))
    }

    fn push_all(
        &self,
        st: &mut LogState,
        batches: &[(BatchHeader, usize)],
        data: &Bytes,
        cfg: &LogConfig,
    ) -> AppendInfo {
        let now = now_ms();
        let mut info = AppendInfo {
            base_offset: st.log_end,
            last_offset: st.log_end - 1,
            max_timestamp: -1,
            record_count: 0,
            duplicate: false,
        };
        for (h, pos) in batches {
            st.push_batch(
                &self.dir,
                h,
                data.slice(*pos..*pos + h.total_len()),
                cfg,
                now,
            );
            info.last_offset = h.last_offset();
            info.max_timestamp = info.max_timestamp.max(h.max_timestamp);
            info.record_count += h.record_count as u32;
        }
        info
    }

    pub fn log_start_offset(&self) -> i64 {
        self.state.borrow().log_start
    }

    /// Next offset to assign.
    pub fn log_end_offset(&self) -> i64 {
        self.state.borrow().log_end
    }

    /// Bytes appended but not yet written to their segment files.
    pub fn unwritten_bytes(&self) -> usize {
        self.state
            .borrow()
            .pending
            .iter()
            .map(|w| w.data.len())
            .sum()
    }

    /// Backpressure for appends that wait for nothing else (acks=0): while more than
    /// [`MAX_UNWRITTEN_BYTES`] are appended and unwritten, writes them out (no fdatasync: the bound
    /// is on memory, durability is the flush policy's business) before returning. A producer that
    /// outruns the disk then waits for it instead of growing the queue.
    pub async fn make_room(&self) -> Result<(), LogError> {
        if self.unwritten_bytes() <= MAX_UNWRITTEN_BYTES {
            return Ok(());
        }
        let end = self.log_end_offset();
        self.flush(false, end).await
    }

    /// Every offset below is durable under the flush policy.
    pub fn durable_end_offset(&self) -> i64 {
        let st = self.state.borrow();
        match self.config.borrow().flush {
            FlushPolicy::Always => st.synced_end,
            FlushPolicy::IntervalMs(_) => st.written_end,
            FlushPolicy::Never => st.log_end,
        }
    }

    /// Leader epoch of the last batch in the log, -1 for an empty log.
    pub fn last_leader_epoch(&self) -> i32 {
        self.state.borrow().last_epoch
    }

    /// OffsetForLeaderEpoch: the largest leader epoch <= `epoch` that this log has batches of, and the
    /// offset where it ended (where the next epoch began, or the log end for the latest epoch);
    /// (-1, -1) when undefined (no such epoch, or `epoch` newer than any known).
    pub fn end_offset_for_epoch(&self, epoch: i32) -> (i32, i64) {
        let st = self.state.borrow();
        st.epochs.end_offset_for(epoch, st.log_end)
    }

    /// Every batch below this is durable: the synced prefix, and every sealed segment.
    fn durable_frontier(&self) -> i64 {
        let st = self.state.borrow();
        let unsealed = st
            .segments
            .iter()
            .find(|(_, s)| !s.is_sealed())
            .map_or(st.log_end, |(&base, _)| base);
        st.synced_end.max(unsealed)
    }

    /// Topic config change; takes effect for later appends and flushes.
    pub fn update_config(&self, config: LogConfig) {
        *self.config.borrow_mut() = config;
        self.start_background();
    }

    /// The compaction configs the log runs with now (the cleaner's scheduler reads
    /// `min.cleanable.dirty.ratio` from them).
    pub fn compaction_config(&self) -> CompactionConfig {
        self.config.borrow().compaction
    }

    /// Runs file-changing work in its own task, so a caller that stops waiting (a request timeout
    /// dropping the future) never leaves a flush, truncation or deletion half done.
    async fn detached<T, Fut>(&self, f: impl FnOnce(Rc<PartitionLog>) -> Fut) -> Result<T, LogError>
    where
        T: 'static,
        Fut: std::future::Future<Output = Result<T, LogError>> + 'static,
    {
        let me = self.me.upgrade().ok_or(LogError::Closed)?;
        glommio::spawn_local(f(me))
            .detach()
            .await
            .unwrap_or(Err(LogError::Closed))
    }

    /// Takes the file, write and sync locks, in that order: no group commit is staging, writing or
    /// syncing until the guard is dropped.
    pub(super) async fn lock_exclusive(&self) -> Result<Exclusive<'_>, LogError> {
        let file = self.file_lock.acquire_permit(1).await?;
        let write = self.write_lock.acquire_permit(1).await?;
        let sync = self.sync_lock.acquire_permit(1).await?;
        Ok(Exclusive {
            _file: file,
            _write: write,
            _sync: sync,
        })
    }

    /// Clean shutdown: flush and sync everything, write the indexes, close files. Later calls on the
    /// log return `LogError::Closed`.
    pub async fn close(&self) -> Result<(), LogError> {
        self.detached(|log| async move { log.close_now().await })
            .await
    }

    async fn close_now(&self) -> Result<(), LogError> {
        if self.closed.get() {
            return Ok(());
        }
        let _exclusive = self.lock_exclusive().await?;
        if self.closed.get() {
            return Ok(());
        }
        let end = self.state.borrow().log_end;
        // Closed whatever the flush did: a log that cannot write (a full disk) still closes, and
        // what it could not write was never acknowledged as durable under `flush=always`.
        let flushed = self.flush_locked(true, end).await;
        let saved = match flushed {
            Ok(()) => self.save_epochs(i64::MAX).await,
            Err(e) => Err(e),
        };
        self.closed.set(true);
        let active = {
            let mut st = self.state.borrow_mut();
            st.pending.clear();
            st.tail.clear();
            let mut files = Vec::new();
            for seg in st.segments.values_mut() {
                if let Storage::Active(a) =
                    std::mem::replace(&mut seg.storage, Storage::Sealed(None))
                {
                    files.push((a.file, a.written));
                }
            }
            st.segments.clear();
            files
        };
        // Give back the preallocated space; the next open would cut it anyway.
        for (file, written) in active {
            file.truncate(written).await?;
            file.fdatasync().await?;
            if let Ok(file) = Rc::try_unwrap(file) {
                file.close().await?;
            }
        }
        saved
    }

    /// DeleteTopics: closes the log and removes its directory.
    pub async fn delete(&self) -> Result<(), LogError> {
        match self.close().await {
            Ok(()) | Err(LogError::Closed) => {}
            Err(e) => tracing::warn!(dir = ?self.dir, error = %e, "flush before delete failed"),
        }
        Ok(offload::remove_dir_all(&self.dir).await?)
    }
}
