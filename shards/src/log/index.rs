//! Sparse per-segment indexes: offset -> file position (`.index`) and max timestamp -> offset
//! (`.timeindex`). Kept in memory for every segment, written to files when a segment is sealed, and
//! trusted on open only if their checksummed trailer matches the segment file; otherwise rebuilt.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::batch::BatchHeader;

const TRAILER_MAGIC: u32 = 0x4348_4958; // "CHIX"
const TRAILER_VERSION: u32 = 1;
/// magic u32, version u32, count u32, reserved u32, segment size u64, next offset i64, max ts i64,
/// bytes since last entry u64, crc32c u32.
const TRAILER_LEN: usize = 4 * 4 + 8 * 4 + 4;
const OFFSET_ENTRY_LEN: usize = 8;
const TIME_ENTRY_LEN: usize = 12;

/// One sparse entry: the batch at `rel_offset` starts at `position`, and every batch before it has a
/// max timestamp of at most `max_ts_before`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    pub rel_offset: u32,
    pub position: u32,
    pub max_ts_before: i64,
}

/// The in-memory index and summary of one segment.
#[derive(Clone, Debug)]
pub struct SegmentIndex {
    pub base_offset: i64,
    pub entries: Vec<IndexEntry>,
    /// Offset after the last batch.
    pub next_offset: i64,
    /// Largest batch max timestamp, -1 if none.
    pub max_timestamp: i64,
    /// Logical bytes of batches in the segment.
    pub size: u64,
    bytes_since_entry: u64,
}

impl SegmentIndex {
    pub fn new(base_offset: i64) -> Self {
        SegmentIndex {
            base_offset,
            entries: Vec::new(),
            next_offset: base_offset,
            max_timestamp: -1,
            size: 0,
            bytes_since_entry: 0,
        }
    }

    /// Accounts for a batch appended at `position` (== current size).
    pub fn note_batch(&mut self, h: &BatchHeader, position: u64, interval: u32) {
        if self.bytes_since_entry >= interval as u64 && position > 0 {
            self.entries.push(IndexEntry {
                rel_offset: (h.base_offset - self.base_offset) as u32,
                position: position as u32,
                max_ts_before: self.max_timestamp,
            });
            self.bytes_since_entry = 0;
        }
        let len = h.total_len() as u64;
        self.bytes_since_entry += len;
        self.size = position + len;
        self.next_offset = h.next_offset();
        self.max_timestamp = self.max_timestamp.max(h.max_timestamp);
    }

    /// Position from which to scan for `offset`: the last entry at or below it.
    pub fn lookup(&self, offset: i64) -> u64 {
        let rel = offset - self.base_offset;
        let i = self
            .entries
            .partition_point(|e| (e.rel_offset as i64) <= rel);
        if i == 0 {
            0
        } else {
            self.entries[i - 1].position as u64
        }
    }

    /// Position from which to scan for the first batch with max timestamp >= `ts`.
    pub fn lookup_time(&self, ts: i64) -> u64 {
        let i = self.entries.partition_point(|e| e.max_ts_before < ts);
        if i == 0 {
            0
        } else {
            self.entries[i - 1].position as u64
        }
    }

    pub fn offset_index_path(log_path: &Path) -> PathBuf {
        log_path.with_extension("index")
    }

    pub fn time_index_path(log_path: &Path) -> PathBuf {
        log_path.with_extension("timeindex")
    }

    fn trailer(&self, count: usize, body: &[u8]) -> Vec<u8> {
        let mut t = Vec::with_capacity(TRAILER_LEN);
        t.extend_from_slice(&TRAILER_MAGIC.to_le_bytes());
        t.extend_from_slice(&TRAILER_VERSION.to_le_bytes());
        t.extend_from_slice(&(count as u32).to_le_bytes());
        t.extend_from_slice(&0u32.to_le_bytes());
        t.extend_from_slice(&self.size.to_le_bytes());
        t.extend_from_slice(&self.next_offset.to_le_bytes());
        t.extend_from_slice(&self.max_timestamp.to_le_bytes());
        t.extend_from_slice(&self.bytes_since_entry.to_le_bytes());
        let crc = crc32c::crc32c_append(crc32c::crc32c(body), &t);
        t.extend_from_slice(&crc.to_le_bytes());
        t
    }

    /// Writes both index files of a sealed segment (synced: they are only a cache, but a synced one).
    pub fn write_files(&self, log_path: &Path) -> io::Result<()> {
        let mut offsets = Vec::with_capacity(self.entries.len() * OFFSET_ENTRY_LEN + TRAILER_LEN);
        let mut times = Vec::with_capacity(self.entries.len() * TIME_ENTRY_LEN + TRAILER_LEN);
        for e in &self.entries {
            offsets.extend_from_slice(&e.rel_offset.to_le_bytes());
            offsets.extend_from_slice(&e.position.to_le_bytes());
            times.extend_from_slice(&e.max_ts_before.to_le_bytes());
            times.extend_from_slice(&e.rel_offset.to_le_bytes());
        }
        let t = self.trailer(self.entries.len(), &offsets);
        offsets.extend_from_slice(&t);
        let t = self.trailer(self.entries.len(), &times);
        times.extend_from_slice(&t);
        for (path, data) in [
            (Self::offset_index_path(log_path), offsets),
            (Self::time_index_path(log_path), times),
        ] {
            let mut f = std::fs::File::create(&path)?;
            f.write_all(&data)?;
            f.sync_data()?;
        }
        Ok(())
    }

