//! The log cleaner of one shard (Kafka's LogCleaner, one per shard instead of a thread pool):
//! every `log.cleaner.backoff.ms` it asks each compacted log of the shard how much it could
//! clean, cleans the filthiest one, and goes on at once while any log has work; it sleeps the
//! backoff once none has. All passes of a shard share one I/O budget
//! (`log.cleaner.io.max.bytes.per.second`), so that compaction never takes the disk from produce,
//! and one key-map size (`log.cleaner.dedupe.buffer.size`).
//!
//! Which log next is `choose` (pure); which logs sit out for a while (after a failed pass, or a
//! pass that made no progress) is `Backoffs` (pure, time passed in). The pass itself is
//! `PartitionLog::clean`: below the high watermark only, sealed segments only.

use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use chronik_shards::log::compaction::{Cleanable, CleanerLimits, IoThrottle};
use chronik_shards::log::LogError;
use futures_lite::FutureExt;
use tracing::{debug, warn};

use super::PartitionKey;
use crate::server::shard::Shard;

/// `log.cleaner.io.max.bytes.per.second` when not configured, per shard: read plus write. Kafka's
/// default is unlimited; a fraction of what one disk sustains here (400-580 MiB/s of O_DIRECT
/// sequential writes) leaves the rest to produce.
pub const DEFAULT_IO_MAX_BYTES_PER_SECOND: u64 = 64 << 20;
/// `log.cleaner.dedupe.buffer.size` when not configured, per shard (Kafka's 128 MiB is for all
/// cleaner threads together, one thread by default; a shard is one cleaner).
pub const DEFAULT_DEDUPE_BUFFER_BYTES: usize = 32 << 20;
/// `log.cleaner.backoff.ms` when not configured (Kafka's default).
pub const DEFAULT_BACKOFF_MS: u64 = 15_000;
/// After a failed pass a log sits out this many backoffs, so that a log that cannot be cleaned
/// (a damaged batch, a full disk) neither floods the log nor starves the others.
const FAILED_PASS_BACKOFFS: u32 = 10;

/// The cleaner settings of one shard (`chronik start --log-cleaner-*`).
#[derive(Debug, Clone, PartialEq)]
pub struct CleanerSettings {
    /// `log.cleaner.enable`: false runs no cleaner (compacted topics then grow like others).
    pub enabled: bool,
    /// `log.cleaner.io.max.bytes.per.second`, per shard: read plus write.
    pub io_max_bytes_per_second: u64,
    /// `log.cleaner.dedupe.buffer.size`, per shard: the key map's memory.
    pub dedupe_buffer_bytes: usize,
    /// `log.cleaner.backoff.ms`: the sleep when no log needs cleaning.
    pub backoff: Duration,
}

impl Default for CleanerSettings {
    fn default() -> Self {
        CleanerSettings {
            enabled: true,
            io_max_bytes_per_second: DEFAULT_IO_MAX_BYTES_PER_SECOND,
            dedupe_buffer_bytes: DEFAULT_DEDUPE_BUFFER_BYTES,
            backoff: Duration::from_millis(DEFAULT_BACKOFF_MS),
        }
    }
}

/// Whether a log is worth a pass: it has dirty bytes, and either its dirty ratio reached its
/// `min.cleanable.dirty.ratio` or its oldest dirty record passed `max.compaction.lag.ms`
/// (Kafka's `grabFilthiestCompactedLog`, which compares with `>`; `min.cleanable.dirty.ratio`
/// is documented as a minimum, so a ratio equal to it qualifies here, and a log with nothing
/// dirty never does, or a ratio of 0 would clean an unchanged log forever).
pub fn worth_cleaning(cleanable: &Cleanable, min_ratio: f64) -> bool {
    cleanable.dirty_bytes > 0 && (cleanable.overdue || cleanable.dirty_ratio() >= min_ratio)
}

/// The log to clean next: among those worth a pass, the one with the highest dirty ratio (as
/// Kafka); equal ratios go to the lowest key, so that the choice does not depend on the order
/// of `candidates`.
pub fn choose<K: Ord + Copy>(candidates: &[(K, Cleanable, f64)]) -> Option<K> {
    candidates
        .iter()
        .filter(|(_, cleanable, min_ratio)| worth_cleaning(cleanable, *min_ratio))
        .max_by(|(ka, a, _), (kb, b, _)| {
            a.dirty_ratio()
                .total_cmp(&b.dirty_ratio())
                .then_with(|| kb.cmp(ka))
        })
        .map(|(key, _, _)| *key)
}

/// The logs sitting out until a given time.
#[derive(Debug)]
pub struct Backoffs<K> {
    until: HashMap<K, Instant>,
}

impl<K> Default for Backoffs<K> {
    fn default() -> Self {
        Backoffs {
            until: HashMap::new(),
        }
    }
}

