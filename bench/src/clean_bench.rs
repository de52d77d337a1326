//! `chronik bench clean`: the log cleaner's throughput against the raw disk, in one run on the same
//! disk.
//!
//! Each round writes a fresh compacted partition log of keyed batches (many updates per key, small
//! segments), durable, then times cleaner passes over everything cleanable with an unlimited I/O
//! budget, and reports the dirty bytes cleaned per second. Around each clean, one round of raw
//! O_DIRECT 1 MiB sequential writes (ending with fdatasync) of the same size measures the disk's
//! bandwidth at that moment; the ratio cleaner/raw is reported per round and as the median over
//! rounds (the disk of a shared virtual machine drifts by tens of percent within seconds).
//!
//! What the comparison means: a pass reads the dirty part twice (once to build the key map, once to
//! rewrite it) and writes what it keeps, so a cleaner that is disk-bound cleans at about half the
//! disk's bandwidth when few records survive; well below that, the pass is CPU-bound.

use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use chronik_shards::log::compaction::{CleanStats, CleanerLimits, IoThrottle};
use chronik_shards::log::{LogConfig, LogError, PartitionLog};
use kafka_protocol::records::Compression;

use crate::batch::{keyed_batch, Layout};
use crate::floor::{self, bandwidth};

#[derive(Debug, clap::Args)]
pub struct CleanBenchArgs {
    /// Directory on the disk under test (the broker's data disk, not tmpfs); a scratch
    /// subdirectory is created and removed.
    #[arg(long)]
    pub dir: PathBuf,
    /// MiB of keyed batches written (and then cleaned) per round.
    #[arg(long, default_value_t = 512)]
    pub mib: u64,
    /// Rounds (a fresh log each); the ratio's median is over them.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Distinct keys: the records written update these keys over and over.
    #[arg(long, default_value_t = 10_000)]
    pub keys: u32,
    /// Value bytes per record (random, incompressible, each record its own).
    #[arg(long, default_value_t = 1024)]
    pub value_bytes: usize,
    /// Records per batch.
    #[arg(long, default_value_t = 16)]
    pub batch_records: u32,
    /// `segment.bytes` of the log, MiB.
    #[arg(long, default_value_t = 16)]
    pub segment_mib: u64,
    /// The cleaner's key map memory (`log.cleaner.dedupe.buffer.size`), MiB.
    #[arg(long, default_value_t = 128)]
    pub dedupe_buffer_mib: usize,
    /// Batch compression: none, gzip, snappy, lz4 or zstd (the cleaner decompresses and
    /// recompresses what it rewrites).
    #[arg(long, default_value = "none", value_parser = parse_compression)]
    pub compression: Compression,
}

fn parse_compression(s: &str) -> Result<Compression, String> {
    match s {
        "none" => Ok(Compression::None),
        "gzip" => Ok(Compression::Gzip),
        "snappy" => Ok(Compression::Snappy),
        "lz4" => Ok(Compression::Lz4),
        "zstd" => Ok(Compression::Zstd),
        _ => Err(format!("unknown compression {s:?}")),
    }
}

/// Runs the clean bench; returns the process exit code.
pub fn main(args: &CleanBenchArgs) -> i32 {
    let scratch = args
        .dir
        .join(format!("chronik-clean-bench-{}", std::process::id()));
    let result = std::fs::create_dir_all(&scratch)
        .map_err(Into::into)
        .and_then(|()| measure(args, &scratch));
    let _ = std::fs::remove_dir_all(&scratch);
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("chronik bench clean: {e}");
            1
        }
    }
}

/// One round: the raw bandwidth around the clean, and what the clean did.
struct Round {
    raw: [(u64, Duration); 2],
    stats: CleanStats,
    passes: usize,
    clean_time: Duration,
    log_bytes: u64,
}

impl Round {
    fn raw_bandwidth(&self) -> f64 {
        bandwidth(self.raw)
    }

    /// Dirty bytes cleaned per second.
    fn clean_bandwidth(&self) -> f64 {
        self.stats.dirty_bytes as f64 / self.clean_time.as_secs_f64()
    }
}

