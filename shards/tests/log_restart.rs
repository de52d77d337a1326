//! Moving the log start on a follower's behalf: `truncate_fully_and_start_at` (a follower whose log
//! ends below its leader's log start) and `advance_log_start` (deleting segments wholly below it).

use std::future::Future;
use std::path::Path;

use chronik_shards::log::batch::build_test_batch;
use chronik_shards::log::{LogConfig, LogError, PartitionLog};

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

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 2000,
        index_interval_bytes: 300,
        tail_cache_bytes: 1 << 20,
        ..LogConfig::default()
    }
}

/// A batch as a leader stored it: offsets from `base`, written in `epoch`.
fn replica_batch(base: i64, records: i32, epoch: i32, fill: u8) -> Vec<u8> {
    let mut b = build_test_batch(base, records, 1_000 + base, &[fill; 300]);
    b[0..8].copy_from_slice(&base.to_be_bytes());
    b[12..16].copy_from_slice(&epoch.to_be_bytes());
    b
}

fn dir_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

/// Appends `batches` batches of 3 records in epoch 1 and makes them durable.
async fn fill(log: &PartitionLog, batches: usize) {
    for i in 0..batches {
        log.append(&build_test_batch(0, 3, 100 + i as i64, &[7u8; 300]), 1)
            .unwrap();
    }
    log.wait_durable(log.log_end_offset()).await.unwrap();
}

#[test]
fn restart_empties_the_log_and_starts_it_at_the_offset() {
    let dir = tmpdir();
    let path = dir.path().join("t-0");
    run(move || async move {
        let log = PartitionLog::open(path.clone(), config()).await.unwrap();
        fill(&log, 20).await;
        assert!(
            dir_files(&path)
                .iter()
                .filter(|n| n.ends_with(".log"))
                .count()
                > 2
        );
        assert_eq!(log.end_offset_for_epoch(1), (1, 60));

        log.truncate_fully_and_start_at(500).await.unwrap();
        let check = |log: &PartitionLog| {
            assert_eq!(log.log_start_offset(), 500);
            assert_eq!(log.log_end_offset(), 500);
            assert_eq!(log.durable_end_offset(), 500);
            assert_eq!(log.last_leader_epoch(), -1);
            assert_eq!(log.end_offset_for_epoch(1), (-1, -1));
        };
        check(&log);
        assert_eq!(
            dir_files(&path),
            vec![
                "00000000000000000500.log".to_string(),
                "leader-epoch-checkpoint".to_string()
            ]
        );
        assert!(log.read(500, 1 << 20, i64::MAX).await.unwrap().is_empty());
        assert!(matches!(
            log.read(10, 1 << 20, i64::MAX).await,
            Err(LogError::OffsetOutOfRange { .. })
        ));

        // It reopens the same, then takes the leader's batches from the new start.
        log.close().await.unwrap();
        let log = PartitionLog::open(path.clone(), config()).await.unwrap();
        check(&log);
        let first = replica_batch(500, 4, 3, 1);
        let second = replica_batch(504, 2, 4, 2);
        log.append_replica(bytes::Bytes::from(first.clone()))
            .unwrap();
        log.append_replica(bytes::Bytes::from(second.clone()))
            .unwrap();
        log.wait_durable(506).await.unwrap();
        assert_eq!(log.end_offset_for_epoch(3), (3, 504));
        assert_eq!(log.end_offset_for_epoch(4), (4, 506));
        drop(log);
        let log = PartitionLog::open(path.clone(), config()).await.unwrap();
        assert_eq!(log.log_start_offset(), 500);
        assert_eq!(log.log_end_offset(), 506);
        let got = log.read(500, 1 << 20, i64::MAX).await.unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].as_ref(), first.as_slice());
        assert_eq!(got[1].as_ref(), second.as_slice());
        assert_eq!(log.end_offset_for_epoch(3), (3, 504));
        log.close().await.unwrap();
    });
}

#[test]
fn restart_drops_unwritten_batches() {
    let dir = tmpdir();
    let path = dir.path().join("t-0");
    run(move || async move {
        let log = PartitionLog::open(
            path.clone(),
            LogConfig {
                flush: chronik_shards::log::FlushPolicy::Never,
                ..config()
            },
        )
        .await
        .unwrap();
        fill(&log, 5).await;
        // Appended, not yet written when the restart begins: dropped with the rest.
        log.append(&build_test_batch(0, 3, 9, &[9u8; 300]), 1)
            .unwrap();
        log.truncate_fully_and_start_at(1000).await.unwrap();
        assert_eq!(log.log_end_offset(), 1000);
        log.append(&build_test_batch(0, 2, 9, &[1u8; 10]), 2)
            .unwrap();
        assert_eq!(log.log_end_offset(), 1002);
        log.close().await.unwrap();
        let log = PartitionLog::open(path.clone(), config()).await.unwrap();
        assert_eq!(log.log_start_offset(), 1000);
        assert_eq!(log.log_end_offset(), 1002);
        assert_eq!(log.end_offset_for_epoch(2), (2, 1002));
        log.close().await.unwrap();
    });
}

