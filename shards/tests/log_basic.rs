//! Partition log: append, durability, reads, reopen, rolling, truncation, timestamps, retention,
//! corruption handling.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use chronik_shards::log::batch::build_test_batch;
use chronik_shards::log::{FlushPolicy, LogConfig, LogError, PartitionLog};

fn run<F, Fut>(f: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    glommio::LocalExecutorBuilder::default()
        .io_memory(2 << 20)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap();
}

fn tmpdir() -> tempfile::TempDir {
    // Not tmpfs: O_DIRECT needs a real filesystem.
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

/// Runs `test` on an executor with a fresh log directory path (nothing created there yet).
fn in_log_dir<F, Fut>(test: F)
where
    F: FnOnce(PathBuf) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let dir = tmpdir();
    let path = dir.path().join("t-0");
    run(move || test(path));
}

async fn open_log(path: &Path, config: LogConfig) -> Rc<PartitionLog> {
    PartitionLog::open(path.to_path_buf(), config)
        .await
        .unwrap()
}

fn batch(records: i32, ts: i64, payload_len: usize, fill: u8) -> Vec<u8> {
    build_test_batch(0, records, ts, &vec![fill; payload_len])
}

fn small_config() -> LogConfig {
    LogConfig {
        segment_bytes: 2000,
        index_interval_bytes: 300,
        tail_cache_bytes: 0,
        ..LogConfig::default()
    }
}

async fn read_all(log: &PartitionLog, from: i64) -> Vec<bytes::Bytes> {
    let mut out = Vec::new();
    let mut cur = from;
    while cur < log.log_end_offset() {
        let got = log.read(cur, 1 << 20, i64::MAX).await.unwrap();
        assert!(!got.is_empty());
        for b in got {
            let base = i64::from_be_bytes(b[0..8].try_into().unwrap());
            let last_delta = i32::from_be_bytes(b[23..27].try_into().unwrap()) as i64;
            cur = base + last_delta + 1;
            out.push(b);
        }
    }
    out
}

fn base_of(b: &[u8]) -> i64 {
    i64::from_be_bytes(b[0..8].try_into().unwrap())
}

fn segment_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".log"))
        .collect();
    v.sort();
    v
}

#[test]
fn append_assigns_offsets_and_survives_reopen() {
    in_log_dir(|path| async move {
        let log = open_log(&path, LogConfig::default()).await;
        assert_eq!(log.log_end_offset(), 0);
        let a = log.append(&batch(3, 100, 50, 1), 5).unwrap();
        assert_eq!((a.base_offset, a.last_offset, a.record_count), (0, 2, 3));
        let mut two = batch(2, 200, 10, 2);
        two.extend(batch(1, 300, 10, 3));
        let b = log.append(&two, 5).unwrap();
        assert_eq!((b.base_offset, b.last_offset, b.max_timestamp), (3, 5, 300));
        assert_eq!(log.durable_end_offset(), 0);
        log.wait_durable(6).await.unwrap();
        assert_eq!(log.durable_end_offset(), 6);
        let got = log.read(0, 1 << 20, i64::MAX).await.unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(base_of(&got[1]), 3);
        assert_eq!(i32::from_be_bytes(got[1][12..16].try_into().unwrap()), 5);
        // from inside a batch returns that batch
        let got = log.read(4, 1 << 20, i64::MAX).await.unwrap();
        assert_eq!(base_of(&got[0]), 3);
        assert!(log.read(6, 100, i64::MAX).await.unwrap().is_empty());
        assert!(matches!(
            log.read(7, 100, i64::MAX).await,
            Err(LogError::OffsetOutOfRange { .. })
        ));
        drop(log);

        let log = open_log(&path, LogConfig::default()).await;
        assert_eq!(log.log_end_offset(), 6);
        assert_eq!(log.last_leader_epoch(), 5);
        let got = read_all(&log, 0).await;
        assert_eq!(got.len(), 3);
        assert_eq!(&got[2][61..], &[3u8; 10][..]);
        let c = log.append(&batch(1, 400, 10, 4), 6).unwrap();
        assert_eq!(c.base_offset, 6);
        log.close().await.unwrap();
        assert!(matches!(
            log.append(&batch(1, 1, 1, 1), 6),
            Err(LogError::Closed)
        ));
        let log = open_log(&path, LogConfig::default()).await;
        assert_eq!(log.log_end_offset(), 7);
    });
}

#[test]
fn invalid_batches_are_rejected_whole() {
    in_log_dir(|path| async move {
        let log = open_log(
            &path,
            LogConfig {
                max_batch_bytes: 500,
                ..LogConfig::default()
            },
        )
        .await;
        let mut recs = batch(1, 1, 10, 1);
        let mut bad = batch(1, 1, 10, 2);
        let n = bad.len();
        bad[n - 1] ^= 0xff;
        recs.extend(bad);
        assert!(matches!(
            log.append(&recs, 0),
            Err(LogError::CorruptBatch(_))
        ));
        assert!(matches!(
            log.append(&batch(1, 1, 1000, 1), 0),
            Err(LogError::BatchTooLarge { .. })
        ));
        assert!(matches!(log.append(&[], 0), Err(LogError::InvalidBatch(_))));
        assert_eq!(log.log_end_offset(), 0);
        log.append(&batch(1, 1, 10, 1), 3).unwrap();
        assert!(matches!(
            log.append(&batch(1, 1, 10, 1), 2),
            Err(LogError::FencedLeaderEpoch { .. })
        ));
    });
}