fn mib(bytes: f64) -> f64 {
    bytes / f64::from(1 << 20)
}

fn measure(args: &CleanBenchArgs, scratch: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "chronik bench clean: dir {}, {} MiB per round, {} keys, {} B values, {} records/batch, \
         {} MiB segments, {:?}; load average {}",
        args.dir.display(),
        args.mib,
        args.keys,
        args.value_bytes,
        args.batch_records,
        args.segment_mib,
        args.compression,
        load.trim()
    );
    println!(
        "{:>5} {:>9} {:>9} {:>6} {:>9} {:>12} {:>12} {:>11} {:>11} {:>7}",
        "round",
        "log MiB",
        "dirty MiB",
        "passes",
        "clean s",
        "kept recs",
        "removed",
        "clean MiB/s",
        "raw MiB/s",
        "ratio"
    );
    let bytes = args.mib << 20;
    let mut probe = floor::SeqWriteProbe::new(scratch, bytes)?;
    let mut ratios = Vec::new();
    for i in 0..args.rounds.max(1) {
        let before = probe.round(bytes)?;
        let job = Job {
            dir: scratch.join(format!("round-{i}")),
            bytes,
            keys: args.keys.max(1),
            value_bytes: args.value_bytes,
            batch_records: args.batch_records.max(1),
            segment_bytes: args.segment_mib.max(1) << 20,
            dedupe_buffer_bytes: args.dedupe_buffer_mib << 20,
            compression: args.compression,
            seed: i as u64,
        };
        let (stats, passes, clean_time, log_bytes) = on_executor(move || job.run())?;
        let after = probe.round(bytes)?;
        let r = Round {
            raw: [before, after],
            stats,
            passes,
            clean_time,
            log_bytes,
        };
        let ratio = r.clean_bandwidth() / r.raw_bandwidth();
        ratios.push(ratio);
        println!(
            "{:>5} {:>9.1} {:>9.1} {:>6} {:>9.2} {:>12} {:>12} {:>11.1} {:>11.1} {:>6.1}%",
            i + 1,
            mib(r.log_bytes as f64),
            mib(r.stats.dirty_bytes as f64),
            r.passes,
            r.clean_time.as_secs_f64(),
            r.stats.records_kept,
            r.stats.records_removed,
            mib(r.clean_bandwidth()),
            mib(r.raw_bandwidth()),
            ratio * 100.0
        );
        println!(
            "      pass I/O: read {:.1} MiB, wrote {:.1} MiB ({:.1} MiB/s read+write); \
             segments {} -> {}",
            mib(r.stats.bytes_read as f64),
            mib(r.stats.bytes_written as f64),
            mib((r.stats.bytes_read + r.stats.bytes_written) as f64 / clean_time.as_secs_f64()),
            r.stats.segments_in,
            r.stats.segments_out
        );
    }
    ratios.sort_by(f64::total_cmp);
    let median = ratios[ratios.len() / 2];
    println!(
        "cleaner throughput / raw O_DIRECT sequential write bandwidth: median {:.1}% \
         (rounds {:.1}%..{:.1}%)",
        median * 100.0,
        ratios[0] * 100.0,
        ratios[ratios.len() - 1] * 100.0
    );
    Ok(())
}

/// Runs `f` on a fresh glommio executor thread with a broker shard's I/O memory.
fn on_executor<F, Fut, T>(f: F) -> Result<T, Box<dyn std::error::Error>>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T, LogError>> + 'static,
    T: Send + 'static,
{
    let handle = glommio::LocalExecutorBuilder::default()
        .name("clean-bench")
        .io_memory(chronik_shards::log::SHARD_IO_MEMORY)
        .spawn(f)?;
    let r = handle
        .join()
        .map_err(|e| format!("bench executor failed: {e:?}"))?;
    Ok(r?)
}

