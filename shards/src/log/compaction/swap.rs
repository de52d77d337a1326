//! Replacing cleaned segments, crash-safely (Kafka's `.cleaned` -> `.swap` -> rename dance).
//!
//! A pass writes the rewritten group of segments `[first, ...]` to `<first>.log.cleaned` and syncs
//! it. Then, under the log's exclusive lock and off the reactor:
//! 1. rename `.cleaned` -> `<first>-<end>.log.swap` (`end`: where the group's offsets end), fsync
//!    the directory: the commit point. Before it a
//!    crash leaves the old segments (recovery deletes the `.cleaned` file); after it, the new one.
//! 2. remove the old segments' index files and every old segment file but `<first>.log`;
//! 3. rename `<first>.log.swap` -> `<first>.log` (atomic: the old file or the new, never neither);
//! 4. write the new index files, fsync the directory.
//!
//! Recovery (`finish_interrupted`) completes what step 1 committed: for every `<X>.log.swap` it
//! removes the segment files whose base lies in `[X, end of the swap file)` (exactly the group's,
//! since segments after the group start at or after its end) and renames the swap file over
//! `<X>.log`. A group whose last segments lost every batch leaves those segments in place if the
//! crash came before step 2 finished: their records are older versions the swap file supersedes,
//! still in offset order, so the log stays consistent and the next pass removes them.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::log::index::SegmentIndex;
use crate::log::segment;

const CLEANED: &str = ".log.cleaned";
const SWAP: &str = ".log.swap";

/// Fault injection for the crash tests: sleep this long between the steps of a replacement, so
/// that a SIGKILL lands inside one.
const SLOW_SWAP_ENV: &str = "CHRONIK_FAULT_SLOW_CLEANER_SWAP_MS";

pub fn cleaned_path(dir: &Path, base: i64) -> PathBuf {
    dir.join(format!("{base:020}{CLEANED}"))
}

fn swap_path(dir: &Path, base: i64, end: i64) -> PathBuf {
    dir.join(format!("{base:020}-{end:020}{SWAP}"))
}

/// (first, end) from a swap file's name.
fn parse_swap(name: &str) -> Option<(i64, i64)> {
    let (first, end) = name.strip_suffix(SWAP)?.split_once('-')?;
    let num = |s: &str| {
        (s.len() == 20 && s.bytes().all(|c| c.is_ascii_digit()))
            .then(|| s.parse::<i64>().ok())
            .flatten()
    };
    Some((num(first)?, num(end)?))
}