#[test]
fn segments_roll_and_sealed_segments_serve_reads() {
    in_log_dir(|path| async move {
        let log = open_log(&path, small_config()).await;
        for i in 0..40 {
            log.append(&batch(2, 1000 + i, 100 + i as usize, i as u8), 0)
                .unwrap();
            if i % 7 == 0 {
                log.wait_durable(log.log_end_offset()).await.unwrap();
            }
        }
        log.wait_durable(80).await.unwrap();
        let files = segment_files(&path);
        assert!(files.len() > 3, "{files:?}");
        assert_eq!(files[0], "00000000000000000000.log");
        let got = read_all(&log, 0).await;
        assert_eq!(got.len(), 40);
        for (i, b) in got.iter().enumerate() {
            assert_eq!(base_of(b), 2 * i as i64);
            assert_eq!(b[61], i as u8);
        }
        // every start offset, with a small byte limit: exactly one batch
        for off in 0..80 {
            let got = log.read(off, 1, i64::MAX).await.unwrap();
            assert_eq!(got.len(), 1);
            assert_eq!(base_of(&got[0]), off & !1);
        }
        // upper bound stops before a batch starting at or above it
        let got = log.read(10, 1 << 20, 16).await.unwrap();
        assert_eq!(
            got.iter().map(|b| base_of(b)).collect::<Vec<_>>(),
            vec![10, 12, 14]
        );
        // index files exist for sealed segments
        assert!(path.join("00000000000000000000.index").exists());
        assert!(path.join("00000000000000000000.timeindex").exists());
        log.close().await.unwrap();

        // damaged and missing indexes are rebuilt
        std::fs::write(path.join("00000000000000000000.index"), b"garbage").unwrap();
        std::fs::remove_file(path.join(&files[1]).with_extension("timeindex")).unwrap();
        let log = open_log(&path, small_config()).await;
        let got = read_all(&log, 0).await;
        assert_eq!(got.len(), 40);
        for off in 0..80 {
            let got = log.read(off, 1, i64::MAX).await.unwrap();
            assert_eq!(base_of(&got[0]), off & !1);
        }
    });
}

#[test]
fn torn_tail_is_truncated_on_open() {
    in_log_dir(|path| async move {
        let log = open_log(&path, LogConfig::default()).await;
        for i in 0..5 {
            log.append(&batch(1, i, 100, i as u8), 0).unwrap();
        }
        log.close().await.unwrap();
        let seg = path.join("00000000000000000000.log");
        let len = std::fs::metadata(&seg).unwrap().len();
        assert_eq!(len, 5 * 161);
        // flip a byte inside the 4th batch: batches 3 and 4 go
        let mut data = std::fs::read(&seg).unwrap();
        data[3 * 161 + 100] ^= 1;
        std::fs::write(&seg, &data).unwrap();
        let log = open_log(&path, LogConfig::default()).await;
        assert_eq!(log.log_end_offset(), 3);
        assert_eq!(std::fs::metadata(&seg).unwrap().len(), 3 * 161);
        assert_eq!(read_all(&log, 0).await.len(), 3);
        // new appends continue at the cut
        log.append(&batch(1, 9, 10, 9), 0).unwrap();
        log.wait_durable(4).await.unwrap();
        drop(log);
        // a half-written batch at the end (length says more than the file has)
        let mut data = std::fs::read(&seg).unwrap();
        data.extend_from_slice(&batch(1, 10, 100, 1)[..80]);
        data[3 * 161 + 71..3 * 161 + 79].copy_from_slice(&4i64.to_be_bytes());
        std::fs::write(&seg, &data).unwrap();
        let log = open_log(&path, LogConfig::default()).await;
        assert_eq!(log.log_end_offset(), 4);
        let got = read_all(&log, 0).await;
        assert_eq!(got.len(), 4);
        assert_eq!(got[3][61], 9);
    });
}

