//! Log compaction (`cleanup.policy=compact`): keeps the latest record of every key.
//!
//! Kafka's LogCleaner, per partition log: the part of the log below the cleanable end (sealed
//! segments only, below the high watermark, older than `min.compaction.lag.ms`) is split at the
//! cleaner checkpoint into a clean head (cleaned before) and a dirty part. A pass builds the map
//! key -> latest offset over the dirty part (`key_map`, bounded in memory), then rewrites every
//! cleanable segment keeping only what `decide` says to keep, and swaps the rewritten segments in
//! crash-safely (`swap`). Offsets are kept: a compacted log has gaps.
//!
//! Modules: `records` (the records of a batch), `codec` (bounded decompression, recompression),
//! `decide` (the pure keep/remove rules), `key_map`, `rewrite` (a batch without its removed
//! records), `throttle` (the cleaner's I/O budget), `clean` (a pass, the I/O), `swap` (replacing
//! segments and finishing an interrupted replacement at recovery), `checkpoint`.

mod checkpoint;
mod clean;
pub mod codec;
mod decide;
mod key_map;
pub mod records;
mod rewrite;
pub mod swap;
pub mod throttle;

pub use checkpoint::{load as checkpoint_load, FILE_NAME as CHECKPOINT_FILE};

pub use throttle::IoThrottle;

/// The most a compressed batch may expand to when the log reads its records (a peer's batch that
/// claims more is refused, not decompressed).
pub const MAX_DECOMPRESSED_BYTES: usize = 64 << 20;

/// What a cleaner pass may use.
pub struct CleanerLimits<'a> {
    /// Memory for the key map (`log.cleaner.dedupe.buffer.size` per cleaner); a dirty part with
    /// more keys is cleaned in several passes.
    pub dedupe_buffer_bytes: usize,
    /// Bytes per second the cleaner may read plus write (`log.cleaner.io.max.bytes.per.second`).
    pub throttle: &'a IoThrottle,
}

/// How much of a log a pass could clean (`PartitionLog::cleanable`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Cleanable {
    /// Bytes of the sealed segments below the cleanable end.
    pub cleanable_bytes: u64,
    /// Of those, the bytes at or above the cleaner checkpoint.
    pub dirty_bytes: u64,
    /// `max.compaction.lag.ms` has passed for the oldest dirty segment: clean whatever the ratio.
    pub overdue: bool,
}

impl Cleanable {
    /// dirty / cleanable (0 when there is nothing cleanable).
    pub fn dirty_ratio(&self) -> f64 {
        if self.cleanable_bytes == 0 {
            0.0
        } else {
            self.dirty_bytes as f64 / self.cleanable_bytes as f64
        }
    }
}

/// What a pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CleanStats {
    /// Segments read and replaced.
    pub segments_in: usize,
    /// Segments written in their place.
    pub segments_out: usize,
    pub bytes_read: u64,
    pub bytes_written: u64,
    /// Dirty bytes this pass covered (the key map's range).
    pub dirty_bytes: u64,
    pub records_kept: u64,
    pub records_removed: u64,
    /// The new cleaner checkpoint: everything below is clean.
    pub clean_end: i64,
}
