//! One segment: a file of batches named by its base offset, its in-memory index, and the way its bytes
//! are reached (an O_DIRECT DmaFile while active, a read-only memory map once sealed).

use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use bytes::Bytes;
use glommio::io::{BufferedFile, DmaFile, OpenOptions};

use super::batch::{self, BatchFault, BatchHeader, LOG_OVERHEAD};
use super::index::SegmentIndex;
use super::LogError;

/// O_DIRECT writes are aligned to the disk's physical block (4096 here, logical 512).
pub const BLOCK: u64 = 4096;
/// The first preallocation of a segment: an idle partition (a few records) costs this much disk,
/// not a whole step.
pub const PREALLOCATE_MIN: u64 = 64 << 10;
/// The largest preallocation step: a busy segment grows its file this much at a time, so flushes
/// rarely change the file size (overwriting preallocated blocks is cheaper than growing the file).
pub const PREALLOCATE_MAX_STEP: u64 = 64 << 20;

/// The file size to preallocate for a segment that needs `needed` bytes, of at most `segment_bytes`.
/// The step doubles with what the segment holds (64 KiB, 128 KiB, ... up to 64 MiB): the space
/// reserved ahead of the data is at most what was written to the segment so far (or the first
/// 64 KiB), so a partition that writes little reserves little, and one that writes a lot soon
/// reaches the full step and changes its file size once every 64 MiB.
pub fn preallocation_target(needed: u64, segment_bytes: u64) -> u64 {
    let cap = PREALLOCATE_MAX_STEP.min(align_up(segment_bytes.max(BLOCK)));
    let held = needed.max(1);
    // The largest power of two not above what the segment holds.
    let grown = 1u64 << (63 - held.leading_zeros());
    let step = grown.clamp(PREALLOCATE_MIN.min(cap), cap);
    needed.div_ceil(step).max(1) * step
}
/// Read-ahead of the batch scanner.
const SCAN_CHUNK: usize = 256 << 10;

pub fn align_down(v: u64) -> u64 {
    v & !(BLOCK - 1)
}

pub fn align_up(v: u64) -> u64 {
    align_down(v + BLOCK - 1)
}

/// `00000000000000000042.log` for base offset 42 (Kafka's naming).
pub fn log_file_name(base_offset: i64) -> String {
    format!("{base_offset:020}.log")
}

/// Base offset from a segment file name, None for anything else.
pub fn parse_log_file_name(name: &str) -> Option<i64> {
    let stem = name.strip_suffix(".log")?;
    if stem.len() != 20 || !stem.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

/// The open file of the segment being written.
pub struct ActiveFile {
    pub file: Rc<DmaFile>,
    /// The same file opened with O_DSYNC: a flush of one chunk under `flush=always` is a single write
    /// that is durable when it completes, instead of a write then an fdatasync (each of which io_uring
    /// hands to a kernel worker: two handoffs where one does).
    pub dsync: Rc<DmaFile>,
    /// Reads go through a buffered handle: on this platform (glommio 0.9, kernel 6.18) O_DIRECT reads
    /// through io_uring fail with EOPNOTSUPP while O_DIRECT writes work. The kernel keeps the page cache
    /// coherent with our O_DIRECT writes (it invalidates the written range).
    pub reader: Rc<BufferedFile>,
    /// Bytes written to the file (the rest of the segment is still pending in memory).
    pub written: u64,
    /// Bytes handed to writes, completed or in flight: the next group commit stages from here. Above
    /// `written` only while a group is writing.
    pub staged: u64,
    /// Contents of the partial last block, [align_down(staged), staged): rewritten on the next flush.
    pub tail_block: Vec<u8>,
    /// The same for `written`: where staging starts again after a failed group commit.
    pub written_tail: Vec<u8>,
    /// File size reserved with fallocate.
    pub preallocated: u64,
}

impl ActiveFile {
    /// A file whose first `end` bytes are on disk and nothing is in flight (`written` = `staged`).
    pub fn new(
        file: Rc<DmaFile>,
        dsync: Rc<DmaFile>,
        reader: Rc<BufferedFile>,
        end: u64,
        tail_block: Vec<u8>,
        preallocated: u64,
    ) -> ActiveFile {
        ActiveFile {
            file,
            dsync,
            reader,
            written: end,
            staged: end,
            written_tail: tail_block.clone(),
            tail_block,
            preallocated,
        }
    }

    /// Forgets what a failed group commit staged: the next group stages from `written` again.
    pub fn unstage(&mut self) {
        self.staged = self.written;
        self.tail_block = self.written_tail.clone();
    }
}

/// How a segment's bytes are reached.
pub enum Storage {
    /// Created by a roll at append time; the file appears at the next flush.
    Pending,
    Active(ActiveFile),
    /// Immutable; None when the segment is empty (an empty file cannot be mapped).
    Sealed(Option<Rc<memmap2::Mmap>>),
}

pub struct Segment {
    pub path: PathBuf,
    pub index: SegmentIndex,
    pub storage: Storage,
    /// Wall-clock ms of the first append (segment.ms); for recovered segments, the open time.
    pub created_ms: i64,
}

impl Segment {
    pub fn base_offset(&self) -> i64 {
        self.index.base_offset
    }

    /// Bytes readable from the file right now.
    pub fn readable_bytes(&self) -> u64 {
        match &self.storage {
            Storage::Pending => 0,
            Storage::Active(a) => a.written,
            Storage::Sealed(_) => self.index.size,
        }
    }

    pub fn source(&self) -> Source {
        match &self.storage {
            Storage::Pending | Storage::Sealed(None) => Source::Empty,
            Storage::Active(a) => Source::File(a.reader.clone()),
            Storage::Sealed(Some(m)) => Source::Mapped(m.clone()),
        }
    }

    pub fn is_sealed(&self) -> bool {
        matches!(self.storage, Storage::Sealed(_))
    }
}

/// Opens (or creates) a segment file for O_DIRECT reads and writes.
pub async fn open_dma(path: &Path, create: bool) -> Result<DmaFile, LogError> {
    Ok(OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .dma_open(path)
        .await?)
}

/// Opens an existing segment file for O_DIRECT | O_DSYNC writes (see `ActiveFile::dsync`).
pub async fn open_dsync(path: &Path) -> Result<DmaFile, LogError> {
    Ok(OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DSYNC)
        .dma_open(path)
        .await?)
}

