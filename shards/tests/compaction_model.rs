//! Property test of log compaction against a model (issue 15, test 1): random keyed writes and
//! tombstones (plain and idempotent producers), cleaner passes at random points (with a key map
//! large or small enough to need several passes, tombstones within or past `delete.retention.ms`),
//! and clean reopenings. After every step, reading the log from its start gives, in increasing
//! offsets, a subsequence of what was written in which
//! - every key's latest record is present, unless it is a tombstone (which may go once expired,
//!   and then no older record of its key is left either);
//! - below the cleaner's checkpoint every key appears at most once, and after a pass (one that had
//!   dirty data to clean) with expired tombstones, no tombstone is left there;
//! - reading from any offset gives the same records as the full read from there on (gaps).

use std::collections::HashMap;
use std::path::PathBuf;

use chronik_shards::log::batch::build_producer_test_batch;
use chronik_shards::log::compaction::records::{encode_record, parse, section};
use chronik_shards::log::compaction::{CleanerLimits, IoThrottle};
use chronik_shards::log::{CompactionConfig, LogConfig, PartitionLog};
use proptest::prelude::*;

/// Every batch's timestamp; passes run "soon after" or "long after" it.
const T0: i64 = 1_000_000;
const DELETE_RETENTION_MS: i64 = 1_000;

#[derive(Clone, Debug)]
enum Op {
    /// Records (key, value; None = tombstone) in one batch; from the idempotent producer if true.
    Write(Vec<(u8, Option<u8>)>, bool),
    /// A pass: tombstones expired or not, a small key map or a large one.
    Clean {
        expired: bool,
        small_map: bool,
    },
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (
            prop::collection::vec((0u8..12, prop::option::weighted(0.8, any::<u8>())), 1..5),
            any::<bool>()
        )
            .prop_map(|(r, p)| Op::Write(r, p)),
        2 => (any::<bool>(), any::<bool>()).prop_map(|(expired, small_map)| Op::Clean { expired, small_map }),
        1 => Just(Op::Reopen),
    ]
}

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 400,
        index_interval_bytes: 100,
        tail_cache_bytes: 300,
        retention_ms: None,
        compact: true,
        compaction: CompactionConfig {
            min_cleanable_dirty_ratio: 0.0,
            min_compaction_lag_ms: 0,
            max_compaction_lag_ms: i64::MAX,
            delete_retention_ms: DELETE_RETENTION_MS,
        },
        ..LogConfig::default()
    }
}

type Rec = (i64, Vec<u8>, Option<Vec<u8>>);

fn key(k: u8) -> Vec<u8> {
    format!("key-{k}").into_bytes()
}

/// Every record of the log from `from` on, with its offset.
async fn read_from(log: &PartitionLog, from: i64) -> Vec<Rec> {
    let mut out = Vec::new();
    let mut cur = from;
    while cur < log.log_end_offset() {
        let batches = log.read(cur, 1 << 20, i64::MAX).await.unwrap();
        assert!(!batches.is_empty(), "no batch at {cur}");
        for b in batches {
            let h = chronik_shards::log::batch::validate_frame(&b).unwrap();
            let sec = section(&b, &h, 1 << 20).unwrap();
            for r in parse(&sec, h.record_count).unwrap() {
                let offset = h.base_offset + r.offset_delta as i64;
                if offset >= from {
                    out.push((offset, r.key.unwrap().to_vec(), r.value.map(<[u8]>::to_vec)));
                }
            }
            cur = h.next_offset();
        }
    }
    out
}

async fn check(log: &PartitionLog, written: &[Rec], clean_end: i64, tombstones_gone: bool) {
    let read = read_from(log, log.log_start_offset()).await;
    let by_offset: HashMap<i64, &Rec> = written.iter().map(|r| (r.0, r)).collect();
    for w in read.windows(2) {
        assert!(w[0].0 < w[1].0, "offsets not increasing: {:?}", &w);
    }
    for r in &read {
        assert_eq!(
            Some(&r),
            by_offset.get(&r.0),
            "a record that was not written"
        );
    }
    let mut latest: HashMap<&[u8], &Rec> = HashMap::new();
    for r in written {
        latest.insert(&r.1, r);
    }
    for (k, last) in &latest {
        let found = read.iter().rev().find(|r| r.1 == *k);
        match (found, &last.2) {
            (Some(f), _) => assert_eq!(
                f, *last,
                "key {k:?}: its latest record is not the last read"
            ),
            (None, None) => {}
            (None, Some(_)) => panic!("key {k:?}: its latest value is gone"),
        }
    }
    let mut below: HashMap<&[u8], i64> = HashMap::new();
    for r in read.iter().filter(|r| r.0 < clean_end) {
        if let Some(prev) = below.insert(&r.1, r.0) {
            panic!(
                "key {:?} twice below the clean end {clean_end}: {prev} and {}",
                r.1, r.0
            );
        }
        if tombstones_gone {
            assert!(
                r.2.is_some(),
                "an expired tombstone at {} below {clean_end}",
                r.0
            );
        }
    }
    // Reads from any offset agree with the full read (gaps are skipped, nothing is lost).
    for from in (log.log_start_offset()..log.log_end_offset()).step_by(3) {
        let part = read_from(log, from).await;
        let expected: Vec<Rec> = read.iter().filter(|r| r.0 >= from).cloned().collect();
        assert_eq!(part, expected, "reading from {from}");
    }
}