#[test]
fn corrupt_sealed_segment_is_an_error_not_data() {
    in_log_dir(|path| async move {
        let log = open_log(&path, small_config()).await;
        for i in 0..30 {
            log.append(&batch(1, i, 200, i as u8), 0).unwrap();
        }
        log.close().await.unwrap();
        let first = path.join("00000000000000000000.log");
        let mut data = std::fs::read(&first).unwrap();
        data[261 + 150] ^= 0x10; // inside the second batch (offset 1)
        std::fs::write(&first, &data).unwrap();
        let log = open_log(&path, small_config()).await;
        assert_eq!(log.log_end_offset(), 30);
        let got = log.read(0, 1, i64::MAX).await.unwrap();
        assert_eq!(got.len(), 1);
        match log.read(1, 1 << 20, i64::MAX).await {
            Err(LogError::Corruption { position, .. }) => assert_eq!(position, 261),
            other => panic!("expected corruption, got {other:?}"),
        }
        assert!(matches!(
            log.read(0, 1 << 20, i64::MAX).await,
            Err(LogError::Corruption { .. })
        ));
        // later segments are still readable
        let got = log.read(20, 1 << 20, i64::MAX).await.unwrap();
        assert_eq!(base_of(&got[0]), 20);
        // garbage length in a sealed segment is also an error
        let mut data = std::fs::read(&first).unwrap();
        data[261 * 2 + 8..261 * 2 + 12].copy_from_slice(&(-7i32).to_be_bytes());
        std::fs::write(&first, &data).unwrap();
        assert!(matches!(
            log.read(2, 1 << 20, i64::MAX).await,
            Err(LogError::Corruption { .. })
        ));
    });
}

#[test]
fn truncate_removes_batches_and_stale_bytes_never_return() {
    in_log_dir(|path| async move {
        let log = open_log(&path, small_config()).await;
        for i in 0..30 {
            log.append(&batch(2, i, 150, i as u8), 1).unwrap();
        }
        log.wait_durable(60).await.unwrap();
        // inside a batch: rounds down to its start
        log.truncate_to(41).await.unwrap();
        assert_eq!(log.log_end_offset(), 40);
        assert_eq!(log.durable_end_offset(), 40);
        assert_eq!(read_all(&log, 0).await.len(), 20);
        // into an earlier (sealed) segment
        log.truncate_to(7).await.unwrap();
        assert_eq!(log.log_end_offset(), 6);
        assert_eq!(read_all(&log, 0).await.len(), 3);
        // smaller batches after the cut, then reopen: stale bytes beyond must not come back
        log.append(&batch(1, 99, 5, 0xee), 2).unwrap();
        log.wait_durable(7).await.unwrap();
        drop(log);
        let log = open_log(&path, small_config()).await;
        assert_eq!(log.log_end_offset(), 7);
        assert_eq!(log.last_leader_epoch(), 2);
        let got = read_all(&log, 0).await;
        assert_eq!(got.len(), 4);
        assert_eq!(got[3][61], 0xee);
        log.truncate_to(0).await.unwrap();
        assert_eq!(log.log_end_offset(), 0);
        assert_eq!(
            segment_files(&path),
            vec!["00000000000000000000.log".to_string()]
        );
        log.append(&batch(1, 1, 5, 1), 3).unwrap();
        log.wait_durable(1).await.unwrap();
    });
}

#[test]
fn timestamp_lookup_is_batch_granular() {
    in_log_dir(|path| async move {
        let cfg = LogConfig {
            tail_cache_bytes: 1000,
            ..small_config()
        };
        let log = open_log(&path, cfg).await;
        for i in 0..40 {
            log.append(&batch(2, 1000 + 10 * i, 100, 0), 0).unwrap();
            if i == 30 {
                log.wait_durable(log.log_end_offset()).await.unwrap();
            }
        }
        assert_eq!(log.offset_for_timestamp(0).await.unwrap(), Some((0, 1000)));
        assert_eq!(
            log.offset_for_timestamp(1000).await.unwrap(),
            Some((0, 1000))
        );
        assert_eq!(
            log.offset_for_timestamp(1001).await.unwrap(),
            Some((2, 1010))
        );
        assert_eq!(
            log.offset_for_timestamp(1255).await.unwrap(),
            Some((52, 1260))
        );
        assert_eq!(
            log.offset_for_timestamp(1390).await.unwrap(),
            Some((78, 1390))
        );
        assert_eq!(log.offset_for_timestamp(1391).await.unwrap(), None);
        log.close().await.unwrap();
        let log = open_log(&path, small_config()).await;
        for i in 0..40 {
            let ts = 1000 + 10 * i;
            assert_eq!(
                log.offset_for_timestamp(ts - 5).await.unwrap(),
                Some((2 * i, ts))
            );
        }
    });
}