    /// Removes both index files (missing files are fine).
    pub fn remove_files(log_path: &Path) -> io::Result<()> {
        for p in [
            Self::offset_index_path(log_path),
            Self::time_index_path(log_path),
        ] {
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Loads the index files of a sealed segment of `segment_size` bytes; None if missing, damaged or
    /// describing another version of the segment.
    pub fn load(log_path: &Path, base_offset: i64, segment_size: u64) -> Option<SegmentIndex> {
        let offsets = std::fs::read(Self::offset_index_path(log_path)).ok()?;
        let times = std::fs::read(Self::time_index_path(log_path)).ok()?;
        let (count, summary) = parse_trailer(&offsets, OFFSET_ENTRY_LEN)?;
        let (tcount, tsummary) = parse_trailer(&times, TIME_ENTRY_LEN)?;
        if count != tcount || summary != tsummary || summary.0 != segment_size {
            return None;
        }
        let (size, next_offset, max_timestamp, bytes_since_entry) = summary;
        let mut entries = Vec::with_capacity(count);
        let mut prev: Option<IndexEntry> = None;
        for i in 0..count {
            let o = &offsets[i * OFFSET_ENTRY_LEN..(i + 1) * OFFSET_ENTRY_LEN];
            let t = &times[i * TIME_ENTRY_LEN..(i + 1) * TIME_ENTRY_LEN];
            let rel_offset = u32::from_le_bytes(o[0..4].try_into().ok()?);
            let position = u32::from_le_bytes(o[4..8].try_into().ok()?);
            let max_ts_before = i64::from_le_bytes(t[0..8].try_into().ok()?);
            let trel = u32::from_le_bytes(t[8..12].try_into().ok()?);
            let e = IndexEntry {
                rel_offset,
                position,
                max_ts_before,
            };
            let monotonic = prev.is_none_or(|p| {
                p.rel_offset < rel_offset
                    && p.position < position
                    && p.max_ts_before <= max_ts_before
            });
            if trel != rel_offset || position as u64 >= size || !monotonic {
                return None;
            }
            entries.push(e);
            prev = Some(e);
        }
        if next_offset < base_offset {
            return None;
        }
        Some(SegmentIndex {
            base_offset,
            entries,
            next_offset,
            max_timestamp,
            size,
            bytes_since_entry,
        })
    }
}

type Summary = (u64, i64, i64, u64);

fn parse_trailer(data: &[u8], entry_len: usize) -> Option<(usize, Summary)> {
    if data.len() < TRAILER_LEN {
        return None;
    }
    let (body, t) = data.split_at(data.len() - TRAILER_LEN);
    let u32_at = |at: usize| u32::from_le_bytes(t[at..at + 4].try_into().unwrap_or([0; 4]));
    let u64_at = |at: usize| u64::from_le_bytes(t[at..at + 8].try_into().unwrap_or([0; 8]));
    if u32_at(0) != TRAILER_MAGIC || u32_at(4) != TRAILER_VERSION {
        return None;
    }
    let count = u32_at(8) as usize;
    if body.len() != count.checked_mul(entry_len)? {
        return None;
    }
    let crc = crc32c::crc32c_append(crc32c::crc32c(body), &t[..TRAILER_LEN - 4]);
    if crc != u32_at(TRAILER_LEN - 4) {
        return None;
    }
    Some((
        count,
        (u64_at(16), u64_at(24) as i64, u64_at(32) as i64, u64_at(40)),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::batch::{build_test_batch, patch_offsets, validate_frame};

    fn index_of(n: i64) -> SegmentIndex {
        let mut idx = SegmentIndex::new(100);
        let mut pos = 0u64;
        for i in 0..n {
            let mut b = build_test_batch(0, 2, 1000 + i, &[0u8; 100]);
            patch_offsets(&mut b, 100 + 2 * i, 0);
            let h = validate_frame(&b).unwrap();
            idx.note_batch(&h, pos, 512);
            pos += b.len() as u64;
        }
        idx
    }

    #[test]
    fn lookups_land_at_or_before_target() {
        let idx = index_of(50);
        assert!(!idx.entries.is_empty());
        assert_eq!(idx.lookup(100), 0);
        for e in &idx.entries {
            let off = 100 + e.rel_offset as i64;
            assert_eq!(idx.lookup(off), e.position as u64);
            assert_eq!(idx.lookup(off + 1), e.position as u64);
        }
        assert_eq!(idx.next_offset, 200);
        assert_eq!(idx.max_timestamp, 1049);
        assert!(idx.lookup_time(1049) <= idx.lookup(198));
    }

    #[test]
    fn files_round_trip_and_damage_is_detected() {
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let log = dir.path().join("00000000000000000100.log");
        let idx = index_of(50);
        idx.write_files(&log).unwrap();
        let loaded = SegmentIndex::load(&log, 100, idx.size).unwrap();
        assert_eq!(loaded.entries, idx.entries);
        assert_eq!(loaded.next_offset, idx.next_offset);
        assert!(SegmentIndex::load(&log, 100, idx.size + 1).is_none());
        let p = SegmentIndex::offset_index_path(&log);
        let mut data = std::fs::read(&p).unwrap();
        data[3] ^= 1;
        std::fs::write(&p, &data).unwrap();
        assert!(SegmentIndex::load(&log, 100, idx.size).is_none());
        SegmentIndex::remove_files(&log).unwrap();
        assert!(SegmentIndex::load(&log, 100, idx.size).is_none());
    }
}
