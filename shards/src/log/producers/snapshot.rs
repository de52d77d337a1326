//! Producer-state snapshots: `<offset, 20 digits>.snapshot` holds the producer table as it stood
//! with every batch below `offset` applied (Kafka's `<offset>.snapshot` files). One is taken when a
//! segment rolls and written once the segment before it is sealed (so every batch it covers is
//! durable); recovery and truncation start from the newest one at or below where they need the
//! state, instead of replaying the whole log. A file that fails its checksum is ignored: the state
//! is then replayed from an older snapshot or the log start, never guessed.
//!
//! Format (big-endian): magic `CHPS` | version u16 | offset i64 | producers u32 | per producer:
//! id i64, epoch i16, last timestamp i64, batches u8, per batch: first seq i32, last seq i32, base
//! offset i64, last offset i64 | CRC32C u32 of everything before it.

use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};

use super::{BatchMetadata, ProducerEntry, ProducerTable, BATCHES_RETAINED};

const MAGIC: &[u8; 4] = b"CHPS";
const VERSION: u16 = 1;
const SUFFIX: &str = ".snapshot";

pub fn file_name(offset: i64) -> String {
    format!("{offset:020}{SUFFIX}")
}

fn parse_file_name(name: &str) -> Option<i64> {
    let stem = name.strip_suffix(SUFFIX)?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

/// The snapshot offsets in `dir`, ascending.
pub fn list(dir: &Path) -> io::Result<Vec<i64>> {
    let mut offsets = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if let Some(offset) = entry.file_name().to_str().and_then(parse_file_name) {
            offsets.push(offset);
        }
    }
    offsets.sort_unstable();
    Ok(offsets)
}

pub fn path(dir: &Path, offset: i64) -> PathBuf {
    dir.join(file_name(offset))
}

pub fn encode(table: &ProducerTable, offset: i64) -> Vec<u8> {
    let entries = table.entries();
    let mut out = Vec::with_capacity(22 + entries.len() * (19 + BATCHES_RETAINED * 24) + 4);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_be_bytes());
    out.extend_from_slice(&offset.to_be_bytes());
    out.extend_from_slice(&(entries.len() as u32).to_be_bytes());
    for (id, entry) in entries {
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&entry.epoch.to_be_bytes());
        out.extend_from_slice(&entry.last_timestamp.to_be_bytes());
        out.push(entry.batches.len() as u8);
        for b in &entry.batches {
            out.extend_from_slice(&b.first_seq.to_be_bytes());
            out.extend_from_slice(&b.last_seq.to_be_bytes());
            out.extend_from_slice(&b.base_offset.to_be_bytes());
            out.extend_from_slice(&b.last_offset.to_be_bytes());
        }
    }
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

/// Reads fixed-size big-endian fields, failing (None) past the end.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.bytes.split_first_chunk::<N>()?;
        self.bytes = rest;
        Some(*head)
    }
    fn i64(&mut self) -> Option<i64> {
        self.take().map(i64::from_be_bytes)
    }
    fn i32(&mut self) -> Option<i32> {
        self.take().map(i32::from_be_bytes)
    }
    fn i16(&mut self) -> Option<i16> {
        self.take().map(i16::from_be_bytes)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take::<1>().map(|[b]| b)
    }
}

/// The (offset, table) of a snapshot's bytes; None if they are not a whole, sound snapshot.
pub fn decode(bytes: &[u8]) -> Option<(i64, ProducerTable)> {
    let (body, crc) = bytes.split_last_chunk::<4>()?;
    if crc32c::crc32c(body) != u32::from_be_bytes(*crc) {
        return None;
    }
    let mut r = Reader { bytes: body };
    if &r.take::<4>()? != MAGIC || u16::from_be_bytes(r.take()?) != VERSION {
        return None;
    }
    let offset = r.i64()?;
    let count = u32::from_be_bytes(r.take()?);
    let mut table = ProducerTable::default();
    for _ in 0..count {
        let id = r.i64()?;
        let epoch = r.i16()?;
        let last_timestamp = r.i64()?;
        let n = r.u8()? as usize;
        if n == 0 || n > BATCHES_RETAINED {
            return None;
        }
        let mut batches = VecDeque::with_capacity(n);
        for _ in 0..n {
            batches.push_back(BatchMetadata {
                first_seq: r.i32()?,
                last_seq: r.i32()?,
                base_offset: r.i64()?,
                last_offset: r.i64()?,
            });
        }
        table.insert(
            id,
            ProducerEntry {
                epoch,
                batches,
                last_timestamp,
            },
        );
    }
    if !r.bytes.is_empty() {
        return None;
    }
    Some((offset, table))
}

/// Writes the snapshot of `table` at `offset`: a temporary file, synced, then renamed. Synced
/// because retention may delete the segments it covers right after (syncing the directory, which
/// makes the rename durable too): a snapshot lost then would forget the producers that only those
/// segments carried. Once per segment roll.
pub fn write(dir: &Path, table: &ProducerTable, offset: i64) -> io::Result<()> {
    write_encoded(dir, offset, &encode(table, offset))
}

/// [`write`] of a snapshot already encoded (`encode(table, offset)`), so the bytes can be moved to
/// another thread without the table.
pub fn write_encoded(dir: &Path, offset: i64, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let final_path = path(dir, offset);
    let tmp = final_path.with_extension("snapshot.tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_data()?;
    drop(file);
    std::fs::rename(&tmp, &final_path)
}

/// The newest sound snapshot at or below `at_most`, with its offset.
pub fn load_newest(dir: &Path, at_most: i64) -> io::Result<Option<(i64, ProducerTable)>> {
    for offset in list(dir)?.into_iter().rev().filter(|&o| o <= at_most) {
        match std::fs::read(path(dir, offset)) {
            Ok(bytes) => match decode(&bytes) {
                Some((stored, table)) if stored == offset => return Ok(Some((offset, table))),
                _ => tracing::warn!(dir = ?dir, offset, "ignoring a damaged producer snapshot"),
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            // An unreadable snapshot is skipped like a damaged one: an older one, or the log,
            // gives the same state.
            Err(e) => {
                tracing::warn!(dir = ?dir, offset, error = %e, "cannot read a producer snapshot")
            }
        }
    }
    Ok(None)
}

/// Removes the snapshots above `above` (a truncation cut the batches they cover) and those below
/// `log_start`, except the newest of these. Every snapshot from the log start on is kept, one per
/// rolled segment as in Kafka: once retention has deleted the segments that carried a producer's
/// batches, a snapshot at or below a truncation's cut is the only place its state is left, so a cut
/// below the newest few must still find one (a replay from the log start would forget it).
pub fn prune(dir: &Path, log_start: i64, above: i64) -> io::Result<()> {
    let offsets = list(dir)?;
    let floor = offsets
        .iter()
        .rev()
        .find(|&&o| o <= log_start && o <= above)
        .copied();
    for offset in offsets {
        let keep = offset <= above && (offset >= log_start || Some(offset) == floor);
        if !keep {
            match std::fs::remove_file(path(dir, offset)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// Removes every snapshot (the log was emptied and restarted elsewhere).
pub fn remove_all(dir: &Path) -> io::Result<()> {
    prune(dir, i64::MAX, i64::MIN)
}