#[test]
fn retention_deletes_whole_old_segments() {
    in_log_dir(|path| async move {
        let cfg = LogConfig {
            retention_ms: None,
            ..small_config()
        };
        let log = open_log(&path, cfg.clone()).await;
        for i in 0..30 {
            log.append(&batch(1, 1000 + i, 300, 0), 0).unwrap();
        }
        log.wait_durable(30).await.unwrap();
        let before = segment_files(&path).len();
        assert!(before >= 5);
        assert_eq!(log.apply_retention(1_000_000).await.unwrap(), 0);
        // by size: keep at most ~3 segments' worth
        log.update_config(LogConfig {
            retention_bytes: Some(3 * 1800),
            ..cfg.clone()
        });
        let n = log.apply_retention(0).await.unwrap();
        assert!(n > 0);
        let start = log.log_start_offset();
        assert!(start > 0);
        assert_eq!(segment_files(&path)[0], format!("{start:020}.log"));
        assert!(matches!(
            log.read(start - 1, 100, i64::MAX).await,
            Err(LogError::OffsetOutOfRange { .. })
        ));
        assert_eq!(
            base_of(&log.read(start, 100, i64::MAX).await.unwrap()[0]),
            start
        );
        // by time: everything sealed is older than now - 10 ms at now = 1_000_000
        log.update_config(LogConfig {
            retention_ms: Some(10),
            ..cfg
        });
        log.apply_retention(1_000_000).await.unwrap();
        assert_eq!(segment_files(&path).len(), 1);
        assert_eq!(
            read_all(&log, log.log_start_offset()).await.len() as i64,
            30 - log.log_start_offset()
        );
        drop(log);
        let log = open_log(&path, small_config()).await;
        assert!(log.log_start_offset() > start);
        assert_eq!(log.log_end_offset(), 30);
    });
}

#[test]
fn segment_ms_rolls_by_age() {
    in_log_dir(|path| async move {
        let cfg = LogConfig {
            segment_ms: Some(0),
            ..LogConfig::default()
        };
        let log = open_log(&path, cfg).await;
        for i in 0..4 {
            log.append(&batch(1, i, 10, 0), 0).unwrap();
        }
        log.wait_durable(4).await.unwrap();
        assert_eq!(segment_files(&path).len(), 4);
    });
}

#[test]
fn flush_policies_define_durability() {
    let dir = tmpdir();
    let base = dir.path().to_path_buf();
    run(move || async move {
        let never = PartitionLog::open(
            base.join("never"),
            LogConfig {
                flush: FlushPolicy::Never,
                ..LogConfig::default()
            },
        )
        .await
        .unwrap();
        never.append(&batch(1, 1, 10, 0), 0).unwrap();
        assert_eq!(never.durable_end_offset(), 1);
        never.wait_durable(1).await.unwrap();
        // the background writer puts it in the file eventually; close does it now
        never.close().await.unwrap();
        let reopened = PartitionLog::open(base.join("never"), LogConfig::default())
            .await
            .unwrap();
        assert_eq!(reopened.log_end_offset(), 1);

        let interval = PartitionLog::open(
            base.join("interval"),
            LogConfig {
                flush: FlushPolicy::IntervalMs(5),
                ..LogConfig::default()
            },
        )
        .await
        .unwrap();
        interval.append(&batch(1, 1, 10, 0), 0).unwrap();
        assert_eq!(interval.durable_end_offset(), 0);
        interval.wait_durable(1).await.unwrap();
        assert_eq!(interval.durable_end_offset(), 1);
        let _: Rc<PartitionLog> = interval;
    });
}

#[test]
fn concurrent_waiters_share_a_flush() {
    in_log_dir(|path| async move {
        let log = open_log(&path, LogConfig::default()).await;
        let mut tasks = Vec::new();
        for i in 0..20 {
            let log = log.clone();
            tasks.push(glommio::spawn_local(async move {
                let info = log.append(&batch(1, i, 50, i as u8), 0).unwrap();
                log.wait_durable(info.last_offset + 1).await.unwrap();
                assert!(log.durable_end_offset() > info.last_offset);
                info.base_offset
            }));
        }
        let mut offsets = Vec::new();
        for t in tasks {
            offsets.push(t.await);
        }
        offsets.sort();
        assert_eq!(offsets, (0..20).collect::<Vec<_>>());
        assert_eq!(read_all(&log, 0).await.len(), 20);
    });
}

#[test]
fn delete_removes_the_directory() {
    in_log_dir(|path| async move {
        let log = open_log(&path, LogConfig::default()).await;
        log.append(&batch(1, 1, 10, 0), 0).unwrap();
        log.delete().await.unwrap();
        assert!(!path.exists());
        assert!(matches!(
            log.read(0, 1, i64::MAX).await,
            Err(LogError::Closed)
        ));
    });
}

#[test]
fn abandoned_waits_do_not_break_the_log() {
    in_log_dir(|path| async move {
        let log = open_log(&path, small_config()).await;
        for i in 0..50 {
            log.append(&batch(1, i, 300, i as u8), 0).unwrap();
            // Start waiting, poll once, then give up (a request timeout dropping the future).
            let mut wait = Box::pin(log.wait_durable(log.log_end_offset()));
            let _ = futures_lite::future::poll_once(&mut wait).await;
            drop(wait);
            if i % 10 == 9 {
                let target = log.log_end_offset() - 1;
                let mut t = Box::pin(log.truncate_to(target));
                let _ = futures_lite::future::poll_once(&mut t).await;
                drop(t);
                // The abandoned truncation still completes; a second one waits for it.
                log.truncate_to(target).await.unwrap();
                assert_eq!(log.log_end_offset(), target);
                log.wait_durable(target).await.unwrap();
            }
        }
        let end = log.log_end_offset();
        log.wait_durable(end).await.unwrap();
        let got = read_all(&log, 0).await;
        assert_eq!(got.len() as i64, end);
        drop(log);
        let log = open_log(&path, small_config()).await;
        assert_eq!(log.log_end_offset(), end);
        assert_eq!(read_all(&log, 0).await.len() as i64, end);
    });
}