async fn run_ops(dir: PathBuf, ops: Vec<Op>) {
    let mut log = PartitionLog::open(dir.clone(), config()).await.unwrap();
    let mut written: Vec<Rec> = Vec::new();
    let mut seq = 0i32;
    let mut clean_end = 0i64;
    let mut tombstones_gone = false;
    let throttle = IoThrottle::new(0.0);
    for op in ops {
        match op {
            Op::Write(records, idempotent) => {
                let mut payload = Vec::new();
                for (i, (k, v)) in records.iter().enumerate() {
                    let value = v.map(|v| vec![v; 3]);
                    payload.extend(encode_record(i as i32, 0, Some(&key(*k)), value.as_deref()));
                }
                let producer = if idempotent {
                    (7, 0, seq)
                } else {
                    (-1, -1, -1)
                };
                let n = records.len() as i32;
                let batch = build_producer_test_batch(0, n, T0, &payload, producer);
                let info = log.append(&batch, 0).unwrap();
                if idempotent {
                    seq += n;
                }
                log.wait_durable(info.last_offset + 1).await.unwrap();
                for (i, (k, v)) in records.iter().enumerate() {
                    written.push((info.base_offset + i as i64, key(*k), v.map(|v| vec![v; 3])));
                }
                tombstones_gone = false;
            }
            Op::Clean { expired, small_map } => {
                let limits = CleanerLimits {
                    // A few keys' worth: passes stop where the map filled.
                    dedupe_buffer_bytes: if small_map { 4 * 70 } else { 1 << 20 },
                    throttle: &throttle,
                };
                let now = if expired {
                    T0 + 10 * DELETE_RETENTION_MS
                } else {
                    T0 + 10
                };
                let stats = log.clean(log.log_end_offset(), now, &limits).await.unwrap();
                assert!(stats.clean_end >= clean_end, "the clean end went back");
                clean_end = stats.clean_end;
                // A pass runs only over new dirty data (as Kafka's before KIP-534): expired
                // tombstones in an already clean log wait for the next pass.
                if stats.dirty_bytes > 0 {
                    tombstones_gone = expired && !small_map;
                }
            }
            Op::Reopen => {
                log.close().await.unwrap();
                drop(log);
                log = PartitionLog::open(dir.clone(), config()).await.unwrap();
            }
        }
        check(&log, &written, clean_end, tombstones_gone).await;
    }
    log.close().await.unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, max_shrink_iters: 200, ..ProptestConfig::default() })]
    #[test]
    fn compaction_matches_model(ops in prop::collection::vec(op(), 1..60)) {
        let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let dir = tmp.path().join("p-0");
        glommio::LocalExecutorBuilder::default()
            .io_memory(2 << 20)
            .spawn(move || run_ops(dir, ops))
            .unwrap()
            .join()
            .unwrap();
    }
}