/// Opens the read handle of an active segment.
pub async fn open_reader(path: &Path) -> Result<BufferedFile, LogError> {
    Ok(BufferedFile::open(path).await?)
}

/// Maps a sealed segment read-only.
pub fn map_sealed(path: &Path, size: u64) -> Result<Option<Rc<memmap2::Mmap>>, LogError> {
    if size == 0 {
        return Ok(None);
    }
    let f = std::fs::File::open(path)?;
    // SAFETY: sealed segment files are never written again; the log only shrinks a segment after it
    // dropped the map (truncate_to re-opens it as active first), and unlinking keeps the mapping valid.
    let map = unsafe { memmap2::Mmap::map(&f)? };
    if (map.len() as u64) < size {
        return Err(LogError::Corruption {
            segment: path.to_path_buf(),
            position: map.len() as u64,
            reason: format!("sealed segment is {} bytes, expected {size}", map.len()),
        });
    }
    Ok(Some(Rc::new(map)))
}

/// Where a scan reads bytes from.
#[derive(Clone)]
pub enum Source {
    Empty,
    File(Rc<BufferedFile>),
    Mapped(Rc<memmap2::Mmap>),
}

impl Source {
    async fn read(&self, pos: u64, len: usize) -> io::Result<Bytes> {
        match self {
            Source::Empty => Ok(Bytes::new()),
            Source::Mapped(m) => {
                let start = (pos as usize).min(m.len());
                let end = start.saturating_add(len).min(m.len());
                Ok(Bytes::copy_from_slice(&m[start..end]))
            }
            Source::File(f) => {
                let r = f.read_at(pos, len).await.map_err(io::Error::from)?;
                Ok(Bytes::copy_from_slice(&r))
            }
        }
    }
}

/// Sequential reader of the batches in `[.., end)` of one segment, with read-ahead.
pub struct Cursor {
    src: Source,
    end: u64,
    buf: Bytes,
    buf_start: u64,
}

/// One step of a scan.
pub enum ScanStep {
    /// A whole frame whose header parsed (CRC not yet checked).
    Batch { header: BatchHeader, frame: Bytes },
    /// Clean end: exactly at `end`.
    End,
    /// Something that is not a batch starts here (zeros, garbage, or a frame running past `end`).
    Fault(BatchFault),
}

impl Cursor {
    pub fn new(src: Source, end: u64) -> Self {
        Cursor {
            src,
            end,
            buf: Bytes::new(),
            buf_start: 0,
        }
    }

    async fn get(&mut self, pos: u64, len: usize) -> io::Result<Option<Bytes>> {
        if pos + len as u64 > self.end {
            return Ok(None);
        }
        let have_end = self.buf_start + self.buf.len() as u64;
        if pos < self.buf_start || pos + len as u64 > have_end {
            let want = (len.max(SCAN_CHUNK) as u64).min(self.end - pos) as usize;
            self.buf = self.src.read(pos, want).await?;
            self.buf_start = pos;
            if self.buf.len() < len {
                return Ok(None);
            }
        }
        let at = (pos - self.buf_start) as usize;
        Ok(Some(self.buf.slice(at..at + len)))
    }

    /// Reads the frame at `pos`.
    pub async fn next(&mut self, pos: u64) -> io::Result<ScanStep> {
        if pos >= self.end {
            return Ok(ScanStep::End);
        }
        let Some(prefix) = self.get(pos, LOG_OVERHEAD).await? else {
            return Ok(ScanStep::Fault(BatchFault::Truncated {
                need: LOG_OVERHEAD,
                have: (self.end - pos) as usize,
            }));
        };
        let len = match batch::parse_prefix(&prefix) {
            Ok((_, len)) => len,
            Err(f) => return Ok(ScanStep::Fault(f)),
        };
        let total = LOG_OVERHEAD + len as usize;
        let Some(frame) = self.get(pos, total).await? else {
            return Ok(ScanStep::Fault(BatchFault::Truncated {
                need: total,
                have: (self.end - pos) as usize,
            }));
        };
        match BatchHeader::parse(&frame) {
            Ok(header) => Ok(ScanStep::Batch { header, frame }),
            Err(f) => Ok(ScanStep::Fault(f)),
        }
    }
}