fn with_offsets(mut b: Vec<u8>, base: i64, epoch: i32) -> Vec<u8> {
    b[0..8].copy_from_slice(&base.to_be_bytes());
    b[12..16].copy_from_slice(&epoch.to_be_bytes());
    b
}

#[test]
fn replica_appends_keep_leader_offsets_and_order() {
    in_log_dir(|path| async move {
        let log = open_log(&path, LogConfig::default()).await;
        let mut two = with_offsets(batch(2, 1, 10, 1), 0, 3);
        two.extend(with_offsets(batch(3, 2, 10, 2), 2, 4));
        let info = log
            .append_replica(bytes::Bytes::copy_from_slice(&two))
            .unwrap();
        assert_eq!(
            (info.base_offset, info.last_offset, info.record_count),
            (0, 4, 5)
        );
        assert_eq!(log.last_leader_epoch(), 4);
        // a repeat, an overlap and an older epoch are all refused, and nothing is appended
        for bad in [
            with_offsets(batch(1, 1, 10, 0), 3, 4),
            with_offsets(batch(1, 1, 10, 0), 4, 4),
            with_offsets(batch(1, 1, 10, 0), 5, 3),
        ] {
            assert!(matches!(
                log.append_replica(bytes::Bytes::copy_from_slice(&bad)),
                Err(LogError::InvalidBatch(_))
            ));
        }
        let mut backwards = with_offsets(batch(1, 1, 10, 0), 5, 4);
        backwards.extend(with_offsets(batch(1, 1, 10, 0), 5, 4));
        assert!(log
            .append_replica(bytes::Bytes::copy_from_slice(&backwards))
            .is_err());
        assert_eq!(log.log_end_offset(), 5);
        log.append_replica(with_offsets(batch(1, 1, 10, 9), 5, 4).into())
            .unwrap();
        // A gap is a compacted leader's (batches removed there): kept as the leader has it.
        log.append_replica(with_offsets(batch(1, 1, 10, 9), 9, 4).into())
            .unwrap();
        log.wait_durable(10).await.unwrap();
        drop(log);
        let log = open_log(&path, LogConfig::default()).await;
        let got = read_all(&log, 0).await;
        assert_eq!(
            got.iter().map(|b| base_of(b)).collect::<Vec<_>>(),
            vec![0, 2, 5, 9]
        );
        // A read from inside the gap starts at the batch after it.
        let from_gap = log.read(7, 1 << 20, i64::MAX).await.unwrap();
        assert_eq!(
            from_gap.iter().map(|b| base_of(b)).collect::<Vec<_>>(),
            vec![9]
        );
        assert_eq!(
            got[2].as_ref(),
            with_offsets(batch(1, 1, 10, 9), 5, 4).as_slice()
        );
    });
}

#[test]
fn unflushed_batches_are_served_from_the_tail() {
    in_log_dir(|path| async move {
        let cfg = LogConfig {
            tail_cache_bytes: 0,
            ..small_config()
        };
        let log = open_log(&path, cfg).await;
        for i in 0..30 {
            log.append(&batch(1, i, 120, i as u8), 0).unwrap();
        }
        // nothing written yet (no wait), yet every batch reads back, across several rolled segments
        let got = read_all(&log, 0).await;
        assert_eq!(got.len(), 30);
        assert_eq!(got[29][61], 29);
        log.wait_durable(15).await.unwrap();
        for i in 30..40 {
            log.append(&batch(1, i, 120, i as u8), 0).unwrap();
        }
        // a read spanning disk and memory
        let got = log.read(10, 1 << 20, i64::MAX).await.unwrap();
        assert_eq!(
            got.iter().map(|b| base_of(b)).collect::<Vec<_>>(),
            (10..40).collect::<Vec<_>>()
        );
    });
}