fn parse_base(name: &str, suffix: &str) -> Option<i64> {
    let stem = name.strip_suffix(suffix)?;
    (stem.len() == 20 && stem.bytes().all(|c| c.is_ascii_digit()))
        .then(|| stem.parse().ok())
        .flatten()
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

fn remove_if_present(p: &Path) -> io::Result<()> {
    match std::fs::remove_file(p) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn pause() {
    if let Some(ms) = std::env::var(SLOW_SWAP_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        std::thread::sleep(Duration::from_millis(ms));
    }
}

/// The steps of one replacement of the segments `old_bases`, whose offsets end at `end` (the next
/// segment's base), in order; `stop_after` (tests) stops after that many, as a crash would.
/// Blocking: run it off the reactor, under the log's exclusive lock.
pub fn replace(
    dir: &Path,
    old_bases: &[i64],
    end: i64,
    new_index: &SegmentIndex,
    stop_after: Option<usize>,
) -> io::Result<()> {
    let Some(&first) = old_bases.first() else {
        return Ok(());
    };
    let target = dir.join(segment::log_file_name(first));
    let allowed = stop_after.unwrap_or(usize::MAX);
    // 1. The commit point.
    std::fs::rename(cleaned_path(dir, first), swap_path(dir, first, end))?;
    sync_dir(dir)?;
    if allowed <= 1 {
        return Ok(());
    }
    pause();
    // 2. The old segments go (their indexes first: an index never outlives its segment).
    for (i, &base) in old_bases.iter().enumerate() {
        let path = dir.join(segment::log_file_name(base));
        SegmentIndex::remove_files(&path)?;
        if i > 0 {
            remove_if_present(&path)?;
        }
        if allowed <= 2 + i {
            return Ok(());
        }
    }
    pause();
    // 3. The new segment takes the first one's name.
    std::fs::rename(swap_path(dir, first, end), &target)?;
    if allowed <= 2 + old_bases.len() {
        return Ok(());
    }
    // 4. Its indexes, and the directory.
    new_index.write_files(&target)?;
    sync_dir(dir)
}

/// At open, before the segments are listed: deletes unfinished `.cleaned` files and completes every
/// committed replacement (`.swap` file). Blocking.
pub fn finish_interrupted(dir: &Path) -> io::Result<()> {
    let mut swaps = Vec::new();
    let mut logs = Vec::new();
    let mut changed = false;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if parse_base(name, CLEANED).is_some() {
            tracing::info!(file = ?entry.path(), "removing an unfinished cleaned segment");
            std::fs::remove_file(entry.path())?;
            changed = true;
        } else if let Some(range) = parse_swap(name) {
            swaps.push(range);
        } else if let Some(base) = segment::parse_log_file_name(name) {
            logs.push(base);
        }
    }
    for (first, end) in swaps {
        let swap = swap_path(dir, first, end);
        tracing::info!(file = ?swap, "completing an interrupted segment replacement");
        for &base in logs
            .iter()
            .filter(|&&b| b >= first && b < end.max(first + 1))
        {
            let path = dir.join(segment::log_file_name(base));
            SegmentIndex::remove_files(&path)?;
            if base != first {
                remove_if_present(&path)?;
            }
        }
        std::fs::rename(&swap, dir.join(segment::log_file_name(first)))?;
        changed = true;
    }
    if changed {
        sync_dir(dir)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::batch::{self, build_test_batch};

    /// Segment files of batches (base offset, record count), back to back.
    fn segment_bytes(batches: &[(i64, i32)]) -> Vec<u8> {
        batches
            .iter()
            .flat_map(|&(base, n)| build_test_batch(base, n, 5, &[base as u8; 7]))
            .collect()
    }

    fn logs(dir: &Path) -> Vec<(String, Vec<u8>)> {
        let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap())
            .map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                (name, std::fs::read(e.path()).unwrap())
            })
            .filter(|(n, _)| !n.ends_with("index"))
            .collect();
        out.sort();
        out
    }

    /// A crash after every step of a replacement, then recovery: the directory holds exactly the
    /// old segments or exactly the new one (and the segment after the group, untouched), never a
    /// mix, never a gap, no `.cleaned` or `.swap` file left.
    #[test]
    fn a_crash_at_any_step_leaves_the_old_segments_or_the_new_one() {
        let old = [
            (0, segment_bytes(&[(0, 2), (2, 3)])),
            (5, segment_bytes(&[(5, 1), (6, 4)])),
            (10, segment_bytes(&[(10, 2)])),
        ];
        let after = (12, segment_bytes(&[(12, 1)]));
        // The cleaned group keeps batches 2 and 6 only (offsets kept, gaps between).
        let cleaned = segment_bytes(&[(2, 3), (6, 4)]);
        let mut index = SegmentIndex::new(0);
        let mut pos = 0;
        for (b, n) in [(2i64, 3i32), (6, 4)] {
            let frame = build_test_batch(b, n, 5, &[b as u8; 7]);
            let h = batch::validate_frame(&frame).unwrap();
            index.note_batch(&h, pos, 4096);
            pos += frame.len() as u64;
        }
        let bases: Vec<i64> = old.iter().map(|(b, _)| *b).collect();
        for stop in 0..=(2 + old.len() + 1) {
            let tmp = tempfile::tempdir().unwrap();
            let dir = tmp.path();
            for (base, bytes) in old.iter().chain([&after]) {
                std::fs::write(dir.join(segment::log_file_name(*base)), bytes).unwrap();
            }
            let before = logs(dir);
            std::fs::write(cleaned_path(dir, 0), &cleaned).unwrap();
            if stop > 0 {
                replace(dir, &bases, after.0, &index, Some(stop)).unwrap();
            }
            finish_interrupted(dir).unwrap();
            let got = logs(dir);
            let new = vec![
                (segment::log_file_name(0), cleaned.clone()),
                (segment::log_file_name(after.0), after.1.clone()),
            ];
            if stop == 0 {
                assert_eq!(
                    got, before,
                    "a crash before the commit point keeps the old ones"
                );
            } else {
                assert_eq!(got, new, "a crash after step {stop} completes the new one");
            }
        }
    }
}