/// Recovery scan result of one segment file.
pub struct ScanOutcome {
    pub index: SegmentIndex,
    /// Why the scan stopped before the end of the file, if it did.
    pub stopped: Option<String>,
    pub last_epoch: Option<i32>,
    /// (epoch, first offset) at each change of leader epoch in the segment.
    pub epoch_starts: Vec<(i32, i64)>,
}

/// Walks the batches of a segment from position 0, verifying each (CRC if `verify_crc`), requiring
/// increasing offsets from the base offset (gaps are compaction's) and non-decreasing leader epochs. Stops at the first frame
/// that breaks a rule: in a tail segment that is where a torn write or stale bytes begin.
pub async fn scan_segment(
    src: Source,
    file_len: u64,
    base_offset: i64,
    index_interval: u32,
    verify_crc: bool,
) -> io::Result<ScanOutcome> {
    let mut cursor = Cursor::new(src, file_len);
    let mut index = SegmentIndex::new(base_offset);
    let mut pos = 0u64;
    let mut last_epoch: Option<i32> = None;
    let mut epoch_starts = Vec::new();
    let stopped = loop {
        match cursor.next(pos).await? {
            ScanStep::End => break None,
            ScanStep::Fault(f) => break Some(format!("at position {pos}: {f}")),
            ScanStep::Batch { header, frame } => {
                // Offsets increase; a gap is where compaction removed whole batches.
                if header.base_offset < index.next_offset {
                    break Some(format!(
                        "at position {pos}: base offset {} where at least {} was expected",
                        header.base_offset, index.next_offset
                    ));
                }
                if header.next_offset() - base_offset > i32::MAX as i64 {
                    break Some(format!(
                        "at position {pos}: offset beyond the segment's range"
                    ));
                }
                if last_epoch.is_some_and(|e| header.leader_epoch < e) {
                    break Some(format!(
                        "at position {pos}: leader epoch {} after {}",
                        header.leader_epoch,
                        last_epoch.unwrap_or_default()
                    ));
                }
                if verify_crc {
                    if let Err(f) = batch::verify_crc(&frame, &header) {
                        break Some(format!("at position {pos}: {f}"));
                    }
                }
                index.note_batch(&header, pos, index_interval);
                if last_epoch != Some(header.leader_epoch) {
                    epoch_starts.push((header.leader_epoch, header.base_offset));
                }
                last_epoch = Some(header.leader_epoch);
                pos += header.total_len() as u64;
            }
        }
    };
    Ok(ScanOutcome {
        index,
        stopped,
        last_epoch,
        epoch_starts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_round_trip() {
        assert_eq!(log_file_name(42), "00000000000000000042.log");
        assert_eq!(parse_log_file_name("00000000000000000042.log"), Some(42));
        assert_eq!(parse_log_file_name("00000000000000000042.index"), None);
        assert_eq!(parse_log_file_name("42.log"), None);
        assert_eq!(parse_log_file_name("0000000000000000004x.log"), None);
    }

    #[test]
    fn preallocation_starts_small_and_doubles_up_to_the_cap() {
        let gib = 1 << 30;
        // A new segment with one small batch reserves 64 KiB, not 64 MiB.
        assert_eq!(preallocation_target(4096, gib), 64 << 10);
        assert_eq!(preallocation_target(0, gib), 64 << 10);
        // Each time the data reaches the reserved end, the next step is what the segment holds.
        assert_eq!(preallocation_target((64 << 10) + 4096, gib), 128 << 10);
        assert_eq!(preallocation_target((128 << 10) + 4096, gib), 256 << 10);
        assert_eq!(preallocation_target((1 << 20) + 4096, gib), 2 << 20);
        // Reserved ahead of the data: never more than the data itself (past the first step).
        for needed in [(1u64 << 20) + 1, 5 << 20, 33 << 20, 100 << 20, 700 << 20] {
            let target = preallocation_target(needed, gib);
            assert!(target >= needed);
            assert!(
                target - needed <= needed.max(64 << 10),
                "{needed} -> {target}"
            );
        }
        // From 64 MiB of data on, the step stays 64 MiB.
        assert_eq!(preallocation_target((64 << 20) + 1, gib), 128 << 20);
        assert_eq!(preallocation_target((500 << 20) + 1, gib), 512 << 20);
        // A small segment.bytes caps the step.
        assert_eq!(preallocation_target(4096, 16 << 10), 16 << 10);
        assert_eq!(preallocation_target(20 << 10, 16 << 10), 32 << 10);
    }

    #[test]
    fn alignment() {
        assert_eq!(align_down(4095), 0);
        assert_eq!(align_up(1), 4096);
        assert_eq!(align_up(4096), 4096);
        assert_eq!(align_down(8191), 4096);
    }
}