#[test]
fn restart_works_on_an_empty_log_and_below_the_log_start() {
    let dir = tmpdir();
    let path = dir.path().join("t-0");
    run(move || async move {
        let log = PartitionLog::open(path.clone(), config()).await.unwrap();
        log.truncate_fully_and_start_at(42).await.unwrap();
        assert_eq!((log.log_start_offset(), log.log_end_offset()), (42, 42));
        fill(&log, 10).await;
        // Restarting lower than where the log starts (or at its own start) also empties it.
        log.truncate_fully_and_start_at(42).await.unwrap();
        assert_eq!((log.log_start_offset(), log.log_end_offset()), (42, 42));
        fill(&log, 3).await;
        log.truncate_fully_and_start_at(7).await.unwrap();
        assert_eq!((log.log_start_offset(), log.log_end_offset()), (7, 7));
        assert!(log.truncate_fully_and_start_at(-1).await.is_err());
        log.close().await.unwrap();
        let log = PartitionLog::open(path.clone(), config()).await.unwrap();
        assert_eq!((log.log_start_offset(), log.log_end_offset()), (7, 7));
        log.close().await.unwrap();
    });
}

#[test]
fn advance_log_start_deletes_only_segments_wholly_below() {
    let dir = tmpdir();
    let path = dir.path().join("t-0");
    run(move || async move {
        let log = PartitionLog::open(path.clone(), config()).await.unwrap();
        fill(&log, 20).await;
        let segments = |p: &Path| -> Vec<i64> {
            dir_files(p)
                .iter()
                .filter_map(|n| n.strip_suffix(".log").and_then(|s| s.parse().ok()))
                .collect()
        };
        let bases = segments(&path);
        assert!(bases.len() >= 4, "{bases:?}");
        let end = log.log_end_offset();

        // Below the second segment's base: nothing is wholly below.
        assert_eq!(log.advance_log_start(bases[1] - 1).await.unwrap(), 0);
        assert_eq!(log.log_start_offset(), 0);
        // At the third segment's base: the first two go.
        assert_eq!(log.advance_log_start(bases[2]).await.unwrap(), 2);
        assert_eq!(log.log_start_offset(), bases[2]);
        assert_eq!(segments(&path), bases[2..].to_vec());
        // Past the end: everything but the active segment.
        let active = *bases.last().unwrap();
        log.advance_log_start(end + 100).await.unwrap();
        assert_eq!(log.log_start_offset(), active);
        assert_eq!(log.log_end_offset(), end);
        let got = log.read(active, 1 << 20, i64::MAX).await.unwrap();
        assert_eq!(i64::from_be_bytes(got[0][0..8].try_into().unwrap()), active);
        assert_eq!(log.end_offset_for_epoch(1), (1, end));
        log.close().await.unwrap();
        let log = PartitionLog::open(path.clone(), config()).await.unwrap();
        assert_eq!(log.log_start_offset(), active);
        assert_eq!(log.log_end_offset(), end);
        assert_eq!(log.end_offset_for_epoch(1), (1, end));
        log.close().await.unwrap();
    });
}

#[test]
fn retention_below_a_bound_keeps_what_reaches_past_it() {
    let dir = tmpdir();
    let path = dir.path().join("t-0");
    run(move || async move {
        let log = PartitionLog::open(
            path.clone(),
            LogConfig {
                retention_bytes: Some(1),
                ..config()
            },
        )
        .await
        .unwrap();
        fill(&log, 20).await;
        let bases: Vec<i64> = dir_files(&path)
            .iter()
            .filter_map(|n| n.strip_suffix(".log").and_then(|s| s.parse().ok()))
            .collect();
        assert!(bases.len() >= 4, "{bases:?}");
        // A bound inside the third segment: only the first two end at or below it.
        assert_eq!(log.apply_retention_below(0, bases[2] + 1).await.unwrap(), 2);
        assert_eq!(log.log_start_offset(), bases[2]);
        assert_eq!(log.apply_retention_below(0, bases[2] + 1).await.unwrap(), 0);
        // Without a bound, every sealed segment goes.
        log.apply_retention(0).await.unwrap();
        assert_eq!(log.log_start_offset(), *bases.last().unwrap());
        log.close().await.unwrap();
    });
}