#[test]
fn recovery_stops_at_stale_or_out_of_order_batches() {
    in_log_dir(|path| async move {
        let log = open_log(&path, LogConfig::default()).await;
        for i in 0..3 {
            log.append(&batch(1, i, 50, 1), 5).unwrap();
        }
        log.close().await.unwrap();
        let seg = path.join("00000000000000000000.log");
        let valid = std::fs::read(&seg).unwrap();
        // A well-formed batch (CRC valid) with an offset already passed: stale bytes from an older
        // write. (A higher offset is a gap, which compaction makes: see the replica test.)
        let mut data = valid.clone();
        data.extend(with_offsets(batch(1, 9, 50, 2), 1, 5));
        std::fs::write(&seg, &data).unwrap();
        let log = open_log(&path, LogConfig::default()).await;
        assert_eq!(log.log_end_offset(), 3);
        assert_eq!(std::fs::metadata(&seg).unwrap().len(), valid.len() as u64);
        log.close().await.unwrap();
        // Right offset, but an older leader epoch.
        let mut data = valid.clone();
        data.extend(with_offsets(batch(1, 9, 50, 2), 3, 4));
        std::fs::write(&seg, &data).unwrap();
        let log = open_log(&path, LogConfig::default()).await;
        assert_eq!(log.log_end_offset(), 3);
        log.close().await.unwrap();
        // Zeros (preallocated space) and garbage are not batches either.
        let mut data = valid.clone();
        data.extend(vec![0u8; 5000]);
        data.extend(vec![0xffu8; 100]);
        std::fs::write(&seg, &data).unwrap();
        let log = open_log(&path, LogConfig::default()).await;
        assert_eq!(log.log_end_offset(), 3);
        assert_eq!(read_all(&log, 0).await.len(), 3);
    });
}

#[test]
fn retention_by_time_falls_back_to_file_time_without_timestamps() {
    in_log_dir(|path| async move {
        let cfg = LogConfig {
            retention_ms: Some(60_000),
            ..small_config()
        };
        let log = open_log(&path, cfg).await;
        for _ in 0..20 {
            log.append(&batch(1, -1, 300, 0), 0).unwrap();
        }
        log.wait_durable(20).await.unwrap();
        let segments = segment_files(&path).len();
        assert!(segments > 2);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        // files were written just now: nothing is a minute old yet
        assert_eq!(log.apply_retention(now).await.unwrap(), 0);
        // an hour later every sealed segment is; the active one stays
        assert_eq!(
            log.apply_retention(now + 3_600_000).await.unwrap(),
            segments - 1
        );
        assert_eq!(segment_files(&path).len(), 1);
    });
}

#[test]
fn flush_policy_can_change_at_runtime() {
    in_log_dir(|path| async move {
        let log = open_log(&path, LogConfig::default()).await;
        log.append(&batch(1, 1, 10, 0), 0).unwrap();
        assert_eq!(log.durable_end_offset(), 0);
        log.update_config(LogConfig {
            flush: FlushPolicy::Never,
            ..LogConfig::default()
        });
        assert_eq!(log.durable_end_offset(), 1);
        log.update_config(LogConfig::default());
        log.append(&batch(1, 1, 10, 0), 0).unwrap();
        log.wait_durable(2).await.unwrap();
        assert_eq!(log.durable_end_offset(), 2);
        drop(log);
        let log = open_log(&path, LogConfig::default()).await;
        assert_eq!(log.log_end_offset(), 2);
    });
}

#[test]
fn a_wait_cut_short_by_truncation_fails_even_if_offsets_are_reused() {
    in_log_dir(|path| async move {
        let log = open_log(&path, LogConfig::default()).await;
        for i in 0..10 {
            log.append(&batch(1, i, 20, 1), 1).unwrap();
        }
        let mut wait = Box::pin(log.wait_durable(10));
        let _ = futures_lite::future::poll_once(&mut wait).await;
        log.truncate_to(5).await.unwrap();
        for i in 0..10 {
            log.append(&batch(1, i, 20, 2), 2).unwrap();
        }
        log.wait_durable(15).await.unwrap();
        // offsets 5..10 now hold other batches: the old wait must not report success
        assert!(matches!(wait.await, Err(LogError::OffsetOutOfRange { .. })));
        // a wait for offsets below the cut is unaffected
        let mut below = Box::pin(log.wait_durable(5));
        assert!(futures_lite::future::poll_once(&mut below)
            .await
            .unwrap()
            .is_ok());
    });
}

#[test]
fn appends_racing_a_truncation_are_refused_or_kept_whole() {
    in_log_dir(|path| async move {
        let log = open_log(&path, small_config()).await;
        for i in 0..40 {
            log.append(&batch(1, i, 100, 1), 1).unwrap();
        }
        log.wait_durable(40).await.unwrap();
        // A reader running across the cut never sees an error other than a range one.
        let l = log.clone();
        let reader = glommio::spawn_local(async move {
            let mut reads = 0;
            for from in (0..12).cycle().take(600) {
                match l.read(from, 300, i64::MAX).await {
                    Ok(got) => {
                        reads += 1;
                        for b in got {
                            assert!(b.len() == 161, "a whole batch");
                        }
                    }
                    Err(LogError::OffsetOutOfRange { .. }) => {}
                    Err(e) => panic!("read during truncation: {e}"),
                }
                glommio::executor().yield_now().await;
            }
            reads
        });
        glommio::executor().yield_now().await;
        let l = log.clone();
        let truncation = glommio::spawn_local(async move { l.truncate_to(10).await });
        let mut landed = Vec::new();
        for i in 0..200u8 {
            match log.append(&batch(1, 0, 100, i), 1) {
                Ok(info) => landed.push((info.base_offset, i)),
                Err(LogError::Truncating) => {}
                Err(e) => panic!("unexpected append error {e}"),
            }
            glommio::executor().yield_now().await;
        }
        truncation.await.unwrap();
        assert!(reader.await > 0);
        log.wait_durable(log.log_end_offset()).await.unwrap();
        // Appends before the cut were cut with the rest; the ones after it follow it contiguously.
        let end = log.log_end_offset();
        let after: Vec<_> = match landed.iter().position(|&(o, _)| o == 10) {
            Some(i) => landed[i..].to_vec(),
            None => Vec::new(),
        };
        assert_eq!(end, 10 + after.len() as i64);
        for (k, &(offset, fill)) in after.iter().enumerate() {
            assert_eq!(offset, 10 + k as i64);
            let got = log.read(offset, 1, i64::MAX).await.unwrap();
            assert_eq!(base_of(&got[0]), offset);
            assert_eq!(got[0][61], fill, "offset {offset}");
        }
        drop(log);
        let log = open_log(&path, small_config()).await;
        assert_eq!(log.log_end_offset(), end);
        assert_eq!(read_all(&log, 0).await.len() as i64, end);
    });
}