/// A plain case, spelled out: 300 updates of 5 keys over many segments, one pass, and what is
/// left below the clean end is one record per key, each its latest value there; the disk holds less.
#[test]
fn a_pass_keeps_the_latest_record_per_key() {
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let dir = tmp.path().join("p-0");
    glommio::LocalExecutorBuilder::default()
        .io_memory(2 << 20)
        .spawn(move || async move {
            let log = PartitionLog::open(dir.clone(), config()).await.unwrap();
            for i in 0..300u32 {
                let payload =
                    encode_record(0, 0, Some(&key((i % 5) as u8)), Some(&i.to_be_bytes()));
                let batch = build_producer_test_batch(0, 1, T0, &payload, (-1, -1, -1));
                let info = log.append(&batch, 0).unwrap();
                log.wait_durable(info.last_offset + 1).await.unwrap();
            }
            let size = |d: &PathBuf| -> u64 {
                std::fs::read_dir(d)
                    .unwrap()
                    .filter_map(|e| e.ok())
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
                    .map(|e| e.metadata().unwrap().len())
                    .sum()
            };
            let before = size(&dir);
            let throttle = IoThrottle::new(0.0);
            let limits = CleanerLimits {
                dedupe_buffer_bytes: 1 << 20,
                throttle: &throttle,
            };
            let cleanable = log.cleanable(log.log_end_offset(), T0).unwrap();
            assert!(cleanable.dirty_ratio() > 0.99);
            let stats = log.clean(log.log_end_offset(), T0, &limits).await.unwrap();
            assert!(
                stats.segments_in > 1 && stats.records_removed > 200,
                "{stats:?}"
            );
            let read = read_from(&log, 0).await;
            let below: Vec<&Rec> = read.iter().filter(|r| r.0 < stats.clean_end).collect();
            assert_eq!(below.len(), 5, "{below:?}");
            for r in below {
                // Record i is at offset i: the latest of its key below the clean end.
                let last = (0..stats.clean_end as u32)
                    .rev()
                    .find(|i| key((i % 5) as u8) == r.1)
                    .unwrap();
                assert_eq!(r.2.as_deref(), Some(&last.to_be_bytes()[..]));
            }
            assert!(size(&dir) < before / 2, "{} then {}", before, size(&dir));
            // Nothing dirty is left below the newest segment.
            assert_eq!(log.cleanable(log.log_end_offset(), T0), None);
            log.close().await.unwrap();
        })
        .unwrap()
        .join()
        .unwrap();
}

/// Batches compressed with each codec Kafka's clients use are compacted like plain ones: what is
/// kept stays compressed with the same codec, every key's latest value survives.
#[test]
fn compressed_batches_are_compacted_and_stay_compressed() {
    use chronik_shards::log::compaction::codec::{compress, Codec};
    for (codec, bits) in [
        (Codec::Gzip, 1i16),
        (Codec::Snappy, 2),
        (Codec::Lz4, 3),
        (Codec::Zstd, 4),
    ] {
        let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let dir = tmp.path().join("p-0");
        glommio::LocalExecutorBuilder::default()
            .io_memory(2 << 20)
            .spawn(move || async move {
                let log = PartitionLog::open(dir.clone(), config()).await.unwrap();
                // Batches of 4 records over 6 keys: every batch loses some records to later ones.
                for b in 0..60u32 {
                    let mut raw = Vec::new();
                    for i in 0..4u32 {
                        let n = b * 4 + i;
                        let value = format!("value-{n}").into_bytes();
                        raw.extend(encode_record(
                            i as i32,
                            0,
                            Some(&key((n % 6) as u8)),
                            Some(&value),
                        ));
                    }
                    let payload = compress(codec, &raw).unwrap();
                    let mut batch = build_producer_test_batch(0, 4, T0, &payload, (-1, -1, -1));
                    batch[21..23].copy_from_slice(&bits.to_be_bytes());
                    let crc = crc32c::crc32c(&batch[21..]);
                    batch[17..21].copy_from_slice(&crc.to_be_bytes());
                    let info = log.append(&batch, 0).unwrap();
                    log.wait_durable(info.last_offset + 1).await.unwrap();
                }
                let throttle = IoThrottle::new(0.0);
                let limits = CleanerLimits {
                    dedupe_buffer_bytes: 1 << 20,
                    throttle: &throttle,
                };
                let stats = log.clean(log.log_end_offset(), T0, &limits).await.unwrap();
                assert!(stats.records_removed > 100, "{codec:?}: {stats:?}");
                let mut batches = Vec::new();
                let mut cur = 0;
                while cur < log.log_end_offset() {
                    for b in log.read(cur, 1 << 20, i64::MAX).await.unwrap() {
                        let h = chronik_shards::log::batch::validate_frame(&b).unwrap();
                        cur = h.next_offset();
                        batches.push(h);
                    }
                }
                assert!(
                    batches.iter().all(|h| h.attributes & 7 == bits),
                    "{codec:?}: a kept batch lost its codec"
                );
                let read = read_from(&log, 0).await;
                let below: Vec<&Rec> = read.iter().filter(|r| r.0 < stats.clean_end).collect();
                assert_eq!(below.len(), 6, "{codec:?}: {below:?}");
                for r in below {
                    let last = (0..stats.clean_end as u32)
                        .rev()
                        .find(|n| key((n % 6) as u8) == r.1)
                        .unwrap();
                    assert_eq!(
                        r.2.as_deref(),
                        Some(format!("value-{last}").as_bytes()),
                        "{codec:?}"
                    );
                }
                log.close().await.unwrap();
            })
            .unwrap()
            .join()
            .unwrap();
    }
}
