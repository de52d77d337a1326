//! Replacing cleaned segments, crash-safely (Kafka's `.cleaned` -> `.swap` -> rename dance).
//!
//! A pass writes the rewritten group of segments `[first, ...]` to `<first>.log.cleaned` and syncs
//! it. Then, under the log's exclusive lock and off the reactor:
//! 1. rename `.cleaned` -> `<first>.log.swap`, fsync the directory: the commit point. Before it a
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

use crate::log::batch;
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

fn swap_path(dir: &Path, base: i64) -> PathBuf {
    dir.join(format!("{base:020}{SWAP}"))
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

/// The steps of one replacement, in order; `stop_after` (tests) stops after that many, as a crash
/// would. Blocking: run it off the reactor, under the log's exclusive lock.
pub fn replace(
    dir: &Path,
    old_bases: &[i64],
    new_index: &SegmentIndex,
    stop_after: Option<usize>,
) -> io::Result<()> {
    let Some(&first) = old_bases.first() else {
        return Ok(());
    };
    let target = dir.join(segment::log_file_name(first));
    let allowed = stop_after.unwrap_or(usize::MAX);
    // 1. The commit point.
    std::fs::rename(cleaned_path(dir, first), swap_path(dir, first))?;
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
    std::fs::rename(swap_path(dir, first), &target)?;
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
        } else if let Some(base) = parse_base(name, SWAP) {
            swaps.push(base);
        } else if let Some(base) = segment::parse_log_file_name(name) {
            logs.push(base);
        }
    }
    for first in swaps {
        let swap = swap_path(dir, first);
        let end = end_offset(&swap)?.unwrap_or(first);
        tracing::info!(file = ?swap, end, "completing an interrupted segment replacement");
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

/// The offset after the last batch of a (complete, synced) swap file; None when it holds none.
fn end_offset(path: &Path) -> io::Result<Option<i64>> {
    let file = std::fs::File::open(path)?;
    if file.metadata()?.len() == 0 {
        return Ok(None);
    }
    // SAFETY: the swap file is ours and nothing writes it any more; mapped read-only.
    let map = unsafe { memmap2::Mmap::map(&file)? };
    let mut pos = 0;
    let mut end = None;
    while pos < map.len() {
        match batch::validate_frame(&map[pos..]) {
            Ok(h) => {
                end = Some(h.next_offset());
                pos += h.total_len();
            }
            Err(f) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("swap file {} at {pos}: {f}", path.display()),
                ))
            }
        }
    }
    Ok(end)
}