#[test]
fn leader_epoch_history_survives_reopen_and_damage() {
    in_log_dir(|path| async move {
        let log = open_log(&path, small_config()).await;
        assert_eq!(log.end_offset_for_epoch(0), (-1, -1));
        for (epoch, n) in [(1, 10), (2, 15), (5, 10)] {
            for _ in 0..n {
                log.append(&batch(2, 1, 150, 0), epoch).unwrap();
            }
        }
        log.wait_durable(70).await.unwrap();
        let expect = [
            (0, (0, 0)),
            (1, (1, 20)),
            (2, (2, 50)),
            (3, (2, 50)),
            (4, (2, 50)),
            (5, (5, 70)),
            (6, (-1, -1)),
        ];
        for (asked, answer) in expect {
            assert_eq!(log.end_offset_for_epoch(asked), answer, "epoch {asked}");
        }
        drop(log);
        let log = open_log(&path, small_config()).await;
        for (asked, answer) in expect {
            assert_eq!(
                log.end_offset_for_epoch(asked),
                answer,
                "epoch {asked} after reopen"
            );
        }
        log.close().await.unwrap();
        std::fs::write(path.join("leader-epoch-checkpoint"), b"damaged").unwrap();
        let log = open_log(&path, small_config()).await;
        for (asked, answer) in expect {
            assert_eq!(
                log.end_offset_for_epoch(asked),
                answer,
                "epoch {asked} after rebuild"
            );
        }
        // truncation forgets the epochs it removes, durably
        log.truncate_to(30).await.unwrap();
        // epoch 5 is gone: newer than any known epoch is undefined (Kafka's rule)
        assert_eq!(log.end_offset_for_epoch(5), (-1, -1));
        assert_eq!(log.end_offset_for_epoch(2), (2, 30));
        drop(log);
        let log = open_log(&path, small_config()).await;
        assert_eq!(log.end_offset_for_epoch(5), (-1, -1));
        assert_eq!(log.end_offset_for_epoch(2), (2, 30));
        assert_eq!(log.end_offset_for_epoch(1), (1, 20));
    });
}

/// A large received buffer nothing else holds is patched in place and kept (one copy of the bytes
/// in all, into the write buffer); a shared one or a small one is copied and the caller's bytes stay
/// untouched. Either way the log holds the same offsets and bytes, and they survive a reopen.
#[test]
fn append_bytes_patches_a_unique_buffer_in_place() {
    in_log_dir(|path| async move {
        let log = open_log(&path, LogConfig::default()).await;
        log.append(&batch(3, 10, 100, 1), 0).unwrap();

        let unique = bytes::Bytes::from(batch(2, 20, 128 << 10, 2));
        let unique_ptr = unique.as_ptr();
        let info = log.append_bytes(unique, 4).unwrap();
        assert_eq!((info.base_offset, info.last_offset), (3, 4));

        let shared = bytes::Bytes::from(batch(2, 30, 128 << 10, 3));
        let kept = shared.clone();
        let info = log.append_bytes(shared, 4).unwrap();
        assert_eq!((info.base_offset, info.last_offset), (5, 6));
        assert_eq!(base_of(&kept), 0, "the caller's shared bytes were patched");

        let small = bytes::Bytes::from(batch(1, 40, 100, 4));
        let small_ptr = small.as_ptr();
        log.append_bytes(small, 5).unwrap();

        let got = log.read(3, 1 << 20, i64::MAX).await.unwrap();
        assert_eq!(got[0].as_ptr(), unique_ptr, "the unique buffer was copied");
        assert_ne!(got[1].as_ptr(), kept.as_ptr());
        log.wait_durable(8).await.unwrap();
        let got = log.read(7, 1 << 20, i64::MAX).await.unwrap();
        assert_ne!(got[0].as_ptr(), small_ptr);
        drop(got);
        log.close().await.unwrap();

        let log = open_log(&path, LogConfig::default()).await;
        let all = read_all(&log, 0).await;
        let bases: Vec<i64> = all.iter().map(|b| base_of(b)).collect();
        assert_eq!(bases, vec![0, 3, 5, 7]);
        let epoch = |b: &bytes::Bytes| i32::from_be_bytes(b[12..16].try_into().unwrap());
        assert_eq!(all.iter().map(epoch).collect::<Vec<_>>(), vec![0, 4, 4, 5]);
        assert_eq!(all[1].len(), batch(2, 20, 128 << 10, 2).len());
        assert_eq!(all[2][61..], kept[61..]);
        log.close().await.unwrap();
    });
}