impl<K: std::hash::Hash + Eq + Copy> Backoffs<K> {
    /// Whether `key` may be cleaned at `now`.
    pub fn ready(&self, key: &K, now: Instant) -> bool {
        self.until.get(key).is_none_or(|until| now >= *until)
    }

    /// `key` sits out until `now + wait`.
    pub fn hold(&mut self, key: K, now: Instant, wait: Duration) {
        self.until.insert(key, now + wait);
    }

    /// Forgets the holds that ended by `now` (and so the logs that are gone, once theirs end).
    pub fn expire(&mut self, now: Instant) {
        self.until.retain(|_, until| now < *until);
    }
}

/// Runs the shard's cleaner until shutdown. A pass that shutdown interrupts is dropped: the
/// log's `clean` does its file changes so that dropping it between awaits is safe.
pub async fn run(shard: Rc<Shard>, settings: CleanerSettings) {
    if !settings.enabled {
        return;
    }
    let throttle = IoThrottle::new(settings.io_max_bytes_per_second as f64);
    let limits = CleanerLimits {
        dedupe_buffer_bytes: settings.dedupe_buffer_bytes,
        throttle: &throttle,
    };
    let mut backoffs = Backoffs::default();
    loop {
        let now = Instant::now();
        backoffs.expire(now);
        let worked = match next_log(&shard, &backoffs, now) {
            Some(partition) => {
                let outcome = async { Some(pass(&partition, &limits).await) }
                    .or(async {
                        shard.shutdown.wait().await;
                        None
                    })
                    .await;
                match outcome {
                    None => return,
                    Some(Ok(progressed)) => {
                        if !progressed {
                            // Nothing came of it (what made the log look dirty was not
                            // cleanable after all): do not pick it again at once.
                            backoffs.hold(partition.key, Instant::now(), settings.backoff);
                        }
                    }
                    Some(Err(e)) => {
                        match e {
                            // Closed or deleted under the pass: the partition is going away.
                            LogError::Closed => debug!(
                                topic = %partition.topic,
                                partition = partition.index,
                                "cleaner pass ended: the log closed"
                            ),
                            e => warn!(
                                topic = %partition.topic,
                                partition = partition.index,
                                "cleaner pass failed (retrying in {:?}): {e}",
                                settings.backoff * FAILED_PASS_BACKOFFS
                            ),
                        }
                        backoffs.hold(
                            partition.key,
                            Instant::now(),
                            settings.backoff * FAILED_PASS_BACKOFFS,
                        );
                    }
                }
                true
            }
            None => false,
        };
        if worked {
            glommio::yield_if_needed().await;
        } else if !super::sync::tick(&shard.shutdown, settings.backoff).await {
            return;
        }
    }
}

/// The wall clock in ms: compaction lags and tombstone retention compare record timestamps,
/// which are dates (as retention does).
fn wall_now_ms() -> i64 {
    i64::try_from(crate::replication::clock::wall_ms()).unwrap_or(i64::MAX)
}

/// The filthiest log of the shard that is not sitting out, if any is worth a pass.
fn next_log(
    shard: &Shard,
    backoffs: &Backoffs<PartitionKey>,
    now: Instant,
) -> Option<Rc<super::Partition>> {
    let now_ms = wall_now_ms();
    let partitions: HashMap<PartitionKey, Rc<super::Partition>> = shard
        .partitions
        .all()
        .into_iter()
        .filter(|p| backoffs.ready(&p.key, now))
        .map(|p| (p.key, p))
        .collect();
    let candidates: Vec<(PartitionKey, Cleanable, f64)> = partitions
        .values()
        .filter_map(|p| {
            let cleanable = p.log.cleanable(p.high_watermark(), now_ms)?;
            let min_ratio = p.log.compaction_config().min_cleanable_dirty_ratio;
            Some((p.key, cleanable, min_ratio))
        })
        .collect();
    let key = choose(&candidates)?;
    partitions.get(&key).cloned()
}

/// One pass over `partition`'s log; true if it cleaned something.
async fn pass(partition: &super::Partition, limits: &CleanerLimits<'_>) -> Result<bool, LogError> {
    let stats = partition
        .log
        .clean(partition.high_watermark(), wall_now_ms(), limits)
        .await?;
    debug!(
        topic = %partition.topic,
        partition = partition.index,
        segments_in = stats.segments_in,
        segments_out = stats.segments_out,
        bytes_read = stats.bytes_read,
        bytes_written = stats.bytes_written,
        records_kept = stats.records_kept,
        records_removed = stats.records_removed,
        clean_end = stats.clean_end,
        "cleaner pass"
    );
    Ok(stats.dirty_bytes > 0 || stats.segments_in > 0)
}

#[cfg(test)]
#[path = "cleaner_tests.rs"]
mod tests;
