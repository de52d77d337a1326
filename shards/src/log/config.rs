//! Per-partition log configuration (the topic configs that shape storage).

/// When an append counts as durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlushPolicy {
    /// Default. An append counts as durable once an fdatasync covering it completed (group commit).
    Always,
    /// Appends count as durable once written to the file (O_DIRECT write completed); fdatasync every N ms.
    /// A crash of the machine (not of the process) can lose up to N ms of acknowledged data.
    IntervalMs(u64),
    /// Appends count as durable as soon as they are buffered in memory; written out in the background,
    /// never fdatasync'ed explicitly (page-cache-like: a crash of the process or of the machine can lose
    /// recent acknowledged data). Only for data that can be regenerated.
    Never,
}

/// Kafka's default `producer.id.expiration.ms`: one day.
pub const DEFAULT_PRODUCER_ID_EXPIRATION_MS: i64 = 24 * 3600 * 1000;

/// Storage configuration of one partition log; see the topic config named beside each field.
#[derive(Clone, Debug)]
pub struct LogConfig {
    /// `segment.bytes`: a segment is rolled before it would grow past this.
    pub segment_bytes: u64,
    /// `segment.ms`: a segment is rolled once its first append is this old (wall clock).
    pub segment_ms: Option<u64>,
    /// `flush=always` | `flush.ms=N` | `flush=never`.
    pub flush: FlushPolicy,
    /// `retention.ms`; None keeps data forever.
    pub retention_ms: Option<i64>,
    /// `retention.bytes`; None is unlimited.
    pub retention_bytes: Option<u64>,
    /// `index.interval.bytes`: bytes of batches between two sparse index entries.
    pub index_interval_bytes: u32,
    /// Budget of the in-memory tail of recent batches (unflushed batches are always kept on top of it).
    pub tail_cache_bytes: usize,
    /// `max.message.bytes`: the largest batch accepted.
    pub max_batch_bytes: usize,
    /// `producer.id.expiration.ms`: an idempotent producer idle this long is forgotten.
    pub producer_id_expiration_ms: i64,
    /// `cleanup.policy` includes `compact`: the cleaner keeps the latest record of every key, and
    /// records without a key are refused. (Whether `delete` applies is `retention_ms`/`retention_bytes`.)
    pub compact: bool,
    /// The compaction topic configs (used when `compact`).
    pub compaction: CompactionConfig,
}

/// Kafka's compaction topic configs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CompactionConfig {
    /// `min.cleanable.dirty.ratio`: a log is cleaned once its dirty bytes are at least this share of
    /// its cleanable bytes.
    pub min_cleanable_dirty_ratio: f64,
    /// `min.compaction.lag.ms`: a segment holding a record younger than this is not cleaned yet.
    pub min_compaction_lag_ms: i64,
    /// `max.compaction.lag.ms`: a log whose oldest dirty record is older than this is cleaned
    /// whatever its dirty ratio (and its active segment rolls by then, so that it can be).
    pub max_compaction_lag_ms: i64,
    /// `delete.retention.ms`: a tombstone is removed once the segment holding it is this old.
    pub delete_retention_ms: i64,
}

impl Default for CompactionConfig {
    fn default() -> Self {
        CompactionConfig {
            min_cleanable_dirty_ratio: 0.5,
            min_compaction_lag_ms: 0,
            max_compaction_lag_ms: i64::MAX,
            delete_retention_ms: 24 * 3600 * 1000,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 1 << 30,
            segment_ms: Some(7 * 24 * 3600 * 1000),
            flush: FlushPolicy::Always,
            retention_ms: Some(7 * 24 * 3600 * 1000),
            retention_bytes: None,
            index_interval_bytes: 4096,
            tail_cache_bytes: 4 << 20,
            max_batch_bytes: (1 << 20) + 12 + 1024,
            producer_id_expiration_ms: DEFAULT_PRODUCER_ID_EXPIRATION_MS,
            compact: false,
            compaction: CompactionConfig::default(),
        }
    }
}