/// Group commits overlap: one copies its batches while the previous one's writes (several 4 MiB
/// chunks, partial last blocks) are in flight, and segments roll under them. Readers running
/// meanwhile must only ever see whole, correct batches, and every byte must be in place after reopen.
#[test]
fn overlapping_group_commits_keep_every_byte_in_order() {
    const APPENDERS: usize = 6;
    const ROUNDS: usize = 12;
    let dir = tmpdir();
    let path = dir.path().join("t-0");
    // The batch each (appender, round) appends: sizes from a few bytes to 1 MiB, none block-aligned.
    fn payload(appender: usize, round: usize) -> (usize, u8) {
        let sizes = [1 << 20, 700_001, 33, 1_048_000, 4097, 250_000];
        (
            sizes[(appender + round) % sizes.len()],
            (appender * 31 + round) as u8,
        )
    }
    run(move || async move {
        let config = LogConfig {
            segment_bytes: 9 << 20,
            tail_cache_bytes: 0,
            ..LogConfig::default()
        };
        let log = open_log(&path, config.clone()).await;
        let done = Rc::new(std::cell::Cell::new(false));
        let reader = {
            let (log, done) = (log.clone(), done.clone());
            glommio::spawn_local(async move {
                let mut passes = 0;
                while !done.get() {
                    let durable = log.durable_end_offset();
                    let mut cur = 0;
                    while cur < durable {
                        let got = log.read(cur, 8 << 20, durable).await.unwrap();
                        assert!(!got.is_empty());
                        for b in got {
                            chronik_shards::log::batch::validate_frame(&b).unwrap();
                            assert_eq!(base_of(&b), cur);
                            cur += 1;
                        }
                    }
                    passes += 1;
                    glommio::timer::sleep(std::time::Duration::from_millis(2)).await;
                }
                passes
            })
        };
        let mut tasks = Vec::new();
        for a in 0..APPENDERS {
            let log = log.clone();
            tasks.push(glommio::spawn_local(async move {
                let mut mine = Vec::new();
                for r in 0..ROUNDS {
                    let (len, fill) = payload(a, r);
                    let info = log.append(&batch(1, r as i64, len, fill), 0).unwrap();
                    mine.push((info.base_offset, len, fill));
                    if r % 2 == 1 {
                        log.wait_durable(info.last_offset + 1).await.unwrap();
                    }
                    glommio::executor().yield_now().await;
                }
                let end = mine.last().map_or(0, |m| m.0 + 1);
                log.wait_durable(end).await.unwrap();
                mine
            }));
        }
        let mut expected = Vec::new();
        for t in tasks {
            expected.extend(t.await);
        }
        done.set(true);
        assert!(reader.await > 0);
        expected.sort();
        let total = (APPENDERS * ROUNDS) as i64;
        assert_eq!(
            expected.iter().map(|e| e.0).collect::<Vec<_>>(),
            (0..total).collect::<Vec<_>>()
        );
        let check = |got: Vec<bytes::Bytes>| {
            assert_eq!(got.len(), expected.len());
            for (b, &(base, len, fill)) in got.iter().zip(&expected) {
                assert_eq!(base_of(b), base);
                let want = batch(1, 0, len, fill);
                assert_eq!(b.len(), want.len(), "batch {base}");
                assert!(b[61..].iter().all(|&x| x == fill), "batch {base}");
            }
        };
        check(read_all(&log, 0).await);
        assert!(segment_files(&path).len() > 2, "segments rolled");
        log.close().await.unwrap();
        let log = open_log(&path, config).await;
        assert_eq!(log.log_end_offset(), total);
        check(read_all(&log, 0).await);
    });
}

#[test]
fn a_log_that_begins_in_a_gap_serves_reads_from_its_start() {
    in_log_dir(|path| async move {
        // A follower that copied a compacted leader whose first batches were all removed.
        let log = open_log(&path, LogConfig::default()).await;
        log.append_replica(with_offsets(batch(1, 1, 10, 9), 9, 4).into())
            .unwrap();
        log.wait_durable(10).await.unwrap();
        let got = log.read(0, 1 << 20, i64::MAX).await.unwrap();
        assert_eq!(got.iter().map(|b| base_of(b)).collect::<Vec<_>>(), vec![9]);
    });
}