/// One round's log: written, then cleaned.
struct Job {
    dir: PathBuf,
    bytes: u64,
    keys: u32,
    value_bytes: usize,
    batch_records: u32,
    segment_bytes: u64,
    dedupe_buffer_bytes: usize,
    compression: Compression,
    seed: u64,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Batches appended before each wait for durability.
const BURST: usize = 64;
/// A pass that leaves dirty bytes (a key map too small for them) is followed by another; a
/// cleaner that makes no progress must not loop forever.
const MAX_PASSES: usize = 1000;

impl Job {
    /// Writes the log, then cleans it: (what the passes did together, passes, time, log bytes).
    async fn run(self) -> Result<(CleanStats, usize, Duration, u64), LogError> {
        std::fs::create_dir_all(&self.dir)?;
        chronik_shards::runtime::io_polling::choose(&self.dir, true).await?;
        let config = LogConfig {
            segment_bytes: self.segment_bytes,
            segment_ms: None,
            retention_ms: None,
            compact: true,
            ..LogConfig::default()
        };
        let log = PartitionLog::open(self.dir.clone(), config).await?;
        let written = self.write(&log).await?;

        let (upper, now) = (log.log_end_offset(), now_ms());
        let limits = CleanerLimits {
            dedupe_buffer_bytes: self.dedupe_buffer_bytes,
            throttle: &IoThrottle::new(f64::INFINITY),
        };
        let mut total = CleanStats::default();
        let mut passes = 0;
        let t = Instant::now();
        while passes < MAX_PASSES {
            match log.cleanable(upper, now) {
                Some(c) if c.dirty_bytes > 0 => {}
                _ => break,
            }
            let s = log.clean(upper, now, &limits).await?;
            passes += 1;
            if s.dirty_bytes == 0 {
                break;
            }
            total = add(total, s);
        }
        let clean_time = t.elapsed();
        log.delete().await?;
        Ok((total, passes, clean_time, written))
    }

    /// Appends keyed batches until `bytes` are in the log, durable; returns the bytes appended.
    async fn write(&self, log: &Rc<PartitionLog>) -> Result<u64, LogError> {
        let mut x = self.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let mut written = 0u64;
        while written < self.bytes {
            let mut end = 0;
            for _ in 0..BURST {
                let batch = self.batch(&mut x)?;
                written += batch.len() as u64;
                end = log.append_bytes(batch, 0)?.last_offset + 1;
            }
            log.wait_durable(end).await?;
        }
        Ok(written)
    }

    /// One batch of `batch_records` records with random keys out of `keys` and random values
    /// (each its own: a codec finds nothing to share between them, as with real distinct values).
    fn batch(&self, x: &mut u64) -> Result<Bytes, LogError> {
        let records: Vec<_> = (0..self.batch_records)
            .map(|_| {
                let key = (xorshift(x) % u64::from(self.keys)) as u32;
                let mut value = Vec::with_capacity(self.value_bytes + 8);
                while value.len() < self.value_bytes {
                    value.extend_from_slice(&xorshift(x).to_le_bytes());
                }
                value.truncate(self.value_bytes);
                (
                    Some(Bytes::from(format!("key-{key:08}"))),
                    Some(Bytes::from(value)),
                )
            })
            .collect();
        let layout = Layout {
            timestamp: now_ms(),
            compression: self.compression,
            ..Layout::default()
        };
        keyed_batch(records, &layout)
            .map_err(|e| LogError::InvalidBatch(format!("bench batch: {e}")))
    }
}

fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

fn add(a: CleanStats, b: CleanStats) -> CleanStats {
    CleanStats {
        segments_in: a.segments_in + b.segments_in,
        segments_out: a.segments_out + b.segments_out,
        bytes_read: a.bytes_read + b.bytes_read,
        bytes_written: a.bytes_written + b.bytes_written,
        dirty_bytes: a.dirty_bytes + b.dirty_bytes,
        // Records kept by an earlier pass are read again by the next: the last pass's count is
        // what the log holds.
        records_kept: b.records_kept,
        records_removed: a.records_removed + b.records_removed,
        clean_end: b.clean_end,
    }
}
